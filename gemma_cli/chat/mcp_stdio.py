"""A stdio MCP server's process, started before the MCP SDK is imported, and the transport over its pipes.

Importing the SDK takes seconds; a stdio server started only after that import could not overlap its own
start with it. So `spawn` starts the process with anyio alone (the command found on PATH, the environment with
the config's `env` over ours, its `cwd`, stderr into its log, a process group of its own) and `piped` later
hands its stdin/stdout to the SDK's session as the SDK's own `mcp.client.stdio.stdio_client` does:
newline-delimited JSON-RPC both ways through memory object streams, a line that is not JSON-RPC passed on as
the exception the session logs and skips, and the MCP shutdown (stdin closed, a grace period, SIGTERM to the
group, then SIGKILL).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from gemma_cli.errors import GemmaError

GRACE = 2.0  # seconds a server has to exit once its stdin closes (the SDK's PROCESS_TERMINATION_TIMEOUT)
TERM_GRACE = 2.0  # then after SIGTERM, before SIGKILL (the SDK's FORCE_KILL_TIMEOUT)
FLUSH = 0.5  # for the writer to send what it accepted before stdin closes

logger = logging.getLogger("mcp.client.stdio")  # the SDK's logger: its records go where the SDK's go


class SpawnFailed(GemmaError):
    pass


async def spawn(command: str, args: list[str], env: dict[str, str], cwd: str | None, errlog):
    """The server's process, running; SpawnFailed names a command not on PATH or a missing cwd."""
    # lazy: anyio (small, unlike the SDK), only when a stdio server starts; keeps gemma --help fast
    import anyio

    full = dict(os.environ) | env
    found = shutil.which(command, path=full.get("PATH"))
    if found is None:
        raise SpawnFailed(f"command {command!r} not found (searched PATH={full.get('PATH', '')})")
    if cwd and not Path(cwd).expanduser().is_dir():
        raise SpawnFailed(f"cwd {cwd} is not a directory")
    return await anyio.open_process([found, *args], env=full, stderr=errlog,
                                    cwd=str(Path(cwd).expanduser()) if cwd else None, start_new_session=True)


@asynccontextmanager
async def piped(process):
    """(read stream, write stream) of SessionMessages over a running server's stdout/stdin; on exit the
    server is stopped. Mirrors the SDK's `stdio_client` after its spawn."""
    # lazy: the MCP SDK, imported by now (the host waited for it); keeps gemma --help fast
    import anyio
    import anyio.lowlevel
    from anyio.streams.text import TextReceiveStream
    from mcp.shared.message import SessionMessage

    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
    shutting_down = False
    writer_done = anyio.Event()

    async def read_stdout() -> None:
        try:
            async with read_writer:
                try:
                    buffer = ""
                    async for chunk in TextReceiveStream(process.stdout, encoding="utf-8"):
                        lines = (buffer + chunk).split("\n")
                        buffer = lines.pop()
                        for line in lines:
                            try:
                                await read_writer.send(_parsed(line))
                            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                                return
                finally:
                    await _drain(process)
        except anyio.ClosedResourceError:
            pass
        except (anyio.BrokenResourceError, ConnectionError):
            if not shutting_down:
                logger.exception("Reading from the MCP server's stdout failed mid-session")

    async def write_stdin() -> None:
        try:
            async with write_reader:
                async for message in write_reader:
                    text = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send((text + "\n").encode("utf-8"))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await read_writer.aclose()  # the session sees the connection end, not a request hanging forever
        finally:
            writer_done.set()

    async def shutdown() -> None:
        read_stream.close()
        write_stream.close()
        with anyio.move_on_after(FLUSH):
            await writer_done.wait()
        await stop(process)
        for stream in (read_stream, write_stream, read_writer, write_reader):
            await stream.aclose()
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_stdout)
        tg.start_soon(write_stdin)
        try:
            yield read_stream, write_stream
        finally:
            shutting_down = True
            with anyio.CancelScope(shield=True):
                await shutdown()
            tg.cancel_scope.cancel()
    await anyio.lowlevel.cancel_shielded_checkpoint()


async def stop(process) -> None:
    """The MCP shutdown: stdin closed, GRACE to exit, SIGTERM to its group, TERM_GRACE, SIGKILL."""
    await _close(process.stdin)
    for sig, grace in ((None, GRACE), (signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, TERM_GRACE)):
        if sig is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
        if await _exited(process, grace):
            break
    else:
        logger.warning("MCP server process %d is still alive after SIGKILL; abandoning it", process.pid)
    await _close(process.stdout)
    transport = getattr(getattr(process, "_process", None), "_transport", None)  # asyncio's, as the SDK closes it
    if callable(getattr(transport, "close", None)):
        with suppress(PermissionError):
            transport.close()


def _parsed(line: str):
    # lazy: the MCP SDK's types, imported by now; keeps gemma --help fast
    import mcp_types
    from mcp.shared.message import SessionMessage

    try:
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as e:
        logger.exception("Failed to parse JSONRPC message from server")
        return e


async def _drain(process) -> None:
    """Read and drop the rest of stdout, so a server flushing output is not blocked from exiting."""
    import anyio  # lazy: see spawn

    with anyio.CancelScope(shield=True):
        with suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, ConnectionError,
                      OSError):
            while True:
                await process.stdout.receive()


async def _close(stream) -> None:
    import anyio  # lazy: see spawn

    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.aclose()


async def _exited(process, timeout: float) -> bool:
    """Whether the process exited within `timeout` (its returncode polled, as the SDK does)."""
    import anyio  # lazy: see spawn

    deadline = anyio.current_time() + timeout
    while process.returncode is None:
        if anyio.current_time() >= deadline:
            return False
        await anyio.sleep(0.01)
    return True
