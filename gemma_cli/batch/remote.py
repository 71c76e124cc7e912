"""An OpenAI-compatible Chat Completions client for `gemma batch --endpoint`, on the official
`openai` Python client: its retries with exponential backoff and jitter (429, 408, 409, 5xx,
timeouts, refused or dropped connections: a server restarting), its Retry-After handling (up
to 120 s), its timeouts and its pooled keep-alive connections. Other answers (400, 401, 404,
422, ...) fail the one line at once, with the server's own error. It works with vLLM
(`--reasoning-parser gemma4 --tool-call-parser gemma4`), llama-server, Ollama, llama-cpp-python's
server and Amazon Bedrock's OpenAI-compatible endpoint.

A server that has never answered is not waited for: while no request has had an answer, a
refused or unreachable connection is tried a few times over about three seconds, then the run
fails with "cannot connect to …" (resumable). Once the server has answered, the full --retries
apply, so a server restarting mid-run is waited for; one still away after them stops the run
("stopped answering", resumable) rather than making every other line wait as long.

Nothing here knows about batch lines: bodies in, chat.completion objects (or RemoteError) out.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from typing import Callable, Iterable, Iterator
from urllib.parse import parse_qsl, urlsplit

from gemma_cli.batch import responses
from gemma_cli.errors import GemmaError, UsageError

DEFAULT_RETRIES = 24  # the client's backoff: 0.5 s doubling to 8 s, so 2-3 minutes (126-168 s with its jitter) of a server away
FIRST_CONTACT_RETRIES = 3  # before the server has ever answered: 0.5 + 1 + 2 s, then "cannot connect"
CONNECT_TIMEOUT = 10.0  # seconds to open a connection (the answer itself gets --timeout)


class RemoteError(GemmaError):
    """A request that failed for good: `status` and `body` are the server's, when it answered.
    `fatal`: the server cannot be reached (never was, or no longer is), so the run, not only the line, stops."""

    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None, body=None,
                 code: str | None = None, fatal: bool = False):
        super().__init__(message, hint)
        self.status = status
        self.body = body
        self.code = code or (f"http_{status}" if status else "unreachable")
        self.fatal = fatal


ROUTES = {"chat": "/chat/completions", "responses": "/responses"}  # --api: the route lines are POSTed to


def chat_url(url: str, api: str = "chat") -> str:
    """The URL of `api`'s route for what users pass: a server root, a …/v1 base or the full path."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port out of range or not a number raises here
    except ValueError as e:
        raise UsageError(f"--endpoint {url!r} is not a valid URL ({e})", "for example http://127.0.0.1:8000/v1") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--endpoint {url!r} is not an http(s) URL", "for example http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/")
    if path.endswith(ROUTES[api]):
        return url
    for other in ROUTES.values():
        if path.endswith(other):
            raise UsageError(f"--endpoint {url!r} is the {other} route, and --api {api} posts to {ROUTES[api]}",
                             f"pass the base URL (…/v1), or --api {'chat' if other == ROUTES['chat'] else 'responses'}")
    if not path.endswith("/v1"):
        path += "/v1"
    return f"{parts.scheme}://{parts.netloc}{path}{ROUTES[api]}"


class Endpoint:
    """POSTs chat completion requests through the `openai` client, which retries what may pass; with
    `api="responses"` as Responses requests (batch.responses translates both ways)."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 600.0,
                 retries: int = DEFAULT_RETRIES, model: str | None = None, api: str = "chat"):
        try:
            import openai  # here, not at the top: ~1 s of imports that only the endpoint path pays (gemma --help stays fast)
        except ImportError:
            raise GemmaError("--endpoint needs the openai package, which is not installed",
                             "pip install openai (a dependency of gemma-cli)") from None

        self.api = api
        self.url = chat_url(url, api)
        parts = urlsplit(self.url)
        base = f"{parts.scheme}://{parts.netloc}{parts.path[: -len(ROUTES[api])]}"
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.model = model
        self.retried = 0  # retries made so far, over all requests
        self.answered = False  # whether the server has ever answered (any status)
        self._openai = openai
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        # Keyless servers get no Authorization header at all (the client insists on a key otherwise), and no
        # server gets the OpenAI organization or project the client would read from OPENAI_ORG_ID/OPENAI_PROJECT_ID.
        self._headers = {"OpenAI-Organization": openai.omit, "OpenAI-Project": openai.omit}
        if not api_key:
            self._headers["Authorization"] = openai.omit
        http_client = getattr(openai, "DefaultHttpx2Client", None) or openai.DefaultHttpxClient
        self._client = openai.OpenAI(
            base_url=base, api_key=api_key or "unused", max_retries=retries,
            timeout=openai.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            default_query=dict(parse_qsl(parts.query)) or None,
            http_client=http_client(event_hooks={"request": [self._sent], "response": [self._heard]}))
        self._first_contact = self._client.with_options(max_retries=min(retries, FIRST_CONTACT_RETRIES))

    # ---- requests

    def body_of(self, chat: dict) -> dict:
        """What to post for a Chat Completions body: itself, or its Responses body (responses.Unsendable)."""
        return responses.request_of(chat) if self.api == "responses" else chat

    def post(self, body: dict, cancel: threading.Event | None = None) -> dict:
        """The server's chat.completion for `body` (one of `body_of`'s); RemoteError once it fails for good."""
        openai = self._openai
        if cancel is not None and cancel.is_set():
            raise RemoteError("the request was dropped", code="dropped")
        while True:
            first = not self.answered
            client = self._first_contact if first else self._client
            try:
                raw = self._create(client, body)
            except openai.APIStatusError as e:
                raise _http_error(e.status_code, e.response.content, self.url) from None
            except openai.APIConnectionError as e:  # refused, reset, timed out, TLS (APITimeoutError too)
                reason = _reason(e)
                if _took_connection(e):
                    self.answered = True  # it accepted the connection: a server that is up, only slow
                if first and self.answered:
                    continue  # another request got through meanwhile: this one gets the full retries
                if first:
                    raise RemoteError(f"cannot connect to {self.url} ({reason})",
                                      "is the server running, and is --endpoint right? "
                                      "run the same command again to resume", fatal=True) from None
                # Gone for all the retries (2-3 minutes by default): every other line would wait as long.
                raise RemoteError(f"{self.url} stopped answering ({reason}; {self.retries} retries)",
                                  "is the server up? run the same command again to resume "
                                  "(--retries waits longer)", fatal=True) from None
            if cancel is not None and cancel.is_set():
                raise RemoteError("the request was dropped", code="dropped")
            return _completion(raw.http_response.content, self.url, self.api)

    def _create(self, client, body: dict):
        openai = self._openai
        if self.api == "responses":
            fields = {k: v for k, v in body.items() if k not in ("input", "model")}
            return client.responses.with_raw_response.create(
                input=body["input"], model=body.get("model", openai.omit), extra_body=fields,
                extra_headers=self._headers)
        fields = {k: v for k, v in body.items() if k not in ("messages", "model")}
        return client.chat.completions.with_raw_response.create(
            messages=body.get("messages", openai.omit), model=body.get("model", openai.omit), extra_body=fields,
            extra_headers=self._headers)

    def model_name(self) -> str | None:
        """`--model`, else the first model the server lists (asked once); None if it lists none."""
        with self._model_lock:
            if self.model is None:
                self.model = self._first_model()  # None again when the server did not answer: asked next time
        return self.model or None

    def _first_model(self) -> str | None:
        """The first listed model's id; "" when the server lists none; None when it did not answer."""
        openai = self._openai
        try:
            raw = self._client.with_options(max_retries=0).models.with_raw_response.list(extra_headers=self._headers)
            data = json.loads(raw.http_response.content)
        except openai.APIStatusError as e:
            return None if e.status_code >= 500 or e.status_code == 429 else ""
        except (openai.APIConnectionError, ValueError):
            return None
        items = data.get("data") if isinstance(data, dict) else None
        if isinstance(items, list) and items and isinstance(items[0], dict):
            return str(items[0].get("id") or "")
        return ""

    # ---- the HTTP client's event hooks

    def _sent(self, request) -> None:
        if request.headers.get("x-stainless-retry-count", "0") != "0":  # the client's own retry counter
            with self._lock:
                self.retried += 1

    def _heard(self, response) -> None:
        self.answered = True

    def close(self) -> None:
        self._client.close()


def _took_connection(e: BaseException) -> bool:
    """Whether a failed request had got a connection (a read timeout) rather than none (refused, connect timeout)."""
    cause = e.__cause__
    return cause is not None and type(cause).__name__ in ("ReadTimeout", "WriteTimeout")


def _reason(e: BaseException) -> str:
    """A short cause of a failed connection: "connection refused", "timed out", ..."""
    openai_timeout = type(e).__name__ == "APITimeoutError"
    cause = e
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused"
    if openai_timeout or isinstance(cause, TimeoutError):
        return "timed out"
    text = str(cause) or type(cause).__name__
    return text if len(text) < 200 else text[:200] + "…"


def _http_error(status: int, payload: bytes, url: str) -> RemoteError:
    try:
        body = json.loads(payload)
    except ValueError:
        body = payload.decode("utf-8", errors="replace")[:2000]
    message = " ".join(re.sub(r"<[^>]*>", " ", body).split()) if isinstance(body, str) else body  # an HTML page: its words
    if isinstance(body, dict):
        err = body.get("error", body)
        message = err.get("message", err) if isinstance(err, dict) else err
    hint = {401: "check --api-key / GEMMA_API_KEY", 403: "check --api-key / GEMMA_API_KEY",
            404: "check --endpoint and the model name (--model)"}.get(status)
    return RemoteError(f"{url} answered {status}: {str(message)[:300]}", hint, status=status, body=body)


def _completion(payload: bytes, url: str, api: str = "chat") -> dict:
    try:
        data = json.loads(payload)
    except ValueError:
        raise RemoteError(f"{url} answered 200 but not with JSON", code="bad_response") from None
    if api == "responses":
        try:
            data = responses.completion_of(data)
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            raise RemoteError(f"{url} answered 200 with no readable Response ({type(e).__name__}: {e})",
                              "is it a Responses endpoint?", status=200, body=data, code="bad_response") from None
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

    def run(self, items: Iterable[tuple[object, dict]],
            tick: Callable[[], None] | None = None) -> Iterator[tuple[object, object]]:
        """(key, chat.completion or RemoteError) for each (key, body), at most `n` in flight;
        `tick` is called about five times a second while waiting (the progress line's retries)."""
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
                        if tick is not None:
                            tick()
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
