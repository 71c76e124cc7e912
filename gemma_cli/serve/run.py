"""Running the app on uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import sys
import threading

from gemma_cli.errors import GemmaError

GRACE_SECONDS = 5.0  # on SIGINT/SIGTERM, running requests get this long to finish; then they end with an error
ENDING_SECONDS = 10.0  # then their answers get this long to be sent before uvicorn cancels what is left


def listen(host: str, port: int):
    """The listening socket, bound before the model loads: a port in use is said at once."""

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except socket.gaierror as e:
        sock.close()
        raise GemmaError(f"cannot listen on {host}:{port}: {host} is not a known host name ({e.strerror or e})",
                         "give --host an address of this machine: 127.0.0.1 (this machine only) or 0.0.0.0 (all)") from None
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRNOTAVAIL:
            hint = f"{host} is not an address of this machine: give --host 127.0.0.1, 0.0.0.0 or one of its own"
        elif e.errno == errno.EACCES and port < 1024:
            hint = "ports below 1024 need root: pick another --port (0 takes any free one)"
        else:
            hint = "pick another --port (0 takes any free one), or stop what uses it"
        raise GemmaError(f"cannot listen on {host}:{port}: {e.strerror or e}", hint) from None
    sock.listen(2048)  # a client may connect as soon as it reads the startup line, before uvicorn accepts
    return sock


def serve_engine(engine, n: int, settings, sock, *, host: str, model: str, api_key: str | None, queue: int,
                 max_body: int, verbose: bool = False, grace: float = GRACE_SECONDS, only_name: bool = False) -> None:
    """`only_name`: the user named the model (--name): requests must use that id, not the file's names."""
    # lazy: uvicorn, only once the socket is bound (a port in use is said at once)
    import uvicorn

    # lazy: starlette and the engine (serve.app, serve.chat, serve.scheduler), only once the socket is bound
    from gemma_cli.serve.app import Served, create_app
    from gemma_cli.serve.chat import Builder
    from gemma_cli.serve.scheduler import Scheduler

    scheduler = Scheduler(engine, n, max_waiting=queue)
    aliases = set() if only_name else {engine.path.name, engine.path.stem, str(engine.path),
                                       str(engine.info.meta.get("general.name") or "")}
    settings.slots = n  # the most choices (`n`) one request may ask for
    served = Served(scheduler, Builder(engine, settings), model, aliases - {""}, api_key=api_key, max_body=max_body)
    app = create_app(served)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="info" if verbose else "warning", access_log=verbose,
                            timeout_graceful_shutdown=grace + ENDING_SECONDS, lifespan="off", server_header=False)
    server = _quiet_exit_server(config, scheduler, grace)
    scheduler.start()
    shown = f"[{host}]" if ":" in host else host
    media = engine.media
    media = " and ".join(k for k, on in (("images", media and media.vision), ("audio", media and media.audio)) if on)
    sys.stderr.write(f"gemma serve: {model} on http://{shown}:{bound}/v1 ({n} parallel"
                     + (f", {media}" if media else "") + ("" if api_key else ", no API key") + "); Ctrl-C stops\n")
    sys.stderr.flush()
    try:
        server.run(sockets=[sock])
    finally:
        scheduler.close()  # already done by the server's shutdown, unless it failed to start
        sock.close()
        sys.stderr.write("gemma serve: stopped\n")


def _quiet_exit_server(config, scheduler, grace: float):
    """uvicorn's server, with a shutdown that gives every client an answer.

    On SIGINT/SIGTERM it stops listening, says so on stderr, and lets the requests in flight run for `grace`
    seconds; then the scheduler fails what still runs or waits (`Scheduler.end_all`): a stream gets an error
    event and its end, a plain request a 503 error object, and uvicorn never has to cancel a request's task.
    A second signal ends them at once. The signal ends `run()` instead of being raised again after it (which
    would kill the process before the scheduler is closed): the command then exits 0."""

    # lazy: uvicorn, only once the socket is bound (a port in use is said at once)
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            signals = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame) -> None:
            if self.should_exit:  # a second signal: no more grace
                scheduler.end_all()
            self.should_exit = True

        async def shutdown(self, sockets=None) -> None:
            running = scheduler.running + scheduler.waiting
            if running:
                then = f"get {grace:g} s to finish (Ctrl-C again ends them now)" if grace else "end now"
                sys.stderr.write(f"gemma serve: stopping; {running} request(s) in flight {then}\n")
                sys.stderr.flush()
            cut = asyncio.get_running_loop().call_later(grace, scheduler.end_all)
            try:
                await super().shutdown(sockets)
            finally:
                cut.cancel()
                # the decoding thread stops while the event loop still runs: its last events find a loop to go to
                await asyncio.to_thread(scheduler.close)

    return Server(config)
