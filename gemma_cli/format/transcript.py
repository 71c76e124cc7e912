"""Transcripts: the model card's speech prompts, and writing segments as TXT, SRT, VTT or JSON.

Thinking stays off for transcription: with it on, models think aloud about the audio
instead of transcribing it (ollama #16583).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

FORMATS = ("txt", "srt", "vtt", "json")

# The model card's prompts, word for word.
_INSTRUCTIONS = (
    "Follow these specific instructions for formatting the answer:\n"
    "* Only output the transcription, with no newlines.\n"
    "* When transcribing numbers, write the digits, i.e. write 1.7 and not one point seven, "
    "and write 3 instead of three."
)
TRANSCRIBE = "Transcribe the following speech segment in {lang} into {lang} text.\n" + _INSTRUCTIONS
TRANSCRIBE_ANY = "Transcribe the following speech segment in its original language. " + _INSTRUCTIONS
TRANSLATE = (
    "Transcribe the following speech segment in {src}, then translate it into {dst}.\n"
    "When formatting the answer, first output the transcription in {src}, then one newline, "
    "then output the string '{dst}: ', then the translation in {dst}."
)

# whisper-style codes (-l en) for the prompt, which wants language names.
LANGUAGES = {
    "ar": "Arabic", "bn": "Bengali", "ca": "Catalan", "cs": "Czech", "da": "Danish", "de": "German",
    "el": "Greek", "en": "English", "es": "Spanish", "fa": "Persian", "fi": "Finnish", "fr": "French",
    "he": "Hebrew", "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese",
    "ko": "Korean", "ms": "Malay", "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese",
    "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil",
    "th": "Thai", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese", "zh": "Chinese",
}


# Every ISO 639-1 code: a two-letter value outside it (`-l xx`) is a typo, not a language.
ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el en
eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv
ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne
ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st
su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split())
_CODE = re.compile(r"([A-Za-z]{2})(?:[-_][A-Za-z0-9]{2,8})*")


def language_name(code_or_name: str | None) -> str | None:
    if not code_or_name or code_or_name.lower() == "auto":
        return None
    code = _CODE.fullmatch(code_or_name)
    if code is not None:  # en, pt-BR, zh_TW: the language's name (a region is the model's to infer)
        return LANGUAGES.get(code.group(1).lower(), code_or_name)
    return code_or_name


def check_language(value: str | None) -> str | None:
    """A language as given (`-l`, `--translate-to`, the API's `language`): an ISO 639-1 code, possibly with a
    region (pt-BR), or a language's name; a ValueError says what is wrong with anything else."""
    if value is None or not value.strip() or value.strip().lower() == "auto":
        return None
    value = value.strip()
    code = _CODE.fullmatch(value)
    if code is not None:
        if code.group(1).lower() not in ISO_639_1:
            raise ValueError(f"{code.group(1)!r} is not a language code (ISO 639-1)")
        return value
    if len(value) > 40 or not all(ch.isalpha() or ch in " -'()" for ch in value):
        raise ValueError("not a language code or a language's name")
    return value


def prompt(language: str | None = None, translate_to: str | None = None) -> str:
    """The text that follows the audio in the user turn."""
    src, dst = language_name(language), language_name(translate_to)
    if dst:
        return TRANSLATE.format(src=src or "its original language", dst=dst)
    return TRANSCRIBE.format(lang=src) if src else TRANSCRIBE_ANY


def messages(text: str) -> list[dict]:
    """One user turn: the audio first (a hard rule for Gemma 4), then the instructions."""
    return [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": text}]}]


@dataclass
class Cue:
    start: float
    end: float
    text: str
    translation: str | None = None


def clean(answer: str) -> str:
    """One line: the model is asked for no newlines, but a cue must not hold a blank line either way."""
    return re.sub(r"\s+", " ", answer).strip()


def split_translation(answer: str, translate_to: str) -> tuple[str, str]:
    """`transcription\\nLANG: translation` -> (transcription, translation)."""
    dst = language_name(translate_to) or translate_to
    m = re.search(rf"(?:^|\n)\s*{re.escape(dst)}\s*:\s*", answer, re.IGNORECASE)
    if m is None:  # the model did not follow the format: keep what it said as the transcription
        return clean(answer), ""
    return clean(answer[: m.start()]), clean(answer[m.end():])


# ---------------------------------------------------------------- writers


def timestamp(seconds: float, sep: str = ",") -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _lines(c: Cue) -> str:
    return c.text if not c.translation else f"{c.text}\n{c.translation}"


def to_txt(cues: list[Cue]) -> str:
    return "".join(_lines(c) + "\n" for c in cues if c.text or c.translation)


def to_srt(cues: list[Cue]) -> str:
    # Cues without text are left out (a blank cue ends the block early in SRT readers).
    spoken = [c for c in cues if c.text or c.translation]
    return "\n".join(f"{i}\n{timestamp(c.start)} --> {timestamp(c.end)}\n{_lines(c)}\n"
                     for i, c in enumerate(spoken, 1))


def to_vtt(cues: list[Cue]) -> str:
    spoken = [c for c in cues if c.text or c.translation]
    return "WEBVTT\n\n" + "\n".join(f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n{_lines(c)}\n"
                                     for c in spoken)


def to_json(cues: list[Cue], *, model: str, source: str, language: str | None, translate_to: str | None,
            duration: float, segments: list[dict] | None = None, vad: dict | None = None) -> str:
    """`segments`: what was sent to the model (one per request); `cues`: the timed text. Without
    `segments` given, each cue was its own segment."""
    listed = []
    for c in cues:
        seg = {"start": round(c.start, 3), "end": round(c.end, 3), "text": c.text}
        if translate_to:
            seg["translation"] = c.translation or ""
        listed.append(seg)
    out = {"model": model, "source": source, "language": language, "duration": round(duration, 3),
           "text": " ".join(c.text for c in cues if c.text), "segments": listed if segments is None else segments,
           "cues": listed}
    if vad is not None:
        out["vad"] = vad
    if translate_to:
        out["translate_to"] = translate_to
        out["translation"] = " ".join(c.translation for c in cues if c.translation)
    return json.dumps(out, ensure_ascii=False, indent=2) + "\n"


def render(cues: list[Cue], fmt: str, **meta) -> str:
    if fmt == "json":
        return to_json(cues, **meta)
    return {"txt": to_txt, "srt": to_srt, "vtt": to_vtt}[fmt](cues)
