"""The unstable llama.cpp bindings that MTP drafting needs, in one place.

Gemma 4's MTP drafter (`gemma4-assistant`) reads the main model's hidden states and KV
cache. llama-cpp-python 0.3.36 reaches that only through bindings it calls non-public
(`llama_cpp.llama_cpp_ext`: hidden-state output) and the experimental extended batch API
(`llama_batch_ext_*`, `llama_process`: a token plus a hidden state per batch entry), and
through the context parameters `ctx_other` / `ctx_type`. Any of these may change or vanish
in a later release, so nothing else in gemma_cli touches them: `problem()` is checked once
at import, and the caller falls back to plain decoding with a one-line warning.
"""

from __future__ import annotations

import ctypes

import llama_cpp as ll

# Everything the MTP loop calls that is not part of llama.cpp's stable C API.
_CORE_NAMES = (
    "LLAMA_CONTEXT_TYPE_MTP",
    "LLAMA_PROCESS_TYPE_DECODE",
    "llama_embd",
    "llama_batch_ext_init",
    "llama_batch_ext_free",
    "llama_batch_ext_clear",
    "llama_batch_ext_add_token",
    "llama_batch_ext_set_pos",
    "llama_batch_ext_set_embd_token",
    "llama_batch_ext_set_output_logits",
    "llama_process",
    "llama_model_n_embd_out",
)
_EXT_NAMES = ("llama_set_embeddings_nextn", "llama_get_embeddings_nextn_ith", "llama_get_ctx_other")


def _check() -> tuple[object | None, str | None]:
    try:
        # lazy: a probe: without the extension gemma still runs (the error is caught below)
        from llama_cpp import llama_cpp_ext as ext_mod
    except (ImportError, AttributeError, OSError) as e:  # AttributeError: a symbol missing from the library
        return None, f"llama_cpp.llama_cpp_ext cannot be loaded ({e})"
    missing = [n for n in _CORE_NAMES if not hasattr(ll, n)] + [n for n in _EXT_NAMES if not hasattr(ext_mod, n)]
    fields = {name for name, _ in ll.llama_context_params._fields_}
    missing += [f"llama_context_params.{f}" for f in ("ctx_other", "ctx_type") if f not in fields]
    if missing:
        return None, f"missing {', '.join(missing)}"
    return ext_mod, None


_ext, _problem = _check()


def problem() -> str | None:
    """Why MTP drafting cannot run with this llama-cpp-python (None: it can)."""
    return _problem


# ---------------------------------------------------------------- contexts


def new_mtp_context(drafter_model, main_ctx, n_threads: int, swa_full: bool):
    """A drafter context bound to `main_ctx`: it attends over the main model's KV cache
    (the cache is shared, not copied) and reads its hidden states. NULL on failure."""
    params = ll.llama_context_default_params()
    params.ctx_type = ll.LLAMA_CONTEXT_TYPE_MTP
    params.ctx_other = main_ctx
    params.n_ctx = ll.llama_n_ctx(main_ctx)  # llama.cpp sizes the shared cache from the main one anyway
    params.n_batch = 8  # one drafted token per step
    params.n_ubatch = 8
    params.n_seq_max = ll.llama_n_seq_max(main_ctx)
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    params.swa_full = swa_full
    params.no_perf = True
    ctx = ll.llama_init_from_model(drafter_model, params)
    if ctx:
        # The drafter's next-step hidden state, only for entries that ask for output.
        _ext.llama_set_embeddings_nextn(ctx, True, True)
    return ctx


def shares_cache(draft_ctx, main_ctx) -> bool:
    """True when the drafter attends over the main context's cache (Gemma 4 assistants)."""
    other = _ext.llama_get_ctx_other(draft_ctx)
    return bool(other) and int(other) == int(main_ctx)


def emit_hidden(main_ctx, on: bool) -> None:
    """Make the main context keep its last hidden state for every token of a batch.

    Unmasked, as llama.cpp's own MTP driver does: the model graph then computes the logits
    exactly as without it, so greedy output cannot drift from plain decoding.
    """
    _ext.llama_set_embeddings_nextn(main_ctx, on, False)


def hidden(ctx, i: int):
    """Pointer to the hidden state of batch entry `i` of the last decode (valid until the next)."""
    ptr = _ext.llama_get_embeddings_nextn_ith(ctx, i)
    return ptr if ptr else None


def n_embd_out(model) -> int:
    return ll.llama_model_n_embd_out(model)


# ---------------------------------------------------------------- batches


class StepBatch:
    """A one-entry extended batch: a token, its position and a hidden state (the drafter's input)."""

    def __init__(self, ctx, n_embd: int):
        self._ctx = ctx
        self._n_embd = n_embd
        self._batch = ll.llama_batch_ext_init(ctx)
        self._pos = (ll.llama_pos * 4)()  # room for multi-position ropes; text uses pos[0]

    def run(self, token: int, pos: int, state) -> int:
        """Decode one entry; returns llama_process's code (0 = ok)."""
        b = self._batch
        ll.llama_batch_ext_clear(b)
        idx = ll.llama_batch_ext_add_token(b, 0, token)
        if idx < 0:
            return -1
        self._pos[0] = pos
        ll.llama_batch_ext_set_pos(b, idx, self._pos)
        embd = ll.llama_embd(ctypes.cast(state, ctypes.POINTER(ctypes.c_float)), 1, self._n_embd)
        if not ll.llama_batch_ext_set_embd_token(b, idx, embd):  # copies the row
            return -1
        ll.llama_batch_ext_set_output_logits(b, idx, True)
        return ll.llama_process(self._ctx, ll.LLAMA_PROCESS_TYPE_DECODE, b)

    def free(self) -> None:
        if self._batch:
            ll.llama_batch_ext_free(self._batch)
            self._batch = None
