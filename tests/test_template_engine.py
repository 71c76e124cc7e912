"""Each known template on the real llama.cpp engine (the tiny E-style Gemma 4): KV reuse stays exact
turn after turn, across tool results, merged assistant turns and the thought prefill (issue 11
item 5); a reply after a prefilled thought starts as thinking, and the think budget closes it."""

from __future__ import annotations

import pytest

from gemma_cli.chat.session import ChatSession, Done, format_of_engine
from gemma_cli.engine import Engine, Sampling
from gemma_cli.format.prompt import VARIANTS
from tests.generations import Generations
from tests.test_prompt import WEATHER
from tests.test_prompt_variants import FILES, templates


# Batch-invariant engines: a follow-up turn evaluates only the rest of its prompt, in other pieces than a cold
# run of the whole prompt; by default llama.cpp's CPU kernels may round those pieces otherwise (measured on an
# AMD EPYC: a greedy reply of the llama.cpp-interleaved template differed), and replies are compared token for token.
@pytest.fixture(scope="module")
def engine(e_model):
    with Engine(e_model, n_ctx=2048, swa_full=True, batch_invariant=True) as engine:
        yield engine


@pytest.fixture(scope="module")
def fresh(e_model):
    """Another engine on the same model: replies from an empty cache."""
    with Engine(e_model, n_ctx=2048, swa_full=True, batch_invariant=True) as engine:
        yield engine


def session_for(engine, name, **options):
    fmt = format_of_engine(engine, override=(FILES[name], templates(name)[2]))
    assert fmt.variant is VARIANTS[name]
    return ChatSession(engine, fmt, **options)


def done(events):
    return next(e for e in events if isinstance(e, Done)).result


CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}


@pytest.mark.parametrize("think", [False, True], ids=["no-think", "think"])
@pytest.mark.parametrize("name", list(FILES))
def test_follow_up_turns_evaluate_only_what_the_cache_lacks(engine, fresh, monkeypatch, name, think):
    greedy = Sampling(temperature=0)
    session = session_for(engine, name, sampling=greedy, max_tokens=6, think=think, tools=[WEATHER],
                          system="You answer briefly.")
    engine.reset()
    seen = Generations(engine, monkeypatch)  # the oracle: each prompt and reply, as llama.cpp was given them

    def turn() -> tuple[int, int]:
        """(evaluated, reused) the next turn should get, as it did."""
        tokens = engine.tokenize(session.prompt_text())
        want = seen.expected(tokens)
        stats = done(session.generate()).stats
        assert seen.calls[-1].prompt == tokens
        assert (stats.prompt_tokens, stats.reused_tokens) == want
        return want

    session.messages.append({"role": "user", "content": "What is the weather in Paris?"})
    assert turn()[1] == 0
    # The model called the tool (its reply replaced by the call) and the result came back.
    session.messages[-1] = dict(CALL)
    session.add_tool_result(CALL["tool_calls"][0], "18 C, clear")
    assert turn()[1] > 30  # the system turn, tools and the question came from the cache
    # The answer after the result is a second assistant message (merged into the same model turn
    # by the 2026-07-09 templates); the next prompt reuses all it shares with the one before
    # (the generated text itself may tokenize otherwise than the random model sampled it).
    for text in ("And in Rome?", "Thanks, and tomorrow?"):
        session.messages.append({"role": "user", "content": text})
        assert turn()[1] > 30
    seen.assert_same_as(fresh, greedy)  # reusing the cache changed no reply


ANSWER = 'root ::= "It is 18 degrees."\n'


def exchange(engine, **options):
    session = session_for(engine, "2026-07-09-large", think=True, tools=[WEATHER], **options)
    session.messages = [{"role": "user", "content": "Weather in Paris?"}, dict(CALL)]
    session.add_tool_result(CALL["tool_calls"][0], "18 C")
    assert session.prompt_text().endswith("<tool_response|><|channel>thought\n")
    return session


def test_budget_closes_the_prefilled_thought_and_the_model_answers(engine):
    engine.reset()
    session = exchange(engine, sampling=Sampling(temperature=1.0, seed=7, grammar=ANSWER), max_tokens=60,
                       think_budget=5)
    result = done(session.generate())
    assert result.answer == "It is 18 degrees." and result.thinking  # thinking never lands in the answer
    assert "<channel|>" not in result.thinking and not result.ended_in_thought
    closing = len(engine.tokenize("\n<channel|>"))
    answer = len(engine.tokenize("It is 18 degrees."))
    # 5 thought tokens, the closing, the answer and the end of turn the model stops at
    assert result.stats.generated_tokens == 5 + closing + answer + 1


def test_max_tokens_inside_the_thought_is_said_not_an_empty_success(engine):
    engine.reset()
    session = exchange(engine, sampling=Sampling(temperature=1.0, seed=7, grammar=ANSWER), max_tokens=5)
    result = done(session.generate())
    assert result.ended_in_thought and result.stats.finish_reason == "length"
    assert result.answer == "" and result.thinking and result.thought_only
