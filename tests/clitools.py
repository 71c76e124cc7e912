"""Running the real `gemma` command in a subprocess, with its files kept in a temp home."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BOUND = 120.0  # seconds: only a safety net for a wait on an event, long enough for a loaded CI machine


def gemma_env(home: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update({"GEMMA_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "120", "GEMMA_CONFIG": str(home / "config.yaml")})
    env.pop("GEMMA_DEBUG", None)
    env.update(extra)
    return env


def run_gemma(*args, home: Path, input: str | None = None, timeout: float = 120, **extra) -> subprocess.CompletedProcess:
    """`gemma ARGS…` with stdin from `input` (or /dev/null), capturing stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "gemma_cli", *map(str, args)],
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env=gemma_env(home, **extra),
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A failed command: non-zero exit, no traceback, an `error:` line naming what went wrong."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def wait_for(predicate, what: str, bound: float = BOUND) -> None:
    """Wait for an event (a file, a line, a process gone, a server's state), polling `predicate`; the bound
    is only a safety net on a loaded machine, never what a test relies on."""
    end = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what} after {bound:g} s")
        time.sleep(0.02)
