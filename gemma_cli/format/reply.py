"""Parse a Gemma 4 reply, as it streams, into thinking, answer text and tool calls.

The engine hands over the text the model emits after the generation prompt, with control
tokens decoded to their text (`<|channel>`, `<tool_call|>`, ...) and cut into chunks at any
character, even inside a control token. `ReplyParser` turns those chunks into events:

    <|channel>thought\\n ... <channel|>      Thinking(text)
    answer text                             Answer(text)
    <|tool_call>call:NAME{k:v,...}<tool_call|>  ToolCall(name, arguments) or ToolCallError(raw, message)
    <turn|>, <eos>, <|tool_response>        EndOfTurn(reason); the rest of the text is ignored

Choices the official response schema leaves open, made here:
- One newline right before `<channel|>` belongs to the block, not to the thinking: the
  template writes earlier thinking back as `thought\\n` + text + `\\n<channel|>`, so the
  recorded thinking renders back to exactly what the model emitted.
- Line breaks right after `<channel|>` are dropped from the answer (the schema regex keeps
  them; they only show as a blank line, and the template trims answers in history anyway).
  Nothing else is stripped.
- A `<|channel>` not followed by `thought\\n` still opens a thought, its text kept whole: the
  template's strip_thinking drops any channel block from history, so it is not answer text.
- Stray closing markers (`<channel|>` in the answer, `<tool_call|>` outside a call) are dropped.
- `<|tool_call>` inside an unclosed thought ends the thought; inside an unclosed call it
  makes the first call a ToolCallError. A call ends at the first `<tool_call|>`.
- Only the longest tail that could still become a marker is held back, so answer text
  streams as it comes. When the reply ends there (max_tokens), `close()` drops the held-back
  marker start (`<|tool_ca`, a lone `<`), never shown as text; a line break before it is text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

QUOTE = '<|"|>'
CHANNEL_OPEN, CHANNEL_CLOSE = "<|channel>", "<channel|>"
CALL_OPEN, CALL_CLOSE = "<|tool_call>", "<tool_call|>"
THOUGHT_HEADER = "thought\n"
# The model stops at these: end of its turn, end of text, or waiting for a tool's result.
ENDS = {"<turn|>": "turn", "<eos>": "eos", "<|tool_response>": "tool_response"}


# ---------------------------------------------------------------- events


@dataclass
class Thinking:
    text: str


@dataclass
class Answer:
    text: str


@dataclass
class ToolCall:
    name: str
    arguments: Any  # a dict, or a list for `call:NAME[...]`
    repairs: list[str] = field(default_factory=list, compare=False)  # what was mended to read it (empty: read as written)
    raw: str = field(default="", compare=False)  # the text between the markers, as the model wrote it


@dataclass
class ToolCallError:
    raw: str  # the text between <|tool_call> and <tool_call|> (or what came of it)
    message: str


@dataclass
class EndOfTurn:
    reason: str  # "turn" (<turn|>), "eos" (<eos>) or "tool_response" (<|tool_response>)


Event = Union[Thinking, Answer, ToolCall, ToolCallError, EndOfTurn]


def collapse(events: Iterable[Event]) -> list[Event]:
    """Merge adjacent text events of one kind and drop empty ones: a canonical form."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, (Thinking, Answer)):
            if not event.text:
                continue
            if out and type(out[-1]) is type(event):
                out[-1] = type(event)(out[-1].text + event.text)
                continue
        out.append(event)
    return out


# ---------------------------------------------------------------- streaming parser

ANSWER, THOUGHT, CALL, DONE = "answer", "thought", "call", "done"

# What each state watches for. "drop" markers are control tokens out of place.
MARKERS = {
    ANSWER: [CHANNEL_OPEN, CALL_OPEN, *ENDS, CHANNEL_CLOSE, CALL_CLOSE],
    THOUGHT: ["\n" + CHANNEL_CLOSE, CHANNEL_CLOSE, CALL_OPEN, *ENDS, CHANNEL_OPEN, CALL_CLOSE],
    CALL: [CALL_CLOSE, CALL_OPEN, *ENDS],
}
# Every proper prefix of a state's markers: the tails that must wait for more text.
PREFIXES = {state: {m[:i] for m in markers for i in range(1, len(m))} for state, markers in MARKERS.items()}
LONGEST = max(len(m) for markers in MARKERS.values() for m in markers)


class ReplyParser:
    """Feed chunks of a reply, get events; `close()` at the end flushes what was held back."""

    def __init__(self, in_thought: bool = False, tools: list[dict] | None = None):
        # `in_thought`: the prompt ended inside an open thought (`<|channel>thought\n` prefilled,
        # as the 2026-07-09 template does after a tool result with thinking on), so the reply
        # starts as thinking, its header already given.
        self.state = THOUGHT if in_thought else ANSWER
        self.pending = ""  # text not yet handed out: at most a partial marker between feeds
        self.header = False  # in a thought whose `thought\n` header may still be coming
        self.after_thought = False  # drop line breaks until the answer's first other character
        self.call = ""  # raw text of the tool call being read
        self.schemas = schemas_of(tools)  # {tool name: its declared properties}, for the sure repairs

    @property
    def in_thought(self) -> bool:
        """Whether the reply so far ends inside a thought (not yet closed)."""
        return self.state == THOUGHT

    def feed(self, chunk: str) -> list[Event]:
        if self.state == DONE:
            return []
        self.pending += chunk
        events: list[Event] = []
        while self.pending and self.state != DONE:
            if self.header and not self._read_header():
                break
            at, marker = _first_marker(self.pending, MARKERS[self.state])
            if marker is None:
                keep = _held_tail(self.pending, PREFIXES[self.state])
                self._text(self.pending[: len(self.pending) - keep], events)
                self.pending = self.pending[len(self.pending) - keep :]
                break
            self._text(self.pending[:at], events)
            self.pending = self.pending[at + len(marker) :]
            self._marker(marker, events)
        if self.state == DONE:
            self.pending = ""
        return events

    def close(self) -> list[Event]:
        """The reply ended: what was held back is text; an unclosed call is an error."""
        events: list[Event] = []
        if self.state != DONE:
            # An incomplete header is thinking text; a partial marker (max_tokens cut inside a spelled-out
            # `<|tool_call>`) is not text: held back mid-stream, it is dropped at the end too.
            rest = self.pending if self.header else _without_partial_marker(self.pending)
            self.header = False
            self._text(rest, events)
            if self.state == CALL:
                events.append(self._unclosed("the end of the reply"))
        self.state, self.pending, self.call = DONE, "", ""
        return events

    # ---- internals

    def _unclosed(self, where: str) -> "ToolCall | ToolCallError":
        """A call cut off by the end of the turn (or text) before `<tool_call|>`: a call if its
        arguments are complete (as Ollama and llama.cpp read it), else an error keeping the raw text."""
        event = parse_call(self.call, self.schemas)
        if isinstance(event, ToolCall):
            event.repairs.append(f"ended at {where} without {CALL_CLOSE}")
            return event
        return ToolCallError(self.call, f"unterminated tool call (no {CALL_CLOSE} before {where}): {event.message}")

    def _read_header(self) -> bool:
        """Drop a thought's `thought\\n` header; False while it may still be arriving."""
        if self.pending.startswith(THOUGHT_HEADER):
            self.pending = self.pending[len(THOUGHT_HEADER) :]
        elif THOUGHT_HEADER.startswith(self.pending):
            return False
        self.header = False
        return True

    def _text(self, text: str, events: list[Event]) -> None:
        if self.state == ANSWER:
            if self.after_thought:
                text = text.lstrip("\r\n")
                self.after_thought = not text
            if text:
                events.append(Answer(text))
        elif self.state == THOUGHT:
            if text:
                events.append(Thinking(text))
        elif self.state == CALL:
            self.call += text

    def _marker(self, marker: str, events: list[Event]) -> None:
        state = self.state
        if marker in ENDS:
            if state == CALL:
                events.append(self._unclosed(marker))
            events.append(EndOfTurn(ENDS[marker]))
            self.state = DONE
        elif marker == CALL_OPEN:
            if state == CALL:
                events.append(ToolCallError(self.call, f"unterminated tool call (no {CALL_CLOSE} before {CALL_OPEN})"))
            self.state, self.call, self.after_thought = CALL, "", False
        elif state == CALL:  # CALL_CLOSE
            events.append(parse_call(self.call, self.schemas))
            self.state, self.call = ANSWER, ""
        elif state == ANSWER and marker == CHANNEL_OPEN:
            self.state, self.header = THOUGHT, True
        elif state == THOUGHT and marker.endswith(CHANNEL_CLOSE):
            self.state, self.after_thought = ANSWER, True
        # anything else is a control token out of place: dropped


def _first_marker(text: str, markers: list[str]) -> tuple[int, str | None]:
    best, found = len(text), None
    for marker in markers:
        at = text.find(marker, 0, best + len(marker))
        if at != -1 and at < best:
            best, found = at, marker
    return best, found


def _without_partial_marker(tail: str) -> str:
    """The held-back tail of a reply that ended (a marker's start, see `_held_tail`) less the marker
    part, from its `<` on (as mid-stream, a lone `<` counts); a line break before it is text."""
    at = tail.find("<")
    return tail[:at] if at != -1 else tail


def _held_tail(text: str, prefixes: set[str]) -> int:
    """Length of the longest tail of `text` that could be the start of a marker."""
    for n in range(min(len(text), LONGEST - 1), 0, -1):
        if text[-n:] in prefixes:
            return n
    return 0


# ---------------------------------------------------------------- whole replies


@dataclass
class Reply:
    thinking: str = ""
    answer: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    errors: list[ToolCallError] = field(default_factory=list)
    finish: str | None = None  # EndOfTurn.reason, None when the text just stopped


def parse(text: str, in_thought: bool = False, tools: list[dict] | None = None) -> Reply:
    """Parse a complete reply (the streaming parser, fed once); `in_thought`, `tools` as in ReplyParser."""
    parser = ReplyParser(in_thought, tools)
    reply = Reply()
    for event in parser.feed(text) + parser.close():
        if isinstance(event, Thinking):
            reply.thinking += event.text
        elif isinstance(event, Answer):
            reply.answer += event.text
        elif isinstance(event, ToolCall):
            reply.tool_calls.append(event)
        elif isinstance(event, ToolCallError):
            reply.errors.append(event)
        else:
            reply.finish = event.reason
    return reply


def thought_phase(text: str, in_thought: bool = False) -> str:
    """The free-thought rule's view of a reply's start (a grammar applies to the answer only):
    "maybe" while the text could still open a thought, "open" inside one, "closed" once it closed
    (the answer starts after), "none" when there is no thought (the text is the answer).
    `in_thought`: the prompt opened the thought. ChatSession and the parallel engine both ask this."""
    if in_thought:
        text = CHANNEL_OPEN + text
    if text.startswith(CHANNEL_OPEN):
        return "closed" if CHANNEL_CLOSE in text else "open"
    return "maybe" if CHANNEL_OPEN.startswith(text) else "none"


def closes_unopened_thought(text: str) -> bool:
    """Whether a whole reply closes a thought it never opened (`<channel|>` before any `<|channel>`):
    the prompt (a server's, whose template we cannot see) left the model inside a thought."""
    close = text.find(CHANNEL_CLOSE)
    return close != -1 and CHANNEL_OPEN not in text[:close]


def strip_thinking(text: str) -> str:
    """The template's strip_thinking macro: drop `<|channel>...<channel|>` blocks, then trim."""
    return "".join(part.split(CHANNEL_OPEN)[0] for part in text.split(CHANNEL_CLOSE)).strip()


# ---------------------------------------------------------------- tool call arguments

_NAME = re.compile(r"[\w.\-]+")
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")
_BARE_KEY = re.compile(r"[^\s:,{}\[\]<>\"]+")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_WORDS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_WORD = re.compile(r"[A-Za-z_]\w*")
_ENDS_VALUE = ",}]"


def schemas_of(tools: list[dict] | None) -> dict[str, dict]:
    """{name: declared properties} of OpenAI-style tool declarations (what the repairs may rely on)."""
    out = {}
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        params = function.get("parameters") if isinstance(function, dict) else None
        properties = params.get("properties") if isinstance(params, dict) else None
        if isinstance(function.get("name"), str) and isinstance(properties, dict):
            out[function["name"]] = properties
    return out


def parse_call(raw: str, schemas: dict[str, dict] | None = None) -> ToolCall | ToolCallError:
    """`call:NAME{...}` (the text between the tool call markers) as a ToolCall, or why not.

    Arguments that do not parse are mended only where the tool's declared schema (`schemas`, see
    `schemas_of`) makes the meaning certain, as Ollama does: a string parameter written with
    single quotes, as a bare word, or with its closing quote missing at the end of the arguments.
    Each mend is listed in `ToolCall.repairs`.
    """
    text = raw.strip()
    if not text.startswith("call:"):
        return ToolCallError(raw, "a tool call starts with call:NAME")
    brace = min((i for i in (text.find("{"), text.find("[")) if i != -1), default=-1)
    if brace == -1:
        return ToolCallError(raw, "no {arguments} after the tool name")
    name = text[5:brace].strip()
    if not _NAME.fullmatch(name):
        return ToolCallError(raw, f"bad tool name {text[5:brace]!r}")
    try:
        return ToolCall(name, parse_arguments(text[brace:]), raw=raw)
    except ValueError as e:
        properties = (schemas or {}).get(name)
        if properties and text[brace] == "{":
            try:
                arguments, repairs = _repaired_object(text[brace:], properties)
                return ToolCall(name, arguments, repairs, raw=raw)
            except (ValueError, RecursionError):
                pass
        return ToolCallError(raw, str(e))


def _is_string_parameter(schema: Any) -> bool:
    kind = schema.get("type") if isinstance(schema, dict) else None
    kinds = [kind] if isinstance(kind, str) else kind if isinstance(kind, list) else []
    kinds = [str(k).lower() for k in kinds]
    return "string" in kinds and all(k in ("string", "null") for k in kinds)


_BARE_WORD = re.compile(r"[^,{}\[\]<>\"':]+")


def _repaired_object(text: str, properties: dict) -> tuple[dict, list[str]]:
    # The top-level arguments read leniently for string parameters only; anything else strictly.
    result: dict = {}
    repairs: list[str] = []
    at = _skip(text, 1)
    while not text.startswith("}", at):
        key, at = _key(text, at)
        at = _skip(text, at)
        if not text.startswith(":", at):
            raise ValueError(f"expected ':' after key {key!r} at {at}")
        at = _skip(text, at + 1)
        if _is_string_parameter(properties.get(key)):
            value, at, repair = _lenient_string(text, at, key)
            if repair:
                repairs.append(repair)
        else:
            value, at = _value(text, at)
        result[key] = value
        at = _skip(text, at)
        if text.startswith(",", at):
            at = _skip(text, at + 1)
        elif not text.startswith("}", at):
            raise ValueError(_expected("'}' or ','", text, at))
    if _skip(text, at + 1) != len(text):
        raise ValueError("text after the arguments")
    return result, repairs


def _lenient_string(text: str, at: int, key: str) -> tuple[Any, int, str | None]:
    if text.startswith(QUOTE, at):
        end = text.find(QUOTE, at + len(QUOTE))
        if end != -1:
            return text[at + len(QUOTE) : end], end + len(QUOTE), None
        tail = text[at + len(QUOTE) :].rstrip()
        if not tail.endswith("}"):
            raise ValueError("unterminated string")
        # The last value's closing quote is missing: the string runs to the closing brace.
        return tail[:-1], len(text.rstrip()) - 1, f"closed the unterminated string of {key}"
    if text.startswith("'", at):
        end = text.find("'", at + 1)
        if end == -1:
            raise ValueError("unterminated single-quoted string")
        return text[at + 1 : end], end + 1, f"read the single-quoted value of {key} as a string"
    word = _BARE_WORD.match(text, at)
    if word and word.group().strip() and not text.startswith(('"', "{", "["), at):
        bare = word.group().strip()
        try:
            return parse_arguments(bare), at + len(word.group().rstrip()), None  # a number, true, null: as written
        except ValueError:
            return bare, at + len(word.group().rstrip()), f"read the bare word {bare!r} of {key} as a string"
    value, end = _value(text, at)
    return value, end, None


def parse_arguments(text: str) -> Any:
    """One value in Gemma 4's argument syntax as plain Python (dict/list/str/int/float/bool/None).

    The inverse of the template's format_argument: strings are raw between `<|"|>` quotes,
    keys bare or quoted. Also read, to be lenient: JSON "strings", Python's True/False/None
    (jinja writes None that way), whitespace between tokens, trailing commas.
    Raises ValueError on anything else.
    """
    try:
        value, end = _value(text, _skip(text, 0))
    except RecursionError:
        raise ValueError("arguments nested too deeply") from None
    end = _skip(text, end)
    if end != len(text):
        raise ValueError(f"unexpected {text[end:end + 20]!r} at {end} after the value")
    return value


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _value(text: str, at: int) -> tuple[Any, int]:
    if text.startswith(QUOTE, at):
        return _quoted(text, at)
    char = text[at : at + 1]
    if char == "{":
        return _object(text, at + 1)
    if char == "[":
        return _array(text, at + 1)
    if char == '"':
        return _json_string(text, at)
    if char == "-" or char.isdigit():
        return _number(text, at)
    word = _WORD.match(text, at)
    if word and word.group() in _WORDS:
        return _WORDS[word.group()], word.end()
    if not char:
        raise ValueError("arguments end where a value should be")
    raise ValueError(f"unexpected {text[at:at + 20]!r} at {at} where a value should be")


def _quoted(text: str, at: int) -> tuple[str, int]:
    start = at + len(QUOTE)
    end = text.find(QUOTE, start)
    if end == -1:
        raise ValueError(f"unterminated string at {at}")
    return text[start:end], end + len(QUOTE)


def _json_string(text: str, at: int) -> tuple[str, int]:
    match = _JSON_STRING.match(text, at)
    if not match:
        raise ValueError(f"unterminated string at {at}")
    return json.loads(match.group(), strict=False), match.end()


def _number(text: str, at: int) -> tuple[int | float, int]:
    match = _NUMBER.match(text, at)
    # A number must end where the value ends: `1.2.3`, `12abc`, `0x1F` are not numbers.
    after = text[match.end() : match.end() + 1] if match else "x"
    if not match or (after and after not in _ENDS_VALUE and not after.isspace()):
        stop = at
        while stop < len(text) and text[stop] not in _ENDS_VALUE and not text[stop].isspace():
            stop += 1
        raise ValueError(f"bad number {text[at:stop]!r} at {at}")
    number = match.group()
    is_float = match.group(1) is not None or match.group(2) is not None
    return (float(number) if is_float else int(number)), match.end()


def _key(text: str, at: int) -> tuple[str, int]:
    if text.startswith(QUOTE, at):
        return _quoted(text, at)
    if text.startswith('"', at):
        return _json_string(text, at)
    match = _BARE_KEY.match(text, at)
    if not match:
        raise ValueError(_expected("a key", text, at))
    return match.group(), match.end()


def _object(text: str, at: int) -> tuple[dict, int]:
    result: dict = {}
    at = _skip(text, at)
    while not text.startswith("}", at):
        key, at = _key(text, at)
        at = _skip(text, at)
        if not text.startswith(":", at):
            raise ValueError(f"expected ':' after key {key!r} at {at}")
        result[key], at = _value(text, _skip(text, at + 1))
        at = _skip(text, at)
        if text.startswith(",", at):
            at = _skip(text, at + 1)
        elif not text.startswith("}", at):
            raise ValueError(_expected("'}' or ','", text, at))
    return result, at + 1


def _array(text: str, at: int) -> tuple[list, int]:
    result: list = []
    at = _skip(text, at)
    while not text.startswith("]", at):
        item, at = _value(text, at)
        result.append(item)
        at = _skip(text, at)
        if text.startswith(",", at):
            at = _skip(text, at + 1)
        elif not text.startswith("]", at):
            raise ValueError(_expected("']' or ','", text, at))
    return result, at + 1


def _expected(what: str, text: str, at: int) -> str:
    if at >= len(text):
        return f"arguments end where {what} should be"
    return f"expected {what} at {at}, got {text[at:at + 20]!r}"
