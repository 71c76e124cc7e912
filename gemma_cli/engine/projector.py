"""Images and audio through llama.cpp's mtmd: the projector, media bitmaps, media in the KV cache.

A `Projector` is an mtmd context: the mmproj GGUF loaded against the text model. It turns a
`Media` (RGB pixels or mono float PCM) into a `Span`: the text tokens and embedding chunks
that replace one `<|image|>` / `<|audio|>` placeholder (`<|image>` … `<image|>`). The engine
evaluates spans into the same KV cache as text, and remembers each of their positions as a
hashable key (kind, sha256, i, n), so a later prompt with the same image reuses it like text.

The same picture twice in one prompt (`-i a.png -i a.png`, a video's identical frames, an image
in several turns of a fresh request) is one span evaluated at each of its places: encoded once,
its embeddings kept (`Span.embd`) while the prompt needs them again, decoded at every place.
A span's pixels and embeddings are dropped when the prompt's evaluation ends (`release`).

Image attention inside one image is non-causal on most Gemma 4 sizes (all but E2B/E4B):
llama.cpp then needs the whole image in one micro-batch (n_ubatch >= its tokens) and aborts
the process otherwise, so the engine sizes its batch from the budget and `check_fits`
refuses an image that would not fit before anything is evaluated.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import llama_cpp as ll
import llama_cpp.mtmd_cpp as mtmd

from gemma_cli.engine import log
from gemma_cli.engine.kv import is_key
from gemma_cli.errors import CapabilityError, GemmaError, MediaError, ModelError
from gemma_cli.gguf_header import read_header

#: The visual token budgets Gemma 4 was trained with (70: fast classification ... 1120: OCR).
BUDGETS = (70, 140, 280, 560, 1120)
#: Gemma 4's processor default (max_soft_tokens): general image understanding.
DEFAULT_BUDGET = 280
#: The longest clip the audio encoder takes; longer audio is cut before it gets here.
MAX_CLIP_SECONDS = 30.0
PLACEHOLDERS = {"image": "<|image|>", "audio": "<|audio|>"}


# ---------------------------------------------------------------- media


@dataclass(eq=False)
class Media:
    """One image (RGB, 8 bits, rows top to bottom) or one mono float32 audio clip."""

    kind: str  # "image" | "audio"
    data: bytes
    width: int = 0
    height: int = 0
    rate: int = 0  # audio samples per second
    name: str = ""  # where it came from, for messages
    digest: str = ""  # sha256 of the content: the same picture is the same KV cache entry
    budget: int = 0  # an image's visual token budget; 0: the projector's (video frames take 70)

    def __post_init__(self):
        if not self.digest:
            h = hashlib.sha256(f"{self.kind}:{self.width}x{self.height}:{self.rate}:{self.budget}:".encode())
            h.update(self.data)
            self.digest = h.hexdigest()

    @classmethod
    def image(cls, rgb: bytes, width: int, height: int, name: str = "", budget: int = 0) -> "Media":
        if width <= 0 or height <= 0 or len(rgb) != width * height * 3:
            raise MediaError(f"{name or 'image'}: {len(rgb)} bytes are not {width}x{height} RGB pixels")
        if budget and budget not in BUDGETS:
            raise MediaError(f"{name or 'image'}: {budget} is not a Gemma 4 visual token budget",
                             f"use one of {', '.join(map(str, BUDGETS))}")
        return cls("image", bytes(rgb), width=width, height=height, name=name, budget=budget)

    @classmethod
    def audio(cls, samples, rate: int, name: str = "") -> "Media":
        """`samples`: mono float32 PCM (a numpy array or its raw bytes) at `rate` Hz."""
        data = samples if isinstance(samples, (bytes, bytearray)) else samples.astype("<f4", copy=False).tobytes()
        if not data:
            raise MediaError(f"{name or 'audio'} has no samples")
        return cls("audio", bytes(data), rate=rate, name=name)

    @property
    def seconds(self) -> float:
        return len(self.data) / 4 / self.rate if self.kind == "audio" and self.rate else 0.0


# ---------------------------------------------------------------- spans


@dataclass
class Part:
    """One mtmd chunk of a span: text tokens, or image/audio embeddings."""

    kind: str  # "text", "image", "audio"
    n_pos: int  # positions it takes in the KV cache
    n_tokens: int  # KV cells (== n_pos unless M-RoPE)
    tokens: list[int] = field(default_factory=list)  # text only
    non_causal: bool = False  # must be decoded in one micro-batch


@dataclass(eq=False)
class Span:
    """What one placeholder becomes: `<|image>`, the image's embeddings, `<image|>`."""

    kind: str
    digest: str
    parts: list[Part]
    media: Media | None = None  # the current prompt's media (dropped once evaluated: pixels are big)
    chunks: object = None  # the mtmd chunks while not yet evaluated (they hold the preprocessed pixels)
    budget: int = 0  # the visual token budget of the mtmd context that made it (0: audio)
    repeats: int = 0  # its places in what the current prompt evaluates: over 1, its embeddings are kept
    embd: dict = field(default_factory=dict)  # part index -> its encoded embeddings, while needed again

    @property
    def n_pos(self) -> int:
        return sum(p.n_pos for p in self.parts)

    @property
    def media_tokens(self) -> int:
        """Embedding tokens (what the budget controls), without the begin/end tokens."""
        return sum(p.n_tokens for p in self.parts if p.kind != "text")

    @property
    def name(self) -> str:
        return (self.media.name if self.media is not None else "") or f"the {self.kind}"

    def keys(self) -> list[tuple]:
        n = self.n_pos
        return [(self.kind, self.digest, i, n) for i in range(n)]


def count_places(items: Sequence, spans: dict[tuple, "Span"]) -> None:
    """Set each span's `repeats`: how many times it starts in `items` (what a prefill evaluates)."""
    for span in spans.values():
        span.repeats = 0
    for item in items:
        if is_key(item) and item[2] == 0:
            spans[item[:2]].repeats += 1


# ---------------------------------------------------------------- projector


def batch_for(budget: int) -> int:
    """The micro-batch a non-causal image of `budget` tokens needs (llama.cpp rounds sizes up)."""
    return budget + budget // 4


class Projector:
    """An mmproj GGUF loaded into an mtmd context for one text model."""

    def __init__(self, path: str | Path, model, *, model_name: str, n_threads: int, use_gpu: bool,
                 image_tokens: int | None = None, verbose: bool = False):
        self.path = Path(path)
        self.model_name = model_name
        self.budget = image_tokens or DEFAULT_BUDGET
        _check_header(self.path)
        self._model = model
        self._settings = (n_threads, use_gpu, verbose)
        self._ctx = self._open(self.budget)
        # Images at another budget (video frames take 70) get an mtmd context of their own, opened at the first.
        self._ctxs = {self.budget: self._ctx}
        self.vision = bool(mtmd.mtmd_support_vision(self._ctx))
        self.audio = bool(mtmd.mtmd_support_audio(self._ctx))
        self.sample_rate = mtmd.mtmd_get_audio_sample_rate(self._ctx) if self.audio else 0
        # None: asks about the vision projector (the only one that is non-causal for Gemma 4).
        self.non_causal_images = self.vision and bool(mtmd.mtmd_decode_use_non_causal(self._ctx, None))
        self._spans: OrderedDict[tuple, Span] = OrderedDict()  # layouts by (kind, digest), recent last
        self.encodes = 0  # media chunks run through the encoder (a repeated picture counts once a prompt)

    def _open(self, budget: int):
        n_threads, use_gpu, verbose = self._settings
        # mtmd logs through its own hook: route it to the engine's log (quiet unless --verbose).
        mtmd.mtmd_helper_log_set(log.on_log, ctypes.c_void_p(0))
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = verbose
        params.warmup = False  # a full-size warm-up encode costs seconds on big projectors; pay on first use
        # min = max: every image is scaled (up or down, aspect kept) to fill the budget, as Gemma 4's processor does.
        params.image_min_tokens = budget
        params.image_max_tokens = budget
        log.clear_log()
        ctx = mtmd.mtmd_init_from_file(str(self.path).encode("utf-8"), self._model, params)
        if not ctx:
            detail = log.recent_log("mismatch") or log.recent_log("failed") or log.recent_log("error")
            reason = f" ({detail.split(':', 1)[-1].strip()})" if detail else ""
            raise ModelError(f"llama.cpp could not load the projector {self.path}{reason}",
                             f"use the mmproj file made for {self.model_name}")
        return ctx

    def _ctx_for(self, budget: int):
        """The mtmd context that scales images to `budget` tokens (0: the projector's own)."""
        budget = budget or self.budget
        ctx = self._ctxs.get(budget)
        if ctx is None:
            ctx = self._ctxs[budget] = self._open(budget)
        return ctx

    @property
    def batch_needed(self) -> int:
        """The micro-batch an image needs: the budget, plus room for llama.cpp rounding sizes up."""
        return batch_for(self.budget) if self.non_causal_images else 0

    def close(self) -> None:
        for span in self._spans.values():
            _free_chunks(span)
        self._spans.clear()
        for ctx in getattr(self, "_ctxs", {}).values():
            mtmd.mtmd_free(ctx)
        self._ctxs = {}
        self._ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ---- capabilities

    def require(self, kind: str) -> None:
        if kind == "audio" and not self.audio:
            raise CapabilityError(f"{self.model_name} has no audio encoder; audio needs E2B, E4B or 12B",
                                  f"{self.path.name} only reads images; use gemma-4-E2B, E4B or 12B for audio")
        if kind in ("image", "video") and not self.vision:
            what = "images" if kind == "image" else "video"
            raise CapabilityError(f"{self.path.name} has no vision encoder, so {self.model_name} cannot see {what} here",
                                  "pass the model's vision projector with --mmproj")
        if kind not in PLACEHOLDERS and kind != "video":  # a video reaches the engine as its frames (images)
            raise CapabilityError(f"unknown media kind {kind!r}", "media are images or audio")

    # ---- spans

    def span(self, media: Media) -> Span:
        """The layout of `media` in the prompt (tokenized once, then remembered)."""
        self.require(media.kind)
        key = (media.kind, media.digest)
        span = self._spans.get(key)
        if span is not None:
            self._spans.move_to_end(key)
            span.media = media
            return span
        span = self._tokenize(media)
        self._spans[key] = span
        while len(self._spans) > 64:  # layouts are small; the chunks are freed once evaluated
            _free_chunks(self._spans.popitem(last=False)[1])
        return span

    def _tokenize(self, media: Media) -> Span:
        if media.kind == "audio" and media.rate != self.sample_rate:
            raise MediaError(f"{media.name or 'audio'} is at {media.rate} Hz but the encoder takes {self.sample_rate} Hz",
                             "load audio with gemma_cli.media.audio.load_audio(rate=...)")
        budget = (media.budget or self.budget) if media.kind == "image" else 0
        ctx = self._ctx_for(budget)
        bitmap = _bitmap(media)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            marker = mtmd.mtmd_default_marker()
            text = mtmd.mtmd_input_text(text=marker, text_len=len(marker), add_special=False, parse_special=True)
            array = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), array, 1)
        finally:
            mtmd.mtmd_bitmap_free(bitmap)
        if rc != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            raise MediaError(f"llama.cpp could not preprocess {media.name or media.kind} (mtmd_tokenize returned {rc})",
                             "run with --verbose for llama.cpp's log")
        parts = [_part(ctx, mtmd.mtmd_input_chunks_get(chunks, i)) for i in range(mtmd.mtmd_input_chunks_size(chunks))]
        return Span(media.kind, media.digest, parts, media, chunks, budget)

    def check_fits(self, span: Span, n_ubatch: int) -> None:
        """Refuse what llama.cpp would abort on: a non-causal chunk larger than one micro-batch."""
        for p in span.parts:
            if p.non_causal and p.n_tokens > n_ubatch:
                raise MediaError(
                    f"{span.name} needs {p.n_tokens} tokens in one batch but the context's batch holds {n_ubatch}",
                    f"use a smaller --image-tokens (this projector was opened for {self.budget}), "
                    "or crop a very long, thin image",
                )

    def decode(self, span: Span, index: int, lctx, n_past: int, n_batch: int) -> int:
        """Decode media part `index` of `span` at position `n_past` (encoding it unless this prompt
        already did); returns its n_pos."""
        if span.chunks is None:  # evaluated before and evicted from the KV cache since: preprocess again
            if span.media is None:
                raise GemmaError(f"{span.name} is no longer loaded", "send it again")
            span.chunks = self._tokenize(span.media).chunks
        chunk = mtmd.mtmd_input_chunks_get(span.chunks, index)
        ctx = self._ctx_for(span.budget)
        embd = span.embd.get(index)
        if embd is None:
            embd = self._encode(span, index, ctx, chunk)
        new_n_past = ll.llama_pos(0)
        rc = mtmd.mtmd_helper_decode_image_chunk(ctx, lctx, chunk, embd, n_past, 0, n_batch, ctypes.byref(new_n_past),
                                                 mtmd.mtmd_helper_post_decode_callback(), None)
        if rc != 0:
            raise GemmaError(f"llama.cpp could not evaluate {span.name} (error {rc})",
                             "the context may be full: raise --ctx, or use a smaller --image-tokens")
        return new_n_past.value - n_past

    def _encode(self, span: Span, index: int, ctx, chunk):
        """Run part `index` through the encoder: its embeddings (copied into the span when the prompt
        needs them again, else llama.cpp's buffer, valid until the next encode)."""
        rc = mtmd.mtmd_encode_chunk(ctx, chunk)
        if rc != 0:
            raise GemmaError(f"llama.cpp could not encode {span.name} (error {rc})",
                             "run with --verbose for llama.cpp's log")
        self.encodes += 1
        out = mtmd.mtmd_get_output_embd(ctx)
        if span.repeats <= 1:
            return out
        n = mtmd.mtmd_input_chunk_get_n_tokens(chunk) * ll.llama_model_n_embd_inp(self._model)
        kept = (ctypes.c_float * n)()
        ctypes.memmove(kept, out, n * ctypes.sizeof(ctypes.c_float))
        span.embd[index] = kept
        return kept

    def release(self, span: Span) -> None:
        """The prompt is evaluated: drop the span's preprocessed pixels/mel frames, embeddings and media."""
        _free_chunks(span)
        span.embd.clear()
        span.repeats = 0
        span.media = None


def _check_header(path: Path) -> None:

    if not path.is_file():
        raise ModelError(f"projector file not found: {path}", "pass the mmproj-*.gguf that comes with the model")
    header = read_header(path)
    if header.architecture != "clip":
        raise ModelError(f"{path} is not a projector (its architecture is '{header.architecture}', not 'clip')",
                         "pass the mmproj-*.gguf that comes with the model")


def _bitmap(media: Media):
    if media.kind == "image":
        buf = (ctypes.c_uint8 * len(media.data)).from_buffer_copy(media.data)
        bitmap = mtmd.mtmd_bitmap_init(media.width, media.height, buf)
    else:
        n = len(media.data) // 4
        buf = (ctypes.c_float * n).from_buffer_copy(media.data)
        bitmap = mtmd.mtmd_bitmap_init_from_audio(n, buf)
    if not bitmap:
        raise MediaError(f"llama.cpp could not take {media.name or media.kind}")
    return bitmap


_KINDS = {mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT: "text", mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE: "image",
          mtmd.MTMD_INPUT_CHUNK_TYPE_AUDIO: "audio"}


def _part(ctx, chunk) -> Part:
    kind = _KINDS[mtmd.mtmd_input_chunk_get_type(chunk)]
    if kind == "text":
        n = ctypes.c_size_t()
        ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
        tokens = [ptr[i] for i in range(n.value)]
        return Part("text", len(tokens), len(tokens), tokens)
    return Part(kind, mtmd.mtmd_input_chunk_get_n_pos(chunk), mtmd.mtmd_input_chunk_get_n_tokens(chunk),
                non_causal=bool(mtmd.mtmd_decode_use_non_causal(ctx, chunk)))


def _free_chunks(span: Span) -> None:
    if span.chunks is not None:
        mtmd.mtmd_input_chunks_free(span.chunks)
        span.chunks = None


# ---------------------------------------------------------------- prompts


def expand(tokens: Sequence[int], media: Sequence[Media], projector: Projector, tokenize, n_ubatch: int,
           points: Sequence[int | None]) -> tuple[list, list, dict[tuple, Span], list[int]]:
    """Replace each placeholder token with its media's span keys, in order (each span checked to fit a
    micro-batch of `n_ubatch` first: llama.cpp would abort).

    Returns the prompt items (token ids and span keys), `points` (token positions, None kept)
    moved to match, the spans by (kind, digest) for evaluation, and where each span ends.
    """
    placeholders = {ids[0]: kind for kind, ids in ((k, tokenize(t)) for k, t in PLACEHOLDERS.items()) if len(ids) == 1}
    items: list = []
    spans: dict[tuple, Span] = {}
    queue = list(media)
    moved = list(points)
    ends = []
    for i, tok in enumerate(tokens):
        kind = placeholders.get(tok)
        if kind is None:
            items.append(tok)
            continue
        if not queue:
            raise MediaError(f"the prompt has more {PLACEHOLDERS[kind]} placeholders than media given",
                             "give one image or audio clip per placeholder")
        m = queue.pop(0)
        if m.kind != kind:
            raise MediaError(f"media out of order: {m.name or m.kind} is {m.kind} but the prompt expects {kind} here",
                             "pass media in the order of their placeholders")
        span = projector.span(m)
        spans[(m.kind, m.digest)] = span
        moved = [p + span.n_pos - 1 if p is not None and i < orig else p for p, orig in zip(moved, points)]
        items.extend(span.keys())
        ends.append(len(items))
    if queue:
        raise MediaError(f"{len(queue)} media given without a placeholder in the prompt",
                         "each image needs <|image|> and each clip <|audio|> where it goes")
    for span in spans.values():
        projector.check_fits(span, n_ubatch)
    return items, moved, spans, ends
