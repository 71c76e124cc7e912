"""A small MCP server for the tests, written with the official SDK's server class (`MCPServer`).

    python tests/mcp_server.py [stdio|http|hang|garbage|die] [--pidfile F] [--crashfile F] [--startedfile F]

stdio: the tools over stdin/stdout. http: streamable HTTP on 127.0.0.1, an OS-chosen port, printed
as `listening on http://127.0.0.1:PORT/mcp` on stdout once the socket accepts. hang: reads the
handshake and never answers (a startup timeout). garbage: prints lines that are not JSON-RPC on
stdout, then serves as stdio does. die: writes two lines on stderr and exits 3 before any handshake. `--pidfile` gets the process id; the `crash` tool exits the
process mid-call unless `--crashfile` already exists (it writes it first), so a restarted server
answers the next call. The `slow` tool writes `--startedfile` once it runs. `echo` alone carries
`readOnlyHint`.
"""


import argparse
import base64
import os
import sys
from pathlib import Path

# A 1x1 red PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg=="
)


def build(args):
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.utilities.types import Image
    from mcp.types import ToolAnnotations

    server = MCPServer("gemma-test")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def echo(text: str) -> str:
        """Say the text back."""
        return f"echo: {text}"

    @server.tool(name="math.add-numbers", structured_output=True)
    def add(a: int, b: int) -> dict[str, int]:
        """Add two integers."""
        return {"sum": a + b}

    @server.tool()
    def fail(reason: str = "broken") -> str:
        """Always fails."""
        from mcp.server.mcpserver.exceptions import ToolError

        raise ToolError(f"it failed: {reason}")

    @server.tool()
    def picture() -> Image:
        """A tiny red picture."""
        return Image(data=PNG, format="png")

    @server.tool()
    def big(n: int = 10000) -> str:
        """A long text."""
        return "word " * n

    @server.tool()
    async def slow(ctx: Context, ticks: int = 0, every: float = 0.5) -> str:
        """Never finishes (reports progress once first); with ticks, reports progress that many times, `every`
        seconds apart, and then answers."""
        import anyio

        await ctx.report_progress(1, 2, "started")
        if args.startedfile:
            Path(args.startedfile).write_text(str(os.getpid()))
        if ticks <= 0:
            await anyio.sleep_forever()
        for i in range(ticks):
            await anyio.sleep(every)
            await ctx.report_progress(i + 1, ticks, "ticking")
        return f"done after {ticks} ticks"

    @server.tool()
    def crash() -> str:
        """Exits the process in the middle of the call (once)."""
        if args.crashfile and not Path(args.crashfile).exists():
            Path(args.crashfile).write_text("crashed")
            os._exit(3)
        return "alive again"

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="stdio", choices=["stdio", "http", "hang", "garbage", "die"])
    parser.add_argument("--pidfile")
    parser.add_argument("--crashfile")
    parser.add_argument("--startedfile")
    args = parser.parse_args()
    if args.pidfile:
        Path(args.pidfile).write_text(str(os.getpid()))
    if args.mode == "die":
        sys.stderr.write("starting up\ncannot open the database: it is locked\n")
        sys.stderr.flush()
        sys.exit(3)
    if args.mode == "hang":
        sys.stderr.write("hanging: reading stdin, answering nothing\n")
        sys.stderr.flush()
        for _ in sys.stdin:
            pass
        return
    if args.mode == "garbage":
        print("this is not JSON-RPC", flush=True)
        print("{not json either", flush=True)
    server = build(args)
    if args.mode == "http":
        serve_http(server)
    else:
        server.run("stdio")


def serve_http(server) -> None:
    import socket

    import anyio
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    app = server.streamable_http_app(host="127.0.0.1")
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    userver = uvicorn.Server(config)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(userver.serve, [sock])
            while not userver.started:
                await anyio.sleep(0.01)
            print(f"listening on http://127.0.0.1:{port}/mcp", flush=True)

    anyio.run(run)


if __name__ == "__main__":
    main()
