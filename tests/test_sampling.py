"""The one sampler chain (engine.Sampling): penalties, logit bias, min-p, log probabilities, and n
sequences sharing one prompt, on the real llama.cpp with the tiny synthetic Gemma 4."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gemma_cli.engine import Engine, Sampling
from gemma_cli.engine.parallel import Job, Parallel

PROMPT = "<|turn>user\nHello there, what is the capital of France?<turn|>\n<|turn>model\n"


@pytest.fixture(scope="module")
def engine(e_model):
    with Engine(e_model, n_ctx=2048, n_seq=4, n_threads=1) as engine:
        yield engine


def generate(engine, sampling: Sampling, n: int = 40, prompt: str = PROMPT) -> list[int]:
    """Tokens of one generation through the one-sequence path (chat's)."""
    return [s.token for s in engine.stream_generate(prompt, max_tokens=n, sampling=sampling) if s.token is not None]


def run_jobs(engine, *jobs: Job, n: int = 3):
    return sorted(Parallel(engine, n).run(jobs), key=lambda f: jobs.index(f.job))


def repeats_within(tokens: list[int], window: int) -> bool:
    return any(t in tokens[max(0, i - window):i] for i, t in enumerate(tokens))


def test_penalties_change_greedy_output_and_a_strong_one_stops_repeats(engine):
    plain = generate(engine, Sampling(temperature=0))
    assert repeats_within(plain, 64)  # the tiny random model repeats itself (then ends its turn)
    repeat = generate(engine, Sampling(temperature=0, repeat_penalty=1.5))
    assert repeat != plain
    # A presence penalty far beyond any logit: no token of the last 64 comes again.
    strong = generate(engine, Sampling(temperature=0, presence_penalty=1000.0))
    assert len(strong) > 20 and not repeats_within(strong, 64), strong
    # frequency_penalty counts: a large one also stops repeats (the second occurrence already costs it)
    frequent = generate(engine, Sampling(temperature=0, frequency_penalty=1000.0))
    assert not repeats_within(frequent, 64)
    # The window: with penalty_last_n=1 only an immediate repeat is penalized (the model's "A B A" comes back)
    assert generate(engine, Sampling(temperature=0, presence_penalty=1000.0, penalty_last_n=1)) != strong
    # The parallel runner (serve, batch) goes through the same chain, not its greedy shortcut.
    done = run_jobs(engine, Job(PROMPT, Sampling(temperature=0, presence_penalty=1000.0), 40),
                    Job(PROMPT, Sampling(temperature=0), 40))
    assert done[0].tokens == strong and done[1].tokens == plain


def test_logit_bias_moves_the_greedy_pick(engine):
    plain = generate(engine, Sampling(temperature=0), n=5)
    first = plain[0]
    avoided = generate(engine, Sampling(temperature=0, logit_bias={first: -100.0}), n=5)
    assert avoided[0] != first and first not in avoided
    forced_token = engine.tokenize("Paris")[0]
    forced = generate(engine, Sampling(temperature=0, logit_bias={forced_token: 100.0}), n=5)
    assert forced == [forced_token] * 5
    # Also when sampling (temperature 1): +100 leaves no other token a chance.
    hot = generate(engine, Sampling(temperature=1.0, seed=7, logit_bias={forced_token: 100.0}), n=5)
    assert hot == [forced_token] * 5
    done = run_jobs(engine, Job(PROMPT, Sampling(temperature=0, logit_bias={forced_token: 100.0}), 5))
    assert done[0].tokens == forced


def test_min_p_keeps_only_likely_tokens(engine):
    # min_p = 1 keeps the likeliest token only: sampling at any temperature becomes greedy.
    greedy = generate(engine, Sampling(temperature=0), n=12)
    assert generate(engine, Sampling(temperature=1.5, seed=1, top_k=0, top_p=1.0, min_p=1.0), n=12) == greedy
    assert generate(engine, Sampling(temperature=1.5, seed=1, top_k=0, top_p=1.0), n=12) != greedy


def test_logprobs_are_the_softmax_of_llama_cpp_logits(engine):
    done = run_jobs(engine, Job(PROMPT, Sampling(temperature=0), 6, logprobs=5))[0]
    assert len(done.logprobs) == len(done.tokens) == 6
    for entry, token in zip(done.logprobs, done.tokens):
        assert entry.token == token and entry.piece == engine.token_bytes(token)
        values = [lp for _, _, lp in entry.top]
        assert len(entry.top) == 5 and values == sorted(values, reverse=True)
        assert entry.top[0][0] == token and entry.logprob == pytest.approx(values[0])  # greedy: the likeliest
        assert all(lp <= 0 for lp in values)
    # Independently: evaluate the prompt in sequence 0 and softmax llama.cpp's logits with numpy.
    engine.reset()
    engine.prefill(engine.tokenize(PROMPT))
    logits = np.array(engine.logits(-1), dtype=np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    first = done.logprobs[0]
    assert math.exp(first.logprob) == pytest.approx(probs[first.token], rel=1e-4)
    order = np.argsort(-probs)[:5]
    assert [t for t, _, _ in first.top] == [int(i) for i in order]
    for (t, _, lp) in first.top:
        assert math.exp(lp) == pytest.approx(probs[t], rel=1e-4)
    # Sampled tokens (not greedy) get their own logprob, top 0 means none listed.
    hot = run_jobs(engine, Job(PROMPT, Sampling(temperature=1.0, seed=3), 6, logprobs=0))[0]
    assert len(hot.logprobs) == len(hot.tokens) and all(e.top == [] for e in hot.logprobs)
    assert math.exp(hot.logprobs[0].logprob) == pytest.approx(probs[hot.tokens[0]], rel=1e-4)
    # Without asking: nothing computed.
    assert run_jobs(engine, Job(PROMPT, Sampling(temperature=0), 3))[0].logprobs == []


def test_n_sequences_share_one_evaluation_of_the_prompt(engine, monkeypatch):
    tokens = engine.tokenize(PROMPT)
    rows = []
    decode = engine.decode_rows
    monkeypatch.setattr(engine, "decode_rows", lambda r: rows.extend(r) or decode(r))
    engine.reset()
    jobs = [Job(tokens, Sampling(temperature=1.0, seed=10 + i), 8, shared=len(tokens) - 1) for i in range(3)]
    done = run_jobs(engine, *jobs)
    prompt_rows = [r for r in rows if r[1] < len(tokens)]
    # The head once (in the staging sequence), then the last prompt token once per sequence.
    assert len(prompt_rows) == len(tokens) - 1 + 3
    # Its accounting says so: the first evaluated it (the staging sequence was empty), the others reused it.
    assert [d.reused_tokens for d in done] == [0, len(tokens) - 1, len(tokens) - 1]
    assert sum(d.prompt_tokens for d in done) == len(tokens) + 2
    assert len({tuple(d.tokens) for d in done}) > 1  # different seeds, different samples


# ---------------------------------------------------------------- the commands' flags, one path


def test_chat_takes_the_penalty_flags(e_model, tmp_path):
    from tests.clitools import run_gemma

    base = ["chat", "-m", e_model, "--temperature", "0", "-n", "24", "--ctx", "512", "--threads", "1", "Hello there"]
    plain = run_gemma(*base, home=tmp_path)
    assert plain.returncode == 0, plain.stderr
    penalized = run_gemma(*base, "--repeat-penalty", "1.5", home=tmp_path)
    assert penalized.returncode == 0 and penalized.stdout != plain.stdout
    # The setting (GEMMA_*, the config file) is the same one: an environment twin gives the same answer.
    env = run_gemma(*base, home=tmp_path, GEMMA_REPEAT_PENALTY="1.5")
    assert env.stdout == penalized.stdout
    presence = run_gemma(*base, "--presence-penalty", "2", "--frequency-penalty", "2", "--min-p", "0.05", home=tmp_path)
    assert presence.returncode == 0 and presence.stdout != plain.stdout
    bad = run_gemma(*base, "--presence-penalty", "3", home=tmp_path)
    assert bad.returncode == 2 and "--presence-penalty" in bad.stderr and "Traceback" not in bad.stderr


def test_batch_lines_take_penalties_bias_and_forced_calls(e_model, tmp_path):
    import json

    from tests import synthetic
    from tests.clitools import run_gemma

    quote = synthetic.vocab().ids['<|"|>']
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}]
    lines = [{"id": "plain", "prompt": "Hello there", "max_tokens": 24},
             {"id": "penalized", "prompt": "Hello there", "max_tokens": 24, "repeat_penalty": 1.5},
             {"id": "presence", "prompt": "Hello there", "max_tokens": 24, "presence_penalty": 2, "min_p": 0.01},
             {"custom_id": "forced", "body": {"messages": [{"role": "user", "content": "Look it up"}], "tools": tools,
                                              "tool_choice": {"type": "function", "function": {"name": "lookup"}},
                                              "max_tokens": 200, "logit_bias": {str(quote): 6}}}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    common = ["-m", e_model, "--temperature", "0", "--ctx", "1024", "--threads", "1", "-q", "-p", "2"]
    proc = run_gemma("batch", src, "-o", tmp_path / "out.jsonl", *common, home=tmp_path / "home", timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = {r.get("custom_id") or r.get("id"): r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert out["penalized"]["answer"] != out["plain"]["answer"] and out["presence"]["answer"] != out["plain"]["answer"]
    message = out["forced"]["response"]["body"]["choices"][0]["message"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["lookup"]
    assert isinstance(json.loads(message["tool_calls"][0]["function"]["arguments"])["word"], str)
    # The run's flag is the default for every line (a line's own value wins).
    flagged = run_gemma("batch", src, "-o", tmp_path / "flag.jsonl", *common, "--repeat-penalty", "1.5",
                        home=tmp_path / "home", timeout=300)
    assert flagged.returncode == 0, flagged.stderr
    again = {r.get("custom_id") or r.get("id"): r for r in map(json.loads, (tmp_path / "flag.jsonl").read_text().splitlines())}
    assert again["plain"]["answer"] == out["penalized"]["answer"]
