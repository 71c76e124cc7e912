"""Reading audio for the model.

Audio goes through soundfile (WAV, FLAC, OGG, MP3; librosa for what libsndfile lacks): downmixed to
mono, resampled to the projector's rate. `-` reads from stdin. Whatever is wrong with a file becomes one
MediaError naming it.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gemma_cli.errors import MediaError
from gemma_cli.media.files import check_file, display_name, read_bytes

if TYPE_CHECKING:
    import numpy as np




AUDIO_FORMATS = "WAV, FLAC, OGG or MP3"


SAMPLE_RATE = 16_000  # Gemma 4's audio encoder (mtmd_get_audio_sample_rate)


@dataclass
class Audio:
    samples: "np.ndarray"  # mono float32
    rate: int
    name: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate if self.rate else 0.0


def load_audio(source: str | Path, rate: int = SAMPLE_RATE, data: bytes | None = None) -> Audio:
    """An audio file (or `-`, or `data` already read) as mono float32 at `rate` Hz."""
    # lazy: numpy, only when audio or frames are decoded; keeps gemma --help fast
    import numpy as np

    name = display_name(source)
    if data is None and str(source) == "-":
        data = read_bytes(source, "audio")
    elif data is None:
        check_file(source, "audio")
    if data is not None and not data:
        raise MediaError(f"{name} is empty (0 bytes)", "pass a non-empty audio file")
    try:
        samples = _stream(io.BytesIO(data) if data is not None else str(Path(source).expanduser()), rate)
    except _Unreadable as first:
        # librosa's other backends only help with formats libsndfile lacks (m4a, aac, wma, ...)
        native = Path(str(source)).suffix.lower() in (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff")
        fallback = _librosa_decode(source) if data is None and not native else None
        if fallback is None:
            # libsndfile's own reason is misleading here ("File does not exist" for a text file named .mp3)
            raise MediaError(f"{name} is not audio gemma can read",
                             f"use {AUDIO_FORMATS} (a damaged file of one of them reads the same)") from None
        samples, sr = fallback
        if samples.ndim == 2:
            samples = samples.mean(axis=1)
        samples = resample(samples.astype(np.float32), sr, rate) if sr != rate else samples
    if samples.size == 0:
        raise MediaError(f"{name} has no audio samples", "pass a recording that is not empty")
    samples = np.nan_to_num(samples.astype(np.float32, copy=False), copy=False)
    return Audio(np.ascontiguousarray(samples, dtype=np.float32), rate, name)


class _Unreadable(Exception):
    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


_BLOCK = 1 << 18  # frames per read: a few seconds, so no full-length stereo copy is ever made


def _stream(source, rate: int) -> "np.ndarray":
    """Decode, downmix and resample block by block: a 5-minute file never exists as a float stereo array,
    which saves most of the time (fresh large arrays cost page faults, not arithmetic)."""
    # lazy: numpy and soundfile, only when audio is decoded; keeps gemma --help fast
    import numpy as np
    import soundfile as sf

    with _quiet_stderr():  # mpg123 prints "Note: Illegal Audio-MPEG-Header ..." to fd 2 for what is not MP3
        return _decode(sf, np, source, rate)


def _decode(sf, np, source, rate: int) -> "np.ndarray":
    try:
        f = sf.SoundFile(source)
    except Exception as e:  # noqa: BLE001 - libsndfile says "format not recognised" many ways
        raise _Unreadable(e) from None
    with f:
        channels, sr = f.channels, int(f.samplerate)
        mix = np.full(channels, 1.0 / channels, dtype=np.float32)
        stream = _resampler(sr, rate)
        buf = np.empty((_BLOCK, channels), dtype=np.float32)
        out = []
        try:
            while True:
                block = f.read(_BLOCK, dtype="float32", always_2d=True, out=buf)
                if not len(block):
                    break
                mono = block @ mix if channels > 1 else block[:, 0].copy()
                out.append(stream(mono, False) if stream else mono)
                if len(block) < _BLOCK:
                    break
        except Exception as e:  # noqa: BLE001 - a file that breaks off in the middle
            if not out:
                raise _Unreadable(e) from None
        if stream:
            out.append(stream(np.zeros(0, np.float32), True))
    if not out:
        return np.zeros(0, np.float32)
    samples = np.concatenate(out)
    return samples if stream or sr == rate else resample(samples, sr, rate)


class _quiet_stderr:
    """File descriptor 2 sent to /dev/null while C decoders run (their notes are not for users)."""

    def __enter__(self):
        self._saved = None
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no fd 2 (embedded, some test runners): nothing to hide
            self._saved = None
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)


def _resampler(rate_in: int, rate_out: int):
    """soxr's streaming resampler (librosa's own backend), or None to resample at the end."""
    if rate_in == rate_out:
        return None
    try:
        # lazy: soxr, only when audio is resampled; keeps gemma --help fast
        import soxr
    except ImportError:
        return None
    rs = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32")
    return lambda x, last: rs.resample_chunk(x, last=last)


def _librosa_decode(source):
    """Formats libsndfile lacks (m4a, aac, ...) through librosa/audioread, when its backend can."""
    try:
        # lazy: librosa, only for audio soundfile cannot read; keeps gemma --help fast
        import librosa

        with warnings.catch_warnings():  # its "PySoundFile failed, trying audioread" is noise here
            warnings.simplefilter("ignore")
            samples, sr = librosa.load(str(source), sr=None, mono=False)
    except Exception:  # noqa: BLE001 - no backend for it: the caller reports the file
        return None
    return (samples.T if samples.ndim == 2 else samples), int(sr)


def resample(samples: "np.ndarray", rate_in: int, rate_out: int) -> "np.ndarray":
    try:
        import soxr  # librosa's own default backend, without librosa's import cost

        return soxr.resample(samples, rate_in, rate_out)
    except ImportError:
        # lazy: librosa, only for audio soundfile cannot read; keeps gemma --help fast
        import librosa

        return librosa.resample(samples, orig_sr=rate_in, target_sr=rate_out)
