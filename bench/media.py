"""Media costs: image encode time per visual token budget, and how much of a transcription runs outside llama.cpp.

1. Images: a 1024x768 photo through the vision projector at budgets 70, 280 and 1120; time to
   preprocess (mtmd_tokenize: resize, patches) and to the first token (encode + decode + 1 step).
2. Transcription: `gemma transcribe`'s own code on a 5-minute 44.1 kHz stereo FLAC, with every
   llama.cpp entry point timed; the rest (reading, downmixing, resampling, cutting, prompts,
   sessions) is "outside llama.cpp". Target: under 5 % of the transcription time.
3. Voice activity (issue 14): 5 minutes of espeak-ng speech with 30 % silence, transcribed with
   Silero VAD and with the energy cutter: the share of the audio sent to the model (target: at
   most the speech share + 10 %) and the wall time of each.

Without --model/--mmproj it runs on the tiny synthetic Gemma 4 models of tests/synthetic.py:
their encoders do almost no work, so the outside share there is an upper bound; with real
E2B/E4B weights llama.cpp's share grows by orders of magnitude and the outside time stays.

    python bench/media.py [--model GGUF --mmproj GGUF] [--seconds 300] [--threads 2] [--only-vad]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic_models(folder: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    import synthetic

    files = synthetic.write_all(folder, chat_template=None)
    return files["e_model"], files["av_mmproj"]


def photo(w: int = 1024, h: int = 768):
    import numpy as np

    from gemma_cli.engine.projector import Media

    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 127 // (w + h))], axis=-1).astype(np.uint8)
    return Media.image(rgb.tobytes(), w, h, "photo.png")


def bench_images(model: Path, mmproj: Path, threads: int) -> None:
    from gemma_cli.engine import Engine, Sampling

    print("image 1024x768          tokens   preprocess   to first token (encode + decode)")
    prompt = "<bos><|turn>user\n<|image|>Describe this image.<turn|>\n<|turn>model\n"
    for budget in (70, 280, 1120):
        with Engine(model, n_ctx=4096, n_threads=threads, mmproj=mmproj, image_tokens=budget) as engine:
            image = photo()
            t0 = time.perf_counter()
            n = engine.media.span(image).media_tokens
            pre = time.perf_counter() - t0
            best = float("inf")
            for _ in range(2):
                engine.reset()
                engine.media.release(engine.media.span(image))  # measure a fresh preprocess + encode each round
                steps = list(engine.stream_generate(prompt, media=[image], max_tokens=1, sampling=Sampling(temperature=0)))
                best = min(best, steps[-1].ttft)
            print(f"  budget {budget:>4}            {n:>6}   {pre * 1000:8.1f} ms   {best * 1000:8.1f} ms")


class Timer:
    """Wraps C entry points: time inside llama.cpp, by function."""

    def __init__(self):
        self.inside: dict[str, float] = {}

    def wrap(self, module, name: str, bucket: str) -> None:
        real = getattr(module, name)

        @functools.wraps(real)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.inside[bucket] = self.inside.get(bucket, 0.0) + time.perf_counter() - t0

        setattr(module, name, timed)


def bench_transcription(model: Path, mmproj: Path, seconds: int, threads: int, max_tokens: int, folder: Path) -> None:
    import llama_cpp as ll
    import llama_cpp.mtmd_cpp as mtmd
    import numpy as np
    import soundfile as sf

    import gemma_cli.media.audio as audio_module
    import gemma_cli.transcription.job as job_module
    from gemma_cli.commands.transcribe import transcribe

    # 5 minutes of "speech": tones and noise bursts with pauses every 8-20 s, stereo 44.1 kHz FLAC.
    rate, rng = 44100, np.random.default_rng(0)
    pieces, total = [], 0
    while total < seconds * rate:
        n = int(rng.uniform(8, 20) * rate)
        t = np.arange(n) / rate
        pieces.append(0.3 * np.sin(2 * np.pi * rng.uniform(120, 400) * t) * (1 + 0.3 * rng.standard_normal(n)))
        gap = int(rng.uniform(0.3, 1.5) * rate)
        pieces.append(0.003 * rng.standard_normal(gap))
        total += n + gap
    mono = np.concatenate(pieces)[: seconds * rate].astype(np.float32)
    audio = folder / "talk.flac"
    sf.write(audio, np.stack([mono, 0.8 * mono], axis=1), rate)

    timer = Timer()
    for name in ("llama_model_load_from_file", "llama_init_from_model"):
        timer.wrap(ll, name, "load model")
    timer.wrap(mtmd, "mtmd_init_from_file", "load model")
    for name in ("llama_decode", "llama_sampler_sample", "llama_tokenize", "llama_token_to_piece"):
        timer.wrap(ll, name, "text")
    timer.wrap(mtmd, "mtmd_tokenize", "audio preprocess (mel)")
    timer.wrap(mtmd, "mtmd_helper_eval_chunk_single", "audio encode + decode")
    outside: dict[str, float] = {}
    for module, name, label in ((audio_module, "load_audio", "read + downmix + resample"),
                                (job_module, "cut", "find the pauses")):
        real = getattr(module, name)

        def timed(*a, _real=real, _label=label, **k):
            t0 = time.perf_counter()
            try:
                return _real(*a, **k)
            finally:
                outside[_label] = outside.get(_label, 0.0) + time.perf_counter() - t0

        setattr(module, name, timed)

    out = folder / "talk.json"
    t0 = time.perf_counter()
    transcribe(audio=str(audio), language="en", translate_to=None, fmt="json", output=out, model=str(model),
               mmproj=mmproj, max_tokens=max_tokens, temperature=None, top_p=None, top_k=None, seed=None, ctx=4096,
               threads=threads, gpu_layers=None, draft="off", draft_max=None, yes=True, verbose=False,  # no drafter
               vad=False)  # tones, not speech: the energy cutter's whole-recording path
    wall = time.perf_counter() - t0

    import json

    segments = json.loads(out.read_text())["segments"]
    load = timer.inside.pop("load model", 0.0)
    work = wall - load  # loading the model is a fixed cost, not part of transcribing the file
    inside = sum(timer.inside.values())
    rest = work - inside
    print(f"\ntranscription of {seconds} s (44.1 kHz stereo FLAC) -> {len(segments)} segments "
          f"of {min(s['end'] - s['start'] for s in segments):.1f}-{max(s['end'] - s['start'] for s in segments):.1f} s, "
          f"<= {max_tokens} tokens each")
    print(f"  model + projector load (excluded)       {load:7.3f} s")
    for label, t in sorted(timer.inside.items(), key=lambda kv: -kv[1]):
        print(f"  llama.cpp: {label:<28} {t:7.3f} s")
    for label, t in outside.items():
        print(f"  outside:   {label:<28} {t:7.3f} s")
    print(f"  outside:   prompts, sessions, parsing    {rest - sum(outside.values()):7.3f} s")
    print(f"  total {work:.3f} s: llama.cpp {inside:.3f} s, outside {rest:.3f} s = {100 * rest / work:.1f} % "
          f"(target < 5 %)")


def speech_recording(seconds: int, silence_share: float, seed: int = 0):
    """`seconds` of 16 kHz audio: espeak-ng sentences (tests/data) with pauses of 0.5-6 s making up
    `silence_share` of it. Returns (samples, seconds of inserted silence)."""
    import numpy as np

    from gemma_cli.media.audio import load_audio

    rng = np.random.default_rng(seed)
    voices = [load_audio(ROOT / "tests" / "data" / n).samples for n in ("speech-short.flac", "speech-long.flac")]
    rate, pieces, spoken, quiet = 16000, [], 0.0, 0.0
    while spoken + quiet < seconds:
        v = voices[int(rng.integers(len(voices)))]
        pieces.append(v)
        spoken += len(v) / rate
        # keep the silence at its share: what the speech so far calls for, in pauses of 0.5-6 s
        want = spoken * silence_share / (1 - silence_share) - quiet
        gap = float(np.clip(want, 0.5, 6.0)) if want > 0.25 else 0.3
        pieces.append(np.zeros(int(gap * rate), np.float32))
        quiet += gap
    samples = np.concatenate(pieces)[: seconds * rate].astype(np.float32)
    return samples, quiet - max(0.0, spoken + quiet - seconds)


def bench_vad(model: Path, mmproj: Path, seconds: int, threads: int, max_tokens: int, folder: Path,
              rounds: int = 2) -> None:
    """Issue 14: the share of a recording sent to the model and the wall time, VAD against the energy cutter."""
    import json

    import soundfile as sf

    from gemma_cli.commands.transcribe import transcribe

    samples, silent = speech_recording(seconds, 0.30)
    audio = folder / "speech.flac"
    sf.write(audio, samples, 16000)
    duration = len(samples) / 16000
    rows, walls = {}, {}
    runs = [("energy cutter (--no-vad)", False), ("Silero VAD (--vad)", True)] * rounds  # interleaved: noisy machines
    for label, vad in runs:
        out = folder / f"vad-{vad}.json"
        t0 = time.perf_counter()
        transcribe(audio=str(audio), language="en", translate_to=None, fmt="json", output=out, model=str(model),
                   mmproj=mmproj, max_tokens=max_tokens, temperature=None, top_p=None, top_k=None, seed=None,
                   ctx=4096, threads=threads, gpu_layers=None, draft="off", draft_max=None, yes=True, verbose=False,
                   vad=vad, vad_threshold=0.5, max_cue=7.0)
        wall = walls[label] = min(walls.get(label, float("inf")), time.perf_counter() - t0)
        data = json.loads(out.read_text())
        sent = data["vad"]["sent_seconds"] if vad else duration
        longest = max(c["end"] - c["start"] for c in data["cues"])
        rows[label] = (sent / duration, wall, len(data["segments"]), len(data["cues"]), longest)
        print(f"  ... {label}: {time.perf_counter() - t0:.2f} s", flush=True)
    speech_share = 1 - silent / duration
    print(f"\n{duration:.0f} s of espeak-ng speech with {100 * silent / duration:.0f} % inserted silence "
          f"(speech share {speech_share:.2f}; the sentences' own pauses are speech here)")
    print(f"                            audio sent   wall time (best of {rounds})   requests   cues   longest cue")
    for label, (share, wall, requests, cues, longest) in rows.items():
        print(f"  {label:<26} {share:9.2f}   {wall:18.2f} s   {requests:8d}   {cues:4d}   {longest:8.1f} s")
    (vs, vw, *_), (cs, cw, *_) = rows["Silero VAD (--vad)"], rows["energy cutter (--no-vad)"]
    print(f"  audio sent with VAD: {vs:.2f} of the recording (target <= speech share + 0.10 = "
          f"{speech_share + 0.10:.2f}); wall time VAD / cutter = {vw / cw:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--mmproj", type=Path, help="a projector with vision and audio (E2B/E4B mmproj)")
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=96, help="per segment (30 s of speech is ~80-100 tokens)")
    ap.add_argument("--only-vad", action="store_true", help="only the voice activity part (3.)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, mmproj = (args.model, args.mmproj) if args.model else synthetic_models(folder)
        print(f"model {model.name}, projector {mmproj.name}, {args.threads} threads\n")
        if not args.only_vad:
            bench_images(model, mmproj, args.threads)
            bench_transcription(model, mmproj, args.seconds, args.threads, args.max_tokens, folder)
        bench_vad(model, mmproj, args.seconds, args.threads, args.max_tokens, folder)


if __name__ == "__main__":
    main()
