"""`gemma serve` as a client sees it: a real server process on 127.0.0.1, the real engine on the tiny
synthetic Gemma 4 (with its image+audio projector), and the official `openai` client."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openai  # a runtime dependency (gemma batch --endpoint): imported plainly, never skipped
import pytest

from tests.clitools import BOUND, gemma_env, wait_for


FAST = ["--threads", "1", "--ctx", "768"]  # one thread: llama.cpp's spin-waits suffer on shared cores
THOUGHT = 'root ::= "<|channel>thought\\nI ponder deeply<channel|>The answer is four."'
CALL = 'root ::= "<|tool_call>call:get_weather{city:<|\\"|>Paris<|\\"|>,days:3}<tool_call|>"'


class Server:
    """`gemma serve` in a subprocess; its port read from the startup line."""

    def __init__(self, home: Path, *args: str, timeout: float = 120):
        self.proc = subprocess.Popen([sys.executable, "-m", "gemma_cli", "serve", "--port", "0", *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=gemma_env(home))
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
            if m:
                self.port = int(m.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
                return
        self.proc.kill()
        raise AssertionError("gemma serve did not start:\n" + "".join(self.lines) + self.proc.stderr.read())

    def client(self, **kw) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0,
                             timeout=120, **kw)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, data: bytes, headers: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self, sig=None) -> int:
        import signal

        self.proc.send_signal(sig or signal.SIGINT)
        try:
            return self.proc.wait(BOUND)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="module")
def server(e_model, av_mmproj, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve"), "-m", e_model, "--mmproj", av_mmproj, "--parallel", "4", *FAST)
    yield s
    s.stop()


def ask(client, content="Hello there", **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=kw.pop("model", "gemma4-e"),
                                          messages=[{"role": "user", "content": content}], **kw)


def png_data_url(size=(48, 32)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def wav_bytes(seconds=1.0, rate=16000) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


# ---------------------------------------------------------------- the openai client


def test_models_and_health(server):
    client = server.client()
    assert [m.id for m in client.models.list().data] == ["gemma4-e"]
    assert client.models.retrieve("gemma4-e").id == "gemma4-e"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    health = server.get("/health")
    assert health["status"] == "ok" and health["slots"] == 4


def test_plain_completion_and_usage(server):
    r = ask(server.client(), max_tokens=7)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == "gemma4-e"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 7 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_equals_plain_under_greedy(server):
    client = server.client()
    plain = ask(client, "Count with me", max_tokens=16)
    chunks = list(ask(client, "Count with me", max_tokens=16, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_a_continuing_client_reuses_its_kv_prefix(server):
    client = server.client()
    history = [{"role": "system", "content": "You are terse. " * 20}, {"role": "user", "content": "First question"}]
    first = client.chat.completions.create(model="gemma4-e", messages=history, max_tokens=8, temperature=0)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And a second one"}]
    second = client.chat.completions.create(model="gemma4-e", messages=history, max_tokens=8, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # All of the first prompt but its generation prompt (not kept in the history) came from the slot's cache.
    assert cached >= first.usage.prompt_tokens - 8
    assert second.usage.prompt_tokens - cached < second.usage.prompt_tokens // 2


def test_thinking_is_reasoning_content_and_switches_the_prompt(server):
    client = server.client()
    on = ask(client, "2+2?", max_tokens=40, reasoning_effort="high", extra_body={"grammar": THOUGHT})
    assert on.choices[0].message.content == "The answer is four."
    message = on.choices[0].message.model_dump()
    assert message["reasoning_content"] == "I ponder deeply"
    off = ask(client, "2+2?", max_tokens=40, extra_body={"grammar": THOUGHT, "chat_template_kwargs": {"enable_thinking": False}})
    assert off.usage.prompt_tokens < on.usage.prompt_tokens  # the <|think|> system turn only when asked
    streamed = list(ask(client, "2+2?", max_tokens=40, stream=True, reasoning_effort="high",
                        extra_body={"grammar": THOUGHT}))
    deltas = [c.choices[0].delta.model_dump() for c in streamed if c.choices]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "I ponder deeply"
    assert "".join(d.get("content") or "" for d in deltas) == "The answer is four."


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}, "days": {"type": "integer"}}}}}]


def test_tool_calls_are_parsed_not_run(server):
    client = server.client()
    r = ask(client, "Weather in Paris?", max_tokens=150, tools=TOOLS, extra_body={"grammar": CALL})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris", "days": 3}
    streamed = list(ask(client, "Weather in Paris?", max_tokens=150, tools=TOOLS, stream=True,
                        extra_body={"grammar": CALL}))
    calls = [tc for c in streamed if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(c.index, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (0, "get_weather", {"city": "Paris", "days": 3})]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    # The conversation goes on with the call and its result: the tool message is accepted and rendered.
    follow = client.chat.completions.create(model="gemma4-e", max_tokens=5, temperature=0, tools=TOOLS, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'}])
    assert follow.usage.prompt_tokens > r.usage.prompt_tokens


def test_json_schema_constrains_the_answer(server):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    r = ask(server.client(), "Is it ok?", max_tokens=40,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    assert isinstance(json.loads(r.choices[0].message.content)["ok"], bool)
    # With thinking on the schema still holds for the answer (the thought, if any, runs free).
    thought = ask(server.client(), "Is it ok?", max_tokens=60, reasoning_effort="high",
                  response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    assert isinstance(json.loads(thought.choices[0].message.content)["ok"], bool)
    assert thought.usage.prompt_tokens > r.usage.prompt_tokens  # thinking was on in the prompt


def test_stop_strings_end_the_answer(server):
    client = server.client()
    r = ask(client, "2+2?", max_tokens=40, extra_body={"grammar": 'root ::= "one, two, three, four"'}, stop=[", th"])
    assert r.choices[0].message.content == "one, two" and r.choices[0].finish_reason == "stop"
    streamed = list(ask(client, "2+2?", max_tokens=40, stream=True, stop=", th",
                        extra_body={"grammar": 'root ::= "one, two, three, four"'}))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "one, two"


def test_image_and_audio_parts(server):
    client = server.client()
    text = ask(client, "What is this?", max_tokens=4)
    image = ask(client, [{"type": "image_url", "image_url": {"url": png_data_url()}},
                         {"type": "text", "text": "What is this?"}], max_tokens=4)
    assert image.usage.prompt_tokens > text.usage.prompt_tokens + 10  # the image's tokens are in the prompt
    audio = ask(client, [{"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes()).decode(),
                                                                  "format": "wav"}},
                         {"type": "text", "text": "What is this?"}], max_tokens=4)
    assert audio.usage.prompt_tokens > text.usage.prompt_tokens + 5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client marks translations deprecated
def test_audio_transcription_formats(server):
    client = server.client()
    speech = (Path(__file__).parent / "data" / "speech-short.flac").read_bytes()  # espeak-ng, see test_speech.py
    out = client.audio.transcriptions.create(model="gemma4-e", file=("talk.flac", speech), response_format="json")
    verbose = client.audio.transcriptions.create(model="gemma4-e", file=("talk.flac", speech),
                                                 response_format="verbose_json")
    assert out.text == verbose.text  # the same greedy transcript in either form
    import soundfile as sf

    duration = sf.info(io.BytesIO(speech)).duration
    assert verbose.duration == pytest.approx(duration, abs=0.01)
    spans = [(s.start, s.end) for s in verbose.segments]
    assert spans and spans == sorted(spans) and all(0 <= a < b <= duration + 0.01 for a, b in spans)
    srt = client.audio.transcriptions.create(model="gemma4-e", file=("talk.flac", speech), response_format="srt")
    assert srt.count(" --> ") == sum(1 for s in verbose.segments if s.text)
    vtt = client.audio.translations.create(model="gemma4-e", file=("talk.flac", speech), response_format="vtt")
    assert vtt.startswith("WEBVTT")
    # A tone is not speech: voice activity detection sends nothing to the model.
    tone = client.audio.transcriptions.create(model="gemma4-e", file=("tone.wav", wav_bytes(2.0)),
                                              response_format="verbose_json")
    assert tone.segments == [] and tone.text == ""


# ---------------------------------------------------------------- bad requests


def test_bad_requests_are_4xx_with_error_objects_and_the_server_stays_up(server):
    cases = [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, None),
        (json.dumps({"messages": "hi"}).encode(), 400, None),
        (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": "lots"}).encode(), 400, None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": -1}).encode(), 400, None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "model": "gpt-4o"}).encode(), 404,
         "model_not_found"),
        (json.dumps({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}]}).encode(),
         400, "invalid_media"),
        (json.dumps({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}).encode(), 400,
         "invalid_media"),
        (json.dumps({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}).encode(), 400,
         "files_not_allowed"),
        (json.dumps({"messages": [{"role": "user", "content": "x" * 40000}]}).encode(), 400,
         "context_length_exceeded"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 2.5}).encode(), 400, None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}).encode(), 400, None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "n": 5}).encode(), 400, None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"x": 1}}).encode(), 400, None),
    ]
    for data, status, code in cases:
        if server.proc.poll() is not None:
            raise AssertionError(f"server died before {data[:60]!r}: {server.proc.stderr.read()[-3000:]}")
        got, body = server.post("/v1/chat/completions", data)
        assert got == status, (data[:80], got, body)
        assert set(body["error"]) >= {"message", "type", "param", "code"} and body["error"]["message"]
        if code:
            assert body["error"]["code"] == code, body
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * (65 * 1024 * 1024) + b'"}]}'
    got, body = server.post("/v1/chat/completions", huge)
    assert got == 413 and body["error"]["code"] == "request_too_large"
    got, body = server.post("/v1/audio/transcriptions", b"not multipart",
                            {"Content-Type": "multipart/form-data; boundary=x"})
    assert got == 400
    with pytest.raises(openai.BadRequestError):
        server.client().audio.transcriptions.create(model="gemma4-e", file=("junk.wav", b"RIFF....garbage"))
    assert ask(server.client(), max_tokens=3).choices[0].message.content is not None  # still serving


def test_a_field_that_would_change_the_answer_is_a_400_naming_it(server):
    # The openai client's own arguments where it has them; llama.cpp-style ones through extra_body.
    client = server.client()
    refused = {"functions": [{"name": "f", "parameters": {"type": "object"}}],
               "function_call": {"name": "f"}, "modalities": ["text", "audio"],
               "prediction": {"type": "content", "content": "x"}, "web_search_options": {}}
    extra = {}
    from gemma_cli.format.request import REFUSED

    assert set(refused) | set(extra) | {"audio"} == set(REFUSED)  # audio needs modalities: refused with it
    for name, value in [*refused.items(), *((k, {"extra_body": {k: v}}) for k, v in extra.items())]:
        kw = value if name in extra else {name: value}
        with pytest.raises(openai.BadRequestError) as info:
            ask(client, **kw)
        assert info.value.status_code == 400 and info.value.param == name and name in info.value.message, name
    # at their neutral values they change nothing, and harmless bookkeeping is accepted
    ok = ask(client, presence_penalty=0, n=1, logprobs=False, store=False, metadata={"a": "b"}, user="u",
             parallel_tool_calls=False, tools=[{"type": "function", "function": {"name": "f", "strict": True,
                                                                                "parameters": {"type": "object"}}}],
             extra_body={"service_tier": "auto", "prompt_cache_key": "k", "cache_prompt": True})
    assert ok.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_errors_known_before_generation_are_4xx_even_when_streaming(server):
    """A streamed request gets its 200 only once generation runs: a prompt over the context, an invalid
    grammar or an unreadable image is the same 400 with or without `stream` (issue 20, item 6)."""
    client = server.client()
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}},
             {"type": "text", "text": "?"}]
    cases = [("word " * 2000, {}, "context_length_exceeded"),
             ("hi", {"extra_body": {"grammar": 'root ::= "a'}}, "invalid_grammar"),
             ("hi", {"extra_body": {"grammar": "root ::= nowhere"}}, "invalid_grammar"),
             (image, {}, "invalid_media")]
    for content, kw, code in cases:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                r = ask(client, content, stream=stream, **kw)
                if stream:
                    list(r)
            assert info.value.status_code == 400 and info.value.body["code"] == code, (code, stream, info.value.body)
    # The grammar's reason is said, in the API's error, and the field is named.
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "hi", extra_body={"grammar": 'root ::= "a'})
    assert info.value.body["param"] == "grammar" and "unexpected end of input" in info.value.body["message"]
    assert ask(client, max_tokens=3, stream=False).choices[0].message.content is not None  # still serving


def test_an_invalid_grammar_prints_nothing_without_verbose(e_model, tmp_path):
    """llama.cpp's grammar parser writes to stderr itself: that stays out of the log unless --verbose."""
    for verbose in (False, True):
        s = Server(tmp_path, "-m", e_model, *FAST, *(["--verbose"] if verbose else []))
        try:
            with pytest.raises(openai.BadRequestError):
                ask(s.client(), "hi", extra_body={"grammar": 'root ::= "a'})
        finally:
            code = s.stop()
        rest = s.proc.stderr.read()
        assert code == 0, rest
        assert ("error parsing grammar" in rest) is verbose, rest[-3000:]


def test_a_tool_call_the_client_ruled_out_is_text(server):
    """No `tools` declared, or tool_choice "none": what the model writes as a call is returned as text
    (issue 20, item 7), streamed or not."""
    client = server.client()
    spelled = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>'
    for kw in ({}, {"tools": TOOLS, "tool_choice": "none"}):
        r = ask(client, "Weather in Paris?", max_tokens=150, extra_body={"grammar": CALL}, **kw)
        choice = r.choices[0]
        assert choice.message.tool_calls is None and choice.finish_reason == "stop", choice
        assert choice.message.content == spelled
        streamed = list(ask(client, "Weather in Paris?", max_tokens=150, stream=True, extra_body={"grammar": CALL},
                            **kw))
        deltas = [c.choices[0].delta for c in streamed if c.choices]
        assert not any(d.tool_calls for d in deltas)
        assert "".join(d.content or "" for d in deltas) == spelled
        assert streamed[-1].choices[0].finish_reason == "stop"


def test_unknown_route_is_an_error_object(server):
    try:
        urllib.request.urlopen(server.url + "/v1/nothing", timeout=10)
    except urllib.error.HTTPError as e:
        assert e.code == 404 and "error" in json.loads(e.read())
    else:
        pytest.fail("no 404")


# ---------------------------------------------------------------- concurrency, limits, keys, stopping

ENDLESS = 'root ::= more\nmore ::= ("a " | "b ") more'  # never ends by itself: only max_tokens or a cancel stops it


def test_32_streaming_clients_some_leaving_mid_stream(server):
    import threading

    results, errors = {}, []
    cancelled = server.get("/health")["cancelled"]

    def client_run(i: int) -> None:
        client = server.client()
        leaving = i % 4 == 0
        try:
            stream = ask(client, f"Client {i} says hello", stream=True, max_tokens=400 if leaving else 10,
                         stream_options={"include_usage": True},
                         **({"extra_body": {"grammar": ENDLESS}} if leaving else {}))
            text, finish, usage = "", None, None
            for n, chunk in enumerate(stream):
                if leaving and n == 3:
                    stream.close()  # the client goes away mid-stream
                    results[i] = "left"
                    return
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                usage = chunk.usage or usage
            results[i] = (text, finish, usage)
        except Exception as e:  # noqa: BLE001 - collected, asserted below
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=client_run, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    assert sorted(results) == list(range(32))
    for i, r in results.items():
        if i % 4 == 0:
            assert r == "left"
        else:  # each of the others ran to its own end: 10 tokens, or fewer and a stop
            _, finish, usage = r
            ran = usage.completion_tokens
            assert (finish == "length" and ran == 10) or (finish == "stop" and ran < 10), r
            assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The 8 that left would each have run 400 tokens: their slots were freed when they went.
    wait_for(lambda: server.get("/health")["running"] == 0, "the slots to be free")
    assert server.get("/health")["cancelled"] - cancelled == 8


@pytest.fixture(scope="module")
def small_server(e_model, tmp_path_factory):
    """One slot, one waiting place, a key: for the busy, key and shutdown cases."""
    s = Server(tmp_path_factory.mktemp("serve1"), "-m", e_model, "--parallel", "1", "--queue", "1",
               "--api-key", "sekrit", "--max-media-mb", "0.01", *FAST)
    yield s
    s.stop()


def test_a_full_queue_is_503_with_retry_after_and_a_key_is_required(small_server):
    with pytest.raises(openai.AuthenticationError):
        ask(small_server.client(), max_tokens=2)
    assert small_server.get("/health")["status"] == "ok"  # health needs no key
    client = small_server.client(api_key="sekrit")
    assert ask(client, max_tokens=2).choices[0].message.content is not None
    running = ask(client, "long", stream=True, max_tokens=500, extra_body={"grammar": ENDLESS})
    next(iter(running))
    wait_for(lambda: small_server.get("/health")["running"] == 1, "the long request to run")
    import threading

    waiting = threading.Thread(target=lambda: ask(client, max_tokens=2))
    waiting.start()
    wait_for(lambda: small_server.get("/health")["waiting"] == 1, "a request to wait")
    with pytest.raises(openai.InternalServerError) as info:
        ask(client, max_tokens=2)
    assert info.value.status_code == 503 and int(info.value.response.headers["retry-after"]) >= 1
    assert info.value.body["code"] == "server_busy"
    running.close()  # the long one leaves: the waiting one gets the slot
    waiting.join(BOUND)
    assert not waiting.is_alive()
    wait_for(lambda: small_server.get("/health")["running"] == 0, "the slot to be free")


def test_oversized_media_is_413_and_a_client_leaving_a_plain_request_frees_its_slot(small_server):
    client = small_server.client(api_key="sekrit")
    with pytest.raises(openai.APIStatusError) as info:
        ask(client, [{"type": "image_url", "image_url": {"url": png_data_url((400, 400)).replace("=", "") + "A" * 20000}},
                     {"type": "text", "text": "What is it?"}])
    assert info.value.status_code == 413 and info.value.body["code"] == "media_too_large"
    with pytest.raises(openai.BadRequestError) as info:  # this server has no projector
        ask(client, [{"type": "image_url", "image_url": {"url": png_data_url((8, 8))}}, {"type": "text", "text": "?"}])
    assert info.value.body["code"] == "unsupported_media" and "mmproj" in info.value.body["message"]
    cancelled = small_server.get("/health")["cancelled"]
    body = json.dumps({"messages": [{"role": "user", "content": "long"}], "max_tokens": 500,
                       "grammar": ENDLESS}).encode()
    with socket.create_connection(("127.0.0.1", small_server.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        wait_for(lambda: small_server.get("/health")["running"] == 1, "the request to run")
    # The socket is closed: the request's slot is freed long before its 500 tokens.
    wait_for(lambda: small_server.get("/health")["running"] == 0, "the slot of the client gone to be free")
    assert small_server.get("/health")["cancelled"] == cancelled + 1
    assert ask(client, max_tokens=2).usage.completion_tokens <= 2


def test_other_hosts_need_a_key(e_model, tmp_path):
    from tests.clitools import assert_one_line_error, run_gemma

    proc = run_gemma("serve", "-m", e_model, "--host", "0.0.0.0", home=tmp_path)
    assert_one_line_error(proc, "--api-key")
    assert proc.returncode == 2


def test_a_port_in_use_is_one_line_before_the_model_loads(tmp_path):
    from tests.clitools import assert_one_line_error, run_gemma

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The model does not exist: the port is checked first, so that is the error.
        proc = run_gemma("serve", "-m", tmp_path / "absent.gguf", "--port", port, home=tmp_path)
    assert_one_line_error(proc, f"127.0.0.1:{port}", "in use")


def test_gemma_batch_endpoint_against_gemma_serve(server, tmp_path):
    from tests.clitools import run_gemma

    lines = [{"id": i, "prompt": f"Line {i}", "max_tokens": 6, "temperature": 0} for i in range(6)]
    lines.append({"custom_id": "openai-form", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "gemma4-e", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}})
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc = run_gemma("batch", source, "-o", tmp_path / "out.jsonl", "--endpoint", server.url + "/v1",
                     "--concurrency", "4", home=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    ids = sorted(str(r.get("custom_id", r.get("id"))) for r in records)
    assert ids == sorted([str(i) for i in range(6)] + ["openai-form"])  # every line exactly once
    assert all(r["error"] is None for r in records)
    simple = [r for r in records if "answer" in r]
    assert all(isinstance(r["answer"], str) and r["usage"]["completion_tokens"] <= 6 for r in simple)
