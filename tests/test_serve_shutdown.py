"""`gemma serve` stopped by SIGTERM or Ctrl-C (SIGINT) with requests in flight (issue 20, item 4): every
client gets an answer of its own (a stream its error event and its end, a plain request an OpenAI error
object), the process exits 0, and stderr holds no traceback. A real server process on the tiny synthetic
model, real HTTP clients; each step waits on an event (a streamed event read, a line on stderr, the
server's /health), never on a sleep."""

from __future__ import annotations

import http.client
import json
import signal
import threading

import openai
import pytest

from tests.clitools import BOUND, wait_for
from tests.test_serve import ENDLESS, Server

# A long context, so that an endless answer outlives the moment of the signal on any machine
ROOMY = ["--threads", "1", "--ctx", "4096"]
LONG = 4000  # max_tokens of the answers that must still be running when the signal comes


class Stream:
    """A streamed request over a raw connection: its events as the server wrote them, [DONE] included."""

    def __init__(self, port: int, path: str, body: dict):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND)
        self.conn.request("POST", path, json.dumps({**body, "stream": True}),
                          {"Content-Type": "application/json"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        self.events: list = []  # (event name or None, data: a dict, or the string "[DONE]")

    def next_event(self):
        name = None
        while True:
            line = self.response.readline()  # the chunked body, decoded
            if not line:
                return None  # the end of the body
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
                event = (name, data if data == "[DONE]" else json.loads(data))
                self.events.append(event)
                return event

    def rest(self) -> list:
        """Every event up to the end of the body (the body must end: the server closes it properly)."""
        while self.next_event() is not None:
            pass
        self.conn.close()
        return self.events


def chat_body(content: str) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": LONG, "grammar": ENDLESS}


def start(tmp_path, e_model, *args: str) -> Server:
    return Server(tmp_path, "-m", e_model, "--parallel", "4", "--queue", "4", *args, *ROOMY)


def stop_output(server: Server, sig) -> tuple[int, str]:
    server.proc.send_signal(sig)
    try:
        code = server.proc.wait(BOUND)  # a failure bound only: the exit comes as soon as the clients have their ends
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    return code, "".join(server.lines) + server.proc.stderr.read()


def assert_clean_exit(code: int, stderr: str) -> None:
    assert code == 0, stderr
    for bad in ("Traceback", "CancelledError", "Event loop is closed", "Exception in", "ERROR"):
        assert bad not in stderr, stderr
    assert "gemma serve: stopped" in stderr, stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_shutdown_gives_every_client_in_flight_a_proper_end(e_model, tmp_path, sig):
    server = start(tmp_path, e_model, "--grace", "0")
    # Three streams, one per API, each read up to its first generated text...
    chat = Stream(server.port, "/v1/chat/completions", chat_body("Chat"))
    while not any(c["choices"] and c["choices"][0]["delta"].get("content") for _, c in chat.events):
        assert chat.next_event() is not None, chat.events
    resp = Stream(server.port, "/v1/responses", {"input": "Responses", "max_output_tokens": LONG, "grammar": ENDLESS})
    while not any(name == "response.output_text.delta" for name, _ in resp.events):
        assert resp.next_event() is not None, resp.events
    msg = Stream(server.port, "/v1/messages", {"messages": [{"role": "user", "content": "Messages"}],
                                               "max_tokens": LONG, "grammar": ENDLESS})
    while not any(name == "content_block_delta" for name, _ in msg.events):
        assert msg.next_event() is not None, msg.events
    # ... a plain request running beside them, and two more waiting for a slot (one on the Messages API).
    plain: dict = {}

    def ask_plain(key: str) -> None:
        if key == "messages":
            plain[key] = server.post("/v1/messages", json.dumps({"messages": [{"role": "user", "content": key}],
                                                                 "max_tokens": LONG, "grammar": ENDLESS}).encode())
            return
        client = server.client()
        try:
            plain[key] = client.chat.completions.create(model="gemma4-e", max_tokens=LONG,
                                                        messages=[{"role": "user", "content": key}],
                                                        extra_body={"grammar": ENDLESS})
        except Exception as e:  # noqa: BLE001 - collected, asserted below
            plain[key] = e

    threads = []
    for key, slots in (("running", (4, 0)), ("waiting", (4, 1)), ("messages", (4, 2))):
        threads.append(threading.Thread(target=ask_plain, args=(key,)))
        threads[-1].start()
        health = server.get
        wait_for(lambda: key in plain or (health("/health")["running"], health("/health")["waiting"]) == slots,
                 f"the plain request to be {key}")
        assert key not in plain, plain[key]  # still in flight

    code, stderr = stop_output(server, sig)
    for t in threads:
        t.join(BOUND)
        assert not t.is_alive()

    # Chat Completions, streamed: its text so far, an error object, then [DONE]; nothing cut off.
    events = chat.rest()
    assert events[-1] == (None, "[DONE]"), events[-3:]
    error = events[-2][1]["error"]
    assert error["code"] == "server_shutting_down" and "shutting down" in error["message"], error
    assert "cut after" in error["message"]
    # Responses, streamed: an error event, then response.failed, its last event.
    events = resp.rest()
    assert [name for name, _ in events[-2:]] == ["error", "response.failed"], events[-3:]
    assert "shutting down" in events[-2][1]["message"]
    assert events[-1][1]["response"]["status"] == "failed"
    assert "shutting down" in events[-1][1]["response"]["error"]["message"]
    # Messages, streamed: the open block stopped, then Anthropic's error event, the last one.
    events = msg.rest()
    assert [name for name, _ in events[-2:]] == ["content_block_stop", "error"], events[-3:]
    assert "shutting down" in events[-1][1]["error"]["message"]
    # Plain requests, running or waiting: an OpenAI error object (JSON), 503, not a dropped connection.
    for key in ("running", "waiting"):
        e = plain[key]
        assert isinstance(e, openai.InternalServerError), repr(e)
        assert e.status_code == 503 and e.response.headers["content-type"] == "application/json", e
        assert e.body["code"] == "server_shutting_down" and "shutting down" in e.body["message"], e.body
    assert "cut after" in plain["running"].body["message"]
    assert "before its answer started" in plain["waiting"].body["message"]
    status, body = plain["messages"]  # Anthropic's error shape on its route
    assert status == 503 and body["type"] == "error" and "shutting down" in body["error"]["message"], body
    assert_clean_exit(code, stderr)
    assert "6 request(s) in flight end now" in stderr, stderr


def test_the_grace_period_lets_a_running_answer_finish(e_model, tmp_path):
    """Within --grace, a request in flight runs to its own end; the server exits once it is sent."""
    server = start(tmp_path, e_model, "--grace", "600")
    body = {**chat_body("Chat"), "max_tokens": 1500, "stream_options": {"include_usage": True}}
    chat = Stream(server.port, "/v1/chat/completions", body)
    while not any(c["choices"] and c["choices"][0]["delta"].get("content") for _, c in chat.events):
        assert chat.next_event() is not None, chat.events
    server.proc.send_signal(signal.SIGTERM)
    line = server.proc.stderr.readline()  # said at once, while the answer still runs
    assert "1 request(s) in flight get 600 s to finish" in line, line
    events = chat.rest()
    assert events[-1] == (None, "[DONE]")
    finish = [c["choices"][0]["finish_reason"] for _, c in events[:-1] if c.get("choices")]
    assert finish[-1] == "length" and events[-2][1]["usage"]["completion_tokens"] == 1500, events[-3:]
    code = server.proc.wait(BOUND)  # far less than the 600 s of grace: nothing is left to wait for
    assert_clean_exit(code, line + server.proc.stderr.read())


def test_a_second_ctrl_c_ends_the_requests_at_once(e_model, tmp_path):
    server = start(tmp_path, e_model, "--grace", "600")
    chat = Stream(server.port, "/v1/chat/completions", chat_body("Chat"))
    while not any(c["choices"] and c["choices"][0]["delta"].get("content") for _, c in chat.events):
        assert chat.next_event() is not None, chat.events
    server.proc.send_signal(signal.SIGINT)
    line = server.proc.stderr.readline()
    assert "1 request(s) in flight" in line, line
    code, stderr = stop_output(server, signal.SIGINT)
    events = chat.rest()
    assert events[-1] == (None, "[DONE]") and events[-2][1]["error"]["code"] == "server_shutting_down", events[-3:]
    assert_clean_exit(code, line + stderr)
