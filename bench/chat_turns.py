"""Follow-up turns: prompt tokens evaluated and time to first token, gemma vs llama-cpp-python.

A 10-turn conversation on the same GGUF (the synthetic Gemma 4 E-style test model with its
vision projector, written by tests/synthetic.py): gemma's ChatSession (KV reuse with SWA
checkpoints) beside `Llama.create_chat_completion` with llama-cpp-python's
`Gemma4ChatHandler`. "New tokens" of a turn are the prompt's tokens after its longest common
prefix with what the previous turn left in the context (its prompt + generated tokens): the
least any prefix cache must evaluate. They include the last answer again, because the
official template writes it back without the empty thought block the generation prompt had,
so it sits at other positions. Prints the worst gemma/new ratio last (target <= 1.05).

    python bench/chat_turns.py [--turns 10] [--max-tokens 24]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTIONS = [
    "Hello! Who are you?", "Tell me about the sea.", "Why is it salty?", "How deep is it?",
    "What lives at the bottom?", "Do they see light?", "How do they find food?", "Name three of them.",
    "Which is the largest?", "Thanks, summarise our talk.",
]


def write_models(folder: Path) -> tuple[Path, Path]:
    from tests import synthetic

    model, mmproj = folder / "model.gguf", folder / "mmproj.gguf"
    synthetic.write_text_model(model, kind="e")
    synthetic.write_vision_projector(mmproj, synthetic.text_spec("e").n_embd)
    return model, mmproj


def run_gemma(model: Path, turns: int, max_tokens: int, ctx: int) -> list[tuple[int, int, float]]:
    from gemma_cli.chat.session import ChatSession, format_for
    from gemma_cli.engine import Engine, Sampling

    engine = Engine(model, n_ctx=ctx, n_threads=2)
    fmt = format_for("gemma4", None, "<bos>", "<eos>")
    session = ChatSession(engine, fmt, sampling=Sampling(temperature=0), max_tokens=max_tokens)
    rows, context = [], []
    for q in QUESTIONS[:turns]:
        session.messages.append({"role": "user", "content": q})
        prompt = engine.tokenize(session.prompt_text())
        shared = next((i for i, (a, b) in enumerate(zip(context, prompt)) if a != b), min(len(context), len(prompt)))
        steps = list(session.generate())
        result = steps[-1].result
        rows.append((len(prompt) - shared, result.stats.prompt_tokens, result.stats.ttft))
        context = engine.kv.contents()
    engine.close()
    return rows


def run_llama_cpp(model: Path, mmproj: Path, turns: int, max_tokens: int, ctx: int) -> list[tuple[int, float]]:
    import llama_cpp
    from llama_cpp.llama_chat_format import Gemma4ChatHandler

    from gemma_cli.engine.core import avoid_amx

    avoid_amx()  # load weights as the engine does (llama.cpp's AMX matmul crashes)

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=ctx, n_threads=2, n_threads_batch=2, verbose=False,
                          chat_handler=Gemma4ChatHandler(clip_model_path=str(mmproj), verbose=False))
    messages, rows = [], []
    for q in QUESTIONS[:turns]:
        messages.append({"role": "user", "content": q})
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        t0 = time.perf_counter()
        ttft, text = None, ""
        with contextlib.redirect_stdout(io.StringIO()):  # the handler prints each prompt it builds
            for chunk in llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0, stream=True):
                delta = chunk["choices"][0]["delta"].get("content") or ""
                if ttft is None and delta:
                    ttft = time.perf_counter() - t0
                text += delta
        perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
        rows.append((perf.n_p_eval, ttft or time.perf_counter() - t0))
        messages.append({"role": "assistant", "content": text})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--ctx", type=int, default=4096)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, mmproj = write_models(Path(tmp))
        ours = run_gemma(model, args.turns, args.max_tokens, args.ctx)
        theirs = run_llama_cpp(model, mmproj, args.turns, args.max_tokens, args.ctx)
    print(f"{'turn':>4} {'new':>6} {'gemma eval':>10} {'gemma ttft':>11} {'l-c-p eval':>10} {'l-c-p ttft':>11}")
    worst = 0.0
    for i, ((new, ev, ttft), (lev, lttft)) in enumerate(zip(ours, theirs), 1):
        worst = max(worst, ev / new)
        print(f"{i:>4} {new:>6} {ev:>10} {ttft * 1000:>9.1f}ms {lev:>10} {lttft * 1000:>9.1f}ms")
    print(f"total evaluated: gemma {sum(r[1] for r in ours)}, llama-cpp-python {sum(r[0] for r in theirs)}")
    print(f"worst turn: gemma evaluates {worst:.2f}x the new tokens (target <= 1.05)")


if __name__ == "__main__":
    main()
