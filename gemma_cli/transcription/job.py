"""The transcription job: a recording in, timed cues out (what `gemma transcribe` and a server run).

With voice activity detection (the default), only speech goes to the model: the speech
spans become cues of at most `max_cue` seconds, packed into requests that fill the encoder's
30 s, and each request's text is shared out over its cues (gemma_cli.media.speech). Without it,
the recording is cut at its pauses into <= 30 s segments, each one cue (the energy cutter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from gemma_cli.format import transcript
from gemma_cli.media import speech
from gemma_cli.media.audio import Audio
from gemma_cli.media.cutting import cut


@dataclass
class Transcript:
    cues: list[transcript.Cue] = field(default_factory=list)  # what SRT/VTT/TXT show
    segments: list[dict] = field(default_factory=list)  # what was sent: one per request
    detector: str | None = None  # "silero", "energy", or None without VAD
    duration: float = 0.0
    sent: float = 0.0  # seconds of audio sent to the model

    @property
    def share_sent(self) -> float:
        return self.sent / self.duration if self.duration else 0.0


@dataclass
class Options:
    language: str | None = None
    translate_to: str | None = None
    vad: bool = True
    threshold: float = 0.5
    max_cue: float = 7.0


def plan(recording: Audio, options: Options):
    """The requests to send: a speech.Plan with VAD, else the energy cutter's segments (media.Segment)."""
    if options.vad:
        return speech.plan(recording.samples, recording.rate, threshold=options.threshold, max_cue=options.max_cue)

    return cut(recording.samples, recording.rate)


def run(recording: Audio, work, ask: Callable[[object, str], str], options: Options,
        progress: Callable[[float], None] | None = None) -> Transcript:
    """Send each request of `work` (from `plan`) through `ask(media, question) -> answer`, and time the text."""
    # lazy: the engine (llama_cpp, numpy), only when a model runs; keeps gemma --help fast
    from gemma_cli.engine.projector import Media

    question = transcript.prompt(options.language, options.translate_to)
    out = Transcript(duration=recording.seconds, detector=work.detector if options.vad else None)
    requests = work.requests if options.vad else work
    for req in requests:
        if options.vad:
            samples = speech.clip_of(recording.samples, req, recording.rate)
            spans = req.cues
        else:
            samples = recording.samples[req.first : req.last]
            spans = [speech.Cue(req.start, req.end)]
        name = f"{recording.name} [{req.start:.1f}-{req.end:.1f} s]"
        answer = ask(Media.audio(samples, recording.rate, name=name), question)
        text, translation = _texts(answer, options.translate_to)
        out.sent += len(samples) / recording.rate
        segment = {"start": round(req.start, 3), "end": round(req.end, 3), "text": text}
        if options.translate_to:
            segment["translation"] = translation
        if options.vad:
            segment["speech"] = [[round(c.start, 3), round(c.end, 3)] for c in spans]
        out.segments.append(segment)
        texts = speech.share_text(text, spans)
        translations = speech.share_text(translation, spans) if options.translate_to else [None] * len(spans)
        for cue, t, tr in zip(spans, texts, translations):
            out.cues.append(transcript.Cue(cue.start, cue.end, t, tr))
        if progress is not None:
            progress(req.end)
    return out


def _texts(answer: str, translate_to: str | None) -> tuple[str, str]:
    if translate_to:
        return transcript.split_translation(answer, translate_to)
    return transcript.clean(answer), ""
