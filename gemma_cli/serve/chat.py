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
from dataclasses import dataclass, replace
from typing import Iterator

from gemma_cli.chat.session import format_of_engine
from gemma_cli.engine.core import TokenLogprob, request_sampling
from gemma_cli.engine.parallel import Finished, Job
from gemma_cli.errors import CapabilityError, GemmaError, MediaError
from gemma_cli.format import reply
from gemma_cli.format.prompt import TURN_END, ends_in_thought
from gemma_cli.format.request import ChatRequest, RequestError, read_chat
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
    slots: int = 1  # parallel sequences: the most choices (`n`) a request may ask for


# ---------------------------------------------------------------- reading a request


def read_request(body, settings: Settings) -> ChatRequest:
    """The body read by the one OpenAI reader (`format.request`), then what only the server checks:
    where media may come from and how large it may be. The thinking default is the server's."""
    try:
        req = read_chat(body)
    except RequestError as e:
        raise bad(e.message, e.param, e.code) from None
    if req.think is None:
        req.think = settings.think
    if req.n > settings.slots:
        raise bad(f"'n' is {req.n}, more choices than the server's {settings.slots} parallel sequences "
                  "(start gemma serve with a larger --parallel)", "n")
    for i, m in enumerate(req.messages):
        content = m.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            where = f"messages[{i}].content[{j}]"
            if part.get("type") in ("image", "video"):
                _check_url(part["url"], where, part["type"], settings)
            elif part.get("type") == "audio":
                _check_size(len(part["data"]) * 3 // 4, where, settings)
    return req


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


# ---------------------------------------------------------------- the job


class Builder:
    """Prompts for one engine: the model's format, its media loader, the server's defaults."""

    def __init__(self, engine, settings: Settings):

        self.engine = engine
        self.settings = settings
        self.format = format_of_engine(engine)
        self._media = None
        self._media_lock = threading.Lock()  # requests build their jobs on worker threads; the media cache is shared
        # A turn's end (the prompt's save points, engine.parallel's Job.save_at), as tokens.
        self._turn_end = engine.tokenize(TURN_END if self.gemma4 else "<end_of_turn>\n")

    @property
    def gemma4(self) -> bool:
        return self.format.kind == "gemma4"

    def jobs(self, req: ChatRequest) -> list["Job"]:
        """The request's `n` jobs: one prompt, evaluated once and shared (its last token aside), each
        choice with its own seed (seed + i) when a seed is given."""
        job = self.job(req)
        if req.n == 1:
            return [job]
        shared = len(job.prompt) - 1 if not job.media else None  # with media, the staging sequence is reused anyway
        seed = job.sampling.seed
        return [replace(job, shared=shared, sampling=replace(job.sampling, seed=None if seed is None else seed + i))
                for i in range(req.n)]

    def job(self, req: ChatRequest) -> "Job":

        if req.tool_choice == "required" and not self.gemma4:
            raise bad("a forced tool call (tool_choice) needs a Gemma 4 model: its call syntax is Gemma 4's",
                      "tool_choice")
        try:
            sampling = request_sampling(self.settings.sampling, req)
        except RequestError as e:
            raise bad(e.message, e.param) from None
        outside = [t for t in sampling.logit_bias or {} if not 0 <= t < self.engine.n_vocab]
        if outside:
            raise bad(f"logit_bias names token {outside[0]}, outside the model's vocabulary "
                      f"(0..{self.engine.n_vocab - 1})", "logit_bias")
        try:
            text = self.format.render(req.messages, req.tools, thinking=req.think)
        except GemmaError as e:
            raise bad(f"the messages cannot be rendered: {e.message}", "messages") from None
        except Exception as e:  # noqa: BLE001 - a template on odd messages
            raise bad(f"the messages cannot be rendered ({type(e).__name__}: {e})", "messages") from None
        text, media = self._load_media(text, req.messages)
        tokens = self.engine.tokenize(text)
        constrained = req.schema is not None or req.json_mode or req.tool_choice == "required"
        return Job(tokens, sampling, req.max_tokens or self.settings.max_tokens, media or None,
                   free_thought=bool(req.think and constrained and self.gemma4),
                   in_thought=self.gemma4 and ends_in_thought(text),  # after a tool result with thinking on
                   stop=req.stop, logprobs=req.logprobs, save_at=() if media else turn_ends(tokens, self._turn_end))

    def _load_media(self, text: str, messages: list[dict]) -> tuple[str, list]:
        """The prompt with its videos written out as frames, and the media for it in prompt order."""
        if not any(media_parts(m.get("content")) for m in messages):
            return text, []
        if not self.gemma4:
            raise bad("images and audio need a Gemma 4 model", "messages", "unsupported_media")
        if self.engine.media is None:  # loaded at startup or never: a projector is not loaded mid-serving
            raise bad(f"{self.engine.path.name} was served without a projector (mmproj), so it cannot read images "
                      "or audio; restart gemma serve with --mmproj", "messages", "unsupported_media")
        try:
            with self._media_lock:
                return self._decode(text, messages)
        except CapabilityError as e:
            raise bad(e.message, "messages", "unsupported_media") from None
        except MediaError as e:
            raise bad(e.message, "messages", "invalid_media") from None

    def _decode(self, text: str, messages: list[dict]) -> tuple[str, list]:

        if self._media is None:
            self._media = MediaParts(keep=16)
        for kind in dict.fromkeys(p["type"] for p in prompt_order(messages)):  # the model must take each kind
            projector = self.engine.ensure_projector(kind)
            if kind == "audio":
                self._media.rate = projector.sample_rate
        return self._media.for_prompt(text, messages)


def turn_ends(tokens: list[int], close: list[int]) -> list[int]:
    """The positions just after each turn's end (`close`, its tokens) in a prompt: where a continuing client's
    next prompt shares this one, so the slot keeps its state there (engine.parallel, the prompt cache on disk)."""
    n = len(close)
    if not n:
        return []
    first = close[0]
    return [i + n for i, tok in enumerate(tokens) if tok == first and tokens[i : i + n] == close]


# ---------------------------------------------------------------- responses


def _id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(done: "Finished | list[Finished]") -> dict:
    """OpenAI's usage of a job, or of the `n` jobs of one request (their prompt counted once)."""
    dones = done if isinstance(done, list) else [done]
    prompt = dones[0].prompt_tokens + dones[0].reused_tokens
    generated = sum(d.generated_tokens for d in dones)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated,
            "prompt_tokens_details": {"cached_tokens": min(d.reused_tokens for d in dones)}}


def logprob_content(entries: list[TokenLogprob]) -> dict:
    """OpenAI's `choices[].logprobs` for tokens (every token the model generated, a thought included)."""
    def one(token: int, piece: bytes, logprob: float) -> dict:
        return {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(piece)}

    return {"content": [{**one(e.token, e.piece, e.logprob), "top_logprobs": [one(*t) for t in e.top]}
                        for e in entries], "refusal": None}


def _calls(calls) -> list[dict]:
    return [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}} for c in calls]


def spelled(call) -> str:
    """A tool call the client ruled out (tool_choice "none", no tools declared), as the text the model wrote."""
    unclosed = any(r.startswith("ended at") for r in call.repairs) if isinstance(call, reply.ToolCall) \
        else call.message.startswith("unterminated")
    return reply.CALL_OPEN + call.raw + ("" if unclosed else reply.CALL_CLOSE)


def completion(done: "Finished | list[Finished]", model: str, gemma4: bool, calls: bool = True,
               one_call: bool = False) -> dict:
    """The chat.completion object of a finished job (or of a request's `n` jobs, one choice each);
    without `calls` (the client declared no tools or said tool_choice "none") a tool call the model
    wrote stays text in the answer; `one_call` (parallel_tool_calls false): calls after the first are dropped."""
    dones = done if isinstance(done, list) else [done]
    return {"id": _id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [_choice(d, i, gemma4, calls, one_call) for i, d in enumerate(dones)], "usage": usage(dones)}


def _choice(done: "Finished", index: int, gemma4: bool, calls: bool, one_call: bool) -> dict:
    if gemma4:
        events = reply.collapse(_as_text(_reply_events(done.text, done.job.in_thought), calls))
        answer = "".join(e.text for e in events if isinstance(e, reply.Answer))
        thinking = "".join(e.text for e in events if isinstance(e, reply.Thinking))
        calls = [e for e in events if isinstance(e, reply.ToolCall)]
    else:
        answer, thinking, calls = done.text, "", []
    if one_call:
        calls = calls[:1]
    message: dict = {"role": "assistant", "content": answer if answer or not calls else None}
    if thinking:
        message["reasoning_content"] = thinking
    finish = done.finish_reason
    if calls:
        message["tool_calls"] = _calls(calls)
        finish = "tool_calls" if finish == "stop" else finish
    logprobs = logprob_content(done.logprobs) if done.job.logprobs is not None else None
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


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
                 calls: bool = True, *, index: int = 0, one_call: bool = False, logprobs: bool = False,
                 id: str | None = None):

        self.id, self.created, self.model = id or _id(), int(time.time()), model
        self.index = index  # the choice these chunks are of (n > 1: one Chunks per choice, one id)
        self.one_call = one_call  # parallel_tool_calls false: calls after the first are not sent
        self.logprobs: list[TokenLogprob] | None = [] if logprobs else None  # tokens not yet sent with a chunk
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
        logprobs = None
        if self.logprobs and (delta or finish):  # the tokens decoded so far go with the next chunk that says something
            logprobs, self.logprobs = logprob_content(self.logprobs), []
        out = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": [{"index": self.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
        if self.include_usage:
            out["usage"] = None
        return out

    def first(self) -> dict:
        return self._chunk({"role": "assistant", "content": ""})

    def logprob(self, entry: TokenLogprob) -> None:
        """A token's logprob (it comes before the token's text): sent with the next chunk."""
        if self.logprobs is not None:
            self.logprobs.append(entry)

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
                if self.one_call and self.calls:
                    continue
                call = _calls([event])[0]
                yield self._chunk({"tool_calls": [{"index": self.calls, **call}]})
                self.calls += 1
