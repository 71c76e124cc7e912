"""`gemma models`: list, pull, rm, path; and `ensure_model`, the download-on-demand other commands use."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Annotated, Iterator

import typer

from gemma_cli.commands import options as opt
from gemma_cli.errors import GemmaError

LIST_EXAMPLES = """
Examples:

\b
  gemma models                       (every model: size, downloaded, the one recommended here ★)
  gemma models --installed
  gemma models --json | jq '.models[] | select(.installed) | .path'
"""
PULL_EXAMPLES = """
Examples:

\b
  gemma models pull e4b              (Gemma 4 E4B, Q4_K_M, with its image/audio projector)
  gemma models pull 31b:q8_0 --draft (and the MTP drafter for faster answers)
  gemma models pull 12b:qat          (Google's quantization-aware Q4_0)
  gemma models pull hf:unsloth/gemma-4-E2B-it-GGUF/gemma-4-E2B-it-Q8_0.gguf

An interrupted pull resumes where it stopped; every file is checked against the Hub's sha256.
HF_TOKEN, HF_ENDPOINT (a mirror) and HF_HUB_OFFLINE are honoured.
"""
RM_EXAMPLES = """
Examples:

\b
  gemma models rm e4b                (its projector and drafter too, unless another e4b uses them)
  gemma models rm 31b:bf16
"""
PATH_EXAMPLES = """
Examples:

\b
  gemma models path e4b
  llama-server -m "$(gemma models path e4b)" --mmproj "$(gemma models path e4b --mmproj)"
"""

Name = Annotated[str, typer.Argument(help="A model name (e4b, 31b:q8_0, 12b:qat) or hf:OWNER/REPO/FILE.gguf.")]


# ---------------------------------------------------------------------------------------------
# Download on demand
# ---------------------------------------------------------------------------------------------


def ensure_model(name: str | None, *, yes: bool, need_mmproj: bool = False, need_draft: bool = False,
                 settings=None, hw=None):
    """The model's files, downloading them if needed: asks on a terminal, `yes` skips the question,
    elsewhere a one-line error with the exact pull command. `settings` and `hw`: already read, not again."""
    from gemma_cli.store import models  # lazy: keeps `gemma --help` fast

    try:
        return models.locate(name, need_mmproj=need_mmproj, need_draft=need_draft, settings=settings, hw=hw)
    except models.ModelNotInstalled as missing:
        from gemma_cli.store import download  # lazy: keeps `gemma --help` fast

        if download.offline():  # asking would only end in a refused download
            raise GemmaError(missing.message, f"HF_HUB_OFFLINE is set: unset it, then run {missing.command}") from None
        interactive = _is_tty(sys.stdin) and _is_tty(sys.stderr)
        if not yes:
            if not interactive:
                raise GemmaError(missing.message, f"download it with: {missing.command}  (or pass --yes)") from None
            if not _ask(missing):
                raise GemmaError(f"{missing.name} is not downloaded", f"download it later with: {missing.command}") from None
        with progress_reporter() as report:
            models.pull(missing.name, draft=missing.draft, progress=report)
        return models.locate(missing.name, need_mmproj=need_mmproj, need_draft=need_draft, settings=settings)


def _is_tty(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


def _ask(missing) -> bool:
    from gemma_cli.render import err_console  # lazy: keeps `gemma --help` fast
    from gemma_cli.store import (
        download,  # lazy: keeps `gemma --help` fast
        models,
    )

    sizes = []
    for f in missing.files:
        size = f.size
        if not size:  # an hf: name: ask the Hub
            with contextlib.suppress(GemmaError):
                size = download.metadata(f.repo, f.name).size or 0
        sizes.append((f, size))
    total = sum(s for _, s in sizes)
    console = err_console()
    console.print(f"[b]{missing.name}[/b] is not downloaded yet.")
    for f, size in sizes:
        console.print(f"  {f.repo}/{f.name}  {models.human_size(size) if size else 'size unknown'}")
    console.print(f"  into {missing.destination}")
    shown = f" ({models.human_size(total)})" if total else ""
    return typer.confirm(f"Download it now{shown}?", default=True, err=True)


@contextlib.contextmanager
def progress_reporter() -> Iterator:
    """A (file, done, total) callback drawing a Rich bar per file on stderr (a line per file elsewhere)."""
    from gemma_cli.render import err_console  # lazy: keeps `gemma --help` fast
    from gemma_cli.store import models  # lazy: keeps `gemma --help` fast

    console = err_console()
    if not console.is_terminal:
        seen: set[str] = set()

        def plain(name: str, done: int, total: int | None) -> None:
            if name not in seen:
                seen.add(name)
                size = f" ({models.human_size(total)})" if total else ""
                sys.stderr.write(f"downloading {name}{size}\n")
                sys.stderr.flush()

        yield plain
        return
    from rich.progress import (  # lazy: keeps `gemma --help` fast
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console) as bar:
        tasks: dict[str, int] = {}

        def draw(name: str, done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name.rsplit("/", 1)[-1], total=total)
            bar.update(tasks[name], completed=done, total=total)

        yield draw


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def list_models(
    ctx: typer.Context,
    as_json: opt.Json = False,
    only_installed: Annotated[bool, typer.Option("--installed", help="Only the downloaded ones.")] = False,
) -> None:
    """List Gemma 4 models: sizes, what is downloaded, and the one recommended for this machine (★)."""
    if ctx.invoked_subcommand:
        return
    _list(as_json, only_installed)


def list_cmd(
    as_json: opt.Json = False,
    only_installed: Annotated[bool, typer.Option("--installed", help="Only the downloaded ones.")] = False,
) -> None:
    """List models (same as `gemma models`)."""
    _list(as_json, only_installed)


def _list(as_json: bool, only_installed: bool) -> None:
    from gemma_cli.commands.machine import (
        detect_hardware,  # lazy: keeps `gemma --help` fast
    )
    from gemma_cli.store import (
        config,  # lazy: keeps `gemma --help` fast
        hardware,
        models,
    )

    settings = config.load()
    root = models.model_dir(settings)
    rec = hardware.recommend(detect_hardware(), ctx=settings.pick("ctx", None))
    rows = []
    for spec in models.REGISTRY.values():
        for q in models.QUANTS:
            name = models.canonical(spec.key, q)
            try:
                loc = models.locate_registry(spec, q, root=root)
            except models.ModelNotInstalled:
                loc = None
            first = spec.weights(q).files[0]
            rows.append({
                "name": name, "variant": spec.key, "quant": q, "title": spec.title,
                "size": models.file_size(loc.path) if loc else spec.size(q),
                "size_verified": bool(loc) or first.verified,
                "installed": loc is not None,
                "path": str(loc.path) if loc else None,
                "mmproj": str(loc.mmproj) if loc and loc.mmproj else None,
                "draft": str(loc.draft) if loc and loc.draft else None,
                "recommended": name == rec.name,
                "params_total": spec.params_total, "params_active": spec.params_active,
                "context": spec.context, "modalities": list(spec.modalities),
                "repo": first.repo, "file": first.name,
            })
    other = [{"name": f"hf:{p.relative_to(root).as_posix()}", "path": str(p), "size": models.file_size(p)}
             for p in models.stray_files(root)]
    if only_installed:
        rows = [r for r in rows if r["installed"]]
    if as_json:
        print(json.dumps({"recommended": rec.name, "reasons": rec.reasons, "model_dir": str(root),
                          "models": rows, "other": other}, indent=2))
        return
    _print_table(rows, other, rec, root)


def _print_table(rows: list[dict], other: list[dict], rec, root) -> None:
    from rich import box  # lazy: keeps `gemma --help` fast
    from rich.console import Console  # lazy: keeps `gemma --help` fast
    from rich.table import Table  # lazy: keeps `gemma --help` fast

    from gemma_cli.render import use_color  # lazy: keeps `gemma --help` fast
    from gemma_cli.store import models  # lazy: keeps `gemma --help` fast

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for col, just in (("", "left"), ("NAME", "left"), ("SIZE", "right"), ("PARAMS", "right"), ("CONTEXT", "right"),
                      ("INPUTS", "left"), ("", "left")):
        table.add_column(col, justify=just, no_wrap=True)
    for r in rows:
        mark = "★" if r["recommended"] else ""
        size = models.human_size(r["size"]) if r["size_verified"] else f"~{models.human_size(r['size'])}"
        params = (f"{r['params_total']:g}B" if r["params_active"] == r["params_total"]
                  else f"{r['params_total']:g}B/{r['params_active']:g}B")
        ctxk = f"{r['context'] // 1024}K"
        state = "downloaded" if r["installed"] else ""
        table.add_row(mark, r["name"], size, params, ctxk, "+".join(r["modalities"]), state)
    for o in other:
        table.add_row("", o["name"], models.human_size(o["size"]), "", "", "", "downloaded")
    # Not a terminal (`gemma models | cat`, a script): full names and sizes, never cut to 80 columns.
    console = Console(no_color=not use_color(), highlight=False, width=None if sys.stdout.isatty() else 100_000)
    console.print(table)
    console.print(f"★ recommended here: {rec.name} (`gemma doctor` says why). Models are kept in {root}")
    console.print("A bare name (e4b) means its :q4_k_m; sizes with ~ are estimates; PARAMS total/active.")


def pull(
    name: Name,
    draft: Annotated[bool, typer.Option("--draft", help="Also the MTP drafter (speculative decoding, same output, faster).")] = False,
    no_mmproj: Annotated[bool, typer.Option("--no-mmproj", help="Skip the image/audio projector.")] = False,
) -> None:
    """Download a model (and its image/audio projector) with a progress bar; resumes and verifies."""
    from gemma_cli.store import models  # lazy: keeps `gemma --help` fast

    try:
        with progress_reporter() as report:
            loc = models.pull(name, draft=draft, mmproj=not no_mmproj, progress=report)
    except KeyboardInterrupt:
        sys.stderr.write("\nthe download stopped; run the same command again to resume it\n")
        raise
    sys.stderr.write(f"{loc.name}: {loc.path}\n")
    for what, p in (("projector", loc.mmproj), ("drafter", loc.draft)):
        if p:
            sys.stderr.write(f"  {what}: {p}\n")


def rm(name: Name) -> None:
    """Delete a downloaded model's files."""
    from gemma_cli.store import models  # lazy: keeps `gemma --help` fast

    deleted = models.remove(name)
    for p in deleted:
        sys.stderr.write(f"deleted {p}\n")


def path(
    name: Name,
    mmproj: Annotated[bool, typer.Option("--mmproj", help="The projector's path instead.")] = False,
    draft: Annotated[bool, typer.Option("--draft", help="The drafter's path instead.")] = False,
) -> None:
    """Print where a downloaded model's file is."""
    from gemma_cli.store import models  # lazy: keeps `gemma --help` fast

    loc = models.locate(name, need_mmproj=mmproj, need_draft=draft)
    p = loc.mmproj if mmproj else loc.draft if draft else loc.path
    if p is None:
        what = "projector" if mmproj else "drafter"
        raise GemmaError(f"{loc.name} has no {what}", "only registry models and hf: repos that publish one have it")
    print(p)


def register(app: typer.Typer) -> None:
    sub = typer.Typer(name="models", help="List, download and remove Gemma 4 models.", no_args_is_help=False,
                      rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
    sub.callback(invoke_without_command=True, epilog=LIST_EXAMPLES)(list_models)
    sub.command("list", epilog=LIST_EXAMPLES)(list_cmd)
    sub.command("pull", epilog=PULL_EXAMPLES)(pull)
    sub.command("rm", epilog=RM_EXAMPLES)(rm)
    sub.command("path", epilog=PATH_EXAMPLES)(path)
    app.add_typer(sub, name="models")
