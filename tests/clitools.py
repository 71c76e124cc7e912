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


def imported_by(argv, modules, *, then: str = "", home: Path | None = None,
                timeout: float = 120) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `gemma ARGV…` through the real entry point in a fresh interpreter, then the Python code `then`;
    return the run (its exit code, stdout, and stderr without this report) and which of `modules` it imported."""
    marker = "\n@imported:"
    code = ("import sys\nfrom gemma_cli.cli import main\nsys.argv = ['gemma', *%r]\ncode = 0\n"
            "try:\n    main()\nexcept SystemExit as e:\n"
            "    code = e.code if isinstance(e.code, int) else int(e.code is not None)\n%s\n"
            "sys.stderr.write(%r + str(code) + ':' + ','.join(m for m in %r if m in sys.modules))"
            % ([str(a) for a in argv], then, marker, list(modules)))
    env = gemma_env(home) if home is not None else None
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    stderr, found, report = proc.stderr.rpartition(marker)
    assert found, proc.stderr  # the run (or `then`) ended in a traceback
    exit_code, _, loaded = report.partition(":")
    proc.stderr, proc.returncode = stderr, int(exit_code)
    return proc, [m for m in loaded.split(",") if m]


def run_batch(tmp_path: Path, lines, *args, name: str = "in", input: str | None = None,
              timeout: float = 120) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`gemma batch NAME.jsonl -o NAME.out.jsonl ARGS…` (the file `-` with `input`): the run and its records.

    `lines` are written one a line, dicts as JSON and strings as they are (a malformed line)."""
    import json

    src, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.out.jsonl"
    src.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    proc = run_gemma("batch", src if input is None else "-", "-o", out, *args, home=tmp_path / "home", input=input,
                     timeout=timeout)
    return proc, [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
