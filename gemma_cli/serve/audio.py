"""/v1/audio/transcriptions and /v1/audio/translations, on `gemma transcribe`'s code.

The upload is read and cut at pauses into <= 30 s clips (`media.load_audio`, `media.cut`),
each clip asked with the model card's prompt (`transcript.prompt`, thinking off, greedy by
default), the clips decoding as parallel sequences beside other requests; the answers become
`transcript.Cue`s written as json, text, srt, vtt or verbose_json.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from gemma_cli.serve.chat import ApiError, Builder, bad

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MAX_TOKENS = 512  # per <= 30 s clip, as `gemma transcribe`: far more than speech at any pace needs


def read_form(form, max_bytes: int) -> dict:
    """The multipart fields OpenAI's clients send, checked."""
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise bad("'file' must be an uploaded audio file (multipart/form-data)", "file")
    fmt = str(form.get("response_format") or "json")
    if fmt not in FORMATS:
        raise bad(f"response_format must be one of {', '.join(FORMATS)}", "response_format")
    temperature = form.get("temperature")
    try:
        temperature = float(temperature) if temperature not in (None, "") else None
    except ValueError:
        raise bad("'temperature' must be a number", "temperature") from None
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise bad("'temperature' must be between 0 and 2", "temperature")
    if upload.size is not None and upload.size > max_bytes:
        raise ApiError(413, f"the audio file is over the server's limit of {max_bytes // 1024 // 1024} MiB",
                       param="file", code="media_too_large")
    return {"upload": upload, "format": fmt, "language": form.get("language") or None,
            "temperature": temperature, "model": form.get("model")}


def load(name: str, data: bytes, rate: int):
    """(recording, segments, clips) of an upload; a bad file is a 400 naming it."""
    from gemma_cli.errors import MediaError
    from gemma_cli.media import clips, cut, load_audio

    if not data:
        raise bad(f"{name} is empty (0 bytes)", "file", "invalid_media")
    try:
        recording = load_audio(name, rate, data=data)
    except MediaError as e:
        raise bad(e.message, "file", "invalid_media") from None
    segments = cut(recording.samples, recording.rate)
    return recording, segments, clips(recording, segments)


def jobs(builder: Builder, clips: list, language: str | None, translate: bool, temperature: float | None) -> list:
    """One engine job per clip: the audio first, then the model card's instructions."""
    from gemma_cli import transcript
    from gemma_cli.engine.parallel import Job

    question = transcript.prompt(language, "en" if translate else None)
    text = builder.format.render(transcript.messages(question), None, thinking=False)
    tokens = builder.engine.tokenize(text)
    sampling = replace(builder.settings.sampling, temperature=0.0 if temperature is None else temperature, grammar=None)
    return [Job(tokens, sampling, MAX_TOKENS, [clip]) for clip in clips]


async def gather(tickets: list) -> list:
    return await asyncio.gather(*(t.result() for t in tickets))


def render(results: list, segments: list, recording, fmt: str, language: str | None, translate: bool, model: str):
    """(body, media type) of the finished clips."""
    from gemma_cli import reply, transcript

    cues = []
    for segment, done in zip(segments, results):
        answer = reply.parse(done.text).answer
        if translate:
            _, english = transcript.split_translation(answer, "en")
            cues.append(transcript.Cue(segment.start, segment.end, english or transcript.clean(answer)))
        else:
            cues.append(transcript.Cue(segment.start, segment.end, transcript.clean(answer)))
    text = " ".join(c.text for c in cues if c.text)
    if fmt == "json":
        return {"text": text}, "application/json"
    if fmt == "text":
        return transcript.to_txt(cues), "text/plain; charset=utf-8"
    if fmt == "srt":
        return transcript.to_srt(cues), "text/plain; charset=utf-8"
    if fmt == "vtt":
        return transcript.to_vtt(cues), "text/vtt; charset=utf-8"
    segments_out = [{"id": i, "seek": 0, "start": round(c.start, 3), "end": round(c.end, 3), "text": c.text,
                     "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0,
                     "no_speech_prob": 0.0} for i, c in enumerate(cues)]
    return {"task": "translate" if translate else "transcribe", "language": language or "",
            "duration": round(recording.seconds, 3), "text": text, "segments": segments_out,
            "model": model}, "application/json"
