"""`gemma chat`: one-shot answers (argument or stdin) and the interactive REPL."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from gemma_cli import options as opt
from gemma_cli.errors import UsageError

EXAMPLES = """
[b]Examples[/b]

  gemma chat "Why is the sky blue?"
  cat notes.txt | gemma chat "Summarise this"
  gemma chat --think "How many r's are in strawberry?"
  gemma chat -m ./gemma-4-E4B-it-Q4_K_M.gguf --temperature 0 "Hello" --json
  gemma chat "Hi" --print-prompt        (show the exact prompt; loads no weights)
"""


def chat(
    prompt: Annotated[Optional[str], typer.Argument(help="What to ask. Omit it for the interactive chat; stdin is read as context.")] = None,
    model: opt.Model = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
    think: Annotated[bool, typer.Option("--think/--no-think", help="Let the model think before it answers.")] = False,
    hide_thinking: Annotated[bool, typer.Option("--hide-thinking", help="Do not show the thinking.")] = False,
    max_tokens: opt.MaxTokens = None,
    temperature: opt.Temperature = None,
    top_p: opt.TopP = None,
    top_k: opt.TopK = None,
    seed: opt.Seed = None,
    ctx: opt.Ctx = None,
    threads: opt.Threads = None,
    gpu_layers: opt.GpuLayers = None,
    print_prompt: Annotated[bool, typer.Option("--print-prompt", help="Print the exact prompt text and exit (loads no weights).")] = False,
    as_json: opt.Json = False,
    yes: opt.Yes = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's log on stderr.")] = False,
) -> None:
    """Chat with a model: one answer for a prompt, or an interactive chat."""
    from gemma_cli import config

    settings = config.load()
    text = _read_input(prompt)
    sampling = _sampling(settings, temperature, top_p, top_k, seed)
    path = _locate(settings.pick("model", model), yes)
    if print_prompt:
        return _print_prompt(path, system, think, text)
    if text is None:
        raise UsageError("no prompt given and stdin is not a terminal", 'pass a prompt: gemma chat "…"')
    from gemma_cli.commands.loading import open_engine
    from gemma_cli.session import ChatSession, format_for

    engine = open_engine(path, ctx=settings.pick("ctx", ctx), threads=settings.pick("threads", threads),
                         gpu_layers=settings.pick("gpu_layers", gpu_layers), verbose=verbose)
    info = engine.info
    fmt = format_for(info.architecture, info.chat_template, info.bos, info.eos,
                     bool(info.meta.get("tokenizer.ggml.add_bos_token", True)))
    session = ChatSession(engine, fmt, sampling=sampling, max_tokens=settings.pick("max_tokens", max_tokens),
                          think=think, system=system)
    _one_shot(session, text, show_thinking=not hide_thinking, as_json=as_json)


def _read_input(prompt: str | None) -> str | None:
    """The user's message: the argument, stdin, or both (stdin as context before the prompt)."""
    piped = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    if piped is not None and not piped.strip():
        piped = None
    if piped and prompt:
        return f"{piped.rstrip()}\n\n{prompt}"
    return prompt if prompt is not None else piped


def _sampling(settings, temperature, top_p, top_k, seed):
    from gemma_cli.engine import Sampling

    return Sampling(
        temperature=settings.pick("temperature", temperature),
        top_p=settings.pick("top_p", top_p),
        top_k=settings.pick("top_k", top_k),
        seed=settings.pick("seed", seed),
    )


def _locate(model, yes):
    from gemma_cli.commands.loading import locate_path

    return locate_path(model, yes=yes)


def _print_prompt(path, system, think, text) -> None:
    from gemma_cli.gguf_header import read_header
    from gemma_cli.session import format_of_header

    fmt = format_of_header(read_header(path))
    messages = [{"role": "system", "content": system}] if system else []
    if text is not None:
        messages.append({"role": "user", "content": text})
    sys.stdout.write(fmt.render(messages, thinking=think))
    sys.stdout.flush()


def _one_shot(session, text: str, *, show_thinking: bool, as_json: bool) -> None:
    from gemma_cli import reply
    from gemma_cli.render import StreamPrinter
    from gemma_cli.session import Done

    printer = StreamPrinter(show_thinking=show_thinking and not as_json)
    if session.format.notice:
        printer.note(session.format.notice)
    result = None
    events = session.send(text)
    try:
        for event in events:
            if isinstance(event, Done):
                result = event.result
            elif as_json:
                continue
            elif isinstance(event, reply.Thinking):
                printer.thinking(event.text)
            elif isinstance(event, reply.Answer):
                printer.answer(event.text)
            elif isinstance(event, reply.ToolCall):
                printer.note(f"tool call: {event.name}({json.dumps(event.arguments, ensure_ascii=False)})")
    finally:
        events.close()
    printer.finish()
    if result is None:
        return
    if as_json:
        sys.stdout.write(json.dumps(_as_json(result), ensure_ascii=False) + "\n")
    elif result.thought_only:
        printer.note("the model used all its tokens thinking and gave no answer: raise --max-tokens or use --no-think")


def _as_json(result) -> dict:
    s = result.stats
    return {
        "answer": result.answer,
        "thinking": result.thinking,
        "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in result.tool_calls],
        "errors": result.errors,
        "stats": {
            "prompt_tokens": s.prompt_tokens,
            "reused_tokens": s.reused_tokens,
            "generated_tokens": s.generated_tokens,
            "ttft_s": round(s.ttft, 4),
            "tokens_per_s": round(s.tps, 2),
            "finish_reason": s.finish_reason,
        },
    }


def register(app: typer.Typer) -> None:
    app.command("chat", epilog=EXAMPLES)(chat)
