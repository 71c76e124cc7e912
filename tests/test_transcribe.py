"""`gemma transcribe` through the real CLI and llama.cpp's audio encoder; the transcript writers."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from gemma_cli.format import transcript
from tests.clitools import assert_one_line_error, gemma_env, run_gemma
from tests.needs import skip_or_fail

FAST = ["--max-tokens", "4", "--threads", "1"]  # one thread: llama.cpp's spin-waits suffer on shared cores
FAST += ["--no-vad"]  # these recordings are tones, not speech: they test the energy cutter (VAD: test_speech.py)


def recording_with_two_pauses(rate: int = 16000) -> np.ndarray:
    """75 s of tones and noise, nearly silent at 24-26 s and 49-51 s."""
    rng = np.random.default_rng(11)
    out = []
    for seconds, kind in [(24, "tone"), (2, "pause"), (23, "noise"), (2, "pause"), (24, "tone")]:
        n = seconds * rate
        t = np.arange(n) / rate
        out.append({"tone": 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(3 * t)),
                    "noise": 0.15 * rng.standard_normal(n),
                    "pause": 0.002 * rng.standard_normal(n)}[kind])
    return np.concatenate(out).astype(np.float32)


def srt_times(text: str) -> list[tuple[float, float]]:
    def seconds(ts: str) -> float:
        h, m, rest = ts.split(":")
        s, ms = rest.split(",")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    return [(seconds(a), seconds(b)) for a, b in re.findall(r"(\S+) --> (\S+)", text)]


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "talk.flac"
    sf.write(path, recording_with_two_pauses(), 16000)
    return path


def transcribe(*args, home, model, mmproj, **kw):
    return run_gemma("transcribe", *args, "--model", model, "--mmproj", mmproj, *FAST, home=home, **kw)


def test_75_s_are_cut_at_the_pauses_into_three_segments(long_recording, e_model, audio_mmproj, tmp_path):
    proc = transcribe(long_recording, "--format", "json", home=tmp_path, model=e_model, mmproj=audio_mmproj)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model"] == "gemma4-e.gguf" and out["duration"] == pytest.approx(75.0)
    segments = out["segments"]
    assert len(segments) == 3
    assert segments[0]["start"] == 0 and segments[-1]["end"] == pytest.approx(75.0)
    assert [s["end"] for s in segments[:-1]] == [s["start"] for s in segments[1:]]
    assert 24 < segments[0]["end"] < 26 and 49 < segments[1]["end"] < 51  # in the pauses, not at 30 s / 60 s
    assert all(isinstance(s["text"], str) for s in segments)


def test_srt_cues_are_monotone_and_cover_the_recording(long_recording, e_model, audio_mmproj, tmp_path):
    srt = tmp_path / "talk.srt"
    proc = transcribe(long_recording, "-o", srt, home=tmp_path, model=e_model, mmproj=audio_mmproj)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the transcript went to the file
    text = srt.read_text(encoding="utf-8")
    times = srt_times(text)
    assert len(times) == 3, text  # greedy decoding of the synthetic model says something for every segment
    assert times[0][0] == 0.0 and times[-1][1] == pytest.approx(75.0)
    flat = [t for pair in times for t in pair]
    assert flat == sorted(flat) and all(b - a <= 30 for a, b in times)
    assert [line for line in text.splitlines()[::4]][:3] == ["1", "2", "3"]


@pytest.mark.parametrize("fmt, suffix", [("MP3", "mp3"), ("OGG", "ogg"), ("FLAC", "flac")])
def test_stereo_44k_files_are_resampled(fmt, suffix, e_model, audio_mmproj, tmp_path):
    if fmt not in sf.available_formats():
        skip_or_fail(f"this libsndfile cannot write {fmt}")
    t = np.arange(int(44100 * 1.5)) / 44100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)], axis=1)
    path = tmp_path / f"clip.{suffix}"
    sf.write(path, stereo, 44100, format=fmt)
    proc = transcribe(path, "-f", "json", home=tmp_path, model=e_model, mmproj=audio_mmproj)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["duration"] == pytest.approx(1.5, abs=0.1) and len(out["segments"]) == 1


def test_audio_from_stdin_and_vtt(e_model, audio_mmproj, tmp_path):
    sf.write(tmp_path / "a.wav", 0.2 * np.sin(np.arange(32000) * 2 * np.pi * 300 / 16000), 16000)
    proc = subprocess.run([sys.executable, "-m", "gemma_cli", "transcribe", "-", "--format", "vtt", "--model", e_model,
                           "--mmproj", audio_mmproj, *FAST], input=(tmp_path / "a.wav").read_bytes(),
                          capture_output=True, timeout=120, env=gemma_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n")


def test_translation_keeps_both_texts(e_model, audio_mmproj, tmp_path):
    sf.write(tmp_path / "a.wav", 0.2 * np.sin(np.arange(16000) * 2 * np.pi * 300 / 16000), 16000)
    proc = transcribe(tmp_path / "a.wav", "-l", "ja", "--translate-to", "en", "-f", "json", home=tmp_path,
                      model=e_model, mmproj=audio_mmproj)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["translate_to"] == "en" and out["language"] == "ja"
    assert set(out["segments"][0]) == {"start", "end", "text", "translation"}


@pytest.mark.parametrize("content, needle", [(b"", "is empty (0 bytes)"),
                                             (b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\x00garbage" * 50,
                                              "is not audio gemma can read")])
def test_bad_audio_is_a_one_line_error(e_model, audio_mmproj, tmp_path, content, needle):
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(content)
    proc = transcribe(bad, home=tmp_path, model=e_model, mmproj=audio_mmproj)
    assert_one_line_error(proc, str(bad), needle)


def test_a_text_file_named_mp3_is_one_clean_line(e_model, audio_mmproj, tmp_path):
    """Issue 12 item 13: no decoder noise on stderr, and the reason is the real one."""
    bad = tmp_path / "notes.mp3"
    bad.write_text("These are my meeting notes, not a recording.\n" * 20)
    proc = transcribe(bad, home=tmp_path, model=e_model, mmproj=audio_mmproj)
    assert_one_line_error(proc, str(bad), "is not audio gemma can read")
    noise = [ln for ln in proc.stderr.splitlines() if not ln.startswith(("error:", "hint:"))]
    assert noise == [], proc.stderr  # mpg123's "Note: Illegal Audio-MPEG-Header ..." lines used to leak here
    assert "does not exist" not in proc.stderr and "Error opening" not in proc.stderr


def test_audio_on_a_vision_only_projector(e_model, vision_mmproj, tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(16000), 16000)
    proc = transcribe(tmp_path / "a.wav", home=tmp_path, model=e_model, mmproj=vision_mmproj)
    assert_one_line_error(proc, "has no audio encoder; audio needs E2B, E4B or 12B")


def test_unknown_format_is_a_usage_error(e_model, audio_mmproj, tmp_path):
    proc = transcribe(tmp_path / "whatever.wav", "--format", "docx", home=tmp_path, model=e_model, mmproj=audio_mmproj)
    assert_one_line_error(proc, "unknown --format 'docx'")
    assert proc.returncode == 2


# ---------------------------------------------------------------- prompts and writers


def test_prompts_are_the_model_cards():
    assert transcript.prompt("en").startswith("Transcribe the following speech segment in English into English text.\n"
                                              "Follow these specific instructions for formatting the answer:\n"
                                              "* Only output the transcription, with no newlines.\n")
    assert transcript.prompt(None).startswith("Transcribe the following speech segment in its original language.")
    assert transcript.prompt("ja", "en") == (
        "Transcribe the following speech segment in Japanese, then translate it into English.\n"
        "When formatting the answer, first output the transcription in Japanese, then one newline, "
        "then output the string 'English: ', then the translation in English.")
    assert transcript.messages("X")[0]["content"][0] == {"type": "audio"}  # audio before the text


def test_transcribe_session_forces_thinking_off(e_model, audio_mmproj, tmp_path, monkeypatch):
    # The sessions the command builds think=False: no <|think|>, the prompt ends with the empty thought.
    from gemma_cli.commands.describe import open_for_media
    from gemma_cli.commands.loading import sampling_of
    from gemma_cli.store import config

    monkeypatch.setenv("GEMMA_CONFIG", str(tmp_path / "config.yaml"))
    settings = config.load()
    engine, session_for = open_for_media(settings, e_model, audio_mmproj, None, 512, 1, 0, True, False,
                                         sampling=sampling_of(settings, 0.0, None, None, None), max_tokens=4,
                                         need="audio", draft="off")
    try:
        session = session_for()
        session.messages = transcript.messages("Transcribe this.")
        text = session.prompt_text()
        assert session.think is False and "<|think|>" not in text
        assert text.endswith("<|turn>model\n<|channel>thought\n<channel|>")
    finally:
        engine.close()


def test_split_translation():
    assert transcript.split_translation("こんにちは\nEnglish: Hello", "en") == ("こんにちは", "Hello")
    assert transcript.split_translation("no marker here", "en") == ("no marker here", "")


def test_writers():
    cues = [transcript.Cue(0.0, 24.5, "first words"), transcript.Cue(24.5, 61.25, ""),
            transcript.Cue(61.25, 3725.5, "line\n\ntwo", "deux")]
    cues[2].text = transcript.clean(cues[2].text)
    srt = transcript.to_srt(cues)
    assert srt == ("1\n00:00:00,000 --> 00:00:24,500\nfirst words\n\n"
                   "2\n00:01:01,250 --> 01:02:05,500\nline two\ndeux\n")
    assert transcript.to_vtt(cues).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:24.500\nfirst words\n")
    assert transcript.to_txt(cues) == "first words\nline two\ndeux\n"
    data = json.loads(transcript.to_json(cues, model="m.gguf", source="a.wav", language=None, translate_to="fr",
                                         duration=3725.5))
    assert [s["start"] for s in data["segments"]] == [0.0, 24.5, 61.25] and data["translation"] == "deux"
    assert transcript.timestamp(3599.9995) == "01:00:00,000"


def test_a_progress_bar_on_a_terminal_and_none_in_a_pipe(long_recording, e_model, audio_mmproj, tmp_path):
    import sys

    import pexpect

    args = ["-m", "gemma_cli", "transcribe", str(long_recording), "--model", e_model, "--mmproj", audio_mmproj,
            *FAST, "-o", str(tmp_path / "talk.srt")]
    child = pexpect.spawn(sys.executable, args, env=gemma_env(tmp_path), encoding="utf-8", timeout=120,
                          dimensions=(24, 120))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Transcribing talk.flac" in child.before  # the bar, drawn on the terminal (then cleared)
    piped = transcribe(long_recording, "-o", tmp_path / "piped.srt", home=tmp_path, model=e_model, mmproj=audio_mmproj)
    assert piped.returncode == 0 and "Transcribing" not in piped.stderr and piped.stderr == ""
    assert (tmp_path / "talk.srt").read_text().count(" --> ") == 3
