"""Forced tool calls (format/call_grammar): the grammar's text, and what the real llama.cpp generates
under it on the tiny synthetic Gemma 4: calls the reply parser reads back, arguments valid under the
tool's JSON Schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from gemma_cli.format import reply
from gemma_cli.format.call_grammar import ToolChoiceError, call_grammar


def tool(name, parameters=None):
    fn = {"name": name, "description": f"the {name} tool"}
    if parameters is not None:
        fn["parameters"] = parameters
    return {"type": "function", "function": fn}


WEATHER = tool("get_weather", {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 0},
                   "unit": {"enum": ["celsius", "fahrenheit"]}, "hourly": {"type": "boolean"}},
    "required": ["city", "unit"], "additionalProperties": False})
SEARCH = tool("web.search", {
    "type": "object",
    "properties": {"query": {"type": "string", "maxLength": 12},
                   "filters": {"type": "array", "maxItems": 3,
                               "items": {"type": "object", "properties": {"key": {"$ref": "#/$defs/word"},
                                                                          "weight": {"type": "number"}},
                                         "required": ["key"]}},
                   "limit": {"type": ["integer", "null"]},
                   "mode": {"anyOf": [{"const": "fast"}, {"type": "object", "properties": {"depth": {"type": "integer"}},
                                                          "required": ["depth"]}]}},
    "required": ["query", "filters", "limit", "mode"],
    "$defs": {"word": {"type": "string", "minLength": 1, "maxLength": 6}}})
NOTHING = tool("ping")
TOOLS = [WEATHER, SEARCH, NOTHING]


def schema_of(name):
    for t in TOOLS:
        if t["function"]["name"] == name:
            return t["function"].get("parameters", {"type": "object", "properties": {}})
    raise AssertionError(name)


# ---------------------------------------------------------------- the text


def test_root_is_one_call_or_several():
    assert "root ::= call+" in call_grammar(TOOLS)
    assert "root ::= call\n" in call_grammar(TOOLS, parallel=False)
    named = call_grammar(TOOLS, "web.search")
    assert "call:web.search" in named and "call:get_weather" not in named


def test_choices_that_cannot_be_met_are_errors():
    with pytest.raises(ToolChoiceError, match="'nope'.*not among the declared tools"):
        call_grammar(TOOLS, "nope")
    with pytest.raises(ToolChoiceError, match="no tools"):
        call_grammar([])
    with pytest.raises(ToolChoiceError, match="cannot be written"):
        call_grammar([tool("has space")])


def test_keys_that_cannot_be_bare_are_quoted_and_strings_exclude_markers():
    g = call_grammar([tool("f", {"type": "object", "properties": {"a b": {"type": "string"}}, "required": ["a b"]})])
    assert '"<|\\"|>a b<|\\"|>:"' in g
    assert "str-body" in g  # the automaton that keeps <| |> <eos> out of strings


# ---------------------------------------------------------------- generated under it


@pytest.fixture(scope="module")
def engine(e_model):
    from gemma_cli.engine import Engine

    with Engine(e_model, n_ctx=4096, n_seq=3, n_threads=1) as engine:
        yield engine


def prompt(engine, thinking=False):
    from gemma_cli.chat.session import format_of_engine

    return format_of_engine(engine).render([{"role": "user", "content": "Weather in Paris?"}], TOOLS, thinking=thinking)


def quote_bias(engine):
    """A push towards `<|"|>`: the tiny random model would otherwise never close a free string."""
    (quote,) = engine.tokenize('<|"|>')
    return {quote: 6.0}


@pytest.mark.parametrize("seed", range(6))
def test_required_gives_calls_the_parser_reads_with_valid_arguments(engine, seed):
    from gemma_cli.engine import Sampling

    g = call_grammar(TOOLS, parallel=False)
    s = Sampling(temperature=1.0 if seed else 0.0, seed=seed, grammar=g, logit_bias=quote_bias(engine))
    text = "".join(step.text for step in engine.stream_generate(prompt(engine), max_tokens=400, sampling=s))
    parsed = reply.parse(text, tools=TOOLS)
    assert not parsed.errors and parsed.answer == "" and len(parsed.tool_calls) == 1, text
    call = parsed.tool_calls[0]
    assert call.repairs == []
    jsonschema.validate(call.arguments, schema_of(call.name))
    json.dumps(call.arguments, allow_nan=False)  # JSON the client can read (no infinities)


@pytest.mark.parametrize("name", ["get_weather", "web.search", "ping"])
def test_a_named_tool_is_the_one_called(engine, name):
    from gemma_cli.engine import Sampling

    for seed in range(3):
        s = Sampling(temperature=1.0, seed=seed, grammar=call_grammar(TOOLS, name), logit_bias=quote_bias(engine))
        text = "".join(step.text for step in engine.stream_generate(prompt(engine), max_tokens=400, sampling=s))
        parsed = reply.parse(text, tools=TOOLS)
        assert parsed.tool_calls and not parsed.errors, text
        assert {c.name for c in parsed.tool_calls} == {name}
        for call in parsed.tool_calls:
            jsonschema.validate(call.arguments, schema_of(name))


def test_thinking_stays_free_before_the_forced_call(engine):
    """On the parallel runner (serve's): a thought the prompt opened runs free, the call follows."""
    from gemma_cli.engine import Sampling
    from gemma_cli.engine.parallel import Job, Parallel

    text = prompt(engine) + "<|channel>thought\n"
    close = engine.tokenize("<channel|>")[0]
    job = Job(text, Sampling(temperature=1.0, seed=1, grammar=call_grammar(TOOLS, "ping", parallel=False)), 60,
              free_thought=True, in_thought=True, think_budget=5)
    (done,) = Parallel(engine, 2).run([job])
    parsed = reply.parse(done.text, in_thought=True, tools=TOOLS)
    # Five free tokens of thought (text no call grammar allows), closed by the budget, then the call.
    assert parsed.thinking and not parsed.thinking.startswith("<|tool_call>") and close in done.tokens
    assert done.tokens.index(close) >= 5
    assert [c.name for c in parsed.tool_calls] == ["ping"] and parsed.answer == ""
