"""The engine on the real llama.cpp: generation, counters, KV reuse (incl. SWA), UTF-8 safety."""

from __future__ import annotations

import codecs
import time

import pytest

from gemma_cli.engine import Engine, Sampling
from gemma_cli.errors import ContextOverflowError

GREEDY = Sampling(temperature=0)


def run(engine: Engine, prompt, **kw):
    steps = list(engine.stream_generate(prompt, **kw))
    return "".join(s.text for s in steps), steps[-1], steps


@pytest.fixture(scope="module")
def base(gemma3_base):
    with Engine(gemma3_base, n_ctx=1024) as engine:
        yield engine


@pytest.fixture(scope="module")
def tiny(e_model):
    # The sliding-window Gemma 4 test model; n_ctx large enough to outgrow the SWA cache.
    with Engine(e_model, n_ctx=2048, n_batch=64) as engine:
        yield engine


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("The Eiffel Tower is located in the city of", "Paris"),
        ("1, 2, 3, 4, 5,", " 6, 7"),
    ],
)
def test_real_gemma3_continues_greedily(base, prompt, expected):
    base.reset()
    text, last, _ = run(base, "<bos>" + prompt, max_tokens=8, sampling=GREEDY)
    assert expected in text
    assert last.finish_reason == "length"
    assert last.generated_tokens == 8


def test_counters_report_prompt_generation_and_speed(base):
    base.reset()
    tokens = base.tokenize("<bos>Hello there, how are you")
    # The clock read here, around each step's arrival, bounds what the engine may report.
    arrived, steps = [], []
    start = time.perf_counter()
    for step in base.stream_generate(tokens, max_tokens=5, sampling=GREEDY):
        arrived.append(time.perf_counter())
        steps.append(step)
    last = steps[-1]
    assert last.prompt_tokens == len(tokens) and last.reused_tokens == 0
    assert last.generated_tokens == 5 == len([s for s in steps if s.token is not None])
    # The first token came after the call and before its step reached us.
    assert 0 < last.ttft <= arrived[0] - start
    # 4 tokens decoded after the first one: no faster than the wall time from the first step to the fifth allows,
    # no slower than all of it from the call on.
    assert 4 / (arrived[4] - start) <= last.tps <= 4 / (arrived[3] - arrived[0])


def test_extending_prompt_evaluates_only_the_suffix(base):
    base.reset()
    first = base.tokenize("<bos>The capital of France is")
    _, last, steps = run(base, first, max_tokens=4, sampling=GREEDY)
    generated = [s.token for s in steps if s.token is not None]
    follow = first + generated + base.tokenize(" And the capital of Spain is")
    _, last2, _ = run(base, follow, max_tokens=4, sampling=GREEDY)
    # all but the last generated token are in the cache (the last is never decoded)
    assert last2.reused_tokens == len(first) + len(generated) - 1
    assert last2.prompt_tokens == len(follow) - last2.reused_tokens


def test_same_prompt_twice_reevaluates_one_token_and_repeats(base):
    base.reset()
    tokens = base.tokenize("<bos>Once upon a time")
    a, _, _ = run(base, tokens, max_tokens=6, sampling=GREEDY)
    b, last, _ = run(base, tokens, max_tokens=6, sampling=GREEDY)
    assert a == b
    assert last.prompt_tokens == 1 and last.reused_tokens == len(tokens) - 1


def test_seed_makes_sampling_repeatable(base):
    s = Sampling(temperature=1.0, seed=1234)
    base.reset()
    a, _, _ = run(base, "<bos>My favourite colour is", max_tokens=12, sampling=s)
    base.reset()
    b, _, _ = run(base, "<bos>My favourite colour is", max_tokens=12, sampling=s)
    assert a == b


def test_prompt_longer_than_context_is_an_error_before_evaluating(gemma3_base):
    with Engine(gemma3_base, n_ctx=256) as engine:
        with pytest.raises(ContextOverflowError, match=f"context holds {engine.n_ctx}"):
            next(engine.stream_generate("word " * (engine.n_ctx + 10)))
        assert engine.cached_tokens == 0  # nothing was evaluated


def test_generation_stops_at_the_context_end(gemma3_base):
    with Engine(gemma3_base, n_ctx=256) as engine:
        tokens = engine.tokenize("<bos>Count: 1, 2, 3, 4")
        _, last, _ = run(engine, tokens, max_tokens=1000, sampling=GREEDY)
        assert last.finish_reason == "length"
        assert last.generated_tokens == engine.n_ctx - len(tokens)


def test_streamed_text_is_utf8_safe(tiny):
    # Random weights emit byte tokens and broken UTF-8: every chunk must still be whole
    # characters, and together they equal decoding all the bytes at once.
    tiny.reset()
    _, last, steps = run(tiny, "<bos>Grüße 👋 日本", max_tokens=60, sampling=Sampling(seed=7))
    tokens = [s.token for s in steps if s.token is not None]
    whole = b"".join(tiny.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")
    assert "".join(s.text for s in steps) == whole
    # Each chunk is whole characters, shown as soon as they are whole: after every token the text so far is
    # what decoding all the bytes so far gives (Python's codec, invalid bytes as U+FFFD), holding back only
    # an unfinished last character.
    data, so_far = b"", ""
    for s in steps:
        so_far += s.text
        s.text.encode("utf-8")  # no lone surrogates
        if s.token is not None:
            data += tiny.token_bytes(s.token)
            assert so_far == codecs.utf_8_decode(data, "replace", False)[0]
    # The case this is about happened: a token that ends inside a character, held back until the next.
    split = [i for i, t in enumerate(tokens) if _ends_mid_character(b"".join(tiny.token_bytes(x) for x in tokens[:i + 1]))]
    assert split, "no token ended inside a character; pick another seed"


def _ends_mid_character(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError as e:
        return e.start >= len(data) - 3 and e.reason == "unexpected end of data"


def test_generation_stops_at_the_end_of_turn_token(tiny):
    # A grammar that writes a word and ends: the next token is the end of turn, and it is not text.
    tiny.reset()
    text, last, steps = run(tiny, "<bos><|turn>user\nHi<turn|>\n<|turn>model\n", max_tokens=50,
                            sampling=Sampling(temperature=0, grammar='root ::= "Hello"'))
    assert text == "Hello" and last.finish_reason == "stop" and last.generated_tokens < 50
    assert "<turn|>" not in text and "<eos>" not in text


def _fresh_greedy(path, tokens, n):
    with Engine(path, n_ctx=2048, n_batch=64) as engine:
        return run(engine, tokens, max_tokens=n, sampling=GREEDY)[0]


def test_swa_model_reuses_prefix_within_window(tiny, e_model):
    tiny.reset()
    assert tiny.info.n_swa > 0
    a = tiny.tokenize("<bos><|turn>user\nhello<turn|>\n<|turn>model\n")
    run(tiny, a, max_tokens=3, sampling=GREEDY)
    b = a + tiny.tokenize("more words here")
    text, last, _ = run(tiny, b, max_tokens=5, sampling=GREEDY)
    assert last.reused_tokens == len(a)
    assert text == _fresh_greedy(e_model, b, 5)


def test_swa_cut_beyond_window_falls_back_or_uses_checkpoint(tiny, e_model):
    """After the SWA cache has dropped old positions, cutting back must not give wrong output."""
    n_swa = tiny.info.n_swa
    head = tiny.tokenize("<bos>" + "alpha beta gamma " * (n_swa // 2))
    assert len(head) > n_swa
    # a long reply (here fed as prompt text, so its length is certain) pushes the early
    # positions out of the SWA cache, which holds only n_swa + one batch of positions
    reply = tiny.tokenize("<|turn>model\n") + tiny.tokenize(" the capital") * 200
    for checkpoint in (None, len(head)):
        tiny.reset()
        run(tiny, head + reply, max_tokens=1, sampling=GREEDY, checkpoint_at=checkpoint)
        assert tiny.kv.pos_min() > len(head) - n_swa  # the window before the cut point is gone
        follow = head + tiny.tokenize("<|turn>user\nnext<turn|>\n")
        text, last, _ = run(tiny, follow, max_tokens=6, sampling=GREEDY)
        if checkpoint is None:
            assert last.reused_tokens == 0  # nothing usable: evaluate everything again
        else:
            assert last.reused_tokens == len(head)  # restored from the checkpoint
        assert text == _fresh_greedy(e_model, follow, 6)


def test_llama_cpp_python_loads_weights_as_the_engine_does():
    # On a build with AMX, llama.cpp's AMX matmul crashes on K-quants: the engine and the
    # patched defaults of llama-cpp-python's own Llama (conftest calls avoid_amx) skip the
    # extra buffer types; elsewhere both keep llama.cpp's default (repacked weights).
    import llama_cpp
    import llama_cpp.llama_cpp as api

    from gemma_cli.engine.core import AMX_BUILD

    assert AMX_BUILD == (b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info())
    assert api.llama_model_default_params().use_extra_bufts is (not AMX_BUILD)


def test_a_k_quant_model_decodes_a_batch_of_several_sequences(gemma3_base):
    # The first decode of a Q4_K_M model is where the AMX kernel crashed the process.
    with Engine(gemma3_base, n_ctx=1024, n_seq=4) as engine:
        text, last, _ = run(engine, "<bos>The Eiffel Tower is located in the city of", max_tokens=4, sampling=GREEDY)
    assert "Paris" in text and last.finish_reason == "length"
