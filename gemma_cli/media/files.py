"""A media file named on the command line or in a message: checked before any model loads.

Its own module so that `media` (images, audio, the parts of a message) and `video` (PyAV
decoding, which `media` calls) share the check without importing each other.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gemma_cli.errors import MediaError


def check_file(source: str | Path, what: str) -> None:
    """Fail now, before a model loads, for a file that is missing, a folder or empty."""
    if str(source) == "-":
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise MediaError(f"{what} file not found: {source}", "check the path")
    if path.is_dir():
        article = "an" if what[:1] in "aeiou" else "a"  # an image, an audio file, a video
        raise MediaError(f"{source} is a folder, not {article} {what} file", f"pass {article} {what} file")
    if path.stat().st_size == 0:
        raise MediaError(f"{source} is empty (0 bytes)", f"pass a non-empty {what} file")


def display_name(source: str | Path) -> str:
    return "stdin" if str(source) == "-" else str(source)


def read_bytes(source: str | Path, what: str) -> bytes:
    """The whole file (or stdin for `-`); a one-line error when missing, unreadable or empty."""
    name = display_name(source)
    if str(source) == "-":
        data = sys.stdin.buffer.read() if sys.stdin is not None else b""
    else:
        check_file(source, what)
        try:
            data = Path(source).expanduser().read_bytes()
        except OSError as e:
            raise MediaError(f"cannot read {name}: {e.strerror or e}", "check the file's permissions") from None
    if not data:
        raise MediaError(f"{name} is empty (0 bytes)", f"pass a non-empty {what} file")
    return data
