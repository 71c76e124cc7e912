"""What local and remote runs share: run-wide defaults, the summary, the input stream with its
duplicate and resume checks, the output, and stopping on SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from gemma_cli.batch.lines import Failure, Line, digest, parse_line, read_lines
from gemma_cli.batch.output import Output
from gemma_cli.batch.records import Answer, record

if TYPE_CHECKING:
    from gemma_cli.engine import Sampling

@dataclass
class Defaults:
    """Run-wide settings; a line's own fields override them."""

    sampling: "Sampling | None"  # None with an endpoint: the server samples (flags go in `overrides`)
    max_tokens: int | None = None
    think: bool = False
    think_budget: int | None = None  # close each thought after this many tokens (a line's own field wins)
    system: str | None = None
    model: str | None = None  # the name endpoints are asked for (openai lines may name their own)
    # Sampling fields given on the command line: sent to endpoints (which have their own defaults)
    overrides: dict = field(default_factory=dict)


@dataclass
class Summary:
    total: int | None = None  # lines in the input, when known up front
    read: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # answered in an earlier run
    tokens_in: int = 0
    tokens_out: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    stopped: str | None = None  # "interrupted", "terminated", "fail-fast"
    live_out: int = 0  # tokens generated so far, finished lines or not (progress)
    retried: int = 0  # requests an endpoint was asked again (429, 5xx, timeouts, a server away)
    draft: str | None = None  # speculative decoding ("mtp", "ngram"), when a drafter ran
    drafted: int = 0
    accepted: int = 0

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    @property
    def tps(self) -> float:
        return self.tokens_out / self.seconds if self.seconds > 0 else 0.0

    @property
    def done(self) -> int:
        return self.ok + self.failed + self.skipped


class Run:
    """Shared by local and remote runs: the input stream, the output file, counting, stopping."""

    def __init__(self, source: str | Path, output: Output, *, fail_fast: bool = False, total: int | None = None,
                 progress: Callable[[Summary], None] | None = None, notify: Callable[[str], None] | None = None):
        self.source = source
        self.base = None if str(source) == "-" else Path(source).resolve().parent
        self.output = output
        self.fail_fast = fail_fast
        self.summary = Summary(total=total)
        self.progress = progress or (lambda s: None)
        self.notify = notify or (lambda m: None)
        self.stop_reason: str | None = None
        self._seen: set[bytes] = set()
        self._on_stop: list[Callable[[], None]] = []

    # ---- input

    def lines(self) -> Iterator[Line]:
        """Lines to run, in input order; skipped and bad lines are handled here."""
        for number, raw in read_lines(self.source):
            if self.stop_reason:
                return
            line = parse_line(number, raw, self.base)
            self.summary.read += 1
            # Duplicates first: a later line with an answered id is a duplicate on every run, not "answered".
            seen = digest(line.key)
            duplicate = seen in self._seen
            self._seen.add(seen)
            if duplicate and line.error is None:
                line.error = Failure("duplicate_id", f"line {number}: the id {line.key} was used by an earlier line",
                                     "give every line its own id")
            elif line.error is None and self.output.answered(line):  # a bad line gets its error record every run
                self.summary.skipped += 1
                self.progress(self.summary)
                continue
            if line.error is not None:
                self.fail(line, line.error)
                continue
            yield line

    # ---- output

    def finish(self, line: Line, answer: Answer) -> None:
        self.output.write(record(line, answer))
        s = self.summary
        s.ok += 1
        s.tokens_in += answer.prompt_tokens
        s.tokens_out += answer.completion_tokens
        self.progress(s)

    def fail(self, line: Line, failure: Failure) -> None:
        self.output.write(record(line, failure=failure))
        self.summary.failed += 1
        self.progress(self.summary)
        if self.fail_fast and not self.stop_reason:
            self.stop("fail-fast")

    # ---- stopping

    def stop(self, reason: str) -> None:
        self.stop_reason = reason
        for hook in self._on_stop:
            hook()

    def on_stop(self, hook: Callable[[], None]) -> None:
        self._on_stop.append(hook)

    def close(self) -> Summary:
        self.summary.ended = time.perf_counter()
        self.summary.stopped = self.stop_reason
        return self.summary


@dataclass
class Signals:
    """SIGINT/SIGTERM: the first stops taking lines (running ones finish); the second drops them."""

    run: Run
    previous: dict = field(default_factory=dict)
    count: int = 0

    def __enter__(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        reason = "interrupted" if signum == signal.SIGINT else "terminated"
        if self.count == 1:
            self.run.notify("stopping: no new lines; finishing the ones running (again to drop them; "
                            "the same command resumes)")
            self.run.stop(reason)
            return
        self.run.stop_reason = reason
        raise KeyboardInterrupt
