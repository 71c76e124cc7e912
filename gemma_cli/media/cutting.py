"""Cutting long audio into clips.

Audio longer than the encoder's 30 s is cut at its quietest points (energy minima), so a
cut falls in a pause rather than inside a word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gemma_cli.media.audio import Audio

if TYPE_CHECKING:
    import numpy as np

    from gemma_cli.engine.projector import Media



MAX_CLIP_SECONDS = 30.0


@dataclass(frozen=True)
class Segment:
    """A stretch of audio: seconds for people, sample indices [first, last) for slicing."""

    start: float
    end: float
    first: int
    last: int


def cut(samples: "np.ndarray", rate: int, max_seconds: float = MAX_CLIP_SECONDS) -> list[Segment]:
    """Segments of at most `max_seconds`, cut at quiet points, covering the whole recording.

    Each cut lands in a pause (300 ms smoothed energy near its minimum) between a third of
    the limit and the limit after the previous cut: the latest such pause, so segments stay
    long and few; without a pause, at the quietest moment.
    """
    # lazy: numpy, only when audio or frames are decoded; keeps gemma --help fast
    import numpy as np

    n = len(samples)
    limit = int(max_seconds * rate)
    if n <= limit:
        return [Segment(0.0, n / rate, 0, n)]
    hop = max(1, rate // 100)  # 10 ms frames
    frames = n // hop
    energy = np.square(samples[: frames * hop].astype(np.float64)).reshape(frames, hop).mean(axis=1)
    width = 30
    smooth = np.convolve(energy, np.ones(width) / width, mode="same")
    cuts, start = [], 0
    while n - start > limit:
        lo = -(-(start + limit // 3) // hop)  # first frame starting at or after start + limit/3
        hi = min((start + limit) // hop, frames)
        cuts.append(_pause(smooth, lo, hi) * hop if hi > lo else start + limit)
        start = cuts[-1]
    bounds = [0, *cuts, n]
    return [Segment(a / rate, b / rate, a, b) for a, b in zip(bounds, bounds[1:])]


def _pause(smooth: "np.ndarray", lo: int, hi: int, min_frames: int = 10) -> int:
    """The frame in [lo, hi) to cut at: the middle of the last pause at least 100 ms long
    whose energy is within 5 % (of the way to the median) of the quietest; else of the quietest stretch."""
    # lazy: numpy, only when audio or frames are decoded; keeps gemma --help fast
    import numpy as np

    window = smooth[lo:hi]
    floor = float(window.min())
    quiet = window <= floor + 0.05 * (float(np.median(window)) - floor) + 1e-12
    edges = np.flatnonzero(np.diff(np.concatenate(([0], quiet.astype(np.int8), [0]))))
    runs = list(zip(edges[::2], edges[1::2] - 1))  # inclusive [first, last] frames of each quiet run
    long = [r for r in runs if r[1] - r[0] + 1 >= min_frames]
    if long:
        a, b = long[-1]
    else:
        i = int(np.argmin(window))
        a, b = next(r for r in runs if r[0] <= i <= r[1])
    return lo + (int(a) + int(b)) // 2


def clips(audio: Audio, segments: list[Segment]) -> list["Media"]:
    # lazy: the engine (llama_cpp, numpy), only when a model runs; keeps gemma --help fast
    from gemma_cli.engine.projector import Media

    return [Media.audio(audio.samples[s.first : s.last], audio.rate, name=f"{audio.name} [{s.start:.1f}-{s.end:.1f} s]")
            for s in segments]
