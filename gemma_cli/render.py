"""Terminal output with Rich: answer on stdout, thinking dim on stderr, status on stderr.

`gemma chat "…" > out.txt` must stay clean: only the answer goes to stdout. Colour and
spinners appear only on a terminal, and never when NO_COLOR is set.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from rich.console import Console


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def use_color() -> bool:
    return "NO_COLOR" not in os.environ


def err_console() -> Console:
    return Console(stderr=True, no_color=not use_color(), highlight=False, soft_wrap=True)


@contextlib.contextmanager
def spinner(message: str) -> Iterator[None]:
    """A spinner on stderr while something slow runs (terminal only)."""
    if not is_terminal(sys.stderr):
        yield
        return
    with err_console().status(message, spinner="dots"):
        yield


class StreamPrinter:
    """Writes streamed text as it arrives: answer to stdout, thinking (dim) to stderr."""

    def __init__(self, *, show_thinking: bool = True):
        self.show_thinking = show_thinking
        self._dim = is_terminal(sys.stderr) and use_color()
        self._in_thought = False
        self._answer_started = False

    def thinking(self, text: str) -> None:
        if not self.show_thinking or not text:
            return
        if self._dim and not self._in_thought:
            sys.stderr.write("\x1b[2m")
        self._in_thought = True
        sys.stderr.write(text)
        sys.stderr.flush()

    def answer(self, text: str) -> None:
        if not text:
            return
        self._end_thought()
        if not self._answer_started:
            text = text.lstrip("\n")  # the answer after a thought often starts with a newline
            self._answer_started = bool(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    def _end_thought(self) -> None:
        if self._in_thought:
            sys.stderr.write("\x1b[0m\n" if self._dim else "\n")
            sys.stderr.flush()
            self._in_thought = False

    def note(self, text: str) -> None:
        """A one-line notice on stderr (dim on a terminal)."""
        self._end_thought()
        if self._dim:
            sys.stderr.write(f"\x1b[2m{text}\x1b[0m\n")
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        self._end_thought()
        if self._answer_started:
            sys.stdout.write("\n")
            sys.stdout.flush()


class MarkdownPrinter(StreamPrinter):
    """The REPL's printer: the answer is re-rendered as Markdown while it streams."""

    def __init__(self, *, show_thinking: bool = True):
        super().__init__(show_thinking=show_thinking)
        self._text = ""
        self._live = None

    def answer(self, text: str) -> None:
        if not text:
            return
        self._end_thought()
        self._text += text
        if self._live is None:
            # lazy: rich.live, only while an answer streams to a terminal; keeps gemma --help fast
            from rich.live import Live

            console = Console(highlight=False)
            self._live = Live(console=console, refresh_per_second=10, vertical_overflow="visible", transient=False)
            self._live.start()
        self._live.update(literal_html_markdown(self._text.lstrip("\n")))

    def finish(self) -> None:
        self._end_thought()
        if self._live is not None:
            self._live.stop()
            self._live = None
        self._text = ""


_MARKDOWN = None


def literal_html_markdown(text: str):
    """Rich Markdown in which HTML-like text (`<div>`, `vector<int>`, `a < b > c`) stays literal text.

    Rich's parser has HTML on and then drops every inline HTML tag it does not style; an answer
    must reach the screen whole, so the text is parsed with markdown-it's HTML off.
    """
    global _MARKDOWN
    if _MARKDOWN is None:
        # lazy: markdown-it and rich.markdown, only when markdown is shown; keeps gemma --help fast
        from markdown_it import MarkdownIt
        from rich.markdown import Markdown

        parser = MarkdownIt("commonmark", {"html": False}).enable("strikethrough").enable("table")

        class LiteralHtmlMarkdown(Markdown):
            def __init__(self, markup: str, **kwargs):
                super().__init__("", **kwargs)
                self.markup = markup
                self.parsed = parser.parse(markup)

        _MARKDOWN = LiteralHtmlMarkdown
    return _MARKDOWN(text)


def printer_for_repl(*, show_thinking: bool) -> StreamPrinter:
    """Markdown on a colour terminal; plain streamed text otherwise (pipes, NO_COLOR)."""
    if is_terminal(sys.stdout) and use_color():
        return MarkdownPrinter(show_thinking=show_thinking)
    return StreamPrinter(show_thinking=show_thinking)


def status_line(stats) -> str:
    """`42 tokens · 0.12 s to first token · 85.3 tok/s · prompt 120 (96 cached)`."""
    parts = [f"{stats.generated_tokens} tokens", f"{stats.ttft:.2f} s to first token", f"{stats.tps:.1f} tok/s",
             f"prompt {stats.prompt_tokens + stats.reused_tokens} ({stats.reused_tokens} cached)"]
    if stats.finish_reason == "length":
        limit = getattr(stats, "limit", None)
        parts.append("stopped: the context is full (raise --ctx, or /clear)" if limit == "context"
                     else "stopped at the token limit")
    return " · ".join(parts)
