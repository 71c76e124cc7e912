"""`gemma chat`: one-shot answers (argument or stdin) and the interactive REPL."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gemma_cli.commands import options as opt
from gemma_cli.errors import GemmaError, UsageError

EXAMPLES = """
Examples:

\b
  gemma chat                                     (interactive; /help inside)
  gemma chat "Why is the sky blue?"
  cat notes.txt | gemma chat "Summarise this"
  gemma chat --think "How many r's are in strawberry?"
  gemma chat --tools examples/tools.py "What time is it in Tokyo?"
  gemma chat --schema person.json "Invent a person"      (answer constrained to the schema)
  gemma chat --continue                          (resume the last conversation)
  gemma chat --save "Remember: the code is 42"   (a one-shot kept for --continue)
  gemma chat --load examples/conversation.json --print-prompt
  gemma chat -v clip.mp4 "What happens in this clip?"
  gemma chat --think --think-budget 256 "Plan a 3-day trip to Rome"
  gemma chat --chat-template gemma4-chat-template.jinja --print-prompt "Hi"
"""


@opt.shared("model", "mmproj", "image_tokens", *opt.SAMPLING, *opt.PENALTIES, *opt.MACHINE, *opt.DRAFTING, "as_json",
            "yes", "no_cache", "verbose")
def chat(
    prompt: Annotated[Optional[str], typer.Argument(help="What to ask. Omit it for the interactive chat; piped stdin is read as context.")] = None,
    image: Annotated[Optional[list[str]], typer.Option("--image", "-i", metavar="PATH", help="An image to send with the prompt (repeatable; - reads stdin).")] = None,
    audio: Annotated[Optional[list[str]], typer.Option("--audio", "-a", metavar="PATH", help="An audio clip to send with the prompt (repeatable; over 30 s is cut at pauses).")] = None,
    video: Annotated[Optional[list[str]], typer.Option("--video", "-v", metavar="PATH", help="A video clip to send with the prompt (repeatable; 32 frames at 70 tokens each; - reads stdin).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
    think: Annotated[Optional[bool], typer.Option("--think/--no-think", help="Let the model think before it answers (default off).")] = None,
    hide_thinking: Annotated[bool, typer.Option("--hide-thinking", help="Do not show the thinking.")] = False,
    keep_thinking: Annotated[bool, typer.Option("--keep-thinking", help="Keep the thinking of tool-calling turns in the prompt (templates with preserve_thinking).")] = False,
    think_budget: Annotated[Optional[int], typer.Option("--think-budget", min=0, metavar="N", help="Close the thought after N tokens and answer (as llama.cpp's --reasoning-budget).")] = None,
    chat_template: Annotated[Optional[Path], typer.Option("--chat-template", metavar="FILE", help="Use this Jinja chat template instead of the model's own (as llama.cpp's --chat-template-file).")] = None,
    tools: Annotated[Optional[Path], typer.Option("--tools", help="Tools: a .py file (its functions run after you confirm) or a .json file of declarations (calls are only shown).")] = None,
    schema: Annotated[Optional[Path], typer.Option("--schema", help="JSON Schema file: the answer is constrained to it (thinking stays free).")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="'json': the answer is a JSON object.")] = None,
    grammar: Annotated[Optional[Path], typer.Option("--grammar", help="GBNF grammar file constraining the output (llama.cpp syntax).")] = None,
    load: Annotated[Optional[Path], typer.Option("--load", help="Start from a saved conversation (OpenAI chat JSON).")] = None,
    resume: Annotated[bool, typer.Option("--continue", help="Resume the last conversation.")] = False,
    mcp_config: Annotated[Optional[Path], typer.Option("--mcp-config", metavar="FILE", help="MCP servers from FILE (mcp.json, or a Claude Desktop, Cursor or Gemini CLI settings file) instead of gemma's mcp.json.")] = None,
    mcp: Annotated[Optional[list[str]], typer.Option("--mcp", metavar="NAME", help="Start only this MCP server (repeatable; default: every enabled one).")] = None,
    no_mcp: Annotated[bool, typer.Option("--no-mcp", help="Start no MCP server.")] = False,
    max_tool_rounds: Annotated[int, typer.Option("--max-tool-rounds", min=0, help="Most tool-call rounds per answer.")] = 8,
    print_prompt: Annotated[bool, typer.Option("--print-prompt", help="Print the exact prompt text and exit (loads no weights).")] = False,
    save: Annotated[bool, typer.Option("--save", help="Keep this one-shot exchange for `gemma chat --continue` (the interactive chat, and a one-shot --continue, always are).")] = False,
    *,
    o: opt.Common,
) -> None:
    """Chat with a model: one answer for a prompt, or an interactive chat on a terminal."""
    # lazy: config loads only when the command runs; keeps gemma --help fast
    from gemma_cli.store import config

    settings = config.load()
    # lazy: commands.describe loads only when the command runs; keeps gemma --help fast
    from gemma_cli.commands.describe import check_budget

    check_budget(o.image_tokens)
    # lazy: media loads only when the command runs; keeps gemma --help fast
    from gemma_cli.media.parts import MediaParts

    decoder = MediaParts()  # -i/-a are read and decoded now, before the model loads
    parts = _media_parts(decoder, image, audio, video)  # before stdin is read as text: `-i -` reads it
    prompt, system = _utf8(prompt, "the prompt"), _utf8(system, "--system")
    text, document = _read_input(prompt) if not any(p.get("url") for p in parts) else (prompt, None)
    conv = _start_conversation(load, resume)
    think = think if think is not None else bool(conv.settings.get("think", False))
    _check_thinking_options(think, think_budget, keep_thinking)
    toolbox = _load_tools(tools)
    declarations = toolbox.declarations if toolbox else (conv.tools or None)
    # lazy: commands.loading loads only when the command runs; keeps gemma --help fast
    from gemma_cli.commands import loading

    resolved = loading.resolve(settings, o.model or conv.model, yes=o.yes, mmproj=o.mmproj, gpu_layers=o.gpu_layers,
                               loads=not print_prompt)
    path = resolved.path
    messages = _with_system(conv.messages, system)
    override = None
    if chat_template is not None:
        # lazy: session loads only when the command runs; keeps gemma --help fast
        from gemma_cli.chat.session import read_chat_template

        override = read_chat_template(chat_template)
    if print_prompt:
        return _print_prompt(resolved.header, messages, declarations, think, _with_media(parts, text), decoder, override,
                             keep_thinking)
    if video:
        # lazy: video loads only when the command runs; keeps gemma --help fast
        from gemma_cli.media.video import check_context

        check_context(decoder.videos(parts), resolved.context(settings.pick("ctx", o.ctx)),  # before the model loads
                      resolved.trained_context)
    interactive = text is None and sys.stdin is not None and sys.stdin.isatty()
    # a saved conversation that ends in a tool's result, with no prompt: the model's next turn answers it
    answers_tool = text is None and not parts and not interactive and bool(messages) and messages[-1]["role"] == "tool"
    if text is None and not interactive and not answers_tool:
        raise UsageError("no prompt given and stdin is empty", 'pass a prompt: gemma chat "…"')
    # lazy: the MCP face, only when the chat runs; keeps gemma --help fast
    from gemma_cli.commands import mcp as mcp_face

    host = mcp_face.start(mcp_config, mcp, no_mcp, yes=o.yes)  # the servers start while the model loads

    # lazy: session loads only when the command runs; keeps gemma --help fast
    from gemma_cli.chat.session import ChatSession, format_of_engine

    engine = loading.open_engine(resolved, ctx=settings.pick("ctx", o.ctx), threads=settings.pick("threads", o.threads),
                                 verbose=o.verbose, load_mmproj=bool(parts), image_tokens=o.image_tokens)
    loading.note_context(engine, loading.asked_ctx(settings, o.ctx))
    loading.attach_prompt_cache(engine, settings, not o.no_cache)
    sampling = loading.sampling_of(settings, o.temperature, o.top_p, o.top_k, o.seed, saved=conv.settings,
                                   **opt.given(o, opt.PENALTIES))
    sampling.grammar = _constraint(schema, fmt, grammar)
    session = ChatSession(engine, format_of_engine(engine, override), sampling=sampling, think=think, tools=declarations,
                          max_tokens=settings.pick("max_tokens", o.max_tokens or conv.settings.get("max_tokens")),
                          media=decoder, keep_thinking=keep_thinking, think_budget=think_budget)
    session.messages = messages
    session.documents = [document] if document else []
    for kind in dict.fromkeys(p["type"] for p in parts):
        engine.ensure_projector(kind)  # a model without that encoder says so before anything runs
    loading.attach_draft(engine, resolved, o.draft, o.draft_max)
    confirm = None if o.yes else _confirm
    if host is not None:
        toolbox = mcp_face.ready(host, session, toolbox)  # MCP declarations beside --tools ones, within budget
        confirm = toolbox.confirm(confirm)
    try:
        if interactive:
            return _interactive(session, path, toolbox, confirm, parts, show_thinking=not hide_thinking,
                                max_tool_rounds=max_tool_rounds)
        keep = save or resume  # a one-shot --continue is a turn of the saved conversation
        try:
            _one_shot(session, _with_media(parts, text), toolbox, confirm, max_tool_rounds,
                      show_thinking=not hide_thinking, as_json=o.as_json)
        except SystemExit:  # Ctrl-C: the partial answer is kept too (an error saves nothing)
            if keep:
                _autosave(session, path)
            raise
        if keep:
            _autosave(session, path)
            session.keep()  # the state at the end of this turn, for the next --continue
    finally:
        if host is not None:
            host.close()


def _check_thinking_options(think: bool, think_budget: int | None, keep_thinking: bool) -> None:
    """--think-budget and --keep-thinking do nothing with thinking off: refused, not ignored."""
    inert = [flag for flag, given in (("--think-budget", think_budget is not None),
                                      ("--keep-thinking", keep_thinking)) if given]
    if inert and not think:
        raise UsageError(f"{' and '.join(inert)} {'has' if len(inert) == 1 else 'have'} no effect without --think "
                         "(thinking is off)", "add --think, or drop " + " and ".join(inert))


def _interactive(session, path: Path, toolbox, confirm, parts: list[dict], *, show_thinking: bool,
                 max_tool_rounds: int) -> None:
    # lazy: paths, commands.repl load only when the command runs; keeps gemma --help fast
    from gemma_cli.commands.repl import Repl
    from gemma_cli.store import paths

    if session.format.notice:
        sys.stderr.write(session.format.notice + "\n")
    Repl(session, path.name, toolbox, confirm, show_thinking=show_thinking, autosave=paths.last_conversation(),
         max_tool_rounds=max_tool_rounds, pending_media=parts).run()


def _autosave(session, path: Path) -> None:
    """Keep the one-shot exchange too, so `gemma chat --continue` picks it up."""
    # lazy: conversation, paths load only when the command runs; keeps gemma --help fast
    from gemma_cli.format import conversation
    from gemma_cli.store import paths

    conv = conversation.Conversation(session.messages, session.tools or [], {"think": session.think}, path.name)
    conversation.save(conv, paths.last_conversation())


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    if system is None:
        return list(messages)
    return [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]


def _media_parts(decoder, images: list[str] | None, audios: list[str] | None, videos: list[str] | None = None) -> list[dict]:
    """-i/-a/-v as message parts (media first, as Gemma 4 wants), each decoded now: a bad file fails before the model loads."""
    if sum(1 for s in [*(images or []), *(audios or []), *(videos or [])] if s == "-") > 1:
        raise UsageError("stdin ('-') can hold only one file", "save the others to files")
    kinds = (("image", images or []), ("video", videos or []), ("audio", audios or []))
    return [decoder.attach(kind, source) for kind, sources in kinds for source in sources]


def _with_media(parts: list[dict], text: str | None):
    return parts + [{"type": "text", "text": text}] if parts and text is not None else text


def _utf8(text: str | None, what: str) -> str | None:
    """An argument with bytes that are not UTF-8 (Python keeps them as surrogates): replaced, and said so."""
    if text is None or not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    sys.stderr.write(f"warning: {what} is not valid UTF-8; the undecodable bytes are replaced by \ufffd\n")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read_stdin() -> str:
    """Piped stdin as UTF-8 text; bytes that are not UTF-8 are replaced, with a warning."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        return sys.stdin.read()
    data = stream.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        sys.stderr.write(f"warning: stdin is not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r}); "
                         "the undecodable bytes are replaced by \ufffd\n")
        return data.decode("utf-8", "replace")


def _read_input(prompt: str | None) -> tuple[str | None, str | None]:
    """The user's message: the argument, stdin, or both (stdin as context before the prompt); and the
    piped document in it (its end is a save point of the prompt cache)."""
    piped = None if sys.stdin is None or sys.stdin.isatty() else _read_stdin()
    if piped is not None and not piped.strip():
        piped = None
    if piped and prompt:
        return f"{piped.rstrip()}\n\n{prompt}", piped.rstrip()
    return (prompt, None) if prompt is not None else (piped, None)


def _start_conversation(load: Path | None, resume: bool):
    # lazy: conversation, paths load only when the command runs; keeps gemma --help fast
    from gemma_cli.format import conversation
    from gemma_cli.store import paths

    if load and resume:
        raise UsageError("--load and --continue both name a conversation", "use one of them")
    if load:
        return conversation.load(load)
    if resume:
        last = paths.last_conversation()
        if not last.exists():
            raise GemmaError("there is no earlier conversation to continue", f"it is saved in {last} after a chat")
        return conversation.load(last)
    return conversation.Conversation()


def _load_tools(path: Path | None):
    if path is None:
        return None
    # lazy: tools loads only when the command runs; keeps gemma --help fast
    from gemma_cli.chat import tools

    return tools.load(path)


def _constraint(schema: Path | None, fmt: str | None, grammar: Path | None) -> str | None:
    """The GBNF for --schema/--format json/--grammar (with thinking, it applies after the thought)."""
    if fmt not in (None, "json"):
        raise UsageError(f"unknown --format {fmt!r}", "the only format is 'json' (or use --schema FILE)")
    chosen = [x for x in (schema, fmt, grammar) if x]
    if len(chosen) > 1:
        raise UsageError("--schema, --format and --grammar each constrain the answer", "use one of them")
    if not chosen:
        return None
    if grammar:
        return _read_text(grammar, "grammar")
    return _schema_grammar(schema)


def _schema_grammar(path: Path | None) -> str:
    """The GBNF of a JSON Schema file (None: any JSON object); a schema llama.cpp cannot convert is one line."""
    # lazy: the engine (llama_cpp, numpy), only when a model runs; keeps gemma --help fast
    from gemma_cli.engine.core import schema_to_grammar

    if path is None:
        return schema_to_grammar(None)
    schema = _read_schema(path)
    try:
        return schema_to_grammar(schema)
    except (AssertionError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GemmaError(f"{path} is not a JSON Schema gemma can use: {detail[:200]}",
                         'check its "type" values (object, array, string, number, integer, boolean, null)') from None


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise GemmaError(f"cannot read {what} file {path}: {e.strerror or e}", "check the path") from None
    except UnicodeDecodeError as e:
        raise GemmaError(f"{what} file {path} is not UTF-8 text (byte {e.start})", "save it as UTF-8") from None


def _read_schema(path: Path) -> dict:
    try:
        schema = json.loads(_read_text(path, "schema"))
    except json.JSONDecodeError as e:
        raise GemmaError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})", "a schema is a JSON Schema object") from None
    except RecursionError:
        raise GemmaError(f"{path} is not valid JSON (nested too deeply)", "a schema is a JSON Schema object") from None
    if not isinstance(schema, dict):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(schema), "null")
        raise GemmaError(f"{path} holds a JSON {kind}, not a JSON Schema object",
                         'a schema is an object, for example {"type": "object", "properties": {...}}')
    return schema


def _print_prompt(header, messages: list[dict], tools, think: bool, text, decoder, override=None,
                  keep_thinking: bool = False) -> None:
    # lazy: session loads only when the command runs; keeps gemma --help fast
    from gemma_cli.chat.session import format_of_header

    fmt = format_of_header(header, override)
    if fmt.notice:
        sys.stderr.write(fmt.notice + "\n")
    if text is not None:
        messages = messages + [{"role": "user", "content": text}]
    out = fmt.render(messages, tools, thinking=think, preserve_thinking=keep_thinking)
    if any(isinstance(m.get("content"), list) for m in messages):
        # lazy: media, video load only when the command runs; keeps gemma --help fast
        from gemma_cli.media.parts import prompt_order
        from gemma_cli.media.video import with_frames

        order = prompt_order(messages)  # refuses media the prompt would drop (in the system message)
        if "<|video|>" in out:  # each clip written out as its frames and timestamps, as the model will see it
            out = with_frames(out, decoder.videos(order))
    sys.stdout.write(out)
    sys.stdout.flush()


def _confirm(call: dict) -> bool:
    # lazy: commands.repl loads only when the command runs; keeps gemma --help fast
    from gemma_cli.commands.repl import confirm_on_terminal

    return confirm_on_terminal(call)


def _one_shot(session, text: "str | list | None", toolbox, confirm, max_rounds: int, *, show_thinking: bool,
              as_json: bool) -> None:
    """One answer (`text` None: the model's next turn after the loaded history, which ends in a tool's result)."""
    # lazy: reply, render, session load only when the command runs; keeps gemma --help fast
    from gemma_cli.chat.session import Done, ToolRun, converse
    from gemma_cli.format import reply
    from gemma_cli.render import StreamPrinter

    printer = StreamPrinter(show_thinking=show_thinking and not as_json)
    if session.format.notice:
        printer.note(session.format.notice)
    results, runs = [], []
    events = converse(session, session.answer() if text is None else session.send(text), toolbox, confirm, max_rounds)
    try:
        for event in events:
            if isinstance(event, Done):
                results.append(event.result)
            elif isinstance(event, ToolRun):
                runs.append(event)
                if not as_json:
                    printer.note(f"  {'result' if event.approved else 'not run'}: {json.dumps(event.result, ensure_ascii=False, default=str)[:200]}")
            elif as_json:
                continue
            elif isinstance(event, reply.Thinking):
                printer.thinking(event.text)
            elif isinstance(event, reply.Answer):
                printer.answer(event.text)
            elif isinstance(event, reply.ToolCall):
                printer.note(f"→ {event.name}({json.dumps(event.arguments, ensure_ascii=False)})"
                             + (f"  (repaired: {'; '.join(event.repairs)})" if event.repairs else ""))
    except KeyboardInterrupt:
        events.close()
        printer.finish()
        partial = session.last_result
        if partial is not None and partial.interrupted and all(partial is not r for r in results):
            results.append(partial)
        if as_json and results:
            _write_json(session, results, runs)
        sys.stderr.write("interrupted: the answer so far is " + ("in the JSON" if as_json else "above") + "\n")
        raise SystemExit(130) from None
    finally:
        events.close()
    printer.finish()
    if not results:
        return
    last = results[-1]
    if as_json:
        _write_json(session, results, runs)
    if last.thought_only:
        fix = "raise --ctx" if last.stats.limit == "context" else "raise --max-tokens"
        printer.note(f"the model used all its tokens thinking and gave no answer: {fix}, "
                     "set --think-budget N, or use --no-think")
    elif last.stats.limit == "context":
        # lazy: the engine (llama_cpp), loaded already by the model that answered
        from gemma_cli.engine.core import context_hint

        engine = session.engine
        printer.note(f"the answer was cut off: the context of {engine.n_ctx} tokens is full; "
                     + context_hint(engine.n_ctx, engine.info.n_ctx_train, "ask for a shorter answer"))


def _write_json(session, results: list, runs: list) -> None:
    out = _as_json(results, runs, session.engine.draft, session.think_budget if session.think else None)
    out["stats"]["template"] = session.format.template_name
    sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _as_json(results: list, runs: list, drafter=None, think_budget: int | None = None) -> dict:
    # lazy: commands.loading, commands.mcp load only when the command runs; keeps gemma --help fast
    from gemma_cli.commands import mcp as mcp_face
    from gemma_cli.commands.loading import draft_stats

    last = results[-1]
    s = last.stats
    return {
        "answer": "".join(r.answer for r in results),
        "thinking": "".join(r.thinking for r in results),
        "tool_calls": [{"name": c.name, "arguments": c.arguments, **({"repairs": c.repairs} if c.repairs else {})}
                       for r in results for c in r.tool_calls],
        "tool_results": [mcp_face.json_of(t) for t in runs],
        "errors": [e for r in results for e in r.errors],
        "stats": {
            "prompt_tokens": sum(r.stats.prompt_tokens for r in results),
            "reused_tokens": sum(r.stats.reused_tokens for r in results),
            "generated_tokens": sum(r.stats.generated_tokens for r in results),
            "disk_cached_tokens": sum(r.stats.disk_tokens for r in results),  # restored from the prompt cache
            "ttft_s": round(results[0].stats.ttft, 4),
            "tokens_per_s": round(s.tps, 2),
            "finish_reason": s.finish_reason,
            "limit": s.limit,  # with "length": what ran out, "max_tokens" or "context"
            "ended_in_thought": last.ended_in_thought,
            "think_budget": think_budget,  # the thought's token budget in force (null: none)
            **draft_stats(drafter),
        },
    }


def register(app: typer.Typer) -> None:
    app.command("chat", epilog=EXAMPLES)(chat)
