"""MCP servers in `gemma chat`: what they add to the time to the first token, and one call's round trip.

Prints, side by side from one run, for two sets of 3 stdio servers:
1. each server's own start time measured alone (spawn, `initialize`, `tools/list` with the SDK directly,
   its import already paid) with the CPU time the server used, beside the time from `gemma chat` start to
   the first token of the answer with those 3 servers and with none (`--no-mcp`), runs interleaved; target:
   what the servers add <= the slowest one's start time + 10 % (they start together, while the model loads,
   never one after another). Set one is servers written with the SDK: tests/mcp_server.py (the SDK's own
   `MCPServer`) three times, or mcp-server-time, mcp-server-git and ours with `--real-bin DIR` (a
   virtualenv's bin folder holding them); each spends about a second of CPU on its own start, so on a
   2-core machine three of them cannot start side by side (the floor printed). Set two is three servers
   whose start is waiting (bench/mcp_waiting_server.py: 0.5, 0.75 and 1 s), which shows how gemma starts
   servers apart from that CPU. What importing the SDK costs a fresh Python is printed too (gemma pays it
   once, in its MCP thread, while the model loads).
2. one tool call's round trip through gemma's MCP host (`Host.call`: its loop run in the caller's thread, the
   call timeout, the result's conversion) against the same call made with the SDK directly (its own loop run
   for the call), the two alternating call by call so that the machine's load hits both alike; target <= 1.1x.

The model is the synthetic Gemma 4 test model (tests/synthetic.py) unless `--model` names a GGUF; its
answer is forced to "ok" by a grammar, so the first byte on stdout is the first token.

    python bench/mcp.py [--runs 5] [--calls 200] [--model GGUF] [--real-bin DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This file is named mcp.py: its folder must not stand before the SDK's `mcp` package on the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
SERVER = str(ROOT / "tests" / "mcp_server.py")
WAITING = str(ROOT / "bench" / "mcp_waiting_server.py")


def waiting_servers() -> dict[str, dict]:
    """Three servers whose start is mostly waiting (0.5, 0.75 and 1 s), with little CPU of their own."""
    return {f"wait{i}": {"command": sys.executable, "args": [WAITING, "--start-delay", str(delay)]}
            for i, delay in enumerate((0.5, 0.75, 1.0), 1)}


def servers(real_bin: Path | None, repo: Path) -> dict[str, dict]:
    if real_bin is None:
        # Three tools each: all of them would pass half of the test model's 4096-token context.
        return {f"ours{i}": {"command": sys.executable, "args": [SERVER],
                             "includeTools": ["echo", "math.add-numbers", "fail"]} for i in (1, 2, 3)}
    return {"time": {"command": str(real_bin / "mcp-server-time"), "args": ["--local-timezone", "UTC"]},
            "git": {"command": str(real_bin / "mcp-server-git"), "args": ["--repository", str(repo)]},
            "ours": {"command": sys.executable, "args": [SERVER]}}


async def start_alone(entry: dict) -> tuple[float, float]:
    """Spawn one server, initialize, list its tools (the SDK directly, no gemma): seconds, and the CPU
    seconds the server process used (counted once it has exited)."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    params = StdioServerParameters(command=entry["command"], args=entry["args"])
    async with Client(stdio_client(params, errlog=open(os.devnull, "w"))) as client:
        await client.list_tools()
        wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


SDK_IMPORT = ("import time; t = time.perf_counter(); from mcp import Client; "
              "from mcp.client.stdio import stdio_client; print(time.perf_counter() - t)")


def sdk_import() -> float:
    """Seconds a fresh Python takes to import the SDK's client (gemma pays it once MCP is used)."""
    out = subprocess.run([sys.executable, "-c", SDK_IMPORT], capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir())
    return float(out.stdout)


def first_token(cmd: list[str], env: dict) -> float:
    """Seconds from spawning `gemma chat` to the first byte of the answer on its stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env, bufsize=0)
    first = proc.stdout.read(1)
    t = time.perf_counter() - t0
    out, err = proc.communicate(timeout=120)
    if not first or proc.returncode != 0:
        raise SystemExit(f"gemma chat failed ({proc.returncode}): {err.decode(errors='replace').strip()[-400:]}")
    if b"did not start" in err:
        raise SystemExit(f"an MCP server did not start: {err.decode(errors='replace').strip()[-400:]}")
    return t


def round_trips(entry: dict, calls: int, home: Path) -> tuple[list[float], list[float]]:
    """The same echo call, alternately with the SDK directly and through gemma's host, so that the machine's
    load hits both alike. Both are called as a chat calls them, from plain (not async) code: the SDK's client
    on an event loop of its own, run for each call; gemma's `Host.call`. Two sessions, two processes of the
    same server."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    from gemma_cli.chat import mcp

    spec = mcp.ServerSpec("ours", command=entry["command"], args=entry["args"])
    host = mcp.Host(mcp.McpConfig(home / "mcp.json", {}), [spec], approve_all=True)
    sdk, gemma = [], []
    params = StdioServerParameters(command=entry["command"], args=entry["args"])
    loop = asyncio.new_event_loop()
    opened, done = loop.create_future(), asyncio.Event()

    async def hold() -> None:  # the session is entered and left by one task, as anyio requires
        async with Client(stdio_client(params, errlog=open(os.devnull, "w"))) as client:
            opened.set_result(client)
            await done.wait()

    holder = loop.create_task(hold())
    try:
        [server] = host.wait()
        assert server.status == "ready", server.why
        client = loop.run_until_complete(opened)
        loop.run_until_complete(client.call_tool("echo", {"text": "warm"}))
        host.call("echo", {"text": "warm"})
        for i in range(calls):
            t0 = time.perf_counter()
            result = loop.run_until_complete(client.call_tool("echo", {"text": f"call {i}"}))
            t1 = time.perf_counter()
            out = host.call("echo", {"text": f"call {i}"})
            t2 = time.perf_counter()
            assert result.content[0].text == out.value == f"echo: call {i}", (result, out)
            sdk.append(t1 - t0)
            gemma.append(t2 - t1)
    finally:
        host.close()
        done.set()
        loop.run_until_complete(holder)
        loop.close()
    return sdk, gemma


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="chat starts and server starts measured (median)")
    ap.add_argument("--calls", type=int, default=200, help="tool calls timed each way, alternately (median)")
    ap.add_argument("--model", help="a Gemma 4 GGUF (default: the synthetic test model)")
    ap.add_argument("--real-bin", type=Path, help="a bin folder holding mcp-server-time and mcp-server-git")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model = args.model
        if model is None:
            from tests import synthetic

            model = str(home / "model.gguf")
            synthetic.write_text_model(model, kind="e")
        repo = home / "repo"
        if args.real_bin:
            subprocess.run(["git", "init", "-q", str(repo)], check=True)
        sets = {"servers written with the SDK": servers(args.real_bin, repo),
                "servers whose start is waiting (bench/mcp_waiting_server.py)": waiting_servers()}
        grammar = home / "ok.gbnf"
        grammar.write_text('root ::= "ok"\n')
        env = dict(os.environ, GEMMA_HOME=str(home), NO_COLOR="1", GEMMA_CONFIG=str(home / "config.yaml"))
        base = [sys.executable, "-m", "gemma_cli", "chat", "hi", "--model", model, "--grammar", str(grammar),
                "--max-tokens", "4"]
        without = base + ["--no-mcp"]
        with_mcp = {}
        for i, (title, entries) in enumerate(sets.items()):
            config = home / f"servers{i}.json"
            config.write_text(json.dumps({"mcpServers": entries}))
            with_mcp[title] = base + ["--mcp-config", str(config), "--yes"]

        async def warm_sdk():
            return await start_alone(next(iter(sets["servers written with the SDK"].values())))

        asyncio.run(warm_sdk())  # the SDK's import and the file cache, outside the measures
        first_token(without, env)
        for cmd in with_mcp.values():
            first_token(cmd, env)
        alone = {title: {name: [] for name in entries} for title, entries in sets.items()}
        cpu = {title: {name: [] for name in entries} for title, entries in sets.items()}
        chat_mcp = {title: [] for title in sets}
        chat_none, imports = [], []
        for _ in range(args.runs):
            for title, entries in sets.items():
                for name, entry in entries.items():
                    wall, used = asyncio.run(start_alone(entry))
                    alone[title][name].append(wall)
                    cpu[title][name].append(used)
            imports.append(sdk_import())
            chat_none.append(first_token(without, env))
            for title, cmd in with_mcp.items():
                chat_mcp[title].append(first_token(cmd, env))
        ours = {"command": sys.executable, "args": [SERVER]}
        sdk, gemma = round_trips(ours, args.calls, home)

    med = statistics.median
    cpus = os.cpu_count() or 1
    print(f"model: {model if args.model else 'synthetic Gemma 4 E-style (tests/synthetic.py)'}; "
          f"median of {args.runs} runs, {args.calls} calls; load average {os.getloadavg()[0]:.1f} on {cpus} cores")
    print(f"the SDK's import in a fresh Python (gemma pays it once, in its MCP thread): {med(imports) * 1000:.1f} ms")
    print(f"\n`gemma chat` start to first token, no MCP server: {med(chat_none) * 1000:.1f} ms   "
          f"({' '.join(f'{t * 1000:.0f}' for t in chat_none)})")
    for n, title in enumerate(sets, 1):
        print(f"\n{n}. {len(sets[title])} stdio {title}")
        print("   each started alone (SDK directly: spawn, initialize, tools/list)")
        for name, times in alone[title].items():
            print(f"   {name:<8} {med(times) * 1000:8.1f} ms, {med(cpu[title][name]) * 1000:6.0f} ms CPU   "
                  f"({' '.join(f'{t * 1000:.0f}' for t in times)})")
        slowest = max(med(t) for t in alone[title].values())
        floor = max(slowest, sum(med(c) for c in cpu[title].values()) / cpus)
        added = med(chat_mcp[title]) - med(chat_none)
        print(f"   `gemma chat` with them {med(chat_mcp[title]) * 1000:8.1f} ms   "
              f"({' '.join(f'{t * 1000:.0f}' for t in chat_mcp[title])})")
        print(f"   added by servers    {added * 1000:8.1f} ms   vs slowest alone {slowest * 1000:.1f} ms "
              f"(+10 %: {slowest * 1100:.1f} ms) -> {'within' if added <= slowest * 1.1 else 'OVER'} target")
        print(f"   (one after another they would add {sum(med(t) for t in alone[title].values()) * 1000:.0f} ms; "
              f"started together on {cpus} cores they need at least {floor * 1000:.0f} ms, as their CPU time "
              f"allows; plus the SDK import)")
    s, g = med(sdk), med(gemma)
    pairs = med([b / a for a, b in zip(sdk, gemma)])
    print(f"\n{len(sets) + 1}. one tool call's round trip (echo), calls alternating")
    print(f"   SDK directly        {s * 1000:8.3f} ms")
    print(f"   through gemma       {g * 1000:8.3f} ms   (+{(g - s) * 1000:.3f} ms)")
    print(f"   median of per-call ratios {pairs:.2f}")
    print(f"   ratio gemma/SDK = {g / s:.2f} (target <= 1.1) -> {'within' if g / s <= 1.1 else 'OVER'} target")


if __name__ == "__main__":
    main()
