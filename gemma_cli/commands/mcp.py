"""`gemma mcp list|add|remove|test`, and MCP servers in `gemma chat` (start, approve, stop).

The host itself is `gemma_cli/chat/mcp.py`; this is the face: flags, questions on the terminal, lines printed.
"""

from __future__ import annotations

import atexit
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import urlsplit

import typer

from gemma_cli.errors import UsageError

EXAMPLES = """
Examples:

\b
  gemma mcp add time -- uvx mcp-server-time --local-timezone Europe/Paris
  gemma mcp add git -- uvx mcp-server-git --repository .
  gemma mcp add tracker --url http://127.0.0.1:8931/mcp --header "Authorization=Bearer ${TRACKER_TOKEN}"
  gemma mcp add docs https://example.com/mcp
  gemma mcp list
  gemma mcp test time
  gemma mcp remove git
  gemma chat --mcp time "What time is it in Tokyo?"
  gemma chat --mcp-config ~/Library/Application\\ Support/Claude/claude_desktop_config.json

The servers live in mcp.json in gemma's config dir, in the Claude Desktop / Cursor form.
"""

SERVER_NAME = re.compile(r"[A-Za-z0-9_-]+")  # what `gemma mcp add` accepts (Claude Code's rule)

ConfigFile = Annotated[Optional[Path], typer.Option("--mcp-config", metavar="FILE",
                                                     help="Read MCP servers from FILE (mcp.json, a Claude Desktop, Cursor or Gemini CLI settings file).")]

mcp_app = typer.Typer(help="MCP servers whose tools `gemma chat` offers the model.", epilog=EXAMPLES,
                      no_args_is_help=True)


# ---------------------------------------------------------------- in gemma chat


def start(config_file: Path | None, names: list[str] | None, no_mcp: bool, *, yes: bool):
    """The chat's MCP host with its servers starting (they come up while the model loads), or None."""
    if no_mcp:
        if names:
            raise UsageError("--mcp and --no-mcp disagree", "use one of them")
        return None
    # lazy: the MCP host (and later the SDK), only when the chat runs; keeps gemma --help fast
    from gemma_cli.chat import mcp

    config = mcp.read_config(config_file)
    specs = mcp.select(config, names)
    if not specs:
        return None
    host = mcp.Host(config, specs, approve_all=yes, ask=ask_on_terminal)
    atexit.register(host.close)  # whatever ends the chat, the servers go with it (close is idempotent)
    _stop_on_sigterm()
    host.begin()
    return host


def ready(host, session, toolbox):
    """Wait for the servers, say which failed, check the context budget; the toolbox the chat runs."""
    # lazy: the MCP host, only when servers are configured; keeps gemma --help fast
    from gemma_cli.chat import mcp

    if toolbox is not None:
        host.reserve(d["function"]["name"] for d in toolbox.declarations)
    for server in host.wait():
        if server.status != "ready":
            sys.stderr.write(f"MCP server {server.spec.name} did not start: {server.why}\n")
    engine = session.engine
    host.count = lambda text: len(engine.tokenize(text, special=False))
    host.result_budget = int(engine.n_ctx * mcp.RESULT_SHARE)
    host.vision = session.can_see
    combined = mcp.McpToolbox(host, toolbox)
    session.tools = combined.declarations or None
    costs = tool_costs(session, host)
    other = sum(n for name, n in costs.items() if host.tool(name) is None)
    mcp.check_budget(host, {k: v for k, v in costs.items() if host.tool(k) is not None}, engine.n_ctx, other)
    host.costs = costs
    return combined


def tool_costs(session, host) -> dict[str, int]:
    """{tool name: tokens its declaration adds}, with the loaded model's tokenizer."""
    # lazy: the MCP host, only when servers are configured; keeps gemma --help fast
    from gemma_cli.chat import mcp

    fmt = session.format
    sample = [{"role": "user", "content": "hi"}]
    declarations = session.tools or []
    counts = mcp.declaration_costs(lambda tools: fmt.render(sample, tools), session.engine.tokenize, declarations)
    return {d["function"]["name"]: n for d, n in zip(declarations, counts)}


def ask_on_terminal(tool, server: str, arguments) -> str | None:
    """The approval question: tool, server, full arguments (escaped); None without a terminal."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    # lazy: the MCP host, only when servers are configured; keeps gemma --help fast
    from gemma_cli.chat.mcp import escaped

    sys.stderr.write(f"\nMCP tool {tool.name} (server {server}) wants to run with:\n  {escaped(arguments)}\n"
                     "run it? [y]es / [t] always this tool / [s] always this server / [N]o: ")
    sys.stderr.flush()
    try:
        answer = input().strip().lower()
    except EOFError:
        return "no"
    return {"y": "yes", "yes": "yes", "t": "tool", "s": "server"}.get(answer, "no")


def _stop_on_sigterm() -> None:
    """SIGTERM (and a closed terminal's SIGHUP) end the chat as Ctrl-C does, so the servers are stopped on the way out."""

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, stop)
        except ValueError:  # not the main thread
            return


def json_of(run) -> dict:
    """A tool run in `gemma chat --json`: MCP calls carry their server, arguments, error and time."""
    fn = run.call["function"]
    out = {"name": fn["name"], "ran": run.approved, "result": run.result}
    if run.server is not None:
        out.update(server=run.server, arguments=fn.get("arguments"), error=run.error, seconds=round(run.seconds, 4))
    if run.repeated:
        out["repeated"] = True
    return out


def servers_table(host) -> str:
    """`/mcp` in the REPL: each server, its state, its tools."""
    lines = []
    for s in host.servers.values():
        state = s.status + (f" ({s.why})" if s.why else "")
        lines.append(f"{s.spec.name:<16} {state}  {len(s.tools)} tools, started in {s.started_s:.2f} s")
    return "\n".join(lines) or "(no MCP servers)"


def tools_table(host, costs: dict[str, int], declarations: list[dict]) -> str:
    """`/tools` in the REPL: every tool the model has, where it comes from, and its token cost."""
    lines = []
    for d in declarations:
        name = d["function"]["name"]
        tool = host.tool(name) if host is not None else None
        origin = f"MCP {tool.server}" + (f" ({tool.name})" if tool.name != name else "") if tool else "--tools"
        lines.append(f"{name:<28} {costs.get(name, 0):>6} tokens  {origin}")
    total = sum(costs.get(d["function"]["name"], 0) for d in declarations)
    return "\n".join(lines + [f"{'total':<28} {total:>6} tokens"]) if lines else "(no tools)"


# ---------------------------------------------------------------- gemma mcp …


def list_cmd(config_file: ConfigFile = None,
             as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
             check: Annotated[bool, typer.Option("--start/--no-start", help="Start each server to list its tools (default on).")] = True) -> None:
    """The configured servers, whether they start, their tools and each tool's declaration size."""
    # lazy: the MCP host, only when this command runs; keeps gemma --help fast
    from gemma_cli.chat import mcp

    config = mcp.read_config(config_file)
    host = mcp.Host(config, list(config.servers.values())) if check and config.servers else None
    rows = []
    try:
        servers = host.wait() if host else []
        by_name = {s.spec.name: s for s in servers}
        statuses = {s.spec.name: s.status for s in servers}
        for name, spec in config.servers.items():
            s = by_name.get(name)
            row = {"name": name, "transport": spec.transport, "disabled": spec.disabled,
                   "target": spec.url or " ".join([spec.command or "", *spec.args]).strip(),
                   "status": statuses[name] if s else ("disabled" if spec.disabled else "not started"),
                   "why": s.why if s else spec.problem,
                   "tools": [{"name": t.name, "as": t.public, "chars": len(json.dumps(t.declaration())),
                              "tokens_estimate": len(json.dumps(t.declaration())) // 4} for t in (s.tools if s else [])]}
            rows.append(row)
    finally:
        if host:
            host.close()
    if as_json:
        print(json.dumps({"config": str(config.path), "servers": rows}, indent=2))
        return
    print(f"# {config.path}" + ("" if config.path.exists() else " (not created yet: gemma mcp add NAME -- COMMAND…)"))
    for row in rows:
        flag = " (disabled)" if row["disabled"] else ""
        print(f"{row['name']}{flag}: {row['status']}{': ' + row['why'] if row['why'] else ''}  [{row['transport']}] {row['target']}")
        for t in row["tools"]:
            print(f"    {t['as']:<28} ~{t['tokens_estimate']:>5} tokens" + (f"  ({t['name']})" if t["as"] != t["name"] else ""))
    if rows:
        print("token counts are estimates (characters / 4); `/tools` in `gemma chat` counts with the model's tokenizer")


def add_cmd(name: Annotated[str, typer.Argument(help="The server's name.")],
            command: Annotated[Optional[list[str]], typer.Argument(help="After --: the command and its arguments.")] = None,
            url: Annotated[Optional[str], typer.Option("--url", help="A streamable HTTP server's URL.")] = None,
            header: Annotated[Optional[list[str]], typer.Option("--header", metavar="NAME=VALUE", help="An HTTP header (repeatable).")] = None,
            env: Annotated[Optional[list[str]], typer.Option("--env", "-e", metavar="KEY=VALUE", help="An environment variable for the command (repeatable; ${VAR} expands at start).")] = None,
            cwd: Annotated[Optional[str], typer.Option("--cwd", help="The command's working directory.")] = None,
            timeout: Annotated[Optional[float], typer.Option("--timeout", min=1, help="Seconds a call may take without progress (default 60).")] = None) -> None:
    """Add (or replace) a server in gemma's mcp.json."""
    if not SERVER_NAME.fullmatch(name):
        raise UsageError(f"MCP server name {name!r} is not usable: use letters, digits, - and _",
                         "for example gemma mcp add time -- uvx mcp-server-time")
    if not url and command and len(command) == 1 and re.match(r"https?://", command[0]):
        url, command = command[0], None  # `gemma mcp add NAME URL`, as `claude mcp add --transport http NAME URL`
    if bool(command) == bool(url):
        raise UsageError("give the server's command after -- , or --url", "gemma mcp add time -- uvx mcp-server-time")
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
        raise UsageError(f"--url {url!r} is not an http(s) URL", "for example --url http://127.0.0.1:8931/mcp")
    entry: dict = {"type": "http", "url": url} if url else {"command": command[0], "args": command[1:]}
    for what, items, key in (("--header", header, "headers"), ("--env", env, "env")):
        pairs = {}
        for item in items or []:
            if "=" not in item:
                raise UsageError(f"{what} {item!r} is not NAME=VALUE", f"{what} KEY=VALUE")
            k, v = item.split("=", 1)
            pairs[k] = v
        if pairs:
            entry[key] = pairs
    if cwd:
        entry["cwd"] = cwd
    if timeout:
        entry["timeout"] = timeout
    # lazy: the MCP host, only when this command runs; keeps gemma --help fast
    from gemma_cli.chat import mcp

    path = mcp.save_servers(lambda data: data["mcpServers"].__setitem__(name, entry))
    print(f"added {name} to {path}")


def remove_cmd(name: Annotated[str, typer.Argument(help="The server's name.")]) -> None:
    """Remove a server from gemma's mcp.json (and its remembered approvals)."""
    # lazy: the MCP host, only when this command runs; keeps gemma --help fast
    from gemma_cli.chat import mcp

    mcp.select(mcp.read_config(), [name])  # a name not in the config is a usage error listing those that are

    def drop(data: dict) -> None:
        data["mcpServers"].pop(name, None)
        if isinstance(data.get("approvals"), dict):
            data["approvals"].pop(name, None)

    print(f"removed {name} from {mcp.save_servers(drop)}")


def test_cmd(name: Annotated[str, typer.Argument(help="The server's name.")], config_file: ConfigFile = None) -> None:
    """Start one server, list its tools, stop it, with the time each step took."""
    # lazy: the MCP host, only when this command runs; keeps gemma --help fast
    from gemma_cli.chat import mcp

    config = mcp.read_config(config_file)
    specs = mcp.select(config, [name])
    t0 = time.perf_counter()
    host = mcp.Host(config, specs)
    try:
        server = host.wait()[0]
        started = time.perf_counter() - t0
        status = server.status
    finally:
        t1 = time.perf_counter()
        host.close()
        stopped = time.perf_counter() - t1
    if status != "ready":
        raise UsageError(f"MCP server {name} did not start: {server.why}", f"its log: {server.log}")
    print(f"{name}: started and listed {len(server.tools)} tools in {started:.2f} s; stopped in {stopped:.2f} s")
    for t in server.tools:
        print(f"    {t.public}" + (f"  ({t.name})" if t.public != t.name else "") + (f": {t.description.splitlines()[0]}" if t.description else ""))


def register(app: typer.Typer) -> None:
    mcp_app.command("list", epilog=EXAMPLES)(list_cmd)
    mcp_app.command("add", epilog=EXAMPLES)(add_cmd)
    mcp_app.command("remove", epilog=EXAMPLES)(remove_cmd)
    mcp_app.command("test", epilog=EXAMPLES)(test_cmd)
    app.add_typer(mcp_app, name="mcp")
