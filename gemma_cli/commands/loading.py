"""Finding and loading a model for a command: the step every generating command shares."""

from __future__ import annotations

import sys
from pathlib import Path

from gemma_cli import render
from gemma_cli.errors import GemmaError, ModelError


def locate_path(model: str | None, *, yes: bool = False) -> Path:
    """The GGUF file for `--model`: a path as given, else a registry or hf: name resolved (and pulled)."""
    if model and not model.strip().startswith("hf:") and (model.endswith(".gguf") or Path(model).exists()):
        from gemma_cli.gguf_header import read_header

        check_model_header(model, read_header(model))  # a one-line error now for a missing or foreign file
        return Path(model)
    from gemma_cli.commands.models import ensure_model

    return ensure_model(model, yes=yes).path


def check_model_header(path, header) -> None:
    """A drafter or a projector given as the model is named for what it is, before llama.cpp fails on it."""
    name = Path(path).name
    if header.architecture.endswith("-assistant"):
        raise ModelError(f"{name} is an MTP drafter, not a model to run on its own",
                         f"pass it with --draft {path} beside its Gemma 4 model (-m)")
    if header.architecture == "clip":
        raise ModelError(f"{name} is an image/audio projector (mmproj), not a model",
                         f"pass it with --mmproj {path} beside its Gemma 4 model (-m)")


def open_engine(path: Path, *, ctx: int | None, threads: int | None, gpu_layers: int | None, verbose: bool = False,
                mmproj: Path | None = None, image_tokens: int | None = None):
    """Load the model (and its projector, when given) with a spinner on stderr (terminal only)."""
    if gpu_layers is None:
        gpu_layers = auto_gpu_layers(path, ctx)
    with render.spinner(f"Loading {path.name}…"):
        from gemma_cli.engine import Engine

        return Engine(path, n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers, verbose=verbose,
                      mmproj=mmproj, image_tokens=image_tokens)


def auto_gpu_layers(path: Path, ctx: int | None) -> int:
    """All layers on the GPU when they fit in free VRAM, else as many as fit; 0 without a GPU build."""
    from types import SimpleNamespace

    from gemma_cli import hardware

    return hardware.auto_gpu_layers(SimpleNamespace(path=path, spec=None), ctx=ctx)


def attach_draft(engine, name: str | None, spec: str | None, draft_max: int | None) -> None:
    """Speculative decoding per --draft; a drafter that cannot run is one warning line, then plain decoding."""
    from gemma_cli.engine import draft as drafting

    installed = _installed_draft(name) if (spec or "auto").strip().lower() == "auto" else None
    warning = drafting.setup(engine, spec, draft_max=draft_max, registry_draft=installed)
    if warning:
        sys.stderr.write(f"warning: {warning}\n")


def _installed_draft(name: str | None) -> Path | None:
    """The model's MTP drafter if it is on disk (registry store, or beside a .gguf); never downloads."""
    try:
        from gemma_cli.models import locate

        return locate(name).draft
    except GemmaError:
        return None


def draft_stats(drafter) -> dict:
    """Speculative decoding's totals for --json output (and batch summaries)."""
    total = drafter.total if drafter is not None else None
    return {
        "draft": drafter.kind if drafter is not None else "off",
        "drafted": total.drafted if total else 0,
        "accepted": total.accepted if total else 0,
        "acceptance_rate": round(total.rate, 4) if total else 0.0,
    }


def asked_ctx(settings, flag: int | None) -> int | None:
    """The context size the user asked for (--ctx, GEMMA_CTX or the file); None when it is the default."""
    if flag is not None:
        return flag
    return settings.get("ctx") if settings.source("ctx") != "default" else None


def note_context(engine, asked: int | None) -> None:
    """Say so on stderr when the context is not the size asked for (llama.cpp's rounding, the model's limit)."""
    actual = getattr(engine, "n_ctx", None)
    if asked is None or actual is None or actual == asked:
        return
    if actual > asked:
        why = "llama.cpp's contexts are whole multiples of 256 tokens"
    elif actual >= engine.info.n_ctx_train > 0:
        why = f"{engine.path.name} was trained for at most {engine.info.n_ctx_train}"
    else:
        why = "llama.cpp could not make it larger"
    sys.stderr.write(f"note: the context is {actual} tokens, not the {asked} asked for: {why}\n")
