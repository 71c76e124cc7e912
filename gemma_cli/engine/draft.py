"""Speculative decoding: draft a few tokens cheaply, verify them in one batch of the main model.

Two drafters:
- `MtpDrafter`: Gemma 4's multi-token-prediction assistant (`gemma4-assistant` GGUF). Its
  context is bound to the main one: it attends over the main model's KV cache (shared by
  llama.cpp, not copied) and starts from the main model's last hidden state. Each step
  feeds its own hidden state back, all at the position of the last accepted token (as
  llama.cpp's `common/speculative.cpp` does for Gemma 4).
- `NgramDrafter`: prompt lookup. The latest earlier occurrence of the last few tokens
  proposes what followed it; free when nothing matches, strong on copy-heavy work.

Verification keeps the output identical to plain decoding: the main model evaluates the
pending token plus the drafts in one batch, and the engine's own sampler picks a token
from each row in turn, exactly as it would one token at a time; a draft is accepted while
it equals the token picked, and the first mismatch is the next token. The drafts are
greedy (one token, probability 1 in the drafter's eyes), so this is speculative sampling
with rejection: a draft `d` survives with probability p(d) = min(1, p(d)/q(d)), and on
rejection the token comes from p without `d`, renormalised, i.e. from max(0, p - q). The
target distribution is kept at any temperature, and since the sampler draws its random
numbers in the same order, a fixed seed gives the same text as plain decoding.
One limit is llama.cpp's, not the method's: its kernels may round a batch of several
tokens differently from a single token (on CPU with Q4_K weights: from 4 tokens on, up to
~1 logit on Gemma 3 270M). Greedy output then still matches except at near-ties; sampled
output can take another (equally likely) path from the first such token. On F32 weights
(the test models) the results are bit-identical.
Rejected drafts leave the KV cache at once (`llama_memory_seq_rm`); the MTP drafter has no
cache of its own, so the main cache is the only one to clean, and a later prompt reuses
the cache as usual (the drafter needs nothing carried over between turns).

Use from a command (after the engine is loaded; batch, describe-image, transcribe):

    warning = draft.setup(engine, draft_flag, draft_max=draft_max_flag,
                          registry_draft=located.draft)    # "auto" | "off" | "ngram" | PATH
    if warning: print it as one line on stderr (drafting is then off)
    # engine.stream_generate(...) now drafts; each Step carries drafted/accepted so far;
    # engine.draft.stats: the last generation's DraftStats, engine.draft.total: all of them
    # (engine.draft is None when off). Drafting covers sequence 0's stream_generate only.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import llama_cpp as ll

from gemma_cli.engine import ext
from gemma_cli.engine.core import Step
from gemma_cli.errors import GemmaError
from gemma_cli.gguf_header import Header, read_header

if TYPE_CHECKING:
    from gemma_cli.engine.core import Engine

MTP_ARCH = "gemma4-assistant"
MTP_MAX = 4  # llama-server drafts 3 by default; acceptance falls off quickly beyond a few
NGRAM_MAX = 16  # a copy runs long once it matches, and on a CPU only long batches pay off
_KINDS = ("auto", "off", "ngram")


@dataclass
class DraftStats:
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0  # verification batches

    @property
    def rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


# ---------------------------------------------------------------- choosing a drafter


def is_moe(header: Header) -> bool:
    arch = header.architecture
    return int(header.get(f"{arch}.expert_count", 0) or 0) > 0


def choose(spec: str | Path | None, model: str | Path, registry_draft: Path | None = None) -> str:
    """`--draft` made concrete: "off", "ngram" or a drafter path.

    `auto`: the model's MTP drafter (the registry's, else a gemma4-assistant GGUF beside
    the model) for dense Gemma 4 models; off for the MoE 26B-A4B, where only ~4B of the
    weights run per token, so a verify batch of k tokens touches up to k times as many
    experts and costs about as much as decoding them one by one.
    """
    spec = str(spec or "auto").strip()
    if spec.lower() != "auto":
        return spec.lower() if spec.lower() in _KINDS else spec
    header = read_header(model)
    if header.architecture != "gemma4" or is_moe(header):
        return "off"
    path = registry_draft or find_beside(Path(model))
    return str(path) if path else "off"


def find_beside(model: Path) -> Path | None:
    """A gemma4-assistant GGUF in the model's folder (a fitting one), if any."""
    try:
        candidates = sorted(p for p in model.parent.glob("*.gguf") if p != model)
    except OSError:
        return None
    main = None
    for path in candidates:
        try:
            header = read_header(path)
        except GemmaError:
            continue
        if header.architecture != MTP_ARCH:
            continue
        main = main or read_header(model)
        if misfit(main, header) is None:
            return path
    return None


def setup(engine: "Engine", spec: str | Path | None, *, draft_max: int | None = None,
          registry_draft: Path | None = None) -> str | None:
    """Attach the drafter `spec` names to `engine` (or none); returns a one-line warning when
    drafting had to be turned off, None otherwise. A PATH that is missing or not GGUF raises."""
    choice = choose(spec, engine.path, registry_draft)
    engine.attach_draft(None)  # the old drafter goes before the new one binds to the context
    drafter, warning = open_drafter(engine, choice, draft_max=draft_max)
    engine.attach_draft(drafter)
    return warning


def open_drafter(engine: "Engine", choice: str, *, draft_max: int | None = None) -> tuple["Drafter | None", str | None]:
    if choice == "off":
        return None, None
    if choice == "ngram":
        return NgramDrafter(draft_max or NGRAM_MAX), None
    path = Path(choice).expanduser()
    header = read_header(path)  # a one-line error for a missing or foreign file
    why = ext.problem()
    if why:
        return None, f"this llama-cpp-python lacks the MTP bindings ({why}): plain decoding"
    why = misfit(read_header(engine.path), header)
    if why:
        return None, f"drafter {path.name} does not fit {engine.path.name} ({why}): plain decoding"
    try:
        return MtpDrafter(engine, path, draft_max or MTP_MAX), None
    except DraftError as e:
        return None, f"drafter {path.name}: {e}: plain decoding"


def misfit(main: Header, drafter: Header) -> str | None:
    """Why `drafter` cannot draft for `main` (None: it fits). Checked on the headers, before
    llama.cpp sees the pair: a mismatched hidden or head size aborts the process there."""
    if drafter.architecture != MTP_ARCH:
        return f"it is a '{drafter.architecture}' model, not a {MTP_ARCH} drafter"
    if main.architecture != "gemma4":
        return f"MTP drafters pair with Gemma 4 models, this one is '{main.architecture}'"
    m, d = "gemma4.", MTP_ARCH + "."
    pairs = [
        ("hidden size", main.get(m + "embedding_length"), drafter.get(d + "embedding_length_out")),
        ("head size", main.get(m + "attention.key_length"), drafter.get(d + "attention.key_length")),
        ("sliding head size", main.get(m + "attention.key_length_swa"), drafter.get(d + "attention.key_length_swa")),
        ("sliding window", main.get(m + "attention.sliding_window"), drafter.get(d + "attention.sliding_window")),
        ("vocabulary", _count(main.get("tokenizer.ggml.tokens")), _count(drafter.get("tokenizer.ggml.tokens"))),
    ]
    for what, want, got in pairs:
        if want is not None and got != want:
            return f"{what} {got}, the model's is {want}"
    return _kv_heads_misfit(main, drafter)


def _count(tokens) -> int | None:
    if tokens is None:
        return None
    return len(tokens) if isinstance(tokens, list) else getattr(tokens, "count", None)


def _kv_heads_misfit(main: Header, drafter: Header) -> str | None:
    # The drafter's sliding layers read the main model's second-to-last layer's cache, its
    # full layers the last layer's (llama.cpp's layer sharing): their KV heads must agree.
    m_kv = main.get("gemma4.attention.head_count_kv")
    d_kv = drafter.get(MTP_ARCH + ".attention.head_count_kv")
    d_swa = drafter.get(MTP_ARCH + ".attention.sliding_window_pattern")
    n_main = main.get("gemma4.block_count")
    if m_kv is None or d_kv is None or not isinstance(d_swa, list) or not n_main:
        return None
    if isinstance(m_kv, list):
        if len(m_kv) < 2:
            return None
        main_for = {True: m_kv[-2], False: m_kv[-1]}
    else:
        main_for = {True: m_kv, False: m_kv}
    for i, swa in enumerate(d_swa):
        got = d_kv[i] if isinstance(d_kv, list) and i < len(d_kv) else d_kv
        if got != main_for[bool(swa)]:
            return f"KV heads {got}, the model's are {main_for[bool(swa)]}"
    return None


class DraftError(Exception):
    """The drafter could not be set up (said in the warning, then plain decoding)."""


# ---------------------------------------------------------------- the loop


class Drafter:
    """Proposes tokens; `decode` runs the draft-verify loop for `Engine.stream_generate`."""

    kind = ""

    def __init__(self, draft_max: int):
        self.max = max(1, draft_max)
        self.stats: DraftStats | None = None  # the last generation's
        self.total = DraftStats()  # every generation's since attached
        self.adaptive = True  # the bench turns it off to time rounds of a fixed size

    # -- what a drafter provides

    def begin(self, engine: "Engine") -> None:
        """A generation starts; its prompt is in the cache."""

    def propose(self, engine: "Engine", token: int, pos: int, n: int, row: int) -> list[int]:
        """Up to `n` tokens to follow `token`, which goes to position `pos`. Row `row` of the
        main model's last batch picked `token` (-1: not known, e.g. right after a prompt)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- the loop

    def decode(self, engine: "Engine", sampler, max_tokens: int, evaluated: int, reused: int,
               t0: float) -> Iterator[Step]:
        """Like `Engine._decode_loop`, with up to `self.max` tokens drafted per main-model batch."""
        stats = self.stats = DraftStats()
        try:
            yield from self._loop(engine, sampler, max_tokens, evaluated, reused, t0, stats)
        finally:  # an interrupted generation counts too
            self.total.drafted += stats.drafted
            self.total.accepted += stats.accepted
            self.total.rounds += stats.rounds

    def _loop(self, engine: "Engine", sampler, max_tokens: int, evaluated: int, reused: int, t0: float,
              stats: DraftStats) -> Iterator[Step]:
        # The cache always holds exactly the engine's cached tokens, the last batch being
        # [token, *drafts]; `row` is the row of that batch whose logits pick the next token.
        self.begin(engine)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        generated, finish, t_first, ttft, tps = 0, "length", 0.0, 0.0, 0.0
        pace = _Pace(self.max, self.adaptive)
        row, drafts = -1, []
        while generated < max_tokens:
            token = engine.sample(sampler, row)
            now = time.perf_counter()
            if generated == 0:
                t_first, ttft = now, now - t0
            if engine.is_end(token):
                finish = "stop"
                break
            accepted = 0 <= row < len(drafts) and token == drafts[row]
            stats.accepted += accepted
            generated += 1
            tps = (generated - 1) / (now - t_first) if generated > 1 and now > t_first else 0.0
            yield Step(utf8.decode(engine.token_bytes(token)), token, evaluated, reused, generated, ttft, tps,
                       drafted=stats.drafted, accepted=stats.accepted)
            if generated >= max_tokens:
                break
            if accepted:  # its KV entry is already there; the next row picks its successor
                row += 1
                continue
            if drafts:
                pace.update(row, len(drafts))
            engine.kv.truncate(engine.cached_tokens - len(drafts) + max(row, 0))  # the rejected drafts
            # `token` is new: evaluate it and fresh drafts after it in one batch.
            pos = engine.cached_tokens
            room = min(pace.next(), max_tokens - generated - 1, engine.n_ctx - pos - 1, engine.n_batch - 1)
            drafts = self.propose(engine, token, pos, room, row) if room > 0 else []
            _verify(engine, [token, *drafts])
            stats.drafted += len(drafts)
            stats.rounds += 1
            row = 0
        engine.kv.truncate(engine.cached_tokens - len(drafts) + max(row, 0))
        tail = utf8.decode(b"", final=True)
        yield Step(tail, None, evaluated, reused, generated, ttft, tps, finish,
                   drafted=stats.drafted, accepted=stats.accepted)


class _Pace:
    """How many tokens to draft next, from how the last drafts fared.

    Grow by two while every draft holds; after a miss, draft one more than were kept. A
    round where nothing holds pauses drafting for 1, 2, 4 … 32 rounds (reset by any hit):
    on a CPU a verify batch of k tokens can cost several single steps, so a drafter that
    keeps missing (free text for prompt lookup, a poor MTP match) must mostly stay quiet.
    """

    PAUSE_MAX = 32

    def __init__(self, most: int, adaptive: bool = True):
        self.most, self.adaptive = most, adaptive
        self.n, self.pause, self.backoff = most, 0, 1

    def next(self) -> int:
        if self.pause:
            self.pause -= 1
            return 0
        return self.n

    def update(self, accepted: int, drafted: int) -> None:
        if not self.adaptive:
            return
        if accepted == drafted:
            self.n = min(self.most, self.n + 2)
        else:
            self.n = max(1, accepted + 1)
        if accepted:
            self.backoff = 1
        else:
            self.pause, self.backoff = self.backoff, min(2 * self.backoff, self.PAUSE_MAX)


def _verify(engine: "Engine", tokens: Sequence[int]) -> None:
    """Decode `tokens` after the cache in one batch, with logits (and hidden states) for every row.

    Rejected drafts leave with `engine.kv.truncate`: the sliding-window cache only dropped
    positions the kept tokens no longer see, so no checkpoint is needed."""
    rc = engine.decode_all(tokens)
    if rc != 0:
        raise GemmaError(
            f"llama.cpp could not evaluate a draft (llama_decode returned {rc})",
            "the context may be full: raise --ctx, or use --draft off",
        )


# ---------------------------------------------------------------- prompt lookup


class NgramDrafter(Drafter):
    """Prompt-lookup drafting: continue the latest earlier occurrence of the last few tokens."""

    kind = "ngram"

    def __init__(self, draft_max: int = NGRAM_MAX, sizes: Sequence[int] = (4, 3)):
        super().__init__(draft_max)
        self.sizes = tuple(sorted(set(sizes), reverse=True))  # the longest match first
        self.begin(None)

    def begin(self, engine) -> None:
        self._history: list[int] = []  # the generation's tokens so far (prompt included)
        self._indexed = 0
        # n-gram -> where its latest occurrence's continuation starts; recent text is the
        # likeliest to repeat. Built as the history grows: O(1) per token, not a rescan.
        self._index: dict[int, dict[tuple, int]] = {m: {} for m in self.sizes}

    def propose(self, engine: "Engine", token: int, pos: int, n: int, row: int) -> list[int]:
        h = self._history
        h.extend(engine.kv.contents(len(h), pos))  # what was accepted since the last call
        h.append(token)
        for j in range(max(self._indexed, 1), len(h)):  # n-grams ending before `token`
            for m in self.sizes:
                if j >= m:
                    self._index[m][tuple(h[j - m : j])] = j
        self._indexed = len(h)
        found: list[int] = []
        for m in self.sizes:
            j = self._index[m].get(tuple(h[-m:])) if len(h) > m else None
            if j is not None:
                found = h[j : j + n]
                break
        # Media positions sit in the history as keys, not token ids: a draft stops before one.
        cut = next((i for i, t in enumerate(found) if not isinstance(t, int)), len(found))
        found = found[:cut]
        h.pop()  # `token` is not cached yet: the next call takes it from the cache
        return found


# ---------------------------------------------------------------- Gemma 4 MTP


class MtpDrafter(Drafter):
    """Gemma 4's multi-token-prediction assistant, bound to the engine's context."""

    kind = "mtp"

    def __init__(self, engine: "Engine", path: Path, draft_max: int = MTP_MAX):
        import numpy as np  # a dependency of llama-cpp-python; only the drafter's argmax needs it

        super().__init__(draft_max)
        self.path = path
        self._np = np
        self._main = engine.handle
        self._model = self._ctx = self._step = None
        params = ll.llama_model_default_params()
        params.n_gpu_layers = engine.n_gpu_layers  # beside the model: it reads its cache every step
        self._model = ll.llama_model_load_from_file(str(path).encode("utf-8"), params)
        if not self._model:
            raise DraftError("llama.cpp could not load it")
        try:
            self._check_vocab(engine)
            self._ctx = ext.new_mtp_context(self._model, engine.handle, engine.n_threads, engine.swa_full)
            if not self._ctx:
                raise DraftError("llama.cpp could not bind it to the model's context")
            if not ext.shares_cache(self._ctx, engine.handle):
                raise DraftError("its context does not share the model's KV cache")
            self._n_embd = ext.n_embd_out(self._model)
            self._n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self._model))
            self._step = ext.StepBatch(self._ctx, self._n_embd)
        except BaseException:
            self.close()
            raise

    def _check_vocab(self, engine: "Engine") -> None:
        mine = ll.llama_model_get_vocab(self._model)
        if ext.n_embd_out(self._model) != engine.info.n_embd:
            raise DraftError("its input width differs from the model's hidden size")
        n = ll.llama_vocab_n_tokens(mine)
        if n != engine.n_vocab:
            raise DraftError("its vocabulary differs from the model's")
        # Same size is not same tokenizer: compare a spread of entries (llama.cpp compares all).
        for t in range(0, n, max(1, n // 97)):
            if ll.llama_vocab_get_text(mine, t) != engine.token_text(t):
                raise DraftError(f"its token {t} differs from the model's")

    def begin(self, engine: "Engine") -> None:
        # Here rather than once at attach time: whatever else toggled it, the verify batches
        # of this generation must leave their hidden states behind.
        ext.emit_hidden(engine.handle, True)

    def propose(self, engine: "Engine", token: int, pos: int, n: int, row: int) -> list[int]:
        if row < 0 or self._step is None:
            return []  # no hidden state for `token` yet: the next round drafts
        state = ext.hidden(engine.handle, row)
        out: list[int] = []
        np = self._np
        while state is not None and len(out) < n:
            # Every step sits at `pos`: the assistant has no cache of its own and attends
            # over the model's, which ends just before `pos` (llama.cpp does the same).
            if self._step.run(out[-1] if out else token, pos, state) != 0:
                break
            logits = ll.llama_get_logits_ith(self._ctx, 0)
            if not logits:
                break
            out.append(int(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax()))
            state = ext.hidden(self._ctx, 0)
        return out

    def close(self) -> None:
        if self._step is not None:
            self._step.free()
            self._step = None
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
            if self._main:
                ext.emit_hidden(self._main, False)
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None
