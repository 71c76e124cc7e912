"""`gemma batch`: a JSONL file of prompts in, a JSONL file of results out; resumable, parallel."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from gemma_cli.batch.remote import DEFAULT_RETRIES
from gemma_cli.commands import options as opt
from gemma_cli.errors import UsageError

EXAMPLES = """
Each input line is {"id": …, "prompt": "…"} (or "messages"; optional "system", "images",
"videos", "audio", "think", "keep_thinking", "think_budget", "tools", "schema", "max_tokens",
"temperature", "top_p", "top_k", "seed", "stop"),
or an OpenAI Batch API line {"custom_id": …, "method": "POST", "url": "/v1/chat/completions",
"body": {…}}. Results mirror the input's form, one line per input line, in the order they
finish. Running the same command again resumes: answered ids are skipped, failed ones retried.

Exit status: 0 all lines answered, 3 some lines failed (see their "error"), 1 the run
could not go on, 2 bad usage, 130/143 stopped by SIGINT/SIGTERM (run again to resume).

Examples:

\b
  gemma batch prompts.jsonl -o results.jsonl
  gemma batch prompts.jsonl -o results.jsonl --parallel 16 --temperature 0
  gemma batch examples/batch-openai.jsonl -o out.jsonl -m e4b
  cat prompts.jsonl | gemma batch - -o results.jsonl --system "Answer in one sentence."
  gemma batch prompts.jsonl -o results.jsonl --endpoint http://gpu-box:8000/v1 --concurrency 64
  gemma batch prompts.jsonl -o results.jsonl --endpoint http://127.0.0.1:8080/v1 --api responses
  gemma batch rewrite.jsonl -o out.jsonl --draft ngram  (one line at a time, drafting from the prompt)
  gemma batch prompts.jsonl -o results.jsonl --restart          (redo every line)
"""

EXIT_FAILED_LINES = 3
DEFAULT_CONCURRENCY = 8


Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Model: a name (e4b), a .gguf path or hf:OWNER/REPO/FILE.gguf; with --endpoint, the served model's name.")]
Ctx = Annotated[Optional[int], typer.Option("--ctx", "-c", min=64, help="Context window of each line, prompt and answer (default 8192).")]
Draft = Annotated[Optional[str], typer.Option("--draft", metavar="off|auto|ngram|PATH", help="Speculative decoding, one line at a time (instead of --parallel): auto, the model's installed MTP drafter; ngram, prompt lookup for copy-heavy lines; PATH, a gemma4-assistant GGUF. Default off: parallel sequences give a batch more throughput.")]


@opt.shared("model", "mmproj", "image_tokens", *opt.SAMPLING, *opt.PENALTIES, *opt.MACHINE, *opt.DRAFTING, "yes",
            "no_cache", "verbose", model=Model, ctx=Ctx, draft=Draft)
def batch(
    context: typer.Context,  # (`ctx` is --ctx)
    source: Annotated[str, typer.Argument(metavar="INPUT", help="JSON Lines file of prompts; - reads stdin.")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", metavar="OUT", help="Results file (JSON Lines), appended to and resumed; default stdout (no resume).")] = None,
    parallel: Annotated[Optional[int], typer.Option("--parallel", "-p", min=1, max=255, help="Lines decoded together in one model (default: 8 on CPU, 16 with a GPU, fewer for a large --ctx).")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first line that fails (exit 3).")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Empty the results file and run every line again.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")] = False,
    endpoint: Annotated[Optional[str], typer.Option("--endpoint", metavar="URL", help="Send lines to an OpenAI-compatible server instead (vLLM, llama-server, Ollama, Bedrock).")] = None,
    api: Annotated[str, typer.Option("--api", metavar="chat|responses", help="The --endpoint API the lines are sent as: chat (POST …/chat/completions) or responses (POST …/responses, each line's request and answer translated).")] = "chat",
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="GEMMA_API_KEY", show_envvar=True, help="Bearer token for --endpoint.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=1024, help="Requests in flight with --endpoint.")] = DEFAULT_CONCURRENCY,
    retries: Annotated[int, typer.Option("--retries", min=0, max=1000, help="Retries per request on 429, 5xx, timeouts and a server away (backoff 0.5 s doubling to 8 s, honouring Retry-After up to 120 s): the default waits 2-3 minutes. A server that has never answered fails the run in about 3 s.")] = DEFAULT_RETRIES,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds to wait for one answer from --endpoint.")] = 600.0,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt for lines without one (evaluated once, shared).")] = None,
    think: Annotated[Optional[bool], typer.Option("--think/--no-think", help="Let the model think first, for lines that do not say (default off).")] = None,
    think_budget: Annotated[Optional[int], typer.Option("--think-budget", min=0, metavar="N", help="Close each thought after N tokens and answer (as llama.cpp's --reasoning-budget); a line's \"think_budget\" wins.")] = None,
    deterministic: Annotated[Optional[bool], typer.Option("--deterministic/--no-deterministic", help="CPU matmul kernels that keep each line's greedy or seeded output independent of --parallel and of the lines beside it (off by default: on the CPU they cost about 25 % more CPU time on prompt-heavy lines, none measurable on decode-heavy ones: bench/kernels.py; prompts are evaluated in pieces of at most 63 rows, a few % more; at --parallel 1 each decode step also carries a throwaway row, about 17 % more CPU time).")] = None,
    *,
    o: opt.Common,
) -> None:
    """Run a JSONL file of prompts: parallel in one model or against a server, crash-safe and resumable."""
    # lazy: batch, config load only when the command runs; keeps gemma --help fast
    from gemma_cli import batch as jobs
    from gemma_cli.commands.loading import sampling_of
    from gemma_cli.store import config

    if source != "-" and not Path(source).is_file():
        raise UsageError(f"input file not found: {source}", "pass a .jsonl file, or - for stdin")
    if output is not None and output != "-" and source != "-" and Path(output).resolve() == Path(source).resolve():
        raise UsageError("the results file is the input file", "write results to another file with -o")
    jobs.check_destination(output)  # a bad -o fails now, not after the model has loaded
    api = api.strip().lower()
    if api not in ("chat", "responses"):
        raise UsageError(f"--api {api!r} is not an API lines can be sent as", "use --api chat or --api responses")
    if api != "chat" and not endpoint:
        raise UsageError(f"--api {api} chooses what --endpoint speaks; without --endpoint lines run on the local engine",
                         "add --endpoint URL, or drop --api")
    if not endpoint:
        _refuse_remote_only(context)
    if endpoint:
        _refuse_local_only(dict(vars(o), draft=o.draft if _drafting(o.draft) else None, parallel=parallel,
                                deterministic=deterministic, think_budget=think_budget))
    if _drafting(o.draft) and parallel not in (None, 1):
        raise UsageError(f"--draft decodes one line at a time, so it does not go with --parallel {parallel}",
                         "drop --parallel (or use --draft off for parallel sequences)")
    settings = config.load()
    overrides = {k: getattr(o, k) for k in (*opt.SAMPLING, *opt.PENALTIES) if getattr(o, k) is not None}
    # An endpoint samples for itself (it gets the flags as overrides): no engine, so no llama_cpp, on that path.
    sampling = None if endpoint else sampling_of(settings, o.temperature, o.top_p, o.top_k, o.seed,
                                                 **opt.given(o, opt.PENALTIES))
    defaults = jobs.Defaults(sampling,
                             max_tokens=settings.pick("max_tokens", o.max_tokens), think=bool(think), system=system,
                             think_budget=think_budget, overrides=overrides)
    if endpoint:
        # lazy: remote loads only when the command runs; keeps gemma --help fast
        from gemma_cli.batch.remote import Endpoint

        defaults.model = o.model
        target = Endpoint(endpoint, api_key, timeout=timeout, retries=retries, model=o.model, api=api)
    else:
        engine, n = _open(settings, o.model, parallel, o.ctx, deterministic, o.mmproj, o.image_tokens, o.threads,
                          o.gpu_layers, o.yes, o.verbose, o.draft, o.draft_max, cache=not o.no_cache)
    # Only now: --restart's truncation and the retry of failed lines (their records are dropped)
    # must not happen for a run that cannot start (a wrong model name, a bad URL).
    out = jobs.Output(output, restart=restart)
    view = _View(quiet, out)
    total = jobs.count_lines(source) if view.bar else None
    kw = dict(fail_fast=fail_fast, total=total, progress=view.update, notify=view.note)
    try:
        with view:
            if endpoint:
                summary = jobs.run_remote(target, concurrency, source, out, defaults, **kw)
            else:
                summary = jobs.run_local(engine, n, source, out, defaults, **kw)
    finally:
        out.close()
    view.summary(summary)
    # SystemExit, not typer.Exit: `main()` runs the app with standalone_mode=False, where click
    # turns typer.Exit into a return value and the status would be lost.
    if summary.stopped in ("interrupted", "terminated"):
        raise SystemExit(130 if summary.stopped == "interrupted" else 143)
    if summary.failed:
        raise SystemExit(EXIT_FAILED_LINES)


# The local engine's options, each refused with --endpoint rather than ignored: {name: (flag, why)}.
# --draft off, --no-deterministic and --yes pass: they ask for nothing that a server run leaves undone.
LOCAL_ONLY = {
    "draft": ("--draft", "runs on the local engine; with --endpoint the server decides how it decodes"),
    "draft_max": ("--draft-max", "sets the local drafter's steps; with --endpoint the server decides how it decodes"),
    "mmproj": ("--mmproj", "is the local engine's projector; with --endpoint the server uses its own"),
    "image_tokens": ("--image-tokens", "sets the local engine's image budget; with --endpoint the server has its own"),
    "think_budget": ("--think-budget", "runs on the local engine; OpenAI-compatible servers have no field for it"),
    "ctx": ("--ctx", "sets the local engine's context; with --endpoint the server has its own"),
    "threads": ("--threads", "sets the local engine's CPU threads; with --endpoint the server has its own"),
    "gpu_layers": ("--gpu-layers", "sets the local engine's GPU offload; with --endpoint the server has its own"),
    "parallel": ("--parallel", "sets the local engine's sequences; with --endpoint, --concurrency sets the requests "
                 "in flight"),
    "deterministic": ("--deterministic", "picks the local engine's matmul kernels; with --endpoint the server has "
                      "its own"),
    "no_cache": ("--no-cache", "skips the local engine's prompt cache; with --endpoint the server has its own"),
    "verbose": ("--verbose", "shows the local engine's (llama.cpp's) log; with --endpoint there is none"),
}


def _refuse_local_only(given: dict) -> None:
    """A usage error for the first LOCAL_ONLY option given on the command line (a flag: None or False when not;
    a setting from the config file never gets here)."""
    for name, (flag, why) in LOCAL_ONLY.items():
        if given[name] is not None and given[name] is not False:
            raise UsageError(f"{flag} {why}", f"drop {flag} (or --endpoint)")


# --endpoint's own options, refused without it rather than ignored: {name: flag}.
REMOTE_ONLY = {"concurrency": "--concurrency", "retries": "--retries", "timeout": "--timeout", "api_key": "--api-key"}


def _refuse_remote_only(context: typer.Context) -> None:
    """A usage error for the first REMOTE_ONLY option typed on the command line (GEMMA_API_KEY in the
    environment is not typed: it passes)."""
    for name, flag in REMOTE_ONLY.items():
        if context.get_parameter_source(name).name == "COMMANDLINE":
            more = "; --parallel sets the lines decoded together on it" if name == "concurrency" else ""
            raise UsageError(f"{flag} is for --endpoint; without it lines run on the local engine{more}",
                             f"add --endpoint URL, or drop {flag}")


def _drafting(draft: str | None) -> bool:
    return draft is not None and draft.strip().lower() != "off"


def default_parallel(gpu: bool, ctx: int) -> int:
    """8 sequences on a CPU, 16 on a GPU, fewer when each line's context is over 8192 tokens."""
    base = 16 if gpu else 8
    return max(1, min(base, base * 8192 // ctx))


def _open(settings, model, parallel, ctx, deterministic, mmproj, image_tokens, threads, gpu_layers, yes, verbose,
          draft, draft_max, cache: bool = False):
    """The engine for a local run: n parallel sequences (plus the staging one), each `ctx` tokens;
    with --draft, one sequence and the drafter."""
    # lazy: commands.loading, commands.describe load only when the command runs; keeps gemma --help fast
    from gemma_cli.commands import loading
    from gemma_cli.commands.describe import check_budget

    check_budget(image_tokens)
    drafting = _drafting(draft)
    resolved = loading.resolve(settings, model, yes=yes, mmproj=mmproj, gpu_layers=gpu_layers)
    per_line = resolved.context(settings.pick("ctx", ctx))
    slots = 1 if drafting else parallel or default_parallel(True, per_line)  # as many as a GPU run takes
    gpu_layers = resolved.gpu_layers(per_line * (slots + 1))
    n = 1 if drafting else parallel or default_parallel(gpu_layers != 0, per_line)
    n_seq = 1 if drafting else n + 1  # the slots and the staging sequence (engine.parallel)
    engine = loading.open_engine(resolved, ctx=per_line * n_seq, threads=settings.pick("threads", threads),
                                 verbose=verbose, image_tokens=image_tokens, n_seq=n_seq, gpu_layers=gpu_layers,
                                 batch_invariant=bool(deterministic),
                                 what="speculative decoding" if drafting else f"{n} parallel sequences")
    if drafting:
        loading.attach_draft(engine, resolved, draft, draft_max)
    loading.attach_prompt_cache(engine, settings, cache)  # the lines' shared head (system prompt, tools)
    return engine, n


class _View:
    """Progress bar (stderr, terminal only) and the final summary."""

    def __init__(self, quiet: bool, output):
        # lazy: render loads only when the command runs; keeps gemma --help fast
        from gemma_cli.render import is_terminal

        self.quiet = quiet
        self.output = output
        self.bar = not quiet and is_terminal(sys.stderr)
        self._progress = None
        self._task = None
        self._last = 0.0
        self._notes = []
        if not quiet and output.path is not None:
            if output.repaired:
                self.note(f"repaired {output.path}: dropped a torn last line ({output.repaired} bytes)")
            if output.kept:
                self.note(f"resuming {output.path}: {output.kept} lines already answered"
                          + (f", {output.retrying} failed lines to retry" if output.retrying else ""))

    def __enter__(self) -> "_View":
        if self.bar:
            # lazy: rich.progress, only when a progress bar shows; keeps gemma --help fast
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            # lazy: render loads only when the command runs; keeps gemma --help fast
            from gemma_cli.render import err_console

            self._progress = Progress(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[failed]}"), TextColumn("{task.fields[retried]}"),
                                      TextColumn("{task.fields[tps]}"),
                                      TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                      console=err_console(), transient=True)
            self._progress.start()
            self._task = self._progress.add_task("batch", total=None, failed="", retried="", tps="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def update(self, s) -> None:
        if self._progress is None:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and (s.total is None or s.done < s.total):
            return
        self._last = now
        out = max(s.tokens_out, s.live_out)
        tps = f"{out / s.seconds:.1f} tok/s" if s.seconds > 0 and out else ""
        self._progress.update(self._task, total=s.total, completed=s.done,
                              failed=f"[red]{s.failed} failed[/]" if s.failed else "",
                              retried=f"[yellow]{s.retried} retried[/]" if s.retried else "", tps=tps)

    def note(self, message: str) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(message, highlight=False, markup=False)
        else:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()

    def summary(self, s) -> None:
        if self.quiet:
            return
        parts = [f"{s.ok} ok", f"{s.failed} failed", f"{s.skipped} skipped"]
        text = (f"batch: {s.read} lines: {', '.join(parts)}; tokens {s.tokens_in} in, {s.tokens_out} out; "
                f"{s.tps:.1f} tok/s; {s.seconds:.1f} s" + (f"; {s.retried} requests retried" if s.retried else ""))
        if s.draft:
            rate = s.accepted / s.drafted if s.drafted else 0.0
            text += f"; {s.draft} drafts: {s.accepted} of {s.drafted} tokens accepted ({rate:.0%})"
        sys.stderr.write(text + "\n")
        where = self.output.path or "stdout"
        if s.stopped in ("interrupted", "terminated"):
            sys.stderr.write(f"stopped ({s.stopped}): run the same command again to resume {where}\n")
        elif s.stopped == "fail-fast":
            sys.stderr.write("stopped at the first failed line (--fail-fast); see its \"error\" in the results\n")
        elif s.failed:
            sys.stderr.write(f"{s.failed} lines failed: each has an \"error\" record in {where}; "
                             "run the same command again to retry them\n")
        sys.stderr.flush()


def register(app: typer.Typer) -> None:
    app.command("batch", epilog=EXAMPLES)(batch)

