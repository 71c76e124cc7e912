"""The engine's parallel path as `gemma serve` drives it: a live job source (IDLE), text streamed
per job, cancel, and slots that keep their KV cache for a continuing conversation (keep_slots).
The real engine on the tiny synthetic Gemma 4."""

from __future__ import annotations

import pytest

from gemma_cli.engine import Engine, Sampling
from gemma_cli.engine.parallel import IDLE, Job, Parallel

GREEDY = Sampling(temperature=0)


@pytest.fixture(scope="module")
def engine(e_model):
    with Engine(e_model, n_ctx=4 * 512, n_seq=4, swa_full=True, n_threads=1) as e:
        yield e


def tokens(engine, text: str) -> list[int]:
    return engine.tokenize("<bos><|turn>user\n" + text + "<turn|>\n<|turn>model\n")


def test_a_continuing_prompt_reuses_its_slot_and_decodes_as_a_fresh_one(engine):
    first = tokens(engine, "Tell me about rivers and stones and clouds " * 6)
    kept = Parallel(engine, 3, keep_slots=True)
    [one] = list(kept.run([Job(first, GREEDY, 12)]))
    follow = first + one.tokens + engine.tokenize("<turn|>\n<|turn>user\nAnd then?<turn|>\n<|turn>model\n")
    [two] = list(kept.run([Job(follow, GREEDY, 12)]))
    # Slots survive between runs of the same Parallel: the whole first turn came from the cache.
    assert two.reused_tokens >= len(first) + len(one.tokens) - 1
    assert two.prompt_tokens == len(follow) - two.reused_tokens
    [fresh] = list(Parallel(engine, 3).run([Job(follow, GREEDY, 12)]))
    assert fresh.reused_tokens == 0
    assert two.tokens == fresh.tokens  # the reused cache decodes exactly as a fresh evaluation


def test_live_source_streams_text_and_cancel_frees_the_slot(engine):
    runner = Parallel(engine, 2, keep_slots=True)
    pieces: list[str] = []
    endless = Sampling(temperature=0, grammar='root ::= more\nmore ::= ("a " | "b ") more')
    long = Job(tokens(engine, "Go on forever"), endless, 200, on_text=pieces.append)
    short = Job(tokens(engine, "Short one"), GREEDY, 3)
    steps = {"n": 0}

    def source():
        yield long
        while steps["n"] < 5:  # nothing else to do yet: the running job goes on decoding
            steps["n"] += 1
            yield IDLE
        runner.cancel(long)
        yield short

    done = {f.job is long and "long" or "short": f for f in runner.run(source())}
    assert done["long"].finish_reason == "cancelled"
    assert 0 < done["long"].generated_tokens < 200
    assert pieces and "".join(pieces) == done["long"].text  # every piece streamed as it decoded
    assert done["short"].finish_reason in ("stop", "length") and done["short"].error is None
