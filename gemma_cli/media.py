"""Reading images and audio for the model, and cutting long audio into clips.

Images go through Pillow (PNG, JPEG, WebP, GIF, BMP, TIFF, ...): first frame, EXIF
orientation applied, alpha flattened onto white, every mode made 8-bit RGB. Audio goes
through soundfile (WAV, FLAC, OGG, MP3; librosa for what libsndfile lacks): downmixed to
mono, resampled to the projector's rate. `-` reads from stdin. Whatever is wrong with a
file becomes one MediaError naming it.

Audio longer than the encoder's 30 s is cut at its quietest points (energy minima), so a
cut falls in a pause rather than inside a word.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gemma_cli.errors import MediaError
from gemma_cli.media_file import check_file
from gemma_cli.video import FRAME_TOKENS, load_video, with_frames

if TYPE_CHECKING:
    import numpy as np

    from gemma_cli.engine.projector import Media

IMAGE_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"
AUDIO_FORMATS = "WAV, FLAC, OGG or MP3"
MAX_PIXELS = 64_000_000  # more is a decompression bomb or a scan far beyond any token budget
SAMPLE_RATE = 16_000  # Gemma 4's audio encoder (mtmd_get_audio_sample_rate)
MAX_CLIP_SECONDS = 30.0


# ---------------------------------------------------------------- reading


def _name(source: str | Path) -> str:
    return "stdin" if str(source) == "-" else str(source)


def read_bytes(source: str | Path, what: str) -> bytes:
    """The whole file (or stdin for `-`); a one-line error when missing, unreadable or empty."""
    name = _name(source)
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


# ---------------------------------------------------------------- images


def load_image(source: str | Path, data: bytes | None = None) -> "Media":
    """An image file (or `-`, or `data` already read) as upright 8-bit RGB."""
    # lazy: Pillow, only when an image is read; keeps gemma --help fast
    from PIL import Image, UnidentifiedImageError

    # lazy: the engine (llama_cpp, numpy), only when a model runs; keeps gemma --help fast
    from gemma_cli.engine.projector import Media

    name = _name(source)
    data = read_bytes(source, "image") if data is None else data
    if not data:
        raise MediaError(f"{name} is empty (0 bytes)", "pass a non-empty image file")
    with warnings.catch_warnings():
        # Pillow only warns between its limit and twice it; a bomb is an error at any size past ours.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            _check_size(image, name)
            image.seek(0)  # animations and multi-page files: the first frame
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise MediaError(f"{name} is too large to decode safely (over {Image.MAX_IMAGE_PIXELS} pixels)",
                             "a decompression bomb? scale the image down first") from None
        except UnidentifiedImageError:
            raise MediaError(f"{name} is not an image gemma can read", f"use {IMAGE_FORMATS}") from None
        except MediaError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
            raise MediaError(f"{name} is truncated or damaged ({_short(e)})", "export or download the image again") from None
    rgb = _rgb(_upright(image))
    return Media.image(rgb.tobytes(), rgb.width, rgb.height, name)


def _check_size(image, name: str) -> None:
    w, h = image.size
    if w <= 0 or h <= 0:
        raise MediaError(f"{name} has no pixels ({w}x{h})", "pass a real image")
    if w * h > MAX_PIXELS:
        raise MediaError(f"{name} is too large to decode safely ({w}x{h} pixels)",
                         "a decompression bomb? scale the image down first")


def _short(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:120]


def _upright(image):
    """Apply the EXIF orientation (phone photos are stored sideways with a rotate flag)."""
    # lazy: Pillow, only when an image is read; keeps gemma --help fast
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
        return image


def _rgb(image):
    """Any Pillow mode as 8-bit RGB; transparency flattened onto white."""
    # lazy: Pillow, only when an image is read; keeps gemma --help fast
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode.startswith("I") or mode == "F":
        image = _eight_bit(image)
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _eight_bit(image):
    """16/32-bit integer and float images scaled to 8 bits (a plain convert would clip them)."""
    # lazy: numpy, only when audio or frames are decoded; Pillow, only when an image is read; keeps gemma --help fast
    import numpy as np
    from PIL import Image

    a = np.asarray(image, dtype=np.float64)
    lo, hi = (0.0, 65535.0) if image.mode.startswith("I;16") else (float(a.min()), float(a.max()))
    if image.mode == "I" and lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    scaled = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L")


# ---------------------------------------------------------------- audio


@dataclass
class Audio:
    samples: "np.ndarray"  # mono float32
    rate: int
    name: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate if self.rate else 0.0


@dataclass(frozen=True)
class Segment:
    """A stretch of audio: seconds for people, sample indices [first, last) for slicing."""

    start: float
    end: float
    first: int
    last: int


def load_audio(source: str | Path, rate: int = SAMPLE_RATE, data: bytes | None = None) -> Audio:
    """An audio file (or `-`, or `data` already read) as mono float32 at `rate` Hz."""
    # lazy: numpy, only when audio or frames are decoded; keeps gemma --help fast
    import numpy as np

    name = _name(source)
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


# ---------------------------------------------------------------- chat message parts


MEDIA_KINDS = ("image", "audio", "video")


def media_parts(content) -> list[dict]:
    """The image/audio/video parts of a message's content (a string has none)."""
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, dict) and p.get("type") in MEDIA_KINDS]


def prompt_order(messages: list[dict]) -> list[dict]:
    """The media parts of `messages` in the order gemma_cli.prompt writes their placeholders.

    The first system message drops media; tool results are written into the model turn
    that called them, before that turn's own content; other tool messages are not written.
    """
    rest = messages[1:] if messages and messages[0].get("role") in ("system", "developer") else messages
    out: list[dict] = []
    for i, m in enumerate(rest):
        if m.get("role") == "tool":
            continue
        if m.get("tool_calls") and not m.get("tool_responses"):
            for follow in rest[i + 1 :]:
                if follow.get("role") != "tool":
                    break
                out += media_parts(follow.get("content"))
        out += media_parts(m.get("content"))
    return out


class MediaParts:
    """Decodes the media parts of chat messages, and keeps recent ones decoded.

    Parts name their source: `path` (a file, or `-`), `url` (file://, data:...;base64,...)
    or `data` (base64, OpenAI's input_audio); audio parts may carry `start`/`end` seconds,
    video parts `frames`, `fps` and `frame_tokens` (gemma_cli.video).
    `media` (an engine.projector.Media) is media the caller decoded itself; it is not saved.

    This is the whole of a medium's way before the engine: a flag or a conversation part is
    read, checked and decoded here (`attach` at once, so a bad file fails before the model
    loads), and the decoded `Media` go to the engine in prompt order. Nothing here calls the
    engine: the caller checks that the model takes the kind, and sets `rate` to its encoder's.
    """

    def __init__(self, keep: int = 16, rate: int = SAMPLE_RATE):
        self.keep = keep
        self.rate = rate  # the audio encoder's sample rate
        self._loaded: OrderedDict[tuple, object] = OrderedDict()

    def attach(self, kind: str, source: str | Path, **options) -> dict:
        """The message part for a file given by the user (`-i`, `/image`, ...), decoded now:
        a bad file is one error naming it, before anything else runs. `-` (stdin) is kept in
        the part itself as a data URL, so a resumed conversation can read it again."""
        if kind not in MEDIA_KINDS:
            raise MediaError(f"unknown media kind {kind!r}", f"use one of {', '.join(MEDIA_KINDS)}")
        if str(source) == "-":
            part = {"type": kind, "url": "data:;base64," + base64.b64encode(read_bytes("-", kind)).decode()}
        else:
            check_file(source, kind)
            part = {"type": kind, "path": str(Path(source).expanduser().resolve())}
        part.update({k: v for k, v in options.items() if v is not None})
        if kind == "audio":
            self._audio(part)
        else:
            self.load(part)
        return part

    def prepare(self, content):
        """Decode the media of a new message now (a bad file fails before it joins the history);
        audio longer than 30 s becomes several parts, cut at quiet points."""
        if not media_parts(content):
            return content
        out = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") in MEDIA_KINDS):
                out.append(part)
                continue
            if part["type"] == "audio" and "start" not in part and part.get("media") is None:
                audio = self._audio(part)
                if audio.seconds > MAX_CLIP_SECONDS:
                    out += [{**part, "start": round(s.start, 3), "end": round(s.end, 3)}
                            for s in cut(audio.samples, audio.rate)]
                    continue
            self.load(part)
            out.append(part)
        return out

    def load(self, part: dict):
        """The decoded media of one part: a Media (an image or an audio clip), or a video.Video."""
        kind = part["type"]
        if part.get("media") is not None:  # decoded by the caller (an engine.projector.Media; not saved)
            return part["media"]
        if kind == "image":
            return self._cached(("image", _source_key(part)), lambda: load_image(*_source(part, "image")))
        if kind == "video":
            return self._cached(("video", _source_key(part), *_video_options(part)), lambda: _load_video(part))
        audio = self._audio(part)
        start, end = part.get("start"), part.get("end")
        first = int(round(float(start or 0.0) * audio.rate))
        last = len(audio.samples) if end is None else min(len(audio.samples), int(round(float(end) * audio.rate)))
        segment = Segment(first / audio.rate, last / audio.rate, first, last)
        return self._cached(("clip", _source_key(part), first, last), lambda: clips(audio, [segment])[0])

    def for_engine(self, parts: list[dict]) -> list["Media"]:
        """The Media the engine takes for `parts` (in prompt order): a video gives its frames."""
        out = []
        for part in parts:
            loaded = self.load(part)
            out += loaded.frames if part["type"] == "video" else [loaded]
        return out

    def for_prompt(self, text: str, messages: list[dict]) -> tuple[str, list["Media"]]:
        """A rendered prompt of `messages` with its videos written out as frames, and the Media for it in order."""
        parts = prompt_order(messages)
        videos = self.videos(parts)
        if videos:
            text = with_frames(text, videos)
        return text, self.for_engine(parts)

    def videos(self, parts: list[dict]) -> list:
        """The decoded videos among `parts`, in order (their frame layouts go into the prompt text)."""
        return [self.load(p) for p in parts if p.get("type") == "video"]

    def _audio(self, part: dict) -> Audio:
        rate = self.rate
        return self._cached(("audio", _source_key(part), rate), lambda: load_audio(*_source(part, "audio", rate)))

    def _cached(self, key: tuple, make):
        value = self._loaded.get(key)
        if value is None:
            value = make()
            self._loaded[key] = value
            while len(self._loaded) > self.keep:  # an evicted file is read again if needed
                self._loaded.popitem(last=False)
        else:
            self._loaded.move_to_end(key)
        return value


def _video_options(part: dict) -> tuple:
    """A video part's sampling: (frames, fps, tokens a frame), checked (a conversation file may say anything)."""
    def number(key, kind):
        value = part.get(key)
        if value is None:
            return None
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise MediaError(f"a video part's {key!r} is {value!r}, not a number", "check the conversation file") from None

    return number("frames", int), number("fps", float), number("frame_tokens", int) or FRAME_TOKENS


def _load_video(part: dict):
    frames, fps, budget = _video_options(part)
    name, data = _source(part, "video")
    return load_video(name, data, frames=frames, fps=fps, budget=budget)


def _source(part: dict, what: str, *rate) -> tuple:
    """(name, *rate, bytes or None): a file is read by the loader itself (audio streams from it)."""
    path = part.get("path")
    url = part.get("url") or ""
    if path is not None and str(path) != "-":
        return (str(path), *rate, None)
    if url.startswith("file://"):
        return (url[len("file://"):], *rate, None)
    return (_label(part), *rate, _part_bytes(part, what))


def _label(part: dict) -> str:
    if part.get("path"):
        return str(part["path"])
    url = part.get("url") or ""
    if url.startswith("file://"):
        return url[len("file://"):]
    return "data URL" if url.startswith("data:") else ("inline audio" if part.get("data") else url or part["type"])


def _source_key(part: dict) -> str:
    if part.get("path") and str(part["path"]) != "-":
        return "path:" + str(Path(part["path"]).expanduser().resolve())
    blob = part.get("url") or part.get("data") or part.get("path") or ""
    return "blob:" + hashlib.sha256(str(blob).encode("utf-8", "surrogatepass")).hexdigest()


_STDIN: dict[str, bytes] = {}  # `-` read once: later turns see the same bytes


def _part_bytes(part: dict, what: str) -> bytes:
    """The bytes a part names (a path, a file:// or base64 data: URL, or base64 `data`)."""
    path = part.get("path")
    if path is not None:
        if str(path) == "-":
            if "-" not in _STDIN:
                _STDIN["-"] = read_bytes("-", what)
            return _STDIN["-"]
        return read_bytes(path, what)
    url = part.get("url")
    if isinstance(url, str) and url.startswith("file://"):
        return read_bytes(url[len("file://"):], what)
    encoded = part.get("data")
    if isinstance(url, str) and url.startswith("data:"):
        encoded = url.split(",", 1)[1] if "," in url and ";base64" in url.split(",", 1)[0] else None
        if encoded is None:
            raise MediaError(f"the {what} data URL is not base64", "use data:<type>;base64,<data>")
    elif isinstance(url, str) and url:
        raise MediaError(f"gemma does not download {what} from {url}", "save the file and pass its path")
    if not encoded:
        raise MediaError(f"an {what} part names no file", 'give it a "path", a "url" or "data"')
    try:
        data = base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError):
        raise MediaError(f"the {what} data is not valid base64", "check the conversation file") from None
    if not data:
        raise MediaError(f"the inline {what} data is empty", f"pass a non-empty {what}")
    return data
