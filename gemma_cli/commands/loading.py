"""Finding and loading a model for a command: the step every generating command shares."""

from __future__ import annotations

from pathlib import Path

from gemma_cli import render


def locate_path(model: str | None, *, yes: bool = False) -> Path:
    """The GGUF file for `--model`: a path as given, else a registry name resolved (and pulled)."""
    if model and (model.endswith(".gguf") or Path(model).exists()):
        from gemma_cli.gguf_header import read_header

        read_header(model)  # a one-line error now for a missing or foreign file
        return Path(model)
    from gemma_cli.commands.models import ensure_model

    return ensure_model(model, yes=yes).path


def open_engine(path: Path, *, ctx: int | None, threads: int | None, gpu_layers: int | None, verbose: bool = False,
                mmproj: Path | None = None, image_tokens: int | None = None):
    """Load the model (and its projector, when given) with a spinner on stderr (terminal only)."""
    if gpu_layers is None:
        gpu_layers = _auto_gpu_layers(path, ctx)
    with render.spinner(f"Loading {path.name}…"):
        from gemma_cli.engine import Engine

        return Engine(path, n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers, verbose=verbose,
                      mmproj=mmproj, image_tokens=image_tokens)


def _auto_gpu_layers(path: Path, ctx: int | None) -> int:
    """All layers on the GPU when they fit in free VRAM, else as many as fit; 0 without a GPU build."""
    from types import SimpleNamespace

    from gemma_cli.hardware import auto_gpu_layers

    return auto_gpu_layers(SimpleNamespace(path=path, spec=None), ctx=ctx)
