"""An OpenAI-compatible Chat Completions client for `gemma batch --endpoint`.

Standard library only (http.client), one keep-alive connection per worker thread. It works
with vLLM (`--reasoning-parser gemma4 --tool-call-parser gemma4`), llama-server, Ollama,
llama-cpp-python's server and Amazon Bedrock's OpenAI-compatible endpoint.

Failures that may pass (429, 5xx, 408, timeouts, refused or dropped connections: a server
restarting) are retried with exponential backoff and jitter, honouring Retry-After; other
answers (400, 401, 404, 422, ...) fail the one line at once, with the server's own error.
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import socket
import ssl
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Iterable, Iterator
from urllib.parse import urlsplit

from gemma_cli.errors import GemmaError, UsageError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER = 600.0  # seconds; a longer Retry-After is cut to this


class RemoteError(GemmaError):
    """A request that failed for good: `status` and `body` are the server's, when it answered."""

    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None, body=None,
                 code: str | None = None):
        super().__init__(message, hint)
        self.status = status
        self.body = body
        self.code = code or (f"http_{status}" if status else "unreachable")


def chat_url(url: str) -> str:
    """The Chat Completions URL for what users pass: a server root, a …/v1 base or the full path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--endpoint {url!r} is not an http(s) URL", "for example http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/")
    if path.endswith("/chat/completions"):
        return url
    if not path.endswith("/v1"):
        path += "/v1"
    return f"{parts.scheme}://{parts.netloc}{path}/chat/completions"


class Endpoint:
    """POSTs chat completion requests, retrying what may pass."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 600.0, retries: int = 8,
                 backoff: float = 1.0, max_backoff: float = 60.0, model: str | None = None):
        self.url = chat_url(url)
        parts = urlsplit(self.url)
        self._scheme, self._host, self._path = parts.scheme, parts.netloc, parts.path + (f"?{parts.query}" if parts.query else "")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.model = model
        self.retried = 0  # retries made so far, over all requests
        self._local = threading.local()
        self._model_lock = threading.Lock()

    # ---- requests

    def post(self, body: dict, cancel: threading.Event | None = None) -> dict:
        """The server's chat.completion for `body`; RemoteError once it fails for good."""
        cancel = cancel or threading.Event()
        data = json.dumps(body).encode("ascii")  # escaped: any string encodes, a lone surrogate too
        last: RemoteError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
            try:
                status, headers, payload = self._send("POST", self._path, data)
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, TLS
                self._drop_connection()
                last = RemoteError(f"{self.url} did not answer ({_reason(e)})",
                                   "is the server up? it is retried with backoff (--retries)")
                delay = self._delay(attempt)
            else:
                if status == 200:
                    return _completion(payload, self.url)
                last = _http_error(status, payload, self.url)
                if status not in RETRY_STATUS:
                    raise last
                delay = _retry_after(headers)
                delay = self._delay(attempt) if delay is None else delay  # "Retry-After: 0" means now
            if attempt == self.retries:
                break
            if cancel.wait(delay):
                raise RemoteError("the request was dropped", code="dropped")
        raise last

    def model_name(self) -> str | None:
        """`--model`, else the first model the server lists (asked once); None if it lists none."""
        with self._model_lock:
            if self.model is None:
                self.model = self._first_model()  # None again when the server did not answer: asked next time
        return self.model or None

    def _first_model(self) -> str | None:
        """The first listed model's id; "" when the server lists none; None when it did not answer."""
        path = self._path.rsplit("/chat/completions", 1)[0] + "/models"
        try:
            status, _, payload = self._send("GET", path, None)
            data = json.loads(payload) if status == 200 else None
        except (OSError, http.client.HTTPException, ValueError):
            self._drop_connection()
            return None
        if data is None:
            return None if status >= 500 or status == 429 else ""
        items = data.get("data") if isinstance(data, dict) else None
        if isinstance(items, list) and items and isinstance(items[0], dict):
            return str(items[0].get("id") or "")
        return ""

    def _send(self, method: str, path: str, data: bytes | None) -> tuple[int, dict, bytes]:
        conn = self._connection()
        headers = {"Accept": "application/json", "User-Agent": "gemma-cli"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        if response.getheader("Connection", "").lower() == "close":
            self._drop_connection()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._scheme == "https":
                conn = http.client.HTTPSConnection(self._host, timeout=self.timeout, context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(self._host, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _delay(self, attempt: int) -> float:
        # Exponential with full jitter on the upper half: workers that failed together spread out.
        ceiling = min(self.max_backoff, self.backoff * 2 ** attempt)
        return ceiling * (0.5 + random.random() / 2)


def _reason(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    return str(e) or type(e).__name__


def _retry_after(headers: dict) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _http_error(status: int, payload: bytes, url: str) -> RemoteError:
    try:
        body = json.loads(payload)
    except ValueError:
        body = payload.decode("utf-8", errors="replace")[:2000]
    message = body
    if isinstance(body, dict):
        err = body.get("error", body)
        message = err.get("message", err) if isinstance(err, dict) else err
    hint = {401: "check --api-key / GEMMA_API_KEY", 403: "check --api-key / GEMMA_API_KEY",
            404: "check --endpoint and the model name (--model)"}.get(status)
    return RemoteError(f"{url} answered {status}: {str(message)[:300]}", hint, status=status, body=body)


def _completion(payload: bytes, url: str) -> dict:
    try:
        data = json.loads(payload)
    except ValueError:
        raise RemoteError(f"{url} answered 200 but not with JSON", code="bad_response") from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
        raise RemoteError(f"{url} answered 200 without choices", "is it a Chat Completions endpoint?", status=200,
                          body=data, code="bad_response")
    return data


# ---------------------------------------------------------------- workers


class Pool:
    """Runs requests on `n` daemon threads; results come back in the order they finish."""

    def __init__(self, endpoint: Endpoint, n: int):
        self.endpoint = endpoint
        self.n = max(1, n)
        self._sending = True
        self._cancel = threading.Event()

    def stop_sending(self) -> None:
        """Take no new requests; those in flight finish."""
        self._sending = False

    def abandon(self) -> None:
        """Drop the requests in flight (their threads end at their next wait or answer)."""
        self._sending = False
        self._cancel.set()

    def run(self, items: Iterable[tuple[object, dict]]) -> Iterator[tuple[object, object]]:
        """(key, chat.completion or RemoteError) for each (key, body), at most `n` in flight."""
        tasks: queue.Queue = queue.Queue()
        results: queue.Queue = queue.Queue()
        workers = [threading.Thread(target=self._work, args=(tasks, results), daemon=True, name=f"gemma-remote-{i}")
                   for i in range(self.n)]
        for w in workers:
            w.start()
        source = iter(items)
        in_flight, exhausted = 0, False
        try:
            while True:
                while not exhausted and self._sending and in_flight < self.n:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                        break
                    tasks.put(item)
                    in_flight += 1
                if in_flight == 0:
                    return
                while True:  # a bounded wait, so signal handlers run
                    try:
                        key, result = results.get(timeout=0.2)
                        break
                    except queue.Empty:
                        continue
                in_flight -= 1
                yield key, result
        finally:
            for _ in workers:
                tasks.put(None)

    def _work(self, tasks: queue.Queue, results: queue.Queue) -> None:
        while True:
            item = tasks.get()
            if item is None:
                return
            key, body = item
            try:
                if "model" not in body:
                    model = self.endpoint.model_name()
                    body = {**body, "model": model} if model else body
                result: object = self.endpoint.post(body, self._cancel)
            except RemoteError as e:
                result = e
            except Exception as e:  # noqa: BLE001 - a worker must always answer
                result = RemoteError(f"{type(e).__name__}: {e}", code="internal")
            results.put((key, result))
