"""`gemma config path|show|set|unset`: the YAML settings file."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from gemma_cli.commands import options as opt

EXAMPLES = """
Examples:

\b
  gemma config path
  gemma config show
  gemma config set model 31b:q8_0
  gemma config set temperature 0.7
  gemma config set model_dir /data/models
  gemma config set gpu_layers -1                 (-1: all layers on the GPU)
  gemma config unset temperature

Precedence: flags > GEMMA_<KEY> environment (GEMMA_TEMPERATURE=0.7) > this file > defaults.
"""

Key = Annotated[str, typer.Argument(help="A setting: model, quantization, ctx, threads, gpu_layers, temperature, top_p, top_k, seed, min_p, repeat_penalty, presence_penalty, frequency_penalty, max_tokens, prompt_cache_mb, model_dir, endpoint.")]


def path_cmd() -> None:
    """Print the config file's path (it need not exist yet)."""
    from gemma_cli.store import config  # lazy: keeps `gemma --help` fast

    print(config.path())


def show(as_json: opt.Json = False) -> None:
    """Show every setting, its value and where it comes from."""
    from gemma_cli.store import config  # lazy: keeps `gemma --help` fast

    settings = config.load()
    if as_json:
        print(json.dumps({"file": str(settings.file),
                          "settings": {k: {"value": settings.get(k), "source": settings.source(k)} for k in config.KEYS}},
                         indent=2))
        return
    width = max(map(len, config.KEYS))
    out = [f"# {settings.file}" + ("" if settings.file.exists() else " (not created yet)")]
    for k, spec in config.KEYS.items():
        value = settings.get(k)
        shown = "null" if value is None else value
        out.append(f"{k + ':':<{width + 1}} {shown!s:<12} # {settings.source(k)}: {spec.help}")
    print("\n".join(out))


def set_cmd(key: Key, value: Annotated[str, typer.Argument(help="The value ('null' clears it back to the default).")]) -> None:
    """Set one setting in the config file (validated first)."""
    from gemma_cli.store import config  # lazy: keeps `gemma --help` fast

    file, parsed = config.set_value(key, value)
    sys.stderr.write(f"{key} = {'null' if parsed is None else parsed}  ({file})\n")
    _still_wrong(file)
    env = config.env_name(key)
    if os.environ.get(env) is not None:
        sys.stderr.write(f"note: {env} is set in the environment and takes precedence\n")


def unset(key: Key) -> None:
    """Remove one setting from the config file (back to its default)."""
    from gemma_cli.store import config  # lazy: keeps `gemma --help` fast

    file = config.unset(key)
    sys.stderr.write(f"{key} removed ({file})\n")
    _still_wrong(file)


def _still_wrong(file) -> None:
    from gemma_cli.store import config  # lazy: keeps `gemma --help` fast

    left = config.problem(file)
    if left:
        sys.stderr.write(f"warning: the file still has a problem: {left}\n")


def register(app: typer.Typer) -> None:
    sub = typer.Typer(name="config", help="Show and change settings (a YAML file).", no_args_is_help=True,
                      rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
    sub.command("path", epilog=EXAMPLES)(path_cmd)
    sub.command("show", epilog=EXAMPLES)(show)
    # ignore_unknown_options: `gemma config set gpu_layers -1` is a value, not an option
    sub.command("set", epilog=EXAMPLES, context_settings={"ignore_unknown_options": True})(set_cmd)
    sub.command("unset", epilog=EXAMPLES)(unset)
    app.add_typer(sub, name="config")
