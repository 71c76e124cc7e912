"""The `gemma` command: a thin Typer layer over the core modules.

Each subcommand lives in its own module under `gemma_cli.commands`; they import heavy
libraries (llama_cpp, numpy, PIL, librosa) only inside the command, so `gemma --help`
starts as fast as any Typer + Rich app.
"""

from __future__ import annotations

import os
import sys

import typer

# typer >= 0.20 vendors its own click: its exceptions are not plain click's.
try:
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer on plain click
    from click.exceptions import ClickException

from gemma_cli import __version__
from gemma_cli.errors import GemmaError

app = typer.Typer(
    name="gemma",
    help="Run Google's Gemma 4 models locally: chat, images, audio and batch jobs.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: Rich help formatting costs ~60 ms at every start
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""Examples:

\b
  gemma chat "Why is the sky blue?"
  gemma describe-image photo.jpg
  gemma transcribe meeting.mp3 --format srt -o meeting.srt
  gemma batch prompts.jsonl -o results.jsonl --parallel 8
  gemma serve -m e4b
  gemma models pull e4b
  gemma doctor
  gemma --install-completion                   (tab completion in your shell)

Run `gemma COMMAND --help` for a command's options. GEMMA_DEBUG=1 shows tracebacks.""",
)


def _version(value: bool) -> None:
    if not value:
        return
    # lazy: importlib.metadata, only for --version; keeps gemma --help fast
    from importlib.metadata import PackageNotFoundError, version


    try:
        backend = f"llama-cpp-python {version('llama_cpp_python')}"
    except PackageNotFoundError:
        backend = "llama-cpp-python not installed"
    print(f"gemma {__version__} ({backend})")
    raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print gemma's version (and llama-cpp-python's) and exit."),
) -> None:
    """Run Google's Gemma 4 models locally: chat, images, audio and batch jobs."""


def _register() -> None:
    # One line per command module; each module exposes `register(app)`.
    from gemma_cli.commands import batch, cache, chat, config, describe, doctor, mcp, models, serve, transcribe

    for module in (chat, describe, transcribe, batch, serve, models, doctor, config, mcp, cache):
        module.register(app)


_register()


def _print_error(message: str, hint: str | None) -> None:
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one error boundary. Known errors become one line and a hint."""
    debug = os.environ.get("GEMMA_DEBUG", "") not in ("", "0")
    try:
        # Not standalone: click returns typer.Exit's code (and 130 for a Ctrl-C it caught) instead of exiting.
        code = app(args=argv, standalone_mode=False, prog_name="gemma")
    except GemmaError as e:
        if debug:
            raise
        _print_error(e.message, e.hint)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.stderr.write("\naborted\n")
        sys.exit(130)
    except ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(130)
    except BrokenPipeError:
        # `gemma chat … | head`: the reader left; exit quietly like other Unix tools.
        _silence_stdout()
        sys.exit(0)
    except SystemExit as e:
        # Typer's main catches that BrokenPipeError itself: it wraps stdout in a PacifyFlushWrapper and exits 1.
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            _silence_stdout()
            sys.exit(0)
        raise
    except Exception as e:  # noqa: BLE001 - the boundary: never a raw traceback
        if debug:
            raise
        _print_error(f"{type(e).__name__}: {e}", "this is a bug; run again with GEMMA_DEBUG=1 and report the traceback")
        sys.exit(1)
    if isinstance(code, int) and not isinstance(code, bool) and code:
        if code == 130:  # click turned a KeyboardInterrupt into Exit(130)
            sys.stderr.write("\ninterrupted\n")
        sys.exit(code)
    sys.exit(0)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
