"""The interactive chat: `gemma chat` with no prompt on a terminal.

Slash commands, `\"\"\"` multi-line input, history across sessions, Ctrl-C that stops a
reply but keeps what was said, and an autosave after every turn for `--continue`.
"""

from __future__ import annotations

import difflib
import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gemma_cli.chat.session import ChatSession, Done, Stats, ToolRun, converse
from gemma_cli.errors import GemmaError
from gemma_cli.format import conversation, reply
from gemma_cli.render import err_console, printer_for_repl, status_line
from gemma_cli.store import paths

HELP = """Commands:
  /help                      this help
  /think on|off              thinking before answers
  /system TEXT               set the system prompt (/system alone clears it)
  /set NAME VALUE            temperature, top_p, top_k, max_tokens, seed, think_budget (off: none)
  /show                      model, parameters, system prompt, tools, template
  /show template             the chat template in use (release and size)
  /tools                     the tools the model has, with their token cost
  /mcp                       the MCP servers and their state
  /stats                     numbers of the last reply
  /clear                     forget the conversation (keeps the system prompt)
  /retry                     generate the last answer again
  /save FILE                 save the conversation (OpenAI chat JSON)
  /load FILE                 load a conversation
  /image PATH, /audio PATH   attach media to your next message
  /video PATH                attach a video (32 frames, timestamped) to your next message
  /exit                      leave (or Ctrl-D)
Multi-line input: a line with \"\"\" starts and ends it. Ctrl-C stops a reply."""

COMMANDS = ["/help", "/think", "/system", "/set", "/show", "/stats", "/clear", "/retry", "/save", "/load",
            "/image", "/audio", "/video", "/tools", "/mcp", "/exit", "/bye", "/quit"]
def _in_range(key: str, value) -> bool:
    """A /set value gemma can use: a finite number, a budget not below 0, a seed within 64 bits."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if key == "think_budget":
        return value >= 0
    return -(2 ** 63) <= value < 2 ** 64 if key == "seed" else True


SETTABLE = {"temperature": float, "top_p": float, "top_k": int, "max_tokens": int, "seed": int, "think_budget": int}


@dataclass
class Repl:
    session: ChatSession
    model_name: str
    toolbox: object | None = None
    confirm: Callable | None = None
    show_thinking: bool = True
    autosave: Path | None = None
    max_tool_rounds: int = 8
    last_stats: Stats = field(default_factory=Stats)
    pending_media: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.err = err_console()

    # ---- the loop

    def run(self) -> None:
        _setup_history()
        self.err.print(f"[dim]gemma chat · {self.model_name} · /help for commands, Ctrl-D to leave[/dim]")
        interrupted_once = False
        while True:
            try:
                line = self._read()
            except KeyboardInterrupt:
                if interrupted_once:
                    self.err.print()
                    break
                interrupted_once = True
                self.err.print("\n[dim](Ctrl-C again or Ctrl-D to leave)[/dim]")
                continue
            except EOFError:
                self.err.print()
                break
            interrupted_once = False
            if line is None or not line.strip():
                continue
            if line.startswith("/") and not line.startswith("//"):
                if self.command(line) == "exit":
                    break
                continue
            self.turn(line)
        self.save_auto()
        try:
            self.session.keep()  # the prompt cache keeps where the conversation ends, for `gemma chat --continue`
        except KeyboardInterrupt:
            pass

    def _read(self) -> str | None:
        line = input(">>> ")
        if line.strip() != '"""':
            return line
        lines = []
        while True:
            more = input("... ")
            if more.strip() == '"""':
                return "\n".join(lines)
            lines.append(more)

    # ---- a turn

    def turn(self, text: str) -> None:
        content: str | list[dict] = text
        media, self.pending_media = self.pending_media, []
        if media:
            content = media + [{"type": "text", "text": text}]
        unsent = "the message was not sent: the conversation is as it was (Up-arrow brings the message back)"
        if not self.stream(lambda: self.session.send(content), unsent) and media:
            self.pending_media = media  # not sent: the attachments wait for the next message

    def stream(self, start: Callable, undone: str = "the conversation is as it was") -> bool:
        """Run a model turn and show it; False when it failed (an error): the session then holds the
        conversation as it was before the turn, and `undone` says so in one line."""
        printer = printer_for_repl(show_thinking=self.show_thinking)
        events = None
        quiet = _no_ctrl_echo()
        try:
            events = converse(self.session, start(), self.toolbox, self.confirm, self.max_tool_rounds)
            for event in events:
                self._show(event, printer)
        except KeyboardInterrupt:
            printer.finish()
            if events is not None:
                events.close()
            self.err.print("[dim](interrupted: the reply so far is kept)[/dim]")
        except GemmaError as e:
            printer.finish()
            self.err.print(f"[red]error:[/red] {e.message}" + (f"\n[dim]hint: {e.hint}[/dim]" if e.hint else ""))
            self.err.print(f"[dim]({undone})[/dim]")
            return False
        finally:
            printer.finish()
            quiet.restore()
            self.save_auto()
        return True

    def _show(self, event, printer) -> None:
        if isinstance(event, reply.Thinking):
            printer.thinking(event.text)
        elif isinstance(event, reply.Answer):
            printer.answer(event.text)
        elif isinstance(event, reply.ToolCall):
            printer.finish()
            self.err.print(f"[cyan]→ {event.name}[/cyan]({json.dumps(event.arguments, ensure_ascii=False)})")
        elif isinstance(event, reply.ToolCallError):
            self.err.print(f"[yellow]malformed tool call:[/yellow] {event.message}")
        elif isinstance(event, ToolRun):
            self.err.print(f"[dim]  {'result' if event.approved else 'not run'}: {_short(event.result)}[/dim]")
        elif isinstance(event, Done):
            printer.finish()
            self.last_stats = event.result.stats
            if event.result.thought_only:
                self.err.print("[yellow]the model used all its tokens thinking and gave no answer; "
                               "raise /set max_tokens or /think off[/yellow]")
            self.err.print(f"[dim]{status_line(event.result.stats)}[/dim]")

    # ---- commands

    def _tools(self) -> None:
        # lazy: the MCP face, only when asked; keeps gemma --help fast
        from gemma_cli.commands import mcp

        host = getattr(self.toolbox, "host", None)
        text = mcp.tools_table(host, mcp.tool_costs(self.session, host), self.session.tools or [])
        self.err.print(text, markup=False, highlight=False)

    def _mcp(self) -> None:
        # lazy: the MCP face, only when asked; keeps gemma --help fast
        from gemma_cli.commands import mcp

        host = getattr(self.toolbox, "host", None)
        text = mcp.servers_table(host) if host is not None else "no MCP servers (gemma mcp add NAME -- COMMAND…)"
        self.err.print(text, markup=False, highlight=False)

    def command(self, line: str) -> str | None:
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        handler = {
            "/help": lambda: self.err.print(HELP, markup=False, highlight=False),
            "/think": lambda: self._think(arg),
            "/system": lambda: self._system(arg),
            "/set": lambda: self._set(arg),
            "/show": lambda: self._show_info(arg),
            "/stats": self._stats,
            "/clear": self._clear,
            "/retry": lambda: self.stream(self.session.retry),
            "/save": lambda: self._save(arg),
            "/load": lambda: self._load(arg),
            "/image": lambda: self._attach("image", arg),
            "/audio": lambda: self._attach("audio", arg),
            "/video": lambda: self._attach("video", arg),
            "/tools": self._tools,
            "/mcp": self._mcp,
        }.get(name)
        if name in ("/exit", "/bye", "/quit"):
            return "exit"
        if handler is None:
            close = difflib.get_close_matches(name, COMMANDS, n=1)
            hint = f" — did you mean {close[0]}?" if close else ""
            self.err.print(f"unknown command {name}{hint} (/help lists them)", markup=False)
            return None
        try:
            handler()
        except GemmaError as e:
            self.err.print(f"error: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""), markup=False)
        return None

    def _think(self, arg: str) -> None:
        if arg not in ("on", "off"):
            self.err.print(f"thinking is {'on' if self.session.think else 'off'}; use /think on|off", markup=False)
            return
        self.session.think = arg == "on"
        self.err.print(f"thinking {arg}", markup=False)

    def _system(self, text: str) -> None:
        messages = [m for m in self.session.messages if m["role"] != "system"]
        self.session.messages = ([{"role": "system", "content": text}] if text else []) + messages
        self.err.print("system prompt set" if text else "system prompt cleared", markup=False)

    def _set(self, arg: str) -> None:
        key, _, value = arg.partition(" ")
        if key not in SETTABLE or not value.strip():
            close = difflib.get_close_matches(key, SETTABLE, n=1)
            hint = f" (did you mean {close[0]}?)" if close and key else ""
            self.err.print(f"usage: /set {'|'.join(SETTABLE)} VALUE{hint}", markup=False)
            return
        if key == "think_budget" and value.strip() in ("off", "none"):
            self.session.think_budget = None
            self.err.print("think_budget = off", markup=False)
            return
        try:
            parsed = SETTABLE[key](value.strip())
            if not _in_range(key, parsed):
                raise ValueError(parsed)
        except ValueError:
            self.err.print(f"{key} needs a {SETTABLE[key].__name__}, not {value.strip()!r}", markup=False)
            return
        if key == "max_tokens":
            self.session.max_tokens = parsed
        elif key == "think_budget":
            self.session.think_budget = parsed
        else:
            setattr(self.session.sampling, key, parsed)
        self.err.print(f"{key} = {parsed}", markup=False)

    def _show_info(self, arg: str = "") -> None:
        if arg == "template":
            self.err.print(f"template     {self.session.format.template_name}", markup=False, highlight=False)
            return
        s, e = self.session.sampling, self.session.engine
        system = next((m["content"] for m in self.session.messages if m["role"] == "system"), None)
        tools = [t["function"]["name"] for t in (self.session.tools or [])]
        lines = [
            f"model        {self.model_name} ({e.info.architecture}, {e.info.n_params / 1e6:.1f}M parameters)",
            f"path         {e.path}",
            f"context      {e.n_ctx} tokens, {e.cached_tokens} in the cache",
            f"parameters   temperature={s.temperature} top_p={s.top_p} top_k={s.top_k} "
            f"seed={s.seed} max_tokens={self.session.max_tokens}",
            f"thinking     {'on' if self.session.think else 'off'}"
            + (f", budget {self.session.think_budget} tokens" if self.session.think_budget is not None else "")
            + (", kept across tool calls" if self.session.keep_thinking else ""),
            f"template     {self.session.format.template_name}",
            f"system       {system or '(none)'}",
            f"tools        {', '.join(tools) or '(none)'}",
            f"messages     {len(self.session.messages)}",
        ]
        self.err.print("\n".join(lines), markup=False, highlight=False)

    def _stats(self) -> None:
        s = self.last_stats
        self.err.print(
            f"prompt tokens evaluated  {s.prompt_tokens}\nprompt tokens cached     {s.reused_tokens}\n"
            f"tokens generated         {s.generated_tokens}\ntime to first token      {s.ttft:.3f} s\n"
            f"decode speed             {s.tps:.1f} tok/s\nfinish reason            {s.finish_reason}\n"
            f"context in use           {self.session.engine.cached_tokens} / {self.session.engine.n_ctx}"
            + (f"\ndrafted / accepted       {s.drafted} / {s.accepted} ({s.accepted / s.drafted:.0%})" if s.drafted else ""),
            markup=False, highlight=False)

    def _clear(self) -> None:
        self.session.clear()
        self.err.print("conversation cleared", markup=False)

    def _save(self, arg: str) -> None:
        if not arg:
            self.err.print("usage: /save FILE", markup=False)
            return
        path = conversation.save(self._conversation(), shlex.split(arg)[0])
        self.err.print(f"saved {len(self.session.messages)} messages to {path}", markup=False)

    def _load(self, arg: str) -> None:
        if not arg:
            self.err.print("usage: /load FILE", markup=False)
            return
        conv = conversation.load(shlex.split(arg)[0])
        self.session.messages = conv.messages
        if conv.tools:
            self.session.tools = conv.tools
        self.err.print(f"loaded {len(conv.messages)} messages", markup=False)

    def _attach(self, kind: str, arg: str) -> None:
        if not arg:
            self.err.print(f"usage: /{kind} PATH", markup=False)
            return
        path = Path(shlex.split(arg)[0]).expanduser().resolve()  # --continue may run elsewhere
        if not path.is_file():
            raise GemmaError(f"{kind} file not found: {path}", "check the path")
        # Read and check it now (and the model's encoder for it), not when the message is sent:
        # a bad file is one error here, and the message typed next is not lost to it.
        self.pending_media.append(self.session.attach(kind, path))
        self.err.print(f"{kind} {path.name} will go with your next message", markup=False)

    def _conversation(self) -> conversation.Conversation:
        s = self.session
        settings = {"temperature": s.sampling.temperature, "top_p": s.sampling.top_p, "top_k": s.sampling.top_k,
                    "seed": s.sampling.seed, "max_tokens": s.max_tokens, "think": s.think}
        return conversation.Conversation(s.messages, s.tools or [], settings, self.model_name)

    def save_auto(self) -> None:
        if self.autosave and self.session.messages:
            try:
                conversation.save(self._conversation(), self.autosave)
            except OSError as e:
                self.err.print(f"could not autosave to {self.autosave}: {e}", markup=False)


class _no_ctrl_echo:
    """While a reply streams, Ctrl-C neither flushes the terminal's output nor echoes.

    By default the terminal drops the output still queued when Ctrl-C arrives (no NOFLSH),
    which can cut a live Markdown refresh in half (its "cursor up" arithmetic is then off and
    the reply's last partial line shows twice), and echoes `^C` after the last line (which
    wraps a full-width line). Typed keys are not echoed either while the reply streams; they
    wait for the next prompt. Restored after the reply; without a terminal nothing changes.
    """

    def __init__(self):
        self._saved = None
        try:
            # lazy: POSIX only (not on Windows)
            import termios

            fd = sys.stdin.fileno()
            if not sys.stdin.isatty():
                return
            attrs = termios.tcgetattr(fd)
            self._saved = (termios, fd, list(attrs))
            attrs[3] = (attrs[3] & ~(termios.ECHO | termios.ECHOCTL)) | termios.NOFLSH
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except (ImportError, AttributeError, ValueError, OSError):
            self._saved = None

    def restore(self) -> None:
        if self._saved is None:
            return
        termios, fd, attrs = self._saved
        try:
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except OSError:
            pass
        self._saved = None


def _short(value, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _setup_history() -> None:
    """Up-arrow history kept across sessions in the user data dir (where readline exists)."""
    try:
        # lazy: readline changes input() once imported; only in the REPL
        import atexit
        import readline
    except ImportError:
        return
    path = paths.history_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            readline.read_history_file(path)
    except OSError:
        return
    readline.set_history_length(1000)
    atexit.register(_write_history, readline, path)


def _write_history(readline, path: Path) -> None:
    try:
        readline.write_history_file(path)
    except OSError:
        pass


def confirm_on_terminal(call: dict) -> bool:
    """Ask before running a tool. Without a terminal to ask on, the answer is no."""
    if not sys.stdin.isatty():
        return False
    fn = call["function"]
    args = json.dumps(fn.get("arguments"), ensure_ascii=False)
    # The question goes to stderr: with `> out.txt`, input()'s own prompt would land in the file.
    sys.stderr.write(f"run {fn['name']}({args})? [y/N] ")
    sys.stderr.flush()
    try:
        answer = input()
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
