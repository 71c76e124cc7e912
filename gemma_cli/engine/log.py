"""llama.cpp's log: kept for the lines that explain a failure, shown on stderr with --verbose.

Its own module so the engine's core and its projector (mtmd logs through the same hook) both use
it without importing each other.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
import threading
from collections import deque

import llama_cpp as ll

_log_lines: deque[str] = deque(maxlen=200)
_verbose = False


@ll.llama_log_callback
def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's log hook: lines kept for error messages, shown with --verbose (mtmd logs here too)."""
    # Decode leniently: llama.cpp may cut a multi-byte character in a metadata preview.
    line = text.decode("utf-8", errors="replace")
    _log_lines.append(line)
    if _verbose:
        sys.stderr.write(line)


def set_verbose(on: bool) -> None:
    global _verbose
    _verbose = on


def replay(text: str) -> None:
    """Show captured C output on stderr with --verbose (it stays out of sight otherwise)."""
    if _verbose and text:
        sys.stderr.write(text)


def clear_log() -> None:
    """Forget llama.cpp's log so far (before a call whose failure recent_log() explains)."""
    _log_lines.clear()


def recent_log(pattern: str) -> str | None:
    """The newest llama.cpp log line containing `pattern`, if any."""
    for entry in reversed(_log_lines):
        for line in reversed(entry.splitlines()):  # one log call can hold several lines
            if pattern in line:
                return line.strip()
    return None


_capture_lock = threading.Lock()


@contextlib.contextmanager
def captured_stderr():
    """Catch what C code writes straight to file descriptor 2 (llama.cpp's grammar parser uses
    fprintf(stderr), not the log hook) while the block runs; yields a list that then holds the text.

    The caller decides what to show: it is kept for error messages and written back with --verbose.
    """
    out: list[str] = []
    with _capture_lock, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            try:
                yield out
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
        finally:
            os.close(saved)
        sink.seek(0)
        out.append(sink.read().decode("utf-8", errors="replace"))
