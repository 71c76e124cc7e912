"""Start-up time of `gemma --help` vs the floor any Typer + Rich app pays.

Runs interleaved so noise hits both alike; prints the ratio of medians last (target <= 1.3).

    python bench/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

FLOOR = [sys.executable, "-c", "import typer, rich.console"]
GEMMA = [sys.executable, "-m", "gemma_cli", "--help"]


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    wall(GEMMA), wall(FLOOR)  # warm the file cache
    floor, gemma = [], []
    for _ in range(args.runs):
        floor.append(wall(FLOOR))
        gemma.append(wall(GEMMA))
    f, g = statistics.median(floor), statistics.median(gemma)
    print(f"median of {args.runs}: import typer, rich.console {f * 1000:.0f} ms; gemma --help {g * 1000:.0f} ms")
    print(f"ratio gemma/floor = {g / f:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
