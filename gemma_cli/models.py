"""The Gemma 4 family as data, and how a model name becomes files on disk.

A name is one of:
  - a registry name: `e2b`, `e4b`, `12b`, `26b`, `31b`, optionally `:q4_k_m`, `:q8_0`, `:bf16` or `:qat`;
  - a path to a `.gguf` file;
  - `hf:OWNER/REPO/FILE.gguf` for any file on the Hugging Face Hub.

Downloaded files live in the model store, `<model_dir>/<owner>/<repo>/<file>`, so files of the
same name from different repos (every unsloth projector is `mmproj-F16.gguf`) never collide.

Provenance of the data below (`verified=True` on a `File`): the repo, file name and byte size were
seen together in a published manifest that pins them (a Hub file listing, or a catalog that
pins revision + size + sha256). `verified=False`: the name follows the publisher's naming
pattern or a single report, and the size is an estimate from the parameter count. Sizes are only
used to show and to plan (disk space, memory fit): a download always takes the size and the
sha256 from the Hub itself. When a pinned name has gone from the Hub, `pull` lists the repo and
picks the file with the same quantization tag, as llama.cpp's `-hf repo:quant` does.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from gemma_cli.errors import DownloadError, GemmaError, ModelError, UsageError

QUANTS = ("q4_k_m", "q8_0", "bf16", "qat")
DEFAULT_QUANT = "q4_k_m"
_QUANT_ALIASES = {"q4": "q4_k_m", "q4km": "q4_k_m", "q4_k_m": "q4_k_m", "q8": "q8_0", "q8_0": "q8_0",
                  "bf16": "bf16", "f16": "bf16", "fp16": "bf16", "qat": "qat", "q4_0": "qat"}
# How a quantization shows in a file name, for finding a file in a repo listing.
_QUANT_TAGS = {"q4_k_m": ("Q4_K_M",), "q8_0": ("Q8_0",), "bf16": ("BF16", "F16"), "qat": ("qat", "Q4_0")}
_ACCESSORY = re.compile(r"mmproj|(^|/)mtp-|assistant|dflash|imatrix", re.IGNORECASE)


@dataclass(frozen=True)
class File:
    """One file in a Hugging Face repo (`parts` > 1: a split GGUF, `-00001-of-0000N` first)."""

    repo: str
    name: str
    size: int
    verified: bool = False
    sha256: str | None = None  # as last published; the download checks the Hub's current one
    parts: int = 1

    def names(self) -> list[str]:
        if self.parts == 1:
            return [self.name]
        return [self.name.replace(f"00001-of-{self.parts:05d}", f"{i:05d}-of-{self.parts:05d}")
                for i in range(1, self.parts + 1)]

    @property
    def ref(self) -> str:
        return f"hf:{self.repo}/{self.name}"


@dataclass(frozen=True)
class Weights:
    """One quantization: candidate files, best first; `mmproj` overrides the variant's (QAT repos ship their own)."""

    label: str
    files: tuple[File, ...]
    mmproj: tuple[File, ...] = ()


@dataclass(frozen=True)
class KvLayout:
    """What the KV cache holds per token (f16), for the memory estimate.

    Gemma 4 interleaves sliding-window layers (cache capped at the window) with global layers
    (cache grows with the context); E2B/E4B share the KV of their last layers, which keep none.
    """

    window: int
    swa_layers: int
    swa_width: int  # n_kv_heads * head_dim
    global_layers: int
    global_width: int

    def bytes(self, ctx: int, *, ubatch: int = 512) -> int:
        # llama.cpp sizes the sliding-window cache as window + one micro-batch, never more than ctx.
        swa_tokens = min(ctx, self.window + ubatch)
        per_elem = 2 * 2  # K and V, 2 bytes each (f16)
        return per_elem * (self.swa_layers * swa_tokens * self.swa_width + self.global_layers * ctx * self.global_width)


@dataclass(frozen=True)
class ModelSpec:
    key: str
    title: str
    base: str  # the original checkpoint on the Hub
    params_total: float  # billions
    params_active: float  # billions: effective (E models) or active per token (MoE)
    layers: int
    hidden: int
    context: int
    modalities: tuple[str, ...]
    kv: KvLayout
    quants: dict[str, Weights]
    mmproj: tuple[File, ...]
    draft: tuple[File, ...] = ()
    moe: bool = False
    # Per-layer embeddings (E2B/E4B): llama.cpp keeps them in CPU memory, so they cost no VRAM.
    ple_params: float = 0.0
    note: str = ""

    def weights(self, quant: str) -> Weights:
        return self.quants[quant]

    def size(self, quant: str) -> int:
        return self.quants[quant].files[0].size

    def mmproj_files(self, quant: str) -> tuple[File, ...]:
        return self.quants[quant].mmproj or self.mmproj

    @property
    def audio(self) -> bool:
        return "audio" in self.modalities


def _u(size: str) -> str:
    return f"unsloth/gemma-4-{size}-it-GGUF"


def _g(size: str) -> str:
    return f"ggml-org/gemma-4-{size}-it-GGUF"


def _q(size: str) -> str:
    return f"google/gemma-4-{size}-it-qat-q4_0-gguf"


F = File
V = True  # verified: repo + name + size seen together in a pinned manifest

REGISTRY: dict[str, ModelSpec] = {
    "e2b": ModelSpec(
        key="e2b", title="Gemma 4 E2B", base="google/gemma-4-E2B-it",
        params_total=5.1, params_active=2.3, layers=35, hidden=1536, context=131072,
        modalities=("text", "image", "audio"),
        # 35 layers, the last 20 share KV; of the 15 that keep one, 3 are global. 1 KV head.
        kv=KvLayout(window=512, swa_layers=12, swa_width=256, global_layers=3, global_width=512),
        ple_params=2.35,
        quants={
            "q4_k_m": Weights("Q4_K_M", (
                F(_u("E2B"), "gemma-4-E2B-it-Q4_K_M.gguf", 3_106_738_272, V,
                  "740185b21d22ceb83a11c3aa62ad5842ef32c70f6096d756bbee85a1e4ec34b8"),
                F(_g("E2B"), "gemma-4-E2B-it-Q4_K_M.gguf", 3_106_000_000),
            )),
            "q8_0": Weights("Q8_0", (
                F(_u("E2B"), "gemma-4-E2B-it-Q8_0.gguf", 5_048_352_864, V,
                  "605d3c2647d7c58c1e4b5375ccb5702acf94c2611b4c8d4877812f8fdd32d053"),
                F(_g("E2B"), "gemma-4-E2B-it-Q8_0.gguf", 5_048_000_000),
            )),
            "bf16": Weights("BF16", (
                F(_u("E2B"), "gemma-4-E2B-it-BF16.gguf", 9_311_303_552, V),
                F(_g("E2B"), "gemma-4-E2B-it-bf16.gguf", 9_311_000_000),
            )),
            "qat": Weights("QAT Q4_0", (
                F(_q("E2B"), "gemma-4-E2B_q4_0-it.gguf", 2_841_000_000),
                F(_g("E2B"), "gemma-4-E2B-it-Q4_0.gguf", 2_841_481_184, V,
                  "8e30dff3ac4c8434c49a7036fa15564bdbb6044e42bf04550bf1a096ad7e6a52"),
            ), mmproj=(F(_q("E2B"), "gemma-4-E2B-it-mmproj.gguf", 986_000_000),)),
        },
        mmproj=(
            F(_u("E2B"), "mmproj-F16.gguf", 985_654_080, V,
              "140be8d7849741f88c50757d529b84373ee8e27052cc2236855b537f4a8215fa"),
            F(_g("E2B"), "mmproj-gemma-4-E2B-it-Q8_0.gguf", 557_368_064, V,
              "9406f99c16d68cda4f1f0552192dcc99021ea1fc6d2fd50b1dc3ccf30d04b292"),
        ),
        draft=(
            F(_u("E2B"), "MTP/mtp-gemma-4-E2B-it-Q8_0.gguf", 97_817_664, V),
            F(_g("E2B"), "mtp-gemma-4-E2B-it-Q8_0.gguf", 97_817_664),
        ),
    ),
    "e4b": ModelSpec(
        key="e4b", title="Gemma 4 E4B", base="google/gemma-4-E4B-it",
        params_total=8.0, params_active=4.5, layers=42, hidden=2560, context=131072,
        modalities=("text", "image", "audio"),
        # 42 layers, the last 18 share KV; of the 24 that keep one, 4 are global. 2 KV heads.
        kv=KvLayout(window=512, swa_layers=20, swa_width=512, global_layers=4, global_width=1024),
        ple_params=2.82,
        quants={
            "q4_k_m": Weights("Q4_K_M", (
                F(_u("E4B"), "gemma-4-E4B-it-Q4_K_M.gguf", 4_977_171_584, V,
                  "85a896a047553e842f25297ee5b031d64ff30147d9c4af17b1e4b394cd1fab87"),
                F(_g("E4B"), "gemma-4-E4B-it-Q4_K_M.gguf", 4_977_000_000),
            )),
            "q8_0": Weights("Q8_0", (
                F(_u("E4B"), "gemma-4-E4B-it-Q8_0.gguf", 8_192_953_472, V,
                  "f8854aa4480df62585a279e7ca0a881554fc18a41c59c4f62642d16a2ae47012"),
                F(_g("E4B"), "gemma-4-E4B-it-Q8_0.gguf", 8_192_000_000),
            )),
            "bf16": Weights("BF16", (
                F(_u("E4B"), "gemma-4-E4B-it-BF16.gguf", 15_000_000_000),
                F(_g("E4B"), "gemma-4-E4B-it-bf16.gguf", 15_000_000_000),
            )),
            "qat": Weights("QAT Q4_0", (
                F(_q("E4B"), "gemma-4-E4B_q4_0-it.gguf", 4_590_000_000),
                F(_g("E4B"), "gemma-4-E4B-it-Q4_0.gguf", 4_590_807_392, V,
                  "a555b900214b477d8880e7832e0b8925e139b0159640036b09fe472b6f2097f2"),
            ), mmproj=(F(_q("E4B"), "gemma-4-E4B-it-mmproj.gguf", 991_000_000),)),
        },
        mmproj=(
            # BF16 first: reports of repetition with the F16 and Q8_0 projectors.
            F(_u("E4B"), "mmproj-BF16.gguf", 991_552_320, V,
              "ee01cba03fd9c71ea2ea722225d24a84f72e7197714367e550ef705ef8851bc6"),
            F(_u("E4B"), "mmproj-F16.gguf", 990_372_672, V,
              "ddf46c21d7078e95338cfc22306b19b276a29a5ad089023449dd54d4b6170a51"),
            F(_g("E4B"), "mmproj-gemma-4-E4B-it-Q8_0.gguf", 559_874_816, V,
              "197f49a93027f9843772bd24a6a9e0be2a32a788de5a3def330e9c585d86edd1"),
        ),
        draft=(
            F(_u("E4B"), "MTP/mtp-gemma-4-E4B-it-Q8_0.gguf", 98_700_000),
            F(_g("E4B"), "mtp-gemma-4-E4B-it-Q8_0.gguf", 98_700_000),
        ),
    ),
    "12b": ModelSpec(
        key="12b", title="Gemma 4 12B", base="google/gemma-4-12B-it",
        params_total=11.95, params_active=11.95, layers=48, hidden=3840, context=262144,
        modalities=("text", "image", "audio"),
        # 5 sliding + 1 global, 8 times; 8 KV heads locally, 1 (head_dim 512) globally.
        kv=KvLayout(window=1024, swa_layers=40, swa_width=2048, global_layers=8, global_width=512),
        note="encoder-free: images and audio are projected straight into the model",
        quants={
            "q4_k_m": Weights("Q4_K_M", (
                F("unsloth/gemma-4-12b-it-GGUF", "gemma-4-12b-it-Q4_K_M.gguf", 7_121_861_440, V,
                  "0a270ec9fe6b34f4a0d33992b6135117b484ebc4766ab76b51d4ae8c457e4c42"),
            )),
            "q8_0": Weights("Q8_0", (
                F("unsloth/gemma-4-12b-it-GGUF", "gemma-4-12b-it-Q8_0.gguf", 12_669_647_680, V,
                  "f20e7ff1be28c283eeeb18fc895733791c56a5851d5cd3fe9691b7f7d12afa72"),
            )),
            "bf16": Weights("BF16", (
                F("unsloth/gemma-4-12b-it-GGUF", "gemma-4-12b-it-BF16.gguf", 23_900_000_000),
            )),
            "qat": Weights("QAT Q4_0", (
                F(_q("12B"), "gemma-4-12b-it-qat-q4_0.gguf", 6_975_879_296, V,
                  "93567e57a8fe10b23569b9d9ec38cd005deedf71e29477c421a4b83f418a538b"),
                F(_g("12B"), "gemma-4-12B-it-Q4_0.gguf", 7_219_673_216, V,
                  "3712b9bd32cae83a22f67ee7a4466d8d7a4f21646ac8a07d19bf9418e8767a70"),
            ), mmproj=(F(_q("12B"), "mmproj-gemma-4-12b-it-qat-q4_0.gguf", 175_115_616, V,
                         "cb018338a7538a9814d994bfe54644c71eb7ed54e31eae2f721e45fd3c260da7"),)),
        },
        mmproj=(
            F("unsloth/gemma-4-12b-it-GGUF", "mmproj-F16.gguf", 175_115_840, V,
              "91f086971e56d7a7d8d39e271873fccdb49541bd259d6e02c401a4f1cb7a219e"),
            F(_g("12B"), "mmproj-gemma-4-12B-it-Q8_0.gguf", 158_987_616, V,
              "59e62255435dda870e2d1de97cc031330b31a898bac12b38a182cecff9cd3738"),
        ),
        draft=(F("unsloth/gemma-4-12b-it-GGUF", "MTP/mtp-gemma-4-12b-it-Q8_0.gguf", 400_000_000),),
    ),
    "26b": ModelSpec(
        key="26b", title="Gemma 4 26B-A4B", base="google/gemma-4-26B-A4B-it",
        params_total=25.2, params_active=3.8, layers=30, hidden=2816, context=262144,
        modalities=("text", "image"), moe=True,
        # 5 sliding + 1 global, 5 times; 8 KV heads locally, 2 (head_dim 512) globally.
        kv=KvLayout(window=1024, swa_layers=25, swa_width=2048, global_layers=5, global_width=1024),
        note="mixture of experts: all 25.2B parameters in memory, 3.8B active per token",
        quants={
            "q4_k_m": Weights("Q4_K_M", (
                F(_g("26B-A4B"), "gemma-4-26B-A4B-it-Q4_K_M.gguf", 17_000_000_000),
                F(_u("26B-A4B"), "gemma-4-26B-A4B-it-UD-Q4_K_M.gguf", 17_000_000_000),
            )),
            "q8_0": Weights("Q8_0", (
                F(_g("26B-A4B"), "gemma-4-26B-A4B-it-Q8_0.gguf", 26_900_000_000),
                F(_u("26B-A4B"), "gemma-4-26B-A4B-it-Q8_0.gguf", 26_900_000_000),
            )),
            "bf16": Weights("BF16", (
                F(_u("26B-A4B"), "BF16/gemma-4-26B-A4B-it-BF16-00001-of-00002.gguf", 50_500_000_000, parts=2),
                F(_g("26B-A4B"), "gemma-4-26B-A4B-it-bf16.gguf", 50_500_000_000),
            )),
            "qat": Weights("QAT Q4_0", (
                F(_q("26B-A4B"), "gemma-4-26B_q4_0-it.gguf", 14_439_363_584, V,
                  "3eca3b8f6d7baf218a7dd6bba5fb59a56ee25fe2d567b6f5f589b4f697eca51d"),
                F(_g("26B-A4B"), "gemma-4-26B-A4B-it-Q4_0.gguf", 14_618_145_824, V,
                  "d208665ab1cd3a69f7a9a4bc59430e8448c8093d9b06334f566ac59d6d504a03"),
            ), mmproj=(F(_q("26B-A4B"), "gemma-4-26B-it-mmproj.gguf", 1_194_828_160, V,
                         "a359953a076b877db30c31dbbb4c6d93b4a6e017ee5db5784247e4d4c0dd4f3b"),)),
        },
        mmproj=(
            F(_g("26B-A4B"), "mmproj-gemma-4-26B-A4B-it-Q8_0.gguf", 806_408_320, V,
              "cc4e855736da450bf1e162d8cccfe0ad685727d0c9e04ef7dd8d884f3121039b"),
            F(_u("26B-A4B"), "mmproj-BF16.gguf", 1_194_828_256),
        ),
        draft=(
            # name and size from a Hub listing of unsloth's 26B-A4B QAT repo (the repo name itself inferred)
            F("unsloth/gemma-4-26B-A4B-it-qat-GGUF", "MTP/mtp-gemma-4-26B-A4B-it-Q8_0.gguf", 461_784_000),
            F(_g("26B-A4B"), "mtp-gemma-4-26B-A4B-it-Q8_0.gguf", 461_784_000),
        ),
    ),
    "31b": ModelSpec(
        key="31b", title="Gemma 4 31B", base="google/gemma-4-31B-it",
        params_total=30.7, params_active=30.7, layers=60, hidden=5376, context=262144,
        modalities=("text", "image"),
        # 50 sliding (16 KV heads x 256) + 10 global (4 KV heads x 512), from its config.json.
        kv=KvLayout(window=1024, swa_layers=50, swa_width=4096, global_layers=10, global_width=2048),
        quants={
            "q4_k_m": Weights("Q4_K_M", (
                F(_u("31B"), "gemma-4-31B-it-Q4_K_M.gguf", 18_323_733_440, V),
                F(_g("31B"), "gemma-4-31B-it-Q4_K_M.gguf", 18_323_000_000),
            )),
            "q8_0": Weights("Q8_0", (
                F(_g("31B"), "gemma-4-31B-it-Q8_0.gguf", 32_600_000_000),
                F(_u("31B"), "gemma-4-31B-it-Q8_0.gguf", 32_600_000_000),
            )),
            "bf16": Weights("BF16", (
                # Over the Hub's 50 GB per-file limit, so published in shards.
                F(_u("31B"), "BF16/gemma-4-31B-it-BF16-00001-of-00002.gguf", 61_400_000_000, parts=2),
                F(_g("31B"), "gemma-4-31B-it-bf16-00001-of-00002.gguf", 61_400_000_000, parts=2),
            )),
            "qat": Weights("QAT Q4_0", (
                F(_q("31B"), "gemma-4-31B_q4_0-it.gguf", 17_992_000_000),
                F(_g("31B"), "gemma-4-31B-it-Q4_0.gguf", 17_992_313_088),
            ), mmproj=(F(_q("31B"), "gemma-4-31B-it-mmproj.gguf", 1_194_828_160),)),
        },
        mmproj=(
            F(_g("31B"), "mmproj-gemma-4-31B-it-Q8_0.gguf", 806_000_000),
            F(_u("31B"), "mmproj-BF16.gguf", 1_194_828_256),
        ),
        draft=(
            F(_g("31B"), "mtp-gemma-4-31B-it-Q8_0.gguf", 520_000_000),
            F(_u("31B"), "MTP/mtp-gemma-4-31B-it-Q8_0.gguf", 520_000_000),
        ),
    ),
}
del F, V

NAMES = tuple(REGISTRY)


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


class UnknownModel(ModelError):
    """A name that is not in the registry, not a file, and not `hf:`."""


class ModelNotInstalled(GemmaError):
    """A registry (or `hf:`) model whose files are not downloaded yet.

    Carries what a download would fetch, so the command layer can ask on a terminal
    (name, size, destination) or print the exact pull command elsewhere.
    """

    def __init__(self, name: str, files: list[File], destination: Path, *, draft: bool = False):
        self.name = name
        self.files = files
        self.destination = destination
        self.draft = draft
        self.command = f"gemma models pull {name}" + (" --draft" if draft else "")
        size = self.size
        shown = f" ({human_size(size)})" if size else ""
        super().__init__(f"model {name} is not downloaded{shown}", f"download it with: {self.command}")

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def canonical(key: str, quant: str) -> str:
    return f"{key}:{quant}"


def all_names() -> list[str]:
    return [*NAMES, *(canonical(k, q) for k in NAMES for q in QUANTS)]


def split(name: str) -> tuple[ModelSpec, str | None]:
    """`e4b:q8_0` -> (spec, 'q8_0'); quant None when not given. Raises UnknownModel."""
    raw = name.strip()
    base, _, quant = raw.partition(":")
    if base.lower() in ("gemma4", "gemma-4") and quant:  # Ollama's spelling: gemma4:e4b, gemma4:26b-a4b-it-q8_0
        m = re.match(r"(e2b|e4b|12b|26b(?:-a4b)?|31b)(?:-it)?(?:-(.+))?$", quant.lower())
        base, quant = (m.group(1), m.group(2) or "") if m else (quant, "")
    key = _variant_key(base)
    if key is None:
        raise _unknown(raw)
    if not quant:
        return REGISTRY[key], None
    q = _QUANT_ALIASES.get(quant.lower().replace("-", "_"))
    if q is None:
        spec = REGISTRY[key]
        raise UnknownModel(f"unknown quantization '{quant}' for {key}",
                           f"choose one of: {', '.join(canonical(spec.key, x) for x in QUANTS)}")
    return REGISTRY[key], q


def resolve(name: str, *, quant: str | None = None) -> tuple[ModelSpec, str]:
    """A registry name with its quantization settled: given > `quant` (the configured one) > q4_k_m."""
    spec, q = split(name)
    return spec, q or quant or DEFAULT_QUANT


def _variant_key(base: str) -> str | None:
    s = base.strip().lower()
    for prefix in ("gemma-4-", "gemma4-", "gemma4", "gemma-4"):
        if s.startswith(prefix):
            s = s[len(prefix):]
            break
    s = s.removesuffix("-it")
    s = {"26b-a4b": "26b", "26ba4b": "26b", "a4b": "26b", "31b-it": "31b"}.get(s, s)
    return s if s in REGISTRY else None


def _unknown(name: str) -> UnknownModel:
    close = difflib.get_close_matches(name.lower(), all_names(), n=3, cutoff=0.5)
    if not close:  # `e4` is short: also try prefixes against the bare names
        close = [n for n in NAMES if n.startswith(name.lower()[:2])][:3]
    hint = (f"did you mean {' or '.join(close)}? " if close else "") + "`gemma models` lists the names"
    return UnknownModel(f"unknown model '{name}'", hint)


def is_path_like(name: str) -> bool:
    return name.lower().endswith(".gguf") or os.sep in name or "/" in name or name.startswith((".", "~"))


def parse_hf(name: str) -> File:
    """`hf:OWNER/REPO/PATH/FILE.gguf` -> File(repo='OWNER/REPO', name='PATH/FILE.gguf')."""
    body = name[3:].strip().strip("/")
    parts = body.split("/")
    if len(parts) < 3 or not parts[-1]:
        raise ModelError(f"cannot read '{name}': expected hf:OWNER/REPO/FILE.gguf",
                         "for example hf:unsloth/gemma-4-E4B-it-GGUF/gemma-4-E4B-it-Q4_K_M.gguf")
    return File("/".join(parts[:2]), "/".join(parts[2:]), 0)


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


def model_dir() -> Path:
    """Where downloads go: GEMMA_MODEL_DIR > config model_dir > <user data dir>/models."""
    from gemma_cli import config, paths

    configured = config.load().pick("model_dir", None)
    return Path(configured).expanduser() if configured else paths.data_dir() / "models"


def store_path(repo: str, name: str, *, root: Path | None = None) -> Path:
    return (root or model_dir()) / repo / name


def installed(f: File, *, root: Path | None = None) -> Path | None:
    """The local path of `f` (its first part) when every part is downloaded."""
    paths_ = [store_path(f.repo, n, root=root) for n in f.names()]
    return paths_[0] if all(p.is_file() for p in paths_) else None


def first_installed(files: Iterable[File], *, root: Path | None = None) -> Path | None:
    for f in files:
        p = installed(f, root=root)
        if p:
            return p
    return None


def _scan_weights(w: Weights, quant: str, root: Path) -> Path | None:
    """A file of this quantization that `pull` found by listing (its pinned name had changed)."""
    for repo in dict.fromkeys(f.repo for f in w.files):
        folder = root / repo
        if not folder.is_dir():
            continue
        names = [p.relative_to(folder).as_posix() for p in folder.rglob("*.gguf")]
        found = match_quant(names, quant)
        if found and all((folder / n).is_file() for n in found):
            return folder / found[0]
    return None


# ---------------------------------------------------------------------------------------------
# Locating
# ---------------------------------------------------------------------------------------------


@dataclass
class Located:
    name: str
    path: Path
    mmproj: Path | None
    draft: Path | None
    spec: ModelSpec | None


def locate(name: str | None, *, need_mmproj: bool = False, need_draft: bool = False) -> Located:
    """The files for a model name; raises ModelNotInstalled when a download is needed.

    name=None: the configured default model, else the one recommended for this hardware.
    """
    from gemma_cli import config

    settings = config.load()
    if name is None:
        name = settings.pick("model", None)
    if name is None:
        return _locate_recommended(settings, need_mmproj, need_draft)
    name = name.strip()
    if name.startswith("hf:"):
        return _locate_hf(name, need_mmproj)
    if is_path_like(name):
        return locate_path(Path(name).expanduser(), need_mmproj=need_mmproj, need_draft=need_draft)
    spec, quant = resolve(name, quant=settings.pick("quantization", None))
    return locate_registry(spec, quant, need_mmproj=need_mmproj, need_draft=need_draft)


def locate_registry(spec: ModelSpec, quant: str, *, need_mmproj: bool = False, need_draft: bool = False,
                    root: Path | None = None) -> Located:
    root = root or model_dir()
    name = canonical(spec.key, quant)
    w = spec.weights(quant)
    weights = first_installed(w.files, root=root) or _scan_weights(w, quant, root)
    mmproj = first_installed(spec.mmproj_files(quant), root=root)
    draft = first_installed(spec.draft, root=root)
    missing: list[File] = []
    if weights is None:
        missing.append(w.files[0])
        if mmproj is None:  # `pull` fetches the projector with the model
            missing.append(spec.mmproj_files(quant)[0])
    elif need_mmproj and mmproj is None:
        missing.append(spec.mmproj_files(quant)[0])
    if need_draft and draft is None and spec.draft:
        missing.append(spec.draft[0])
    if missing:
        raise ModelNotInstalled(name, missing, root, draft=need_draft and draft is None and bool(spec.draft))
    return Located(name, weights, mmproj, draft, spec)


def locate_path(path: Path, *, need_mmproj: bool = False, need_draft: bool = False) -> Located:
    if not path.is_file():
        hint = ("check the path" if path.suffix.lower() == ".gguf"
                else "give a .gguf file, a name like e4b (see `gemma models`), or hf:OWNER/REPO/FILE.gguf")
        raise ModelError(f"model file not found: {path}", hint)
    siblings = [p.name for p in path.parent.glob("*.gguf") if p != path]
    sub = [f"MTP/{p.name}" for p in (path.parent / "MTP").glob("*.gguf")] if (path.parent / "MTP").is_dir() else []
    mm = pick_mmproj(path.name, siblings)
    dr = pick_draft(path.name, siblings + sub)
    return Located(str(path), path, path.parent / mm if mm else None, path.parent / dr if dr else None,
                   identify(path.name))


def _locate_hf(name: str, need_mmproj: bool) -> Located:
    f = parse_hf(name)
    root = model_dir()
    p = installed(f, root=root)
    if p is None:
        raise ModelNotInstalled(name, [f], root)
    loc = locate_path(p)
    loc.name = name
    return loc


def _locate_recommended(settings, need_mmproj: bool, need_draft: bool) -> Located:
    """No name given: the recommended model; if it is not downloaded but another that fits is, that one."""
    from gemma_cli import hardware

    hw = hardware.detect()
    ctx = settings.pick("ctx", None)
    rec = hardware.recommend(hw, ctx=ctx)
    spec = REGISTRY[rec.variant]
    try:
        return locate_registry(spec, rec.quant, need_mmproj=need_mmproj, need_draft=need_draft)
    except ModelNotInstalled as missing:
        root = model_dir()
        fitting = [(s, q) for s, q in installed_registry(root)
                   if hardware.plan(s, q, hw, ctx=ctx).fits]
        fitting.sort(key=lambda sq: sq[0].size(sq[1]), reverse=True)
        for s, q in fitting:
            try:
                return locate_registry(s, q, need_mmproj=need_mmproj, need_draft=need_draft, root=root)
            except ModelNotInstalled:
                continue
        raise missing


def installed_registry(root: Path | None = None) -> list[tuple[ModelSpec, str]]:
    root = root or model_dir()
    out = []
    for spec in REGISTRY.values():
        for q in QUANTS:
            w = spec.weights(q)
            if first_installed(w.files, root=root) or _scan_weights(w, q, root):
                out.append((spec, q))
    return out


def file_size(path: Path) -> int:
    """Bytes of a GGUF on disk, every part of a split one (`-00001-of-0000N`) counted."""
    path = Path(path)
    shards = sorted(path.parent.glob(re.sub(r"-00001-of-(\d{5})\.gguf$", r"-*-of-\1.gguf", path.name)))
    return sum(p.stat().st_size for p in shards) if len(shards) > 1 else path.stat().st_size


def identify(filename: str) -> ModelSpec | None:
    """The registry variant a GGUF file name belongs to, if it says (gemma-4-E4B-it-…)."""
    m = re.search(r"gemma-?4[-_]?(e2b|e4b|12b|26b|31b)", filename, re.IGNORECASE)
    return REGISTRY.get(m.group(1).lower()) if m else None


# ---------------------------------------------------------------------------------------------
# Picking files out of a folder or a repo listing
# ---------------------------------------------------------------------------------------------

_MMPROJ_PREFERENCE = ("bf16", "f16", "q8_0", "f32")  # same projector at several precisions


def _stem_base(model_name: str) -> str:
    """gemma-4-E4B-it-Q4_K_M.gguf -> gemma-4-e4b-it (drop the quantization suffix)."""
    stem = Path(model_name).stem.lower()
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", stem)
    return re.sub(r"[-_.](ud-)?(q\d[\w]*|iq\d[\w]*|bf16|f16|f32|mxfp4\w*|qat[\w-]*)$", "", stem)


def pick_mmproj(model_name: str, names: list[str]) -> str | None:
    """The projector for a model among sibling file names: the only one, or the one clearly its own."""
    cands = [n for n in names if "mmproj" in Path(n).name.lower()]
    if len(cands) <= 1:
        return cands[0] if cands else None
    base = _stem_base(model_name)
    own = [n for n in cands if base and base in n.lower()] or (
        cands if not any(identify(n) for n in cands) else [])
    if len(own) == 1:
        return own[0]
    return _by_precision(own)


def pick_draft(model_name: str, names: list[str]) -> str | None:
    """An MTP drafter beside a model (`mtp-…` or `…assistant…`): the only one, or the one naming the model."""
    cands = [n for n in names if re.search(r"(^|/)mtp-|assistant", n, re.IGNORECASE)]
    if len(cands) <= 1:
        return cands[0] if cands else None
    base = _stem_base(model_name).removesuffix("-it")
    own = [n for n in cands if base and base in n.lower()]
    return own[0] if len(own) == 1 else (_by_precision(own, ("q8_0", "bf16", "f16")) if own else None)


def _by_precision(names: list[str], order: tuple[str, ...] = _MMPROJ_PREFERENCE) -> str | None:
    for tag in order:
        hit = [n for n in names if re.search(rf"(?<![a-z0-9]){tag}(?![a-z0-9])", n.lower())]
        if len(hit) == 1:
            return hit[0]
    return None


def match_quant(names: list[str], quant: str) -> list[str] | None:
    """The model file (all its shards) of a quantization in a repo listing; accessories excluded.

    Prefers a plain tag over an unsloth dynamic one (Q4_K_M over UD-Q4_K_M), and a single file
    over shards.
    """
    models = [n for n in names if n.lower().endswith(".gguf") and not _ACCESSORY.search(n)]
    for tag in _QUANT_TAGS[quant]:
        pat = re.compile(rf"(?<![A-Za-z0-9]){re.escape(tag)}(?![A-Za-z0-9])", re.IGNORECASE)
        hits = [n for n in models if pat.search(Path(n).name)]
        if tag == "F16":  # "F16" must not be the tail of "BF16"
            hits = [n for n in hits if not re.search(r"bf16", Path(n).name, re.IGNORECASE)]
        if not hits:
            continue
        plain = [n for n in hits if "ud-" not in n.lower()] or hits
        singles = [n for n in plain if not re.search(r"-\d{5}-of-\d{5}\.gguf$", n)]
        if singles:
            return [sorted(singles, key=len)[0]]
        first = sorted(n for n in plain if "-00001-of-" in n)
        if first:
            total = re.search(r"-00001-of-(\d{5})\.gguf$", first[0])
            stem = first[0][: total.start()]
            shards = sorted(n for n in plain if n.startswith(stem) and re.search(r"-\d{5}-of-\d{5}\.gguf$", n))
            return shards
    return None


# ---------------------------------------------------------------------------------------------
# Pulling
# ---------------------------------------------------------------------------------------------

Progress = Callable[[str, int, "int | None"], None]  # (file name, bytes done, total)


@dataclass
class PullPlan:
    name: str
    groups: list[tuple[str, tuple[File, ...]]] = field(default_factory=list)  # (what, candidates)
    spec: ModelSpec | None = None
    quant: str | None = None


def plan_pull(name: str, *, draft: bool = False, mmproj: bool = True) -> PullPlan:
    """What `gemma models pull NAME` fetches: model, its projector, and with `draft` its drafter."""
    from gemma_cli import config

    name = name.strip()
    if name.startswith("hf:"):
        return PullPlan(name, [("model", (parse_hf(name),))])
    if is_path_like(name):
        raise UsageError(f"'{name}' is a local file, nothing to download",
                         "pull takes a name like e4b or hf:OWNER/REPO/FILE.gguf")
    spec, quant = resolve(name, quant=config.load().pick("quantization", None))
    plan = PullPlan(canonical(spec.key, quant), [("model", spec.weights(quant).files)], spec, quant)
    if mmproj:
        plan.groups.append(("projector", spec.mmproj_files(quant)))
    if draft:
        if not spec.draft:
            raise ModelError(f"no MTP drafter is published for {spec.key}", "pull without --draft")
        plan.groups.append(("drafter", spec.draft))
    return plan


def pull(name: str, *, draft: bool = False, mmproj: bool = True, progress: Progress | None = None) -> Located:
    """Download what a name needs (skipping what is already there) and return it located."""
    plan = plan_pull(name, draft=draft, mmproj=mmproj)
    root = model_dir()
    if plan.spec is None:  # hf: a file, plus the repo's projector when one clearly belongs to it
        f = plan.groups[0][1][0]
        if installed(f, root=root) is None:
            _fetch(f, root, progress)
        if mmproj:
            _fetch_hf_projector(f, root, progress)
        return _locate_hf(plan.name, False)
    todo = [(what, cands) for what, cands in plan.groups if not _have(what, cands, plan, root)]
    if todo:  # the whole pull, before the first byte: a model must not fill the disk half-way
        from gemma_cli import download

        download.check_space(root, sum(_to_fetch(cands[0], root) for _, cands in todo), plan.name)
    for what, cands in todo:
        _fetch_first(what, cands, plan.quant, root, progress)
    return locate_registry(plan.spec, plan.quant, need_mmproj=mmproj, need_draft=draft, root=root)


def _to_fetch(f: File, root: Path) -> int:
    """Bytes still to download for `f`, by the Hub's sizes (0 where it cannot say: fetch() will)."""
    from gemma_cli import download

    total = 0
    for n in f.names():
        try:
            size = download.metadata(f.repo, n).size or 0
        except DownloadError:  # not there (the next candidate is tried), offline, refused: fetch() says so
            return 0
        part = download.partial(store_path(f.repo, n, root=root))
        total += max(0, size - (part.stat().st_size if part.is_file() else 0))
    return total


def _have(what: str, cands: tuple[File, ...], plan: PullPlan, root: Path) -> bool:
    if first_installed(cands, root=root):
        return True
    return what == "model" and bool(_scan_weights(plan.spec.weights(plan.quant), plan.quant, root))


def _fetch_first(what: str, cands: tuple[File, ...], quant: str | None, root: Path, progress) -> Path:
    """The first candidate the Hub has; if none, the file with the same tag found by listing."""
    from gemma_cli import download

    for f in cands:
        try:
            return _fetch(f, root, progress)
        except download.FileMissing:
            continue
    for repo in dict.fromkeys(f.repo for f in cands):
        try:
            names = download.list_files(repo)
        except download.FileMissing:
            continue
        if what == "model" and quant:
            found = match_quant(names, quant)
        elif what == "projector":
            one = pick_mmproj(cands[0].name, names)
            found = [one] if one else None
        else:
            one = pick_draft(cands[0].name, names)
            found = [one] if one else None
        if found:
            return _fetch_names(repo, found, root, progress)
    tried = ", ".join(f.ref for f in cands)
    raise ModelError(f"no {what} file found on the Hub (tried {tried})",
                     "the publisher may have renamed it; use hf:OWNER/REPO/FILE.gguf with the new name")


def _fetch(f: File, root: Path, progress) -> Path:
    return _fetch_names(f.repo, f.names(), root, progress)


def _fetch_names(repo: str, names: list[str], root: Path, progress) -> Path:
    from gemma_cli import download

    first = None
    for n in names:
        dest = store_path(repo, n, root=root)
        cb = (lambda done, total, _n=n: progress(_n, done, total)) if progress else None
        download.fetch(repo, n, dest, progress=cb)
        first = first or dest
    return first


def _fetch_hf_projector(f: File, root: Path, progress) -> None:
    from gemma_cli import download

    try:
        names = download.list_files(f.repo)
    except GemmaError:
        return  # the projector is optional: the model itself is already here
    top = [n for n in names if "/" not in n or n.rsplit("/", 1)[0] == f.name.rpartition("/")[0]]
    one = pick_mmproj(Path(f.name).name, [n for n in top if n != f.name])
    if one and installed(File(f.repo, one, 0), root=root) is None:
        _fetch(File(f.repo, one, 0), root, progress)


# ---------------------------------------------------------------------------------------------
# Removing
# ---------------------------------------------------------------------------------------------


def remove(name: str) -> list[Path]:
    """Delete a model's downloaded files (and unfinished parts); a projector or drafter only when no
    other installed quantization of the variant still uses it. Returns what was deleted."""
    from gemma_cli import config

    root = model_dir()
    name = name.strip()
    if name.startswith("hf:"):
        f = parse_hf(name)
        targets = [store_path(f.repo, n, root=root) for n in f.names()]
    elif is_path_like(name):
        p = Path(name).expanduser().resolve()
        if root.resolve() not in p.parents:
            raise ModelError(f"{p} is not in the model store ({root})", "delete files outside the store yourself")
        targets = [p]
    else:
        spec, quant = resolve(name, quant=config.load().pick("quantization", None))
        w = spec.weights(quant)
        targets = [store_path(f.repo, n, root=root) for f in w.files for n in f.names()]
        found = _scan_weights(w, quant, root)
        if found:
            targets.append(found)
        others = [q for s, q in installed_registry(root) if s is spec and q != quant]
        shared = {installed(f, root=root) for q in others for f in (*spec.mmproj_files(q), *spec.draft)}
        for f in (*spec.mmproj_files(quant), *spec.draft):
            p = installed(f, root=root)
            if p and p not in shared:
                targets.append(p)
    deleted = []
    for t in dict.fromkeys(targets):
        for p in (t, t.with_name(t.name + ".part"), t.with_name(t.name + ".part.json")):
            if p.is_file():
                p.unlink()
                deleted.append(p)
    if not deleted:
        raise ModelError(f"{name} is not downloaded", "`gemma models` lists what is installed")
    _prune_empty(root, [d.parent for d in deleted])
    return deleted


def _prune_empty(root: Path, dirs: list[Path]) -> None:
    for d in dirs:
        while d != root and root in d.parents:
            try:
                d.rmdir()
            except OSError:
                break
            d = d.parent


def stray_files(root: Path | None = None) -> list[Path]:
    """GGUF files in the store that no registry entry accounts for (pulled with hf:)."""
    root = root or model_dir()
    if not root.is_dir():
        return []
    known = set()
    for spec in REGISTRY.values():
        for q in QUANTS:
            for f in (*spec.weights(q).files, *spec.mmproj_files(q)):
                known.update(store_path(f.repo, n, root=root) for n in f.names())
        for f in spec.draft:
            known.update(store_path(f.repo, n, root=root) for n in f.names())
    scanned = {_scan_weights(s.weights(q), q, root) for s, q in installed_registry(root)}
    return sorted(p for p in root.rglob("*.gguf") if p not in known and p not in scanned)


def human_size(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
