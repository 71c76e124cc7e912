"""/v1/audio/transcriptions and /v1/audio/translations, on `gemma transcribe`'s code.

The upload is read (`media.load_audio`) and run through the transcription job
(`transcription.plan`/`run`: speech found by VAD, packed into <= 30 s requests, the model
card's prompt, thinking off, greedy by default), each request an engine job decoding beside
the server's other requests; the timed cues are written as json, text, srt, vtt or
verbose_json.
"""

from __future__ import annotations

from dataclasses import replace

from gemma_cli.engine.parallel import Job
from gemma_cli.errors import MediaError
from gemma_cli.format import reply, transcript
from gemma_cli.media.audio import load_audio
from gemma_cli.serve.chat import ApiError, Builder, bad
from gemma_cli.transcription import job as transcription

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
    try:
        language = transcript.check_language(form.get("language") or None)
    except ValueError as e:
        raise bad(f"'language' {form.get('language')!r}: {e}", "language") from None
    return {"upload": upload, "format": fmt, "language": language,
            "temperature": temperature, "model": form.get("model")}


def load(name: str, data: bytes, rate: int):
    """The upload as a recording; a bad file is a 400 naming it."""

    if not data:
        raise bad(f"{name} is empty (0 bytes)", "file", "invalid_media")
    try:
        return load_audio(name, rate, data=data)
    except MediaError as e:
        raise bad(e.message, "file", "invalid_media") from None


class Gone(Exception):
    """The client went away: the transcription stops at its next request."""


def transcribe(builder: Builder, submit, recording, language: str | None, translate: bool,
               temperature: float | None, gone):
    """`gemma transcribe`'s job (gemma_cli.transcription.job) with each request sent as an engine job.

    Runs on a worker thread; `submit(job) -> Finished` waits for one job, `gone` (an Event)
    says the client left.
    """

    options = transcription.Options(language, "en" if translate else None)
    work = transcription.plan(recording, options)
    sampling = replace(builder.settings.sampling, temperature=0.0 if temperature is None else temperature, grammar=None)
    prompts: dict[str, list[int]] = {}

    def ask(clip, question: str) -> str:

        if gone.is_set():
            raise Gone
        if question not in prompts:
            text = builder.format.render(transcript.messages(question), None, thinking=False)
            prompts[question] = builder.engine.tokenize(text)
        done = submit(Job(prompts[question], sampling, MAX_TOKENS, [clip]))
        if done.error is not None:
            raise done.error
        return reply.parse(done.text).answer

    return transcription.run(recording, work, ask, options)


def render(result, recording, fmt: str, language: str | None, translate: bool, model: str):
    """(body, media type) of a finished transcription in OpenAI's response formats."""

    cues = [transcript.Cue(c.start, c.end, (c.translation or c.text) if translate else c.text) for c in result.cues]
    text = " ".join(c.text for c in cues if c.text)
    if fmt == "json":
        return {"text": text}, "application/json"
    if fmt == "text":
        return transcript.to_txt(cues), "text/plain; charset=utf-8"
    if fmt == "srt":
        return transcript.to_srt(cues), "text/plain; charset=utf-8"
    if fmt == "vtt":
        return transcript.to_vtt(cues), "text/vtt; charset=utf-8"
    segments = [{"id": i, "seek": 0, "start": round(c.start, 3), "end": round(c.end, 3), "text": c.text, "tokens": [],
                 "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0}
                for i, c in enumerate(cues)]
    return {"task": "translate" if translate else "transcribe", "language": language or "",
            "duration": round(recording.seconds, 3), "text": text, "segments": segments}, "application/json"
