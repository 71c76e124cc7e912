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


def open_engine(path: Path, *, ctx: int | None, threads: int | None, gpu_layers: int | None, verbose: bool = False):
    """Load the model with a spinner on stderr (terminal only)."""
    with render.spinner(f"Loading {path.name}…"):
        from gemma_cli.engine import Engine

        return Engine(path, n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers or 0, verbose=verbose)
