"""`gemma_cli.format.prompt.render` against the official Gemma 4 chat template rendered by jinja2.

The hand-written SHAPES and the random `conversation()` strategy are here; tests/test_prompt_variants.py
runs both against every known template (the April one included), so neither test is written twice.

The reference environment is the one transformers builds in `_compile_jinja_template` (and that
llama-cpp-python copies in `Jinja2ChatFormatter`): `ImmutableSandboxedEnvironment(trim_blocks=True,
lstrip_blocks=True, extensions=[loopcontrols])` (plus a `{% generation %}` tag and a `tojson`
override, which this template uses neither of). The template strips whitespace explicitly
everywhere, so a plain `jinja2.Environment()` renders it identically (checked below).
"""

from __future__ import annotations

import math

import jinja2
import jinja2.ext
import pytest
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gemma_cli.format.prompt import QUOTE, format_argument, render, strip_thinking

Q = QUOTE


def compile_reference(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    return env.from_string(source)


@pytest.fixture(scope="session")
def official(official_template):
    return compile_reference(official_template)


@pytest.fixture(scope="session")
def older(older_template):
    return compile_reference(older_template)


def reference(template, messages, tools=None, *, thinking=False, add_generation_prompt=True, bos="<bos>"):
    return template.render(
        messages=messages, tools=tools, enable_thinking=thinking, add_generation_prompt=add_generation_prompt, bos_token=bos
    )


# ---------------------------------------------------------------------------------------------
# Hand-written conversation shapes.

SYS = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "What is the weather in Paris?"}


def call(name, arguments, id=None):
    tc = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if id is not None:
        tc["id"] = id
    return tc


def fn(name, description="", parameters=None, **more):
    f = {"name": name, "description": description}
    if parameters is not None:
        f["parameters"] = parameters
    f.update(more)
    return {"type": "function", "function": f}


WEATHER = fn(
    "get_weather",
    "Current weather for a city.",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Unit"},
        },
        "required": ["city"],
    },
)

NESTED = fn(
    "book_trip",
    "Book a trip with travellers and legs.",
    {
        "type": "object",
        "properties": {
            "Travellers": {
                "type": "array",
                "description": "who travels",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "age": {"type": "integer", "nullable": True},
                        "tags": {"type": "array", "items": {"type": "string", "enum": ["vip", "kid"]}},
                    },
                    "required": ["name"],
                },
            },
            "budget": {"type": "number", "nullable": True, "description": "EUR"},
            "options": {
                "type": "object",
                "description": "extras",
                "properties": {
                    "insurance": {"type": "boolean"},
                    "seat": {
                        "type": "object",
                        "properties": {"row": {"type": "integer"}, "window": {"type": "boolean"}},
                        "required": ["row"],
                    },
                },
                "required": ["insurance"],
            },
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}, "description": "free-form"},
            "legs": {"type": "array", "items": {"type": ["string", "null"], "minItems": 1, "description": "IATA"}},
            "type": {"type": "string", "description": "a property literally named type"},
            "anything": {"description": "no type at all"},
        },
        "required": ["Travellers", "options"],
    },
    response={"type": "object", "description": "booking receipt"},
)

NO_PARAMS = fn("now", "Current time.")
UNTYPED_PARAMS = fn("odd", "Parameters without a type.", {"properties": {"x": {"type": "string"}}})

CALL_TURN = {"role": "assistant", "content": None, "tool_calls": [call("get_weather", {"city": "Paris"}, id="c1")]}

SHAPES = [
    pytest.param([{"role": "user", "content": "Hello"}], None, {}, id="plain"),
    pytest.param([{"role": "user", "content": "  padded \n"}], None, {}, id="user-trimmed"),
    pytest.param([SYS, {"role": "user", "content": "Hi"}], None, {}, id="system"),
    pytest.param(
        [{"role": "system", "content": [{"type": "text", "text": " One. "}, {"type": "text", "text": "Two."}]}, USER],
        None,
        {},
        id="system-parts",
    ),
    pytest.param(
        [{"role": "system", "content": [{"type": "text", "text": "See"}, {"type": "image"}]}, USER],
        None,
        {},
        id="system-parts-with-image",
    ),
    pytest.param([{"role": "developer", "content": "Dev rules."}, USER], None, {}, id="developer"),
    pytest.param([{"role": "system", "content": ""}, USER], None, {}, id="system-empty"),
    pytest.param([SYS], None, {}, id="system-only"),
    pytest.param([USER], None, {"thinking": True}, id="thinking-on"),
    pytest.param([SYS, USER], None, {"thinking": True}, id="thinking-on-system"),
    pytest.param([USER], None, {"add_generation_prompt": False}, id="no-generation-prompt"),
    pytest.param([USER], None, {"thinking": True, "add_generation_prompt": False}, id="thinking-no-generation-prompt"),
    pytest.param([USER], None, {"bos": ""}, id="no-bos"),
    pytest.param(
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<|channel>thought\nadd<channel|>4", "reasoning": "old thinking"},
            {"role": "user", "content": "times 3?"},
        ],
        None,
        {"thinking": True},
        id="multi-turn-old-thinking-dropped",
    ),
    pytest.param(
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "x<|channel>unclosed thought"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "<|channel>t1<channel|>mid<|channel>t2<channel|> end "},
        ],
        None,
        {"add_generation_prompt": False},
        id="strip-thinking-variants",
    ),
    pytest.param(
        [USER, {"role": "assistant", "content": "Sunny."}, {"role": "assistant", "content": "Warm, too."}],
        None,
        {},
        id="two-assistant-messages-continue",
    ),
    pytest.param([USER], [WEATHER], {}, id="tools-declared"),
    pytest.param([SYS, USER], [WEATHER, NESTED], {"thinking": True}, id="tools-nested-schema"),
    pytest.param([USER], [NO_PARAMS, UNTYPED_PARAMS], {}, id="tools-no-params-untyped-params"),
    pytest.param(
        [USER],
        [fn("f", "r", {"type": "object", "properties": {}}, response={"type": "string", "description": "plain"})],
        {},
        id="tool-response-decl-not-object",
    ),
    pytest.param([USER, CALL_TURN], [WEATHER], {}, id="pending-tool-call"),
    pytest.param(
        [USER, {**CALL_TURN, "reasoning": "need weather"}],
        [WEATHER],
        {"thinking": True},
        id="pending-tool-call-with-reasoning",
    ),
    pytest.param(
        [USER, CALL_TURN, {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'}],
        [WEATHER],
        {},
        id="tool-result-string",
    ),
    pytest.param(
        [
            USER,
            {**CALL_TURN, "reasoning_content": "current exchange thinking is kept"},
            {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21.5}'},
            {"role": "assistant", "content": "21.5 degrees and clear."},
        ],
        [WEATHER],
        {"thinking": True},
        id="tool-result-then-answer",
    ),
    pytest.param(
        [USER, CALL_TURN, {"role": "tool", "tool_call_id": "c1", "content": {}}],
        None,
        {},
        id="tool-result-empty-dict",
    ),
    pytest.param(
        [USER, CALL_TURN, {"role": "tool", "tool_call_id": "c1", "content": 42}],
        None,
        {},
        id="tool-result-number",
    ),
    pytest.param(
        [
            USER,
            {"role": "assistant", "tool_calls": [call("get_weather", {"city": "Paris"}, "a"), call("get_weather", {"city": "Rome"}, "b")]},
            {"role": "tool", "tool_call_id": "a", "content": "18"},
            {"role": "tool", "tool_call_id": "b", "content": "25"},
        ],
        [WEATHER],
        {},
        id="two-calls-two-results",
    ),
    pytest.param(
        [
            USER,
            {"role": "assistant", "tool_calls": [call("lookup", {"q": "x"}), call("get_weather", {"city": "Oslo"})]},
            {"role": "tool", "content": "no ids: named after the last call"},
        ],
        None,
        {},
        id="tool-result-no-ids",
    ),
    pytest.param(
        [
            USER,
            {"role": "assistant", "tool_calls": [call("lookup", {"q": "x"}, id="z")]},
            {"role": "tool", "tool_call_id": "other", "name": "by_name", "content": "named by its own name"},
        ],
        None,
        {},
        id="tool-result-own-name",
    ),
    pytest.param(
        [
            USER,
            CALL_TURN,
            {
                "role": "tool",
                "tool_call_id": "c1",
                "content": [{"type": "text", "text": "see "}, {"type": "image"}, {"type": "text", "text": "chart"}, {"type": "audio"}],
            },
        ],
        [WEATHER],
        {},
        id="tool-result-content-parts",
    ),
    pytest.param(
        [USER, CALL_TURN, {"role": "tool", "tool_call_id": "c1", "content": [{"type": "json", "json": 1}, {"type": "text", "text": "ok"}]}],
        None,
        {},
        id="tool-result-unknown-part",
    ),
    pytest.param(
        [USER, CALL_TURN, {"role": "tool", "tool_call_id": "c1", "content": None}],
        None,
        {},
        id="tool-result-none",
    ),
    pytest.param(
        [
            USER,
            {
                "role": "assistant",
                "tool_calls": [call("get_weather", {"city": "Paris"})],
                "tool_responses": [{"name": "get_weather", "response": {"temp": 20}}, {"response": "nameless"}],
            },
        ],
        [WEATHER],
        {},
        id="legacy-tool-responses",
    ),
    pytest.param(
        [USER, {"role": "assistant", "tool_calls": [call("get_weather", '{"city": "Paris"}')]}],
        None,
        {},
        id="arguments-as-string",
    ),
    pytest.param(
        [
            USER,
            {
                "role": "assistant",
                "tool_calls": [
                    call(
                        "store",
                        {"b": [1, 2.0, 1e20, -0.5, True, None], "A": {"Z": "é", "a": {"deep": [{"k": False}]}}, "c": "", "n": 10**20},
                    )
                ],
            },
        ],
        None,
        {"add_generation_prompt": False},
        id="argument-values",
    ),
    pytest.param(
        [{"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": " Describe both. "}]}],
        None,
        {},
        id="image-and-audio-before-text",
    ),
    pytest.param(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}],
        None,
        {"thinking": True},
        id="video",
    ),
    pytest.param(
        [USER, {"role": "assistant", "content": [{"type": "text", "text": "<|channel>x<channel|> Parts answer"}]}],
        None,
        {},
        id="assistant-content-parts",
    ),
    pytest.param([{"role": "user", "content": ""}], None, {}, id="empty-content"),
    pytest.param([{"role": "user", "content": []}], None, {}, id="empty-parts"),
    pytest.param([{"role": "user"}], None, {}, id="no-content-key"),
    pytest.param(
        [{"role": "user", "content": "Grüße, 世界! 🌍 — «ok»\t"}, {"role": "assistant", "content": "こんにちは"}, {"role": "user", "content": "🙂"}],
        None,
        {},
        id="unicode",
    ),
    pytest.param(
        [
            USER,
            CALL_TURN,
            {"role": "tool", "tool_call_id": "c1", "content": "21"},
            {"role": "assistant", "content": "   "},
        ],
        None,
        {},
        id="whitespace-answer-after-tool",
    ),
    pytest.param(
        [
            USER,
            {**CALL_TURN, "content": " <|channel>thought only<channel|> "},
            {"role": "tool", "tool_call_id": "c1", "content": "21"},
        ],
        None,
        {},
        id="thinking-only-content-with-results-keeps-turn-open",
    ),
    pytest.param(
        [
            USER,
            {"role": "assistant", "content": [{"type": "image"}], "tool_calls": [call("get_weather", {"city": "x"})]},
        ],
        None,
        {},
        id="tool-call-with-image-content",
    ),
    pytest.param(
        [
            USER,
            CALL_TURN,
            {"role": "tool", "tool_call_id": "c1", "content": "21"},
            {"role": "assistant", "content": "It is 21."},
            {"role": "user", "content": "And tomorrow?"},
            {**CALL_TURN, "reasoning": "after the last user message: kept"},
            {"role": "tool", "tool_call_id": "c1", "content": "19"},
        ],
        [WEATHER],
        {"thinking": True},
        id="two-exchanges",
    ),
    pytest.param(
        [
            USER,
            {**CALL_TURN, "reasoning": "old exchange thinking is dropped"},
            {"role": "tool", "tool_call_id": "c1", "content": "21"},
            {"role": "assistant", "content": "21."},
            {"role": "user", "content": "thanks"},
        ],
        [WEATHER],
        {"thinking": True},
        id="old-exchange-reasoning-dropped",
    ),
    pytest.param(
        [{"role": "tool", "content": "orphan"}, USER, {"role": "tool", "content": "orphan too"}],
        None,
        {},
        id="orphan-tool-messages-dropped",
    ),
    pytest.param(
        [USER, {"role": "system", "content": " mid-conversation system "}, {"role": "assistant", "content": "ok"}],
        None,
        {},
        id="system-in-the-middle",
    ),
    pytest.param(
        [SYS, USER],
        [fn("Zeta", "z"), fn("alpha", "a", {"type": "object", "properties": {"B": {"type": "string"}, "a": {"type": "string"}, "_x": {"type": "integer"}}})],
        {},
        id="tool-order-kept-properties-case-insensitive",
    ),
]


# The official template cannot render a tool message whose content is a non-empty dict: a dict
# passes jinja's `sequence` test, so it goes down the content-parts branch and fails on
# `'key'.get(...)`. `render` writes it as a structured response instead; that equals the template
# with the branch fixed (the dict then reaches `format_tool_response_block` as a mapping). An empty
# dict renders in the official template (as empty text), so it keeps that rendering.
BROKEN_BRANCH = "{%- elif tool_body is sequence and tool_body is not string -%}"
FIXED_BRANCH = (
    "{%- elif tool_body is sequence and tool_body is not string and not (tool_body is mapping and tool_body) -%}"
)


@pytest.fixture(scope="session")
def official_fixed(official_template):
    assert official_template.count(BROKEN_BRANCH) == 1
    return compile_reference(official_template.replace(BROKEN_BRANCH, FIXED_BRANCH))


DICT_RESULT = [
    USER,
    {**CALL_TURN, "reasoning_content": "current exchange thinking is kept"},
    {"role": "tool", "tool_call_id": "c1", "content": {"temp": 21.5, "Sky": "clear", "rain": None, "ok": True, "n": [1]}},
    {"role": "assistant", "content": "21.5 degrees and clear."},
]


def test_tool_result_dict(official, official_fixed):
    with pytest.raises(jinja2.UndefinedError):
        reference(official, DICT_RESULT, [WEATHER], thinking=True)
    prompt = render(DICT_RESULT, [WEATHER], thinking=True)
    assert prompt == reference(official_fixed, DICT_RESULT, [WEATHER], thinking=True)
    assert f"<|tool_response>response:get_weather{{n:[1],ok:true,rain:None,Sky:{Q}clear{Q},temp:21.5}}<tool_response|>" in prompt


def test_tool_result_list_of_values_fails_like_the_template(official):
    messages = [USER, CALL_TURN, {"role": "tool", "tool_call_id": "c1", "content": [1, 2.5, "x"]}]
    with pytest.raises(jinja2.UndefinedError):
        reference(official, messages)
    with pytest.raises(ValueError, match="content parts"):
        render(messages)


def test_shape_count():
    assert len(SHAPES) >= 30


def test_plain_environment_renders_the_same(official_template):
    # The template controls all of its whitespace with `-`, so trim/lstrip settings do not matter.
    plain = jinja2.Environment(extensions=[jinja2.ext.loopcontrols]).from_string(official_template)
    for shape in SHAPES:
        messages, tools, options = shape.values
        assert render(messages, tools, **options) == reference(plain, messages, tools, **options), shape.id


# ---------------------------------------------------------------------------------------------
# Literal expectations: what the format looks like, independent of jinja.


def test_plain_prompt_literal():
    assert render([{"role": "user", "content": "Hi"}]) == (
        "<bos><|turn>user\nHi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    )


def test_thinking_prompt_literal():
    assert render([{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi"}], thinking=True) == (
        "<bos><|turn>system\n<|think|>\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
    )


def test_tool_exchange_literal():
    prompt = render(
        [USER, CALL_TURN, {"role": "tool", "tool_call_id": "c1", "content": {"temp": 21}}], [WEATHER], bos=""
    )
    assert prompt.endswith(
        f"<|turn>model\n<|tool_call>call:get_weather{{city:{Q}Paris{Q}}}<tool_call|>"
        "<|tool_response>response:get_weather{temp:21}<tool_response|>"
    )
    assert f"<|tool>declaration:get_weather{{description:{Q}Current weather for a city.{Q}" in prompt


def test_empty_messages_rejected():
    with pytest.raises(ValueError):
        render([])


@pytest.mark.parametrize(
    ("value", "escape_keys", "expected"),
    [
        ("s", True, f"{Q}s{Q}"),
        (True, True, "true"),
        (False, True, "false"),
        (None, True, "None"),
        (3, True, "3"),
        (2.0, True, "2.0"),
        (1e20, True, "1e+20"),
        (math.inf, True, "inf"),
        ([1, "a", [False]], True, f"[1,{Q}a{Q},[false]]"),
        ((1, 2), True, "[1,2]"),
        ({"b": 1, "A": 2, "a": 3}, True, f"{{{Q}A{Q}:2,{Q}a{Q}:3,{Q}b{Q}:1}}"),
        ({"b": {"c": "d"}}, False, f"{{b:{{c:{Q}d{Q}}}}}"),
        ({}, True, "{}"),
        ([], True, "[]"),
    ],
)
def test_format_argument(value, escape_keys, expected):
    assert format_argument(value, escape_keys=escape_keys) == expected


def test_format_argument_matches_macro(official):
    # The macro itself, exported by the template module (which renders the body once, so it needs
    # a conversation).
    macro = official.make_module({"messages": [USER], "bos_token": ""}).format_argument
    values = [{"Z": [1.5, None, {"y": True}], "a": "x"}, [[], {}], "q", 0, -7.25, None]
    for value in values:
        for escape in (True, False):
            assert format_argument(value, escape_keys=escape) == str(macro(value, escape_keys=escape))


def test_strip_thinking():
    assert strip_thinking(" <|channel>thought\nhm<channel|> Answer ") == "Answer"
    assert strip_thinking("a<|channel>never closed") == "a"


def test_no_jinja_import():
    import subprocess
    import sys

    code = "import sys, gemma_cli.format.prompt; sys.exit('jinja2' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------------------------------------
# The older template (many GGUFs embed it). Our builder targets the newest one; on shapes where
# the two agree, it matches the older one too. Where they differ:
#  1. older `format_parameters` drops properties named description/type/properties/required/nullable
#     at every level; the newest only filters those keys when describing an OBJECT that has no
#     `properties` (its additionalProperties & co.);
#  2. a system message whose content is a list of parts: older prints the Python repr of the list;
#  3. a tool message with content parts: only the newest adds <|image|>/<|audio|>/<|video|> after
#     the response;
#  4. closing a model turn after tool results: older looks at `content` truthiness, the newest at the
#     rendered text, so whitespace-only or thinking-only content (or an empty text part) closes the
#     turn in the older one and keeps it open in the newest.

DIFFERENT_IN_OLDER = {
    "system-parts",  # 2
    "system-parts-with-image",  # 2
    "tools-nested-schema",  # 1: the property named "type"
    "tool-result-content-parts",  # 3
    "thinking-only-content-with-results-keeps-turn-open",  # 4
}


@pytest.mark.parametrize(("messages", "tools", "options"), SHAPES)
def test_older_template(older, messages, tools, options, request):
    shape_id = request.node.callspec.id
    same = render(messages, tools, **options) == reference(older, messages, tools, **options)
    assert same == (shape_id not in DIFFERENT_IN_OLDER)


def test_older_drops_standard_named_properties(official, older):
    tool = fn("f", "d", {"type": "object", "properties": {"description": {"type": "string"}, "keep": {"type": "string"}}})
    new = reference(official, [USER], [tool])
    old = reference(older, [USER], [tool])
    assert "properties:{description:{" in new
    assert "properties:{keep:{" in old


# ---------------------------------------------------------------------------------------------
# Random conversations.

TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [" Hi ", "\n", "ÄÖ 日本 🙂", "<|channel>thought\nt<channel|>answer", "a<|channel>open", "<channel|>x", "  ", "Tab\t"]
    ),
)
KEY = st.one_of(st.sampled_from(["a", "A", "b", "B", "city", "Unit", "_x", "é", "type", "description", "items"]), st.text(min_size=1, max_size=5))
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**22), st.floats(allow_nan=False, width=64), TEXT
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEY, inner, max_size=3)),
    max_leaves=8,
)


def schema_strategy():
    leaf = st.fixed_dictionaries(
        {"type": st.sampled_from(["string", "integer", "number", "boolean", "STRING", "null"])},
        optional={
            "description": TEXT,
            "enum": st.lists(TEXT, max_size=3),
            "nullable": st.booleans(),
            "default": SCALAR,
        },
    )

    def extend(inner):
        array = st.fixed_dictionaries(
            {"type": st.just("array")},
            optional={
                "items": st.one_of(inner, st.just({}), st.fixed_dictionaries({"type": st.lists(st.sampled_from(["string", "null"]), max_size=2)})),
                "description": TEXT,
            },
        )
        props = st.dictionaries(KEY, inner, max_size=3)
        obj = props.flatmap(
            lambda p: st.fixed_dictionaries(
                {"type": st.just("object"), "properties": st.just(p)},
                optional={"required": st.lists(st.sampled_from(sorted(p) or ["zz"]), max_size=2, unique=True), "description": TEXT},
            )
        )
        free = st.fixed_dictionaries(
            {"type": st.just("object")}, optional={"additionalProperties": inner, "description": TEXT, "required": st.just(["k"])}
        )
        return st.one_of(array, obj, free)

    return st.recursive(leaf, extend, max_leaves=6)


SCHEMA = schema_strategy()
NAME = st.sampled_from(["get_weather", "search", "Run", "f"])
TOOL = st.builds(
    lambda name, desc, props, required, typed, response: fn(
        name,
        desc,
        None
        if props is None
        else {**({"type": "object"} if typed else {}), "properties": props, **({"required": required} if required else {})},
        **({"response": response} if response is not None else {}),
    ),
    NAME,
    TEXT,
    st.one_of(st.none(), st.dictionaries(KEY, SCHEMA, max_size=3)),
    st.lists(KEY, max_size=2),
    st.booleans(),
    st.one_of(st.none(), st.fixed_dictionaries({"type": st.sampled_from(["object", "string"])}, optional={"description": TEXT})),
)
PART = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, TEXT),
    st.sampled_from([{"type": "image"}, {"type": "audio"}, {"type": "video"}]),
)
CONTENT = st.one_of(TEXT, st.lists(PART, max_size=3), st.none())


@st.composite
def conversation(draw):
    messages = []
    first = draw(st.sampled_from([None, "system", "developer"]))
    if first:
        messages.append({"role": first, "content": draw(st.one_of(TEXT, st.lists(PART, max_size=2)))})
    for _ in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(CONTENT)})
        for _ in range(draw(st.integers(0, 2))):
            assistant = {"role": "assistant", "content": draw(CONTENT)}
            if draw(st.booleans()):
                assistant[draw(st.sampled_from(["reasoning", "reasoning_content"]))] = draw(TEXT)
            results = []
            if draw(st.booleans()):
                calls = []
                for i in range(draw(st.integers(1, 3))):
                    args = draw(st.one_of(st.dictionaries(KEY, VALUE, max_size=3), st.just('{"raw": 1}')))
                    with_id = draw(st.booleans())
                    calls.append(call(draw(NAME), args, id=f"id{i}" if with_id else None))
                assistant["tool_calls"] = calls
                if draw(st.booleans()):
                    assistant["tool_responses"] = draw(
                        st.lists(st.fixed_dictionaries({"response": VALUE}, optional={"name": NAME}), max_size=2)
                    )
                for i, c in enumerate(calls[: draw(st.integers(0, len(calls)))]):
                    result = {"role": "tool", "content": draw(st.one_of(TEXT, st.dictionaries(KEY, VALUE, max_size=3), st.lists(PART, max_size=2), VALUE))}
                    if "id" in c:
                        result["tool_call_id"] = c["id"]
                    else:
                        result["name"] = draw(NAME)
                    results.append(result)
            messages.append(assistant)
            messages.extend(results)
    return messages
