"""Chat Completions: an OpenAI request body into an engine job, its outcome into OpenAI responses.

Formatting and parsing are the project's own: `session.PromptFormat` writes Gemma 4's prompt
(tools, thinking, media placeholders), `reply` splits what the model writes into thinking
(`reasoning_content`), answer (`content`) and tool calls (`tool_calls`, never run here).
A bad request is an `ApiError` (the app answers it with an OpenAI error object).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Iterator

from gemma_cli.chat.session import format_of_engine
from gemma_cli.engine.core import schema_to_grammar
from gemma_cli.engine.parallel import Finished, Job
from gemma_cli.errors import CapabilityError, GemmaError, MediaError
from gemma_cli.format import reply
from gemma_cli.format.conversation import ROLES, normalize_message
from gemma_cli.format.prompt import ends_in_thought
from gemma_cli.media.parts import MediaParts, media_parts, prompt_order


class ApiError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass
class Settings:
    """The server's defaults and limits (from `gemma serve`'s flags)."""

    sampling: object  # engine.Sampling
    max_tokens: int | None = None
    think: bool = False
    allow_files: bool = False  # file:// URLs in media parts
    max_media_bytes: int = 25 * 1024 * 1024  # each image or audio, decoded


@dataclass
class ChatRequest:
    """A validated body."""

    messages: list[dict]
    stream: bool = False
    include_usage: bool = False
    tools: list[dict] | None = None
    think: bool = False
    schema: dict | None = None
    json_mode: bool = False
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    sampling: dict = field(default_factory=dict)  # temperature, top_p, top_k, seed given in the body
    grammar: str | None = None  # llama-server's extension: a GBNF grammar for the whole reply


# ---------------------------------------------------------------- reading a request


def read_request(body, settings: Settings) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty array of messages", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object", where)
        if m.get("role") not in ROLES:
            raise bad(f"{where}.role must be one of {', '.join(sorted(ROLES))}", f"{where}.role")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad(f"{where}.content must be a string or an array of parts", f"{where}.content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                _check_part(part, f"{where}.content[{j}]", settings)
        if m.get("tool_calls") is not None and not isinstance(m["tool_calls"], list):
            raise bad(f"{where}.tool_calls must be an array", f"{where}.tool_calls")
        try:
            out.append(normalize_message(m, "request", i))
        except (GemmaError, AttributeError, TypeError) as e:
            raise bad(f"{where} is not a chat message ({getattr(e, 'message', e)})", where) from None
    req = ChatRequest(out)
    req.stream = _typed(body, "stream", bool) or False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad("'stream_options' must be an object", "stream_options")
        req.include_usage = bool(options.get("include_usage"))
    if body.get("n", 1) not in (1, None):
        raise bad("only one choice per request is supported (n = 1)", "n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad("logprobs are not available from this server", "logprobs")
    for name in ("frequency_penalty", "presence_penalty"):  # refused, not silently ignored
        value = _number(body, name, float, -2.0, 2.0)
        if value:
            raise bad(f"'{name}' is not supported by this server (send 0 or leave it out)", name)
    req.tools = _tools(body.get("tools"))
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        req.tools = None
    elif choice not in ("auto", None):
        raise bad(f"tool_choice {json.dumps(choice)[:60]} is not supported: the model decides whether to call a tool",
                  "tool_choice")
    req.think = _thinking(body, settings.think)
    req.schema, req.json_mode = _response_format(body.get("response_format"))
    req.stop = _stop(body.get("stop"))
    req.grammar = _typed(body, "grammar", str) or None
    if req.grammar and (req.schema is not None or req.json_mode):
        raise bad("give either 'grammar' or a JSON response_format, not both", "grammar")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    req.max_tokens = _number(body, key, int, 1)
    for name, kind, low, high in (("temperature", float, 0.0, 2.0), ("top_p", float, 0.0, 1.0),
                                  ("top_k", int, 0, None), ("seed", int, None, None)):
        value = _number(body, name, kind, low, high)
        if value is not None:
            req.sampling[name] = value
    return req


_URL_PARTS = {"image_url": "image", "video_url": "video"}  # part type -> what its URL holds


def _check_part(part, where: str, settings: Settings) -> None:
    if isinstance(part, str):
        return
    if not isinstance(part, dict):
        raise bad(f"{where} must be an object", where)
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise bad(f"{where}.text must be a string", f"{where}.text")
    elif kind in _URL_PARTS:  # image_url, video_url: {"url": …} or the URL itself
        url = part.get(kind)
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str) or not url:
            raise bad(f"{where}.{kind}.url must be a data: URL", f"{where}.{kind}")
        _check_url(url, where, _URL_PARTS[kind], settings)
    elif kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict) or not isinstance(audio.get("data"), str) or not audio["data"]:
            raise bad(f"{where}.input_audio.data must be base64 audio", f"{where}.input_audio")
        _check_size(len(audio["data"]) * 3 // 4, where, settings)
    else:
        raise bad(f"{where}.type {kind!r} is not supported (text, image_url, input_audio, video_url)", f"{where}.type")


def _check_url(url: str, where: str, what: str, settings: Settings) -> None:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if ";base64" not in head or not data:
            raise bad(f"{where}: the {what} data URL is not base64 (data:<type>;base64,<data>)", where, "invalid_media")
        _check_size(len(data) * 3 // 4, where, settings)
    elif url.startswith("file://"):
        if not settings.allow_files:
            raise bad(f"{where}: file:// URLs are refused (start the server with --allow-files to read local files)",
                      where, "files_not_allowed")
    else:
        raise bad(f"{where}: the server does not download {what}s; send a data: URL", where, "invalid_media")


def _check_size(n: int, where: str, settings: Settings) -> None:
    if n > settings.max_media_bytes:
        raise ApiError(413, f"{where}: the media is {n // 1024 // 1024} MiB, over the server's limit of "
                       f"{settings.max_media_bytes // 1024 // 1024} MiB", param=where, code="media_too_large")


def _typed(body: dict, key: str, kind: type):
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise bad(f"'{key}' must be {'a boolean' if kind is bool else kind.__name__}, not {json.dumps(value)[:40]}", key)
    return value


def _number(body: dict, key: str, kind: type, low=None, high=None):
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise bad(f"'{key}' must be {'an integer' if kind is int else 'a number'}, not {json.dumps(value)[:40]}", key)
    if (low is not None and value < low) or (high is not None and value > high):
        raise bad(f"'{key}' is {value}, outside {low}..{high if high is not None else '∞'}", key)
    return kind(value)


def _tools(value) -> list[dict] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad("'tools' must be an array of function tools", "tools")
    tools = []
    for i, t in enumerate(value):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": …}}}}", f"tools[{i}]")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise bad(f"tools[{i}].function.parameters must be a JSON Schema object", f"tools[{i}].function.parameters")
        tools.append({"type": "function", "function": fn})
    return tools or None


def _thinking(body: dict, default: bool) -> bool:
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise bad("'chat_template_kwargs' must be an object", "chat_template_kwargs")
    if isinstance(kwargs, dict) and "enable_thinking" in kwargs:
        if not isinstance(kwargs["enable_thinking"], bool):
            raise bad("'chat_template_kwargs.enable_thinking' must be a boolean", "chat_template_kwargs")
        return kwargs["enable_thinking"]
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in ("none", "minimal", "low", "medium", "high"):
            raise bad("'reasoning_effort' must be none, minimal, low, medium or high", "reasoning_effort")
        return effort not in ("none", "minimal")
    return default


def _response_format(value) -> tuple[dict | None, bool]:
    if value is None:
        return None, False
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None, False
    if kind == "json_object":
        return None, True
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad("response_format json_schema needs {\"json_schema\": {\"schema\": {…}}}", "response_format")
        return schema, False
    raise bad("response_format must be text, json_object or json_schema", "response_format")


def _stop(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise bad("'stop' must be a string or an array of up to 4 non-empty strings", "stop")
    return tuple(stops)


# ---------------------------------------------------------------- the job


class Builder:
    """Prompts for one engine: the model's format, its media loader, the server's defaults."""

    def __init__(self, engine, settings: Settings):

        self.engine = engine
        self.settings = settings
        self.format = format_of_engine(engine)
        self._media = None
        self._media_lock = threading.Lock()  # requests build their jobs on worker threads; the media cache is shared

    @property
    def gemma4(self) -> bool:
        return self.format.kind == "gemma4"

    def job(self, req: ChatRequest) -> "Job":

        sampling = replace(self.settings.sampling, **req.sampling)
        if req.grammar:
            sampling = replace(sampling, grammar=req.grammar)
        if req.schema is not None or req.json_mode:
            try:
                sampling = replace(sampling, grammar=schema_to_grammar(req.schema))
            except Exception as e:  # noqa: BLE001 - llama.cpp's converter raises plain exceptions
                raise bad(f"the JSON schema cannot be turned into a grammar ({e})", "response_format") from None
        try:
            text = self.format.render(req.messages, req.tools, thinking=req.think)
        except GemmaError as e:
            raise bad(f"the messages cannot be rendered: {e.message}", "messages") from None
        except Exception as e:  # noqa: BLE001 - a template on odd messages
            raise bad(f"the messages cannot be rendered ({type(e).__name__}: {e})", "messages") from None
        tokens = self.engine.tokenize(text)
        media = self._load_media(req.messages)
        return Job(tokens, sampling, req.max_tokens or self.settings.max_tokens, media or None,
                   free_thought=bool(req.think and (req.schema is not None or req.json_mode) and self.gemma4),
                   in_thought=self.gemma4 and ends_in_thought(text),  # after a tool result with thinking on
                   stop=req.stop)

    def _load_media(self, messages: list[dict]) -> list:

        if not any(media_parts(m.get("content")) for m in messages):
            return []
        if not self.gemma4:
            raise bad("images and audio need a Gemma 4 model", "messages", "unsupported_media")
        if self.engine.media is None:  # loaded at startup or never: a projector is not loaded mid-serving
            raise bad(f"{self.engine.path.name} was served without a projector (mmproj), so it cannot read images "
                      "or audio; restart gemma serve with --mmproj", "messages", "unsupported_media")
        parts = prompt_order(messages)
        try:
            with self._media_lock:
                return self._decode(parts)
        except CapabilityError as e:
            raise bad(e.message, "messages", "unsupported_media") from None
        except MediaError as e:
            raise bad(e.message, "messages", "invalid_media") from None

    def _decode(self, parts: list[dict]) -> list:

        if self._media is None:
            self._media = MediaParts(keep=16)
        for kind in dict.fromkeys(p["type"] for p in parts):  # the model must take each kind (read-only here)
            projector = self.engine.ensure_projector(kind)
            if kind == "audio":
                self._media.rate = projector.sample_rate
        return self._media.for_engine(parts)


# ---------------------------------------------------------------- responses


def _id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(done: "Finished") -> dict:
    prompt = done.prompt_tokens + done.reused_tokens
    return {"prompt_tokens": prompt, "completion_tokens": done.generated_tokens,
            "total_tokens": prompt + done.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": done.reused_tokens}}


def _calls(calls) -> list[dict]:
    return [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}} for c in calls]


def spelled(call) -> str:
    """A tool call the client ruled out (tool_choice "none", no tools declared), as the text the model wrote."""
    unclosed = any(r.startswith("ended at") for r in call.repairs) if isinstance(call, reply.ToolCall) \
        else call.message.startswith("unterminated")
    return reply.CALL_OPEN + call.raw + ("" if unclosed else reply.CALL_CLOSE)


def completion(done: "Finished", model: str, gemma4: bool, calls: bool = True) -> dict:
    """The chat.completion object of a finished job; without `calls` (the client declared no tools or
    said tool_choice "none") a tool call the model wrote stays text in the answer."""

    if gemma4:
        events = reply.collapse(_as_text(_reply_events(done.text, done.job.in_thought), calls))
        answer = "".join(e.text for e in events if isinstance(e, reply.Answer))
        thinking = "".join(e.text for e in events if isinstance(e, reply.Thinking))
        calls = [e for e in events if isinstance(e, reply.ToolCall)]
    else:
        answer, thinking, calls = done.text, "", []
    message: dict = {"role": "assistant", "content": answer if answer or not calls else None}
    if thinking:
        message["reasoning_content"] = thinking
    finish = done.finish_reason
    if calls:
        message["tool_calls"] = _calls(calls)
        finish = "tool_calls" if finish == "stop" else finish
    return {"id": _id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage(done)}


def _reply_events(text: str, in_thought: bool) -> list:
    parser = reply.ReplyParser(in_thought=in_thought)
    return parser.feed(text) + parser.close()


def _as_text(events, calls: bool) -> list:
    """`events`, where tool calls are not wanted with each call turned back into the answer's text."""
    if calls:
        return list(events)
    return [reply.Answer(spelled(e)) if isinstance(e, (reply.ToolCall, reply.ToolCallError)) else e for e in events]


class Chunks:
    """The chat.completion.chunk objects of a streamed job, from its pieces of text as they come."""

    def __init__(self, model: str, gemma4: bool, stop: tuple[str, ...], include_usage: bool, in_thought: bool = False,
                 calls: bool = True):

        self.id, self.created, self.model = _id(), int(time.time()), model
        self.parser = reply.ReplyParser(in_thought=in_thought) if gemma4 else None
        self.stop = stop
        self.hold = max(map(len, stop), default=1) - 1  # a stop string may be starting in the last characters
        self.include_usage = include_usage
        self.raw = ""
        self.sent = 0  # characters of `raw` handed to the parser
        self.stopped = False  # a stop string appeared: nothing more is sent before the end
        self.calls = 0
        self.calls_wanted = calls  # False: a tool call is sent as the text the model wrote

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        out = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self.include_usage:
            out["usage"] = None
        return out

    def first(self) -> dict:
        return self._chunk({"role": "assistant", "content": ""})

    def text(self, piece: str) -> Iterator[dict]:
        self.raw += piece
        tail = self.raw[-(len(piece) + self.hold):]  # where a stop string completed by this piece would be
        if self.stop and (self.stopped or any(s in tail for s in self.stop)):
            self.stopped = True
            return  # the job ends here; its final text is cut at the stop string
        safe = len(self.raw) - self.hold
        if safe > self.sent:
            yield from self._feed(self.raw[self.sent:safe])
            self.sent = safe

    def done(self, done: "Finished") -> Iterator[dict]:
        final = done.text  # cut at a stop string
        if len(final) > self.sent:
            yield from self._feed(final[self.sent:])
        if self.parser is not None:
            yield from self._events(self.parser.close())
        finish = done.finish_reason
        if self.calls and finish == "stop":
            finish = "tool_calls"
        yield self._chunk({}, finish)
        if self.include_usage:
            yield {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                   "choices": [], "usage": usage(done)}

    def _feed(self, text: str) -> Iterator[dict]:
        if self.parser is None:
            if text:
                yield self._chunk({"content": text})
            return
        yield from self._events(self.parser.feed(text))

    def _events(self, events) -> Iterator[dict]:

        for event in _as_text(events, self.calls_wanted):
            if isinstance(event, reply.Answer) and event.text:
                yield self._chunk({"content": event.text})
            elif isinstance(event, reply.Thinking) and event.text:
                yield self._chunk({"reasoning_content": event.text})
            elif isinstance(event, reply.ToolCall):
                call = _calls([event])[0]
                yield self._chunk({"tool_calls": [{"index": self.calls, **call}]})
                self.calls += 1
