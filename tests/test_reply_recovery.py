"""The reply parser after a prefilled thought, and the tool calls it recovers (issue 11 items 3, 4).

Every case is checked whole, split at every point in two, and one character at a time."""

from __future__ import annotations

import pytest

from gemma_cli.format.reply import (
    Answer,
    EndOfTurn,
    ReplyParser,
    Thinking,
    ToolCall,
    ToolCallError,
    collapse,
    parse,
)

Q = '<|"|>'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "unit": {"type": ["string", "null"]}, "days": {"type": "integer"}}}}}]


def events_of(chunks, **options):
    parser = ReplyParser(**options)
    out = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return collapse(out + parser.close())


def splits(text):
    yield [text]
    yield list(text)
    for cut in range(len(text) + 1):
        yield [text[:cut], text[cut:]]


def same_everywhere(text, **options):
    whole = events_of([text], **options)
    for chunks in splits(text):
        assert events_of(chunks, **options) == whole, chunks
    return whole


IN_THOUGHT = [
    ("thought then answer", "the tool said 18\n<channel|>It is 18 degrees.<turn|>",
     [Thinking("the tool said 18"), Answer("It is 18 degrees."), EndOfTurn("turn")]),
    ("thought then another call", "need Rome too<channel|><|tool_call>call:get_weather{city:" + Q + "Rome" + Q + "}<tool_call|>",
     [Thinking("need Rome too"), ToolCall("get_weather", {"city": "Rome"})]),
    ("thought cut off by max tokens", "still going and go", [Thinking("still going and go")]),
    ("a header-like start is thinking text", "thought\nabout it<channel|>ok", [Thinking("thought\nabout it"), Answer("ok")]),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in IN_THOUGHT], ids=[c[0] for c in IN_THOUGHT])
def test_reply_after_a_prefilled_thought_starts_in_thinking(text, expected):
    assert same_everywhere(text, in_thought=True) == expected
    whole = parse(text, in_thought=True)
    assert whole.thinking == "".join(e.text for e in expected if isinstance(e, Thinking))
    assert whole.answer == "".join(e.text for e in expected if isinstance(e, Answer))
    # Without the mode, the thinking would have landed in the answer.
    assert parse(text).thinking == ""


def test_parser_says_when_the_reply_ends_inside_its_thought():
    parser = ReplyParser(in_thought=True)
    parser.feed("thinking on")
    assert parser.in_thought
    parser.feed("<channel|>done")
    assert not parser.in_thought


CALL = "<|tool_call>call:get_weather{city:" + Q + "Paris" + Q + "}"
RECOVERED = [
    ("ended at turn", CALL + "<turn|>", "<turn|>", EndOfTurn("turn")),
    ("ended at eos", CALL + "<eos>", "<eos>", EndOfTurn("eos")),
    ("ended at tool response", CALL + "<|tool_response>", "<|tool_response>", EndOfTurn("tool_response")),
    ("ended with the reply", CALL, "the end of the reply", None),
]


@pytest.mark.parametrize(("text", "where", "end"), [c[1:] for c in RECOVERED], ids=[c[0] for c in RECOVERED])
def test_complete_call_without_its_closing_token_is_a_call(text, where, end):
    events = same_everywhere(text)
    assert events[0] == ToolCall("get_weather", {"city": "Paris"})
    assert events[0].repairs == [f"ended at {where} without <tool_call|>"]
    assert events[1:] == ([end] if end else [])


REPAIRS = [
    ("single quotes", "call:get_weather{city:'Paris',days:2}", {"city": "Paris", "days": 2}, "single-quoted"),
    ("bare word", "call:get_weather{city:Paris,days:2}", {"city": "Paris", "days": 2}, "bare word"),
    ("bare word, nullable string", "call:get_weather{unit:celsius}", {"unit": "celsius"}, "bare word"),
    ("unclosed last string", "call:get_weather{days:2,city:" + Q + "New York}", {"days": 2, "city": "New York"},
     "unterminated string"),
]


@pytest.mark.parametrize(("raw", "arguments", "says"), [c[1:] for c in REPAIRS], ids=[c[0] for c in REPAIRS])
def test_schema_certain_repairs_are_made_and_reported(raw, arguments, says):
    text = "<|tool_call>" + raw + "<tool_call|>"
    events = same_everywhere(text, tools=TOOLS)
    assert events == [ToolCall("get_weather", arguments)]
    assert len(events[0].repairs) == 1 and says in events[0].repairs[0]
    # Without the declarations nothing is certain: an error that keeps the raw text.
    plain = events_of([text])
    assert len(plain) == 1 and isinstance(plain[0], ToolCallError) and plain[0].raw == raw


UNREPAIRED = [
    ("bare word for an integer", "call:get_weather{days:two}"),
    ("unknown tool", "call:other{city:Paris}"),
    ("unclosed string not last", "call:get_weather{city:" + Q + "Paris,days:2"),
    ("unclosed string, no brace", "call:get_weather{city:" + Q + "Paris"),
    ("single quote never closed", "call:get_weather{city:'Paris}"),
]


@pytest.mark.parametrize("raw", [c[1] for c in UNREPAIRED], ids=[c[0] for c in UNREPAIRED])
def test_uncertain_arguments_stay_errors(raw):
    events = same_everywhere("<|tool_call>" + raw + "<tool_call|>", tools=TOOLS)
    assert len(events) == 1 and isinstance(events[0], ToolCallError) and events[0].raw == raw


def test_incomplete_call_at_end_of_turn_stays_an_error():
    events = same_everywhere("<|tool_call>call:get_weather{city:" + Q + "Par<turn|>", tools=TOOLS)
    assert isinstance(events[0], ToolCallError) and "unterminated tool call" in events[0].message
    assert events[1:] == [EndOfTurn("turn")]


@pytest.mark.parametrize("text", ["call:get_weather{city:Paris}", 'get_weather({"city": "Paris"})',
                                  '{"name": "get_weather", "arguments": {"city": "Paris"}}',
                                  "call:get_weather{city:" + Q + "Paris" + Q + "}<tool_call|>"])
def test_never_a_call_from_text_without_the_opening_token(text):
    events = same_everywhere(text, tools=TOOLS)
    assert not any(isinstance(e, (ToolCall, ToolCallError)) for e in events)
