"""A job's text as it decodes, as reply events: what every API of `gemma serve` answers from.

`Replies` takes the pieces of text a job decodes (`Ticket.events`) and gives `reply` events
(Thinking, Answer, ToolCall) in order, holding back the last characters while a stop string may
still be completing, and cutting the text where one appears. The Responses and Messages APIs
build their objects and their streamed events from these events alone, so thinking, tool calls
and stop strings are read one way for every API.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gemma_cli.engine.parallel import Finished
from gemma_cli.format import reply
from gemma_cli.format.stop_strings import cut_at_stop
from gemma_cli.serve.chat import spelled


class Replies:
    """Reply events from a job's pieces of text; `done()` flushes them once the job finished."""

    def __init__(self, gemma4: bool, stop: tuple[str, ...] = (), in_thought: bool = False,
                 tools: list[dict] | None = None, calls: bool = True):
        # `calls` False (no tools declared, or tool_choice "none"): a call the model writes stays answer text.
        self.calls = calls
        self.parser = reply.ReplyParser(in_thought=in_thought, tools=tools) if gemma4 else None
        self.stop = tuple(s for s in stop if s)
        self.hold = max(map(len, self.stop), default=1) - 1  # a stop string may be starting in the last characters
        self.raw = ""
        self.sent = 0  # characters of `raw` handed to the parser
        self.stop_hit: str | None = None  # the stop string that ended the reply

    def text(self, piece: str) -> list:
        if self.stop_hit is not None:
            return []
        self.raw += piece
        if self.stop:
            cut = cut_at_stop(self.raw, self.stop)
            if len(cut) < len(self.raw):
                self.stop_hit = _which_stop(self.raw, self.stop)
                events = self._feed(cut[self.sent:])
                self.sent = len(cut)
                return events
        safe = len(self.raw) - self.hold
        if safe <= self.sent:
            return []
        events = self._feed(self.raw[self.sent:safe])
        self.sent = safe
        return events

    def done(self, done: Finished) -> list:
        """The rest of the events, from the job's final text (cut at a stop string)."""
        if self.stop_hit is None and self.stop and len(done.text) < len(self.raw):
            self.stop_hit = _which_stop(self.raw, self.stop)
        events = self._feed(done.text[self.sent:]) if len(done.text) > self.sent else []
        self.sent = max(self.sent, len(done.text))
        if self.parser is not None:
            events += self._wanted(self.parser.close())
        return events

    def _feed(self, text: str) -> list:
        if not text:
            return []
        if self.parser is None:
            return [reply.Answer(text)]
        return self._wanted(self.parser.feed(text))

    def _wanted(self, events: list) -> list:
        if self.calls:
            return events
        return [reply.Answer(spelled(e)) if isinstance(e, (reply.ToolCall, reply.ToolCallError)) else e for e in events]


def _which_stop(text: str, stop: tuple[str, ...]) -> str | None:
    found = [(text.find(s), s) for s in stop if s in text]
    return min(found)[1] if found else None


@dataclass
class Outcome:
    """A finished reply, whole: what a non-streamed answer is built from."""

    thinking: str = ""
    answer: str = ""
    calls: list = field(default_factory=list)  # reply.ToolCall
    stop_hit: str | None = None
    finished: Finished | None = None


def outcome(replies: Replies, pieces: list[str], done: Finished) -> Outcome:
    """Every piece through `replies` at once (the same reading as streaming)."""
    out = Outcome(finished=done)
    events = [e for piece in pieces for e in replies.text(piece)] + replies.done(done)
    for event in events:
        if isinstance(event, reply.Thinking):
            out.thinking += event.text
        elif isinstance(event, reply.Answer):
            out.answer += event.text
        elif isinstance(event, reply.ToolCall):
            out.calls.append(event)
    out.stop_hit = replies.stop_hit
    return out
