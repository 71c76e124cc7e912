"""`prompt.render(variant=...)` against jinja2 renders of each of the five known Gemma 4 templates.

Table-driven (every hand-written shape of test_prompt.py, plus shapes for the rules where the
releases differ) and property-based (random conversations), for each variant; then one test per
difference, so that a rule that stops mattering, or starts to, is seen. Needs ../shared/reference.
"""

from __future__ import annotations

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gemma_cli.format import prompt
from gemma_cli.format.prompt import QUOTE as Q
from gemma_cli.format.prompt import VARIANTS, render, variant_of
from tests.conftest import need_reference
from tests.reference import FILES
from tests.test_prompt import (
    BROKEN_BRANCH,
    CALL_TURN,
    FIXED_BRANCH,
    SHAPES,
    SYS,
    TOOL,
    USER,
    WEATHER,
    call,
    compile_reference,
    conversation,
    fn,
)

NAMES = list(FILES)


@pytest.fixture(scope="module", params=NAMES)
def name(request):
    return request.param


_COMPILED: dict = {}


def templates(name):
    """(the template, the template with the tool-result dict branch fixed) for a variant name."""
    if name not in _COMPILED:
        source = need_reference(FILES[name]).read_text(encoding="utf-8")
        _COMPILED[name] = (compile_reference(source), compile_reference(source.replace(BROKEN_BRANCH, FIXED_BRANCH)), source)
    return _COMPILED[name]


def reference(template, messages, tools=None, *, thinking=False, add_generation_prompt=True, bos="<bos>",
              preserve_thinking=None):
    extra = {} if preserve_thinking is None else {"preserve_thinking": preserve_thinking}
    return template.render(messages=messages, tools=tools, enable_thinking=thinking,
                           add_generation_prompt=add_generation_prompt, bos_token=bos, **extra)


def expected(name, messages, tools=None, **options):
    """The template's render where it renders, else the dict-fixed one's; None where both fail."""
    official, fixed, _ = templates(name)
    for template in (official, fixed):
        try:
            return reference(template, messages, tools, **options)
        except Exception:  # noqa: BLE001, S112 - malformed input: try the next
            continue
    return None


# What render raises where neither template renders, by what the template raised: a TypeError where it adds
# a non-string (a None name) to the prompt, as the template's `+` does; a ValueError saying why where the
# template reads what the input does not have (jinja's UndefinedError).
RAISES = {TypeError: TypeError, jinja2.UndefinedError: ValueError}


def template_error(name, messages, tools=None, **options) -> type[Exception]:
    """The class of the error the dict-fixed template raises on this input (which it must fail to render)."""
    try:
        reference(templates(name)[1], messages, tools, **options)
    except Exception as e:  # noqa: BLE001 - the class is the answer
        return type(e)
    raise AssertionError("the template renders this input")


def check(name, messages, tools=None, **options):
    want = expected(name, messages, tools, **options)
    build = {k: v for k, v in options.items() if k != "preserve_thinking"}
    if "preserve_thinking" in options:
        build["preserve_thinking"] = bool(options["preserve_thinking"])
    if want is None:
        with pytest.raises(RAISES[template_error(name, messages, tools, **options)]):
            render(messages, tools, variant=VARIANTS[name], **build)
    else:
        assert render(messages, tools, variant=VARIANTS[name], **build) == want


# ---------------------------------------------------------------------------------------------
# Recognition

def test_each_reference_is_recognised(name):
    source = templates(name)[2]
    assert variant_of(source) is VARIANTS[name]
    assert variant_of(source.replace("\n", "\r\n") + "\n\n") is VARIANTS[name]  # line ends, trailing blank


def test_the_synthetic_models_copy_is_the_reference():
    import synthetic

    assert synthetic.REFERENCE_TEMPLATE.read_text(encoding="utf-8") == templates("2026-04")[2]


def test_unknown_template_is_not_recognised():
    assert variant_of(None) is None
    assert variant_of("") is None
    assert variant_of("{{ messages }}") is None
    source = templates("2026-04")[2]
    assert variant_of(source.replace("<|turn>model", "<|turn>mdl")) is None


# ---------------------------------------------------------------------------------------------
# Table-driven

MORE_SHAPES = [
    pytest.param([USER, {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"},
                  {"role": "user", "content": "c"}], None, {}, id="merged-assistant-then-user"),
    pytest.param([USER, CALL_TURN, {"role": "tool", "tool_call_id": "c1", "content": "18"},
                  {"role": "user", "content": "and Rome?"}], [WEATHER], {}, id="results-then-user"),
    pytest.param([USER, CALL_TURN, {"role": "tool", "tool_call_id": "c1", "content": "18"}], [WEATHER],
                 {"thinking": True}, id="results-thinking-prefill"),
    pytest.param([USER, {"role": "assistant", "tool_calls": [call("f", {"x": None, "y": [None, 1]})]},
                  {"role": "tool", "content": {"v": None}}], None, {}, id="null-arguments"),
    pytest.param([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}},
                                               {"type": "input_audio"}, {"type": "text", "text": "what?"}]}],
                 None, {}, id="openai-part-types"),
    pytest.param([USER, {**CALL_TURN, "reasoning_content": "r1"}, {"role": "tool", "tool_call_id": "c1", "content": "18"},
                  {"role": "assistant", "content": "18 degrees"}, {"role": "user", "content": "more"}],
                 [WEATHER], {"thinking": True, "preserve_thinking": True}, id="preserve-thinking"),
    pytest.param([USER, {**CALL_TURN, "reasoning_content": "r1"}, {"role": "tool", "tool_call_id": "c1", "content": "18"},
                  {"role": "assistant", "content": "18 degrees"}, {"role": "user", "content": "more"}],
                 [WEATHER], {"thinking": True, "preserve_thinking": False}, id="preserve-thinking-off"),
    pytest.param([USER, {"role": "assistant", "content": "answer", "reasoning_content": "why"}], None,
                 {"thinking": True, "add_generation_prompt": False}, id="answer-reasoning-after-last-user"),
    pytest.param([USER, {"role": "assistant", "tool_calls": [call("f", {}, "a")]}, {"role": "tool", "tool_call_id": "a", "content": "1"},
                  {"role": "assistant", "tool_calls": [call("g", {}, "b")]}, {"role": "tool", "tool_call_id": "b", "content": "2"},
                  {"role": "assistant", "content": "done"}], None, {}, id="two-rounds-of-calls"),
    pytest.param([USER, {"role": "assistant", "content": "x", "tool_calls": [call("f", {}, "a")],
                         "tool_responses": [{"name": None, "response": 1}]}], None, {}, id="legacy-none-name"),
    pytest.param([USER, {"role": "assistant", "tool_calls": [call("f", {}, "a")]},
                  {"role": "tool", "content": "nameless, no id"}], None, {}, id="tool-result-nameless"),
    pytest.param([SYS, USER], [fn("f", "d", {"type": "object", "properties": {
        "o": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        "n": {"type": "integer", "nullable": True, "description": "d"},
        "e": {"type": "string", "enum": ["x"], "nullable": True},
        "l": {"type": "array", "items": {"type": "string"}}}})], {}, id="interleaved-property-order"),
]


@pytest.mark.parametrize(("messages", "tools", "options"), SHAPES + MORE_SHAPES)
def test_table(name, messages, tools, options):
    check(name, messages, tools, **options)


ALIAS = {"image": "image_url", "audio": "input_audio"}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])
@given(messages=conversation(), tools=st.one_of(st.none(), st.lists(TOOL, max_size=3)), thinking=st.booleans(),
       add_generation_prompt=st.booleans(), bos=st.sampled_from(["<bos>", ""]),
       preserve=st.sampled_from([None, False, True]),
       part_kinds=st.booleans())
def test_random(name, messages, tools, thinking, add_generation_prompt, bos, preserve, part_kinds):
    if part_kinds:  # the OpenAI part types some templates read
        for message in messages:
            if isinstance(message.get("content"), list):
                message["content"] = [{**p, "type": ALIAS.get(p.get("type"), p.get("type"))} if isinstance(p, dict) else p
                                      for p in message["content"]]
    check(name, messages, tools, thinking=thinking, add_generation_prompt=add_generation_prompt, bos=bos,
          preserve_thinking=preserve)


# ---------------------------------------------------------------------------------------------
# One test per difference: where the releases part ways, and that the builder follows each.

def both(name, messages, tools=None, **options):
    out = render(messages, tools, variant=VARIANTS[name], **options)
    assert out == expected(name, messages, tools, **options)
    return out


def test_small_has_no_empty_thought_large_has():
    assert both("2026-07-09-small", [USER]).endswith("<|turn>model\n")
    assert both("2026-07-09-large", [USER]).endswith("<|turn>model\n<|channel>thought\n<channel|>")
    assert both("2026-04", [USER]).endswith("<|channel>thought\n<channel|>")


RESULT = [USER, CALL_TURN, {"role": "tool", "tool_call_id": "c1", "content": "18"}]


@pytest.mark.parametrize("size", ["small", "large"])
def test_thought_prefilled_after_tool_result_with_thinking(size):
    out = both(f"2026-07-09-{size}", RESULT, [WEATHER], thinking=True)
    assert out.endswith("<tool_response|><|channel>thought\n") and prompt.ends_in_thought(out)
    assert not prompt.ends_in_thought(both(f"2026-07-09-{size}", RESULT, [WEATHER], thinking=False))
    assert not prompt.ends_in_thought(both("2026-04", RESULT, [WEATHER], thinking=True))


def test_consecutive_assistant_messages_merge_into_one_turn():
    messages = MORE_SHAPES[0].values[0]
    new = both("2026-07-09-large", messages)
    old = both("2026-04", messages)
    assert "<|turn>model\nab<turn|>\n<|turn>user" in new
    assert "<|turn>model\na<turn|>\nb<turn|>\n" in old


def test_model_turn_closed_after_results_before_user():
    messages = MORE_SHAPES[1].values[0]
    assert "<tool_response|><turn|>\n<|turn>user\nand Rome?" in both("2026-07-09-large", messages, [WEATHER])
    assert "<tool_response|><|turn>user\nand Rome?" in both("2026-04", messages, [WEATHER])


def test_null_not_none_in_arguments():
    messages = MORE_SHAPES[3].values[0]
    assert "call:f{x:null,y:[null,1]}" in both("2026-07-09-large", messages)
    assert "response:f{v:null}" in both("2026-07-09-large", messages)
    assert "call:f{x:None,y:[None,1]}" in both("2026-04", messages)


def test_openai_part_types():
    messages = MORE_SHAPES[4].values[0]
    assert "<|turn>user\n<|image|><|audio|>what?" in both("2026-07-09-small", messages)
    assert "<|turn>user\nwhat?" in both("2026-04", messages)


def test_preserve_thinking_keeps_earlier_call_thought():
    messages = MORE_SHAPES[5].values[0]
    kept = both("2026-07-09-large", messages, [WEATHER], thinking=True, preserve_thinking=True)
    dropped = both("2026-07-09-large", messages, [WEATHER], thinking=True, preserve_thinking=False)
    assert "<|channel>thought\nr1\n<channel|>" in kept and "r1" not in dropped
    assert "r1" not in both("2026-04", messages, [WEATHER], thinking=True, preserve_thinking=True)  # April ignores it


def test_string_arguments_refused_by_the_canonical_release():
    messages = [USER, {"role": "assistant", "tool_calls": [call("f", '{"a": 1}')]}]
    assert '<|tool_call>call:f{{"a": 1}}<tool_call|>' in both("2026-04", messages)
    assert expected("2026-07-09-large", messages) is None
    with pytest.raises(ValueError, match="mapping"):
        render(messages, variant=VARIANTS["2026-07-09-large"])


def test_interleaved_tool_results_are_their_own_turns():
    out = both("llamacpp-interleaved", RESULT, [WEATHER])
    assert "<tool_call|><turn|>\n<|turn>tool\n18<turn|>\n<|turn>model\n<|channel>thought\n<channel|>" in out


def test_interleaved_property_layout():
    tools = MORE_SHAPES[-1].values[1]
    out = both("llamacpp-interleaved", [USER], tools)
    assert f"o:{{,properties:{{a:{{type:{Q}STRING{Q}}}}},required:[{Q}a{Q}]type:{Q}OBJECT{Q}}}" in out
    assert f"n:{{description:{Q}d{Q},nullable:true,type:{Q}INTEGER{Q}}}" in out


def test_older_drops_standard_named_properties_and_reprs_system_parts():
    tool = fn("f", "d", {"type": "object", "properties": {"type": {"type": "string"}, "keep": {"type": "string"}}})
    assert "properties:{keep:{" in both("older", [USER], [tool])
    assert f"properties:{{keep:{{type:{Q}STRING{Q}}},type:{{" in both("2026-04", [USER], [tool])  # April keeps `type`
    system = [{"role": "system", "content": [{"type": "text", "text": "a"}]}, USER]
    assert "<|turn>system\n[{'type': 'text', 'text': 'a'}]<turn|>" in both("older", system)


def test_media_in_content_ends_call_state_only_in_april():
    messages = [USER, {"role": "assistant", "content": [{"type": "image"}], "tool_calls": [call("f", {}, "a")]}]
    assert both("2026-04", messages).endswith("<|image|><turn|>\n<|turn>model\n<|channel>thought\n<channel|>")
    assert both("2026-07-09-large", messages).endswith("<|image|><|tool_response>")


def test_unknown_jinja_error_is_not_silently_matched():
    # The reference harness itself must be able to fail: a wrong variant differs.
    assert render([USER], variant=VARIANTS["2026-07-09-small"]) != expected("2026-07-09-large", [USER])
    with pytest.raises(jinja2.TemplateSyntaxError):
        compile_reference("{% if %}")
