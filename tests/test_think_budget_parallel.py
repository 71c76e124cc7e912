"""The think budget and a prefilled thought on the parallel engine (batch lines, gemma serve):
the engine closes the thought after N tokens and the model answers, as ChatSession does
(tests/test_template_engine.py); the free-thought rule knows the prompt opened the thought."""

from __future__ import annotations

import json

import pytest

from gemma_cli.batch import parse_line
from gemma_cli.batch.endpoint import body_for
from gemma_cli.batch.run import Defaults
from gemma_cli.engine import Engine, Sampling
from gemma_cli.engine.parallel import Job, Parallel
from gemma_cli.errors import GemmaError
from gemma_cli.format import reply
from tests.test_template_engine import ANSWER, exchange

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(e_model):
    with Engine(e_model, n_ctx=2048, n_seq=3, swa_full=True) as engine:
        yield engine


def prefilled(engine) -> list[int]:
    # A tool exchange with thinking on (2026-07-09 template): the prompt ends in an open thought.
    return engine.tokenize(exchange(engine, sampling=Sampling()).prompt_text())


@pytest.mark.parametrize("budget", [1, 5])
def test_the_engine_closes_a_prefilled_thought_after_the_budget_and_the_model_answers(engine, budget):
    engine.reset()
    prompt = prefilled(engine)
    jobs = [Job(prompt, Sampling(temperature=1.0, seed=7 + i, grammar=ANSWER), 80, free_thought=True,
                in_thought=True, think_budget=budget) for i in range(3)]
    results = list(Parallel(engine, 2).run(jobs))
    assert len(results) == 3
    for done in results:
        assert done.error is None and done.finish_reason == "stop", done
        parsed = reply.parse(done.text, in_thought=True)
        assert parsed.answer == "It is 18 degrees." and parsed.thinking  # thinking never lands in the answer
        assert "<channel|>" not in parsed.thinking
        # `budget` tokens of the model's own, then the engine's close ("\n<channel|>", or "<channel|>"
        # when the thought already ended its line), then the answer the grammar allows.
        head = engine.detokenize(done.tokens[:budget])
        close = engine.tokenize("<channel|>" if head.endswith("\n") else "\n<channel|>")
        assert done.tokens[budget:budget + len(close)] == close


def test_a_prefilled_thought_is_free_even_with_a_grammar(engine):
    # Before: the parallel engine did not know the prompt opened the thought, so the grammar
    # constrained the thought itself and its text came out as the grammar's answer at once.
    engine.reset()
    prompt = prefilled(engine)
    done = next(Parallel(engine, 2).run([Job(prompt, Sampling(temperature=1.0, seed=3, grammar=ANSWER), 40,
                                             free_thought=True, in_thought=True, think_budget=4)]))
    parsed = reply.parse(done.text, in_thought=True)
    assert parsed.thinking and not parsed.thinking.startswith("It is 18")


def test_batch_lines_take_think_budget():
    line = parse_line(1, json.dumps({"prompt": "Hi", "think": True, "think_budget": 16}).encode() + b"\n")
    assert line.error is None and line.request.think_budget == 16
    assert parse_line(2, b'{"prompt": "Hi"}\n').request.think_budget is None
    for bad in (-1, 2.5, "8", True):
        failed = parse_line(3, json.dumps({"prompt": "Hi", "think_budget": bad}).encode() + b"\n")
        assert failed.request is None and "think_budget" in failed.error.message, bad


def test_an_endpoint_refuses_think_budget_and_gets_keep_thinking():
    budget = parse_line(1, json.dumps({"prompt": "Hi", "think_budget": 4}).encode() + b"\n").request
    with pytest.raises(GemmaError, match="think_budget"):
        body_for(budget, Defaults(None))
    keep = parse_line(2, json.dumps({"prompt": "Hi", "think": True, "keep_thinking": True}).encode() + b"\n").request
    assert body_for(keep, Defaults(None))["chat_template_kwargs"] == {"enable_thinking": True, "preserve_thinking": True}


def test_gemma_serve_parses_a_reply_that_starts_inside_a_prefilled_thought():
    from gemma_cli.engine.parallel import Finished
    from gemma_cli.serve.chat import Chunks, completion

    job = Job([1, 2], in_thought=True)
    done = Finished(job, "the tool said 18<channel|>It is 18.", [5, 6, 7], 2, 0, 3, "stop")
    message = completion(done, "tiny", gemma4=True)["choices"][0]["message"]
    assert message["content"] == "It is 18." and message["reasoning_content"] == "the tool said 18"
    chunks = Chunks("tiny", True, (), False, in_thought=True)
    deltas = [c["choices"][0]["delta"] for piece in ("the tool ", "said 18<chan", "nel|>It is 18.")
              for c in chunks.text(piece)] + [c["choices"][0]["delta"] for c in chunks.done(done)]
    assert "".join(d.get("content") or "" for d in deltas) == "It is 18."
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "the tool said 18"
