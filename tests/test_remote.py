"""`gemma batch --endpoint`: the Chat Completions client (retries, backoff, Retry-After), bodies
and answers, against a scripted local server and against llama-cpp-python's real server,
stopped and restarted in the middle of a run."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gemma_cli import batch
from gemma_cli.batch import Defaults, parse_line, remote
from gemma_cli.batch.remote import Endpoint, RemoteError, chat_url
from gemma_cli.engine import Sampling
from tests.batchoutput import chat_completion
from tests.clitools import BOUND, gemma_env, imported_by, run_batch, run_gemma, wait_for

# ---------------------------------------------------------------- a scripted server


def completion(text="ok", **message):
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1767225600, "model": "served",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, **message},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


class Script:
    """What the server answers, request by request: (status, headers, body) or a callable."""

    def __init__(self, *steps, default=(200, {}, completion())):
        self.steps = list(steps)
        self.default = default
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def next(self, request: dict):
        with self.lock:
            self.requests.append(request)
            step = self.steps.pop(0) if self.steps else self.default
        return step(request) if callable(step) else step


@pytest.fixture
def server():
    servers = []

    def make(script: Script, port: int = 0):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self._gone():
                    return
                self._answer(200, {}, {"object": "list", "data": [{"id": "served-model"}]})

            def _gone(self):  # stopped: a kept-alive connection is dropped unanswered, as a server that went away
                self.close_connection = self.server.stopped
                return self.server.stopped

            def do_POST(self):
                if self._gone():
                    return
                size = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(size))
                request = {"path": self.path, "body": body, "auth": self.headers.get("Authorization"),
                           "headers": {k.lower(): v for k, v in self.headers.items()}}
                status, headers, payload = script.next(request)
                if status == "hold":  # an answer that comes only once `headers` (an Event) is set
                    headers.wait(BOUND)
                    status, headers, payload = 200, {}, completion("late")
                self._answer(status, headers, payload)

            def _answer(self, status, headers, payload):
                data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        httpd.daemon_threads = True
        httpd.stopped = False
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    def stop(port: int) -> None:
        for s in [s for s in servers if s.server_address[1] == port]:
            s.stopped = True
            s.shutdown()
            s.server_close()
            servers.remove(s)

    make.stop = stop
    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def fast(url, **kw):
    return Endpoint(url, **kw)  # the openai client's own backoff: 0.5 s, doubling


# ---------------------------------------------------------------- the client


@pytest.mark.parametrize("given, expected", [
    ("http://h:8000", "http://h:8000/v1/chat/completions"),
    ("http://h:8000/v1", "http://h:8000/v1/chat/completions"),
    ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
    ("https://bedrock-runtime.us-west-2.amazonaws.com/openai/v1",
     "https://bedrock-runtime.us-west-2.amazonaws.com/openai/v1/chat/completions"),
    ("http://h/v1/chat/completions", "http://h/v1/chat/completions"),
])
def test_chat_url(given, expected):
    assert chat_url(given) == expected


@pytest.mark.parametrize("url", ["localhost:8000", "http://[::1/v1", "http://h:99999/v1", "http://h:port/v1"])
def test_a_url_that_is_not_http_is_a_usage_error(url):
    with pytest.raises(remote.UsageError) as e:  # the last three were a ValueError: "this is a bug"
        chat_url(url)
    assert url in e.value.message


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    """The delays the client waited between tries (it still waits them): what it chose, whatever the load."""
    import openai._base_client

    delays: list[float] = []
    real = time.sleep

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        real(seconds)

    monkeypatch.setattr(openai._base_client.time, "sleep", sleep)
    return delays


def test_429_with_retry_after_is_honoured(server, slept):
    script = Script((429, {"Retry-After": "1"}, {"error": {"message": "slow down"}}))
    ep = fast(server(script), api_key="sk-test")
    assert ep.post({"messages": []})["choices"][0]["message"]["content"] == "ok"
    assert slept == [1.0]  # Retry-After, not the 0.5 s backoff
    assert len(script.requests) == 2 and script.requests[0]["auth"] == "Bearer sk-test"


def test_5xx_is_retried_with_backoff(server):
    script = Script((503, {}, {"error": "loading"}), (502, {}, b"bad gateway"), (500, {}, {}))
    ep = fast(server(script))
    assert ep.post({"messages": []})["choices"]
    assert len(script.requests) == 4 and ep.retried == 3


def test_a_4xx_fails_the_line_at_once_with_the_servers_error(server):
    script = Script((400, {}, {"error": {"message": "messages: field required"}}))
    ep = fast(server(script))
    with pytest.raises(RemoteError) as info:
        ep.post({})
    e = info.value
    assert e.status == 400 and e.code == "http_400" and "field required" in e.message
    assert e.body == {"error": {"message": "messages: field required"}} and len(script.requests) == 1


def test_an_html_error_page_is_one_line_of_its_words(server):
    page = b"<!DOCTYPE HTML>\n<html>\n <head><title>Error response</title></head>\n <body>\n  <h1>Error</h1>\n" \
           b"  <p>Error code: 501</p>\n  <p>Message: Unsupported method ('POST').</p>\n </body>\n</html>\n"
    ep = fast(server(Script(default=(501, {}, page))), retries=0)
    with pytest.raises(RemoteError) as info:
        ep.post({})
    assert info.value.message.endswith("answered 501: Error response Error Error code: 501 Message: Unsupported "
                                       "method ('POST').")


def test_retries_run_out(server):
    script = Script(default=(503, {}, {"error": "down"}))
    ep = fast(server(script), retries=2)
    with pytest.raises(RemoteError) as info:
        ep.post({})
    assert info.value.status == 503 and len(script.requests) == 3


def test_a_timeout_is_retried(server):
    retried = threading.Event()  # the first answer is held until the client has sent its retry

    def second(request):
        retried.set()
        return 200, {}, completion()

    script = Script(("hold", retried, None), second)
    ep = fast(server(script), timeout=0.5)
    assert ep.post({})["choices"][0]["message"]["content"] == "ok"
    assert ep.retried >= 1 and len(script.requests) >= 2


def test_a_server_that_comes_up_late_is_waited_for():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = Endpoint(f"http://127.0.0.1:{port}", retries=10)
    script = Script()
    later = {}

    def up():  # once the client has been refused and is retrying
        wait_for(lambda: ep.retried >= 1, "the client to retry")
        httpd = ThreadingHTTPServer(("127.0.0.1", port), _plain_handler(script))
        later["httpd"] = httpd
        httpd.serve_forever()

    threading.Thread(target=up, daemon=True).start()
    try:
        assert ep.post({"messages": []})["choices"]
        assert ep.retried >= 1
    finally:
        if "httpd" in later:
            later["httpd"].shutdown()
            later["httpd"].server_close()


def _plain_handler(script):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, _, payload = script.next({})
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def test_no_key_means_no_authorization_and_no_openai_settings_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-this-server")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-private")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-private")
    script = Script()
    fast(server(script)).post({"messages": []})
    headers = script.requests[0]["headers"]
    assert "authorization" not in headers and "openai-organization" not in headers and "openai-project" not in headers
    assert not any("private" in v or "not-for-this" in v for v in headers.values()), headers


def test_the_model_name_comes_from_the_server_when_not_given(server):
    script = Script()
    ep = fast(server(script))
    assert ep.model_name() == "served-model"


def test_a_server_away_when_the_model_is_asked_is_asked_again_later(server):
    port = free_port()
    ep = fast(f"http://127.0.0.1:{port}/v1")
    assert ep.model_name() is None  # nothing listens yet: not remembered as "no model"
    server(Script(), port=port)
    assert ep.model_name() == "served-model"


def test_retry_after_zero_retries_at_once(server, slept):
    script = Script((503, {"Retry-After": "0"}, {"error": "busy"}))
    ep = Endpoint(server(script))
    assert ep.post({"messages": []})["choices"]
    assert len(slept) == 1 and slept[0] <= 0.5  # the first backoff step at most, no longer wait


def test_an_answer_of_an_odd_shape_fails_the_line_not_the_run():
    odd = {"choices": [{"message": "not an object"}], "usage": {"prompt_tokens": "many"}}
    with pytest.raises(RemoteError) as e:
        batch.answer_of(odd, "simple")
    assert e.value.code == "bad_response"


# ---------------------------------------------------------------- bodies and answers


def defaults(**kw):
    return Defaults(Sampling(), **kw)


def request_of(obj, base=None):
    line = parse_line(1, json.dumps(obj).encode(), base)
    assert line.error is None, line.error
    return line.request


def test_a_simple_line_becomes_a_chat_body_with_data_urls(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "b.wav").write_bytes(b"RIFF fake")
    r = request_of({"prompt": "What?", "images": ["a.png"], "audio": ["b.wav"], "system": "Be brief.", "think": True,
                    "schema": {"type": "object"}, "max_tokens": 9, "top_k": 20}, tmp_path)
    body = batch.body_for(r, defaults(model="gemma-4", overrides={"temperature": 0.0}))
    assert body["model"] == "gemma-4" and body["max_tokens"] == 9 and body["top_k"] == 20 and body["temperature"] == 0.0
    assert "top_p" not in body  # only what the line or the command line set: the server keeps its defaults
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    system, user = body["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    image, audio, text = user["content"]
    assert image["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    assert audio == {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF fake").decode(), "format": "wav"}}
    assert text == {"type": "text", "text": "What?"}


def test_penalties_min_p_and_logit_bias_go_to_the_endpoint():
    # They were dropped in silence: only max_tokens, temperature, top_p, top_k and seed were sent.
    r = request_of({"prompt": "x", "min_p": 0.05, "repeat_penalty": 1.1, "logit_bias": {"17": -100}})
    body = batch.body_for(r, defaults(overrides={"presence_penalty": 0.5, "frequency_penalty": 0.25, "min_p": 0.2}))
    assert body["min_p"] == 0.05  # the line's own value wins over the command line's
    assert body["repeat_penalty"] == 1.1 and body["presence_penalty"] == 0.5 and body["frequency_penalty"] == 0.25
    assert body["logit_bias"] == {"17": -100}
    assert "top_p" not in body and "temperature" not in body


def test_an_openai_line_is_sent_as_it_is():
    body = {"messages": [{"role": "user", "content": "x"}], "temperature": 0.2, "user": "u"}
    r = request_of({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body})
    assert batch.body_for(r, defaults(model="m")) == {**body, "model": "m"}


def test_answers_from_servers_with_and_without_gemma_parsers():
    parsed = batch.answer_of(completion("Hi", reasoning_content="mm", tool_calls=[
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]), "simple")
    assert (parsed.text, parsed.thinking, parsed.tool_calls) == ("Hi", "mm", [{"name": "f", "arguments": {"x": 1}}])
    raw = batch.answer_of(completion("<|channel>thought\nhmm<channel|>Paris"), "simple")
    assert (raw.text, raw.thinking) == ("Paris", "hmm")
    kept = batch.answer_of(completion("x"), "openai")
    assert kept.completion["id"] == "chatcmpl-1" and kept.prompt_tokens == 5


# ---------------------------------------------------------------- the command against a server


def test_batch_against_an_endpoint_mirrors_both_forms(server, tmp_path):
    script = Script((429, {"Retry-After": "0"}, {}), (400, {}, {"error": {"message": "bad request"}}),
                    default=(200, {}, completion("fine")))
    url = server(script)
    lines = [{"id": i, "prompt": f"q{i}"} for i in range(6)]
    lines.append({"custom_id": "o", "body": {"model": "x", "messages": [{"role": "user", "content": "hi"}]}})
    proc, results = run_batch(tmp_path, lines, "--endpoint", url, "--api-key", "k", "--concurrency", "3")
    assert proc.returncode == 3, proc.stderr  # one line got the 400
    assert len(results) == 7
    failed = [r for r in results if r["error"]]
    assert len(failed) == 1 and failed[0]["error"]["code"] == "http_400"
    openai = next(r for r in results if r.get("custom_id") == "o")
    assert chat_completion(openai).choices[0].message.content == "fine"  # the server's completion, passed on
    assert all(r["answer"] == "fine" for r in results if "custom_id" not in r and not r["error"])
    assert all(req["auth"] == "Bearer k" for req in script.requests)
    assert {req["body"].get("model") for req in script.requests} >= {"served-model", "x"}


def test_the_api_key_can_come_from_the_environment(server, tmp_path):
    script = Script()
    url = server(script)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "x"}) + "\n")
    proc = run_gemma("batch", src, "-o", tmp_path / "o.jsonl", "--endpoint", url, home=tmp_path, GEMMA_API_KEY="env-key")
    assert proc.returncode == 0, proc.stderr
    assert script.requests[0]["auth"] == "Bearer env-key"


def test_the_openai_client_loads_only_on_the_endpoint_path(tmp_path):
    # Not with gemma_cli.batch.remote's import (about a second of imports): only when an Endpoint is made.
    # (No `--help` loads it either: tests/test_imports.py.)
    proc, loaded = imported_by(["batch", "--help"], ["openai", "httpx"], home=tmp_path,
                               then="import gemma_cli.batch, gemma_cli.batch.remote")
    assert "Usage" in proc.stdout and loaded == [], (proc.stderr, loaded)
    proc, loaded = imported_by(["batch", "--help"], ["openai", "httpx"], home=tmp_path,
                               then="from gemma_cli.batch.remote import Endpoint; Endpoint('http://127.0.0.1:1/v1')")
    assert "openai" in loaded, (proc.stderr, loaded)


def test_an_endpoint_run_loads_no_engine(server, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 1, "prompt": "x"}) + "\n")
    out = tmp_path / "o.jsonl"
    proc, loaded = imported_by(["batch", src, "-o", out, "--endpoint", server(Script()), "-q", "--temperature", "0"],
                               ["llama_cpp", "numpy"], home=tmp_path, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "" and loaded == [], (proc.stderr, loaded)
    assert json.loads(out.read_text())["error"] is None


# ---------------------------------------------------------------- a dead endpoint (issue 12 item 16)


def test_a_server_that_never_answered_fails_in_seconds():
    ep = Endpoint(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(RemoteError) as info:
        ep.post({"messages": []})
    assert ep.retried == remote.FIRST_CONTACT_RETRIES  # a few quick tries, not the full --retries with backoff
    e = info.value
    assert e.fatal and e.code == "unreachable" and e.message.startswith("cannot connect to http://127.0.0.1:")
    assert "connection refused" in e.message and ep.retried >= 1


def test_a_server_that_answered_once_is_waited_for_when_it_goes_away(server):
    port = free_port()
    first = Script()
    ep = fast(server(first, port=port), retries=10)
    assert ep.post({"messages": []})["choices"]
    server.stop(port)
    script = Script()

    waited = remote.FIRST_CONTACT_RETRIES + 1  # more retries than a server that never answered gets

    def back():
        wait_for(lambda: ep.retried >= waited, f"{waited} retries")
        server(script, port=port)

    threading.Thread(target=back, daemon=True).start()
    assert ep.post({"messages": []})["choices"] and len(script.requests) == 1
    assert ep.retried >= waited


def test_a_server_gone_for_all_the_retries_stops_the_run(server):
    port = free_port()
    ep = fast(server(Script(), port=port), retries=2)
    assert ep.post({"messages": []})["choices"]
    server.stop(port)
    with pytest.raises(RemoteError) as info:
        ep.post({"messages": []})
    e = info.value
    assert e.fatal and "stopped answering" in e.message and "2 retries" in e.message and ep.retried == 2


def test_batch_against_a_dead_endpoint_fails_in_one_line_then_resumes(server, tmp_path):
    port = free_port()
    lines = [{"id": i, "prompt": f"q{i}"} for i in range(5)]
    t0 = time.perf_counter()
    proc, results = run_batch(tmp_path, lines, "--endpoint", f"http://127.0.0.1:{port}/v1", timeout=120)
    took = time.perf_counter() - t0
    from tests.clitools import assert_one_line_error

    assert_one_line_error(proc, f"cannot connect to http://127.0.0.1:{port}/v1", "connection refused")
    assert proc.returncode == 1 and took < 60, took  # was 158 s of silence on 5 lines
    assert results == []  # nothing written: every line runs when the server is up
    server(Script(default=(200, {}, completion("up"))), port=port)
    proc, results = run_batch(tmp_path, lines, "--endpoint", f"http://127.0.0.1:{port}/v1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["id"] for r in results) == list(range(5)) and all(r["answer"] == "up" for r in results)


def test_retries_show_in_the_progress_line(server, tmp_path):
    import pexpect

    script = Script((503, {}, {"error": "loading"}), (503, {}, {"error": "loading"}), (503, {}, {"error": "loading"}))
    url = server(script)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": "x"}) + "\n" for i in range(3)))
    child = pexpect.spawn(sys.executable, ["-m", "gemma_cli", "batch", str(src), "-o", str(tmp_path / "o.jsonl"),
                                           "--endpoint", url, "--concurrency", "1"],
                          env=gemma_env(tmp_path), encoding="utf-8", timeout=120, dimensions=(24, 160))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)
    assert re.search(r"batch ━+.* [1-3] retried", shown), shown[-800:]  # in the bar, while it waits
    assert "3 requests retried" in shown  # and in the summary


# ---------------------------------------------------------------- llama-cpp-python's real server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `python -m llama_cpp.server`, with weights loaded as the engine loads them (engine.core.avoid_amx)
SERVER = ("import runpy; from gemma_cli.engine.core import avoid_amx; avoid_amx(); "
          "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)")


def start_server(model: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, "--model", model, "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "1024", "--n_threads", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail("llama_cpp.server did not start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        wait_for(up, "llama_cpp.server to listen")
    except AssertionError:
        proc.kill()
        raise
    return proc


@pytest.mark.slow
def test_a_real_server_stopped_and_restarted_mid_run(gemma3_base, tmp_path):
    import llama_cpp.server.app  # noqa: F401 - the test extra installs llama-cpp-python[server]; no silent skip
    port = free_port()
    server = start_server(gemma3_base, port)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [{"id": f"r{i}", "prompt": f"Say the number {i}.", "max_tokens": 12, "temperature": 0} for i in range(40)]
    lines.append({"custom_id": "openai", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}})
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    run = subprocess.Popen([sys.executable, "-m", "gemma_cli", "batch", str(src), "-o", str(out), "--endpoint",
                            f"http://127.0.0.1:{port}/v1", "--concurrency", "2", "--retries", "12"],
                           env=gemma_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: out.exists() and out.read_bytes().count(b"\n") >= 5, "5 results")
        server.terminate()  # mid-run: requests in flight fail, new ones are refused while it restarts
        server.wait(timeout=BOUND)
        assert run.poll() is None, "the run should wait for the server, not give up"
        server = start_server(gemma3_base, port)
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert "requests retried" in err  # the run was carried through by retries
    finally:
        for p in (run, server):
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [json.loads(x) for x in out.read_text().splitlines()]
    ids = [r.get("custom_id") if "custom_id" in r else r["id"] for r in results]
    assert sorted(ids, key=str) == sorted([x.get("id", x.get("custom_id")) for x in lines], key=str)
    assert all(r["error"] is None for r in results)
    chat_completion(next(r for r in results if r.get("custom_id") == "openai"))  # validated by the openai package
