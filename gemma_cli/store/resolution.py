"""One step from flags and settings to what a command loads: the model file, its projector, its
installed MTP drafter, the GPU layers, and why each. Made once per command (commands.loading.resolve)
and handed down as values: the engine never calls back into the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gemma_cli.errors import ModelError
from gemma_cli.gguf_header import Header
from gemma_cli.store import hardware
from gemma_cli.store.files import Located
from gemma_cli.store.registry import ModelSpec

DEFAULT_CTX = 8192


@dataclass
class Resolved:
    """A model resolved for one command."""

    name: str | None  # as asked (-m, the config, a saved conversation); None: the recommended one
    located: Located
    header: Header  # the model file's GGUF header, read once
    mmproj: Path | None  # --mmproj, else the projector installed with the model or beside it
    draft: Path | None  # the model's MTP drafter when on disk (`--draft auto`); never downloaded
    gpu_setting: int | None = None  # --gpu-layers or the config; None: as many as fit in free VRAM
    hw: hardware.Hardware | None = None  # detected once, when a choice needs it
    why: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return Path(self.located.path)

    @property
    def spec(self) -> ModelSpec | None:
        return self.located.spec

    @property
    def trained_context(self) -> int:
        """The context the model was trained for (0: its header does not say)."""
        return int(self.header.get(f"{self.header.architecture}.context_length", 0) or 0)

    def context(self, ctx: int | None) -> int:
        """A sequence's context: as asked (default 8192), at most what the model was trained for."""
        ctx = ctx or DEFAULT_CTX
        trained = self.trained_context
        return min(ctx, trained) if trained else ctx

    def gpu_layers(self, kv_tokens: int | None) -> int:
        """Layers to offload for a KV cache of `kv_tokens` (all sequences): the setting, else all that fit."""
        if self.gpu_setting is not None:
            self.why.append(f"GPU layers: {self.gpu_setting} (--gpu-layers or the config)")
            return self.gpu_setting
        if self.hw is None or not self.hw.gpu_usable:
            self.why.append("GPU layers: 0 (no GPU this llama.cpp build can use)")
            return 0
        layers = hardware.auto_gpu_layers(self.located, ctx=kv_tokens, hw=self.hw, header=self.header)
        self.why.append("GPU layers: all (they fit in free VRAM)" if layers == -1
                        else f"GPU layers: {layers} (as many as fit in free VRAM)")
        return layers


def check_model(path: str | Path, header: Header) -> None:
    """A drafter or a projector given as the model is named for what it is, before llama.cpp fails on it."""
    name = Path(path).name
    if header.architecture.endswith("-assistant"):
        raise ModelError(f"{name} is an MTP drafter, not a model to run on its own",
                         f"pass it with --draft {path} beside its Gemma 4 model (-m)")
    if header.architecture == "clip":
        raise ModelError(f"{name} is an image/audio projector (mmproj), not a model",
                         f"pass it with --mmproj {path} beside its Gemma 4 model (-m)")


def resolve_model(name: str | None, located: Located, header: Header, *, mmproj: Path | None = None,
                  gpu_layers: int | None = None, hw: hardware.Hardware | None = None) -> Resolved:
    """The located files and the settings made into one Resolved (checks the file is a model)."""
    check_model(located.path, header)
    why = [f"model: {located.name} ({located.path})" if name is not None
           else f"model: {located.name} ({located.path}), recommended for this machine or the largest downloaded that fits"]
    if mmproj is not None:
        projector = Path(mmproj).expanduser()
        why.append(f"projector: {projector} (--mmproj)")
    else:
        projector = Path(located.mmproj) if located.mmproj else None
        why.append(f"projector: {projector}" if projector else "projector: none found")
    draft = Path(located.draft) if located.draft else None
    if draft:
        why.append(f"drafter: {draft} (installed)")
    return Resolved(name, located, header, projector, draft, gpu_layers, hw, why)
