"""Sequence 0's KV cache bookkeeping: what sits at each position, SWA checkpoints, cut and resync.

The engine remembers which prompt items (token ids, media span keys) sit in the KV cache of
sequence 0, position i = index i. A new prompt that shares a prefix with them evaluates only
the rest. Sliding-window (SWA) layers keep only the last `n_swa` positions (plus one batch),
so cutting the cache back to a prefix is only valid while the SWA cache still holds the
window before that prefix; otherwise the cache restores a checkpoint of the SWA cache taken
while the prompt was evaluated, or, lacking one, starts empty (as llama-server does).

`KVCache` is the small API the engine's decoding talks to: `book()` after a decode,
`shared()` + `cut()` before a prompt, `checkpoint()` on the way, `truncate()` for rejected
drafts, `resync()` after an interrupt.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Sequence

import llama_cpp as ll

SEQ = 0  # the conversation's sequence; engine.parallel's others are its own


@dataclass
class Checkpoint:
    """A copy of the SWA part of the KV cache when `n_tokens` tokens had been evaluated."""

    n_tokens: int
    data: bytes


def is_key(item) -> bool:
    """Whether a prompt item is a media position's key (kind, sha256, i, n) rather than a token id."""
    return type(item) is tuple


def span_start(items: Sequence, n: int) -> int:
    """`n` moved back to the start of the span it falls inside (a span is evaluated whole)."""
    if 0 <= n < len(items) and is_key(items[n]):
        return n - items[n][2]
    return n


def common_prefix(a: Sequence, b: Sequence) -> int:
    """How many leading items `a` and `b` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class KVCache:
    """The bookkeeping of one context's sequence 0: its items, SWA checkpoints, cuts."""

    KEEP_CHECKPOINTS = 4  # a few recent ones are all a chat needs

    def __init__(self, ctx, n_swa: int):
        """`n_swa`: the sliding window of a model whose SWA layers keep a small cache; 0: none
        (no SWA layers, or a full-size SWA cache: any prefix can be cut back to)."""
        self.ctx = ctx
        self.mem = ll.llama_get_memory(ctx)
        self.n_swa = n_swa
        self.items: list = []  # what sits at each position of sequence 0
        self.checkpoints: list[Checkpoint] = []
        # Positions where the cache holds what a cold evaluation split at the same save points
        # would (engine.disk keeps only such states: restoring one gives the same output).
        self.canonical: set[int] = {0}
        self._copy_buf = (ctypes.c_uint8 * 0)()  # copy()'s buffer, grown as needed

    def __len__(self) -> int:
        return len(self.items)

    def contents(self, start: int = 0, stop: int | None = None) -> list:
        """A copy of what the cache holds, position by position (of [start, stop))."""
        return self.items[start:stop]

    def book(self, items: Sequence) -> None:
        """Record `items` as decoded at the next positions."""
        self.items.extend(items)

    def clear(self) -> None:
        ll.llama_memory_clear(self.mem, True)
        self.forget()

    def forget(self) -> None:
        """The context is gone (made again): nothing is cached, nothing to remove."""
        self.items.clear()
        self.checkpoints.clear()
        self.canonical = {0}

    def adopt(self, items: Sequence, state: bytes) -> bool:
        """Replace sequence 0 with a state() of `items` (engine.disk's); False: llama.cpp refused it."""
        ll.llama_memory_seq_rm(self.mem, SEQ, -1, -1)
        self.forget()
        if not self.load_state(state):
            ll.llama_memory_seq_rm(self.mem, SEQ, -1, -1)
            return False
        self.items = list(items)
        self.canonical.add(len(self.items))
        return True

    def canonical_start(self, items: Sequence) -> int | None:
        """Cut back to the longest canonical prefix the cache shares with `items` (None: that fails)."""
        n = self.cut(max(c for c in self.canonical if c <= common_prefix(self.items, items)))
        return n if n in self.canonical and n < len(items) else None

    def plan(self, items: Sequence, start: int, save_at: Sequence[int], checkpoint_at: int | None = None, *,
             logits: bool = True) -> list[tuple[int, bool, bool, bool]]:
        """How to evaluate items[start:]: (end, take an SWA checkpoint there, canonical, save it on disk) for
        each piece, the last piece (to the end, with logits for the last item) left out when `logits`.

        Evaluation splits at every save point, so a state is the same whichever run took it (a cold
        run splits there too); a state reached from a canonical start is canonical; only the first and
        the last two points are checkpointed and written (each write is a whole state). A span is
        never split (`checkpoint_at`: an SWA checkpoint spot; None without SWA)."""
        n = len(items)
        save_at = {p for p in save_at if start < p <= n and span_start(items, p) == p}
        if checkpoint_at is not None and not (start < checkpoint_at < n and span_start(items, checkpoint_at) == checkpoint_at):
            checkpoint_at = None
        ends = sorted(p for p in save_at | {checkpoint_at} - {None} if p < n) + ([] if logits else [n])
        kept = [p for p in ends if p in save_at]
        kept = set(kept[:1] + kept[-2:])
        canonical = start in self.canonical
        return [(p, p < n and (p in kept or p == checkpoint_at) and bool(self.n_swa), canonical and p in save_at,
                 canonical and p in kept) for p in ends]

    def pos_min(self, seq: int = SEQ) -> int:
        """The oldest position the (sliding-window) KV cache of sequence `seq` still holds; -1: empty."""
        return ll.llama_memory_seq_pos_min(self.mem, seq)

    def clear_sequence(self, seq: int, start: int = 0) -> None:
        """Remove sequence `seq`'s cells at positions >= `start` (not sequence 0: its bookkeeping
        is clear()'s and truncate()'s; engine.parallel's sequences)."""
        ll.llama_memory_seq_rm(self.mem, seq, start if start > 0 else -1, -1)

    # ---- before a prompt

    def shared(self, items: Sequence) -> int:
        """How many leading `items` the cache holds and a prompt may keep (not the whole prompt:
        at least one item must be evaluated to get logits for the next)."""
        self.resync()
        n = common_prefix(self.items, items)
        return n - 1 if n == len(items) else n

    def resync(self) -> None:
        """An interrupt (Ctrl-C) can land between a decode and the bookkeeping, leaving one
        side a batch ahead: keep only what both agree on."""
        n_kv = ll.llama_memory_seq_pos_max(self.mem, SEQ) + 1
        if n_kv < len(self.items):
            self._drop_from(n_kv)
        elif n_kv > len(self.items):
            ll.llama_memory_seq_rm(self.mem, SEQ, len(self.items), -1)

    def cut(self, n: int) -> int:
        """Remove positions >= n, restoring an SWA checkpoint where the window is gone; returns
        how many positions really remain usable (n, or fewer)."""
        if n >= len(self.items):
            return n
        if self.n_swa and n > 0 and not self.window_kept(n):
            n = self._restore_checkpoint(n)
        ll.llama_memory_seq_rm(self.mem, SEQ, n, -1)
        self._drop_from(n)
        self.checkpoints = [c for c in self.checkpoints if c.n_tokens <= n]
        return n

    def _drop_from(self, n: int) -> None:
        del self.items[n:]
        self.canonical = {c for c in self.canonical if c <= n}

    def window_kept(self, n: int) -> bool:
        """Whether the next token after `n` positions finds its whole sliding window cached:
        it attends to positions > n - n_swa in SWA layers (llama-server's pos_min test)."""
        pos_min = self.pos_min()
        return pos_min == 0 or pos_min < max(0, n - self.n_swa)

    def truncate(self, n: int) -> None:
        """Keep the first `n` positions, no SWA checkpoint consulted: valid only for positions the
        kept ones do not need in the sliding window (just-decoded drafts)."""
        if n < len(self.items):
            ll.llama_memory_seq_rm(self.mem, SEQ, n, -1)
            self._drop_from(n)

    # ---- SWA checkpoints

    def checkpoint(self) -> None:
        """Keep a copy of the SWA cache as it is now (a later cut to here stays valid)."""
        if self.n_swa:
            self.checkpoints.append(Checkpoint(len(self.items), self.state(partial=True)))
            del self.checkpoints[: -self.KEEP_CHECKPOINTS]

    def _restore_checkpoint(self, n: int) -> int:
        usable = [c for c in self.checkpoints if c.n_tokens <= n]
        if not usable:
            ll.llama_memory_seq_rm(self.mem, SEQ, -1, -1)
            return 0
        cp = usable[-1]
        ll.llama_memory_seq_rm(self.mem, SEQ, cp.n_tokens, -1)
        if not self.load_state(cp.data, partial=True):
            ll.llama_memory_seq_rm(self.mem, SEQ, -1, -1)
            return 0
        return cp.n_tokens

    # ---- sequence states (llama_state_seq_*)

    def state(self, *, partial: bool = False, seq: int = SEQ) -> bytes:
        """Sequence `seq`'s KV cells as llama.cpp serialises them (`partial`: the SWA part only)."""
        flags = ll.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if partial else 0
        size = ll.llama_state_seq_get_size_ext(self.ctx, seq, flags)
        buf = (ctypes.c_uint8 * size)()
        written = ll.llama_state_seq_get_data_ext(self.ctx, buf, size, seq, flags)
        return ctypes.string_at(buf, written)

    def load_state(self, data: bytes, *, partial: bool = False, seq: int = SEQ) -> bool:
        """Put a state() into sequence `seq` (False: llama.cpp refused it)."""
        flags = ll.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if partial else 0
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return ll.llama_state_seq_set_data_ext(self.ctx, buf, len(data), seq, flags) != 0

    def copy(self, src: int, dst: int) -> bool:
        """Put sequence `src`'s KV cells into `dst`'s stream, now (False: llama.cpp could not).

        Through the state API rather than llama_memory_seq_cp: across streams that copies a
        whole stream, and only at the next decode, by which time `src` may have changed.
        """
        size = ll.llama_state_seq_get_size_ext(self.ctx, src, 0)
        if len(self._copy_buf) < size:
            self._copy_buf = (ctypes.c_uint8 * size)()
        written = ll.llama_state_seq_get_data_ext(self.ctx, self._copy_buf, size, src, 0)
        return ll.llama_state_seq_set_data_ext(self.ctx, self._copy_buf, written, dst, 0) != 0
