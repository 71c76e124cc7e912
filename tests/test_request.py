"""The one OpenAI request reader (`gemma_cli.format.request`): its field table and the errors naming a field.
Pure: no model. The server's 400s and batch's error records built on it are tested in test_serve.py and
test_batch.py."""

from __future__ import annotations

import pytest

from gemma_cli.format.request import (
    IGNORED,
    REFUSED,
    SAMPLING,
    SUPPORTED,
    RequestError,
    read_chat,
)

MESSAGES = [{"role": "user", "content": "Hi"}]
# A value for each refused field that would change the answer (the field table must name each one here).
CHANGING = {"n": 2, "logprobs": True, "top_logprobs": 3, "presence_penalty": 0.5, "frequency_penalty": -1.0,
            "repeat_penalty": 1.3, "logit_bias": {"42": 5}, "min_p": 0.1,
            "functions": [{"name": "f", "parameters": {"type": "object"}}], "function_call": {"name": "f"},
            "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"},
            "prediction": {"type": "content", "content": "x"}, "web_search_options": {}}


def test_the_table_is_three_disjoint_kinds():
    assert not SUPPORTED & IGNORED and not SUPPORTED & set(REFUSED) and not IGNORED & set(REFUSED)
    assert set(SAMPLING) <= SUPPORTED
    assert set(CHANGING) == set(REFUSED), "each refused field needs a changing value in CHANGING"


@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("strict", [False, True])
def test_a_field_that_would_change_the_answer_is_refused_by_name(name, strict):
    with pytest.raises(RequestError) as info:
        read_chat({"messages": MESSAGES, name: CHANGING[name]}, strict=strict)
    assert info.value.param == name and name in info.value.message and info.value.code == "unsupported_field"


@pytest.mark.parametrize("name, neutral", [(k, v[0]) for k, (v, _) in REFUSED.items() if v])
def test_a_refused_field_at_its_neutral_value_or_null_changes_nothing(name, neutral):
    assert read_chat({"messages": MESSAGES, name: neutral}, strict=True).messages == MESSAGES
    assert read_chat({"messages": MESSAGES, name: None}, strict=True).messages == MESSAGES


def test_harmless_fields_pass_and_unknown_ones_pass_only_a_loose_reader():
    body = {"messages": MESSAGES, **{k: "x" for k in IGNORED}, "tool_choice": None, "parallel_tool_calls": False,
            "stream_options": {"include_usage": True},
            "tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {}}}]}
    req = read_chat(body, strict=True)
    assert req.parallel_tool_calls is False and req.tool_choice == "auto" and req.tools[0]["function"]["name"] == "f"
    assert read_chat({**body, "cache_prompt": True}).messages == MESSAGES  # a client's extra: ignored by the server
    with pytest.raises(RequestError) as info:
        read_chat({**body, "cache_prompt": True}, strict=True)
    assert info.value.param == "cache_prompt" and "unsupported body field 'cache_prompt'" in info.value.message


def test_the_request_object_carries_each_field():
    req = read_chat({"messages": MESSAGES, "max_completion_tokens": 9, "max_tokens": 50, "temperature": 0,
                     "top_k": 5, "seed": 7, "stop": "END", "stream": True,
                     "stream_options": {"include_usage": True}, "reasoning_effort": "high",
                     "chat_template_kwargs": {"preserve_thinking": True}, "tool_choice": "none",
                     "tools": [{"name": "bare"}], "response_format": {"type": "json_object"}})
    assert (req.max_tokens, req.stop, req.stream, req.include_usage) == (9, ("END",), True, True)
    assert req.sampling() == {"temperature": 0.0, "top_k": 5, "seed": 7}
    assert req.think is True and req.keep_thinking and req.tools is None and req.json_mode
    assert read_chat({"messages": MESSAGES}).think is None  # the caller's default
    assert read_chat({"messages": MESSAGES, "tools": [{"name": "bare"}]}).tools == [
        {"type": "function", "function": {"name": "bare"}}]


@pytest.mark.parametrize("body, param, needle", [
    ({"messages": []}, "messages", "non-empty"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "needs a role"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "messages[0].content[0].text",
     "must be a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "path": "/etc/passwd"}]}]},
     "messages[0].content[0].type", "'image' is not supported"),
    ({"messages": MESSAGES, "max_tokens": "lots"}, "max_tokens", '"max_tokens" must be an integer'),
    ({"messages": MESSAGES, "temperature": 3}, "temperature", "outside"),
    ({"messages": MESSAGES, "stop": ["a", ""]}, "stop", '"stop" must be a string or a list'),
    ({"messages": MESSAGES, "tools": [{"type": "function", "function": {}}]}, "tools[0]", "function name"),
    ({"messages": MESSAGES, "tool_choice": "required"}, "tool_choice", 'tool_choice "required" is not supported'),
    ({"messages": MESSAGES, "response_format": {"type": "json_schema"}}, "response_format", "json_schema needs"),
    ({"messages": MESSAGES, "grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}}, "grammar",
     "not both"),
    ({"messages": MESSAGES, "reasoning_effort": "max"}, "reasoning_effort", "none, minimal, low"),
    ({"messages": MESSAGES, "stream": "yes"}, "stream", '"stream" must be true or false'),
])
def test_a_bad_field_is_named(body, param, needle):
    with pytest.raises(RequestError) as info:
        read_chat(body)
    assert info.value.param == param and needle in info.value.message, info.value.message


def test_gemma_own_media_parts_only_for_a_local_run():
    body = {"messages": [{"role": "user", "content": [{"type": "image", "path": "/x/cat.png"}, "Describe"]}]}
    req = read_chat(body, local_parts=True)
    assert req.messages[0]["content"] == [{"type": "image", "path": "/x/cat.png"}, {"type": "text", "text": "Describe"}]
