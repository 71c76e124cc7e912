"""Batch jobs: JSON Lines of prompts in, one result line per prompt out, crash-safe and resumable.

Input is read as a stream (`-` is stdin), one line at a time. Two forms, told apart per line:

    simple   {"id": 1, "prompt": "…"} or {"id": 1, "messages": [...]}, optional "system",
             "images", "audio", "think", "tools", "schema", "max_tokens", "temperature",
             "top_p", "top_k", "seed", "stop"
    openai   {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
             (the OpenAI Batch API's request lines, as `vllm run-batch` reads them)

A line without an id gets its line number. Output mirrors the input's form:

    simple   {"id", "answer", "thinking", "tool_calls", "usage", "finish_reason", "error"}
    openai   {"id", "custom_id", "response": {"status_code", "request_id", "body": <chat.completion>}, "error"}

Every line gets exactly one result line, in the order lines finish (not input order). A bad
line (not JSON, unknown fields, wrong types, an unreadable image, a prompt over the context,
an answer that misses its schema) gets an error record and the run goes on.

Crash safety: each result is appended with one write, flushed and fsynced. Opening the
output again repairs a torn last line (a power cut or SIGKILL mid-write) and drops error
records (those lines run again); lines whose id already has a result are skipped, so
running the same command again resumes. `restart=True` starts the file afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from gemma_cli.errors import CapabilityError, ContextOverflowError, GemmaError, MediaError

if TYPE_CHECKING:
    from gemma_cli.engine import Engine, Sampling

SIMPLE_FIELDS = {"id", "prompt", "messages", "system", "images", "audio", "think", "tools", "schema", "max_tokens",
                 "temperature", "top_p", "top_k", "seed", "stop"}
OPENAI_FIELDS = {"custom_id", "method", "url", "body"}
# Body fields the local engine honours; others that change the answer are refused, not ignored.
BODY_FIELDS = {"messages", "model", "tools", "tool_choice", "response_format", "max_tokens", "max_completion_tokens",
               "temperature", "top_p", "top_k", "seed", "stop", "chat_template_kwargs", "reasoning_effort"}
BODY_IGNORED = {"user", "metadata", "store", "parallel_tool_calls", "n", "stream", "logprobs", "top_logprobs",
                "frequency_penalty", "presence_penalty", "stream_options", "service_tier"}
ENDPOINTS = ("/v1/chat/completions", "/chat/completions")


# ---------------------------------------------------------------- lines


@dataclass
class Request:
    """One line, read and checked: what to ask, in the OpenAI chat shape the prompt builder reads."""

    messages: list[dict]
    tools: list[dict] | None = None
    think: bool | None = None  # None: the run's default
    schema: dict | None = None
    json_mode: bool = False  # any JSON object (response_format json_object)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()  # strings that end the answer (not included)
    body: dict | None = None  # openai form: the body as given (sent as is to an endpoint)


@dataclass
class Line:
    number: int  # 1-based, in the input
    id: object  # the line's id (custom_id), or its number
    form: str  # "simple" | "openai"
    request: Request | None = None
    error: "Failure | None" = None  # set when the line cannot run

    @property
    def key(self) -> str:
        return key_of(self.id)


@dataclass
class Failure:
    code: str  # invalid_json, invalid_line, duplicate_id, media, context_overflow, grammar, http_NNN, ...
    message: str
    hint: str | None = None
    status: int | None = None  # an endpoint's HTTP status
    body: object = None  # ... and what it answered

    @classmethod
    def of(cls, e: Exception) -> "Failure":
        if isinstance(e, ContextOverflowError):
            code = "context_overflow"
        elif isinstance(e, (MediaError, CapabilityError)):
            code = "media"
        elif isinstance(e, GemmaError):
            code = getattr(e, "code", None) or "failed"
        else:
            code = "internal"
        return cls(code, getattr(e, "message", None) or str(e), getattr(e, "hint", None),
                   getattr(e, "status", None), getattr(e, "body", None))


def key_of(value) -> str:
    """The resume key of an id: its JSON text, so 1 and "1" stay different ids (ASCII: any string encodes)."""
    return json.dumps(value, sort_keys=True)


def read_lines(source: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of each non-blank line, streamed; `-` reads stdin."""
    stream = sys.stdin.buffer if str(source) == "-" else open(source, "rb")
    try:
        for number, raw in enumerate(stream, 1):
            if raw.strip():
                yield number, raw
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def count_lines(source: str | Path) -> int | None:
    """How many non-blank lines a file holds (for the progress bar's ETA); None for stdin."""
    if str(source) == "-":
        return None
    with open(source, "rb") as f:
        return sum(1 for raw in f if raw.strip())


def parse_line(number: int, raw: bytes, base: Path | None = None) -> Line:
    """Read one input line; a bad line comes back with `error` set (and the best id it has)."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return Line(number, number, "simple", error=Failure("invalid_json", f"line {number} is not valid JSON ({e})",
                                                            "each line is one JSON object"))
    if not isinstance(data, dict):
        return Line(number, number, "simple", error=Failure("invalid_line", f"line {number} is a JSON {type(data).__name__}, not an object"))
    openai = "body" in data or "custom_id" in data
    ident = data.get("custom_id" if openai else "id", number)
    if ident is None:
        ident = number
    line = Line(number, ident, "openai" if openai else "simple")
    try:
        if not isinstance(ident, (str, int)) or isinstance(ident, bool):
            raise _Invalid(f"{'custom_id' if openai else 'id'} must be a string or an integer, not {type(ident).__name__}")
        line.request = _openai_request(data) if openai else _simple_request(data, base)
    except _Invalid as e:
        line.error = Failure("invalid_line", f"line {number}: {e}", e.hint)
    return line


class _Invalid(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def _simple_request(data: dict, base: Path | None) -> Request:
    unknown = sorted(set(data) - SIMPLE_FIELDS)
    if unknown:
        raise _Invalid(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
                       f"a simple line has {', '.join(sorted(SIMPLE_FIELDS))}")
    if ("prompt" in data) == ("messages" in data):
        raise _Invalid('give either "prompt" or "messages"')
    system = _typed(data, "system", str)
    if "prompt" in data:
        text = _typed(data, "prompt", str)
        media = [_media_part("image", s, base) for s in _strings(data, "images")]
        media += [_media_part("audio", s, base) for s in _strings(data, "audio")]
        messages = [{"role": "user", "content": media + [{"type": "text", "text": text}] if media else text}]
    else:
        if data.get("images") or data.get("audio"):
            raise _Invalid('"images" and "audio" go with "prompt"; with "messages", put them in the message content')
        messages = _messages(data.get("messages"))
    if system is not None:
        messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] not in ("system", "developer")]
    schema = data.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise _Invalid('"schema" must be a JSON Schema object')
    return Request(messages, _tools(data.get("tools")), _typed(data, "think", bool), schema, False,
                   *_sampling_fields(data, "max_tokens"), stop=_stop(data.get("stop")))


def _openai_request(data: dict) -> Request:
    unknown = sorted(set(data) - OPENAI_FIELDS)
    if unknown:
        raise _Invalid(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
                       "an OpenAI batch line has custom_id, method, url and body")
    if data.get("method", "POST") != "POST":
        raise _Invalid(f"method {data.get('method')!r} is not supported", 'use "POST"')
    if data.get("url", ENDPOINTS[0]) not in ENDPOINTS:
        raise _Invalid(f"url {data.get('url')!r} is not supported", f'gemma batch runs "{ENDPOINTS[0]}"')
    body = data.get("body")
    if not isinstance(body, dict):
        raise _Invalid('"body" must be a chat completion request object')
    if body.get("stream"):
        raise _Invalid("streaming responses are not available in a batch", 'drop "stream"')
    if body.get("n", 1) != 1:
        raise _Invalid("only one choice per request (n = 1)", 'drop "n"')
    unsupported = sorted(set(body) - BODY_FIELDS - BODY_IGNORED)
    if unsupported:
        raise _Invalid(f"unsupported body field{'s' if len(unsupported) > 1 else ''} {', '.join(map(repr, unsupported))}",
                       f"supported: {', '.join(sorted(BODY_FIELDS))}")
    messages = _messages(body.get("messages"))
    tools = _tools(body.get("tools"))
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        tools = None
    elif choice != "auto":  # forcing a call is not something the local engine does: refused, not ignored
        raise _Invalid(f"tool_choice {json.dumps(choice)[:60]} is not supported", 'use "auto" or "none"')
    schema, json_mode = _response_format(body.get("response_format"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    fields = dict(body, max_tokens=max_tokens)
    return Request(messages, tools, _thinking(body), schema, json_mode, *_sampling_fields(fields, "max_tokens"),
                   stop=_stop(body.get("stop")), body=body)


def _stop(value) -> tuple[str, ...]:
    """OpenAI's `stop`: a string or a list of up to 4 strings."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
        raise _Invalid('"stop" must be a string or a list of up to 4 non-empty strings')
    return tuple(stops)


def _typed(data: dict, key: str, kind: type):
    value = data.get(key)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise _Invalid(f'"{key}" must be {_NAMES[kind]}, not {type(value).__name__}')
    return value


_NAMES = {str: "a string", bool: "true or false", int: "an integer", dict: "an object", list: "a list"}


def _strings(data: dict, key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(f'"{key}" must be a list of file paths or URLs')
    return value


def _number(data: dict, key: str, kind: type, low: float | None = None, high: float | None = None):
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise _Invalid(f'"{key}" must be {"an integer" if kind is int else "a number"}, not {json.dumps(value)[:40]}')
    if (low is not None and value < low) or (high is not None and value > high):
        raise _Invalid(f'"{key}" is {value}, outside {low}..{high if high is not None else "∞"}')
    return kind(value)


def _sampling_fields(data: dict, max_key: str) -> tuple:
    return (_number(data, max_key, int, 1), _number(data, "temperature", float, 0.0), _number(data, "top_p", float, 0.0, 1.0),
            _number(data, "top_k", int, 0), _number(data, "seed", int))


def _messages(value) -> list[dict]:
    from gemma_cli.conversation import ROLES, normalize_message

    if not isinstance(value, list) or not value:
        raise _Invalid('"messages" must be a non-empty list of chat messages')
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _Invalid(f"message {i + 1} needs a role ({', '.join(sorted(ROLES))})")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _Invalid(f"message {i + 1}: content must be a string or a list of parts")
        if isinstance(content, list) and not all(isinstance(p, (dict, str)) for p in content):
            raise _Invalid(f"message {i + 1}: content parts must be objects")
    try:
        return [normalize_message(m, "line", i) for i, m in enumerate(value)]
    except GemmaError as e:
        raise _Invalid(e.message, e.hint) from None


def _tools(value) -> list[dict] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise _Invalid('"tools" must be a list of function declarations')
    tools = [t if "function" in t else {"type": "function", "function": t} for t in value]
    for t in tools:
        if not isinstance(t["function"], dict) or not isinstance(t["function"].get("name"), str):
            raise _Invalid("each tool needs a function name")
    return tools or None


def _response_format(value) -> tuple[dict | None, bool]:
    if value is None:
        return None, False
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None, False
    if kind == "json_object":
        return None, True
    if kind == "json_schema":
        spec = value.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _Invalid('response_format json_schema needs {"json_schema": {"schema": {...}}}')
        return schema, False
    raise _Invalid(f"response_format {json.dumps(value)[:60]} is not supported", "use text, json_object or json_schema")


def _thinking(body: dict) -> bool | None:
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and isinstance(kwargs.get("enable_thinking"), bool):
        return kwargs["enable_thinking"]
    effort = body.get("reasoning_effort")
    if isinstance(effort, str):
        return effort not in ("none", "minimal")
    return None


def _media_part(kind: str, source: str, base: Path | None) -> dict:
    if source.startswith(("data:", "file://", "http://", "https://")):
        return {"type": kind, "url": source}
    path = Path(source).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path  # relative to the input file, so a JSONL and its images travel together
    return {"type": kind, "path": str(path)}


# ---------------------------------------------------------------- results


@dataclass
class Answer:
    """What came back for one line, whichever way it ran."""

    text: str = ""
    thinking: str = ""
    tool_calls: list[dict] = field(default_factory=list)  # {"name", "arguments"}
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    completion: dict | None = None  # an endpoint's chat.completion, kept as it came
    model: str = ""


def record(line: Line, answer: Answer | None = None, failure: Failure | None = None) -> dict:
    """The output line for `line`, in its form."""
    if line.form == "openai":
        return _openai_record(line, answer, failure)
    if failure is not None:
        return {"id": line.id, "answer": None, "thinking": None, "tool_calls": [], "usage": None,
                "finish_reason": None, "error": _error(failure, line)}
    usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
             "total_tokens": answer.prompt_tokens + answer.completion_tokens}
    if answer.cached_tokens:
        usage["cached_tokens"] = answer.cached_tokens
    return {"id": line.id, "answer": answer.text, "thinking": answer.thinking or None, "tool_calls": answer.tool_calls,
            "usage": usage, "finish_reason": answer.finish_reason, "error": None}


def _error(failure: Failure, line: Line) -> dict:
    out = {"code": failure.code, "message": failure.message, "line": line.number}
    if failure.hint:
        out["hint"] = failure.hint
    return out


def _openai_record(line: Line, answer: Answer | None, failure: Failure | None) -> dict:
    request_id = f"req_{uuid.uuid4().hex[:24]}"
    out = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line.id}
    if failure is not None:
        response = None
        if failure.status is not None:
            response = {"status_code": failure.status, "request_id": request_id, "body": failure.body}
        return {**out, "response": response, "error": _error(failure, line)}
    body = answer.completion or completion(answer)
    return {**out, "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}


def completion(answer: Answer) -> dict:
    """An OpenAI chat.completion object for a local answer."""
    message: dict = {"role": "assistant", "content": answer.text if answer.text or not answer.tool_calls else None}
    if answer.thinking:
        message["reasoning_content"] = answer.thinking
    finish = answer.finish_reason
    if answer.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in answer.tool_calls
        ]
        finish = "tool_calls" if finish == "stop" else finish
    usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
             "total_tokens": answer.prompt_tokens + answer.completion_tokens}
    if answer.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": answer.cached_tokens}
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": answer.model, "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage}


# ---------------------------------------------------------------- output file


class Output:
    """The results file: repaired and read on open, then appended to one fsynced line at a time."""

    def __init__(self, path: str | Path | None, *, restart: bool = False):
        self.path = None if path in (None, "-") else Path(path)
        self.done: set[bytes] = set()  # resume keys (digests) of lines answered in an earlier run
        self.repaired = 0  # bytes of a torn last line dropped
        self.retrying = 0  # error records dropped: those lines run again
        self.kept = 0  # results kept from earlier runs
        if self.path is None:
            self._fd = sys.stdout.fileno()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock()
        if restart:
            os.ftruncate(self._fd, 0)
        else:
            self._scan()
        os.fsync(self._fd)

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise GemmaError(f"{self.path} is being written by another gemma batch",
                             "wait for it to finish, or write to another file with -o") from None

    def _scan(self) -> None:
        """Collect answered ids; cut a torn tail; drop error records (atomically) so they run again."""
        good_end, errors, pos = 0, 0, 0
        with open(self.path, "rb") as f:
            for raw in f:
                pos += len(raw)
                rec = _parse_record(raw) if raw.endswith(b"\n") else None
                if rec is None:
                    continue
                good_end = pos
                if rec.get("error") is not None:
                    errors += 1
                    continue
                self.done.add(_digest(key_of(rec["custom_id"] if "custom_id" in rec else rec.get("id"))))
        self.kept = len(self.done)
        size = os.fstat(self._fd).st_size
        if size > good_end:
            self.repaired = size - good_end
            os.ftruncate(self._fd, good_end)
        if errors:
            self._drop_errors()
            self.retrying = errors

    def _drop_errors(self) -> None:
        # A copy without the error records replaces the file in one rename: a crash leaves one or the other.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        os.fchmod(fd, stat.S_IMODE(os.fstat(self._fd).st_mode))  # mkstemp's 0600 would stay after the rename
        try:
            with os.fdopen(fd, "wb") as out, open(self.path, "rb") as src:
                for raw in src:
                    rec = _parse_record(raw)
                    if rec is None or rec.get("error") is None:
                        out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        self._lock()

    def answered(self, line: Line) -> bool:
        return _digest(line.key) in self.done

    def write(self, rec: dict) -> None:
        try:
            data = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (valid JSON, not UTF-8): written escaped
            data = (json.dumps(rec) + "\n").encode("ascii")
        view = memoryview(data)
        while view:  # one write() in practice; a short write is finished, never interleaved
            n = os.write(self._fd, view)
            view = view[n:]
        if self.path is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self.path is not None and self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` survive a power cut (where the platform allows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse_record(raw: bytes) -> dict | None:
    try:
        rec = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) and ("id" in rec or "custom_id" in rec) else None


def _digest(key: str) -> bytes:
    # 16 bytes per id whatever its length: the resume set stays small for long runs.
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()


# ---------------------------------------------------------------- runs


@dataclass
class Defaults:
    """Run-wide settings; a line's own fields override them."""

    sampling: "Sampling"
    max_tokens: int | None = None
    think: bool = False
    system: str | None = None
    model: str | None = None  # the name endpoints are asked for (openai lines may name their own)
    # Sampling fields given on the command line: sent to endpoints (which have their own defaults)
    overrides: dict = field(default_factory=dict)


@dataclass
class Summary:
    total: int | None = None  # lines in the input, when known up front
    read: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # answered in an earlier run
    tokens_in: int = 0
    tokens_out: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    stopped: str | None = None  # "interrupted", "terminated", "fail-fast"
    live_out: int = 0  # tokens generated so far, finished lines or not (progress)
    retried: int = 0  # requests an endpoint was asked again (429, 5xx, timeouts, a server away)
    draft: str | None = None  # speculative decoding ("mtp", "ngram"), when a drafter ran
    drafted: int = 0
    accepted: int = 0

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    @property
    def tps(self) -> float:
        return self.tokens_out / self.seconds if self.seconds > 0 else 0.0

    @property
    def done(self) -> int:
        return self.ok + self.failed + self.skipped


class Run:
    """Shared by local and remote runs: the input stream, the output file, counting, stopping."""

    def __init__(self, source: str | Path, output: Output, *, fail_fast: bool = False, total: int | None = None,
                 progress: Callable[[Summary], None] | None = None, notify: Callable[[str], None] | None = None):
        self.source = source
        self.base = None if str(source) == "-" else Path(source).resolve().parent
        self.output = output
        self.fail_fast = fail_fast
        self.summary = Summary(total=total)
        self.progress = progress or (lambda s: None)
        self.notify = notify or (lambda m: None)
        self.stop_reason: str | None = None
        self._seen: set[bytes] = set()
        self._on_stop: list[Callable[[], None]] = []

    # ---- input

    def lines(self) -> Iterator[Line]:
        """Lines to run, in input order; skipped and bad lines are handled here."""
        for number, raw in read_lines(self.source):
            if self.stop_reason:
                return
            line = parse_line(number, raw, self.base)
            self.summary.read += 1
            # Duplicates first: a later line with an answered id is a duplicate on every run, not "answered".
            digest = _digest(line.key)
            duplicate = digest in self._seen
            self._seen.add(digest)
            if duplicate and line.error is None:
                line.error = Failure("duplicate_id", f"line {number}: the id {line.key} was used by an earlier line",
                                     "give every line its own id")
            elif line.error is None and self.output.answered(line):  # a bad line gets its error record every run
                self.summary.skipped += 1
                self.progress(self.summary)
                continue
            if line.error is not None:
                self.fail(line, line.error)
                continue
            yield line

    # ---- output

    def finish(self, line: Line, answer: Answer) -> None:
        self.output.write(record(line, answer))
        s = self.summary
        s.ok += 1
        s.tokens_in += answer.prompt_tokens
        s.tokens_out += answer.completion_tokens
        self.progress(s)

    def fail(self, line: Line, failure: Failure) -> None:
        self.output.write(record(line, failure=failure))
        self.summary.failed += 1
        self.progress(self.summary)
        if self.fail_fast and not self.stop_reason:
            self.stop("fail-fast")

    # ---- stopping

    def stop(self, reason: str) -> None:
        self.stop_reason = reason
        for hook in self._on_stop:
            hook()

    def on_stop(self, hook: Callable[[], None]) -> None:
        self._on_stop.append(hook)

    def close(self) -> Summary:
        self.summary.ended = time.perf_counter()
        self.summary.stopped = self.stop_reason
        return self.summary


@dataclass
class _Signals:
    """SIGINT/SIGTERM: the first stops taking lines (running ones finish); the second drops them."""

    run: Run
    previous: dict = field(default_factory=dict)
    count: int = 0

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        reason = "interrupted" if signum == signal.SIGINT else "terminated"
        if self.count == 1:
            self.run.notify("stopping: no new lines; finishing the ones running (again to drop them; "
                            "the same command resumes)")
            self.run.stop(reason)
            return
        self.run.stop_reason = reason
        raise KeyboardInterrupt


def run_local(engine: "Engine", n: int, source: str | Path, output: Output, defaults: Defaults, **kw) -> Summary:
    """Run the lines of `source` on `n` parallel sequences of `engine` (opened with n_seq = n + 1),
    or one line at a time on an engine of one sequence (speculative decoding, if a drafter is attached)."""
    from gemma_cli.engine.parallel import Parallel

    run = Run(source, output, **kw)
    runner = _Serial(engine) if engine.draft is not None or engine.n_seq == 1 else Parallel(engine, n)
    run.on_stop(runner.stop)
    local = _Local(engine, defaults)

    def tick() -> None:
        run.summary.live_out = runner.generated_tokens
        run.progress(run.summary)

    runner.tick = tick
    with _Signals(run):
        results = runner.run(local.jobs(run))
        try:
            for done in results:
                line = done.job.key
                if done.error is not None:
                    run.fail(line, Failure.of(done.error))
                else:
                    try:
                        run.finish(line, local.answer(line, done))
                    except GemmaError as e:
                        run.fail(line, Failure.of(e))
                if run.stop_reason == "fail-fast":
                    break  # lines still running are dropped (and run again on resume)
        except KeyboardInterrupt:
            pass  # a second signal: running lines are dropped, and run again on resume
        finally:
            results.close()
    if engine.draft is not None:
        total = engine.draft.total
        run.summary.draft, run.summary.drafted, run.summary.accepted = engine.draft.kind, total.drafted, total.accepted
    return run.close()


class _Serial:
    """Lines one at a time through the engine's own decoding, which drafts (engine.draft).

    Parallel's face (run, stop, tick, generated_tokens) for run_local. Drafting and parallel
    sequences do not mix: llama.cpp's MTP context follows one sequence of the main one.
    """

    def __init__(self, engine: "Engine"):
        self.engine = engine
        self.tick: Callable[[], None] | None = None
        self.generated_tokens = 0

    def stop(self) -> None:
        pass  # the lines stop coming (Run.lines); the running one finishes

    def run(self, jobs):
        for job in jobs:
            yield self._one(job)

    def _one(self, job):
        from gemma_cli.engine.parallel import Finished, cut_at_stop, hit_stop
        from gemma_cli.session import turn_steps

        t0, pieces, tokens, last, before = time.perf_counter(), [], [], None, self.generated_tokens
        finish = None
        steps = turn_steps(self.engine, job.prompt, job.media, job.max_tokens, job.sampling, job.shared,
                           free_thought=job.free_thought)
        try:
            for last in steps:
                pieces.append(last.text)
                if last.token is not None:
                    tokens.append(last.token)
                self.generated_tokens = before + last.generated_tokens
                if self.tick is not None:
                    self.tick()
                if hit_stop(pieces, job.stop):
                    finish = "stop"
                    break
        except GemmaError as e:
            return Finished(job, error=e)
        finally:
            steps.close()
        return Finished(job, cut_at_stop("".join(pieces), job.stop), tokens, last.prompt_tokens, last.reused_tokens,
                        last.generated_tokens, finish or last.finish_reason, last.ttft, time.perf_counter() - t0)


class _Local:
    """Lines into engine jobs, and finished jobs into answers."""

    def __init__(self, engine: "Engine", defaults: Defaults):
        from gemma_cli.session import format_of_engine

        self.engine = engine
        self.defaults = defaults
        self.format = format_of_engine(engine)
        self._media = None
        self.model = str(engine.info.meta.get("general.name") or engine.path.stem)

    def jobs(self, run: Run):
        from gemma_cli.engine.parallel import Job

        for line in run.lines():
            try:
                prompt, shared, media, sampling, think = self._prompt(line.request)
            except GemmaError as e:
                run.fail(line, Failure.of(e))
                continue
            except Exception as e:  # noqa: BLE001 - the prompt builder on odd messages: that line fails, not the run
                run.fail(line, Failure("invalid_line", f"line {line.number}: the messages cannot be rendered ({e})"))
                continue
            r = line.request
            yield Job(prompt, sampling, r.max_tokens or self.defaults.max_tokens, media, shared,
                      free_thought=bool(think and sampling.grammar and self.format.kind == "gemma4"), stop=r.stop,
                      key=line)

    def _prompt(self, r: Request):
        d = self.defaults
        messages = r.messages
        if d.system is not None and not any(m["role"] in ("system", "developer") for m in messages):
            messages = [{"role": "system", "content": d.system}] + messages
        think = d.think if r.think is None else r.think
        text = self.format.render(messages, r.tools, thinking=think)
        tokens = self.engine.tokenize(text)
        media = self._load_media(messages) if _has_media(messages) else None
        return tokens, self._shared(messages, r.tools, think, tokens), media, self._sampling(r), think

    def _shared(self, messages: list[dict], tools, think: bool, tokens: list[int]) -> int | None:
        """Where the system turn ends: kept as a checkpoint so later lines reuse it even past the SWA window."""
        if messages[0]["role"] in ("system", "developer"):
            head = messages[:1]
        elif self.format.kind == "gemma4" and (tools or think):
            head = [{"role": "system", "content": ""}]  # renders the same system turn as none
        else:
            return None
        try:
            text = self.format.render(head, tools, thinking=think, add_generation_prompt=False)
        except Exception:  # noqa: BLE001 - a template that cannot render a lone system turn: no checkpoint
            return None
        from gemma_cli.engine.core import _common_prefix

        n = _common_prefix(self.engine.tokenize(text), tokens)
        return n if 0 < n < len(tokens) else None

    def _sampling(self, r: Request):
        from gemma_cli.engine.core import schema_to_grammar

        s = self.defaults.sampling
        s = replace(s, temperature=s.temperature if r.temperature is None else r.temperature,
                    top_p=s.top_p if r.top_p is None else r.top_p, top_k=s.top_k if r.top_k is None else r.top_k,
                    seed=s.seed if r.seed is None else r.seed)
        if r.schema is not None or r.json_mode:
            try:
                s = replace(s, grammar=schema_to_grammar(r.schema))
            except Exception as e:  # noqa: BLE001 - llama.cpp's converter raises plain exceptions
                raise GemmaError(f"the schema cannot be turned into a grammar ({e})", "check the JSON Schema") from None
        return s

    def _load_media(self, messages: list[dict]) -> list:
        from gemma_cli.media import MediaParts, prompt_order

        if self.format.kind != "gemma4":
            raise CapabilityError("images and audio need a Gemma 4 model", "run the batch with a Gemma 4 --model")
        parts = prompt_order(messages)
        if self._media is None:
            self._media = MediaParts(keep=8)
        for kind in dict.fromkeys(p["type"] for p in parts):
            projector = self.engine.ensure_projector(kind)  # loaded on first use, with the engine's image budget
            self._media.rate = projector.sample_rate or self._media.rate
        return [self._media.load(p) for p in parts]

    def answer(self, line: Line, done) -> Answer:
        from gemma_cli import reply

        a = Answer(prompt_tokens=done.prompt_tokens + done.reused_tokens, cached_tokens=done.reused_tokens,
                   completion_tokens=done.generated_tokens, finish_reason=done.finish_reason, model=self.model)
        if self.format.kind == "gemma4":
            parsed = reply.parse(done.text)
            a.text, a.thinking = parsed.answer, parsed.thinking
            a.tool_calls = [{"name": c.name, "arguments": c.arguments} for c in parsed.tool_calls]
        else:
            a.text = done.text
        r = line.request
        if (r.schema is not None or r.json_mode) and not a.tool_calls:
            check_json(a)
        return a


def check_json(a: Answer) -> None:
    """A constrained answer must be JSON: a cut one (max_tokens) is a grammar failure, not a result."""
    try:
        json.loads(a.text)
    except json.JSONDecodeError:
        cut = " (cut at max_tokens)" if a.finish_reason == "length" else ""
        err = GemmaError(f"the answer is not complete JSON{cut}", "raise max_tokens for this line")
        err.code = "grammar"
        raise err from None


def _has_media(messages: list[dict]) -> bool:
    from gemma_cli.media import media_parts

    return any(media_parts(m.get("content")) for m in messages)


def run_remote(endpoint, concurrency: int, source: str | Path, output: Output, defaults: Defaults, **kw) -> Summary:
    """Send the lines of `source` to an OpenAI-compatible endpoint, `concurrency` at a time."""
    from gemma_cli import remote

    run = Run(source, output, **kw)
    pool = remote.Pool(endpoint, concurrency)
    run.on_stop(pool.stop_sending)
    with _Signals(run):
        results = pool.run(_bodies(run, defaults))
        try:
            for line, result in results:
                if isinstance(result, GemmaError):
                    run.fail(line, Failure.of(result))
                else:
                    try:
                        answer = remote.answer_of(result, line.form, defaults.model or "")
                        if (line.request.schema is not None or line.request.json_mode) and line.form == "simple":
                            check_json(answer)
                        run.finish(line, answer)
                    except GemmaError as e:
                        run.fail(line, Failure.of(e))
                if run.stop_reason == "fail-fast":
                    pool.abandon()
                    break
        except KeyboardInterrupt:
            pool.abandon()  # requests in flight are dropped; those lines run again on resume
        finally:
            results.close()
    run.summary.retried = endpoint.retried
    return run.close()


def _bodies(run: Run, defaults: Defaults):
    from gemma_cli import remote

    for line in run.lines():
        try:
            body = remote.body_for(line.request, defaults)
        except GemmaError as e:
            run.fail(line, Failure.of(e))
            continue
        yield line, body
