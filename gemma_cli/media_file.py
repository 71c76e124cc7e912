"""A media file named on the command line or in a message: checked before any model loads.

Its own module so that `media` (images, audio, the parts of a message) and `video` (PyAV
decoding, which `media` calls) share the check without importing each other.
"""

from __future__ import annotations

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
