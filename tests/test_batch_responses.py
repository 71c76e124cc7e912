"""`gemma batch --endpoint URL --api responses` (issue 21): each line's Chat Completions request sent as a
Responses body and the Response read back into the batch record (tables), then a whole run against a real
`gemma serve` on the tiny synthetic Gemma 4: tool calls, thinking, JSON schemas, limits and usage, the same
greedy answers as `--api chat`, and a line the Responses API cannot say failing alone."""

from __future__ import annotations

import json
import re

import pytest

from gemma_cli.batch import responses
from gemma_cli.batch.remote import chat_url
from gemma_cli.errors import UsageError
from gemma_cli.serve import responses as served
from tests import synthetic
from tests.clitools import assert_one_line_error, run_batch, run_gemma
from tests.test_serve import CALL, FAST, THOUGHT, Server

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}, "days": {"type": "integer"}},
                                                "required": ["city", "days"]}}}

# ---------------------------------------------------------------- requests: Chat Completions -> Responses

CHAT_TO_RESPONSES = [
    ("a user message, limits and sampling under their own names",
     {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9, "temperature": 0, "top_k": 4,
      "seed": 2, "stop": ["END"], "presence_penalty": 0.5},
     {"model": "m", "input": [{"type": "message", "role": "user", "content": "hi"}], "store": False,
      "max_output_tokens": 9, "temperature": 0, "top_k": 4, "seed": 2, "stop": ["END"], "presence_penalty": 0.5}),
    ("system, parts, an assistant's text and calls, the tools' outputs",
     {"messages": [{"role": "system", "content": "Be brief"},
                   {"role": "user", "content": [{"type": "text", "text": "look"},
                                                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
                   {"role": "assistant", "content": "calling", "reasoning_content": "dropped", "tool_calls": [
                       {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                       {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": "one"},
                   {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]}],
      "max_completion_tokens": 5},
     {"input": [{"type": "message", "role": "system", "content": "Be brief"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]}],
      "store": False, "max_output_tokens": 5}),
    ("tools flattened, a named tool_choice, a JSON schema, thinking as reasoning effort",
     {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER],
      "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False,
      "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": {"type": "object"},
                                                                 "strict": True}},
      "chat_template_kwargs": {"enable_thinking": True}, "stream": False},
     {"input": [{"type": "message", "role": "user", "content": "hi"}], "store": False,
      "tools": [{"type": "function", "name": "get_weather", **{k: WEATHER["function"][k]
                                                               for k in ("description", "parameters")}}],
      "tool_choice": {"type": "function", "name": "get_weather"}, "parallel_tool_calls": False,
      "text": {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"}, "strict": True}},
      "reasoning": {"effort": "medium"}}),
    ("thinking off, the template's own variables kept, json_object, reasoning_effort",
     {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "low",
      "chat_template_kwargs": {"enable_thinking": False, "preserve_thinking": True},
      "response_format": {"type": "json_object"}},
     {"input": [{"type": "message", "role": "user", "content": "hi"}], "store": False, "reasoning": {"effort": "low"},
      "chat_template_kwargs": {"enable_thinking": False, "preserve_thinking": True},
      "text": {"format": {"type": "json_object"}}}),
]


@pytest.mark.parametrize("name,chat,body", CHAT_TO_RESPONSES, ids=[r[0] for r in CHAT_TO_RESPONSES])
def test_a_chat_body_as_a_responses_body(name, chat, body):
    assert responses.request_of(chat) == body


@pytest.mark.parametrize("name,chat,body", CHAT_TO_RESPONSES, ids=[r[0] for r in CHAT_TO_RESPONSES])
def test_gemma_serve_reads_the_responses_body_back_as_the_same_conversation(name, chat, body):
    """The server's own reader turns what batch sends into the messages and tools batch started from."""
    back = served.to_chat(responses.request_of(chat))
    strip = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in chat["messages"]]
    for m in strip:  # the server reads text parts and an assistant's text as parts
        if m["role"] == "assistant" and isinstance(m.get("content"), str):
            m["content"] = [{"type": "text", "text": m["content"]}]
    assert back["messages"] == strip
    for key in ("tools", "tool_choice", "response_format", "temperature", "top_k", "seed", "stop"):
        assert back.get(key) == chat.get(key), key
    assert back.get("max_tokens") == chat.get("max_tokens", chat.get("max_completion_tokens"))


@pytest.mark.parametrize("chat,words", [
    ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}]}, "video_url"),
    ({"messages": "hi"}, "array"),
])
def test_what_a_responses_body_cannot_say_is_refused_not_dropped(chat, words):
    with pytest.raises(responses.Unsendable) as e:
        responses.request_of(chat)
    assert words in str(e.value) and e.value.hint


def response(output, status="completed", **extra):
    return {"id": "resp_1", "object": "response", "created_at": 7, "model": "m", "status": status, "output": output,
            "usage": {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 3,
                      "total_tokens": 14}, **extra}


RESPONSES_TO_CHAT = [
    ("reasoning then text",
     response([{"type": "reasoning", "id": "rs", "summary": [], "content": [{"type": "reasoning_text", "text": "hm"}]},
               {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi"},
                                                                    {"type": "output_text", "text": "!"}]}]),
     {"role": "assistant", "content": "Hi!", "reasoning_content": "hm"}, "stop"),
    ("calls",
     response([{"type": "function_call", "id": "fc", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"}]),
     {"role": "assistant", "content": None, "tool_calls": [
         {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}, "tool_calls"),
    ("cut at max_output_tokens, a reasoning summary",
     response([{"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "s"}]},
               {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi"}]}],
              status="incomplete", incomplete_details={"reason": "max_output_tokens"}),
     {"role": "assistant", "content": "Hi", "reasoning_content": "s"}, "length"),
]


@pytest.mark.parametrize("name,given,message,finish", RESPONSES_TO_CHAT, ids=[r[0] for r in RESPONSES_TO_CHAT])
def test_a_response_as_a_chat_completion(name, given, message, finish):
    out = responses.completion_of(given)
    assert out["choices"][0]["message"] == message and out["choices"][0]["finish_reason"] == finish
    assert out["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14,
                            "prompt_tokens_details": {"cached_tokens": 4}}
    assert (out["id"], out["model"], out["object"]) == ("resp_1", "m", "chat.completion")


def test_a_failed_response_is_an_error():
    with pytest.raises(ValueError, match="overloaded"):
        responses.completion_of(response([], status="failed", error={"code": "x", "message": "overloaded"}))


@pytest.mark.parametrize("given,api,expected", [
    ("http://h:8000", "responses", "http://h:8000/v1/responses"),
    ("http://h:8000/v1/", "responses", "http://h:8000/v1/responses"),
    ("http://h/openai/v1/responses", "responses", "http://h/openai/v1/responses"),
    ("http://h/v1", "chat", "http://h/v1/chat/completions"),
])
def test_the_route_of_each_api(given, api, expected):
    assert chat_url(given, api) == expected


def test_a_route_of_the_other_api_is_a_usage_error():
    with pytest.raises(UsageError, match="/chat/completions route") as e:
        chat_url("http://h/v1/chat/completions", "responses")
    assert "--api chat" in e.value.hint


def test_api_without_endpoint_or_unknown_is_one_line(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "hi"}\n')
    assert_one_line_error(run_gemma("batch", source, "--api", "responses", home=tmp_path), "--api responses",
                          "--endpoint")
    assert_one_line_error(run_gemma("batch", source, "--api", "grpc", "--endpoint", "http://127.0.0.1:9/v1",
                                    home=tmp_path), "--api 'grpc'")


# ---------------------------------------------------------------- a run against gemma serve


@pytest.fixture(scope="module")
def server(e_model, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve"), "-m", e_model, "--parallel", "4", *FAST)
    yield s
    s.stop()


def openai_line(custom_id: str, **body) -> dict:
    body.setdefault("messages", [{"role": "user", "content": "What is the weather in Paris?"}])
    body.setdefault("temperature", 0)
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


LINES = [
    *[{"id": i, "prompt": f"Line {i}: tell me", "max_tokens": 6, "temperature": 0} for i in range(4)],
    {"id": "tools", "prompt": "Weather?", "tools": [WEATHER], "max_tokens": 40, "temperature": 0},
    openai_line("required", tools=[WEATHER], tool_choice="required", parallel_tool_calls=False, max_tokens=200,
                logit_bias={str(synthetic.vocab().ids['<|"|>']): 6}),  # the random model would never close a string
    openai_line("grammar-call", tools=[WEATHER], grammar=CALL, max_tokens=60),
    openai_line("thought", grammar=THOUGHT, chat_template_kwargs={"enable_thinking": True}, max_tokens=40),
    openai_line("schema", max_tokens=60, response_format={"type": "json_schema", "json_schema": {
        "name": "o", "strict": True, "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}},
                                                "required": ["ok"], "additionalProperties": False}}}),
]


def endpoint_batch(server, tmp_path, name: str, lines: list[dict], *args: str):
    """`gemma batch` of `lines` against the server: the run, and its records by custom_id or id."""
    proc, records = run_batch(tmp_path, lines, "--endpoint", server.url + "/v1", "--concurrency", "4", *args,
                              name=name, timeout=300)
    return proc, {str(r.get("custom_id", r.get("id"))): r for r in records}


def test_batch_lines_through_the_responses_api_of_gemma_serve(server, tmp_path):
    proc, got = endpoint_batch(server, tmp_path, "responses", LINES, "--api", "responses")
    assert proc.returncode == 0, proc.stderr
    assert sorted(got) == sorted(str(line.get("custom_id", line.get("id"))) for line in LINES)
    assert all(r["error"] is None for r in got.values())

    for i in range(4):
        r = got[str(i)]
        assert isinstance(r["answer"], str) and 0 < r["usage"]["completion_tokens"] <= 6
        assert r["usage"]["prompt_tokens"] > 5
    # the same greedy lines over Chat Completions give the same answers and counts
    chat_proc, chat = endpoint_batch(server, tmp_path, "chat", LINES[:4], "--api", "chat")
    assert chat_proc.returncode == 0, chat_proc.stderr
    for i in range(4):
        assert (got[str(i)]["answer"], got[str(i)]["finish_reason"], got[str(i)]["usage"]["completion_tokens"]) == \
               (chat[str(i)]["answer"], chat[str(i)]["finish_reason"], chat[str(i)]["usage"]["completion_tokens"])

    for key in ("required", "grammar-call"):  # function_call items back as tool_calls, in OpenAI's record
        body = got[key]["response"]["body"]
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls", body
        call = choice["message"]["tool_calls"][0]
        assert call["function"]["name"] == "get_weather" and call["id"]
        assert set(json.loads(call["function"]["arguments"])) == {"city", "days"}
    forced = json.loads(got["grammar-call"]["response"]["body"]["choices"][0]["message"]["tool_calls"][0]
                        ["function"]["arguments"])
    assert forced == {"city": "Paris", "days": 3}

    thought = got["thought"]["response"]["body"]["choices"][0]["message"]  # the reasoning item, apart
    assert (thought["reasoning_content"], thought["content"]) == ("I ponder deeply", "The answer is four.")
    assert isinstance(json.loads(got["schema"]["response"]["body"]["choices"][0]["message"]["content"])["ok"], bool)


def test_a_line_the_responses_api_cannot_say_fails_alone(server, tmp_path):
    video = [{"role": "user", "content": [{"type": "text", "text": "what?"},
                                          {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]}]
    lines = [{"id": "fine", "prompt": "hi", "max_tokens": 3, "temperature": 0},
             openai_line("video", messages=video, max_tokens=3),
             {"id": "also", "prompt": "hi", "max_tokens": 4, "temperature": 0}]
    proc, got = endpoint_batch(server, tmp_path, "bad", lines, "--api", "responses")
    assert proc.returncode == 3, proc.stderr  # some lines failed
    assert got["fine"]["error"] is None and got["also"]["finish_reason"] in ("length", "stop")
    error = json.dumps(got["video"]["error"])
    assert "video_url" in error and "--api chat" in error


def test_batch_help_has_an_api_responses_example(tmp_path):
    from tests.clitools import run_gemma

    proc = run_gemma("batch", "--help", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^ +gemma batch .*--endpoint \S+ --api responses$", proc.stdout, re.MULTILINE), proc.stdout
