"""`gemma serve`'s Chat Completions with forced tool calls, penalties, logit bias, logprobs and n > 1,
through the official `openai` client (its types validate the shapes), on the tiny synthetic Gemma 4."""

from __future__ import annotations

import json
import math

import jsonschema
import openai
import pytest

from tests import synthetic
from tests.test_serve import FAST, Server

QUOTE = synthetic.vocab().ids['<|"|>']  # pushed up a little: the random model would never close a string
CLOSE_STRINGS = {str(QUOTE): 6}

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1},
                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"word": {"type": "string"}, "exact": {"type": "boolean"}},
    "required": ["word", "exact"]}}}
TOOLS = [WEATHER, LOOKUP]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def server(e_model, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve-sampling"), "-m", e_model, "--parallel", "3", *FAST)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def ask(client, content="Weather in Paris?", **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model="gemma4-e", messages=[{"role": "user", "content": content}], **kw)


def check_calls(calls, names=None):
    for call in calls:
        assert call.type == "function" and call.id
        assert names is None or call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


# ---------------------------------------------------------------- tool_choice


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_required_with_parallel_calls_off_gives_exactly_one_valid_call(client, seed):
    r = ask(client, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=200,
            temperature=1.0 if seed else 0, seed=seed, logit_bias=CLOSE_STRINGS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    assert len(choice.message.tool_calls) == 1
    check_calls(choice.message.tool_calls, {"get_weather", "lookup"})


def test_required_may_give_several_calls_each_valid(client):
    r = ask(client, tools=TOOLS, tool_choice="required", max_tokens=300, temperature=1.0, seed=5,
            logit_bias=CLOSE_STRINGS)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.tool_calls
    check_calls(r.choices[0].message.tool_calls, {"get_weather", "lookup"})


@pytest.mark.parametrize("name", ["get_weather", "lookup"])
def test_a_named_function_is_the_one_called_streamed_or_not(client, name):
    choice = {"type": "function", "function": {"name": name}}
    r = ask(client, tools=TOOLS, tool_choice=choice, max_tokens=200, logit_bias=CLOSE_STRINGS)
    calls = r.choices[0].message.tool_calls
    assert calls and {c.function.name for c in calls} == {name}
    check_calls(calls)
    stream = ask(client, tools=TOOLS, tool_choice=choice, max_tokens=200, logit_bias=CLOSE_STRINGS, stream=True)
    deltas = [tc for chunk in stream if chunk.choices for tc in chunk.choices[0].delta.tool_calls or []]
    assert [(d.function.name, d.function.arguments) for d in deltas] == [
        (c.function.name, c.function.arguments) for c in calls]


def test_thinking_stays_free_before_a_forced_call(client):
    r = ask(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "lookup"}}, max_tokens=300,
            reasoning_effort="high", logit_bias=CLOSE_STRINGS)
    calls = r.choices[0].message.tool_calls
    # The random model may think or not; whatever it thinks, the answer is the call.
    assert r.choices[0].finish_reason in ("tool_calls", "length")
    if r.choices[0].finish_reason == "tool_calls":
        assert [c.function.name for c in calls] == ["lookup"]
        check_calls(calls)


def test_tool_choice_mistakes_are_400s(client):
    with pytest.raises(openai.BadRequestError, match="not among the declared tools"):
        ask(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="declares no tools"):
        ask(client, tool_choice="required")
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        ask(client, tools=TOOLS, tool_choice="sometimes")
    with pytest.raises(openai.BadRequestError, match="cannot also follow"):
        ask(client, tools=TOOLS, tool_choice="required", response_format={"type": "json_object"})
    assert ask(client, tools=TOOLS, tool_choice="none").choices[0].message.tool_calls is None


# ---------------------------------------------------------------- penalties and logit_bias


def test_penalties_change_the_greedy_answer(client):
    plain = ask(client, "Hello there", max_tokens=40).choices[0].message.content
    for extra in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        assert ask(client, "Hello there", max_tokens=40, **extra).choices[0].message.content != plain, extra
    repeat = ask(client, "Hello there", max_tokens=40, extra_body={"repeat_penalty": 1.5}).choices[0].message.content
    assert repeat != plain
    with pytest.raises(openai.BadRequestError, match="presence_penalty"):
        ask(client, presence_penalty=2.5)
    with pytest.raises(openai.BadRequestError, match="repeat_penalty"):
        ask(client, extra_body={"repeat_penalty": 0})


def test_logit_bias_moves_and_forces_tokens(client):
    r = ask(client, "Hello there", max_tokens=3, logprobs=True)
    first = r.choices[0].logprobs.content[0]
    ids = synthetic.vocab().ids
    # Every token that writes the same text: the piece itself, and a one-byte piece's byte token.
    same = [ids[first.token]] if first.token in ids else []
    same += [ids[f"<0x{b:02X}>"] for b in first.bytes] if len(first.bytes) == 1 else []
    assert same
    avoided = ask(client, "Hello there", max_tokens=3, logprobs=True, logit_bias={str(t): -100 for t in same})
    assert avoided.choices[0].logprobs.content[0].token != first.token
    paris = ids["Paris"]  # a whole word of the tiny vocabulary
    forced = ask(client, "Hello there", max_tokens=4, logit_bias={str(paris): 100})
    assert forced.choices[0].message.content == "Paris" * 4
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        ask(client, logit_bias={"99999999": 5})
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        ask(client, logit_bias={"12": 500})


# ---------------------------------------------------------------- logprobs


def test_logprobs_in_openai_shape_streamed_and_not(client):
    r = ask(client, "Hello there", max_tokens=10, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    # A token may hold part of a character (its `token` then shows U+FFFD): the bytes join into the text.
    assert b"".join(bytes(c.bytes) for c in content).decode("utf-8", "replace") == r.choices[0].message.content
    for c in content:
        assert bytes(c.bytes).decode("utf-8", "replace") == c.token and c.logprob <= 0
        tops = [t.logprob for t in c.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert c.top_logprobs[0].token == c.token and math.isclose(c.logprob, tops[0])  # greedy: the likeliest
        assert sum(math.exp(t) for t in tops) <= 1.0001
    stream = list(ask(client, "Hello there", max_tokens=10, logprobs=True, top_logprobs=5, stream=True))
    streamed = [c for chunk in stream if chunk.choices and chunk.choices[0].logprobs
                for c in chunk.choices[0].logprobs.content]
    assert [(c.token, round(c.logprob, 5)) for c in streamed] == [(c.token, round(c.logprob, 5)) for c in content]
    # logprobs without top: the tokens' own only
    bare = ask(client, "Hello there", max_tokens=4, logprobs=True).choices[0].logprobs.content
    assert bare and all(c.top_logprobs == [] for c in bare)
    assert ask(client, "Hello there", max_tokens=4).choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        ask(client, logprobs=True, top_logprobs=21)
    with pytest.raises(openai.BadRequestError, match='needs "logprobs"'):
        ask(client, top_logprobs=3)


# ---------------------------------------------------------------- n


def test_n_choices_share_the_prompt(client):
    r = ask(client, "Tell me a story", n=3, temperature=1.0, seed=11, max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1  # seeds 11, 12, 13
    one = ask(client, "Tell me a story", temperature=1.0, seed=11, max_tokens=8)
    assert r.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt is counted once
    with_logprobs = ask(client, "Tell me a story", n=2, temperature=1.0, seed=11, max_tokens=8, logprobs=True)
    assert with_logprobs.usage.completion_tokens == sum(len(c.logprobs.content) for c in with_logprobs.choices)
    # Streamed: each choice's chunks name their index, one id, each choice finishes.
    stream = list(ask(client, "Tell me a story", n=2, temperature=1.0, seed=11, max_tokens=8, stream=True,
                      stream_options={"include_usage": True}))
    assert len({c.id for c in stream}) == 1
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1}
    assert texts == {0: r.choices[0].message.content, 1: r.choices[1].message.content}
    assert stream[-1].usage.prompt_tokens == r.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="parallel sequences"):
        ask(client, n=4)


# ---------------------------------------------------------------- the other APIs read the same request


SWITCH_SCHEMA = {"type": "object", "properties": {"on": {"type": "boolean"}, "level": {"enum": [1, 2, 3]}},
                 "required": ["on", "level"]}


def test_messages_and_responses_force_calls_through_the_same_reader(server):
    import anthropic  # a test dependency
    tools = [{"name": "switch", "description": "Flip it", "input_schema": SWITCH_SCHEMA},
             {"name": "other", "input_schema": {"type": "object", "properties": {}}}]
    claude = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
    for choice in ({"type": "tool", "name": "switch"}, {"type": "any", "disable_parallel_tool_use": True}):
        m = claude.messages.create(model="gemma4-e", max_tokens=100, tools=tools, tool_choice=choice,
                                   messages=[{"role": "user", "content": "Flip"}])
        uses = [b for b in m.content if b.type == "tool_use"]
        assert m.stop_reason == "tool_use" and uses, m
        if choice.get("disable_parallel_tool_use"):
            assert len(uses) == 1  # Messages' way of saying parallel_tool_calls false
        for use in uses:
            assert use.name in ({"switch"} if choice["type"] == "tool" else {"switch", "other"})
            if use.name == "switch":
                jsonschema.validate(use.input, SWITCH_SCHEMA)
    r = server.client().responses.create(model="gemma4-e", input="Flip", max_output_tokens=100, temperature=0,
                                         tools=[{"type": "function", "name": "switch", "parameters": SWITCH_SCHEMA}],
                                         tool_choice={"type": "function", "name": "switch"})
    calls = [item for item in r.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["switch"]
    jsonschema.validate(json.loads(calls[0].arguments), SWITCH_SCHEMA)
