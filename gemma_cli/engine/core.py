"""The engine core: model, context, sampling, streamed generation, KV reuse.

It loads a GGUF, keeps one llama.cpp context, and streams generated text token by token
through llama.cpp's C API (not llama-cpp-python's high-level `Llama`, which re-evaluates
more than it needs and hides the KV cache we want to reuse).

KV reuse: `self.kv` (engine.kv.KVCache) remembers what sits in sequence 0's KV cache; a
new prompt that shares a prefix with it evaluates only the rest (SWA windows, checkpoints,
cut and resync, where evaluation splits are engine.kv's); `self.prompt_cache` (engine.disk)
restores and keeps such states across processes.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import llama_cpp as ll
import llama_cpp.llama_cpp as llama_api
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from gemma_cli.engine.kv import KVCache, is_key, span_start
from gemma_cli.engine.log import captured_stderr, clear_log, on_log, recent_log, replay, set_verbose
from gemma_cli.errors import CapabilityError, ContextOverflowError, GemmaError, GrammarError, ModelError
from gemma_cli.format.request import RequestError
from gemma_cli.gguf_header import Header, read_header

# ---------------------------------------------------------------- logging (engine.log)

ll.llama_log_set(on_log, ctypes.c_void_p(0))
ll.llama_backend_init()

# llama.cpp's AMX matmul (Xeons from Sapphire Rapids on) segfaults at the first decode of
# K-quant models (ggml-org/llama.cpp#20824, unfixed in the vendored version). On a build
# with AMX, weights load without the extra buffer types (AMX, and CPU repacking with it).
AMX_BUILD = b"AMX_INT8 = 1" in ll.llama_print_system_info()


def supports_gpu_offload() -> bool:
    """Whether this llama-cpp-python was built with a GPU backend (CUDA, Metal, ROCm, Vulkan)."""
    return bool(ll.llama_supports_gpu_offload())


def avoid_amx() -> None:
    """Make llama-cpp-python's own `Llama` (and its server) load weights as the engine does.

    For code in this process that uses the high-level API beside the engine: benchmarks'
    reference loops, the test suite's llama_cpp.server. A no-op on builds without AMX.
    """
    if not AMX_BUILD or any(llama_api.llama_model_default_params is f for f in _NO_AMX_DEFAULTS):
        return
    original = llama_api.llama_model_default_params

    def defaults():
        params = original()
        params.use_extra_bufts = False
        return params

    _NO_AMX_DEFAULTS.append(defaults)
    llama_api.llama_model_default_params = defaults


_NO_AMX_DEFAULTS: list = []  # the wrappers avoid_amx() installed

KV_TYPES = {"f16": ll.GGML_TYPE_F16, "q8_0": ll.GGML_TYPE_Q8_0}


# ---------------------------------------------------------------- data


@dataclass
class Sampling:
    """How the next token is picked: one sampler chain (`Engine.new_sampler`) for every runner.

    Defaults are Gemma 4's recommended sampling (temperature 1.0, top_p 0.95, top_k 64) and no
    penalties. The chain, in llama.cpp's order: grammar, logit bias, penalties, then greedy
    (temperature 0) or top-k, top-p, min-p, temperature and a seeded draw.
    """

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 64
    seed: int | None = None
    grammar: str | None = None  # GBNF; constrains the generated text
    min_p: float = 0.0  # drop tokens below min_p x the likeliest one's probability (0: off)
    # llama.cpp's penalties sampler over the last `penalty_last_n` generated tokens: a repeated
    # token's logit is divided by `repeat_penalty` (multiplied when negative; 1: off), and lowered
    # by `frequency_penalty` x its count plus `presence_penalty` once (OpenAI's; 0: off).
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit (OpenAI's logit_bias)

    @property
    def penalized(self) -> bool:
        return self.penalty_last_n != 0 and (self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0
                                             or self.presence_penalty != 0.0)

    @property
    def argmax(self) -> bool:
        """Whether the pick is the raw logits' argmax (greedy, nothing reshaping the logits first)."""
        return self.temperature <= 0 and not self.grammar and not self.penalized and not self.logit_bias


@dataclass
class Step:
    """One streamed piece of a generation, with the running counters (mlx-lm style)."""

    text: str
    token: int | None
    prompt_tokens: int  # prompt tokens evaluated for this call (after KV reuse)
    reused_tokens: int  # prompt tokens served from the KV cache
    generated_tokens: int
    ttft: float  # seconds from the call to the first generated token
    tps: float  # decode speed so far, tokens per second
    finish_reason: str | None = None  # "stop" (end of turn / EOS), "length"; None while streaming
    drafted: int = 0  # speculative decoding (engine.draft): tokens drafted so far
    accepted: int = 0  # ... and kept, having matched what the model picked


@dataclass
class TokenLogprob:
    """A generated token's log probability under the model (log-softmax of its raw logits), and the
    likeliest alternatives at that step (OpenAI's `logprobs` / `top_logprobs`)."""

    token: int
    piece: bytes  # the token's text as bytes (a token may hold part of a UTF-8 character)
    logprob: float
    top: list[tuple[int, bytes, float]] = field(default_factory=list)  # (token, piece, logprob), likeliest first


@dataclass
class ModelInfo:
    path: Path
    architecture: str
    chat_template: str | None
    bos: str
    eos: str
    n_ctx_train: int
    n_embd: int
    n_swa: int
    n_params: int
    size_bytes: int
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------- engine


# Under batch_invariant no sequence evaluates more rows than this in one ubatch: llama.cpp's CPU flash
# attention takes a tiled kernel for 64 query rows or more of one sequence, which rounds differently
# from the one for fewer, so a prompt row would otherwise depend on how its prompt was cut (one piece
# at --parallel 1, shares beside other prompts and next tokens at --parallel 8, a shared head
# evaluated apart). Measured on llama-cpp-python 0.3.36 (tests/test_batch_parallel.py pins it).
INVARIANT_ROWS = 63


def invariant_pieces(n: int) -> list[int]:
    """`n` rows cut into near-equal pieces of at most INVARIANT_ROWS (none of one row unless n is 1)."""
    k = max(1, -(-n // INVARIANT_ROWS))
    return [n // k + (i < n % k) for i in range(k)]


def _default_threads() -> int:
    # llama.cpp decodes fastest with one thread per physical core; hyperthreads slow it.
    n = os.cpu_count() or 1
    return max(1, n // 2) if n > 4 else n


class Engine:
    """One model, one context, one conversation's KV cache (sequence 0)."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_seq: int = 1,
        swa_full: bool = False,
        batch_invariant: bool = False,
        flash_attn: bool | None = None,
        tiled_matmul: bool | None = None,
        use_mmap: bool = True,
        verbose: bool = False,
        mmproj: str | Path | None = None,
        image_tokens: int | None = None,
        header: Header | None = None,
        kv_type: str = "f16",
    ):
        set_verbose(verbose)
        self.path = Path(path)
        header = header or read_header(self.path)  # the caller's, when it has read the file's header already
        # batch_invariant: CPU matmul kernels picked by a batch's row count round a row
        # differently when other sequences share its batch; keep every row on one path so its
        # output does not depend on them (engine.parallel). Measured with bench/kernels.py on
        # Gemma 3 270M Q4_K_M: the tiled K-quant matmul (GGML_CPU_TILED_MM) is what breaks greedy
        # invariance (6/8 jobs identical at 1 vs 8 sequences with it, 8/8 without); flash attention
        # does not (7/8 with it off and tiling on) and costs ~45 % of prompt speed when off, so it
        # stays on. Repacked weights (gemv for one row, gemm for several) go too; on AMX builds
        # they are off anyway. `tiled_matmul` / `flash_attn` override the choice (the bench).
        if batch_invariant if tiled_matmul is None else not tiled_matmul:
            os.environ["GGML_CPU_TILED_MM"] = "0"  # read once per process, at ggml's first matmul
        self._flash_attn = True if flash_attn is None else flash_attn
        self._repack = not batch_invariant
        # A ubatch of one row takes another matmul path than one of several (F32/F16 weights: ggml's
        # vec_dot for one row, llamafile's sgemm for more), so engine.parallel never sends one then.
        self.batch_invariant = batch_invariant
        self._model = _load_model(self.path, header.architecture, n_gpu_layers, use_mmap, repack=self._repack)
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self.info = _describe(self.path, header, self._model)
        self.n_threads = n_threads or _default_threads()
        self.n_gpu_layers = n_gpu_layers
        self._verbose = verbose
        self.media = None  # a media.Projector once an mmproj is loaded (images, audio)
        # Where ensure_projector() loads one from on first use (the caller's resolved projector).
        self.mmproj_path: Path | None = None
        self.image_tokens = image_tokens  # the visual token budget, for a projector loaded now or later
        self._spans: dict = {}  # media spans of the current prompt, by (kind, digest)
        need = 0
        if mmproj is not None:
            self.media = self._open_projector(mmproj, image_tokens)
            need = self.media.batch_needed
        elif image_tokens:
            # lazy: projector loads libmtmd (llama_cpp.mtmd_cpp), only for a model with media
            from gemma_cli.engine.projector import batch_for

            need = batch_for(image_tokens)  # room now, so a projector loaded later need not remake the context
        if need:
            n_batch = max(n_batch, need)
            n_ubatch = max(n_ubatch or n_batch, need)
        # The model's trained context bounds each sequence's (non-unified KV: one stream per sequence).
        n_ctx = n_ctx or 8192
        if self.info.n_ctx_train:
            n_ctx = min(n_ctx, self.info.n_ctx_train * max(1, n_seq))
        self._context_args = (n_ctx, n_seq, swa_full, kv_type)
        self._swa = self.info.n_swa > 0 and not swa_full
        self._open_context(n_batch, n_ubatch or n_batch)
        self.last_prefill: tuple[int, int] = (0, 0)  # (evaluated, reused) of the last prompt
        self.draft = None  # a draft.Drafter once attach_draft() is called: speculative decoding
        self.prompt_cache = None  # an engine.disk.PromptCache: prompt states restored from and kept on disk
        self.from_disk = 0  # prompt items of the last prefill restored from it

    # ---- lifecycle

    def _open_context(self, n_batch: int, n_ubatch: int) -> None:
        n_ctx, n_seq, swa_full, kv_type = self._context_args
        self._ctx = _new_context(self._model, n_ctx, self.n_threads, n_batch, n_ubatch, n_seq, swa_full,
                                 flash_attn=self._flash_attn, kv_type=kv_type)
        self.n_ctx = ll.llama_n_ctx(self._ctx)
        self.n_batch = ll.llama_n_batch(self._ctx)
        self.n_ubatch = ll.llama_n_ubatch(self._ctx)
        self.n_seq = ll.llama_n_seq_max(self._ctx)
        self.n_ctx_seq = ll.llama_n_ctx_seq(self._ctx)  # each sequence's own KV stream (non-unified cache)
        self._mem = ll.llama_get_memory(self._ctx)
        # What sits in the KV cache of sequence 0, position i = index i: token ids, and for
        # image/audio positions hashable keys (kind, sha256, i, n) (see engine.projector).
        self.kv = KVCache(self._ctx, self.info.n_swa if self._swa else 0)
        self._batch = ll.llama_batch_init(self.n_batch, 0, max(1, n_seq))

    def _open_projector(self, path, image_tokens: int | None):
        # lazy: projector loads libmtmd (llama_cpp.mtmd_cpp), only for a model with media
        from gemma_cli.engine.projector import Projector

        name = str(self.info.meta.get("general.name") or self.path.stem)
        return Projector(path, self._model, model_name=name, n_threads=self.n_threads,
                         use_gpu=self.n_gpu_layers != 0, image_tokens=image_tokens, verbose=self._verbose)

    def attach_projector(self, path: str | Path, image_tokens: int | None = None) -> None:
        """Load an mmproj (images/audio) into an open engine.

        Non-causal images need n_ubatch >= their tokens: a context too small for that is made
        again (the KV cache starts empty). Pass `mmproj=` to the constructor to avoid that.
        """
        projector = self._open_projector(path, image_tokens or self.image_tokens)
        need = projector.batch_needed
        if need > self.n_ubatch:
            if self.draft is not None:
                projector.close()
                raise GemmaError("images need a larger batch than the context was made with",
                                 "load the projector before speculative decoding (--mmproj with -i, or --draft off)")
            if self.n_seq > 1:  # other sequences' KV cells (engine.parallel) must not vanish with the context
                projector.close()
                raise CapabilityError(f"an image takes {need} tokens in one batch, more than the context's "
                                      f"{self.n_ubatch} allow", f"raise --ctx to at least {need}")
            ll.llama_batch_free(self._batch)
            ll.llama_free(self._ctx)
            self._open_context(max(self.n_batch, need), need)
        if self.media is not None:
            self.media.close()
        self.media = projector

    def ensure_projector(self, kind: str):
        """The projector, loading `mmproj_path` (the caller's resolved projector) on first use; a clear error without one."""
        if self.media is None:
            found = self.mmproj_path
            if found is None:
                name = self.info.meta.get("general.name") or self.path.name
                raise CapabilityError(f"{name} has no projector loaded for {kind}, and no single mmproj file beside "
                                      f"{self.path.name} is clearly its own",
                                      "pass --mmproj PATH: the mmproj-*.gguf that comes with the model")
            self.attach_projector(found)
        self.media.require(kind)
        return self.media

    def media_tokens(self, media) -> int:
        """How many embedding tokens `media` takes (preprocessed, not encoded)."""
        return self.ensure_projector(media.kind).span(media).media_tokens

    def attach_draft(self, drafter) -> None:
        """Decode with `drafter` (see engine.draft) from now on; None: plain decoding."""
        if self.draft is not None and self.draft is not drafter:
            self.draft.close()
        self.draft = drafter

    def bind_prompt_cache(self) -> None:
        """Tell the prompt cache what the states depend on (the context may have been made again)."""
        _, _, swa_full, kv_type = self._context_args
        self.prompt_cache.bind(self.path, {
            "n_ctx": self.n_ctx, "n_batch": self.n_batch, "n_ubatch": self.n_ubatch, "n_seq": self.n_seq,
            "swa_full": swa_full, "kv_type": kv_type, "flash_attn": self._flash_attn, "repack": self._repack,
            "gpu_layers": self.n_gpu_layers, "tiled": os.environ.get("GGML_CPU_TILED_MM", ""),
            # how prompts are cut into ubatches: batch_invariant's pieces round differently from n_batch's
            "invariant_rows": INVARIANT_ROWS if self.batch_invariant else None, "llama_cpp": ll.__version__})
        self.prompt_cache.bind_media(*((self.media.path, self.media.budget) if self.media else (None, None)))

    def close(self) -> None:
        if getattr(self, "prompt_cache", None) is not None:
            self.prompt_cache.flush()
        if getattr(self, "draft", None) is not None:  # its context reads ours: free it first
            self.draft.close()
            self.draft = None
        if getattr(self, "_batch", None) is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "media", None) is not None:  # it refers to the model: free it before
            self.media.close()
            self.media = None
        if getattr(self, "_ctx", None):
            ll.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            ll.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ---- tokens

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of `text`; with `special`, control-token texts like `<|turn>` become single tokens."""
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (ll.llama_token * n_max)()
        n = ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, special)
        if n < 0:  # buffer too small: llama.cpp tells how many it needs
            n_max = -n
            buf = (ll.llama_token * n_max)()
            n = ll.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, special)
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def is_end(self, token: int) -> bool:
        return bool(ll.llama_vocab_is_eog(self._vocab, token))

    def token_text(self, token: int) -> bytes:
        """The vocabulary's entry for `token` as stored (not rendered like token_bytes)."""
        return ll.llama_vocab_get_text(self._vocab, token)

    # ---- generation

    def stream_generate(
        self,
        prompt: str | Sequence[int],
        *,
        media: Sequence | None = None,
        max_tokens: int | None = None,
        sampling: Sampling | None = None,
        checkpoint_at: int | None = None,
        save_at: Sequence[int] = (),
    ) -> Iterator[Step]:
        """Evaluate `prompt` (reusing the KV cache) and yield generated text as it decodes.

        `media`: engine.projector.Media items, one per `<|image|>` / `<|audio|>` placeholder in
        the prompt, in order; each placeholder becomes the media's tokens in the KV cache.
        `checkpoint_at`: a prompt length at which to keep a copy of the SWA cache, so a
        later prompt that diverges after that point can still reuse everything before it
        (chat passes the start of the generation prompt). `save_at`: the save points of the prompt
        cache on disk (engine.disk; token positions before media expansion).
        """
        tokens, checkpoint_at, save_at = self.prompt_items(prompt, media, checkpoint_at, save_at)
        self._check_fits(tokens)
        budget = self.n_ctx - len(tokens)
        max_tokens = budget if max_tokens is None else min(max_tokens, budget)
        sampler = self.new_sampler(sampling or Sampling())
        try:
            t0 = time.perf_counter()
            evaluated, reused = self.prefill(tokens, checkpoint_at, save_at)
            if self.draft is not None:
                yield from self.draft.decode(self, sampler, max_tokens, evaluated, reused, t0)
            else:
                yield from self._decode_loop(sampler, max_tokens, evaluated, reused, t0)
        finally:
            ll.llama_sampler_free(sampler)

    def _decode_loop(self, sampler, max_tokens: int, evaluated: int, reused: int, t0: float) -> Iterator[Step]:
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        generated, t_first, finish = 0, 0.0, "length"
        step = Step("", None, evaluated, reused, 0, 0.0, 0.0)
        while generated < max_tokens:
            token = ll.llama_sampler_sample(sampler, self._ctx, -1)
            now = time.perf_counter()
            if generated == 0:
                t_first = now
                step.ttft = now - t0
            if self.is_end(token):
                finish = "stop"
                break
            generated += 1
            step = Step(
                utf8.decode(self.token_bytes(token)),
                token,
                evaluated,
                reused,
                generated,
                step.ttft,
                (generated - 1) / (now - t_first) if generated > 1 and now > t_first else 0.0,
            )
            yield step
            if generated < max_tokens:  # the last token is never needed in the cache
                self._eval([token], logits_last=True)
        tail = utf8.decode(b"", final=True)
        yield Step(tail, None, evaluated, reused, generated, step.ttft, step.tps, finish)

    # ---- prompt evaluation and KV reuse

    def prompt_items(self, prompt: str | Sequence[int], media: Sequence | None = None,
                     checkpoint_at: int | None = None, save_at: Sequence[int] = ()) -> tuple[list, int | None, list[int]]:
        """A prompt's items for prefill(): token ids, each media placeholder expanded to its span's keys.

        Makes them the current prompt's media (until the next call or forget_media()); returns
        the items, `checkpoint_at` and the save points moved past the expansions (and each
        media block's end added to the save points).
        """
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        self._spans = {}
        if not media:
            return tokens, checkpoint_at, list(save_at)
        # lazy: projector loads libmtmd (llama_cpp.mtmd_cpp), only for a model with media
        from gemma_cli.engine.projector import expand

        for kind in {m.kind for m in media}:
            self.ensure_projector(kind)
        items, moved, self._spans, ends = expand(tokens, media, self.media, self.tokenize, self.n_ubatch,
                                                 [checkpoint_at, *save_at])
        return items, moved[0], sorted({*moved[1:], *ends})

    def forget_media(self) -> None:
        """The current prompt's media are evaluated (or given up): later prompts are text only."""
        self._spans = {}

    def _check_fits(self, tokens: Sequence[int]) -> None:
        if not tokens:
            raise GemmaError("the prompt is empty", "give a prompt as an argument or on stdin")
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}",
                                       context_hint(self.n_ctx, self.info.n_ctx_train, "shorten the input"))

    def reuse_prefix(self, tokens: Sequence[int]) -> int:
        """Cut the KV cache back to the longest prefix it shares with `tokens`; return its length."""
        return self.kv.cut(span_start(tokens, self.kv.shared(tokens)))  # an image or clip is evaluated whole

    def prefill(self, tokens: Sequence, checkpoint_at: int | None = None, save_at: Sequence[int] = ()) -> tuple[int, int]:
        """Evaluate prompt items (prompt_items()) into sequence 0, reusing what its KV cache (or the
        prompt cache on disk) shares.

        The last item's logits are left for the first sample; `checkpoint_at`: where to keep an
        SWA checkpoint on the way; `save_at`: the save points (engine.disk), where evaluation
        always splits, the prompt cache keeps a state. Returns (evaluated, reused).
        """
        reused = self.reuse_prefix(tokens)
        self.from_disk = 0
        if self.prompt_cache is not None:
            self.bind_prompt_cache()
            restored = self.prompt_cache.restore(self.kv, tokens, reused)
            self.from_disk, reused = (restored, restored) if restored > reused else (0, reused)
        self._evaluate_from(tokens, reused, checkpoint_at, save_at)
        self.last_prefill = (len(tokens) - reused, reused)
        return self.last_prefill

    def keep(self, tokens: Sequence, save_at: Sequence[int] = ()) -> None:
        """Evaluate all of `tokens` (prompt_items() of a finished conversation, no generation prompt) from
        a state a cold run would reach, and keep its end in the prompt cache: the next process starts there."""
        if self.prompt_cache is not None and len(tokens) > 1:
            self.bind_prompt_cache()
            start = self.kv.canonical_start(tokens)
            if start is not None:
                self._evaluate_from(tokens, start, None, [*save_at, len(tokens)], logits=False)

    def stage(self, head: Sequence, *, keep: bool = True) -> int:
        """Evaluate all of `head` into sequence 0 (engine.parallel's shared heads), restored from the prompt cache
        when it holds it and (`keep`) kept there; returns how many items were held already (memory or disk)."""
        held = self.reuse_prefix(head)
        if self.prompt_cache is not None:
            self.bind_prompt_cache()
            held = self.prompt_cache.restore(self.kv, head, held, whole=True)
        self._evaluate_from(head, held, None, [len(head)] if keep else [], logits=False)
        return held

    def _evaluate_from(self, tokens: Sequence, start: int, checkpoint_at: int | None, save_at: Sequence[int], *,
                       logits: bool = True) -> None:
        """Evaluate tokens[start:] in the pieces KVCache.plan() says; `logits`: for the last item (a prompt's)."""
        if self._spans:
            # lazy: projector loads libmtmd (llama_cpp.mtmd_cpp), only for a model with media
            from gemma_cli.engine.projector import count_places

            count_places(tokens[start:], self._spans)  # a picture at several places is encoded once
        try:
            done = start
            for end, checkpoint, canonical, save in self.kv.plan(tokens, start, save_at, checkpoint_at, logits=logits):
                self.evaluate(tokens[done:end])
                done = end
                if checkpoint:
                    self.kv.checkpoint()
                if canonical:
                    self.kv.canonical.add(end)
                if save and self.prompt_cache is not None:
                    self.prompt_cache.save(self.kv)
            if logits:
                self.evaluate(tokens[done:], logits_last=True)
        finally:
            for span in self._spans.values():  # evaluated (or given up): pixels and embeddings go
                self.media.release(span)

    def evaluate(self, items: Sequence, *, logits_last: bool = False) -> None:
        """Decode prompt items (token ids, media span keys) into sequence 0, after what is cached."""
        if not self._spans:
            return self._eval(items, logits_last=logits_last)
        i, n = 0, len(items)
        while i < n:
            j = i
            while j < n and not is_key(items[j]):
                j += 1
            if j > i:
                self._eval(items[i:j], logits_last=logits_last and j == n)
            if j < n:
                span = self._spans[items[j][:2]]
                self._eval_span(span, logits_last=logits_last and j + span.n_pos == n)
                j += span.n_pos
            i = j

    def _eval_span(self, span, *, logits_last: bool) -> None:
        """One image or clip: its text parts through our batch, its embeddings through mtmd."""
        keys = span.keys()
        pos = 0
        for index, part in enumerate(span.parts):
            last = index == len(span.parts) - 1
            if part.kind == "text":
                self._eval(part.tokens, logits_last=logits_last and last, keys=keys[pos : pos + part.n_pos])
            else:
                n_pos = self.media.decode(span, index, self._ctx, len(self.kv), self.n_batch)
                self.kv.book(keys[pos : pos + n_pos])
            pos += part.n_pos

    def _eval(self, tokens: Sequence[int], *, logits_last: bool, keys: Sequence | None = None) -> None:
        """Decode `tokens` into sequence 0 in batches of n_batch (batch_invariant: invariant_pieces), after
        what is cached.

        `keys`: what to remember in the cache for them instead of the ids (a span's begin/end tokens).
        """
        if not tokens:
            return
        n_all = len(tokens)
        sizes = invariant_pieces(n_all) if self.batch_invariant else [self.n_batch] * -(-n_all // self.n_batch)
        start = 0
        for size in sizes:
            chunk = tokens[start : start + size]
            last = start + len(chunk) == len(tokens)
            pos0, n = len(self.kv), len(chunk)
            rows = [(tok, pos0 + i, 0, False) for i, tok in enumerate(chunk)]
            if logits_last and last:
                rows[-1] = (chunk[-1], pos0 + n - 1, 0, True)
            # batch_invariant: a lone row takes another matmul kernel (engine.parallel._padding)
            pad = self.batch_invariant and n == 1 and pos0 + 1 < self.n_ctx_seq
            rc = self.decode_rows(rows + [(chunk[0], pos0 + 1, 0, False)] if pad else rows)
            if pad:
                ll.llama_memory_seq_rm(self._mem, 0, pos0 + 1, -1)
            if rc != 0:
                raise GemmaError(
                    f"llama.cpp could not evaluate the prompt (llama_decode returned {rc})",
                    "the context may be full: raise --ctx or shorten the conversation",
                )
            self.kv.book(chunk if keys is None else keys[start : start + len(chunk)])
            start += size

    def decode_all(self, tokens: Sequence[int]) -> int:
        """Decode `tokens` after sequence 0's cache in one batch, with logits for every row.

        Booked before the decode: a Ctrl-C can only land between bytecodes, and a booking
        ahead of the cache is what KVCache.resync repairs. Returns llama_decode's code; on failure
        the rows are dropped again.
        """
        pos0 = len(self.kv)
        rows = [(tok, pos0 + i, 0, True) for i, tok in enumerate(tokens)]
        self.kv.book(tokens)
        rc = self.decode_rows(rows)
        if rc != 0:
            self.kv.truncate(pos0)
        return rc

    @property
    def cached_tokens(self) -> int:
        return len(self.kv)

    def reset(self) -> None:
        self.kv.clear()

    # ---- rows, sequences and samplers: the API engine.parallel and engine.draft build on

    def decode_rows(self, rows: Sequence[tuple[int, int, int, bool]]) -> int:
        """Decode one llama_batch of rows (token, position, sequence id, logits wanted): at most
        n_batch of them, any sequences. Returns llama_decode's code (0: done). Sequence 0's
        bookkeeping is the caller's (evaluate() and decode_all() do it)."""
        b = self._batch
        token, pos, n_seq_id, seq_id, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        for i, (tok, p, seq, want) in enumerate(rows):
            token[i] = tok
            pos[i] = p
            n_seq_id[i] = 1
            seq_id[i][0] = seq
            logits[i] = want
        b.n_tokens = len(rows)
        return ll.llama_decode(self._ctx, b)

    def logits(self, row: int = -1):
        """The logits of a row of the last decoded batch that asked for them (numpy view, n_vocab floats)."""
        import numpy as np  # llama-cpp-python's own dependency; loaded with it already

        return np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, row), shape=(self.n_vocab,))

    def logprob(self, token: int, row: int = -1, top: int = 0) -> TokenLogprob:
        """`token`'s log probability in row `row`'s logits of the last decoded batch (the model's own
        distribution: log-softmax of the raw logits, before any sampler), with the `top` likeliest."""
        import numpy as np  # llama-cpp-python's own dependency; loaded with it already

        logits = self.logits(row).astype(np.float64)
        peak = logits.max()
        norm = peak + np.log(np.exp(logits - peak).sum())
        best: list[tuple[int, bytes, float]] = []
        if top > 0:
            k = min(top, self.n_vocab)
            ids = np.argpartition(-logits, k - 1)[:k]
            ids = ids[np.lexsort((ids, -logits[ids]))]  # likeliest first; ties by id
            best = [(int(i), self.token_bytes(int(i)), float(logits[i] - norm)) for i in ids]
        return TokenLogprob(token, self.token_bytes(token), float(logits[token] - norm), best)

    def new_sampler(self, sampling: Sampling):
        """A llama.cpp sampler chain for `sampling` (free it with free_sampler)."""
        return _new_sampler(self._vocab, sampling)

    @staticmethod
    def free_sampler(sampler) -> None:
        ll.llama_sampler_free(sampler)

    def sample(self, sampler, row: int = -1) -> int:
        """A token from row `row`'s logits of the last decoded batch (-1: its last row)."""
        return ll.llama_sampler_sample(sampler, self._ctx, row)

    @property
    def swa_full(self) -> bool:
        """Whether the sliding-window layers keep a full-size cache (so any prefix can be cut back to)."""
        return self.info.n_swa > 0 and not self._swa

    @property
    def handle(self):
        """The llama_context pointer, for the engine's own ctypes bindings (engine.ext) that take one."""
        return self._ctx


# ---------------------------------------------------------------- helpers




def _load_model(path: Path, arch: str, n_gpu_layers: int, use_mmap: bool, repack: bool = True):
    params = ll.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_mmap = use_mmap
    params.use_extra_bufts = repack and not AMX_BUILD
    clear_log()
    model = ll.llama_model_load_from_file(str(path).encode("utf-8"), params)
    if not model:
        raise _load_error(path, arch)
    return model


def _load_error(path: Path, arch: str) -> ModelError:
    """Turn llama.cpp's log into one line that says what is wrong with the file."""
    unknown = recent_log("unknown model architecture")
    if unknown:
        return ModelError(
            f"{path}: llama.cpp does not know the architecture '{arch}'",
            "gemma runs GGUF models that llama.cpp supports (Gemma 4: gemma4); pick another file",
        )
    bounds = recent_log("not within the file bounds") or recent_log("data is not within")
    if bounds or recent_log("failed to read"):
        return ModelError(
            f"{path} is truncated or damaged (tensor data missing)",
            "download the model again (`gemma models pull NAME`)",
        )
    detail = recent_log("error loading model") or recent_log("failed") or "unknown reason"
    detail = detail.split(":", 1)[-1].strip() if ":" in detail else detail
    return ModelError(f"llama.cpp could not load {path} ({detail})", "run with GEMMA_DEBUG=1 --verbose for llama.cpp's log")


def _describe(path: Path, header, model) -> ModelInfo:
    arch = header.architecture
    bos = header.token_text(header.get("tokenizer.ggml.bos_token_id"))
    eos = header.token_text(header.get("tokenizer.ggml.eos_token_id"))
    return ModelInfo(
        path=path,
        architecture=arch,
        chat_template=header.chat_template,
        bos=bos,
        eos=eos,
        n_ctx_train=ll.llama_model_n_ctx_train(model),
        n_embd=ll.llama_model_n_embd(model),
        n_swa=ll.llama_model_n_swa(model),
        n_params=ll.llama_model_n_params(model),
        size_bytes=ll.llama_model_size(model),
        meta={k: v for k, v in header.meta.items() if isinstance(v, (str, int, float, bool))},
    )


def _new_context(model, n_ctx: int, n_threads: int, n_batch: int, n_ubatch: int, n_seq: int, swa_full: bool,
                 flash_attn: bool = True, kv_type: str = "f16"):
    if kv_type not in KV_TYPES:  # the KV cache's element type (llama.cpp's --cache-type-k/v)
        raise GemmaError(f"unknown KV cache type {kv_type!r}", f"pick one of {', '.join(KV_TYPES)}")
    params = ll.llama_context_default_params()
    params.type_k = params.type_v = KV_TYPES[kv_type]
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = min(n_ubatch, n_batch)
    params.n_seq_max = max(1, n_seq)
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    params.swa_full = swa_full
    params.no_perf = True
    if not flash_attn:
        params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = ll.llama_init_from_model(model, params)
    if not ctx:
        detail = recent_log("failed") or "out of memory?"
        raise ModelError(f"llama.cpp could not create a context of {n_ctx} tokens ({detail.strip()})", "lower --ctx")
    return ctx


def context_hint(n_ctx: int, n_ctx_train: int, otherwise: str) -> str:
    """Advice for a full context: raise --ctx while the model allows more, else only `otherwise`."""
    if n_ctx_train and n_ctx >= n_ctx_train:
        return f"{otherwise}: {n_ctx} tokens is the most this model supports"
    if n_ctx_train:
        return f"raise --ctx (this model supports up to {n_ctx_train}) or {otherwise}"
    return f"raise --ctx or {otherwise}"


def schema_to_grammar(schema: dict | None) -> str:
    """GBNF for a JSON Schema (llama.cpp's converter); `None` means any JSON object."""


    if schema is None:
        return JSON_GBNF
    return json_schema_to_gbnf(json.dumps(schema))


def request_sampling(base: Sampling, request) -> Sampling:
    """`base` with what a request (`format.request.ChatRequest`) sets: its sampling numbers and logit bias,
    then its grammar: a forced tool call's, its own GBNF, or the grammar of its JSON Schema / any JSON object
    (the reader lets only one of them through)."""
    s = replace(base, **request.sampling())
    if request.tool_choice == "required":  # a forced call: the reply is Gemma 4's call syntax (format.call_grammar)
        s = replace(s, grammar=request.call_grammar())
    if request.grammar:
        s = replace(s, grammar=request.grammar)
    if request.schema is not None or request.json_mode:
        try:
            s = replace(s, grammar=schema_to_grammar(request.schema))
        except Exception as e:  # noqa: BLE001 - llama.cpp's converter raises plain exceptions
            raise RequestError(f"the JSON schema cannot be turned into a grammar ({e})", "response_format",
                               "check the JSON Schema") from None
    return s


def grammar_problem(said: str) -> str:
    """The reason in llama.cpp's grammar parser output ("parse: error parsing grammar: X")."""
    for line in said.splitlines():
        if "error parsing grammar:" in line:
            return line.split("error parsing grammar:", 1)[1].strip()
    for line in said.splitlines():
        if line.strip():
            return line.strip()[:200]
    return recent_log("grammar") or "llama.cpp refused it"


def _new_sampler(vocab, s: Sampling):
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    if s.grammar:
        # Not llama.cpp's lazy grammar: its trigger can leave the grammar stack empty
        # mid-token and abort the process. A thought runs free through session.py instead.
        # Its parser prints errors with fprintf(stderr): caught, said in the error, shown with --verbose.
        with captured_stderr() as said:
            grammar = ll.llama_sampler_init_grammar(vocab, s.grammar.encode("utf-8"), b"root")
        replay(said[0])
        if not grammar:
            ll.llama_sampler_free(chain)
            raise GrammarError(f"the output grammar is invalid ({grammar_problem(said[0])})",
                               "check the GBNF (llama.cpp's grammar syntax) or the JSON schema")
        ll.llama_sampler_chain_add(chain, grammar)
    n_vocab = ll.llama_vocab_n_tokens(vocab)
    if s.repeat_penalty <= 0:
        ll.llama_sampler_free(chain)
        raise GemmaError(f"repeat_penalty must be above 0, not {s.repeat_penalty}", "1.0 turns it off; 1.1 is a mild one")
    if s.logit_bias:
        outside = [t for t in s.logit_bias if not 0 <= int(t) < n_vocab]
        if outside:
            ll.llama_sampler_free(chain)
            raise GemmaError(f"logit_bias names token {outside[0]}, outside the model's vocabulary (0..{n_vocab - 1})",
                             "give token ids of this model's tokenizer")
        biases = [(int(t), float(b)) for t, b in s.logit_bias.items()]
        array = (ll.llama_logit_bias * len(biases))(*biases)
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_logit_bias(n_vocab, len(biases), array))
    if s.penalized:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_penalties(
            n_vocab, s.penalty_last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty))
    if s.temperature <= 0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        return chain
    if s.top_k > 0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(s.top_k))
    if 0 < s.top_p < 1:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(s.top_p, 1))
    if s.min_p > 0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(s.min_p, 1))
    ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(s.temperature))
    seed = ll.LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF
    ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
    return chain
