"""MCP servers in `gemma chat`: what they add to the time to the first token, and one call's round trip.

Prints, side by side from one run:
1. each stdio server's own start time measured alone (spawn, `initialize`, `tools/list` with the SDK
   directly, its import already paid);
2. the time from `gemma chat` start to the first token of the answer with those 3 servers and with none
   (`--no-mcp`), runs interleaved; target: what the servers add <= the slowest one's start time + 10 %
   (they start together, while the model loads, never one after another);
3. one tool call's round trip through gemma's MCP host (`Host.call`: its loop thread, approval, result
   conversion) against the same call made with the SDK directly; target <= 1.1x.

The servers are tests/mcp_server.py (the SDK's own `MCPServer`) three times by default, or
mcp-server-time, mcp-server-git and ours with `--real-bin DIR` (a virtualenv's bin folder holding them).
The model is the synthetic Gemma 4 test model (tests/synthetic.py) unless `--model` names a GGUF; its
answer is forced to "ok" by a grammar, so the first byte on stdout is the first token.

    python bench/mcp.py [--runs 5] [--calls 50] [--model GGUF] [--real-bin DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SERVER = str(ROOT / "tests" / "mcp_server.py")


def servers(real_bin: Path | None, repo: Path) -> dict[str, dict]:
    if real_bin is None:
        return {f"ours{i}": {"command": sys.executable, "args": [SERVER]} for i in (1, 2, 3)}
    return {"time": {"command": str(real_bin / "mcp-server-time"), "args": ["--local-timezone", "UTC"]},
            "git": {"command": str(real_bin / "mcp-server-git"), "args": ["--repository", str(repo)]},
            "ours": {"command": sys.executable, "args": [SERVER]}}


async def start_alone(entry: dict) -> float:
    """Spawn one server, initialize, list its tools: seconds (the SDK directly, no gemma)."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    t0 = time.perf_counter()
    params = StdioServerParameters(command=entry["command"], args=entry["args"])
    async with Client(stdio_client(params, errlog=open(os.devnull, "w"))) as client:
        await client.list_tools()
        return time.perf_counter() - t0


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


async def sdk_calls(entry: dict, calls: int) -> list[float]:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=entry["command"], args=entry["args"])
    times = []
    async with Client(stdio_client(params, errlog=open(os.devnull, "w"))) as client:
        await client.call_tool("echo", {"text": "warm"})
        for i in range(calls):
            t0 = time.perf_counter()
            result = await client.call_tool("echo", {"text": f"call {i}"})
            times.append(time.perf_counter() - t0)
            assert result.content[0].text == f"echo: call {i}"
    return times


def host_calls(entry: dict, calls: int, home: Path) -> list[float]:
    from gemma_cli.chat import mcp

    spec = mcp.ServerSpec("ours", command=entry["command"], args=entry["args"])
    host = mcp.Host(mcp.McpConfig(home / "mcp.json", {}), [spec], approve_all=True)
    times = []
    try:
        [server] = host.wait()
        assert server.status == "ready", server.why
        host.call("echo", {"text": "warm"})
        for i in range(calls):
            t0 = time.perf_counter()
            out = host.call("echo", {"text": f"call {i}"})
            times.append(time.perf_counter() - t0)
            assert out.value == f"echo: call {i}", out
    finally:
        host.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="chat starts and server starts measured (median)")
    ap.add_argument("--calls", type=int, default=50, help="tool calls timed each way (median)")
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
        entries = servers(args.real_bin, repo)
        config = home / "servers.json"
        config.write_text(json.dumps({"mcpServers": entries}))
        grammar = home / "ok.gbnf"
        grammar.write_text('root ::= "ok"\n')
        env = dict(os.environ, GEMMA_HOME=str(home), NO_COLOR="1", GEMMA_CONFIG=str(home / "config.yaml"))
        base = [sys.executable, "-m", "gemma_cli", "chat", "hi", "--model", model, "--grammar", str(grammar),
                "--max-tokens", "4"]
        with_mcp = base + ["--mcp-config", str(config), "--yes"]
        without = base + ["--no-mcp"]

        async def warm_sdk():
            return await start_alone(next(iter(entries.values())))

        asyncio.run(warm_sdk())  # the SDK's import and the file cache, outside the measures
        first_token(without, env)
        first_token(with_mcp, env)
        alone = {name: [] for name in entries}
        chat_none, chat_mcp = [], []
        for _ in range(args.runs):
            for name, entry in entries.items():
                alone[name].append(asyncio.run(start_alone(entry)))
            chat_none.append(first_token(without, env))
            chat_mcp.append(first_token(with_mcp, env))
        ours = {"command": sys.executable, "args": [SERVER]}
        sdk = asyncio.run(sdk_calls(ours, args.calls))
        gemma = host_calls(ours, args.calls, home)

    med = statistics.median
    print(f"model: {model if args.model else 'synthetic Gemma 4 E-style (tests/synthetic.py)'}; "
          f"median of {args.runs} runs, {args.calls} calls")
    print("\n1. each server started alone (SDK directly: spawn, initialize, tools/list)")
    for name, times in alone.items():
        print(f"   {name:<8} {med(times) * 1000:8.1f} ms   ({' '.join(f'{t * 1000:.0f}' for t in times)})")
    slowest = max(med(t) for t in alone.values())
    added = med(chat_mcp) - med(chat_none)
    print("\n2. `gemma chat` start to first token")
    print(f"   no MCP server       {med(chat_none) * 1000:8.1f} ms")
    print(f"   {len(entries)} stdio servers     {med(chat_mcp) * 1000:8.1f} ms")
    print(f"   added by servers    {added * 1000:8.1f} ms   vs slowest alone {slowest * 1000:.1f} ms "
          f"(+10 %: {slowest * 1100:.1f} ms) -> {'within' if added <= slowest * 1.1 else 'OVER'} target")
    s, g = med(sdk), med(gemma)
    print("\n3. one tool call's round trip (echo)")
    print(f"   SDK directly        {s * 1000:8.3f} ms")
    print(f"   through gemma       {g * 1000:8.3f} ms")
    print(f"   ratio gemma/SDK = {g / s:.2f} (target <= 1.1) -> {'within' if g / s <= 1.1 else 'OVER'} target")


if __name__ == "__main__":
    main()
