"""Tools from Model Context Protocol servers in a chat: the host side (the official `mcp` SDK 2.x as client).

- **Config**: `mcp.json` in gemma's config dir, `{"mcpServers": {NAME: {...}}}` in the Claude Desktop /
  Cursor form (`command`, `args`, `env`, `cwd`; `url` + `headers` with `type` http or sse; Gemini CLI's
  `httpUrl`), `${VAR}` / `${VAR:-default}` expanded, per server `disabled`, `timeout` (seconds per call;
  Gemini CLI's milliseconds are read as such), `startupTimeout`, `includeTools` / `excludeTools`, `trust`,
  `alwaysAllow`. Remembered approvals are kept in gemma's own file under `approvals`.
- **Lifecycle**: every server starts at once on one asyncio loop in a background thread (each its own task
  that holds its session open until the chat ends), with a startup timeout; a stdio server's process is
  spawned before the SDK is imported (`mcp_stdio`), so its start overlaps that import; one that fails is a line saying
  why and the chat goes on without it. Once they are up the loop leaves its thread: each call runs it in the
  caller's thread (no hop between threads per call), and between calls it rests. A server that dies (during a
  call, or between calls: seen at the next one) is restarted once, at its next call. Calls have a timeout that
  progress notifications extend; `close()` stops every process (the SDK's shutdown, then a kill of any
  process group still alive).
- **The model's side**: declarations under names Gemma 4's call syntax carries (`[A-Za-z0-9_]`), `server__tool`
  on a clash; results turned into tool responses (`convert`).

The SDK is imported only here and only when a server is configured, so `gemma --help` stays fast.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gemma_cli.chat import mcp_stdio
from gemma_cli.chat.tools import ToolOutcome
from gemma_cli.errors import ConfigError, GemmaError, UsageError
from gemma_cli.store import paths

DEFAULT_CALL_TIMEOUT = 60.0
DEFAULT_STARTUP_TIMEOUT = 30.0
CONTEXT_SHARE = 0.5  # the declarations may take at most this share of the context
RESULT_SHARE = 0.25  # one result may take at most this share of the context
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# ---------------------------------------------------------------- config


@dataclass
class ServerSpec:
    name: str
    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    transport: str = "stdio"  # stdio | http | sse
    disabled: bool = False
    timeout: float = DEFAULT_CALL_TIMEOUT
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    trust: bool = False
    always_allow: list[str] = field(default_factory=list)
    auto_read_only: bool = False  # tools with readOnlyHint run without asking
    problem: str | None = None  # a ${VAR} not set, a field of the wrong type: the server cannot start


@dataclass
class McpConfig:
    path: Path
    servers: dict[str, ServerSpec]
    approvals: dict[str, list[str]] = field(default_factory=dict)  # server -> tools ("*": the whole server)


def read_config(path: Path | None = None) -> McpConfig:
    """The servers of `path` (default: gemma's mcp.json; absent: none), with gemma's remembered approvals."""
    own = paths.mcp_config()
    chosen = Path(path).expanduser() if path is not None else own
    if path is not None and not chosen.is_file():
        why = "is a folder" if chosen.is_dir() else "not found"
        raise ConfigError(f"MCP config {chosen} {why}", "pass a JSON file with an \"mcpServers\" object")
    data = _read_json(chosen) if chosen.is_file() else {}
    servers_data = data.get("mcpServers")
    if servers_data is None and isinstance(data.get("mcp"), dict):
        servers_data = data["mcp"].get("servers")  # VS Code settings.json
    if servers_data is None:
        servers_data = data.get("servers", {}) if path is None or "servers" in data else None
    if servers_data is None:
        raise ConfigError(f"{chosen} has no \"mcpServers\" object",
                          'the form is {"mcpServers": {"NAME": {"command": "...", "args": [...]}}}')
    if not isinstance(servers_data, dict):
        raise ConfigError(f"{chosen}: \"mcpServers\" must be an object of NAME: server",
                          '{"mcpServers": {"time": {"command": "uvx", "args": ["mcp-server-time"]}}}')
    auto = bool(data.get("autoApproveReadOnly", False))
    servers = {name: _server(name, spec, chosen, auto) for name, spec in servers_data.items()}
    own_data = data if chosen == own else (_read_json(own) if own.is_file() else {})
    approvals = own_data.get("approvals") if isinstance(own_data.get("approvals"), dict) else {}
    return McpConfig(chosen, servers, {k: list(v) for k, v in approvals.items() if isinstance(v, list)})


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except OSError as e:
        raise ConfigError(f"cannot read MCP config {path}: {e.strerror or e}", "check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"line {e.lineno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise ConfigError(f"MCP config {path} is not valid JSON ({where})", "fix the file") from None
    except RecursionError:
        raise ConfigError(f"MCP config {path} is not valid JSON (nested too deeply)", "fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"MCP config {path} holds no JSON object", '{"mcpServers": {...}}')
    return data


def _server(name: str, raw: Any, path: Path, auto_read_only: bool) -> ServerSpec:
    spec = ServerSpec(name, auto_read_only=auto_read_only)
    if not isinstance(raw, dict):
        spec.problem = f"{path}: server {name!r} is not an object"
        return spec
    try:
        if not isinstance(raw.get("args") or [], list):  # a string would run as one argument a character
            raise TypeError('"args" must be an array of strings')
        for key in ("env", "headers"):
            if not isinstance(raw.get(key) or {}, dict):
                raise TypeError(f'"{key}" must be an object of NAME: value')
        kind = str(raw.get("type") or raw.get("transport") or "").lower()
        url = raw.get("httpUrl") or raw.get("url") or raw.get("serverUrl")
        spec.disabled = bool(raw.get("disabled", False))
        spec.trust = bool(raw.get("trust", False))
        spec.auto_read_only = bool(raw.get("autoApproveReadOnly", auto_read_only))
        spec.always_allow = [str(t) for t in raw.get("alwaysAllow") or []]
        spec.include = [str(t) for t in raw["includeTools"]] if raw.get("includeTools") is not None else None
        spec.exclude = [str(t) for t in raw.get("excludeTools") or []]
        if raw.get("timeout") is not None:
            t = float(raw["timeout"])
            spec.timeout = t / 1000 if t > 1000 else t  # Gemini CLI writes milliseconds
        if raw.get("startupTimeout") is not None:
            spec.startup_timeout = float(raw["startupTimeout"])
        if url:
            spec.url = expand(str(url))
            spec.transport = "sse" if kind == "sse" else "http"
            spec.headers = {str(k): expand(str(v)) for k, v in (raw.get("headers") or {}).items()}
        elif raw.get("command"):
            spec.command = expand(str(raw["command"]))
            spec.args = [expand(str(a)) for a in raw.get("args") or []]
            spec.env = {str(k): expand(str(v)) for k, v in (raw.get("env") or {}).items()}
            spec.cwd = expand(str(raw["cwd"])) if raw.get("cwd") else None
        else:
            spec.problem = f"server {name!r} in {path} has neither \"command\" nor \"url\""
    except (TypeError, ValueError, AttributeError) as e:
        spec.problem = f"server {name!r} in {path}: {e}"
    return spec


def expand(text: str) -> str:
    """`${VAR}` and `${VAR:-default}` from the environment; an unset `${VAR}` without a default is an error."""

    def one(m: re.Match) -> str:
        value = os.environ.get(m.group(1))
        if value is None or (value == "" and m.group(2) is not None):
            if m.group(2) is None:
                raise ValueError(f"${{{m.group(1)}}} is not set")
            return m.group(2)
        return value

    return _VAR.sub(one, text)


def save_servers(edit: Callable[[dict], None], path: Path | None = None) -> Path:
    """Change gemma's own mcp.json (the face adds and removes servers, remembers approvals), atomically."""
    target = path or paths.mcp_config()
    data = _read_json(target) if target.is_file() else {}
    data.setdefault("mcpServers", {})
    if not isinstance(data["mcpServers"], dict):
        raise ConfigError(f"{target}: \"mcpServers\" must be an object of NAME: server",
                          '{"mcpServers": {"time": {"command": "uvx", "args": ["mcp-server-time"]}}}')
    edit(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


def select(config: McpConfig, names: list[str] | None) -> list[ServerSpec]:
    """The servers to start: those named (`--mcp NAME`, even if disabled), else every enabled one. A name that is
    not in the config is a usage error (exit 2) listing those that are, for `gemma chat --mcp` and `gemma mcp …`."""
    if names:
        unknown = [n for n in names if n not in config.servers]
        if unknown:
            known = ", ".join(config.servers) or "none"
            raise UsageError(f"no MCP server named {unknown[0]!r} in {config.path} (configured: {known})",
                             "check the name, or add it with `gemma mcp add NAME -- COMMAND ARGS…`")
        return [config.servers[n] for n in dict.fromkeys(names)]
    return [s for s in config.servers.values() if not s.disabled]


# ---------------------------------------------------------------- tools and names


@dataclass
class McpTool:
    server: str
    name: str  # the server's own name
    public: str  # the name the model sees and calls
    description: str
    schema: dict
    read_only: bool = False

    def declaration(self) -> dict:
        schema = self.schema if isinstance(self.schema, dict) and self.schema else {"type": "object", "properties": {}}
        return {"type": "function", "function": {"name": self.public, "description": self.description,
                                                 "parameters": schema}}


def callable_name(name: str) -> str:
    """A name Gemma 4's call syntax carries intact: letters, digits and `_`, not starting with a digit."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", name) or "tool"
    return "t_" + out if out[0].isdigit() else out


def assign_names(tools: list[McpTool], taken: set[str]) -> None:
    """Each tool's public name: its own (made callable), or `server__tool` when two would share one."""
    counts: dict[str, int] = {}
    for t in tools:
        counts[callable_name(t.name)] = counts.get(callable_name(t.name), 0) + 1
    used = set(taken)
    for t in tools:
        base = callable_name(t.name)
        name = base if counts[base] == 1 and base not in taken else callable_name(f"{t.server}__{t.name}")
        while name in used:
            name += "_"
        used.add(name)
        t.public = name


def filtered(spec: ServerSpec, names: list[str]) -> list[str]:
    keep = [n for n in names if spec.include is None or n in spec.include]
    return [n for n in keep if n not in spec.exclude]


# ---------------------------------------------------------------- results


def convert(result, *, vision: bool, budget_tokens: int | None = None, count: Callable[[str], int] | None = None):
    """An MCP CallToolResult as (what the model reads, images as data URLs, the error text or None).

    Text is joined; `structuredContent` goes as compact JSON; `isError` becomes an error result;
    images go as images when the model can see them, else a short placeholder, as other content does.
    A text longer than `budget_tokens` is cut with a marker saying so."""
    texts, images = [], []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            texts.append(block.text)
        elif kind == "image":
            size = len(block.data) * 3 // 4
            if vision:
                images.append(f"data:{block.mime_type};base64,{block.data}")
                texts.append(f"[image {block.mime_type}, {size} bytes: attached]")
            else:
                texts.append(f"[image {block.mime_type}, {size} bytes: not shown, this model has no vision projector]")
        elif kind == "audio":
            texts.append(f"[audio {block.mime_type}: not shown]")
        elif kind == "resource_link":
            texts.append(f"[resource {block.uri}" + (f": {block.name}" if getattr(block, "name", None) else "") + "]")
        elif kind == "resource":
            res = block.resource
            text = getattr(res, "text", None)
            texts.append(text if text is not None else f"[resource {res.uri}: {getattr(res, 'mime_type', None) or 'binary'}]")
        else:
            texts.append(f"[{kind or 'unknown'} content: not shown]")
    structured = getattr(result, "structured_content", None)
    text = "\n".join(texts)
    if structured is not None and not result.is_error and (not texts or _same_json(text, structured)):
        text = json.dumps(structured, ensure_ascii=False, separators=(",", ":"))
    if budget_tokens is not None and count is not None:
        text = cut(text, budget_tokens, count)
    if result.is_error:
        return {"error": text or "the tool reported an error"}, [], text or "the tool reported an error"
    return text, images, None


def _same_json(text: str, value) -> bool:
    try:
        return json.loads(text) == value
    except ValueError:
        return False


def cut(text: str, budget: int, count: Callable[[str], int]) -> str:
    """`text` within `budget` tokens, cut at the end with a visible marker when it is longer."""
    total = count(text)
    if total <= budget:
        return text
    keep = len(text) * budget // max(total, 1)
    while keep > 0 and count(text[:keep]) > budget - 40:
        keep = keep * 9 // 10
    return (text[:keep] + f"\n[… cut: the result was {total} tokens, over the budget of {budget}; "
            f"{len(text) - keep} characters left out]")


# ---------------------------------------------------------------- the host


class ServerFailed(GemmaError):
    pass


@dataclass
class Server:
    spec: ServerSpec
    status: str = "starting"  # starting | ready | failed | dead | stopped
    why: str | None = None
    tools: list[McpTool] = field(default_factory=list)
    all_tools: list[str] = field(default_factory=list)  # before includeTools/excludeTools
    started_s: float = 0.0  # how long its start took
    restarts: int = 0
    client: Any = None
    process: Any = None  # a stdio server's process (anyio's), while its session is open
    pids: set[int] = field(default_factory=set)
    task: Any = None
    stop: Any = None  # asyncio.Event
    ready: Any = None  # asyncio.Future
    answer: tuple[int, str] | None = None  # an HTTP server's (status, content type) when its URL did not speak MCP

    @property
    def log(self) -> Path:
        return paths.mcp_logs() / f"{callable_name(self.spec.name)}.log"


class Host:
    """The MCP servers of one chat: started together, kept open, stopped at the end.

    `ask(tool, server, arguments) -> "yes" | "tool" | "server" | "no" | None` is the face's question
    (None: there is no terminal to ask on); `approve_all` is `--yes`."""

    def __init__(self, config: McpConfig, specs: list[ServerSpec], *, approve_all: bool = False, ask=None):
        self.config = config
        self.servers = {s.name: Server(s) for s in specs}
        self.approve_all = approve_all
        self.ask = ask
        self.vision = False
        self.result_budget: int | None = None
        self.count: Callable[[str], int] | None = None
        self.costs: dict[str, int] = {}  # tokens of each declaration (the face counts them)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gemma-mcp", daemon=True)
        self._thread.start()
        self._started = False
        self._closed = False
        self._known_children: set[int] = set()
        _quiet_sdk_log()

    # ---- lifecycle

    def begin(self) -> None:
        """Start every server now (they come up while the model loads); `wait()` collects them."""
        self._started = True
        for server in self.servers.values():
            self._submit(self._begin(server))

    def wait(self) -> list[Server]:
        """Block until each server is ready or failed (its startup timeout at most); the servers."""
        if not self._started:
            self.begin()
        for server in self.servers.values():
            self._run(self._await_ready(server))
        self._assign()
        self._take_loop()
        return list(self.servers.values())

    def _take_loop(self) -> None:
        """Once the servers are up, their loop leaves its thread: each later call runs it in the caller's own
        thread, with no hop between two threads per call (bench/mcp.py, one call's round trip). Between calls
        the loop rests; what a server sends meanwhile waits in its pipe, and a death is noticed at the next call."""
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._thread = None

    def _submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(self, coro, timeout: float | None = None):
        """Run `coro` on the servers' loop and return its result: through the loop's thread while the servers
        start, in this thread after. Here signals never raise inside the loop (`_signals_during`)."""
        if self._thread is not None:
            return self._submit(coro).result(timeout)
        task = self._loop.create_task(coro if timeout is None else asyncio.wait_for(coro, timeout))
        restore = _signals_during(self._loop, task)
        try:
            return self._loop.run_until_complete(task)
        finally:
            restore()

    async def _begin(self, server: Server) -> None:
        server.ready = self._loop.create_future()
        server.stop = asyncio.Event()
        server.status, server.why = "starting", None
        if server.spec.problem:
            server.status, server.why = "failed", server.spec.problem
            server.ready.set_result(None)
            return
        server.task = asyncio.ensure_future(self._hold(server))

    async def _await_ready(self, server: Server) -> None:
        if server.ready is None:
            await self._begin(server)
        try:
            await asyncio.wait_for(asyncio.shield(server.ready), server.spec.startup_timeout)
        except asyncio.TimeoutError:
            server.status = "failed"
            server.why = (f"did not finish its handshake within {server.spec.startup_timeout:g} s "
                          f"(startupTimeout in the config; its log: {server.log})")
            await self._stop(server)

    async def _hold(self, server: Server) -> None:
        """One server's session, open from its start until the chat ends (or it dies)."""
        t0 = time.perf_counter()
        spec, stop, ready = server.spec, server.stop, server.ready
        server.log.parent.mkdir(parents=True, exist_ok=True)
        client = process = None
        try:
            with open(server.log, "a", encoding="utf-8") as errlog:
                errlog.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {spec.name}\n")
                errlog.flush()
                # a stdio server's process starts first, before the SDK is imported: its own start overlaps ours
                process = (await mcp_stdio.spawn(spec.command, spec.args, spec.env, spec.cwd, errlog)
                           if spec.transport == "stdio" else None)
                if process is not None:
                    server.pids.add(process.pid)
                    self._known_children.add(process.pid)
                    server.process = process
                await asyncio.to_thread(_import_sdk)  # in a worker thread: the loop meanwhile spawns the others
                # lazy: the MCP SDK, only when a server is configured; keeps gemma --help fast
                from mcp import Client

                transport = mcp_stdio.piped(process) if process is not None else self._transport(spec)
                async with Client(transport, client_info=_client_info()) as client:
                    names, tools = await _list_tools(client)
                    server.all_tools = names
                    keep = set(filtered(spec, names))
                    server.tools = [t for t in tools if t.name in keep]
                    for t in server.tools:
                        t.server = spec.name
                    server.client = client
                    server.status = "ready"
                    server.started_s = time.perf_counter() - t0
                    if not ready.done():
                        ready.set_result(None)
                    await stop.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - any failure of a server is a line about it, never the chat's end
            if server.stop is stop:
                if server.status == "ready":
                    server.status, server.why = "dead", f"exited: {_why(e, server)}"
                else:
                    server.status, server.why = "failed", _why(e, server)
        finally:
            if server.client is client:
                server.client = None
            if server.process is process:
                server.process = None
            if process is not None and process.returncode is None:  # spawned but never handed to the session
                await asyncio.shield(mcp_stdio.stop(process))
            if not ready.done():
                ready.set_result(None)

    def _transport(self, spec: ServerSpec):
        if spec.transport == "sse":
            # lazy: the MCP SDK, only when a server is configured; keeps gemma --help fast
            from mcp.client.sse import sse_client

            return sse_client(spec.url, headers=spec.headers or None)
        # lazy: the MCP SDK and its HTTP client, only when a server is configured; keeps gemma --help fast
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        server = self.servers[spec.name]
        server.answer = None

        async def note(response) -> None:
            # the SDK keeps only its own words ("Not Found"): the status it got, for `_why`
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            mcp_like = response.status_code == 202 or (
                response.status_code < 300 and kind in ("application/json", "text/event-stream"))
            if response.request.method == "POST" and not mcp_like and server.answer is None:
                server.answer = (response.status_code, kind)

        client = httpx2.AsyncClient(headers=spec.headers or None, timeout=httpx2.Timeout(30.0, read=None),
                                    event_hooks={"response": [note]})
        return streamable_http_client(spec.url, http_client=client)

    def _assign(self) -> None:
        tools = [t for s in self.servers.values() for t in s.tools]
        assign_names(tools, self._taken)

    _taken: set[str] = set()

    def reserve(self, names) -> None:
        """Names already used by `--tools` functions: an MCP tool of the same name gets `server__tool`."""
        self._taken = set(names)

    @property
    def tools(self) -> list[McpTool]:
        return [t for s in self.servers.values() if s.status in ("ready", "dead") for t in s.tools]

    def declarations(self) -> list[dict]:
        return [t.declaration() for t in self.tools]

    def tool(self, public: str) -> McpTool | None:
        return next((t for t in self.tools if t.public == public), None)

    def close(self) -> None:
        """Stop every server: the SDK's shutdown (stdin closed, SIGTERM, kill), then a kill of any
        process group still alive, and the loop."""
        if self._closed:
            return
        self._closed = True
        try:
            if not (self._thread is None and self._loop.is_running()):  # not from inside a call (a signal's exit)
                self._run(self._stop_all(), timeout=15)
        except BaseException:  # noqa: BLE001 - a stop that fails or is interrupted still ends with the kill below
            pass
        for pid in sorted(self._known_children):
            _kill_group(pid)
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    async def _stop_all(self) -> None:
        await asyncio.gather(*(self._stop(s) for s in self.servers.values()), return_exceptions=True)

    async def _stop(self, server: Server) -> None:
        if server.stop is not None:
            server.stop.set()
        task = server.task
        if task is None or task.done():
            return
        if server.status != "ready":
            task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), 8)
        except (asyncio.TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if server.status == "ready":
            server.status = "stopped"

    # ---- calls

    def needs_asking(self, tool: McpTool) -> bool:
        spec = self.servers[tool.server].spec
        remembered = self.config.approvals.get(tool.server, [])
        return not (self.approve_all or spec.trust or tool.name in spec.always_allow or "*" in remembered
                    or tool.name in remembered or (spec.auto_read_only and tool.read_only))

    def approve(self, tool: McpTool, arguments) -> bool | str:
        """True when a call may run (remembered, or asked: "always" answers are kept in gemma's mcp.json),
        else why not, for the model."""
        if not self.needs_asking(tool):
            return True
        answer = self.ask(tool, tool.server, arguments) if self.ask is not None else None
        if answer is None:
            return ("not run: gemma has no terminal to ask the user on, and the user did not approve this tool "
                    "beforehand (--yes, or \"trust\" in the MCP config)")
        if answer in ("tool", "server"):
            key = "*" if answer == "server" else tool.name
            self.config.approvals.setdefault(tool.server, [])
            if key not in self.config.approvals[tool.server]:
                self.config.approvals[tool.server].append(key)
            remembered = dict(self.config.approvals)
            save_servers(lambda data: data.__setitem__("approvals", remembered))
        return True if answer in ("yes", "tool", "server") else "the user declined to run this tool"

    def call(self, public: str, arguments) -> ToolOutcome:
        """Run one call (the approval is the caller's); errors come back as an error result, never raised.
        Ctrl-C cancels this call only: the model is told."""
        tool = self.tool(public)
        if tool is None:
            return ToolOutcome({"error": f"unknown tool {public!r}"}, error=f"unknown tool {public!r}")
        args = arguments if isinstance(arguments, dict) else {}
        t0 = time.perf_counter()
        try:
            result = self._run(self._call(self.servers[tool.server], tool, args))
        except (KeyboardInterrupt, asyncio.CancelledError):
            err = "the user cancelled this call (Ctrl-C)"
            return ToolOutcome({"error": err}, server=tool.server, error=err, seconds=time.perf_counter() - t0,
                               arguments=args)
        except ServerFailed as e:
            return ToolOutcome({"error": e.message}, server=tool.server, error=e.message,
                               seconds=time.perf_counter() - t0, arguments=args)
        value, images, error = convert(result, vision=self.vision, budget_tokens=self.result_budget, count=self.count)
        return ToolOutcome(value, server=tool.server, error=error, seconds=time.perf_counter() - t0, images=images,
                           arguments=args)

    async def _call(self, server: Server, tool: McpTool, args: dict):
        # lazy: the MCP SDK, only when a server is configured; keeps gemma --help fast
        from mcp import MCPError

        if server.client is not None and server.process is not None and _gone(server.process):
            await self._bury(server, "exited between calls")  # while the loop rested: it starts again below
        if server.client is None:
            if server.restarts >= 1 or server.status not in ("dead",):
                raise ServerFailed(f"MCP server {server.spec.name} is not running ({server.why or server.status})")
            server.restarts += 1
            await self._begin(server)
            await self._await_ready(server)
            if server.client is None:
                raise ServerFailed(f"MCP server {server.spec.name} could not be restarted: {server.why}")
        # No task and no waiter of its own, one timer: the call's cost stays near the SDK's (bench/mcp.py).
        deadline = _Deadline(server.spec.timeout)
        try:
            return await server.client.call_tool(tool.name, args, progress_callback=deadline.progress)
        except asyncio.CancelledError:  # the deadline's, or a Ctrl-C's
            if deadline.expired:
                raise ServerFailed(f"MCP tool {tool.name} on {server.spec.name} gave no result or progress "
                                   f"within {server.spec.timeout:g} s (the server's \"timeout\" in the config)") from None
            raise
        except MCPError as e:
            if server.client is None or server.status == "dead" or _closed(e):
                await self._bury(server, "exited during a call")  # the next call starts a new session
                again = "it is restarted once, at its next call" if server.restarts == 0 else "it is not restarted again"
                raise ServerFailed(f"MCP server {server.spec.name} exited during the call ({again}; "
                                   f"its log: {server.log})") from None
            raise ServerFailed(f"MCP error {e.code}: {e}") from None
        finally:
            deadline.stop()

    async def _bury(self, server: Server, why: str) -> None:
        """A server that died: its session closed and its process reaped now, while this loop runs."""
        server.status, server.why, server.client = "dead", why, None
        server.stop.set()
        if server.task is not None and not server.task.done():
            await asyncio.wait({server.task}, timeout=mcp_stdio.GRACE + 2 * mcp_stdio.TERM_GRACE + 1)


def _gone(process) -> bool:
    """Whether a stdio server's process has ended: its exit seen by the loop, or, while the loop rested, its
    pid reaped by asyncio's child watcher thread (one system call, no turn of the loop)."""
    if process.returncode is not None:
        return True
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def _signals_during(loop, task):
    """While `task` runs the loop in the main thread, a signal must not raise inside a coroutine (a server's
    session task would take a SystemExit for its own failure): a first Ctrl-C cancels the task, as
    `asyncio.run` does, and a second raises KeyboardInterrupt; SIGTERM and SIGHUP, where a handler of ours
    is set (commands/mcp.py), cancel it and are handed to that handler once the loop is left. The function
    returned puts the handlers back, then delivers such a signal."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous, pressed, deferred = {}, [], []

    def cancel() -> None:
        task.cancel()
        loop.call_soon_threadsafe(lambda: None)  # wakes the selector

    def on_sigint(signum, frame):
        pressed.append(signum)
        if len(pressed) > 1 or task.done():
            raise KeyboardInterrupt
        cancel()

    def on_end(signum, frame):
        deferred.append(signum)
        cancel()

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_sigint)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if callable(signal.getsignal(sig)):
            previous[sig] = signal.signal(sig, on_end)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if deferred:
            previous[deferred[0]](deferred[0], None)

    return restore


class _Deadline:
    """Cancels the task it is made in once `timeout` seconds pass with no progress notification from the
    server (each one starts the clock again): one timer on the loop, no waiter task per call."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.expired = False
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._last = self._loop.time()
        self._timer = self._loop.call_at(self._last + timeout, self._check)

    async def progress(self, _progress, _total, _message) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        due = self._last + self.timeout
        if self._loop.time() < due:  # progress came meanwhile: wait on from the last one
            self._timer = self._loop.call_at(due, self._check)
        elif not self._task.done():
            self.expired = True
            self._task.cancel()

    def stop(self) -> None:
        self._timer.cancel()


def _quiet_sdk_log() -> None:
    """The SDK logs a server's bad stdout lines with tracebacks: into a log file, not over the chat."""
    import logging  # lazy: only when MCP servers run

    log = logging.getLogger("mcp")
    if log.propagate:
        paths.mcp_logs().mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(paths.mcp_logs() / "client.log", encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False


def _closed(error) -> bool:
    # lazy: the MCP SDK, only when a server is configured; keeps gemma --help fast
    from mcp.types import CONNECTION_CLOSED

    return getattr(error, "code", None) == CONNECTION_CLOSED


async def _list_tools(client) -> tuple[list[str], list[McpTool]]:
    tools, cursor = [], None
    while True:
        page = await client.list_tools(cursor=cursor) if cursor else await client.list_tools()
        for t in page.tools:
            hints = getattr(t, "annotations", None)
            tools.append(McpTool("", t.name, t.name, t.description or t.title or "", t.input_schema or {},
                                 bool(getattr(hints, "read_only_hint", False))))
        cursor = getattr(page, "next_cursor", None)
        if not cursor:
            return [t.name for t in tools], tools


def _import_sdk() -> None:
    """Import the MCP SDK (seconds: pydantic models); the host runs this in a worker thread."""
    # lazy: the MCP SDK, only when a server is configured; keeps gemma --help fast
    import mcp  # noqa: F401


def _client_info():
    # lazy: the MCP SDK, only when a server is configured; keeps gemma --help fast
    from mcp.types import Implementation

    return Implementation(name="gemma-cli", version="0")


def _why(error: BaseException, server: Server) -> str:
    """One line for a server that failed: the cause, and the end of its stderr."""
    inner = error
    while isinstance(inner, BaseExceptionGroup) and inner.exceptions:
        inner = inner.exceptions[0]
    if isinstance(inner, GemmaError):
        return inner.message
    if isinstance(inner, FileNotFoundError):
        return f"command {server.spec.command!r} not found"
    text = str(inner).strip() or type(inner).__name__
    if server.answer is not None and server.status != "ready":  # its start failed on what its URL answered
        status, kind = server.answer
        if status in (404, 405) or status < 300:
            got = f"HTTP {status}" + (f" ({kind})" if status < 300 and kind else "")
            return f"{got} from {server.spec.url}: not an MCP endpoint?"
        return f"HTTP {status} from {server.spec.url}: {text}"
    if server.spec.transport != "stdio":
        return f"{server.spec.url}: {text}"
    tail = _tail(server.log)
    return f"{text}; its stderr ends: {tail}" if tail else text


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    body = text.rsplit("\n--- ", 1)[-1].splitlines()[1:]
    return " | ".join(line.strip() for line in body[-lines:] if line.strip())


def _kill_group(pid: int) -> None:
    """SIGKILL a server's process group if anything of it is still alive (the SDK starts each in its own)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        return


# ---------------------------------------------------------------- the chat's side


class McpToolbox:
    """`--tools` functions and MCP tools as one toolbox for `session.converse`."""

    def __init__(self, host: Host, user=None):
        self.host = host
        self.user = user

    @property
    def declarations(self) -> list[dict]:
        return list(self.user.declarations if self.user else []) + self.host.declarations()

    @property
    def runnable(self) -> bool:
        return True

    def run(self, name: str, arguments):
        if self.host.tool(name) is not None:
            return self.host.call(name, arguments)
        if self.user is not None and self.user.runnable:
            return self.user.run(name, arguments)
        if self.user is not None and any(d["function"]["name"] == name for d in self.user.declarations):
            return {"error": f"{name} is only declared (--tools FILE.json): gemma cannot run it"}
        return {"error": f"unknown tool {name!r}"}

    def confirm(self, fallback):
        """The question before a call: MCP tools through the host's approvals, others through `fallback`."""

        def ask(call: dict) -> bool:
            fn = call["function"]
            tool = self.host.tool(fn["name"])
            if tool is not None:
                return self.host.approve(tool, fn.get("arguments"))
            return fallback is None or fallback(call)

        return ask


def declaration_costs(render: Callable[[list[dict] | None], str], tokenize: Callable[[str], list],
                      declarations: list[dict]) -> list[int]:
    """Tokens each declaration adds to the prompt, counted with the loaded model's tokenizer."""
    base = len(tokenize(render(None)))
    return [max(0, len(tokenize(render([d]))) - base) for d in declarations]


def check_budget(host: Host, costs: dict[str, int], n_ctx: int, other: int = 0) -> None:
    """Refuse before the first turn when the MCP declarations take more than half the context."""
    total = sum(costs.values()) + other
    if total <= n_ctx * CONTEXT_SHARE:
        return
    per_server = {}
    for t in host.tools:
        per_server[t.server] = per_server.get(t.server, 0) + costs.get(t.public, 0)
    detail = ", ".join(f"{name} {n}" for name, n in sorted(per_server.items(), key=lambda kv: -kv[1]))
    raise ContextBudgetError(
        f"the tool declarations take {total} tokens, {100 * total // n_ctx} % of the {n_ctx}-token context "
        f"(at most {int(CONTEXT_SHARE * 100)} %); by server: {detail}",
        "pick servers with --mcp NAME, keep fewer tools with \"includeTools\" in mcp.json, or raise --ctx")


class ContextBudgetError(GemmaError):
    pass


def escaped(value) -> str:
    """Arguments as the user must see them before approving: full JSON, control characters escaped."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return re.sub("[\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]", lambda m: f"\\u{ord(m.group()):04x}", text)


def data_size(url: str) -> int:
    return len(base64.b64decode(url.split(",", 1)[1])) if "," in url else 0
