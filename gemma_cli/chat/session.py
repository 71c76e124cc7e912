"""A chat session: conversation history + prompt format + engine + reply parsing.

The core of `gemma chat`, usable without the CLI. Gemma 4 models get our own prompt
builder (`prompt`) and reply parser (`reply`); other GGUFs run through the chat template
embedded in them (sandboxed), and base models without a template as plain completion.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from gemma_cli.chat.tools import ToolOutcome, result_text
from gemma_cli.errors import CapabilityError, GemmaError
from gemma_cli.format import prompt as gemma_prompt
from gemma_cli.format import reply
from gemma_cli.format.template import check_template, render_template
from gemma_cli.media.parts import MediaParts, prompt_order
from gemma_cli.media.video import with_frames

if TYPE_CHECKING:
    from gemma_cli.engine import Engine, Sampling, Step

GEMMA4 = "gemma4"
THOUGHT_OPEN, THOUGHT_CLOSE = reply.CHANNEL_OPEN, reply.CHANNEL_CLOSE


@dataclass
class PromptFormat:
    """How a model wants its conversation written: "gemma4", "template" or "plain".

    Gemma 4 goes through the pure builder (`prompt.render`) with the `variant` of the template the
    model carries (or the newest canonical one for its size); a Gemma 4 template given with
    `--chat-template` that is not a known one renders, sandboxed, in jinja2 (`template`).
    """

    kind: str
    bos: str = ""
    eos: str = ""
    template: str | None = None
    add_bos: bool = False  # a template that leaves out the BOS its model wants gets it (as llama.cpp does)
    variant: "gemma_prompt.Variant | None" = None
    source: str = ""  # where the template comes from, for people: "embedded in the model", "--chat-template FILE"
    fallback: str | None = None  # why the template in use is not the model's own (the notice)
    origin: str | None = None  # the `--chat-template FILE` it renders, named in its errors

    def render(self, messages: list[dict], tools: list[dict] | None = None, *, thinking: bool = False,
               add_generation_prompt: bool = True, preserve_thinking: bool = False) -> str:
        if self.kind == GEMMA4 and self.variant is not None:
            return gemma_prompt.render(messages, tools, thinking=thinking, add_generation_prompt=add_generation_prompt,
                                       bos=self.bos or "<bos>", variant=self.variant, preserve_thinking=preserve_thinking)
        if self.kind in (GEMMA4, "template"):
            text = render_template(self.template or "", messages, bos=self.bos, eos=self.eos,
                                   add_generation_prompt=add_generation_prompt, tools=tools, origin=self.origin,
                                   enable_thinking=thinking, preserve_thinking=preserve_thinking)
            return self.bos + text if self.add_bos and self.bos and not text.startswith(self.bos) else text
        # No template (a base model): plain text completion; every message kept, a line break between turns
        return self.bos + "\n".join(text for text in map(_text_of, messages) if text)

    @property
    def template_name(self) -> str:
        """The template in use, release and size, and where it comes from (/show template, --json)."""
        if self.kind == GEMMA4 and self.variant is not None:
            return f"Gemma 4 {self.variant.label}, {self.source}"
        if self.kind in (GEMMA4, "template"):
            return f"the chat template {self.source} (rendered by jinja2, sandboxed)"
        return "none: plain text completion"

    @property
    def notice(self) -> str | None:
        if self.kind == "plain":
            return ("note: this model has no chat template (a base model): running as plain text completion, "
                    "its messages one line break apart")
        return self.fallback


def small_model(meta: dict) -> bool:
    """Whether a Gemma 4 GGUF is a small one (E2B/E4B: per-layer embeddings), from its header."""
    arch = str(meta.get("general.architecture", ""))
    try:
        if int(meta.get(f"{arch}.embedding_length_per_layer_input") or 0) > 0:
            return True
    except (TypeError, ValueError):
        pass
    names = " ".join(str(meta.get(k, "")) for k in ("general.size_label", "general.name", "general.basename"))
    return re.search(r"(?<![A-Za-z0-9])E[24]B(?![A-Za-z0-9])", names, re.IGNORECASE) is not None


def format_for(architecture: str, chat_template: str | None, bos: str, eos: str, add_bos: bool = True, *,
               small: bool = False, override: tuple[str, str] | None = None) -> PromptFormat:
    """The prompt format of a model; `override` is (`--chat-template` path, its text)."""
    source = f"from {override[0]}" if override else "embedded in the model"
    template = override[1] if override else chat_template
    origin = override[0] if override else None
    if architecture == GEMMA4:
        variant = gemma_prompt.variant_of(template)
        if variant is not None:
            return PromptFormat(GEMMA4, bos=bos or "<bos>", eos=eos, variant=variant, source=source)
        if override:
            return PromptFormat(GEMMA4, bos=bos or "<bos>", eos=eos, template=template, add_bos=add_bos, source=source,
                                origin=origin)
        variant = gemma_prompt.default_variant(small)
        why = "has no chat template" if not chat_template else "embeds a chat template gemma does not know"
        note = (f"this model {why}: using Gemma 4's {variant.label} template "
                "(--chat-template FILE to choose another)")
        return PromptFormat(GEMMA4, bos=bos or "<bos>", eos=eos, variant=variant, source="the default for its size",
                            fallback=note)
    if template:
        return PromptFormat("template", bos=bos, eos=eos, template=template, add_bos=add_bos, source=source,
                            origin=origin)
    return PromptFormat("plain", bos=bos if add_bos else "", eos=eos)


def format_of_engine(engine, override: tuple[str, str] | None = None) -> PromptFormat:
    """The prompt format of a loaded model."""
    info = engine.info
    return format_for(info.architecture, info.chat_template, info.bos, info.eos,
                      bool(info.meta.get("tokenizer.ggml.add_bos_token", True)), small=small_model(info.meta),
                      override=override)


def format_of_header(header, override: tuple[str, str] | None = None) -> PromptFormat:
    """The prompt format of a GGUF, from its header alone (no weights loaded)."""
    return format_for(
        header.architecture,
        header.chat_template,
        header.token_text(header.get("tokenizer.ggml.bos_token_id")),
        header.token_text(header.get("tokenizer.ggml.eos_token_id")),
        bool(header.get("tokenizer.ggml.add_bos_token", True)),
        small=small_model(header.meta),
        override=override,
    )


def read_chat_template(path) -> tuple[str, str]:
    """`--chat-template FILE`: (the path as given, its text), or a one-line error."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GemmaError(f"cannot read chat template {path}: {getattr(e, 'strerror', None) or e}",
                         "pass a Jinja chat template file (e.g. one of a model's .jinja files)") from None
    if not text.strip():
        raise GemmaError(f"chat template {path} is empty", "pass a Jinja chat template file")
    check_template(text, str(path))  # a syntax error fails now, before the model loads
    return str(path), text


def _text_of(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return json.dumps(content, ensure_ascii=False)  # a tool's result given as JSON


# ---------------------------------------------------------------- results


@dataclass
class Stats:
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    ttft: float = 0.0
    tps: float = 0.0
    finish_reason: str | None = None
    drafted: int = 0  # speculative decoding: tokens proposed by the drafter
    accepted: int = 0  # ... and kept by the model
    limit: str | None = None  # with finish_reason "length": what ran out, "max_tokens" or "context"
    disk_tokens: int = 0  # prompt tokens restored from the prompt cache on disk (part of reused_tokens)

    @classmethod
    def of(cls, step: "Step") -> "Stats":
        return cls(step.prompt_tokens, step.reused_tokens, step.generated_tokens, step.ttft, step.tps,
                   step.finish_reason, getattr(step, "drafted", 0), getattr(step, "accepted", 0))


@dataclass
class Result:
    """One model turn, parsed."""

    answer: str = ""
    thinking: str = ""
    tool_calls: list[reply.ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    interrupted: bool = False
    ended_in_thought: bool = False  # the reply stopped inside its thought (max tokens, or the text just ended)

    @property
    def thought_only(self) -> bool:
        """Thinking used the whole budget and no answer came (say so instead of printing nothing)."""
        return ((bool(self.thinking) or self.ended_in_thought) and not self.answer.strip() and not self.tool_calls
                and self.stats.finish_reason == "length")


@dataclass
class Done:
    """The last event of a turn."""

    result: Result


# ---------------------------------------------------------------- session


class ChatSession:
    def __init__(self, engine: "Engine", fmt: PromptFormat, *, sampling: "Sampling", max_tokens: int | None = None,
                 think: bool = False, system: str | None = None, tools: list[dict] | None = None, media=None,
                 keep_thinking: bool = False, think_budget: int | None = None):
        self.engine = engine
        self.format = fmt
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.think = think
        self.keep_thinking = keep_thinking  # the template's preserve_thinking: thoughts of tool-call turns go back
        self.think_budget = think_budget  # most thought tokens before the thought is closed (None: no limit)
        self.tools = tools or None
        self.messages: list[dict] = []
        self.last_result: Result | None = None  # of the latest generate(), finished or interrupted
        # The history before the turn under way (send(), retry(), answer() set it; its tool rounds keep
        # it): a turn that fails goes back to it, so a failure never stays in the conversation.
        self._before_turn: list[dict] | None = None
        # gemma_cli.media.parts.MediaParts: the decoder of this conversation's media (given, or made at the first part)
        self._media = media
        self.documents: list[str] = []  # texts of the conversation (piped stdin) whose end is a save point
        if system:
            self.messages.append({"role": "system", "content": system})

    # ---- prompt

    def prompt_text(self, add_generation_prompt: bool = True) -> str:
        return self._with_frames(self.format.render(self.messages, self.tools, thinking=self.think,
                                                    add_generation_prompt=add_generation_prompt,
                                                    preserve_thinking=self.keep_thinking))

    def _with_frames(self, text: str) -> str:
        """Each `<|video|>` written out as its frames, `MM:SS <|image|>` apart (gemma_cli.media.video)."""
        if "<|video|>" not in text or not _has_media(self.messages):
            return text

        return with_frames(text, self.media_parts().videos(prompt_order(self.messages)))

    def _prompt_tokens(self) -> tuple[list[int], int | None, bool, list[int]]:
        """The prompt's tokens, where its generation prompt starts (a KV checkpoint spot), whether it
        ends inside an open thought (the reply then starts as thinking), and its save points."""
        full = self.prompt_text()
        head = self.prompt_text(add_generation_prompt=False)
        tokens = self.engine.tokenize(full)
        in_thought = self.format.kind == GEMMA4 and gemma_prompt.ends_in_thought(full)
        points = self._save_points(full, tokens)
        if not full.startswith(head) or len(full) == len(head):
            return tokens, None, in_thought, points
        return tokens, len(tokens) - len(self.engine.tokenize(full[len(head):])), in_thought, points

    def _save_points(self, full: str, tokens: list[int]) -> list[int]:
        """Where later prompts are likely to share this one's tokens (the prompt cache's restart points,
        see engine.disk): the end of the system prompt and tool declarations, of each piped document, and
        of each complete turn. Each as a token position, so far as its text tokenizes the same alone."""
        heads = []
        n_system = next((i for i, m in enumerate(self.messages) if m.get("role") != "system"), len(self.messages))
        if n_system:
            heads.append(self._render(self.messages[:n_system]))
        elif self.tools and self.format.kind == GEMMA4:  # the declarations' system turn, as an empty system prompt's
            heads.append(self._render([{"role": "system", "content": ""}]))
        for i, m in enumerate(self.messages):
            following = self.messages[i + 1] if i + 1 < len(self.messages) else None
            if m.get("role") == "assistant" and (following is None or following.get("role") == "user"):
                heads.append(self._render(self.messages[: i + 1]))
        ends = [len(h) for h in heads if full.startswith(h)]
        ends += [full.rfind(doc) + len(doc) for doc in self.documents if doc and doc in full]
        points = set()
        for end in ends:
            if 0 < end < len(full):
                head = self.engine.tokenize(full[:end])
                n = next((i for i, (a, b) in enumerate(zip(head, tokens)) if a != b), min(len(head), len(tokens)))
                if 0 < n < len(tokens):
                    points.add(n)
        return sorted(points)

    def _render(self, messages: list[dict]) -> str:
        return self._with_frames(self.format.render(messages, self.tools, thinking=self.think,
                                                    add_generation_prompt=False, preserve_thinking=self.keep_thinking))

    def keep(self) -> None:
        """Evaluate the conversation as it stands (its last turn closed) and keep that state in the prompt
        cache on disk, so `gemma chat --continue` in a new process starts from it (no-op without one)."""
        if getattr(self.engine, "prompt_cache", None) is None or not self.messages:
            return
        text = self._render(self.messages)
        tokens = self.engine.tokenize(text)
        items, _, points = self.engine.prompt_items(tokens, self._prompt_media() or None, None,
                                                    self._save_points(text, tokens))
        self.engine.keep(items, points)

    # ---- turns

    def send(self, content: str | list[dict]) -> Iterator[object]:
        """Add a user turn and stream the model's reply (events from `reply`, then Done).

        Media parts (`{"type": "image"|"audio", "path": ...}`, before the text) are loaded
        here, so a bad file fails before it joins the history; audio over 30 s becomes
        several parts cut at pauses.
        """
        if _has_media([{"content": content}]):
            self._ready_for(content)
            content = self.media_parts().prepare(content)
        self._before_turn = list(self.messages)
        self.messages.append({"role": "user", "content": content})
        return self.generate()

    def answer(self) -> Iterator[object]:
        """The model's next turn after the history as it is (a saved conversation that ends in a tool's
        result); like send(), a turn that fails leaves the history as it was."""
        self._before_turn = list(self.messages)
        return self.generate()

    def attach(self, kind: str, source) -> dict:
        """A media part for the next message, read and decoded now, once the model is known to take the
        kind: a bad file or a model without that encoder fails here, not when the message is sent."""
        self._ready_for([{"type": kind}])
        return self.media_parts().attach(kind, source)

    def media_parts(self):
        """The decoder of this conversation's images and audio (see gemma_cli.media.parts.MediaParts)."""
        if self._media is None:
            self._media = MediaParts()
        return self._media

    def _ready_for(self, content: list) -> None:
        """The model must take each kind before a file is read (a 31B asked for audio says so first)."""
        if self.format.kind != GEMMA4:
            raise CapabilityError("images and audio need a Gemma 4 model", "pick a Gemma 4 GGUF with --model")
        for kind in dict.fromkeys(p.get("type") for p in content if isinstance(p, dict)):
            if kind in ("image", "audio", "video"):
                projector = self.engine.ensure_projector(kind)
                if kind == "audio":
                    self.media_parts().rate = projector.sample_rate

    def _prompt_media(self) -> list:
        """The decoded media of the conversation, in the order of their placeholders in the prompt."""
        if not _has_media(self.messages):
            return []

        parts = prompt_order(self.messages)
        self._ready_for(parts)
        return self.media_parts().for_engine(parts)

    def generate(self) -> Iterator[object]:
        """Stream the model's turn after the history as it is; a turn that fails (an error, not a
        Ctrl-C) leaves the history as it was before the turn began (see `_before_turn`)."""
        before = self._before_turn if self._before_turn is not None else list(self.messages)
        try:
            yield from self._generate()
        except (KeyboardInterrupt, GeneratorExit):
            self._before_turn = None  # stopped by the user: what was said so far is kept
            raise
        except Exception:
            self._before_turn = before
            self.undo_turn()
            raise
        if not self.pending_calls():
            self._before_turn = None  # the turn is over (its tool rounds, if any, would continue it)

    def undo_turn(self) -> None:
        """The turn under way failed: the history goes back to what it was before it (none under way: nothing)."""
        if self._before_turn is not None:
            self.messages, self._before_turn = self._before_turn, None

    def _generate(self) -> Iterator[object]:
        tokens, checkpoint, in_thought, points = self._prompt_tokens()
        parse = self.format.kind == GEMMA4
        parser = reply.ReplyParser(in_thought=in_thought, tools=self.tools)
        result = self.last_result = Result()  # the partial one stays readable after a Ctrl-C
        media = self._prompt_media()
        free = bool(self.sampling.grammar and self.think and self.format.kind == GEMMA4)
        budget = self.think_budget if self.think and parse else None
        stream = turn_steps(self.engine, tokens, media or None, self.max_tokens, self.sampling, checkpoint,
                            free_thought=free, in_thought=in_thought, think_budget=budget, save_at=points)
        try:
            for step in stream:
                result.stats = Stats.of(step)
                events = parser.feed(step.text) if parse else _as_answer(step.text)
                yield from _collect(events, result)
            result.ended_in_thought = parse and parser.in_thought
            yield from _collect(parser.close() if parse else [], result)
        except (KeyboardInterrupt, GeneratorExit):
            result.interrupted = True
            result.stats.finish_reason = "interrupted"
            stream.close()
            self._record(result)
            raise
        result.stats.disk_tokens = getattr(self.engine, "from_disk", 0)
        if result.stats.finish_reason == "length":
            full = self.max_tokens is None or result.stats.generated_tokens < self.max_tokens
            result.stats.limit = "context" if full else "max_tokens"
        self._record(result)
        yield Done(result)

    def _record(self, result: Result) -> None:
        """Keep the model's turn in the history: its answer (and tool calls), never its thinking."""
        message: dict = {"role": "assistant", "content": result.answer}
        if result.tool_calls:
            turn = len(self.messages)
            message["tool_calls"] = [
                {"id": f"call_{turn}_{i}", "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for i, c in enumerate(result.tool_calls)
            ]
            if result.thinking:
                message["reasoning_content"] = result.thinking
        self.messages.append(message)

    def pending_calls(self) -> list[dict]:
        """The tool calls of the last model turn (OpenAI shape, with ids)."""
        last = self.messages[-1] if self.messages else {}
        return list(last.get("tool_calls") or []) if last.get("role") == "assistant" else []

    def add_tool_result(self, call: dict, value) -> None:
        """Feed a tool's result back; the next `generate()` continues the same model turn."""
        self.messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                              "content": value})

    def can_see(self) -> bool:
        """Whether the model can look at an image (a Gemma 4 with a vision projector, loaded now if needed)."""
        try:
            self._ready_for([{"type": "image"}])
        except GemmaError:
            return False
        return True

    def tool_content(self, text, images: list[str]) -> list[dict]:
        """A tool result with images (data URLs) the model looks at: text first, then each image, decoded now."""
        body = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
        parts = [{"type": "text", "text": body}] + [{"type": "image", "url": url} for url in images]
        self._ready_for(parts)
        return self.media_parts().prepare(parts)

    def retry(self) -> Iterator[object]:
        """Drop the last model turn and generate it again."""
        if not any(m["role"] == "user" for m in self.messages):
            raise GemmaError("there is no answer to retry yet", "send a message first")
        self._before_turn = list(self.messages)  # a retry that fails keeps the answer it was to replace
        while self.messages and self.messages[-1]["role"] in ("assistant", "tool"):
            self.messages.pop()
        return self.generate()

    def clear(self) -> None:
        self.messages = [m for m in self.messages[:1] if m["role"] == "system"]


def _has_media(messages: list[dict]) -> bool:
    return any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") in ("image", "audio", "video")
                                                          for p in m["content"]) for m in messages)


def _as_answer(text: str) -> list[object]:
    return [reply.Answer(text)] if text else []


def _collect(events, result: Result) -> Iterator[object]:
    for event in events:
        if isinstance(event, reply.Answer):
            result.answer += event.text
        elif isinstance(event, reply.Thinking):
            result.thinking += event.text
        elif isinstance(event, reply.ToolCall):
            result.tool_calls.append(event)
        elif isinstance(event, reply.ToolCallError):
            result.errors.append(event.message)
        yield event


# ---------------------------------------------------------------- tool loop


@dataclass
class ToolRun:
    """A tool call the session handled: run (with its result) or declined."""

    call: dict
    approved: bool
    result: object = None
    server: str | None = None  # an MCP tool's server
    error: str | None = None  # the tool's own error (an MCP isError, a timeout)
    seconds: float = 0.0
    repeated: bool = False  # an identical call earlier in the turn answered it (not run again)


REPEAT_NOTE = "this identical call was already made in this turn: this is its first result, it was not run again"


def converse(session: ChatSession, events: Iterator[object], toolbox=None, confirm=None,
             max_rounds: int = 8) -> Iterator[object]:
    """Stream a model turn and, while it calls tools that can run, run them and continue.

    `confirm(call) -> bool | str` asks the user before each call (None: always yes; a string: not run,
    and why). Declined
    calls and errors go back to the model as error results, so it can carry on. A call identical
    to an earlier one of the same turn (tool and arguments) is answered from the first result,
    with a note, instead of run again (Gemma 4 can repeat a call forever).
    """
    seen: dict[str, object] = {}
    try:
        for round_no in range(max_rounds + 1):
            result = None
            for event in events:
                if isinstance(event, Done):
                    result = event.result
                yield event
            calls = session.pending_calls()
            if result is None or not calls or toolbox is None or not toolbox.runnable:
                return
            if round_no == max_rounds:
                yield ToolRun({"function": {"name": "", "arguments": {}}}, False,
                              f"stopped after {max_rounds} tool rounds")
                return
            for call in calls:
                yield _run_call(session, toolbox, call, confirm, seen)
            events = session.generate()
    except Exception:
        session.undo_turn()  # a tool round that fails undoes the whole turn, as a failed generate() does
        raise


def _run_call(session: ChatSession, toolbox, call: dict, confirm, seen: dict) -> ToolRun:
    fn = call["function"]
    key = fn["name"] + "\0" + json.dumps(fn.get("arguments"), sort_keys=True, ensure_ascii=False, default=str)
    if key in seen:
        value = {"note": REPEAT_NOTE, "result": seen[key]}
        session.add_tool_result(call, value)
        return ToolRun(call, True, value, repeated=True)
    answer = True if confirm is None else confirm(call)  # True, False, or why not (a string)
    if answer is not True:
        value = {"error": answer if isinstance(answer, str) and answer else "the user declined to run this tool"}
        session.add_tool_result(call, value)
        return ToolRun(call, False, value)
    out = toolbox.run(fn["name"], fn.get("arguments"))
    if isinstance(out, ToolOutcome):
        value = result_text(out.value)
        seen[key] = value
        content = session.tool_content(value, out.images) if out.images else value
        session.add_tool_result(call, content)
        return ToolRun(call, True, value, server=out.server, error=out.error, seconds=out.seconds)
    value = result_text(out)
    seen[key] = value
    session.add_tool_result(call, value)
    return ToolRun(call, True, value)


def turn_steps(engine, tokens: list, media, max_tokens: int | None, s, checkpoint: int | None = None, *,
               free_thought: bool = False, in_thought: bool = False, think_budget: int | None = None,
               save_at: list[int] | None = None) -> Iterator["Step"]:
    """Engine steps for one model turn; with `free_thought` (a grammar and thinking), the thought runs free.

    The grammar constrains the answer only: the thought is generated without it, up to
    `<channel|>`, then generation goes on with the grammar from there (the KV cache
    holds the thought, so only its last token is evaluated again). `in_thought`: the prompt
    already opened the thought. `think_budget`: after that many tokens inside the thought, it
    is closed (`<channel|>` appended, as llama.cpp's --reasoning-budget) and the model answers;
    the closing text comes as a step of its own (token None).
    """
    run = engine.stream_generate if not save_at else partial(engine.stream_generate, save_at=save_at)
    grammar_later = bool(s.grammar and free_thought)
    if not (grammar_later or think_budget is not None):
        yield from run(tokens, media=media, max_tokens=max_tokens, sampling=s, checkpoint_at=checkpoint)
        return
    thought, text, first, last = [], "", None, None
    opened, inside, over_budget = in_thought, 0, False
    stream = run(tokens, media=media, max_tokens=max_tokens, sampling=replace(s, grammar=None) if grammar_later else s,
                 checkpoint_at=checkpoint)
    for step in stream:
        first, last = first or step, step
        text += step.text
        if step.token is not None:
            thought.append(step.token)
            inside += opened
        phase = reply.thought_phase(text, in_thought)
        if phase == "none":
            if grammar_later:
                thought = []  # no thought: answer from the prompt, constrained from its first token
                break
            yield step  # no thought and no grammar: nothing to do but pass the reply on
            yield from stream
            return
        opened = phase != "maybe"
        if step.finish_reason or phase == "closed":
            yield step
            if step.finish_reason:
                return
            if not grammar_later:
                yield from stream  # closed in time: the same generation goes on
                return
            break
        yield step
        if think_budget is not None and opened and inside >= think_budget:
            over_budget = True
            break
    stream.close()
    if first is None:
        return
    if over_budget:
        close = THOUGHT_CLOSE if text.endswith("\n") else "\n" + THOUGHT_CLOSE
        closing = engine.tokenize(close)
        yield replace(last, text=close, token=None)
        thought += closing
    budget = None if max_tokens is None else max_tokens - len(thought)
    if budget is not None and budget <= 0:
        return
    for step in run(list(tokens) + thought, media=media, max_tokens=budget, sampling=s):
        yield replace(step, prompt_tokens=first.prompt_tokens, reused_tokens=first.reused_tokens,
                      generated_tokens=step.generated_tokens + len(thought), ttft=first.ttft)
