"""`gemma serve`: an OpenAI-compatible server on one loaded model (Starlette on uvicorn)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gemma_cli.commands import options as opt
from gemma_cli.errors import UsageError

EXAMPLES = """
Endpoints: POST /v1/chat/completions (streamed or not; tools, thinking, response_format,
images, audio), POST /v1/responses (OpenAI's Responses API: Codex CLI), POST /v1/messages and
/v1/messages/count_tokens (Anthropic's Messages API: Claude Code), POST /v1/audio/transcriptions
and /v1/audio/translations, GET /v1/models, GET /health. Requests decode together on --parallel
sequences; a client continuing its conversation reuses its KV cache; more than --queue waiting
requests get 503 + Retry-After.

Examples:

\b
  gemma serve -m e4b                                  (http://127.0.0.1:8080/v1)
  gemma serve -m ./gemma-4-E4B-it-Q4_K_M.gguf --parallel 8 --ctx 8192
  gemma serve --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"
  OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=none python my_agent.py
  ANTHROPIC_BASE_URL=http://127.0.0.1:8080 ANTHROPIC_API_KEY=none ANTHROPIC_MODEL=e4b claude -p "hi"
  gemma serve -m e4b --grace 60                       (Ctrl-C: answers in flight get 60 s)
  gemma batch prompts.jsonl -o out.jsonl --endpoint http://127.0.0.1:8080/v1
"""

Ctx = Annotated[Optional[int], typer.Option("--ctx", "-c", min=64, help="Context window of each request, prompt and answer (default 8192).")]
Verbose = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's log and each request on stderr.")]


@opt.shared("model", "mmproj", "image_tokens", *opt.SAMPLING, *opt.PENALTIES, *opt.MACHINE, "yes", "no_cache", "verbose",
            ctx=Ctx, verbose=Verbose)
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but 127.0.0.1/localhost needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")] = 8080,
    parallel: Annotated[Optional[int], typer.Option("--parallel", "-p", min=1, max=255, help="Requests decoded together (default: 4 on CPU, 16 with a GPU).")] = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="GEMMA_SERVE_API_KEY", show_envvar=True, help="Require Authorization: Bearer KEY (or Anthropic's x-api-key: KEY) on /v1/*.")] = None,
    insecure_no_key: Annotated[bool, typer.Option("--insecure-no-key", help="Listen on a non-local --host without a key (anyone who can reach it may use it).")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="The model id clients use (default: --model as given, or the file's name).")] = None,
    queue: Annotated[int, typer.Option("--queue", min=0, max=100000, help="Requests that may wait for a slot; more get 503 with Retry-After.")] = 64,
    allow_files: Annotated[bool, typer.Option("--allow-files", help="Let requests name local files (file:// URLs) for images and audio.")] = False,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", min=0.001, help="Largest request body, in MiB.")] = 64.0,
    max_media_mb: Annotated[float, typer.Option("--max-media-mb", min=0.001, help="Largest image or audio in a request, in MiB (decoded).")] = 25.0,
    think: Annotated[bool, typer.Option("--think/--no-think", help="Thinking for requests that do not say (reasoning_effort, chat_template_kwargs.enable_thinking).")] = False,
    grace: Annotated[float, typer.Option("--grace", min=0, max=3600, metavar="SECONDS", help="On Ctrl-C or SIGTERM, seconds the requests in flight get to finish; then they end with an error (a second Ctrl-C ends them at once).")] = 5.0,
    *,
    o: opt.Common,
) -> None:
    """Serve the model to other programs: an OpenAI-compatible API on 127.0.0.1."""
    # lazy: config loads only when the command runs; keeps gemma --help fast
    from gemma_cli.store import config

    if not is_loopback(host) and not api_key and not insecure_no_key:
        raise UsageError(f"--host {host} lets other machines reach the server, so it needs --api-key KEY",
                         "pass --api-key (or --insecure-no-key to serve anyone who can connect)")
    # lazy: serve.run loads only when the command runs; keeps gemma --help fast
    from gemma_cli.serve.run import listen, serve_engine

    sock = listen(host, port)  # a port in use fails now, before the model loads
    settings = config.load()
    engine, n, label = _open(settings, o.model, parallel, o.ctx, o.mmproj, o.image_tokens, o.threads, o.gpu_layers,
                             o.yes, o.verbose)
    # lazy: loading (the engine) and serve.chat load only when the command runs; keeps gemma --help fast
    from gemma_cli.commands.loading import attach_prompt_cache, sampling_of
    from gemma_cli.serve.chat import Settings

    attach_prompt_cache(engine, settings, not o.no_cache)  # slots kept when the server stops, restored on a match

    sampling = sampling_of(settings, o.temperature, o.top_p, o.top_k, o.seed, **opt.given(o, opt.PENALTIES))
    limits = Settings(sampling, max_tokens=settings.pick("max_tokens", o.max_tokens), think=think,
                      allow_files=allow_files, max_media_bytes=int(max_media_mb * 1024 * 1024))
    if not is_loopback(host) and not api_key:
        sys.stderr.write(f"WARNING: serving on {host} WITHOUT an API key (--insecure-no-key): anyone who can reach "
                         "this port can use the model\n")
    serve_engine(engine, n, limits, sock, host=host, model=name or label, api_key=api_key, queue=queue,
                 max_body=int(max_body_mb * 1024 * 1024), verbose=o.verbose, grace=grace,
                 only_name=name is not None)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`: localhost, or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    # lazy: ipaddress, only when serve runs; keeps gemma --help fast
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def default_parallel(gpu: bool, ctx: int) -> int:
    """4 requests at a time on a CPU, 16 on a GPU, fewer when each has a context over 8192 tokens."""
    base = 16 if gpu else 4
    return max(1, min(base, base * 8192 // ctx))


def _open(settings, model, parallel, ctx, mmproj, image_tokens, threads, gpu_layers, yes, verbose):
    """The engine: n slots (plus the staging sequence) of `ctx` tokens each, the projector loaded when there is one."""
    # lazy: commands.loading, commands.describe load only when the command runs; keeps gemma --help fast
    from gemma_cli.commands import loading
    from gemma_cli.commands.describe import check_budget

    check_budget(image_tokens)
    resolved = loading.resolve(settings, model, yes=yes, mmproj=mmproj, gpu_layers=gpu_layers)
    per_slot = resolved.context(settings.pick("ctx", ctx))
    gpu_layers = resolved.gpu_layers(per_slot * ((parallel or default_parallel(True, per_slot)) + 1))
    n = parallel or default_parallel(gpu_layers != 0, per_slot)
    if resolved.mmproj is not None and not resolved.mmproj.is_file():
        if mmproj is not None:
            raise UsageError(f"--mmproj {mmproj}: file not found", "pass the model's mmproj-*.gguf")
        resolved.mmproj = None
    # swa_full: the sliding-window layers keep every position, so a slot's cache can be cut back
    # to any earlier turn of its conversation and reused (llama-server's --swa-full).
    engine = loading.open_engine(resolved, ctx=per_slot * (n + 1), threads=settings.pick("threads", threads),
                                 verbose=verbose, load_mmproj=resolved.mmproj is not None, image_tokens=image_tokens,
                                 n_seq=n + 1, gpu_layers=gpu_layers, swa_full=True, what=f"{n} parallel requests")
    name = resolved.name
    label = name if name and not name.endswith(".gguf") and not Path(name).exists() else resolved.path.stem
    return engine, n, label


def register(app: typer.Typer) -> None:
    app.command("serve", epilog=EXAMPLES)(serve)
