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
CHANGING = {"functions": [{"name": "f", "parameters": {"type": "object"}}], "function_call": {"name": "f"},
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
    ({"messages": MESSAGES, "tool_choice": "required"}, "tool_choice", "declares no tools"),
    ({"messages": MESSAGES, "tools": [{"name": "f"}, {"name": "g"}, {"name": "f"}]}, "tools[2]",
     "as tools[0] is; tool names must be unique"),  # was accepted: a call to f could mean either
    ({"messages": MESSAGES, "tools": [{"name": "f"}], "tool_choice": {"type": "function", "function": {"name": "g"}}},
     "tool_choice", "'g', which is not among the declared tools"),
    ({"messages": MESSAGES, "tools": [{"name": "f"}], "tool_choice": "sometimes"}, "tool_choice", "not supported"),
    ({"messages": MESSAGES, "tools": [{"name": "f"}], "tool_choice": "required", "grammar": "root ::= \"a\""},
     "tool_choice", "cannot also follow"),
    ({"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs", 'needs "logprobs": true'),
    ({"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "top_logprobs", "outside"),
    ({"messages": MESSAGES, "logit_bias": {"x": 1}}, "logit_bias", "not a token id"),
    ({"messages": MESSAGES, "logit_bias": {"5": 101}}, "logit_bias", "from -100 to 100"),
    ({"messages": MESSAGES, "repeat_penalty": 0}, "repeat_penalty", "above 0"),
    ({"messages": MESSAGES, "presence_penalty": -2.5}, "presence_penalty", "outside"),
    ({"messages": MESSAGES, "n": 0}, "n", "outside"),
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


def test_sampling_logprobs_n_and_forced_calls_are_carried():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "integer"}}, "required": ["x"]}}}, {"name": "g"}]
    req = read_chat({"messages": MESSAGES, "presence_penalty": 0.5, "frequency_penalty": -1, "repeat_penalty": 1.3,
                     "min_p": 0.1, "logit_bias": {"42": 5, "7": -100}, "logprobs": True, "top_logprobs": 3, "n": 2,
                     "tools": tools, "tool_choice": {"type": "function", "function": {"name": "f"}},
                     "parallel_tool_calls": False}, strict=True)
    assert req.sampling() == {"presence_penalty": 0.5, "frequency_penalty": -1.0, "repeat_penalty": 1.3, "min_p": 0.1,
                              "logit_bias": {42: 5.0, 7: -100.0}}
    assert (req.logprobs, req.n, req.tool_choice, req.tool_name) == (3, 2, "required", "f")
    grammar = req.call_grammar()
    assert "root ::= call\n" in grammar and "call:f" in grammar and "call:g" not in grammar  # one call, to f
    required = read_chat({"messages": MESSAGES, "tools": tools, "tool_choice": "required"})
    assert required.tool_name is None and "root ::= call+" in required.call_grammar()
    # Responses' flat form of a named function reads the same
    assert read_chat({"messages": MESSAGES, "tools": tools, "tool_choice": {"type": "function", "name": "g"}}).tool_name == "g"
    assert read_chat({"messages": MESSAGES, "logprobs": True}).logprobs == 0  # the tokens' own, no alternatives
    assert read_chat({"messages": MESSAGES, "logprobs": False, "top_logprobs": 0}).logprobs is None
    assert read_chat({"messages": MESSAGES, "tools": tools}).call_grammar() is None  # auto: the model decides


def test_gemma_own_media_parts_only_for_a_local_run():
    body = {"messages": [{"role": "user", "content": [{"type": "image", "path": "/x/cat.png"}, "Describe"]}]}
    req = read_chat(body, local_parts=True)
    assert req.messages[0]["content"] == [{"type": "image", "path": "/x/cat.png"}, {"type": "text", "text": "Describe"}]
