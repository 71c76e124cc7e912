"""What a test needs from its surroundings: skipped in a user's own clone, a failure under CI=true,
so that nothing is silently skipped in CI."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


def cached_folder(request, tmp_path_factory, prefix: str, *what: str) -> Path:
    """A folder under pytest's cache keyed by `what` (package names and versions), reused by later runs;
    a temp folder when the cache is off (-p no:cacheprovider)."""
    key = hashlib.sha256(" ".join(what).encode()).hexdigest()[:12]
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir(f"{prefix}-{key}")) if cache is not None else tmp_path_factory.mktemp(prefix)


def virtualenv(request, tmp_path_factory, label: str, requirements: list[str], timeout: float = 1200):
    """The bin/ folder of a virtualenv holding `requirements` (pip names), made once and reused.

    For test-only packages that must stay out of the interpreter running the tests (they would pin
    or downgrade its numpy, huggingface_hub, ...). It lives under pytest's cache, keyed by the
    requirement list, and counts as made once pip has finished (a `ready` file), so an install that
    was cut short is redone. Skips with pip's last line where it cannot be made (fails under CI=true).
    """
    import subprocess
    import venv

    root = cached_folder(request, tmp_path_factory, label, *requirements)
    bin_dir, ready = root / "venv" / "bin", root / "ready"
    if ready.is_file():
        return bin_dir
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(root / "venv")
        proc = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", *requirements],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        proc = subprocess.CompletedProcess([], 1, "", str(e))
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["pip failed"]
        skip_or_fail(f"cannot install {', '.join(requirements)} into a virtualenv: {last[0]}")
    ready.write_text("\n".join(requirements) + "\n", encoding="utf-8")
    return bin_dir
