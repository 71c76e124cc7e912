"""The Gemma 4 family as data: variants, their quantizations and files on the Hub.

seen together in a published manifest that pins them (a Hub file listing, or a catalog that
pins revision + size + sha256). `verified=False`: the name follows the publisher's naming
pattern or a single report, and the size is an estimate from the parameter count. Sizes are only
used to show and to plan (disk space, memory fit): a download always takes the size and the
sha256 from the Hub itself. When a pinned name has gone from the Hub, `pull` lists the repo and
picks the file with the same quantization tag, as llama.cpp's `-hf repo:quant` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

QUANTS = ("q4_k_m", "q8_0", "bf16", "qat")
DEFAULT_QUANT = "q4_k_m"
QUANT_ALIASES = {"q4": "q4_k_m", "q4km": "q4_k_m", "q4_k_m": "q4_k_m", "q8": "q8_0", "q8_0": "q8_0",
                  "bf16": "bf16", "f16": "bf16", "fp16": "bf16", "qat": "qat", "q4_0": "qat"}
# How a quantization shows in a file name, for finding a file in a repo listing.
QUANT_TAGS = {"q4_k_m": ("Q4_K_M",), "q8_0": ("Q8_0",), "bf16": ("BF16", "F16"), "qat": ("qat", "Q4_0")}
ACCESSORY = re.compile(r"mmproj|(^|/)mtp-|assistant|dflash|imatrix", re.IGNORECASE)


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


def identify(filename: str) -> ModelSpec | None:
    """The registry variant a GGUF file name belongs to, if it says (gemma-4-E4B-it-…)."""
    m = re.search(r"gemma-?4[-_]?(e2b|e4b|12b|26b|31b)", filename, re.IGNORECASE)
    return REGISTRY.get(m.group(1).lower()) if m else None



def human_size(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
