"""Prompt building per turn for a 20-turn conversation with tools: gemma's builder vs jinja2.

Each turn, a chat re-renders the whole conversation (it is how the KV cache finds what changed),
so the cost per turn is one render of everything so far. For each known template variant this
times `prompt.render` over turns 1..20 (a user question, a tool call, its result and an answer
per turn, three tools declared, thinking on) against jinja2's sandboxed render of the same
template (what transformers and llama-cpp-python do), with the compile cached as they cache it.
Target: under 2 ms per turn for the builder.

    python bench/prompt_build.py [--repeat 20]     (jinja2 side needs ../shared/reference)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gemma_cli.format import prompt  # noqa: E402
from tests.reference import FILES, REFERENCE  # noqa: E402 - one home: the tests' reference list


def tool(name: str, props: dict) -> dict:
    return {"type": "function", "function": {"name": name, "description": f"The {name} tool.",
                                             "parameters": {"type": "object", "properties": props, "required": list(props)[:1]}}}


TOOLS = [
    tool("get_weather", {"city": {"type": "string", "description": "City"}, "unit": {"type": "string", "enum": ["c", "f"]}}),
    tool("search", {"query": {"type": "string"}, "limit": {"type": "integer", "nullable": True}}),
    tool("book", {"legs": {"type": "array", "items": {"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}}}},
                  "options": {"type": "object", "properties": {"seat": {"type": "string"}}}}),
]


def conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are a helpful travel assistant. Be brief."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i}: what is the weather in city number {i}, and should I go?"})
        call_id = f"call_{i}"
        messages.append({"role": "assistant", "content": "", "reasoning_content": f"I should check city {i}.",
                         "tool_calls": [{"id": call_id, "type": "function",
                                         "function": {"name": "get_weather", "arguments": {"city": f"City {i}", "unit": "c"}}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "content": f'{{"temp": {10 + i}, "sky": "clear"}}'})
        messages.append({"role": "assistant", "content": f"It is {10 + i} degrees and clear in City {i}: a fine day to go."})
    return messages


def per_turn(render, turns: int, repeat: int) -> float:
    """Median seconds of the 20 renders a 20-turn chat does (one per turn), divided by the turns."""
    totals = []
    # Turn t's prompt: the history so far, ending at the tool result the model answers next.
    convs = [conversation(t)[:-1] for t in range(1, turns + 1)]
    for _ in range(repeat):
        t = time.perf_counter()
        for messages in convs:
            render(messages)
        totals.append(time.perf_counter() - t)
    return statistics.median(totals) / turns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--turns", type=int, default=20)
    args = ap.parse_args()
    print(f"prompt building per turn, {args.turns}-turn conversation with {len(TOOLS)} tools, thinking on "
          f"(median of {args.repeat})")
    print(f"{'template':22} {'gemma builder':>14} {'jinja2 sandbox':>15} {'ratio':>7}")
    worst = 0.0
    for name, variant in prompt.VARIANTS.items():
        ours = per_turn(lambda m: prompt.render(m, TOOLS, thinking=True, variant=variant), args.turns, args.repeat)
        worst = max(worst, ours)
        path = REFERENCE / FILES[name]
        if path.is_file():
            from gemma_cli.format.template import render_template

            source = path.read_text(encoding="utf-8")
            theirs = per_turn(lambda m: render_template(source, m, bos="<bos>", eos="<eos>", tools=TOOLS,
                                                        enable_thinking=True), args.turns, args.repeat)
            print(f"{name:22} {ours * 1000:11.3f} ms {theirs * 1000:12.3f} ms {ours / theirs:7.2f}")
        else:
            print(f"{name:22} {ours * 1000:11.3f} ms {'(no reference)':>15}")
    print(f"slowest builder variant: {worst * 1000:.3f} ms per turn (target < 2 ms): {'OK' if worst < 0.002 else 'OVER'}")


if __name__ == "__main__":
    main()
