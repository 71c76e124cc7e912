"""Shared fixtures.

`../shared/reference/` holds the official Gemma 4 chat template. CI always has it; in a
user's own clone it may be absent: then tests that need it skip, except under CI=true,
where they fail so that nothing is silently skipped in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "reference"


def need_reference(name: str) -> Path:
    """Path of a file under ../shared/reference, or skip (fail under CI=true) when absent."""
    path = REFERENCE / name
    if path.is_file():
        return path
    reason = f"{path} is absent (it ships beside the project as ../shared/reference)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def official_template() -> str:
    return need_reference("gemma4-chat-template.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def older_template() -> str:
    return need_reference("gemma4-chat-template.older.jinja").read_text(encoding="utf-8")
