"""Running the real `gemma` command in a subprocess, with its files kept in a temp home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
