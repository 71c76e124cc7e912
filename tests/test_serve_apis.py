"""The Responses and Messages APIs of `gemma serve`: their bodies rewritten as Chat Completions bodies (tables),
their streamed events against the documented sequences (tables, each event validated by the official SDK's
own types), and a real server on the tiny synthetic Gemma 4 driven by the `openai` and `anthropic` clients."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import openai
import pytest

from gemma_cli.engine.parallel import Finished, Job
from gemma_cli.serve import messages as messages_api
from gemma_cli.serve import responses as responses_api
from gemma_cli.serve.chat import ApiError, Settings, read_request
from gemma_cli.serve.replies import Replies
from tests.test_serve import CALL, THOUGHT, Server, png_data_url


# ---------------------------------------------------------------- requests: Responses -> Chat Completions

RESPONSES_TO_CHAT = [
    ("a string input",
     {"model": "m", "input": "hi"},
     {"messages": [{"role": "user", "content": "hi"}]}),
    ("instructions, max_output_tokens, sampling, stream",
     {"instructions": "Be brief", "input": "hi", "max_output_tokens": 9, "temperature": 0.5, "top_p": 0.9,
      "stream": True, "seed": 3},
     {"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "hi"}], "max_tokens": 9,
      "temperature": 0.5, "top_p": 0.9, "stream": True, "seed": 3}),
    ("Codex's fields accepted and not passed on",
     {"input": "hi", "store": False, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k",
      "client_metadata": {"x": 1}, "parallel_tool_calls": True, "reasoning": {"effort": "medium", "summary": "auto"},
      "metadata": {"a": "b"}, "user": "u", "service_tier": "auto", "truncation": "disabled"},
     {"messages": [{"role": "user", "content": "hi"}], "parallel_tool_calls": True, "reasoning_effort": "medium"}),
    ("items: messages with parts, a call and its output, reasoning dropped",
     {"input": [{"type": "message", "role": "developer", "content": "rules"},
                {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                             {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xyz"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]}]},
     {"messages": [
         {"role": "developer", "content": "rules"},
         {"role": "user", "content": [{"type": "text", "text": "look"},
                                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
         {"role": "assistant", "content": [{"type": "text", "text": "ok"}], "tool_calls": [
             {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
             {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "c1", "content": "one"},
         {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]}]}),
    ("a call with no assistant text before it",
     {"input": [{"role": "user", "content": "hi"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "x"}]},
     {"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": None, "tool_calls": [
                       {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": "x"}]}),
    ("flat function tools, hosted ones left out, a named tool_choice",
     {"input": "hi", "tools": [{"type": "function", "name": "f", "description": "d", "strict": True,
                                "parameters": {"type": "object"}}, {"type": "web_search"}],
      "tool_choice": {"type": "function", "name": "f"}},
     {"messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}}),
    ("text.format json_schema, reasoning effort none",
     {"input": "hi", "text": {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"},
                                         "strict": True}, "verbosity": "low"}, "reasoning": {"effort": "none"}},
     {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "none",
      "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": {"type": "object"},
                                                                  "strict": True}}}),
]


@pytest.mark.parametrize("name,body,chat", RESPONSES_TO_CHAT, ids=[r[0] for r in RESPONSES_TO_CHAT])
def test_responses_body_as_chat_completions(name, body, chat):
    assert responses_api.to_chat(body) == chat


RESPONSES_REFUSED = [
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id", "not supported"),
    ({"input": "hi", "store": True}, "store", "not supported"),
    ({"input": "hi", "conversation": "conv_1"}, "conversation", "not supported"),
    ({"input": 5}, "input", "string or a non-empty array"),
    ({"input": []}, "input", "non-empty"),
    ({"input": [{"type": "computer_call"}]}, "input[0].type", "not supported"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "keeps no items"),
    ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, "input[0].call_id",
     "no function_call"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "user, assistant"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type",
     "not supported"),
    ({"input": "hi", "max_output_tokens": "9"}, "max_output_tokens", "positive integer"),
    ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name", "flat"),
    ({"input": "hi", "tool_choice": "sometimes"}, "tool_choice", "auto, none"),
    ({"input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort", "must be"),
    ({"input": "hi", "text": {"format": {"type": "json_schema"}}}, "text.format.schema", "schema"),
    ([1], None, "JSON object"),
    ({"input": "hi", "include": 5}, "include", "array of strings"),  # was a 500 (TypeError)
]


@pytest.mark.parametrize("body,param,words", RESPONSES_REFUSED, ids=[str(r[1]) for r in RESPONSES_REFUSED])
def test_responses_bad_bodies_are_400s_naming_the_field(body, param, words):
    with pytest.raises(ApiError) as e:
        responses_api.to_chat(body)
    assert e.value.status == 400 and e.value.param == param and words in e.value.message


# ---------------------------------------------------------------- requests: Messages -> Chat Completions

MESSAGES_TO_CHAT = [
    ("a string system and message, max_tokens, sampling, stop_sequences",
     {"model": "m", "max_tokens": 32000, "system": "Be brief", "messages": [{"role": "user", "content": "hi"}],
      "temperature": 0.2, "top_k": 5, "stop_sequences": ["END"], "stream": True},
     {"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "hi"}], "max_tokens": 32000,
      "temperature": 0.2, "top_k": 5, "stop": ["END"], "stream": True}),
    ("Claude Code's fields accepted and not passed on",
     {"max_tokens": 5, "system": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                                  {"type": "text", "text": "b"}],
      "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
      "thinking": {"type": "adaptive"}, "context_management": {"edits": []}, "output_config": {"effort": "high"},
      "metadata": {"user_id": "u"}},
     {"messages": [{"role": "system", "content": "a\n\nb"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
      "max_tokens": 5, "chat_template_kwargs": {"enable_thinking": True}}),
    ("image, tool_use, tool_result (string, blocks, is_error), thinking dropped, enabled thinking with a budget",
     {"max_tokens": 5, "thinking": {"type": "enabled", "budget_tokens": 1024},
      "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}},
                {"type": "web_search_20250305", "name": "web_search"}],
      "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
      "messages": [
          {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                    "data": "AAAA"}},
                                       {"type": "text", "text": "what?"}]},
          {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                            {"type": "text", "text": "calling"},
                                            {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                                            {"type": "tool_use", "id": "t2", "name": "f", "input": {}}]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                                       {"type": "tool_result", "tool_use_id": "t2", "is_error": True,
                                        "content": [{"type": "text", "text": "bad"}]},
                                       {"type": "text", "text": "go on"}]}]},
     {"messages": [
         {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                      {"type": "text", "text": "what?"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "calling"}], "tool_calls": [
             {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}},
             {"id": "t2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "t1", "content": "one"},
         {"role": "tool", "tool_call_id": "t2", "content": "Error: bad"},
         {"role": "user", "content": [{"type": "text", "text": "go on"}]}],
      "max_tokens": 5, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                                   "description": "d"}}],
      "tool_choice": "required", "parallel_tool_calls": False, "chat_template_kwargs": {"enable_thinking": True},
      "think_budget": 1024}),
    ("a system message among the messages, as Claude Code sends its environment",
     {"max_tokens": 5, "system": "rules", "messages": [
         {"role": "user", "content": [{"type": "text", "text": "hi"}]},
         {"role": "system", "content": [{"type": "text", "text": "# Environment"}, {"type": "text", "text": "cwd"}]}]},
     {"messages": [{"role": "system", "content": "rules"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                   {"role": "system", "content": "# Environment\n\ncwd"}], "max_tokens": 5}),
    ("tool_choice tool and none, thinking disabled",
     {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool", "name": "f"},
      "thinking": {"type": "disabled"}},
     {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
      "tool_choice": {"type": "function", "function": {"name": "f"}}, "chat_template_kwargs": {"enable_thinking": False}}),
]


@pytest.mark.parametrize("name,body,chat", MESSAGES_TO_CHAT, ids=[r[0] for r in MESSAGES_TO_CHAT])
def test_messages_body_as_chat_completions(name, body, chat):
    assert messages_api.to_chat(body) == chat


MESSAGES_REFUSED = [
    ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens", "required"),
    ({"max_tokens": 5, "messages": []}, "messages", "non-empty"),
    ({"max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "user, assistant"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": [{"type": "image"}]}]}, "messages[0].content[0]",
     "text block"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": 7}]}, "messages[0].content", "string or an array"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
     "messages[0].content[0].type", "not supported"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "ghost", "content": "x"}]}]}, "messages[0].content[0].tool_use_id",
     "no tool_use"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}]}]}, "messages[0].content[0].source.type",
     "base64"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "system": 3}, "system", "string"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f"}]},
     "tools[0].input_schema", "JSON Schema"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "maybe"}},
     "tool_choice", "auto | any"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled",
                                                                                   "budget_tokens": -1}},
     "thinking.budget_tokens", "non-negative"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "stop_sequences": "END"}, "stop_sequences",
     "array"),
]


@pytest.mark.parametrize("body,param,words", MESSAGES_REFUSED, ids=[str(r[1]) for r in MESSAGES_REFUSED])
def test_messages_bad_bodies_are_400s_naming_the_field(body, param, words):
    with pytest.raises(ApiError) as e:
        messages_api.to_chat(body)
    assert e.value.status == 400 and e.value.param == param and words in e.value.message


def test_messages_errors_are_in_anthropics_shape():
    assert messages_api.error_body(ApiError(400, "bad")) == {
        "type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    assert messages_api.error_body(ApiError(401, "key"))["error"]["type"] == "authentication_error"
    assert messages_api.error_body(ApiError(503, "busy"))["error"]["type"] == "overloaded_error"
    assert messages_api.error_body(ApiError(500, "boom"))["error"]["type"] == "api_error"


def test_the_rewritten_bodies_read_as_one_request():
    """Both APIs end in the one Chat Completions reader: the same request whichever API it came by."""
    from gemma_cli.engine.core import Sampling

    settings = Settings(Sampling())
    chat = read_request({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
                         "max_tokens": 7, "temperature": 0.3, "stop": ["X"]}, settings)
    via_responses = read_request(responses_api.to_chat(
        {"instructions": "S", "input": "hi", "max_output_tokens": 7, "temperature": 0.3, "stop": ["X"]}), settings)
    via_messages = read_request(messages_api.to_chat(
        {"system": "S", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7, "temperature": 0.3,
         "stop_sequences": ["X"]}), settings)
    assert chat == via_responses == via_messages


# ---------------------------------------------------------------- streamed events against the documented sequences

def _finished(text: str, finish: str = "stop", stop=()) -> Finished:
    return Finished(Job([1, 2, 3], stop=stop), text=text, prompt_tokens=3, reused_tokens=2, generated_tokens=9,
                    finish_reason=finish)


def _run(writer, pieces: list[str], done: Finished, stop=()) -> list[dict]:
    replies = Replies(True, tuple(stop))
    events = writer.start()
    for piece in pieces:
        events += writer.feed(replies.text(piece))
    events += writer.feed(replies.done(done))
    return events + writer.finish(done, replies.stop_hit)


def _pieces(text: str, size: int = 3) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


REPLIES = {
    "answer": ("Hello there, friend.", "stop"),
    "thought then answer": ("<|channel>thought\nI ponder<channel|>The answer.", "stop"),
    "thought then two calls": ("<|channel>thought\nhm<channel|><|tool_call>call:f{a:1}<tool_call|>"
                               "<|tool_call>call:g{b:<|\"|>x<|\"|>}<tool_call|>", "stop"),
    "answer then a call": ("Let me look.<|tool_call>call:f{}<tool_call|>", "stop"),
    "cut at max tokens": ("<|channel>thought\nlong thoughts", "length"),
}

# The documented orders, as regular expressions over the event types (openai-python types/responses,
# anthropic-sdk-python types: raw_message_stream_event).
R_ITEM = (r"(response\.output_item\.added response\.content_part\.added (response\.reasoning_text\.delta )+"
          r"response\.reasoning_text\.done response\.content_part\.done response\.output_item\.done "
          r"|response\.output_item\.added response\.content_part\.added (response\.output_text\.delta )+"
          r"response\.output_text\.done response\.content_part\.done response\.output_item\.done "
          r"|response\.output_item\.added response\.function_call_arguments\.delta "
          r"response\.function_call_arguments\.done response\.output_item\.done )")
RESPONSES_ORDER = rf"response\.created response\.in_progress {R_ITEM}*(response\.completed|response\.incomplete) "
A_BLOCK = (r"(content_block_start (content_block_delta )+content_block_stop )")
MESSAGES_ORDER = rf"message_start {A_BLOCK}*message_delta message_stop "

EXPECTED = {  # reply -> (Responses output item types, Messages block types, stop_reason)
    "answer": (["message"], ["text"], "end_turn"),
    "thought then answer": (["reasoning", "message"], ["thinking", "text"], "end_turn"),
    "thought then two calls": (["reasoning", "function_call", "function_call"], ["thinking", "tool_use", "tool_use"],
                               "tool_use"),
    "answer then a call": (["message", "function_call"], ["text", "tool_use"], "tool_use"),
    "cut at max tokens": (["reasoning"], ["thinking"], "max_tokens"),
}


def _sdk_type(union, kind: str):
    """The SDK's class for events of type `kind`, out of its annotated union of event types."""
    import typing

    while typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    for cls in typing.get_args(union):
        if typing.get_args(cls.model_fields["type"].annotation) == (kind,):
            return cls
    raise AssertionError(f"{kind} is not a documented event type")


@pytest.mark.parametrize("name", REPLIES)
@pytest.mark.parametrize("size", [1, 4, 1000])
def test_responses_events_follow_the_documented_sequence(name, size):
    from openai.types.responses import Response, ResponseStreamEvent

    text, finish = REPLIES[name]
    writer = responses_api.Writer("gemma4-e", {"input": "x"})
    events = _run(writer, _pieces(text, size), _finished(text, finish))
    assert re.fullmatch(RESPONSES_ORDER, "".join(e["type"] + " " for e in events)), [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:  # each one as the SDK's own type of that event reads it
        assert _sdk_type(ResponseStreamEvent, event["type"]).model_validate(event).type == event["type"]
    final = Response.model_validate(events[-1]["response"])
    assert [item.type for item in final.output] == EXPECTED[name][0]
    assert final.status == ("incomplete" if finish == "length" else "completed")
    assert final.usage.input_tokens == 5 and final.usage.input_tokens_details.cached_tokens == 2
    assert writer.result == events[-1]["response"]  # the non-streamed object is the last snapshot
    done = {e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.done"}
    assert [done[i] for i in sorted(done)] == final.model_dump(exclude_unset=True)["output"]


# With `reasoning.summary` asked for (Codex CLI, LangChain, the Agents SDK), the thought is its own summary too:
# LangChain's streaming reads a thought only from the summary events.
R_SUMMARY_ITEM = (r"response\.output_item\.added response\.content_part\.added "
                  r"response\.reasoning_summary_part\.added "
                  r"(response\.reasoning_text\.delta response\.reasoning_summary_text\.delta )+"
                  r"response\.reasoning_text\.done response\.content_part\.done "
                  r"response\.reasoning_summary_text\.done response\.reasoning_summary_part\.done "
                  r"response\.output_item\.done ")
SUMMARY_ORDER = RESPONSES_ORDER.replace(R_ITEM, "(" + R_SUMMARY_ITEM + "|" + R_ITEM[1:])


@pytest.mark.parametrize("name", REPLIES)
@pytest.mark.parametrize("size", [1, 1000])
def test_responses_thought_is_also_the_summary_when_asked(name, size):
    from openai.types.responses import Response, ResponseStreamEvent

    text, finish = REPLIES[name]
    writer = responses_api.Writer("gemma4-e", {"input": "x", "reasoning": {"effort": "high", "summary": "auto"}})
    events = _run(writer, _pieces(text, size), _finished(text, finish))
    kinds = "".join(e["type"] + " " for e in events)
    assert re.fullmatch(SUMMARY_ORDER, kinds), [e["type"] for e in events]
    assert ("reasoning_summary" in kinds) == ("reasoning" in EXPECTED[name][0])  # never a summary of no thought
    for event in events:
        assert _sdk_type(ResponseStreamEvent, event["type"]).model_validate(event).type == event["type"]
    final = Response.model_validate(events[-1]["response"])
    for item in final.output:
        if item.type == "reasoning":
            assert [s.text for s in item.summary] == [c.text for c in item.content]
            streamed = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta")
            assert streamed == item.summary[0].text
    plain = responses_api.Writer("gemma4-e", {"input": "x", "reasoning": {"summary": None}})
    _run(plain, _pieces(text, size), _finished(text, finish))
    assert all(not i.get("summary") for i in plain.result["output"])  # not asked: no summary


@pytest.mark.parametrize("name", REPLIES)
@pytest.mark.parametrize("size", [1, 4, 1000])
def test_messages_events_follow_the_documented_sequence(name, size):
    import anthropic.types as anthropic_types  # a test dependency

    text, finish = REPLIES[name]
    writer = messages_api.Writer("gemma4-e")
    events = _run(writer, _pieces(text, size), _finished(text, finish))
    assert re.fullmatch(MESSAGES_ORDER, "".join(e["type"] + " " for e in events)), [e["type"] for e in events]
    for event in events:
        assert _sdk_type(anthropic_types.RawMessageStreamEvent, event["type"]).model_validate(event).type == event["type"]
    message = anthropic_types.Message.model_validate(writer.result)
    assert [b.type for b in message.content] == EXPECTED[name][1]
    assert message.stop_reason == EXPECTED[name][2] and events[-2]["delta"]["stop_reason"] == EXPECTED[name][2]
    starts = [e["index"] for e in events if e["type"] == "content_block_start"]
    assert starts == list(range(len(message.content)))
    # What the deltas add up to is the non-streamed message.
    built: dict[int, str] = {}
    for e in events:
        if e["type"] == "content_block_delta":
            d = e["delta"]
            built[e["index"]] = built.get(e["index"], "") + (d.get("text") or d.get("thinking") or
                                                              d.get("partial_json") or "")
    for i, block in enumerate(message.content):
        want = {"text": getattr(block, "text", None), "thinking": getattr(block, "thinking", None),
                "tool_use": json.dumps(getattr(block, "input", None))}[block.type]
        assert built[i] == want


def test_stop_sequences_cut_the_reply_and_are_named():
    writer = messages_api.Writer("gemma4-e")
    text = "one two END three"
    events = _run(writer, _pieces(text, 2), _finished("one two ", "stop", ("END",)), stop=("END",))
    assert writer.result["content"] == [{"type": "text", "text": "one two "}]
    assert writer.result["stop_reason"] == "stop_sequence" and writer.result["stop_sequence"] == "END"
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


# ---------------------------------------------------------------- a real server, the official clients

TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}
A_TOOL = {"name": "get_weather", "description": "The weather in a city",
          "input_schema": TOOL["parameters"]}


@pytest.fixture(scope="module")
def server(e_model, av_mmproj, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve-apis"), "-m", e_model, "--mmproj", av_mmproj, "--parallel", "2",
               "--api-key", "sekret", "--threads", "1", "--ctx", "4096")  # 2048 a sequence: 24 tools fit
    yield s
    s.stop()


def test_openai_responses_plain_and_streamed(server):
    client = server.client(api_key="sekret")
    r = client.responses.create(model="gemma4-e", input="Count with me", max_output_tokens=12, temperature=0,
                                store=False, include=["reasoning.encrypted_content"], prompt_cache_key="k",
                                parallel_tool_calls=True, reasoning={"summary": "auto"})
    assert r.object == "response" and r.output[0].type == "message" and r.output_text
    assert r.usage.output_tokens <= 12 and r.usage.input_tokens > 5
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    streamed = list(client.responses.create(model="gemma4-e", input="Count with me", max_output_tokens=12,
                                            temperature=0, stream=True))
    assert [e.type for e in streamed[:2]] == ["response.created", "response.in_progress"]
    assert streamed[-1].response.output_text == r.output_text  # greedy: streamed and not agree
    assert streamed[-1].type == ("response.completed" if r.status == "completed" else "response.incomplete")
    with client.responses.stream(model="gemma4-e", input="Count with me", max_output_tokens=40,
                                 extra_body={"grammar": 'root ::= "One, two, three."'}) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "One, two, three." and final.status == "completed"


def test_openai_responses_thinking_and_calls(server):
    client = server.client(api_key="sekret")
    r = client.responses.create(model="gemma4-e", input="2+2?", max_output_tokens=100, reasoning={"effort": "high"},
                                temperature=0, extra_body={"grammar": THOUGHT})
    assert [i.type for i in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == "I ponder deeply" and r.output_text == "The answer is four."
    events = list(client.responses.create(model="gemma4-e", input="Weather in Paris?", max_output_tokens=150,
                                          tools=[TOOL], stream=True, extra_body={"grammar": CALL}))
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [(i.type, i.name, json.loads(i.arguments)) for i in done] == [
        ("function_call", "get_weather", {"city": "Paris", "days": 3})]
    call = done[0]
    # The conversation goes on with the call and its output, the reasoning item sent back and dropped.
    follow = client.responses.create(model="gemma4-e", max_output_tokens=5, temperature=0, tools=[TOOL], input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "reasoning", "id": "rs_x", "summary": []},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'}])
    assert follow.status in ("completed", "incomplete")


def test_openai_responses_refusals_and_the_server_stays_up(server):
    client = server.client(api_key="sekret")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gemma4-e", input="hi", previous_response_id="resp_123")
    assert "not supported" in e.value.body["message"] and e.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="gemma4-e", input=[{"type": "function_call_output", "call_id": "x",
                                                          "output": "y"}])
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").responses.create(model="gemma4-e", input="hi")
    status, body = server.post("/v1/responses", b"{not json", {"Authorization": "Bearer sekret"})
    assert status == 400 and body["error"]["code"] == "invalid_json"
    assert server.get("/health")["status"] == "ok"


@pytest.fixture(scope="module")
def anthropic_client(server):
    import anthropic  # a test dependency
    return anthropic.Anthropic(base_url=server.url, api_key="sekret", max_retries=0, timeout=120)  # x-api-key


def test_anthropic_messages_plain_streamed_and_counted(server, anthropic_client):
    m = anthropic_client.messages.create(model="gemma4-e", max_tokens=12, extra_body={"temperature": 0},
                                         system=[{"type": "text", "text": "Be brief."}],
                                         messages=[{"role": "user", "content": "Count with me"}])
    assert m.type == "message" and m.content[0].type == "text" and m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.output_tokens <= 12
    with anthropic_client.messages.stream(model="gemma4-e", max_tokens=12, extra_body={"temperature": 0}, system="Be brief.",
                                          messages=[{"role": "user", "content": "Count with me"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == m.content[0].text == final.content[0].text
    count = anthropic_client.messages.count_tokens(model="gemma4-e", system="Be brief.",
                                                   messages=[{"role": "user", "content": "Count with me"}])
    assert count.input_tokens == m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)


def test_anthropic_thinking_tools_and_images(server, anthropic_client):
    m = anthropic_client.messages.create(model="gemma4-e", max_tokens=100, thinking={"type": "enabled",
                                                                                     "budget_tokens": 1024},
                                         messages=[{"role": "user", "content": "2+2?"}],
                                         extra_body={"grammar": THOUGHT, "temperature": 0})
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in m.content] == [
        ("thinking", "I ponder deeply"), ("text", "The answer is four.")]
    with anthropic_client.messages.stream(model="gemma4-e", max_tokens=150, tools=[A_TOOL],
                                          messages=[{"role": "user", "content": "Weather in Paris?"}],
                                          extra_body={"grammar": CALL}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    use = final.content[-1]
    assert (use.type, use.name, use.input) == ("tool_use", "get_weather", {"city": "Paris", "days": 3})
    png = png_data_url().split(",", 1)[1]
    follow = anthropic_client.messages.create(model="gemma4-e", max_tokens=5, extra_body={"temperature": 0}, tools=[A_TOOL], messages=[
        {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": png}},
                                     {"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny",
                                      "is_error": False}]}])
    assert follow.usage.input_tokens + (follow.usage.cache_read_input_tokens or 0) > 40  # the image's tokens


def test_anthropic_claude_code_shaped_request(server):
    body = {"model": "gemma4-e", "max_tokens": 32000, "stream": True, "thinking": {"type": "adaptive"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "output_config": {"effort": "medium"}, "metadata": {"user_id": "someone"},
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "tools": [dict(A_TOOL, name=f"tool{i}") for i in range(24)],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi",
                                                       "cache_control": {"type": "ephemeral"}}]}],
            "temperature": 1, "grammar": 'root ::= "Done."'}
    import urllib.request

    req = urllib.request.Request(server.url + "/v1/messages?beta=true", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "x-api-key": "sekret",
                                          "anthropic-version": "2023-06-01", "anthropic-beta": "interleaved-thinking"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.read().decode().splitlines()
    kinds = [line[7:] for line in lines if line.startswith("event: ")]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert "".join(d["delta"].get("text", "") for d in data if d["type"] == "content_block_delta") == "Done."


def test_anthropic_errors_and_the_server_stays_up(server, anthropic_client):
    import anthropic  # a test dependency
    with pytest.raises(anthropic.BadRequestError) as e:
        anthropic_client.messages.create(model="gemma4-e", max_tokens=5, messages=[
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "ghost", "content": "x"}]}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    assert "ghost" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(
            model="gemma4-e", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client.messages.create(model="claude-opus", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    status, body = server.post("/v1/messages", b'{"max_tokens": "many", "messages": []}', {"x-api-key": "sekret"})
    assert status == 400 and body["type"] == "error"
    for method, path in (("GET", "/v1/messages"), ("POST", "/v1/messages/batches")):  # the router's 405 and 404
        request = urllib.request.Request(server.url + path, data=b"{}" if method == "POST" else None, method=method)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=30)
        body = json.loads(e.value.read())
        assert e.value.code in (404, 405) and body["type"] == "error" and path in body["error"]["message"], body
    assert server.get("/health")["status"] == "ok"


def test_a_prompt_too_long_is_a_400_before_any_stream(server):
    long = "word " * 3000
    for path, body, headers in (
            ("/v1/responses", {"input": long, "stream": True}, {"Authorization": "Bearer sekret"}),
            ("/v1/messages", {"max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": long}]},
             {"x-api-key": "sekret"})):
        status, answer = server.post(path, json.dumps(body).encode(), headers)
        assert status == 400, answer
        message = answer["error"]["message"]
        assert "tokens but each" in message and "--ctx" in message
    assert server.get("/health")["status"] == "ok"


def test_serve_help_names_every_route_and_shows_the_new_options(tmp_path):
    from gemma_cli.serve import app
    from tests.clitools import run_gemma

    proc = run_gemma("serve", "--help", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    routes = re.findall(r"^ +(?:POST|GET) +(/\S+)", app.__doc__, re.MULTILINE)
    assert len(routes) >= 8 and [r for r in routes if r not in text] == []
    assert "ANTHROPIC_BASE_URL=" in text and "--grace 60" in text and "x-api-key" in text
