"""`gemma cache list|clear|path`: the prompt cache on disk (engine.disk)."""

from __future__ import annotations

import json
import sys
import time

import typer

from gemma_cli.commands import options as opt

EXAMPLES = """
Examples:

\b
  gemma cache list
  gemma cache list --json
  gemma cache clear
  gemma cache path
  gemma chat --no-cache "…"                      (one call without it)
  gemma config set prompt_cache_mb 1000          (its cap; 0 turns it off)
"""


def _cache():
    # lazy: the engine's cache and the store's folder, only when the command runs
    from gemma_cli.engine.disk import PromptCache
    from gemma_cli.store import config, paths

    mb = config.load().pick("prompt_cache_mb", None)
    return PromptCache(paths.prompt_cache_dir(), cap=None if mb is None else mb * 1000**2)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def list_cmd(as_json: opt.Json = False) -> None:
    """The cached prompt states: size, model, tokens, hits, last use; most recent first."""
    cache = _cache()
    entries = cache.entries()
    total = sum(e.size for e in entries)
    if as_json:
        print(json.dumps({"path": str(cache.folder), "cap_bytes": cache.cap, "bytes": total, "entries": [
            {"name": e.name, "bytes": e.size, "model": e.model, "tokens": e.n_tokens, "hits": e.hits,
             "last_used": e.used, "created": e.created} for e in entries]}, indent=2))
        return
    print(f"# {cache.folder}: {len(entries)} entries, {_size(total)} of {_size(cache.cap)}")
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.used))
        print(f"{e.name[:12]}  {_size(e.size):>9}  {e.n_tokens:>7} tokens  {e.hits:>4} hits  {used}  {e.model}")


def clear() -> None:
    """Remove every cached prompt state."""
    cache = _cache()
    count, size = cache.clear()
    sys.stderr.write(f"removed {count} entries ({_size(size)}) from {cache.folder}\n")


def path_cmd() -> None:
    """Print the prompt cache's folder (it need not exist yet)."""
    from gemma_cli.store import paths  # lazy: keeps `gemma --help` fast

    print(paths.prompt_cache_dir())


def register(app: typer.Typer) -> None:
    sub = typer.Typer(name="cache", help="The prompt cache on disk: list, clear, path.", no_args_is_help=True,
                      rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
    sub.command("list", epilog=EXAMPLES)(list_cmd)
    sub.command("clear", epilog=EXAMPLES)(clear)
    sub.command("path", epilog=EXAMPLES)(path_cmd)
    app.add_typer(sub, name="cache")
