"""The store's face to the commands: which files a model name stands for, and the rest of the store
under one name (`from gemma_cli import models`).

A name is one of:
  - a registry name: `e2b`, `e4b`, `12b`, `26b`, `31b`, optionally `:q4_k_m`, `:q8_0`, `:bf16` or `:qat`;
  - a path to a `.gguf` file;
  - `hf:OWNER/REPO/FILE.gguf` for any file on the Hugging Face Hub.
With no name: the configured model, else the one recommended for this machine (the hardware policy
below), else a downloaded one that fits.

The store by concern (each its own module, re-exported here):
  registry     the Gemma 4 variants, quantizations and their files on the Hub (data)
  model_names  parsing a name: `split`, `resolve`, `parse_hf`, `quant_of`
  store        the store on disk; locating files in it or beside a .gguf; picking projectors and drafters
  pull         downloading into the store (`gemma models pull`) and removing from it (`rm`)
  hardware     what this machine has, and which model fits it
"""

from __future__ import annotations

from pathlib import Path

from gemma_cli.store import config, hardware
from gemma_cli.store.files import (
    Located,
    ModelNotInstalled,
    file_size,
    first_installed,
    installed,
    installed_registry,
    locate_file,
    locate_hf,
    locate_registry,
    match_quant,
    model_dir,
    pick_draft,
    pick_mmproj,
    scan_weights,
    store_path,
    stray_files,
)
from gemma_cli.store.names import (
    UnknownModel,
    all_names,
    canonical,
    is_path_like,
    parse_hf,
    quant_of,
    resolve,
    split,
)
from gemma_cli.store.pull import PullPlan, plan_pull, pull, remove
from gemma_cli.store.registry import (
    DEFAULT_QUANT,
    NAMES,
    QUANTS,
    REGISTRY,
    File,
    KvLayout,
    ModelSpec,
    Weights,
    human_size,
    identify,
)

__all__ = [
    "DEFAULT_QUANT", "NAMES", "QUANTS", "REGISTRY", "File", "KvLayout", "Located", "ModelNotInstalled", "ModelSpec",
    "PullPlan", "UnknownModel", "Weights", "all_names", "canonical", "file_size", "first_installed", "human_size",
    "identify", "installed", "installed_registry", "is_path_like", "locate", "locate_file", "locate_hf",
    "locate_recommended", "locate_registry", "match_quant", "model_dir", "parse_hf", "pick_draft", "pick_mmproj",
    "plan_pull", "pull", "quant_of", "remove", "resolve", "scan_weights", "split", "store_path", "stray_files",
]


def locate(name: str | None, *, need_mmproj: bool = False, need_draft: bool = False,
           settings: config.Settings | None = None, hw: hardware.Hardware | None = None) -> Located:
    """The files for a model name; raises ModelNotInstalled when a download is needed.

    name=None: the configured default model, else the one recommended for `hw` (detected when not given).
    `settings` (read when not given) supply the configured model, quantization and store folder.
    """
    settings = settings or config.load()
    if name is None:
        name = settings.pick("model", None)
    if name is None:
        return locate_recommended(settings, need_mmproj, need_draft, hw=hw)
    name = name.strip()
    root = model_dir(settings)
    if name.startswith("hf:"):
        return locate_hf(name, need_mmproj, root=root)
    if is_path_like(name) or Path(name).expanduser().is_file():  # `-m model` for a file named so in the folder
        return locate_file(Path(name).expanduser(), need_mmproj=need_mmproj, need_draft=need_draft)
    spec, quant = resolve(name, quant=settings.pick("quantization", None))
    return locate_registry(spec, quant, need_mmproj=need_mmproj, need_draft=need_draft, root=root)


def locate_recommended(settings: config.Settings, need_mmproj: bool, need_draft: bool, *,
                       hw: hardware.Hardware | None = None) -> Located:
    """No name given: the recommended model; if it is not downloaded but another that fits is, that one."""
    hw = hw or hardware.detect()
    ctx = settings.pick("ctx", None)
    rec = hardware.recommend(hw, ctx=ctx)
    spec = REGISTRY[rec.variant]
    root = model_dir(settings)
    try:
        return locate_registry(spec, rec.quant, need_mmproj=need_mmproj, need_draft=need_draft, root=root)
    except ModelNotInstalled as missing:
        fitting = [(s, q) for s, q in installed_registry(root)
                   if hardware.plan(s, q, hw, ctx=ctx).fits]
        fitting.sort(key=lambda sq: sq[0].size(sq[1]), reverse=True)
        for s, q in fitting:
            try:
                return locate_registry(s, q, need_mmproj=need_mmproj, need_draft=need_draft, root=root)
            except ModelNotInstalled:
                continue
        raise missing

