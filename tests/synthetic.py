"""Tiny synthetic Gemma 4 GGUF files with random weights, for tests that need the real llama.cpp.

Everything here is deterministic (seeded numpy, F32 tensors) and small: the text models are
about 1-2 MB, the projectors 1-2 MB, the drafter well under 1 MB, and writing all of them takes a
fraction of a second.  The layouts follow what llama.cpp (llama-cpp-python 0.3.36) reads for the
real E2B/E4B, 31B, mmproj and MTP drafter GGUFs: see ../shared/TEST_MODELS_FACTS.md and the vendored
sources (src/models/gemma4*.cpp, src/llama-vocab.cpp, tools/mtmd/clip.cpp, tools/mtmd/models/gemma4*.cpp).

Some bad layouts do not make llama.cpp report an error: they abort the whole process
(GGML_ASSERT), which would kill pytest.  Every writer therefore validates its spec first and raises
ValueError before anything is written.

Public API
    vocab()                                   the shared tokenizer (tokens, types, merges, ids)
    CONTROL_TOKENS, EOG_TOKENS                the Gemma 4 special tokens of that tokenizer
    text_spec(kind="e", **overrides)          a validated TextSpec ("e" = E2B/E4B-like, "dense" = 31B-like)
    write_text_model(path, kind="e", **overrides)
    write_vision_projector(path, text_hidden, **overrides)     clip, gemma4v
    write_audio_projector(path, text_hidden, **overrides)      clip, gemma4a
    write_av_projector(path, text_hidden, vision=None, audio=None)   one file, gemma4v + gemma4a
    write_unified_projector(path, text_hidden, vision=True, audio=True)   gemma4uv and/or gemma4ua
    drafter_spec(main_hidden, **overrides), write_drafter(path, main_hidden, **overrides)
    write_all(directory, chat_template=...)   every fixture file at once (used by tests/conftest.py)
    read_metadata(path)                       scalar GGUF metadata as a dict (no llama.cpp needed)
All write_* functions validate, write atomically (temp file + rename) and return the Path.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

# A copy of ../shared/reference/gemma4-chat-template.jinja (Google's April 2026 release, as
# llama-cpp-python 0.3.36 ships it; Apache-2.0), kept here so that the synthetic models, and every
# test that loads one, need nothing beside the project. gemma recognises it by its hash, so the
# models get the builder's April variant; tests/test_prompt_variants.py checks the copy is the
# reference's text.
REFERENCE_TEMPLATE = Path(__file__).resolve().parent / "data" / "gemma4-chat-template.jinja"


class _Official:
    def __repr__(self) -> str:
        return "OFFICIAL_TEMPLATE"


#: Default for ``chat_template``: embed the official template (the copy in tests/data).
OFFICIAL_TEMPLATE: Any = _Official()

# token types as written by the converter (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# Ids of the real Gemma 4 vocabulary where they are small; the media tokens sit at the end of the
# vocabulary, in the same order as in the real one (255999, 256000, 258880 ... 258884).
_PINNED: dict[int, str] = {
    0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>",
    46: "<|tool>", 47: "<tool|>", 48: "<|tool_call>", 49: "<tool_call|>",
    50: "<|tool_response>", 51: "<tool_response|>", 52: '<|"|>',
    98: "<|think|>", 100: "<|channel>", 101: "<channel|>", 105: "<|turn>", 106: "<turn|>",
    107: "\n", 108: "\n\n",
}
_MEDIA = ["<|image>", "<|audio>", "<|image|>", "<|audio|>", "<image|>", "<audio|>", "<|video|>"]

#: Rendered even without special parsing (USER_DEFINED), as the gemma4 converter marks them.
USER_DEFINED_TOKENS = ("<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>",
                       "<|tool_response>", "<tool_response|>", '<|"|>')
#: Every Gemma 4 special token of the synthetic vocabulary (each tokenizes to exactly one token).
CONTROL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>", "<|think|>",
                  "<|channel>", "<channel|>", "<|image|>", "<|audio|>", "<|video|>", "<|image>",
                  "<image|>", "<|audio>", "<audio|>", "<|tool>", "<tool|>", "<|tool_call>",
                  "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>')
#: What llama.cpp detects as end-of-generation by name (llama-vocab.cpp).
EOG_TOKENS = ("<eos>", "<turn|>", "<|tool_response>")

# Ordinary pieces.  ASCII words come first so that the first merges are ASCII (llama.cpp logs a
# 37-byte preview of each metadata value; a cut multi-byte character there makes llama-cpp-python's
# log callback raise UnicodeDecodeError when verbose).
_WORDS = [
    "the", "The", "is", "of", "and", "to", "in", "capital", "France", "Paris", "Hello", "hello",
    "world", "What", "what", "you", "it", "for", "call", "get", "weather", "city", "Tokyo", "name",
    "true", "false", "user", "model", "system", "thought", "response", "declaration", "type",
    "string", "number", "answer", "yes", "no", "image", "audio", "tool", "think", "description",
    "properties", "required", "here", "are", "this", "with", "on",
]
_EXTRA_CHARS = ["é", "ü", "ñ", "ß", "日", "本", "語", "中", "文", "—", "’", "…"]
_LATE_WORDS = ["café", "日本語", "▁▁", "▁▁▁▁"]


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]
    types: tuple[int, ...]
    merges: tuple[str, ...]
    ids: dict[str, int]

    def __len__(self) -> int:
        return len(self.tokens)


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """llama.cpp's merge loop: repeatedly merge the adjacent pair of lowest rank (leftmost first)."""
    sym = list(word)
    while len(sym) > 1:
        best = None
        for i in range(len(sym) - 1):
            r = ranks.get((sym[i], sym[i + 1]))
            if r is not None and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        sym[i:i + 2] = [sym[i] + sym[i + 1]]
    return sym


@functools.lru_cache(maxsize=None)
def vocab() -> Vocab:
    """The synthetic Gemma 4 tokenizer shared by every text model and drafter."""
    ranks: dict[tuple[str, str], int] = {}
    merges: list[str] = []
    pieces: list[str] = []  # merge products, in creation order

    def learn(word: str) -> None:
        sym = _bpe(word, ranks)
        while len(sym) > 1:
            ranks[(sym[0], sym[1])] = len(merges)
            merges.append(f"{sym[0]} {sym[1]}")
            if sym[0] + sym[1] not in pieces:
                pieces.append(sym[0] + sym[1])
            sym = _bpe(word, ranks)

    for w in _WORDS:
        learn(w)
    for w in _WORDS:
        learn("▁" + w)
    for w in _LATE_WORDS:
        learn(w)
        if not w.startswith("▁"):
            learn("▁" + w)

    fill: list[str] = [chr(c) for c in range(0x21, 0x7F)]  # printable ASCII, one token each
    fill += ["▁"] + _EXTRA_CHARS
    fill += [f"<0x{b:02X}>" for b in range(256)]
    fill += [p for p in pieces if p not in fill]

    n = len(fill) + len(_PINNED) + len(_MEDIA)
    tokens: list[str | None] = [None] * n
    for i, t in _PINNED.items():
        tokens[i] = t
    it = iter(fill)
    for i in range(n - len(_MEDIA)):
        if tokens[i] is None:
            tokens[i] = next(it)
    tokens[n - len(_MEDIA):] = _MEDIA
    assert None not in tokens and len(set(tokens)) == n

    types = []
    for t in tokens:
        if t in USER_DEFINED_TOKENS:
            types.append(USER_DEFINED)
        elif t in CONTROL_TOKENS:
            types.append(CONTROL)
        elif t.startswith("<0x") and len(t) == 6:
            types.append(BYTE)
        else:
            types.append(NORMAL)
    return Vocab(tuple(tokens), tuple(types), tuple(merges), {t: i for i, t in enumerate(tokens)})


def _resolve_template(chat_template: Any) -> str | None:
    if chat_template is OFFICIAL_TEMPLATE:
        if not REFERENCE_TEMPLATE.is_file():
            raise FileNotFoundError(f"official chat template not found at {REFERENCE_TEMPLATE}; pass chat_template=")
        return REFERENCE_TEMPLATE.read_text(encoding="utf-8")
    if chat_template is not None and not isinstance(chat_template, str):
        raise ValueError("chat_template must be a string, None or OFFICIAL_TEMPLATE")
    return chat_template


def _add_tokenizer(w: gguf.GGUFWriter, chat_template: str | None) -> None:
    v = vocab()
    w.add_string("tokenizer.ggml.model", "gemma4")
    w.add_array("tokenizer.ggml.tokens", list(v.tokens))
    w.add_array("tokenizer.ggml.scores", [0.0] * len(v))
    w.add_array("tokenizer.ggml.token_type", list(v.types))
    w.add_array("tokenizer.ggml.merges", list(v.merges))
    w.add_uint32("tokenizer.ggml.bos_token_id", v.ids["<bos>"])
    w.add_uint32("tokenizer.ggml.eos_token_id", v.ids["<eos>"])
    w.add_uint32("tokenizer.ggml.unknown_token_id", v.ids["<unk>"])
    w.add_uint32("tokenizer.ggml.padding_token_id", v.ids["<pad>"])
    w.add_uint32("tokenizer.ggml.mask_token_id", v.ids["<mask>"])
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_space_prefix", False)
    if chat_template is not None:
        w.add_string("tokenizer.chat_template", chat_template)


# ---------------------------------------------------------------------------------------------
# Writing helpers
# ---------------------------------------------------------------------------------------------

class _Tensors:
    """Seeded random tensors, given in llama.cpp dimension order (numpy shape is reversed)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.items: list[tuple[str, np.ndarray]] = []

    def add(self, name: str, array: np.ndarray) -> None:
        self.items.append((name, np.ascontiguousarray(array, dtype=np.float32)))

    def mat(self, name: str, *ne: int, scale: float | None = None) -> None:
        if scale is None:
            scale = 1.0 / np.sqrt(ne[0])  # fan-in
        self.add(name, self.rng.standard_normal(tuple(reversed(ne)), dtype=np.float32) * np.float32(scale))

    def norm(self, name: str, n: int) -> None:
        self.add(name, 1.0 + 0.1 * self.rng.standard_normal(n, dtype=np.float32))

    def const(self, name: str, values) -> None:
        self.add(name, np.asarray(values, dtype=np.float32))


def _write(path: str | os.PathLike, arch: str, kv, tensors: _Tensors) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        w = gguf.GGUFWriter(str(tmp), arch)
        kv(w)
        for name, array in tensors.items:
            w.add_tensor(name, array)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


# ---------------------------------------------------------------------------------------------
# Text models (general.architecture = gemma4)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextSpec:
    kind: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv_swa: int
    n_head_kv_full: int
    head_dim_swa: int
    head_dim_full: int
    n_ff: int
    double_wide_shared: bool        # shared-KV layers get 2 * n_ff (E2B's use_double_wide_mlp)
    n_embd_per_layer: int           # per-layer embeddings (PLE); 0 = none
    shared_kv_layers: int
    swa_pattern: tuple[bool, ...]   # True = sliding-window layer
    sliding_window: int
    context_length: int
    k_eq_v_full: bool = False       # full-attention layers without attn_v (31B's attention_k_eq_v)
    partial_rotary_full: float = 0.25
    rope_freq_base: float = 1_000_000.0
    rope_freq_base_swa: float = 10_000.0
    final_logit_softcapping: float = 30.0
    rms_eps: float = 1e-6
    tied_output: bool = False       # True: no output.weight (random weights then repeat one token)
    layer_output_scale: bool = True
    seed: int = 1
    name: str = "synthetic"

    @property
    def kv_layers(self) -> int:
        """Layers that own their KV cache (the others reuse it)."""
        return self.n_layer - self.shared_kv_layers

    @property
    def swa_layers(self) -> list[int]:
        return [i for i, s in enumerate(self.swa_pattern) if s]

    @property
    def full_layers(self) -> list[int]:
        return [i for i, s in enumerate(self.swa_pattern) if not s]

    def n_head_kv(self, il: int) -> int:
        return self.n_head_kv_swa if self.swa_pattern[il] else self.n_head_kv_full

    def head_dim(self, il: int) -> int:
        return self.head_dim_swa if self.swa_pattern[il] else self.head_dim_full

    def n_ff_layer(self, il: int) -> int:
        return self.n_ff * 2 if self.double_wide_shared and il >= self.kv_layers else self.n_ff

    @property
    def n_rot_full_pairs(self) -> int:
        return int(self.head_dim_full * self.partial_rotary_full / 2)


def _pattern(n_layer: int, full_every: int) -> tuple[bool, ...]:
    return tuple(not ((i + 1) % full_every == 0 or i == n_layer - 1) for i in range(n_layer))


# kind "e": E2B/E4B-like.  6 layers, 2 sliding + 1 global; layers 3-5 reuse the KV of layers 1 (SWA)
# and 2 (full), like E2B (35 layers, 20 shared).  kind "dense": 31B-like, 5 sliding + 1 global, no PLE,
# no shared KV, fewer KV heads on the global layer and K = V there.
_PRESETS: dict[str, dict[str, Any]] = {
    "e": dict(kind="e", n_embd=64, n_layer=6, n_head=2, n_head_kv_swa=1, n_head_kv_full=1,
              head_dim_swa=32, head_dim_full=64, n_ff=128, double_wide_shared=True,
              n_embd_per_layer=8, shared_kv_layers=3, full_every=3, sliding_window=32,
              context_length=4096, seed=1, name="synthetic-gemma4-e"),
    "dense": dict(kind="dense", n_embd=96, n_layer=6, n_head=4, n_head_kv_swa=2, n_head_kv_full=1,
                  head_dim_swa=16, head_dim_full=32, n_ff=192, double_wide_shared=False,
                  n_embd_per_layer=0, shared_kv_layers=0, full_every=6, sliding_window=64,
                  context_length=4096, k_eq_v_full=True, seed=2, name="synthetic-gemma4-dense"),
}


def text_spec(kind: str = "e", **overrides) -> TextSpec:
    """The validated spec of a synthetic text model; ``overrides`` replace TextSpec fields.

    ``swa_pattern`` may be given explicitly; otherwise it follows the preset's rhythm
    (``full_every``, which may also be overridden) with the last layer global.
    """
    _check(kind in _PRESETS, f"unknown kind {kind!r} (expected one of {sorted(_PRESETS)})")
    params = dict(_PRESETS[kind])
    params.update(overrides)
    full_every = params.pop("full_every")
    if params.get("swa_pattern") is None:
        params["swa_pattern"] = _pattern(params["n_layer"], full_every)
    params["swa_pattern"] = tuple(bool(x) for x in params["swa_pattern"])
    unknown = set(params) - {f.name for f in dataclasses.fields(TextSpec)}
    _check(not unknown, f"unknown text model parameters: {sorted(unknown)}")
    spec = TextSpec(**params)
    validate_text_spec(spec)
    return spec


def validate_text_spec(s: TextSpec) -> None:
    """Raise ValueError for every layout that llama.cpp would reject or abort on."""
    _check(s.n_layer >= 2, "n_layer must be >= 2")
    _check(len(s.swa_pattern) == s.n_layer, f"swa_pattern has {len(s.swa_pattern)} entries for {s.n_layer} layers")
    # gemma4 always uses standard SWA: llama.cpp asserts at least one sliding layer (is_swa_any)
    _check(any(s.swa_pattern), "at least one layer must be sliding-window (llama.cpp asserts is_swa_any)")
    _check(not s.swa_pattern[-1], "the last layer must be global (full attention)")
    _check(0 <= s.shared_kv_layers < s.n_layer, "shared_kv_layers must be in [0, n_layer)")
    # the KV-reuse callback asserts n_layer_kv_from_start >= 2 for every gemma4 model
    _check(s.kv_layers >= 2, "at least 2 layers must own their KV (llama.cpp asserts n_layer_kv_from_start >= 2)")
    if s.shared_kv_layers:
        # shared SWA layers reuse layer kv_layers-2, shared full layers reuse kv_layers-1; when those are
        # not sliding / full respectively llama.cpp aborts (GGML_ASSERT map_layer_ids.find(il_reuse))
        _check(s.swa_pattern[s.kv_layers - 2] and not s.swa_pattern[s.kv_layers - 1],
               f"with shared KV the last two layers that own their KV (layers {s.kv_layers - 2}, "
               f"{s.kv_layers - 1}) must be sliding then full; pattern is {list(s.swa_pattern)}")
    _check(s.n_embd > 0 and s.n_head > 0 and s.n_ff > 0, "sizes must be positive")
    for kv in (s.n_head_kv_swa, s.n_head_kv_full):
        _check(kv > 0 and s.n_head % kv == 0, f"n_head ({s.n_head}) must be a multiple of n_head_kv ({kv})")
    for hd in (s.head_dim_swa, s.head_dim_full):
        _check(hd > 0 and hd % 2 == 0, "head dims must be positive and even")
    _check(s.n_rot_full_pairs >= 1, "partial_rotary_full leaves no rotated dimension")
    _check(0 < s.sliding_window, "sliding_window must be positive")
    _check(s.context_length >= s.sliding_window, "context_length must be >= sliding_window")
    _check(s.n_embd_per_layer >= 0, "n_embd_per_layer must be >= 0")
    _check(s.final_logit_softcapping >= 0, "final_logit_softcapping must be >= 0")


def write_text_model(path: str | os.PathLike, kind: str = "e", *, chat_template: Any = OFFICIAL_TEMPLATE,
                     **overrides) -> Path:
    """Write a tiny ``gemma4`` text model; see text_spec() for ``kind`` and ``overrides``."""
    spec = text_spec(kind, **overrides)
    template = _resolve_template(chat_template)
    return _write_text(path, spec, template)


def _write_text(path, s: TextSpec, template: str | None) -> Path:
    v = vocab()
    a = "gemma4"
    n_vocab = len(v)

    def kv(w: gguf.GGUFWriter) -> None:
        w.add_string("general.name", s.name)
        w.add_uint32("general.file_type", 0)  # all F32
        w.add_uint32(f"{a}.context_length", s.context_length)
        w.add_uint32(f"{a}.embedding_length", s.n_embd)
        w.add_uint32(f"{a}.block_count", s.n_layer)
        if s.double_wide_shared and s.shared_kv_layers:
            w.add_array(f"{a}.feed_forward_length", [s.n_ff_layer(i) for i in range(s.n_layer)])
        else:
            w.add_uint32(f"{a}.feed_forward_length", s.n_ff)
        w.add_uint32(f"{a}.attention.head_count", s.n_head)
        if s.n_head_kv_swa == s.n_head_kv_full:
            w.add_uint32(f"{a}.attention.head_count_kv", s.n_head_kv_swa)
        else:
            w.add_array(f"{a}.attention.head_count_kv", [s.n_head_kv(i) for i in range(s.n_layer)])
        w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", s.rms_eps)
        w.add_uint32(f"{a}.attention.key_length", s.head_dim_full)
        w.add_uint32(f"{a}.attention.value_length", s.head_dim_full)
        w.add_uint32(f"{a}.attention.key_length_swa", s.head_dim_swa)
        w.add_uint32(f"{a}.attention.value_length_swa", s.head_dim_swa)
        w.add_uint32(f"{a}.attention.sliding_window", s.sliding_window)
        w.add_array(f"{a}.attention.sliding_window_pattern", list(s.swa_pattern))
        w.add_uint32(f"{a}.attention.shared_kv_layers", s.shared_kv_layers)
        w.add_uint32(f"{a}.embedding_length_per_layer_input", s.n_embd_per_layer)
        w.add_float32(f"{a}.rope.freq_base", s.rope_freq_base)
        w.add_float32(f"{a}.rope.freq_base_swa", s.rope_freq_base_swa)
        w.add_uint32(f"{a}.rope.dimension_count", s.head_dim_full)
        w.add_uint32(f"{a}.rope.dimension_count_swa", s.head_dim_swa)
        if s.final_logit_softcapping:
            w.add_float32(f"{a}.final_logit_softcapping", s.final_logit_softcapping)
        _add_tokenizer(w, template)

    t = _Tensors(s.seed)
    t.mat("token_embd.weight", s.n_embd, n_vocab, scale=0.5)
    if not s.tied_output:
        t.mat("output.weight", s.n_embd, n_vocab, scale=0.5)
    t.norm("output_norm.weight", s.n_embd)
    if s.full_layers:
        pairs = s.n_rot_full_pairs
        t.const("rope_freqs.weight", [1.0] * pairs + [1e30] * (s.head_dim_full // 2 - pairs))
    ple = s.n_embd_per_layer
    if ple:
        t.mat("per_layer_token_embd.weight", ple * s.n_layer, n_vocab, scale=0.5)
        t.mat("per_layer_model_proj.weight", s.n_embd, ple * s.n_layer)
        t.norm("per_layer_proj_norm.weight", ple)
    for il in range(s.n_layer):
        p = f"blk.{il}."
        hd, nkv, ff = s.head_dim(il), s.n_head_kv(il), s.n_ff_layer(il)
        t.norm(p + "attn_norm.weight", s.n_embd)
        t.mat(p + "attn_q.weight", s.n_embd, hd * s.n_head)
        if il < s.kv_layers:
            t.mat(p + "attn_k.weight", s.n_embd, hd * nkv)
            if not (s.k_eq_v_full and not s.swa_pattern[il]):
                t.mat(p + "attn_v.weight", s.n_embd, hd * nkv)
            t.norm(p + "attn_k_norm.weight", hd)
        t.norm(p + "attn_q_norm.weight", hd)
        t.mat(p + "attn_output.weight", hd * s.n_head, s.n_embd)
        t.norm(p + "post_attention_norm.weight", s.n_embd)
        t.norm(p + "ffn_norm.weight", s.n_embd)
        t.mat(p + "ffn_gate.weight", s.n_embd, ff)
        t.mat(p + "ffn_up.weight", s.n_embd, ff)
        t.mat(p + "ffn_down.weight", ff, s.n_embd)
        t.norm(p + "post_ffw_norm.weight", s.n_embd)
        if s.layer_output_scale:
            t.const(p + "layer_output_scale.weight", [1.0])
        if ple:
            t.mat(p + "inp_gate.weight", s.n_embd, ple)
            t.mat(p + "proj.weight", ple, s.n_embd)
            t.norm(p + "post_norm.weight", s.n_embd)
    return _write(path, a, kv, t)


# ---------------------------------------------------------------------------------------------
# Projectors (general.architecture = clip)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VisionSpec:
    n_embd: int = 16
    n_head: int = 2
    n_ff: int = 32
    n_layer: int = 2
    image_size: int = 224          # unused by gemma4v but required (the converter writes 224)
    patch_size: int = 16
    pos_size: int = 10240          # learned x/y position tables; as large as the real one so no image indexes past it
    eps: float = 1e-6
    seed: int = 3


@dataclass(frozen=True)
class AudioSpec:
    n_embd: int = 32
    n_head: int = 2
    n_ff: int = 128
    n_layer: int = 1
    n_mel_bins: int = 128           # as the real mmproj; clip.cpp allows 1..256
    conv_channels: tuple[int, int] = (8, 4)
    eps: float = 1e-6
    seed: int = 4

    @property
    def freq_out(self) -> int:
        """Frequency bins left after the two stride-2 subsampling convolutions."""
        n = self.n_mel_bins
        for _ in range(2):
            n = (n - 1) // 2 + 1
        return n


def validate_vision_spec(s: VisionSpec, text_hidden: int) -> None:
    _check(text_hidden > 0, "text_hidden must be positive")
    _check(s.n_embd > 0 and s.n_head > 0 and s.n_embd % s.n_head == 0, "vision n_embd must be a multiple of n_head")
    d_head = s.n_embd // s.n_head
    # 2-D rope: half of each head for x, half for y, each a NEOX rope over an even number of dims
    _check(d_head % 4 == 0, f"vision head dim ({d_head}) must be a multiple of 4")
    _check(s.n_layer >= 1 and s.n_ff > 0, "the vision tower needs layers and an FFN")
    _check(s.patch_size > 0 and s.image_size > 0 and s.pos_size > 0, "vision sizes must be positive")


def validate_audio_spec(s: AudioSpec, text_hidden: int) -> None:
    _check(text_hidden > 0, "text_hidden must be positive")
    _check(1 <= s.n_mel_bins <= 256, "n_mel_bins must be in [1, 256] (clip.cpp)")
    _check(s.n_embd > 0 and s.n_head > 0 and s.n_embd % s.n_head == 0, "audio n_embd must be a multiple of n_head")
    _check(s.n_layer >= 1 and s.n_ff > 0, "the audio conformer needs layers and an FFN")
    _check(len(s.conv_channels) == 2 and min(s.conv_channels) > 0, "conv_channels must be two positive ints")


def _vision_kv(w: gguf.GGUFWriter, s: VisionSpec, text_hidden: int, proj: str = "gemma4v") -> None:
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.vision.projector_type", proj)
    w.add_uint32("clip.vision.image_size", s.image_size)
    w.add_uint32("clip.vision.patch_size", s.patch_size)
    w.add_uint32("clip.vision.embedding_length", s.n_embd)
    w.add_uint32("clip.vision.feed_forward_length", s.n_ff)
    w.add_uint32("clip.vision.block_count", s.n_layer)
    w.add_uint32("clip.vision.attention.head_count", s.n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", s.eps)
    w.add_uint32("clip.vision.projection_dim", text_hidden)
    w.add_array("clip.vision.image_mean", [0.0, 0.0, 0.0])
    w.add_array("clip.vision.image_std", [1.0, 1.0, 1.0])


def _vision_tensors(t: _Tensors, s: VisionSpec, text_hidden: int) -> None:
    d_head = s.n_embd // s.n_head
    t.mat("v.patch_embd.weight", s.patch_size, s.patch_size, 3, s.n_embd,
          scale=1.0 / np.sqrt(3 * s.patch_size * s.patch_size))
    t.mat("v.position_embd.weight", s.n_embd, s.pos_size, 2, scale=0.1)
    for il in range(s.n_layer):
        p = f"v.blk.{il}."
        t.norm(p + "ln1.weight", s.n_embd)
        for n in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t.mat(p + n + ".weight", s.n_embd, s.n_embd)
        t.norm(p + "attn_q_norm.weight", d_head)
        t.norm(p + "attn_k_norm.weight", d_head)
        t.norm(p + "attn_post_norm.weight", s.n_embd)
        t.norm(p + "ln2.weight", s.n_embd)
        t.mat(p + "ffn_gate.weight", s.n_embd, s.n_ff)
        t.mat(p + "ffn_up.weight", s.n_embd, s.n_ff)
        t.mat(p + "ffn_down.weight", s.n_ff, s.n_embd)
        t.norm(p + "ffn_post_norm.weight", s.n_embd)
    t.mat("mm.input_projection.weight", s.n_embd, text_hidden)


def _audio_kv(w: gguf.GGUFWriter, s: AudioSpec, text_hidden: int) -> None:
    w.add_bool("clip.has_audio_encoder", True)
    w.add_string("clip.audio.projector_type", "gemma4a")
    w.add_uint32("clip.audio.num_mel_bins", s.n_mel_bins)
    w.add_uint32("clip.audio.embedding_length", s.n_embd)
    w.add_uint32("clip.audio.feed_forward_length", s.n_ff)
    w.add_uint32("clip.audio.block_count", s.n_layer)
    w.add_uint32("clip.audio.attention.head_count", s.n_head)
    w.add_float32("clip.audio.attention.layer_norm_epsilon", s.eps)
    w.add_uint32("clip.audio.projection_dim", text_hidden)


def _audio_tensors(t: _Tensors, s: AudioSpec, text_hidden: int) -> None:
    c0, c1 = s.conv_channels
    d_head = s.n_embd // s.n_head
    e = s.n_embd
    t.mat("a.conv1d.0.weight", 3, 3, 1, c0, scale=1.0 / 3)
    t.norm("a.conv1d.0.norm.weight", c0)
    t.mat("a.conv1d.1.weight", 3, 3, c0, c1, scale=1.0 / (3 * np.sqrt(c0)))
    t.norm("a.conv1d.1.norm.weight", c1)
    t.mat("a.input_projection.weight", c1 * s.freq_out, e)
    for il in range(s.n_layer):
        p = f"a.blk.{il}."
        t.norm(p + "ffn_norm.weight", e)
        t.mat(p + "ffn_up.weight", e, s.n_ff)
        t.mat(p + "ffn_down.weight", s.n_ff, e)
        t.norm(p + "ffn_post_norm.weight", e)
        t.norm(p + "attn_pre_norm.weight", e)
        for n in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t.mat(p + n + ".weight", e, e)
        t.const(p + "per_dim_scale.weight", np.full(d_head, 0.7))   # softplus(0) ~ 0.69
        t.const(p + "per_dim_k_scale.weight", np.full(d_head, 0.7))
        t.mat(p + "attn_k_rel.weight", e, e)
        t.norm(p + "attn_post_norm.weight", e)
        t.norm(p + "conv_norm.weight", e)
        t.mat(p + "conv_pw1.weight", e, 2 * e)
        t.mat(p + "conv_dw.weight", 5, e, scale=1.0 / np.sqrt(5))     # kernel 5: clip.cpp pads 4 on the left
        t.norm(p + "norm_conv.weight", e)
        t.mat(p + "conv_pw2.weight", e, e)
        t.norm(p + "ffn_norm_1.weight", e)
        t.mat(p + "ffn_up_1.weight", e, s.n_ff)
        t.mat(p + "ffn_down_1.weight", s.n_ff, e)
        t.norm(p + "ffn_post_norm_1.weight", e)
        t.norm(p + "ln2.weight", e)
    t.mat("mm.a.input_projection.weight", e, text_hidden)


def _clip_common(w: gguf.GGUFWriter, name: str) -> None:
    w.add_string("general.name", name)
    w.add_uint32("general.file_type", 0)
    w.add_bool("clip.use_gelu", True)


def write_vision_projector(path: str | os.PathLike, text_hidden: int, **overrides) -> Path:
    """A vision-only ``gemma4v`` mmproj whose output width is ``text_hidden`` (the text model's hidden size)."""
    s = VisionSpec(**overrides)
    validate_vision_spec(s, text_hidden)
    t = _Tensors(s.seed)
    _vision_tensors(t, s, text_hidden)

    def kv(w):
        _clip_common(w, "synthetic-gemma4-mmproj-vision")
        _vision_kv(w, s, text_hidden)
    return _write(path, "clip", kv, t)


def write_audio_projector(path: str | os.PathLike, text_hidden: int, **overrides) -> Path:
    """An audio-only ``gemma4a`` mmproj (conformer) whose output width is ``text_hidden``."""
    s = AudioSpec(**overrides)
    validate_audio_spec(s, text_hidden)
    t = _Tensors(s.seed)
    _audio_tensors(t, s, text_hidden)

    def kv(w):
        _clip_common(w, "synthetic-gemma4-mmproj-audio")
        _audio_kv(w, s, text_hidden)
    return _write(path, "clip", kv, t)


def write_av_projector(path: str | os.PathLike, text_hidden: int, *, vision: dict | None = None,
                       audio: dict | None = None) -> Path:
    """One mmproj with both encoders (``gemma4v`` + ``gemma4a``), as the real E2B/E4B mmproj files."""
    vs, aus = VisionSpec(**(vision or {})), AudioSpec(**(audio or {}))
    validate_vision_spec(vs, text_hidden)
    validate_audio_spec(aus, text_hidden)
    t = _Tensors(vs.seed * 1000 + aus.seed)
    _vision_tensors(t, vs, text_hidden)
    _audio_tensors(t, aus, text_hidden)

    def kv(w):
        _clip_common(w, "synthetic-gemma4-mmproj-av")
        _vision_kv(w, vs, text_hidden)
        _audio_kv(w, aus, text_hidden)
    return _write(path, "clip", kv, t)


UA_FRAME = 640  # gemma4ua: raw 16 kHz waveform in 640-sample frames (fixed in clip.cpp)


def write_unified_projector(path: str | os.PathLike, text_hidden: int, *, vision: bool = True, audio: bool = True,
                            n_embd: int = 16, patch_size: int = 16, n_merge: int = 3, pos_size: int = 10240,
                            seed: int = 5) -> Path:
    """The encoder-free "unified" projectors: ``gemma4uv`` (vision) and/or ``gemma4ua`` (audio).

    gemma4uv patchifies with an effective patch of ``patch_size * n_merge`` pixels (clip.cpp), then
    LayerNorm -> linear -> LayerNorm, learned x/y positions, LayerNorm, RMSNorm and the projection.
    gemma4ua only RMS-normalises 640-sample waveform frames and projects them.
    """
    _check(vision or audio, "a projector needs at least one modality")
    _check(text_hidden > 0 and n_embd > 0 and patch_size > 0 and n_merge > 0 and pos_size > 0,
           "sizes must be positive")
    p = patch_size * n_merge
    t = _Tensors(seed)
    if vision:
        t.mat("v.patch_embd.weight", p * p * 3, n_embd)
        t.const("v.patch_embd.bias", np.zeros(n_embd))
        for i, n in ((1, p * p * 3), (2, n_embd), (3, n_embd)):
            t.norm(f"v.patch_norm.{i}.weight", n)
            t.const(f"v.patch_norm.{i}.bias", np.zeros(n))
        t.mat("v.position_embd.weight", n_embd, pos_size, 2, scale=0.1)
        t.mat("mm.input_projection.weight", n_embd, text_hidden)
    if audio:
        t.mat("mm.a.input_projection.weight", UA_FRAME, text_hidden)

    def kv(w):
        _clip_common(w, "synthetic-gemma4-mmproj-unified")
        if vision:
            w.add_bool("clip.has_vision_encoder", True)
            w.add_string("clip.vision.projector_type", "gemma4uv")
            w.add_uint32("clip.vision.image_size", 224)
            w.add_uint32("clip.vision.patch_size", patch_size)
            w.add_uint32("clip.vision.projector.scale_factor", n_merge)
            w.add_uint32("clip.vision.embedding_length", n_embd)
            w.add_uint32("clip.vision.feed_forward_length", 0)
            w.add_uint32("clip.vision.block_count", 0)
            w.add_uint32("clip.vision.attention.head_count", 0)
            w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
            w.add_uint32("clip.vision.projection_dim", text_hidden)
            w.add_array("clip.vision.image_mean", [0.0, 0.0, 0.0])
            w.add_array("clip.vision.image_std", [1.0, 1.0, 1.0])
        if audio:
            w.add_bool("clip.has_audio_encoder", True)
            w.add_string("clip.audio.projector_type", "gemma4ua")
            w.add_uint32("clip.audio.num_mel_bins", UA_FRAME)
            w.add_uint32("clip.audio.embedding_length", UA_FRAME)
            w.add_uint32("clip.audio.feed_forward_length", 0)
            w.add_uint32("clip.audio.block_count", 0)
            w.add_uint32("clip.audio.attention.head_count", 0)
            w.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-6)
            w.add_uint32("clip.audio.projection_dim", text_hidden)
    return _write(path, "clip", kv, t)


# ---------------------------------------------------------------------------------------------
# MTP drafter (general.architecture = gemma4-assistant)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DrafterSpec:
    main_hidden: int                  # embedding_length_out: the main model's hidden size
    n_embd: int = 32
    swa_pattern: tuple[bool, ...] = (True, False)
    n_head: int = 2
    n_head_kv: int = 1                # must match the main model (the drafter attends over its KV)
    head_dim_swa: int = 32            # must match the main model's SWA head size
    head_dim_full: int = 64           # must match the main model's full-attention head size
    n_ff: int = 64
    sliding_window: int = 32
    context_length: int = 4096
    partial_rotary_full: float = 0.25
    rope_freq_base: float = 1_000_000.0
    rope_freq_base_swa: float = 10_000.0
    rms_eps: float = 1e-6
    seed: int = 6
    name: str = "synthetic-gemma4-assistant"

    @property
    def n_layer(self) -> int:
        return len(self.swa_pattern)


def drafter_spec(main_hidden: int, *, main: TextSpec | None = None, **overrides) -> DrafterSpec:
    """A validated drafter spec.  With ``main`` the head sizes, KV heads and window follow that model."""
    params: dict[str, Any] = {}
    if main is not None:
        params.update(head_dim_swa=main.head_dim_swa, head_dim_full=main.head_dim_full,
                      n_head_kv=main.n_head_kv_swa, sliding_window=main.sliding_window,
                      context_length=main.context_length, rope_freq_base=main.rope_freq_base,
                      rope_freq_base_swa=main.rope_freq_base_swa)
    params.update(overrides)
    if "swa_pattern" in params:
        params["swa_pattern"] = tuple(bool(x) for x in params["swa_pattern"])
    s = DrafterSpec(main_hidden=main_hidden, **params)
    validate_drafter_spec(s, main)
    return s


def validate_drafter_spec(s: DrafterSpec, main: TextSpec | None = None) -> None:
    _check(s.main_hidden > 0 and s.n_embd > 0, "sizes must be positive")
    # llama.cpp: "Gemma 4 assistant requires embedding_length_out to carry the target hidden size"
    _check(s.main_hidden != s.n_embd, "the drafter's hidden size must differ from main_hidden (llama.cpp rule)")
    _check(s.n_layer >= 1, "the drafter needs at least one layer")
    _check(any(s.swa_pattern), "at least one drafter layer must be sliding-window (is_swa_any)")
    _check(s.n_head_kv > 0 and s.n_head % s.n_head_kv == 0, "n_head must be a multiple of n_head_kv")
    _check(s.head_dim_swa % 2 == 0 and s.head_dim_full % 2 == 0, "head dims must be even")
    if main is not None:
        # the draft context shares the main model's last SWA and last full layer KV
        _check(main.n_layer >= 2 and main.swa_pattern[-2] and not main.swa_pattern[-1],
               "the main model's last two layers must be sliding then full to host a drafter")
        _check(s.main_hidden == main.n_embd, "main_hidden must equal the main model's hidden size")
        _check((s.head_dim_swa, s.head_dim_full) == (main.head_dim_swa, main.head_dim_full),
               "the drafter's head sizes must equal the main model's")
        _check(s.n_head_kv in (main.n_head_kv_swa, main.n_head_kv_full) and
               s.n_head % main.n_head_kv_swa == 0 and s.n_head % main.n_head_kv_full == 0,
               "the drafter's heads must be a multiple of the main model's KV heads")


def write_drafter(path: str | os.PathLike, main_hidden: int, *, main: TextSpec | None = None,
                  chat_template: Any = None, **overrides) -> Path:
    """Write a ``gemma4-assistant`` MTP drafter for a main model of hidden size ``main_hidden``.

    The defaults fit ``text_spec("e")``.  For a drafter of the wrong size (a fall-back test) pass a
    ``main_hidden`` other than the main model's: it loads as a model, but must never be paired with
    that main model in an MTP context (llama.cpp would multiply mismatched matrices).
    """
    s = drafter_spec(main_hidden, main=main, **overrides)
    template = _resolve_template(chat_template)
    v = vocab()
    a = "gemma4-assistant"

    def kv(w):
        w.add_string("general.name", s.name)
        w.add_uint32("general.file_type", 0)
        w.add_uint32(f"{a}.context_length", s.context_length)
        w.add_uint32(f"{a}.embedding_length", s.n_embd)
        w.add_uint32(f"{a}.embedding_length_out", s.main_hidden)
        w.add_uint32(f"{a}.block_count", s.n_layer)
        w.add_uint32(f"{a}.nextn_predict_layers", s.n_layer)
        w.add_uint32(f"{a}.feed_forward_length", s.n_ff)
        w.add_uint32(f"{a}.attention.head_count", s.n_head)
        w.add_uint32(f"{a}.attention.head_count_kv", s.n_head_kv)
        w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", s.rms_eps)
        w.add_uint32(f"{a}.attention.key_length", s.head_dim_full)
        w.add_uint32(f"{a}.attention.value_length", s.head_dim_full)
        w.add_uint32(f"{a}.attention.key_length_swa", s.head_dim_swa)
        w.add_uint32(f"{a}.attention.value_length_swa", s.head_dim_swa)
        w.add_uint32(f"{a}.attention.sliding_window", s.sliding_window)
        w.add_array(f"{a}.attention.sliding_window_pattern", list(s.swa_pattern))
        w.add_uint32(f"{a}.attention.shared_kv_layers", 0)
        w.add_uint32(f"{a}.embedding_length_per_layer_input", 0)
        w.add_float32(f"{a}.rope.freq_base", s.rope_freq_base)
        w.add_float32(f"{a}.rope.freq_base_swa", s.rope_freq_base_swa)
        w.add_uint32(f"{a}.rope.dimension_count", s.head_dim_full)
        w.add_uint32(f"{a}.rope.dimension_count_swa", s.head_dim_swa)
        _add_tokenizer(w, template)

    t = _Tensors(s.seed)
    t.mat("token_embd.weight", s.n_embd, len(v), scale=0.5)   # also the drafter's output head
    t.norm("output_norm.weight", s.n_embd)
    t.mat("nextn.pre_projection.weight", 2 * s.main_hidden, s.n_embd)
    t.mat("nextn.post_projection.weight", s.n_embd, s.main_hidden)
    if not all(s.swa_pattern):
        pairs = int(s.head_dim_full * s.partial_rotary_full / 2)
        t.const("rope_freqs.weight", [1.0] * pairs + [1e30] * (s.head_dim_full // 2 - pairs))
    for il, swa in enumerate(s.swa_pattern):
        p = f"blk.{il}."
        hd = s.head_dim_swa if swa else s.head_dim_full
        t.norm(p + "attn_norm.weight", s.n_embd)
        t.mat(p + "attn_q.weight", s.n_embd, hd * s.n_head)
        t.norm(p + "attn_q_norm.weight", hd)
        t.mat(p + "attn_output.weight", hd * s.n_head, s.n_embd)
        t.norm(p + "post_attention_norm.weight", s.n_embd)
        t.const(p + "layer_output_scale.weight", [1.0])
        t.norm(p + "ffn_norm.weight", s.n_embd)
        t.mat(p + "ffn_gate.weight", s.n_embd, s.n_ff)
        t.mat(p + "ffn_up.weight", s.n_embd, s.n_ff)
        t.mat(p + "ffn_down.weight", s.n_ff, s.n_embd)
        t.norm(p + "post_ffw_norm.weight", s.n_embd)
    return _write(path, a, kv, t)


# ---------------------------------------------------------------------------------------------
# Everything at once, and reading back
# ---------------------------------------------------------------------------------------------

FILES = {
    "e_model": "gemma4-e.gguf",
    "dense_model": "gemma4-dense.gguf",
    "vision_mmproj": "mmproj-e-vision.gguf",
    "audio_mmproj": "mmproj-e-audio.gguf",
    "av_mmproj": "mmproj-e-av.gguf",
    "dense_vision_mmproj": "mmproj-dense-vision.gguf",
    "unified_mmproj": "mmproj-e-unified.gguf",
    "drafter": "gemma4-e-assistant.gguf",
    "wrong_drafter": "gemma4-wrong-assistant.gguf",
}


def write_all(directory: str | os.PathLike, *, chat_template: Any = OFFICIAL_TEMPLATE) -> dict[str, Path]:
    """Write every fixture file into ``directory``; returns {fixture name: path}."""
    d = Path(directory)
    e, dense = text_spec("e"), text_spec("dense")
    template = _resolve_template(chat_template)
    out = {
        "e_model": _write_text(d / FILES["e_model"], e, template),
        "dense_model": _write_text(d / FILES["dense_model"], dense, template),
        "vision_mmproj": write_vision_projector(d / FILES["vision_mmproj"], e.n_embd),
        "audio_mmproj": write_audio_projector(d / FILES["audio_mmproj"], e.n_embd),
        "av_mmproj": write_av_projector(d / FILES["av_mmproj"], e.n_embd),
        "dense_vision_mmproj": write_vision_projector(d / FILES["dense_vision_mmproj"], dense.n_embd, seed=7),
        "unified_mmproj": write_unified_projector(d / FILES["unified_mmproj"], e.n_embd),
        "drafter": write_drafter(d / FILES["drafter"], e.n_embd, main=e, chat_template=template),
        # sized for a main model of hidden 96 (not 64): loads fine, but does not fit e_model
        "wrong_drafter": write_drafter(d / FILES["wrong_drafter"], dense.n_embd, chat_template=template,
                                       seed=8, name="synthetic-gemma4-assistant-wrong"),
    }
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file (arrays are returned as lists), via gguf-py."""
    reader = gguf.GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        out[key] = f.contents()
    return out
