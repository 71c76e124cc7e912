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
from gemma_cli.format.conversation import ROLES, normalize_message

SIMPLE_FIELDS = {"id", "prompt", "messages", "system", "images", "videos", "audio", "think", "keep_thinking",
                 "think_budget", "tools", "schema", "max_tokens",
                 "temperature", "top_p", "top_k", "seed", "stop"}
OPENAI_FIELDS = {"custom_id", "method", "url", "body"}
# Body fields the local engine honours; others that change the answer are refused, not ignored.
BODY_FIELDS = {"messages", "model", "tools", "tool_choice", "response_format", "max_tokens", "max_completion_tokens",
               "temperature", "top_p", "top_k", "seed", "stop", "chat_template_kwargs", "reasoning_effort"}
BODY_IGNORED = {"user", "metadata", "store", "parallel_tool_calls", "n", "stream", "logprobs", "top_logprobs",
                "frequency_penalty", "presence_penalty", "stream_options", "service_tier"}
ENDPOINTS = ("/v1/chat/completions", "/chat/completions")

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
    keep_thinking: bool = False  # the template's preserve_thinking (chat_template_kwargs.preserve_thinking)
    think_budget: int | None = None  # close the thought after this many tokens (None: the run's default)


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
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return Line(number, None, "simple", error=Failure("invalid_json", f"line {number} is not valid JSON ({e})",
                                                          "each line is one JSON object"))
    if not isinstance(data, dict):
        return Line(number, None, "simple", error=Failure("invalid_line", f"line {number} is a JSON {type(data).__name__}, not an object"))
    openai = "body" in data or "custom_id" in data
    ident = data.get("custom_id" if openai else "id")  # None (absent or null): the line is known by its number
    line = Line(number, ident, "openai" if openai else "simple")
    try:
        if ident is not None and (not isinstance(ident, (str, int)) or isinstance(ident, bool)):
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
        media += [_media_part("video", s, base) for s in _strings(data, "videos")]
        media += [_media_part("audio", s, base) for s in _strings(data, "audio")]
        messages = [{"role": "user", "content": media + [{"type": "text", "text": text}] if media else text}]
    else:
        if data.get("images") or data.get("videos") or data.get("audio"):
            raise _Invalid('"images", "videos" and "audio" go with "prompt"; with "messages", put them in the message content')
        messages = _messages(data.get("messages"))
    if system is not None:
        messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] not in ("system", "developer")]
    schema = data.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise _Invalid('"schema" must be a JSON Schema object')
    return Request(messages, _tools(data.get("tools")), _typed(data, "think", bool), schema, False,
                   *_sampling_fields(data, "max_tokens"), stop=_stop(data.get("stop")),
                   keep_thinking=bool(_typed(data, "keep_thinking", bool)), think_budget=_number(data, "think_budget", int, 0))


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
                   stop=_stop(body.get("stop")), body=body, keep_thinking=_preserve_thinking(body))


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


def _preserve_thinking(body: dict) -> bool:
    kwargs = body.get("chat_template_kwargs")
    value = kwargs.get("preserve_thinking", False) if isinstance(kwargs, dict) else False
    if not isinstance(value, bool):
        raise _Invalid("chat_template_kwargs.preserve_thinking must be true or false")
    return value


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
