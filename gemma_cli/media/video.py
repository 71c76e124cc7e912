"""Reading video for the model: frames sampled the way Gemma 4 was trained, and their prompt layout.

Facts from transformers' Gemma 4 processor (which vLLM follows): up to 32 frames, indices
`floor(k * total / n)` (every frame when there are fewer); each frame an image at a
70-token budget; the `<|video|>` of a part becomes, per frame, `MM:SS ` + the frame's image
(`<|image>` + soft tokens + `<image|>`), frames joined by one space, `MM:SS` the frame's whole
seconds in the clip. The audio track is not used.

Decoding goes through PyAV (FFmpeg in its wheels, no system ffmpeg), imported only here, when
a video is given. Whatever is wrong with a file becomes one MediaError naming it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gemma_cli.errors import ContextOverflowError, MediaError
from gemma_cli.media.files import check_file

if TYPE_CHECKING:
    from gemma_cli.engine.projector import Media

VIDEO_FORMATS = "MP4, WebM, MKV, MOV, AVI or GIF"
MAX_FRAMES = 32  # what Gemma 4 was trained with
FRAME_TOKENS = 70  # the visual token budget of one frame
FRAME_BUDGETS = (70, 140, 280)
PLACEHOLDER = "<|video|>"
IMAGE = "<|image|>"
CLIP_BREAK = "\n"  # between a clip's frames and another clip, or text written against it
_MARKER_END = "|>"  # a medium's placeholder ends so (the frames' own <|image|> too)
_MARKERS_AFTER = ("<turn|>", IMAGE, "<|audio|>")  # what already parts a clip from what follows
SEEK_OVER = 64  # a clip with more than 64 frames per frame taken is read by seeking
MAX_SIDE = 1280  # frames are shrunk to this first: the budget's size is far below, 32 4K frames would take 800 MB


@dataclass
class Video:
    """The frames of one clip, ready for the engine (images at the frame budget), and their times."""

    name: str
    frames: list["Media"] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # seconds from the start of the clip
    duration: float = 0.0
    total_frames: int = 0
    budget: int = FRAME_TOKENS

    @property
    def stamps(self) -> list[str]:
        return [stamp(t) for t in self.times]

    @property
    def layout(self) -> str:
        """What the `<|video|>` of this clip becomes in the prompt: `MM:SS <|image|>` per frame, one space apart."""
        return " ".join(f"{s} {IMAGE}" for s in self.stamps)


def stamp(seconds: float) -> str:
    whole = max(0, int(seconds))
    return "%02d:%02d" % divmod(whole, 60)


def frame_indices(total: int, n: int = MAX_FRAMES) -> list[int]:
    """`floor(k * total / n)` for k < n; every frame when the clip has no more than n."""
    if total <= n:
        return list(range(total))
    return [k * total // n for k in range(n)]


def frame_count(total: int, rate: float, frames: int | None = None, fps: float | None = None) -> int:
    """How many frames to take: `frames`, or `fps` frames a second of the clip, never over 32."""
    if fps is not None:
        seconds = total / rate if rate > 0 else 0.0
        return max(1, min(MAX_FRAMES, int(seconds * fps)))
    return max(1, min(frames or MAX_FRAMES, MAX_FRAMES))


def with_frames(text: str, videos: list[Video]) -> str:
    """`text` (a rendered prompt) with each `<|video|>` replaced by its clip's frame layout, in order.

    A clip is a block of its own: a line break parts it from another clip and from text written
    right against it (two clips' stamps both start at 00:00; nothing else would tell where the
    second begins). Where whitespace, a turn's edge or another medium already parts them, nothing
    is added, so one clip at the start of a turn followed by nothing keeps the trained layout.
    """
    pieces = text.split(PLACEHOLDER)
    if len(pieces) - 1 != len(videos):
        raise MediaError(f"the prompt has {len(pieces) - 1} {PLACEHOLDER} placeholders for {len(videos)} videos",
                         f"do not write {PLACEHOLDER} in the text; attach videos with -v or a video part")
    out, clip_last = pieces[0], False
    for video, piece in zip(videos, pieces[1:]):
        if out and not out[-1].isspace() and (clip_last or not out.endswith(_MARKER_END)):
            out += CLIP_BREAK
        out += video.layout
        if piece and not piece[0].isspace() and not piece.startswith(_MARKERS_AFTER):
            out += CLIP_BREAK
        out += piece
        clip_last = not piece
    return out


def tokens_needed(video: Video) -> int:
    """A close upper estimate of the prompt tokens a clip takes: per frame its budget, `<|image>`,
    `<image|>`, and about four for `MM:SS ` (llama.cpp rounds a frame to whole patches: a few more)."""
    return len(video.frames) * (video.budget + video.budget * 3 // 20 + 8)


def check_context(videos: list[Video], n_ctx: int, most: int = 0) -> None:
    """Clips too long for the context fail before the model loads, with the numbers. `most`: the longest
    context the model takes (its trained length; 0: not known), so the hint never asks for more."""
    need = sum(tokens_needed(v) for v in videos)
    if need < n_ctx:
        return
    v = videos[0]
    what = (f"{v.name}: {len(v.frames)} frames x ~{v.budget} tokens" if len(videos) == 1
            else f"{len(videos)} videos: {sum(len(x.frames) for x in videos)} frames x ~{v.budget} tokens")
    fewer = "take fewer frames (--frames) or fewer tokens a frame (--frame-tokens 70)"
    wanted = _round_up(need + 512)
    if most and wanted > most:
        per_frame = tokens_needed(v) // max(len(v.frames), 1)
        fit = max(1, (most - 512) // per_frame // len(videos))
        hint = (f"this model takes at most {most} tokens of context, so a larger --ctx cannot help: "
                f"take fewer frames (--frames {fit} fits) or fewer tokens a frame (--frame-tokens 70)")
    else:
        hint = f"raise --ctx to {wanted}, or {fewer}"
    raise ContextOverflowError(f"{what} = about {need} tokens, more than the context's {n_ctx} (--ctx)", hint)


def _round_up(n: int) -> int:
    return -(-n // 1024) * 1024


# ---------------------------------------------------------------- decoding


def load_video(source: str | Path, data: bytes | None = None, *, frames: int | None = None, fps: float | None = None,
               budget: int = FRAME_TOKENS) -> Video:
    """A clip (a file, or `data` already read) as its sampled frames, upright 8-bit RGB."""
    name = "stdin" if str(source) == "-" else str(source)
    if fps is not None and fps <= 0:
        raise MediaError(f"--fps {fps} is not a frame rate", "use a number above 0, such as 1 or 0.5")
    if budget not in FRAME_BUDGETS:
        raise MediaError(f"{budget} tokens a frame is not a Gemma 4 video budget",
                         f"use one of {', '.join(map(str, FRAME_BUDGETS))}")
    if data is None:
        check_file(source, "video")
    elif not data:
        raise MediaError(f"{name} is empty (0 bytes)", "pass a non-empty video file")
    try:
        # lazy: PyAV, only when a video is decoded; keeps gemma --help fast
        import av
    except ImportError:  # pragma: no cover - a dependency of gemma-cli
        raise MediaError("reading video needs PyAV", "pip install av") from None

    opener = (lambda: io.BytesIO(data)) if data is not None else (lambda: str(Path(source).expanduser()))
    total, rate, duration = _probe(av, opener, name)
    n = frame_count(total, rate, frames, fps)
    wanted = frame_indices(total, n)
    picked = None
    if total > SEEK_OVER * len(wanted) and data is None:  # a long clip: jump to each frame instead of decoding all
        picked = _decode_seeking(av, opener, name, wanted, rate)
    if not picked:
        picked = _decode(av, opener, name, wanted, rate)
    if not picked:
        raise MediaError(f"{name} is truncated or damaged (no frame could be decoded)", "export or download it again")
    # lazy: the engine (llama_cpp, numpy), only when a model runs; keeps gemma --help fast
    from gemma_cli.engine.projector import Media

    video = Video(name, duration=duration, total_frames=total, budget=budget)
    for i, (t, image) in enumerate(picked):
        video.frames.append(Media.image(image.tobytes(), image.width, image.height, f"{name} [{stamp(t)}]",
                                        budget=budget))
        video.times.append(t)
    return video


def _open(av, opener, name: str):
    source = opener()
    try:
        container = av.open(source, mode="r")
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        if _looks_like_video(source):  # an MP4 cut short loses its index (moov) at the end: it cannot open
            raise MediaError(f"{name} is truncated or damaged ({_short(e)})", "export or download it again") from None
        raise MediaError(f"{name} is not a video gemma can read", f"use {VIDEO_FORMATS}") from None
    if not container.streams.video:
        container.close()
        raise MediaError(f"{name} has no video track", "pass a video file (audio goes with -a / gemma transcribe)")
    return container


def _probe(av, opener, name: str) -> tuple[int, float, float]:
    """(frames in the clip, frames a second, seconds). Containers that do not say count packets."""
    container = _open(av, opener, name)
    with container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        total = int(stream.frames or 0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = float(container.duration or 0) / 1_000_000
        if total <= 0:
            try:
                total = sum(1 for packet in container.demux(stream) if packet.size)
            except (av.FFmpegError, OSError, ValueError, EOFError) as e:
                raise MediaError(f"{name} is truncated or damaged ({_short(e)})", "export or download it again") from None
    if total <= 0:
        raise MediaError(f"{name} has no video frames", "pass a clip that is not empty")
    if duration <= 0:
        duration = total / rate
    return total, rate, duration


def _decode(av, opener, name: str, wanted: list[int], rate: float) -> list[tuple[float, object]]:
    """The frames at the `wanted` indices, in one pass: (seconds, RGB PIL image) each."""
    want = set(wanted)
    last = max(wanted) if wanted else -1
    out = []
    container = _open(av, opener, name)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                if index in want:
                    t = frame.time - start if frame.time is not None else index / rate
                    out.append((max(0.0, t), _rgb(frame)))
                if index >= last:
                    break
        except (av.FFmpegError, OSError, ValueError, EOFError) as e:
            if not out:
                raise MediaError(f"{name} is truncated or damaged ({_short(e)})", "export or download it again") from None
    return out


def _decode_seeking(av, opener, name: str, wanted: list[int], rate: float) -> list[tuple[float, object]] | None:
    """The `wanted` frames of a long clip by seeking to each (to the keyframe before it, then decoding
    up to it): the same frames as one pass, in a fraction of the time. None where the container will
    not seek (the caller then decodes in one pass)."""
    out = []
    try:
        container = av.open(opener(), mode="r")
    except (av.FFmpegError, OSError, ValueError, EOFError):
        return None
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        base = stream.time_base
        if base is None or container.format.name.startswith("gif"):
            return None
        first = stream.start_time or 0
        start = float(first * base)
        try:
            for index in wanted:
                target = start + index / rate
                container.seek(int(first + (index / rate) / base), stream=stream, backward=True, any_frame=False)
                frame = None
                for frame in container.decode(stream):
                    if frame.time is not None and frame.time >= target - 0.5 / rate:
                        break
                if frame is None or frame.time is None:
                    return None
                out.append((max(0.0, frame.time - start), _rgb(frame)))
        except (av.FFmpegError, OSError, ValueError, EOFError):
            return None
    return out


def _rgb(frame):
    """A frame as RGB, no larger than MAX_SIDE on its long side (aspect kept)."""
    image = frame.to_image()
    if image.mode != "RGB":
        image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        # lazy: Pillow, only when an image is read; keeps gemma --help fast
        from PIL import Image

        scale = MAX_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    return image


_SIGNATURES = ((4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"GIF8"), (4, b"moov"), (4, b"mdat"),
               (4, b"wide"), (4, b"free"))


def _looks_like_video(source) -> bool:
    """The file starts as MP4/MOV, Matroska/WebM, AVI or GIF do (so a failure to open is damage)."""
    try:
        if isinstance(source, io.BytesIO):
            head = source.getvalue()[:16]
        else:
            with open(source, "rb") as f:
                head = f.read(16)
    except OSError:
        return False
    return any(head[at : at + len(sig)] == sig for at, sig in _SIGNATURES)


def _short(e: Exception) -> str:
    text = (getattr(e, "strerror", None) or str(e)).strip() or type(e).__name__
    return text.splitlines()[0][:120]
