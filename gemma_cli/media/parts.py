"""OpenAI-style content parts (image, audio, video) turned into the engine's `Media`, in prompt order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from gemma_cli.errors import MediaError
from gemma_cli.media.audio import SAMPLE_RATE, Audio, load_audio
from gemma_cli.media.cutting import MAX_CLIP_SECONDS, Segment, clips, cut
from gemma_cli.media.files import check_file, read_bytes
from gemma_cli.media.images import load_image
from gemma_cli.media.video import FRAME_TOKENS, load_video, with_frames

if TYPE_CHECKING:

    from gemma_cli.engine.projector import Media



MEDIA_KINDS = ("image", "audio", "video")


def media_parts(content) -> list[dict]:
    """The image/audio/video parts of a message's content (a string has none)."""
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, dict) and p.get("type") in MEDIA_KINDS]


def prompt_order(messages: list[dict]) -> list[dict]:
    """The media parts of `messages` in the order gemma_cli.format.prompt writes their placeholders.

    Tool results are written into the model turn that called them, before that turn's own
    content; other tool messages are not written. Media in the first system message are refused:
    Gemma 4's templates write only that message's text, so the model would never see them.
    """
    first_is_system = bool(messages) and messages[0].get("role") in ("system", "developer")
    if first_is_system and media_parts(messages[0].get("content")):
        kind = media_parts(messages[0]["content"])[0]["type"]
        raise MediaError(f"the {messages[0]['role']} message holds {'a' if kind == 'video' else 'an'} {kind}, which "
                         f"Gemma 4 would never see: put the {kind} in a user message",
                         "Gemma 4's chat templates write only the text of the system message")
    rest = messages[1:] if first_is_system else messages
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
    video parts `frames`, `fps` and `frame_tokens` (gemma_cli.media.video).
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
