"""Several sequences decoding together in one llama.cpp context, with continuous batching.

`Parallel(engine, n)` runs jobs (a prompt, its sampling, a token budget) on n sequences of
one context, the way llama-server's slots do. Each step is one `llama_batch` holding the
next token of every running sequence, each under its own sequence id, so the weights are
read once for all of them; a sequence that finishes gives its slot to the next job at once.

The prompts of the jobs that fill free slots are evaluated in the same batches as the running
sequences' next tokens (llama-server's schedule), each in its own slot (sequences 1..n), in
equal shares per prompt so llama.cpp's per-sequence split fills whole ubatches. A head they share (`Job.shared`: a system prompt or tool
declarations common to many jobs) is evaluated once in the engine's own sequence 0 (the
staging sequence), with the engine's KV reuse, and copied into each slot first. Prompts with
images or audio go through the engine's media path in the staging sequence, then are copied.

The context keeps one KV stream per sequence (llama.cpp's non-unified cache): where a
sequence's tokens sit in its stream does not depend on what runs beside it. Together with
`Engine(batch_invariant=True)` (matmul kernels that do not change with the batch's row count;
`gemma batch --deterministic`) a job's tokens on the CPU are the same whichever jobs share
its batches (no row goes alone into a ubatch then: one row takes another matmul kernel than
several, so a sequence left alone gets a throwaway row, `_padding`; and no sequence gets more
than core.INVARIANT_ROWS prompt rows a batch: flash attention tiles 64 or more), so `--parallel 1` and
`--parallel 8` give the same greedy output. llama.cpp's GPU backends choose kernels by
batch size, so there a near-tie can still break differently.

The engine must be opened with `n_seq = n + 1` (the slots plus the staging sequence).

For a server (`gemma serve`) the job source may be live: it yields `IDLE` when no job is
waiting (the running ones go on decoding; with none running it is asked again at once, so
it may block then), `Job.on_text` streams each job's text as it decodes, `cancel(job)`
ends a job at the next step (a client that went away), and `keep_slots=True` keeps a
finished job's KV cells in its slot: the next job whose prompt starts the same way (a
client continuing its conversation) is put in that slot and evaluates only what is new,
like llama-server's slot cache. A job with save points (`Job.save_at`: a conversation's turn
ends) is evaluated in pieces split there and reuses a slot only from such a point a cold run
reached; with the engine's prompt cache a slot's state at that point goes to disk when another
job takes the slot or the server stops, and comes back into a slot for a prompt that starts
with it: the same output as a cold run's either way.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from gemma_cli.engine.core import INVARIANT_ROWS, Sampling, TokenLogprob
from gemma_cli.engine.kv import common_prefix
from gemma_cli.errors import ContextOverflowError, GemmaError
from gemma_cli.format.reply import (
    CHANNEL_CLOSE as THOUGHT_CLOSE,  # the thought markers live in reply (pure)
)
from gemma_cli.format.reply import CHANNEL_OPEN as THOUGHT_OPEN
from gemma_cli.format.reply import thought_phase
from gemma_cli.format.stop_strings import cut_at_stop, hit_stop

if TYPE_CHECKING:
    from gemma_cli.engine.core import Engine

IDLE = object()  # a live job source's "no job now": see Parallel.run
STAGING = 0  # the engine's own sequence: prompts are evaluated here, then copied to a slot


@dataclass
class Job:
    """One prompt to complete."""

    prompt: str | Sequence[int]
    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int | None = None  # None: what the sequence's context leaves
    media: Sequence | None = None  # engine.projector.Media, one per <|image|>/<|audio|> placeholder, in order
    # Prompt tokens likely shared by later jobs (a system turn): the engine keeps an SWA
    # checkpoint there, so a later prompt that diverges after it still reuses it.
    shared: int | None = None
    # With a grammar: a leading `<|channel>…<channel|>` thought runs unconstrained, the
    # grammar applies from the answer on (as ChatSession does).
    free_thought: bool = False
    # The prompt opened the thought (a generation prompt ending in `<|channel>thought\n`): the
    # reply starts inside it, for the free-thought rule and the think budget.
    in_thought: bool = False
    # After this many tokens inside the thought, the engine closes it (`<channel|>`, as
    # llama.cpp's --reasoning-budget) and the model answers; the closing tokens count as generated.
    think_budget: int | None = None
    stop: Sequence[str] = ()  # strings that end the job where they appear (not included in its text)
    # Each generated token's log probability (Finished.logprobs), with this many likeliest
    # alternatives (0: the token's own only; None: none at all).
    logprobs: int | None = None
    # With keep_slots: where later prompts of the conversation restart (the end of each turn). The slot
    # evaluates the prompt in pieces split there and reuses what it holds only from such a point, so its
    # cells there are what a cold run computes and the answer does not depend on what the slot held before
    # (evicted, restored from the prompt cache on disk, or cold: the same output).
    save_at: Sequence[int] = ()
    key: object = None  # the caller's, handed back in Finished
    # Called (on the decoding thread) with each piece of text as it decodes; stop strings are
    # not cut from these pieces (Finished.text is cut).
    on_text: Callable[[str], None] | None = field(default=None, repr=False)
    # With `logprobs`: called (on the decoding thread) with each token's TokenLogprob, before on_text
    # gets its piece.
    on_logprob: Callable[[TokenLogprob], None] | None = field(default=None, repr=False)


@dataclass
class Finished:
    """A job's outcome: its text (control tokens included, for reply parsing) and counters."""

    job: Job
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0  # evaluated for this job
    reused_tokens: int = 0  # served by what the staging sequence already held
    generated_tokens: int = 0
    finish_reason: str | None = None  # "stop" (end of turn), "length", "cancelled"; None with an error
    ttft: float = 0.0  # seconds from the job's start to its first token
    seconds: float = 0.0  # from its start to its last token
    error: GemmaError | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with Job.logprobs: one per token of `tokens`


class _Slot:
    """A sequence of the context and the job it runs."""

    def __init__(self, seq: int):
        self.seq = seq
        self.job: Job | None = None
        self.samplers: list = []
        self.copied = False  # its KV stream may hold cells (removed when the slot is freed)
        self.cached: list[int] = []  # with keep_slots: the tokens its KV stream holds, position by position
        # ...and the positions of `cached` where its cells are what a cold run split at the save points
        # (Job.save_at) computes: the only states it is reused from for a job with save points, or kept on disk.
        self.canonical: set[int] = {0}
        self.used = 0.0  # when its last job ended (the least recently used slot is taken first)

    def begin(self, job: Job, samplers: list, greedy: bool, n_prompt: int, budget: int, counts: tuple[int, int],
              t0: float) -> None:
        self.job = job
        # samplers[0]: the one in use; with a free thought, [free, constrained] until the thought ends
        self.samplers = samplers
        self.phase = "free" if len(samplers) == 2 else "plain"
        self.greedy = greedy
        self.pos = n_prompt
        self.budget = budget
        self.counts = counts
        self.t0 = t0
        self.t_first = 0.0
        self.prompt: list = []  # the prompt's items (token ids; media keys), set once it is evaluated
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.pieces: list[str] = []
        self.head = ""  # with a free thought: the text so far (its tail, once the thought is open)
        # With a think budget: the reply's start as the free-thought rule sees it (its tail once
        # the thought is open), whether the thought is open, the tokens inside it so far.
        self.watch = job.think_budget is not None
        self.seen = ""
        self.opened = job.in_thought
        self.inside = 0
        self.force: list[int] = []  # tokens to take next instead of sampling (the thought's close)
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending: int | None = None  # sampled, to be evaluated in the next step
        self.queue: list[int] = []  # prompt tokens still to evaluate (its first token comes after them)
        self.queue_pos = 0  # the position of queue[0]
        self.splits: list[int] = []  # save points still ahead in the queue: a piece of it ends at each
        self.canonical_run = False  # the queue starts at a canonical position (its save points are canonical then)
        self.finish: str | None = None
        self.error: GemmaError | None = None
        self.copied = False

    def release(self, engine: "Engine") -> None:
        for sampler in self.samplers:
            engine.free_sampler(sampler)
        self.samplers = []
        self.job = None
        self.pending = None
        self.queue = []

    def result(self) -> Finished:
        text = "".join(self.pieces) + self.utf8.decode(b"", final=True)
        now = time.perf_counter()
        evaluated, reused = self.counts
        return Finished(self.job, cut_at_stop(text, self.job.stop), self.tokens, evaluated, reused, len(self.tokens),
                        self.finish, (self.t_first or now) - self.t0, now - self.t0, self.error, self.logprobs)

    def stopped(self) -> bool:
        return hit_stop(self.pieces, self.job.stop)


class Parallel:
    """Continuous batching over `n` sequences of one engine (opened with n_seq = n + 1)."""

    def __init__(self, engine: "Engine", n: int | None = None, *, keep_slots: bool = False):
        self.engine = engine
        self.keep_slots = keep_slots
        n_seq = engine.n_seq
        self.n = n_seq - 1 if n is None else n
        if not 1 <= self.n <= n_seq - 1:
            raise GemmaError(f"{self.n} parallel sequences need an engine opened with n_seq={self.n + 1}",
                             f"open it with Engine(..., n_seq={self.n + 1})")
        if engine.draft is not None:
            raise GemmaError("speculative decoding and parallel sequences do not mix", "detach the drafter first")
        if self.n > engine.n_batch:
            raise GemmaError(f"{self.n} parallel sequences need a batch of at least {self.n} tokens",
                             f"open the engine with n_batch >= {self.n}")
        self.n_ctx_seq = engine.n_ctx_seq  # each sequence's own KV stream
        # True: new prompts are evaluated in the same batches as the running sequences' next
        # tokens (llama-server's schedule); False: prompts first, decoding waits (bench only).
        self.mix = True
        self.stopping = False  # set it (a signal handler may) to take no new jobs; running ones finish
        self.tick = None  # called after each step that decoded tokens (progress displays)
        self.prompt_tokens = 0  # totals over the run, for progress displays
        self.reused_tokens = 0
        self.generated_tokens = 0
        self._cancelled: set[int] = set()  # id() of jobs to end at the next step
        self._slots: list[_Slot] | None = None  # with keep_slots: the slots, kept across runs

    def stop(self) -> None:
        self.stopping = True

    def cancel(self, job: Job) -> None:
        """End `job` at the next step (from any thread): it comes back with finish_reason "cancelled"."""
        self._cancelled.add(id(job))

    def run(self, jobs: Iterable[Job]) -> Iterator[Finished]:
        """Run `jobs` (read lazily, one as each slot frees) and yield each as it finishes.

        Jobs finish in any order. A job that cannot run (its prompt does not fit, a media
        file the projector cannot take, an invalid grammar) comes back with `error` set and
        the run goes on. Closing the generator drops the jobs still running. A live source
        yields `IDLE` when it has no job now; it is asked again after the next step, or at
        once when no job runs (it may block then, and should wake to check `stopping`).
        """
        if self.keep_slots:  # the slots and what their streams hold outlive a run
            slots = self._slots = self._slots or [_Slot(seq) for seq in range(1, self.n + 1)]
        else:
            slots = [_Slot(seq) for seq in range(1, self.n + 1)]
            for slot in slots:  # another runner on this engine may have left cells in the streams
                self.engine.kv.clear_sequence(slot.seq)
        source = iter(jobs)
        exhausted = False
        try:
            while True:
                # Fill every free slot before the step: a step with fewer rows than slots
                # wastes most of what batching gains (matmul kernels work in row tiles).
                while not exhausted and not self.stopping:
                    free = [s for s in slots if s.job is None]
                    todo = []
                    idle = False
                    while len(todo) < len(free):
                        job = next(source, None)
                        if job is None:
                            exhausted = True
                            break
                        if job is IDLE:
                            idle = True
                            break
                        todo.append(job)
                    if not todo:
                        break
                    yield from self._start_group(self._place(free, todo))  # failed (or, with media, done at once): free again
                    if idle:
                        break
                active = [s for s in slots if s.job is not None]
                if self._cancelled:
                    for slot in [s for s in active if id(s.job) in self._cancelled]:
                        self._cancelled.discard(id(slot.job))
                        slot.finish = "cancelled"
                        active.remove(slot)
                        yield slot.result()
                        self._free(slot)
                if not active:
                    if exhausted or self.stopping:
                        return
                    continue
                finished, decoded = self._step(active)
                if decoded and self.tick is not None:
                    self.tick()
                for slot in finished:
                    yield slot.result()
                    self._free(slot)
        except Exception:
            for slot in slots:  # a failed decode: what the streams hold is not known any more
                if slot.job is not None:
                    slot.release(self.engine)
                self._clear(slot)
            raise
        finally:
            for slot in slots:
                if slot.job is not None:
                    self._free(slot)

    # ---- jobs' starts: prompts evaluated together, each in its own slot

    def _place(self, free: list[_Slot], jobs: list[Job]) -> list[tuple[_Slot, Job]]:
        """Pair jobs with free slots: with keep_slots, each job takes the slot holding the longest
        start of its prompt (else the least recently used one)."""
        if not self.keep_slots:
            return list(zip(free, jobs))
        free = list(free)
        pairs = []
        for job in jobs:
            tokens = job.prompt if not isinstance(job.prompt, str) and not job.media else None
            best = max(free, key=lambda s: (common_prefix(s.cached, tokens) if tokens else 0, -s.used))
            if not tokens or common_prefix(best.cached, tokens) == 0:
                best = min(free, key=lambda s: s.used)  # nothing to reuse: the least recently used slot
            free.remove(best)
            pairs.append((best, job))
        return pairs

    # ---- with keep_slots, the prompt cache on disk (engine.disk): slots kept when evicted and at the end

    def keep_slots_on_disk(self) -> None:
        """Keep every slot's state in the prompt cache (a server that stops: the next one restores them)."""
        for slot in self._slots or []:
            self._keep(slot)
        if self.engine.prompt_cache is not None:
            self.engine.prompt_cache.flush()

    def _keep(self, slot: _Slot, below: int = 0) -> None:
        """Before the slot's stream is cut to `below` positions (another conversation takes it, or the server
        stops): keep its state at its last canonical point in the prompt cache, if the cut loses that point.

        Only a canonical point (a save point reached by a cold run's pieces, never a generated token decoded
        alone), so the conversation that comes back evaluates the rest as a cold run would: the same output."""
        point = max(slot.canonical)
        cache = self.engine.prompt_cache
        if not (self.keep_slots and cache is not None and slot.job is None and below < point <= len(slot.cached)):
            return
        self.engine.kv.clear_sequence(slot.seq, point)  # what it holds past the point goes anyway
        slot.cached = slot.cached[:point]
        slot.canonical = {c for c in slot.canonical if c <= point}
        self.engine.bind_prompt_cache()
        cache.keep_state(slot.cached, lambda: self.engine.kv.state(seq=slot.seq))

    def _restore(self, slot: _Slot, tokens: list[int], have: int) -> int:
        """A slot kept on disk (evicted, or by a server before a restart) whose items start `tokens` and are more
        than `have` of them, loaded into `slot`: how many tokens it holds now. Entries are canonical points only."""
        engine, cache = self.engine, self.engine.prompt_cache
        engine.bind_prompt_cache()
        cache.flush()  # an eviction's write still under way
        found = cache.find(tokens, have)
        if found is None:
            return have
        n, state = found[0], found[2]
        self._clear(slot)
        if not engine.kv.load_state(state, seq=slot.seq):
            self._clear(slot)
            return 0
        slot.cached = list(tokens[:n])
        slot.canonical = {0, n}
        return n

    def _clear(self, slot: _Slot) -> None:
        self.engine.kv.clear_sequence(slot.seq)
        slot.cached = []
        slot.canonical = {0}

    def _resume(self, slot: _Slot, tokens: list[int], save_at: Sequence[int] = ()) -> int:
        """With keep_slots: cut the slot's KV stream back to what it shares with `tokens` (with save points: to the
        last canonical point in that); how many tokens that is. What the cut loses is kept on disk first."""
        n = min(common_prefix(slot.cached, tokens), len(tokens) - 1)  # the last token is evaluated, for its logits
        if n > 0 and self.engine.info.n_swa > 0:
            # The next position attends to the n_swa before it in SWA layers: they must still be held.
            pos_min = self.engine.kv.pos_min(slot.seq)
            if not (pos_min <= 0 or pos_min < max(0, n - self.engine.info.n_swa)):
                n = 0
        if save_at:  # a conversation: from where a cold run's cells are the same, never inside a generated answer
            n = max(c for c in slot.canonical if c <= n)
        self._keep(slot, n)
        self.engine.kv.clear_sequence(slot.seq, n)
        slot.cached = slot.cached[:n]
        slot.canonical = {c for c in slot.canonical if c <= n}
        return n

    def _start_group(self, group: list[tuple[_Slot, Job]]) -> Iterator[Finished]:
        """Start the jobs of `group`; yield those that failed (or, with media, finished at their first token).

        A text prompt is queued in its slot: the decoding steps evaluate it, in chunks beside
        the other sequences' next tokens (see _step). A shared head (`Job.shared`, the system
        turn) is evaluated once in the staging sequence and copied to each slot first.
        Prompts with images or audio go through the engine's media path one at a time.
        """
        for slot, job in group:
            if job.media:
                self._keep(slot)  # its stream is about to be replaced
                done = self._start(slot, job)
                if done is not None:
                    yield done
                continue
            t0 = time.perf_counter()
            samplers: list = []
            try:
                samplers = _samplers(self.engine, job)
                tokens, _ = self._prompt(job)
                reused = hit = self._resume(slot, tokens, job.save_at) if slot.cached else 0
                if self.keep_slots and self.engine.prompt_cache is not None:
                    reused = hit = self._restore(slot, tokens, reused)
                if reused < (job.shared or 0):
                    reused, hit = self._seed(slot, tokens, job.shared)
            except GemmaError as e:
                for sampler in samplers:
                    self.engine.free_sampler(sampler)
                self._free(slot)
                self._cancelled.discard(id(job))
                yield Finished(job, error=e)
                continue
            self._begin(slot, job, samplers, tokens, (len(tokens) - hit, hit), t0)
            slot.copied = True  # its stream holds (or is about to hold) the prompt
            slot.queue, slot.queue_pos = tokens[reused:], reused
            slot.splits = sorted(p for p in set(job.save_at) if reused < p < len(tokens))
            slot.canonical_run = reused in slot.canonical

    def _seed(self, slot: _Slot, tokens: list[int], shared: int | None) -> tuple[int, int]:
        """Copy the shared head of `tokens` from the staging sequence into the slot: how many tokens that
        is, and how many of them the staging sequence already held (the rest it evaluated now)."""
        if not shared or shared >= len(tokens):  # at least the last token is evaluated in the slot, for its logits
            return 0, 0
        engine, head = self.engine, tokens[:shared]
        held = shared
        if engine.kv.contents() != head:  # staging keeps only heads: the next line's system turn is likely this one
            held = engine.stage(head, keep=not self.keep_slots)  # from the prompt cache on disk too (serve keeps slots)
        self._copy(slot)
        return shared, held

    def _begin(self, slot: _Slot, job: Job, samplers: list, tokens: list, counts: tuple[int, int], t0: float) -> None:
        self.prompt_tokens += counts[0]
        self.reused_tokens += counts[1]
        budget = self.n_ctx_seq - len(tokens)
        budget = budget if job.max_tokens is None else min(job.max_tokens, budget)
        greedy = job.sampling.argmax
        slot.begin(job, samplers, greedy, len(tokens), budget, counts, t0)
        slot.prompt = [] if job.media else list(tokens)

    # ---- a job's start with media: prompt in the staging sequence, first token, copy to the slot

    def _start(self, slot: _Slot, job: Job) -> Finished | None:
        """Evaluate the job's prompt and take its first token; a Finished if it is already done."""
        engine = self.engine
        t0 = time.perf_counter()
        samplers: list = []
        try:
            samplers = _samplers(engine, job)
            tokens, checkpoint = self._prompt(job)
            evaluated, reused = engine.prefill(tokens, checkpoint)
        except GemmaError as e:
            for sampler in samplers:
                engine.free_sampler(sampler)
            self._cancelled.discard(id(job))
            return Finished(job, error=e)
        finally:
            engine.forget_media()
        self._begin(slot, job, samplers, tokens, (evaluated, reused), t0)
        self._take(slot, self._sample(slot, -1), -1)  # the prompt's last logits
        if slot.finish is None:
            try:
                self._copy(slot)
                return None
            except GemmaError as e:
                slot.finish, slot.error = None, e
        result = slot.result()
        self._free(slot)
        return result

    def _copy(self, slot: _Slot) -> None:
        """Put the staging sequence's KV cells into the slot's stream, now."""
        if slot.cached:
            self._clear(slot)
        slot.copied = True  # from here on its stream may hold cells to remove
        slot.canonical = {0}  # evaluated apart: not in the slot's pieces
        if not self.engine.kv.copy(STAGING, slot.seq):
            raise GemmaError(f"llama.cpp could not copy a prompt's KV cache into sequence {slot.seq}",
                             "lower --parallel or --ctx; run with --verbose for llama.cpp's log")

    def _prompt(self, job: Job) -> tuple[list, int | None]:
        """The job's prompt items (media expanded) and its checkpoint spot; checks it fits a sequence."""
        tokens, checkpoint, _ = self.engine.prompt_items(job.prompt, job.media, job.shared)
        if not tokens:
            raise GemmaError("the prompt is empty", "give each line a prompt or messages")
        if len(tokens) >= self.n_ctx_seq:
            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens but each of the {self.n} parallel sequences holds {self.n_ctx_seq}",
                "raise --ctx (the context of each line), or shorten the input",
            )
        return tokens, checkpoint

    # ---- decoding

    def _step(self, active: list[_Slot]) -> list[_Slot]:
        """One batch: every decoding slot's pending token and the next chunks of queued prompts.

        As llama-server does: a sequence keeps decoding while others' prompts are evaluated,
        and the batch is filled up to n_batch. Rows go in slot order, so llama.cpp (one KV
        stream per sequence: it splits a batch into ubatches of consecutive sequence ids, an
        equal number of tokens each) puts every sequence's next row in the first ubatch and
        the rest of the prompts in full ones after it. Returns the slots now finished, and
        whether the step decoded tokens (one that only evaluated prompts did not).
        """
        prompting = [s for s in active if s.queue]
        decoding = [] if prompting and not self.mix else [s for s in active if not s.queue]
        room = self.engine.n_batch - len(decoding) - (self.n if self.engine.batch_invariant else 0)  # _padding's
        cap = INVARIANT_ROWS if self.engine.batch_invariant else self.engine.n_batch
        share = _shares([min(len(s.queue), cap, (s.splits or [s.queue_pos + len(s.queue)])[0] - s.queue_pos)
                         for s in prompting], room)
        rows, sample_at = [], []  # (slot, row whose logits give its next token, whether it decoded one)
        take = dict(zip(map(id, prompting), share))
        for slot in active:
            if slot.queue:
                n = take.get(id(slot), 0)
                if not n:
                    continue
                chunk, last = slot.queue[:n], n == len(slot.queue)
                rows.extend((tok, slot.queue_pos + k, slot.seq, last and k == n - 1) for k, tok in enumerate(chunk))
                if last:
                    sample_at.append((slot, len(rows) - 1, False))
            elif decoding:
                rows.append((slot.pending, slot.pos, slot.seq, True))
                sample_at.append((slot, len(rows) - 1, True))
        pads = _padding(rows, self.engine.n_ubatch, self.n_ctx_seq) if self.engine.batch_invariant else []
        rc = self.engine.decode_rows(rows + pads)  # padding rows last: the rows' logits keep their indices
        for _, pos, seq, _ in pads:  # their cells go again: each sequence's next token takes its place
            self.engine.kv.clear_sequence(seq, pos)
        if rc != 0:
            raise GemmaError(f"llama.cpp could not decode the batch of {len(active)} sequences (llama_decode returned {rc})",
                             "lower --parallel or --ctx; run with --verbose for llama.cpp's log")
        for slot in prompting:
            n = take.get(id(slot), 0)
            slot.queue, slot.queue_pos = slot.queue[n:], slot.queue_pos + n
            if slot.splits and slot.queue_pos == slot.splits[0]:
                slot.splits.pop(0)
                if slot.canonical_run:
                    slot.canonical.add(slot.queue_pos)
        done = []
        for slot, row, decoded in sample_at:
            if decoded:
                slot.pos += 1  # its pending token is now in the cache
            self._take(slot, self._sample(slot, row), row)
            if slot.finish is not None:
                done.append(slot)
        return done, bool(decoding)

    def _sample(self, slot: _Slot, row: int) -> int:
        engine = self.engine
        if slot.force:  # the think budget's close: taken as if sampled, the free-thought rule told
            token = slot.force.pop(0)
            if slot.phase == "free":
                self._thought_goes_on(slot, token)
            return token
        if slot.greedy:
            # The greedy sampler's argmax (first maximum), without building 262K candidates.
            return int(engine.logits(row).argmax())
        token = engine.sample(slot.samplers[0], row)
        if slot.phase == "free" and not self._thought_goes_on(slot, token):
            token = engine.sample(slot.samplers[0], row)  # now the constrained one
        return token

    def _thought_goes_on(self, slot: _Slot, token: int) -> bool:
        """With a free thought: False when `token` shows there is no thought (switch to the grammar now)."""
        slot.head += self.engine.token_bytes(token).decode("utf-8", errors="replace")
        phase = thought_phase(slot.head, slot.job.in_thought)
        if phase == "closed":  # the answer starts after this token: constrained from the next
            self._constrain(slot)
            return True
        if phase == "open":
            slot.head = THOUGHT_OPEN + slot.head[-len(THOUGHT_CLOSE):]  # enough to find the close
            return True
        if phase == "maybe":
            return True
        self._constrain(slot)  # no thought: this very token is the answer's first
        return False

    def _constrain(self, slot: _Slot) -> None:
        self.engine.free_sampler(slot.samplers.pop(0))
        slot.phase = "plain"

    def _take(self, slot: _Slot, token: int, row: int) -> None:
        """Record a token sampled from `row`'s logits; set `finish` or make it the next one to evaluate."""
        if not slot.tokens:
            slot.t_first = time.perf_counter()
        if self.engine.is_end(token):
            slot.finish = "stop"
            return
        slot.tokens.append(token)
        if slot.job.logprobs is not None:
            entry = self.engine.logprob(token, row, slot.job.logprobs)
            slot.logprobs.append(entry)
            if slot.job.on_logprob is not None:
                slot.job.on_logprob(entry)
        piece = slot.utf8.decode(self.engine.token_bytes(token))
        slot.pieces.append(piece)
        self.generated_tokens += 1
        if slot.job.on_text is not None and piece:
            slot.job.on_text(piece)
        if slot.watch:
            self._watch_thought(slot, piece)
        if slot.stopped():
            slot.finish = "stop"
            return
        if len(slot.tokens) >= slot.budget:
            slot.finish = "length"  # the last token is never needed in the cache
            return
        slot.pending = token

    def _watch_thought(self, slot: _Slot, piece: str) -> None:
        """With a think budget: count the thought's tokens; past the budget, queue its close.

        The same rule as ChatSession's (session.turn_steps): tokens after the one that opened the
        thought count; the close is `<channel|>`, on a line of its own."""
        slot.inside += slot.opened
        slot.seen += piece
        phase = thought_phase(slot.seen, slot.job.in_thought)
        if phase in ("none", "closed"):  # no thought, or it ended in time
            slot.watch = False
            return
        slot.opened = phase == "open"
        if not slot.opened:
            return
        slot.seen = THOUGHT_OPEN + slot.seen[-len(THOUGHT_CLOSE):]  # enough to find a close
        if slot.inside >= slot.job.think_budget:
            text = "".join(slot.pieces)
            slot.force = self.engine.tokenize(THOUGHT_CLOSE if text.endswith("\n") else "\n" + THOUGHT_CLOSE)
            slot.watch = False

    def _free(self, slot: _Slot) -> None:
        if slot.job is not None:
            self._cancelled.discard(id(slot.job))
        kept = slot.job is not None and slot.prompt and slot.error is None
        if self.keep_slots and kept:
            # Its stream holds the prompt and the generated tokens evaluated so far (positions < pos),
            # or, ended before its prompt was, the part of the prompt evaluated.
            held = slot.queue_pos if slot.queue else slot.pos
            slot.cached = (slot.prompt + slot.tokens)[:held]
            slot.canonical = {c for c in slot.canonical if c <= held}
            self.engine.kv.clear_sequence(slot.seq, held)
        elif slot.copied or (slot.cached and slot.job is not None):  # a job that failed, or had media
            self._clear(slot)
        slot.copied = False
        slot.used = time.perf_counter()
        slot.release(self.engine)


def _shares(wants: list[int], room: int) -> list[int]:
    """Split `room` batch rows among prompts wanting `wants` rows: equal shares, what one
    leaves over going to the others (llama.cpp's ubatches take as many tokens of each)."""
    out = [0] * len(wants)
    left = list(range(len(wants)))
    while left and room > 0:
        each = max(1, room // len(left))
        for i in list(left):
            n = min(each, wants[i] - out[i], room)
            out[i] += n
            room -= n
            if out[i] == wants[i]:
                left.remove(i)
            if room == 0:
                break
    return out


def _padding(rows: list[tuple[int, int, int, bool]], n_ubatch: int, n_ctx_seq: int) -> list[tuple[int, int, int, bool]]:
    """Throwaway rows that keep llama.cpp from evaluating any of `rows` alone in a ubatch.

    A ubatch of one row goes through other matmul kernels than one of several (F32/F16 weights:
    ggml's vec_dot for one row, llamafile's sgemm for more) and rounds differently, so a sequence
    decoding alone (every step at --parallel 1) would not repeat what it computes beside others.
    llama.cpp (one KV stream per sequence) splits a batch into ubatches of consecutive sequence
    ids, taking as many tokens of each (_ubatches), so a lone row is a sequence left over with one
    token. A padding row is a token after that sequence's last one, without logits, whose cell the
    caller removes after the decode (the sequence's next token takes it); it makes that ubatch
    two rows. At most one per sequence; none where the sequence's context has no cell left.
    """
    last = {seq: (tok, pos) for tok, pos, seq, _ in rows}
    pads: list[tuple[int, int, int, bool]] = []
    seqs = [seq for _, _, seq, _ in rows]
    while True:
        lone = next((group[0] for group, each in _ubatches(seqs, n_ubatch) if each * len(group) == 1), None)
        tok, pos = last.get(lone, (0, n_ctx_seq))
        if lone is None or pos + 1 >= n_ctx_seq or any(p[2] == lone for p in pads):
            return pads
        pads.append((tok, pos + 1, lone, False))
        seqs.append(lone)


def _ubatches(seqs: list[int], n_ubatch: int) -> Iterator[tuple[list[int], int]]:
    """How llama.cpp splits a batch whose rows belong to `seqs` (llama_batch_allocr::split_equal,
    sequential, as for a non-unified KV cache): each ubatch's sequences (from the first row not
    yet taken, then the next sequence ids in turn) and how many rows of each it takes."""
    rows_of: dict[int, list[int]] = {}
    for i, seq in enumerate(seqs):
        rows_of.setdefault(seq, []).append(i)
    taken = [False] * len(seqs)
    done = dict.fromkeys(rows_of, 0)
    while not all(taken):
        group: list[int] = []
        for i, seq in enumerate(seqs):
            if not taken[i] and seq not in group and (not group or seq == group[-1] + 1):
                group.append(seq)
        each = 0
        while all(done[seq] < len(rows_of[seq]) for seq in group):
            for seq in group:
                taken[rows_of[seq][done[seq]]] = True
                done[seq] += 1
            each += 1
            if (each + 1) * len(group) > n_ubatch:
                break
        yield group, each


def _samplers(engine: "Engine", job: Job) -> list:
    """The job's sampler chain; with a grammar and a free thought, [free, constrained]."""
    s = job.sampling
    if not (s.grammar and job.free_thought):
        return [engine.new_sampler(s)]
    constrained = engine.new_sampler(s)
    free = engine.new_sampler(replace(s, grammar=None))
    return [free, constrained]
