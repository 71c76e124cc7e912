"""Resolving and loading a model for a command: the step every generating command shares.

`resolve()` turns --model and the settings into a `Resolved` once per command (the files, the
projector, the installed drafter, the hardware and the why), asking to download what is missing;
`open_engine()` loads it. Both sit here, at the face, because they join the store and the engine,
which never import each other.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gemma_cli import render
from gemma_cli.commands.machine import detect_hardware
from gemma_cli.commands.models import ensure_model
from gemma_cli.errors import GemmaError
from gemma_cli.gguf_header import read_header
from gemma_cli.store import models
from gemma_cli.store.resolution import Resolved, resolve_model


def resolve(settings, model: str | None, *, yes: bool = False, mmproj: Path | None = None,
            gpu_layers: int | None = None, loads: bool = True) -> Resolved:
    """--model (else the configured or the recommended model) as files on disk, downloaded on demand.

    `loads=False` (--print-prompt): no weights will load, so no hardware is probed for GPU layers.
    """
    name = settings.pick("model", model)
    gpu = settings.pick("gpu_layers", gpu_layers)
    hw = detect_hardware() if name is None or (loads and gpu is None) else None
    header = None
    if name is not None and _is_file_name(name):
        header = read_header(Path(name).expanduser())  # a one-line error for a missing, foreign or damaged file
    located = ensure_model(name, yes=yes, settings=settings, hw=hw)
    header = header or read_header(located.path)
    return resolve_model(name, located, header, mmproj=mmproj, gpu_layers=gpu, hw=hw)


def _is_file_name(name: str) -> bool:
    name = name.strip()
    return not name.startswith("hf:") and (models.is_path_like(name) or Path(name).expanduser().is_file())


def open_engine(resolved: Resolved, *, ctx: int | None, threads: int | None, verbose: bool = False,
                load_mmproj: bool = False, image_tokens: int | None = None, n_seq: int = 1,
                batch_invariant: bool | None = None, what: str | None = None, gpu_layers: int | None = None,
                swa_full: bool = False):
    """Load the resolved model with a spinner on stderr (terminal only).

    `ctx` is the whole context (all `n_seq` sequences); the projector loads now with `load_mmproj`,
    else on the first image or clip (`engine.ensure_projector`). `batch_invariant` None: the engine's default;
    `gpu_layers` None: the resolved choice for this context.
    """
    if gpu_layers is None:
        gpu_layers = resolved.gpu_layers(ctx)
    extra = {} if batch_invariant is None else {"batch_invariant": batch_invariant}
    if verbose:
        sys.stderr.write("".join(f"{line}\n" for line in resolved.why))
    with render.spinner(f"Loading {resolved.path.name}" + (f" for {what}" if what else "") + "…"):
        from gemma_cli.engine import (
            Engine,  # llama.cpp loads here, not at `gemma --help`
        )

        engine = Engine(resolved.path, n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers, verbose=verbose,
                        mmproj=resolved.mmproj if load_mmproj else None, image_tokens=image_tokens, n_seq=n_seq,
                        swa_full=swa_full, header=resolved.header, **extra)
    engine.mmproj_path = resolved.mmproj  # /image, /audio and batch lines load it on first use
    return engine


def attach_prompt_cache(engine, settings, enabled: bool = True) -> None:
    """The prompt cache on disk (engine.disk), on unless --no-cache or `prompt_cache_mb: 0`."""
    mb = settings.pick("prompt_cache_mb", None)
    if not enabled or mb == 0:
        return
    # lazy: the store's folder and the engine's cache, only when a model runs
    from gemma_cli.engine.disk import PromptCache
    from gemma_cli.store import paths

    engine.prompt_cache = PromptCache(paths.prompt_cache_dir(), cap=None if mb is None else mb * 1000**2,
                                      note=lambda text: sys.stderr.write(f"note: {text}\n"))


def attach_draft(engine, model: Resolved | str | None, spec: str | None, draft_max: int | None) -> None:
    """Speculative decoding per --draft; a drafter that cannot run is one warning line, then plain decoding.

    `model`: the Resolved model (its installed drafter is known), or a name to look the drafter up by.
    """
    from gemma_cli.engine import (
        draft as drafting,  # with the engine, not at `gemma --help`
    )

    installed = None
    if (spec or "auto").strip().lower() == "auto":
        installed = model.draft if isinstance(model, Resolved) else _installed_draft(model)
    warning = drafting.setup(engine, spec, draft_max=draft_max, registry_draft=installed)
    if warning:
        sys.stderr.write(f"warning: {warning}\n")


def _installed_draft(name: str | None) -> Path | None:
    """The model's MTP drafter if it is on disk (registry store, or beside a .gguf); never downloads."""
    try:
        return models.locate(name).draft
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


def sampling_of(settings, temperature, top_p, top_k, seed, *, saved: dict | None = None,
                default_temperature: float | None = None, min_p: float | None = None,
                repeat_penalty: float | None = None, presence_penalty: float | None = None,
                frequency_penalty: float | None = None):
    """The engine's Sampling: each flag, else a resumed conversation's value (`saved`), else
    `default_temperature` (transcription is greedy), else the settings (env, file, defaults).
    The one place a command's sampling flags become the engine's (chat, batch, serve, describe, transcribe)."""
    # lazy: the engine (llama_cpp, numpy), only when a model runs; keeps gemma --help fast
    from gemma_cli.engine import Sampling

    saved = saved or {}

    def pick(key, flag, fallback=None):
        return settings.pick(key, flag if flag is not None else saved.get(key, fallback))

    return Sampling(temperature=pick("temperature", temperature, default_temperature), top_p=pick("top_p", top_p),
                    top_k=pick("top_k", top_k), seed=pick("seed", seed), min_p=pick("min_p", min_p),
                    repeat_penalty=pick("repeat_penalty", repeat_penalty),
                    presence_penalty=pick("presence_penalty", presence_penalty),
                    frequency_penalty=pick("frequency_penalty", frequency_penalty))


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
