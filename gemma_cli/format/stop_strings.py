"""OpenAI's `stop` strings: where an answer ends, and the answer cut there (pure text, no engine).

Used by the engine's parallel sequences and by batch's one-line-at-a-time runner alike.
"""

from __future__ import annotations

from typing import Sequence


def hit_stop(pieces: Sequence[str], stop: Sequence[str]) -> bool:
    """Whether the newest of the text `pieces` completes one of the `stop` strings (looks at the tail only)."""
    if not stop or not pieces:
        return False
    # A stop string first complete in the newest piece starts at most `longest` characters before its end.
    need = max(map(len, stop)) + len(pieces[-1])
    tail, i = "", len(pieces)
    while i > 0 and len(tail) < need:
        i -= 1
        tail = pieces[i] + tail
    return any(s and s in tail for s in stop)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first of the `stop` strings in it (OpenAI's `stop`)."""
    ends = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(ends)] if ends else text
