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
