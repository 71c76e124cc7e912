"""Requests as parallel sequences of one engine, on a decoding thread of its own.

The HTTP side (asyncio) submits `Ticket`s; the decoding thread runs them through
`engine.parallel.Parallel` with a live job source: a waiting ticket takes the first slot that
frees (continuous batching), a client continuing its conversation gets the slot that holds
its earlier turns (`keep_slots`), and a cancelled ticket (its client went away) ends at the
next step and frees its slot. At most `max_waiting` tickets wait for a slot; more is `Busy`
(the server answers 503 with Retry-After). On shutdown, `end_all` fails what still runs or waits
with `ShuttingDown`, so that every client gets an answer of its own before the process exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import deque
from typing import TYPE_CHECKING

from gemma_cli.engine.parallel import IDLE, Finished, Job, Parallel
from gemma_cli.errors import GemmaError

if TYPE_CHECKING:
    from gemma_cli.engine import Engine


class Busy(Exception):
    """Every slot is taken and the waiting line is full."""

    def __init__(self, waiting: int):
        super().__init__(f"the server is busy: {waiting} requests are waiting for a slot")
        self.waiting = waiting


class ShuttingDown(GemmaError):
    """The server stopped before the job ended (its grace period was over)."""

    def __init__(self, generated: int = 0):
        cut = f" after {generated} tokens" if generated else " before its answer started"
        super().__init__(f"the server is shutting down: this answer was cut{cut}", "send the request again "
                         "once the server is back")


class Ticket:
    """One job on its way through the scheduler; its text and outcome arrive on an asyncio queue."""

    def __init__(self, job: "Job", loop: asyncio.AbstractEventLoop):
        self.job = job
        self.loop = loop
        # str pieces (with Job.logprobs, each after its token's engine.TokenLogprob), then one Finished
        self.events: asyncio.Queue = asyncio.Queue()
        job.key = self
        job.on_text = self._text
        if job.logprobs is not None:
            job.on_logprob = self._text

    def _text(self, piece) -> None:  # on the decoding thread
        self._put(piece)

    def finish(self, done: "Finished") -> None:  # on the decoding thread
        self._put(done)

    def _put(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server has stopped and nobody reads this
            pass

    async def result(self) -> "Finished":
        """Wait for the outcome (the pieces are skipped)."""

        while True:
            event = await self.events.get()
            if isinstance(event, Finished):
                return event


class Scheduler:
    def __init__(self, engine: "Engine", n: int, *, max_waiting: int = 64):

        self.engine = engine
        self.n = n
        self.max_waiting = max_waiting
        self.runner = Parallel(engine, n, keep_slots=True)
        self._waiting: deque[Ticket] = deque()
        self._active: set[Ticket] = set()  # handed to the runner, not finished
        self._cond = threading.Condition()
        self._closing = False
        self._ending = False  # end_all was called: new tickets are refused, cancelled ones failed with ShuttingDown
        self._thread = threading.Thread(target=self._work, name="gemma-serve-decode", daemon=True)
        self.completed = 0  # jobs finished (any way)
        self.cancelled = 0  # ... of which cancelled: their clients went away

    def start(self) -> None:
        self._thread.start()

    # ---- the HTTP side

    def submit(self, ticket: Ticket) -> None:
        with self._cond:
            if self._closing or self._ending:
                raise ShuttingDown()
            if len(self._waiting) >= self.max_waiting:
                raise Busy(len(self._waiting))
            self._waiting.append(ticket)
            self._cond.notify()

    def cancel(self, ticket: Ticket) -> None:
        """Drop a ticket whose client went away: out of the line, or its slot freed at the next step."""
        with self._cond:
            try:
                self._waiting.remove(ticket)
                return
            except ValueError:
                pass
            if ticket in self._active:
                self.runner.cancel(ticket.job)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._active)

    def end_all(self) -> None:
        """Shutdown: refuse new tickets, fail the waiting ones now and the running ones at the next step, each
        with `ShuttingDown` (their clients get an error, not a dropped connection). From any thread."""

        with self._cond:
            self._ending = True
            dropped = list(self._waiting)
            self._waiting.clear()
            for ticket in self._active:
                self.runner.cancel(ticket.job)
            self._cond.notify_all()
        for ticket in dropped:
            ticket.finish(Finished(ticket.job, error=ShuttingDown()))

    def close(self, timeout: float = 10.0) -> None:
        """End every ticket (`end_all`) and stop the decoding thread."""

        self.end_all()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.runner.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the decoding thread

    def _source(self):

        while True:
            with self._cond:
                if self._closing:
                    return
                if not self._waiting and not self._active:
                    self._cond.wait(0.25)  # nothing runs: sleep until a request comes
                ticket = self._waiting.popleft() if self._waiting else None
                if ticket is not None:
                    self._active.add(ticket)
            yield IDLE if ticket is None else ticket.job

    def _work(self) -> None:

        while not self._closing:
            try:
                for done in self.runner.run(self._source()):
                    ticket = done.job.key
                    if done.finish_reason == "cancelled" and self._ending:  # cut by the shutdown, not by its client
                        done = dataclasses.replace(done, finish_reason=None, error=ShuttingDown(done.generated_tokens))
                    with self._cond:  # counted before it stops running: /health never shows a job as neither
                        self.completed += 1
                        self.cancelled += done.finish_reason == "cancelled"
                        self._active.discard(ticket)
                    ticket.finish(done)
            except Exception as e:  # noqa: BLE001 - a failed decode fails the requests in it, not the server
                error = e if isinstance(e, GemmaError) else GemmaError(f"decoding failed ({type(e).__name__}: {e})")
                with self._cond:
                    failed = list(self._active)
                    self._active.clear()
                for ticket in failed:
                    ticket.finish(Finished(ticket.job, error=error))
        with self._cond:
            failed = list(self._active) + list(self._waiting)
            self._active.clear()
            self._waiting.clear()
        for ticket in failed:
            ticket.finish(Finished(ticket.job, error=ShuttingDown()))
        self.runner.keep_slots_on_disk()  # with the prompt cache: a restarted server resumes its conversations
