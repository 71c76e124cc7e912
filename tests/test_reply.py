"""`gemma_cli.format.reply`: a Gemma 4 reply, streamed in chunks cut anywhere, into events.

A table of replies with their canonical (collapsed) events; every reply must give the same
events however it is cut. Tool call arguments written the way the template's
format_argument writes them must parse back to the same values, int and float kept apart.
"""

from __future__ import annotations

import re

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma_cli.format.reply import (
    Answer,
    EndOfTurn,
    ReplyParser,
    Thinking,
    ToolCall,
    ToolCallError,
    collapse,
    parse,
    parse_arguments,
    strip_thinking,
)

Q = '<|"|>'
FAST = settings(max_examples=150, deadline=None)
SLOW = settings(max_examples=50, deadline=None)  # jinja renders slowly


def call(body: str) -> str:
    return "<|tool_call>" + body + "<tool_call|>"


def T(text):
    return Thinking(text)


def A(text):
    return Answer(text)


def C(name, arguments):
    return ToolCall(name, arguments)


def END(reason="turn"):
    return EndOfTurn(reason)


def ERR(raw, says):
    # `says` is a part of the message: the wording may change, what it is about may not
    return ToolCallError(raw, says)


# (name, reply text, expected events in canonical form)
CASES = [
    ("empty reply", "", []),
    ("plain answer", "Hello, world!", [A("Hello, world!")]),
    ("answer then end of turn", "Hi there.<turn|>", [A("Hi there."), END()]),
    ("text after the end is ignored", "Hi<turn|>more<|channel>thought\nx", [A("Hi"), END()]),
    ("eos ends", "Bye.<eos>", [A("Bye."), END("eos")]),
    ("tool response ends", "<|tool_response>response:x{}", [END("tool_response")]),
    ("empty thought (26B/31B, thinking off)", "<|channel>thought\n<channel|>Paris.<turn|>", [A("Paris."), END()]),
    ("thought then answer", "<|channel>thought\nThe capital of France.\n<channel|>Paris.<turn|>",
     [T("The capital of France."), A("Paris."), END()]),
    ("only one newline before <channel|> is the block's",
     "<|channel>thought\na\n\nb\n\n<channel|>x", [T("a\n\nb\n"), A("x")]),
    ("line breaks after <channel|> are dropped, others kept",
     "<|channel>thought\nx<channel|>\n\n  Answer\n\nend\n", [T("x"), A("  Answer\n\nend\n")]),
    ("leading newline kept without a thought", "\nHi", [A("\nHi")]),
    ("unterminated thought is thinking", "<|channel>thought\nstill thinking\n", [T("still thinking\n")]),
    ("unterminated thought header", "<|channel>thoug", [T("thoug")]),
    ("thought ended by end of turn", "<|channel>thought\nhm<turn|>", [T("hm"), END()]),
    ("stray <|channel> without thought header", "<|channel>notes<channel|>ok", [T("notes"), A("ok")]),
    ("header without newline is thinking text", "<|channel>thought<channel|>Hi", [T("thought"), A("Hi")]),
    # A reply cut (max_tokens) inside a marker the model spelled out: the partial marker is held back
    # mid-stream and dropped at the end, never answer text (issue 20 item 14).
    ("partial marker at the very end is dropped", "The token <|chan", [A("The token ")]),
    ("cut inside a spelled-out tool call", "Let me check.<|tool_ca", [A("Let me check.")]),
    ("cut after the call opens", "Sure.<|", [A("Sure.")]),
    ("cut inside the end of turn", "Done.<tu", [A("Done.")]),
    ("cut inside a call's closing marker", "<|tool_call>call:f{a:1}<tool_ca", [C("f", {"a": 1})]),
    ("cut inside a thought's closing marker", "<|channel>thought\nhmm\n<chan", [T("hmm\n")]),
    ("a lone < at the end is held back too", "is 2 <", [A("is 2 ")]),
    ("a < inside the answer is text", "2 < 3 ok", [A("2 < 3 ok")]),
    ("angle brackets that are no marker", "a < b, c <| d |> e <turn", [A("a < b, c <| d |> e ")]),
    ("stray closing markers are dropped", "a<channel|>b<tool_call|>c", [A("abc")]),
    ("thought then tool call",
     "<|channel>thought\nneed the weather\n<channel|>" + call(f"call:get_weather{{city:{Q}Paris{Q}}}")
     + "<|tool_response>",
     [T("need the weather"), C("get_weather", {"city": "Paris"}), END("tool_response")]),
    ("tool call inside an unclosed thought ends it",
     "<|channel>thought\nhmm" + call("call:f{}"), [T("hmm"), C("f", {})]),
    ("answer around a tool call", "Checking." + call("call:f{}") + "Done.<turn|>",
     [A("Checking."), C("f", {}), A("Done."), END()]),
    ("several tool calls", call("call:a{x:1}") + call(f"call:b{{y:{Q}z{Q}}}") + "\n" + call("call:c{}"),
     [C("a", {"x": 1}), C("b", {"y": "z"}), A("\n"), C("c", {})]),
    ("every kind of value",
     call(f"call:f{{key:{Q}text{Q},n:1,flag:true,off:false,x:null,obj:{{a:[1,2.5,{Q}s{Q}]}}}}"),
     [C("f", {"key": "text", "n": 1, "flag": True, "off": False, "x": None, "obj": {"a": [1, 2.5, "s"]}})]),
    ("numbers", call("call:f{a:-7,b:3.25,c:-0.5,d:1e3,e:2.5E-3,f:-1e+2,g:0,h:12345678901234567890}"),
     [C("f", {"a": -7, "b": 3.25, "c": -0.5, "d": 1000.0, "e": 0.0025, "f": -100.0, "g": 0,
              "h": 12345678901234567890})]),
    ("numbers as python writes them", call("call:f{a:1e-05,b:1.5e+20,c:-0.0,d:100.0}"),
     [C("f", {"a": 1e-05, "b": 1.5e20, "c": -0.0, "d": 100.0})]),
    ("strings are raw", call(f"call:f{{s:{Q}a}}b,c:d \"q\" 'x' {{[\\n\nline2\t{Q},t:{Q}{Q}}}"),
     [C("f", {"s": "a}b,c:d \"q\" 'x' {[\\n\nline2\t", "t": ""})]),
    ("unicode and emoji", call(f"call:greet{{名前:{Q}太郎{Q},msg:{Q}こんにちは 👋🏽 café{Q}}}") + "✓",
     [C("greet", {"名前": "太郎", "msg": "こんにちは 👋🏽 café"}), A("✓")]),
    ("quoted keys", call(f"call:f{{{Q}my key{Q}:1,{Q}a:b{Q}:{Q}c{Q}}}"), [C("f", {"my key": 1, "a:b": "c"})]),
    ("array arguments", call(f"call:f[1,{Q}a{Q},[]]"), [C("f", [1, "a", []])]),
    ("nested objects and arrays", call("call:f{a:{b:{c:[[],[{}],{d:[false,[null]]}]}}}"),
     [C("f", {"a": {"b": {"c": [[], [{}], {"d": [False, [None]]}]}}})]),
    ("empty arguments", call("call:ping{}"), [C("ping", {})]),
    ("whitespace between tokens", call("\ncall:f{ a : 1 ,\n b : [ 1 , 2 ] }\n"), [C("f", {"a": 1, "b": [1, 2]})]),
    ("lenient: JSON strings, Python words, trailing commas",
     call('call:f{"a":"x\\"y\\u00e9",b:True,c:None,d:[1,],}'),
     [C("f", {"a": 'x"yé', "b": True, "c": None, "d": [1]})]),
    ("tool names with dots and hyphens", call("call:my-tool.v2{}"), [C("my-tool.v2", {})]),
    ("missing closing brace, then text goes on", call("call:f{a:1") + "Then text.",
     [ERR("call:f{a:1", "arguments end"), A("Then text.")]),
    ("garbage after the name", call("call:f oops{a:1}") + "ok", [ERR("call:f oops{a:1}", "tool name"), A("ok")]),
    ("no arguments", call("call:f"), [ERR("call:f", "no {arguments}")]),
    ("no call: prefix", call("f{}"), [ERR("f{}", "call:NAME")]),
    ("unterminated string", call(f"call:f{{a:{Q}abc}}") + call("call:g{}"),
     [ERR(f"call:f{{a:{Q}abc}}", "unterminated string"), C("g", {})]),
    ("bad number", call("call:f{a:1.2.3}") + "x", [ERR("call:f{a:1.2.3}", "bad number"), A("x")]),
    ("bad numbers", call("call:f{a:-}") + call("call:f{a:1e}") + call("call:f{a:0x1F}"),
     [ERR("call:f{a:-}", "bad number"), ERR("call:f{a:1e}", "bad number"), ERR("call:f{a:0x1F}", "bad number")]),
    ("bare word value", call("call:f{unit:celsius}"), [ERR("call:f{unit:celsius}", "unexpected")]),
    ("text after the arguments", call("call:f{a:1}xyz"), [ERR("call:f{a:1}xyz", "after the value")]),
    ("missing colon", call("call:f{a 1}"), [ERR("call:f{a 1}", "expected ':'")]),
    ("unterminated call at the end", "Sure.<|tool_call>call:f{a:1",
     [A("Sure."), ERR("call:f{a:1", "unterminated")]),
    ("unterminated call at end of turn", "<|tool_call>call:f{a:<turn|>", [ERR("call:f{a:", "unterminated"), END()]),
    ("a call opened inside an unclosed call", "<|tool_call>call:f{a:" + call("call:g{}"),
     [ERR("call:f{a:", "unterminated"), C("g", {})]),
]


def same(actual: list, expected: list) -> bool:
    """Events equal; a ToolCallError's expected message need only be part of the actual one."""
    if len(actual) != len(expected):
        return False
    for a, e in zip(actual, expected):
        if isinstance(e, ToolCallError):
            if not (isinstance(a, ToolCallError) and a.raw == e.raw and e.message in a.message):
                return False
        elif typed(a) != typed(e):
            return False
    return True


def typed(value):
    """A value with its types spelled out, so 1 and 1.0 (and True) differ in comparisons."""
    if isinstance(value, (Thinking, Answer, EndOfTurn, ToolCallError)):
        return value
    if isinstance(value, ToolCall):
        return ("call", value.name, typed(value.arguments))
    if isinstance(value, dict):
        return ("dict", {k: typed(v) for k, v in value.items()})
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    return (type(value).__name__, value)


def events_of(chunks) -> list:
    parser = ReplyParser()
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return collapse(events + parser.close())


TEXTS = [text for _, text, _ in CASES]


@pytest.mark.parametrize("name,text,expected", CASES, ids=[c[0] for c in CASES])
def test_case(name, text, expected):
    actual = events_of([text])
    assert same(actual, expected), actual


@pytest.mark.parametrize("text", TEXTS, ids=[c[0] for c in CASES])
def test_every_two_way_split_gives_the_same_events(text):
    whole = events_of([text])
    for cut in range(len(text) + 1):
        assert events_of([text[:cut], text[cut:]]) == whole, cut


@pytest.mark.parametrize("text", TEXTS, ids=[c[0] for c in CASES])
def test_one_character_at_a_time(text):
    assert events_of(list(text)) == events_of([text])


@FAST
@given(st.data())
def test_random_splits_give_the_same_events(data):
    text = data.draw(st.sampled_from(TEXTS))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert events_of(chunks) == events_of([text])


# ---------------------------------------------------------------- streaming without delay


def test_answer_streams_and_only_a_possible_marker_waits():
    parser = ReplyParser()
    assert parser.feed("Hello") == [A("Hello")]
    assert parser.feed(" wor<") == [A(" wor")]
    assert parser.feed("ld") == [A("<ld")]
    assert parser.feed(" <|tool") == [A(" ")]
    assert parser.feed("_call>call:f{}") == []
    assert parser.feed("<tool_call|>after") == [C("f", {}), A("after")]
    assert parser.feed("<turn|>") == [END()]
    assert parser.feed("ignored") == [] and parser.close() == []


def test_thinking_streams_and_holds_only_a_final_newline():
    parser = ReplyParser()
    assert parser.feed("<|channel>tho") == []
    assert parser.feed("ught\nstep one\n") == [T("step one")]
    assert parser.feed("step two\n") == [T("\nstep two")]
    assert parser.feed("<chan") == []
    assert parser.feed("nel|>\nYes") == [A("Yes")]
    assert parser.close() == []


def test_parse_builds_a_reply():
    reply = parse("<|channel>thought\nplan\n<channel|>On it." + call("call:f{a:1}") + call("call:g{")
                  + "<|tool_response>")
    assert (reply.thinking, reply.answer, reply.finish) == ("plan", "On it.", "tool_response")
    assert reply.tool_calls == [C("f", {"a": 1})]
    assert [e.raw for e in reply.errors] == ["call:g{"]
    assert parse("just text").finish is None


def test_parse_arguments_on_its_own():
    assert parse_arguments(f" {{a:[1,-2.0e0,{Q}x{Q}]}} ") == {"a": [1, -2.0, "x"]}
    assert parse_arguments(f"{Q}only a string{Q}") == "only a string"
    assert parse_arguments("-12") == -12 and parse_arguments("null") is None
    for bad in ["", "{", "{a:1}}", "[1 2]", "{a:1,,b:2}", "{,}", "tru", f"{Q}open", "{a:1.}", "[" * 100_000]:
        with pytest.raises(ValueError):
            parse_arguments(bad)


def test_deep_nesting_is_an_error_event_not_a_crash():
    events = events_of([call("call:f" + "[" * 100_000) + "ok"])
    assert isinstance(events[0], ToolCallError) and events[1:] == [A("ok")]


# ---------------------------------------------------------------- round trip through the template's syntax


def format_argument(value, escape_keys=False) -> str:
    # The template's format_argument macro: jinja prints numbers and None as Python does.
    if isinstance(value, str):
        return Q + value + Q
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: kv[0].lower())
        return "{" + ",".join((Q + k + Q if escape_keys else k) + ":" + format_argument(v, escape_keys)
                              for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(format_argument(v, escape_keys) for v in value) + "]"
    return str(value)


# Whatever a raw string holds, except its own closing quote and the markers that end a call.
FORBIDDEN = (Q, "<tool_call|>", "<|tool_call>", "<turn|>", "<eos>", "<|tool_response>")
TRICKY = st.sampled_from(["}", "{", ",", ":", "]", "[", "\n", '"', "<|", "|>", "<tool_call", "true", "-1.5e3",
                          "👋🏽"])
STRINGS = st.lists(st.text(max_size=6) | TRICKY, max_size=5).map("".join).filter(
    lambda s: not any(f in s for f in FORBIDDEN))
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | STRINGS)
IDENTIFIERS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True)


def values(keys):
    return st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(keys, inner, max_size=4), max_leaves=12)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(IDENTIFIERS, values(IDENTIFIERS), max_size=5), st.data())
def test_tool_call_round_trip(arguments, data):
    text = "Let me check." + call("call:lookup" + format_argument(arguments)) + "<|tool_response>"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=4)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    events = events_of(chunks)
    assert typed(events[1]) == typed(C("lookup", arguments)) and events[2] == END("tool_response")


@FAST
@given(values(STRINGS))
def test_arguments_round_trip_with_quoted_keys(value):
    assert typed(parse_arguments(format_argument(value, escape_keys=True))) == typed(value)


# ---------------------------------------------------------------- against the official template's macros


def macro(source: str, name: str):
    found = re.search(r"\{%-? macro " + name + r"\(.*?\{%-? endmacro -?%\}", source, re.DOTALL)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return getattr(env.from_string(found.group()).module, name)


@pytest.fixture(scope="session")
def template_macros(official_template):
    return macro(official_template, "strip_thinking"), macro(official_template, "format_argument")


@FAST
@given(st.lists(st.sampled_from(["<|channel>", "<channel|>", "thought\n", "a", " ", "\n", "b\t"]), max_size=10))
def test_strip_thinking_matches_the_template(template_macros, parts):
    text = "".join(parts)
    assert strip_thinking(text) == str(template_macros[0](text))


@SLOW
@given(st.dictionaries(IDENTIFIERS, values(IDENTIFIERS), max_size=4))
def test_parses_what_the_template_writes(template_macros, arguments):
    written = str(template_macros[1](arguments, escape_keys=False))
    assert written == format_argument(arguments)
    assert typed(parse_arguments(written)) == typed(arguments)
