"""Input lines: read as a stream, each checked into a Request (or a Failure saying why not).

Two forms, told apart per line: simple ({"id", "prompt" | "messages", ...}) and openai (the
OpenAI Batch API's {"custom_id", "method", "url", "body"}). See gemma_cli.batch.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gemma_cli.errors import (
    CapabilityError,
    ContextOverflowError,
    GemmaError,
    MediaError,
)
from gemma_cli.format.request import (
    SAMPLING,
    ChatRequest,
    RequestError,
    number,
    read_chat,
    read_json,
    read_messages,
    read_sampling,
    read_schema,
    read_stop,
    read_tools,
    typed,
)

SIMPLE_FIELDS = {"id", "prompt", "messages", "system", "images", "videos", "audio", "think", "keep_thinking",
                 "think_budget", "tools", "schema", "max_tokens", "stop", "logit_bias", *SAMPLING}
OPENAI_FIELDS = {"custom_id", "method", "url", "body"}
ENDPOINTS = ("/v1/chat/completions", "/chat/completions")

Request = ChatRequest  # one line, read and checked (format.request documents its fields)


@dataclass
class Line:
    number: int  # 1-based, in the input
    id: object  # the line's id (custom_id); None when it has none (its records say "line" instead)
    form: str  # "simple" | "openai"
    request: Request | None = None
    error: "Failure | None" = None  # set when the line cannot run

    @property
    def key(self) -> str:
        return key_of(self.id) if self.id is not None else line_key(self.number)


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


def line_key(number: int) -> str:
    """The resume key of a line without an id: its number, in a form no id's JSON text takes (no
    collision with a user's `"id": 3`)."""
    return f"line {number}"


def key_of_record(rec: dict) -> str | None:
    """The resume key a results record answers: its id (custom_id), or for a line without one, its "line"."""
    ident = rec["custom_id"] if "custom_id" in rec else rec.get("id")
    if ident is not None:
        return key_of(ident)
    number = rec.get("line")
    return line_key(number) if isinstance(number, int) and not isinstance(number, bool) else None


def digest(key: str) -> bytes:
    """A resume key in 16 bytes whatever the id's length: the resume set stays small for long runs."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()


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
        data = read_json(raw, lone_surrogates=True)  # an id may have one (written back as it came)
    except ValueError as e:
        return Line(number, None, "simple", error=Failure("invalid_json", f"line {number} {e}",
                                                          "each line is one JSON object"))
    if not isinstance(data, dict):
        return Line(number, None, "simple", error=Failure("invalid_line", f"line {number} is a JSON {type(data).__name__}, not an object"))
    openai = "body" in data or "custom_id" in data
    ident = data.get("custom_id" if openai else "id")  # None (absent or null): the line is known by its number
    line = Line(number, ident, "openai" if openai else "simple")
    try:
        if ident is not None and (not isinstance(ident, (str, int)) or isinstance(ident, bool)):
            raise RequestError(f"{'custom_id' if openai else 'id'} must be a string or an integer, not {type(ident).__name__}")
        line.request = _openai_request(data) if openai else _simple_request(data, base)
    except RequestError as e:
        line.error = Failure("invalid_line", f"line {number}: {e}", e.hint)
    return line


def _simple_request(data: dict, base: Path | None) -> Request:
    unknown = sorted(set(data) - SIMPLE_FIELDS)
    if unknown:
        raise RequestError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
                           unknown[0], f"a simple line has {', '.join(sorted(SIMPLE_FIELDS))}")
    if ("prompt" in data) == ("messages" in data):
        raise RequestError('give either "prompt" or "messages"')
    system = typed(data, "system", str)
    if "prompt" in data:
        text = typed(data, "prompt", str)
        media = [_media_part("image", s, base) for s in _strings(data, "images")]
        media += [_media_part("video", s, base) for s in _strings(data, "videos")]
        media += [_media_part("audio", s, base) for s in _strings(data, "audio")]
        messages = [{"role": "user", "content": media + [{"type": "text", "text": text}] if media else text}]
    else:
        if data.get("images") or data.get("videos") or data.get("audio"):
            raise RequestError('"images", "videos" and "audio" go with "prompt"; with "messages", put them in the message content')
        messages = read_messages(data.get("messages"), local_parts=True)
    if system is not None:
        messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] not in ("system", "developer")]
    req = Request(messages, read_tools(data.get("tools")), think=typed(data, "think", bool),
                  keep_thinking=bool(typed(data, "keep_thinking", bool)), think_budget=number(data, "think_budget", int, 0),
                  schema=read_schema(data.get("schema")), stop=read_stop(data.get("stop")),
                  max_tokens=number(data, "max_tokens", int, 1))
    read_sampling(data, req)
    return req


def _openai_request(data: dict) -> Request:
    unknown = sorted(set(data) - OPENAI_FIELDS)
    if unknown:
        raise RequestError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
                           unknown[0], "an OpenAI batch line has custom_id, method, url and body")
    if data.get("method", "POST") != "POST":
        raise RequestError(f"method {data.get('method')!r} is not supported", "method", 'use "POST"')
    if data.get("url", ENDPOINTS[0]) not in ENDPOINTS:
        raise RequestError(f"url {data.get('url')!r} is not supported", "url", f'gemma batch runs "{ENDPOINTS[0]}"')
    if not isinstance(data.get("body"), dict):
        raise RequestError('"body" must be a chat completion request object', "body")
    req = read_chat(data["body"], strict=True, local_parts=True)
    if req.stream:
        raise RequestError("streaming responses are not available in a batch", "stream", 'drop "stream"')
    if req.n > 1:
        raise RequestError("a batch line gets one choice (n = 1); write the line n times with other seeds", "n")
    if req.logprobs is not None:
        raise RequestError("'logprobs' are not written to batch results", "logprobs", 'drop "logprobs"')
    return req


def _strings(data: dict, key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(f'"{key}" must be a list of file paths or URLs', key)
    return value


def _media_part(kind: str, source: str, base: Path | None) -> dict:
    if source.startswith(("data:", "file://", "http://", "https://")):
        return {"type": kind, "url": source}
    path = Path(source).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path  # relative to the input file, so a JSONL and its images travel together
    return {"type": kind, "path": str(path)}
