"""Each known template on the real llama.cpp engine (the tiny E-style Gemma 4): KV reuse stays exact
turn after turn, across tool results, merged assistant turns and the thought prefill (issue 11
item 5); a reply after a prefilled thought starts as thinking, and the think budget closes it."""

from __future__ import annotations

import pytest

from gemma_cli.chat.session import ChatSession, Done, format_of_engine
from gemma_cli.engine import Engine, Sampling
from gemma_cli.engine.kv import common_prefix as _common_prefix
from gemma_cli.format.prompt import VARIANTS
from tests.test_prompt import WEATHER
from tests.test_prompt_variants import FILES, templates


@pytest.fixture(scope="module")
def engine(e_model):
    with Engine(e_model, n_ctx=2048, swa_full=True) as engine:
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
def test_follow_up_turns_evaluate_only_what_the_cache_lacks(engine, name, think):
    session = session_for(engine, name, sampling=Sampling(temperature=0), max_tokens=6, think=think,
                          tools=[WEATHER], system="You answer briefly.")

    def lacking() -> tuple[int, int]:
        tokens = engine.tokenize(session.prompt_text())
        return len(tokens), max(1, len(tokens) - _common_prefix(engine.kv.contents(), tokens))

    def turn() -> tuple[int, int]:
        stats = done(session.generate()).stats
        return stats.prompt_tokens, stats.reused_tokens

    engine.reset()
    session.messages.append({"role": "user", "content": "What is the weather in Paris?"})
    size, need = lacking()
    assert turn() == (need, size - need)
    # The model called the tool (its reply replaced by the call) and the result came back.
    session.messages[-1] = dict(CALL)
    session.add_tool_result(CALL["tool_calls"][0], "18 C, clear")
    size, need = lacking()
    assert need < size - 30  # the system turn, tools and the question are in the cache
    before = engine.tokenize(session.prompt_text())
    assert turn() == (need, size - need)
    # The answer after the result is a second assistant message (merged into the same model turn
    # by the 2026-07-09 templates); the next prompt reuses all it shares with the one before
    # (the generated text itself may tokenize otherwise than the random model sampled it).
    for text in ("And in Rome?", "Thanks, and tomorrow?"):
        session.messages.append({"role": "user", "content": text})
        size, need = lacking()
        tokens = engine.tokenize(session.prompt_text())
        assert size - need >= _common_prefix(before, tokens) - 1
        assert need < size - 30
        assert turn() == (need, size - need)
        before = tokens


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
