"""A fake engine for CLI tests: scripted replies behind the engine's protocol, in milliseconds.

`gemma chat`, the REPL and the other commands talk to the object `commands.loading.open_engine`
returns (as `session.ChatSession` uses it): `info`, `path`, `n_ctx`, `tokenize`, `stream_generate`,
`cached_tokens`, `ensure_projector`, `attach_draft`. `FakeEngine` offers the same, and answers
with what a test queued, like simonw/llm's `MockModel.enqueue`:

    def test_x(fake):                       # the fixture in conftest.py
        fake.enqueue("Hello", " there")     # one reply, streamed in two steps
        result = fake.gemma("chat", "hi")   # in-process `gemma chat hi` through the real CLI
        assert result.stdout == "Hello there\\n" and result.exit_code == 0
        assert fake.prompts[-1].endswith("<|turn>model\\n<|channel>thought\\n<channel|>")

It lives under tests/ and is not shipped: gemma has no plugin API, so nothing outside this
suite needs a fake model. What the engine itself must prove (KV reuse, media, drafting,
grammars, real prompts and tokens) stays on the real llama.cpp engine in the other tests.

The model "file" is a real GGUF header with no tensors, so the real resolution code (header
read, projector and drafter lookup) runs; only the loading of weights is replaced, at one seam
(`commands.loading.open_engine`).
"""

from __future__ import annotations

import io
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from gemma_cli.engine.core import ModelInfo, Step
from gemma_cli.errors import ContextOverflowError


@dataclass
class Reply:
    """One scripted model reply: its pieces (one token each), then a stop, or an exception mid-stream."""

    pieces: tuple[str, ...]
    finish_reason: str = "stop"
    raise_after: BaseException | None = None  # e.g. KeyboardInterrupt(): Ctrl-C after the pieces


@dataclass
class Call:
    """What one stream_generate() call received."""

    prompt: str
    max_tokens: int | None
    sampling: object
    media: list = field(default_factory=list)


def write_header_only_gguf(path: Path, *, architecture: str = "gemma4", chat_template: str | None = None,
                           context_length: int = 4096) -> Path:
    """A real GGUF file with metadata and no tensors: enough for the header reader, nothing to load."""
    import gguf

    w = gguf.GGUFWriter(str(path), architecture)
    w.add_uint32(f"{architecture}.context_length", context_length)
    w.add_uint32(f"{architecture}.block_count", 1)
    w.add_token_list(["<pad>", "<eos>", "<bos>"])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


class FakeEngine:
    """Scripted replies behind the Engine's protocol. One character is one token."""

    def __init__(self, path: str | Path, *, architecture: str = "gemma4", chat_template: str | None = None,
                 n_ctx: int = 4096):
        self.path = Path(path)
        self.info = ModelInfo(path=self.path, architecture=architecture, chat_template=chat_template, bos="<bos>",
                              eos="<eos>", n_ctx_train=n_ctx, n_embd=8, n_swa=0, n_params=1_000_000, size_bytes=0,
                              meta={})
        self.n_ctx = n_ctx
        self.queue: deque[Reply] = deque()
        self.calls: list[Call] = []
        self.opened: list[dict] = []  # the keyword arguments of each open_engine() call
        self.draft = None
        self.media = None
        self.mmproj_path = None
        self.image_tokens = None
        self.projectors: list[str] = []  # kinds asked for with ensure_projector()
        self.cached_tokens = 0

    # ---- the script

    def enqueue(self, *pieces: str, finish_reason: str = "stop", raise_after: BaseException | None = None) -> "FakeEngine":
        """Queue the next reply: `pieces` streamed one per step; then `finish_reason`, or `raise_after` raised."""
        self.queue.append(Reply(tuple(pieces), finish_reason, raise_after))
        return self

    @property
    def prompts(self) -> list[str]:
        return [c.prompt for c in self.calls]

    # ---- the engine's protocol

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, tokens) -> str:
        return "".join(chr(t) for t in tokens)

    def ensure_projector(self, kind: str):
        """No encoder to load: the projector's one fact the media loaders read is the audio rate."""
        self.projectors.append(kind)
        return SimpleNamespace(kind=kind, sample_rate=16000)

    def attach_draft(self, drafter) -> None:
        self.draft = drafter

    def media_tokens(self, media) -> int:
        return 0

    def close(self) -> None:
        pass

    @property
    def prompt_cache(self):
        """No prompt cache on disk: the real engine's is proved on the real engine (tests/test_prompt_cache.py)."""
        return None

    @prompt_cache.setter
    def prompt_cache(self, cache) -> None:
        pass

    def stream_generate(self, prompt, *, media=None, max_tokens=None, sampling=None, checkpoint_at=None, save_at=()):
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        self.calls.append(Call(self.detokenize(tokens), max_tokens, sampling, list(media or [])))
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}",
                                       "raise --ctx or shorten the input")
        if not self.queue:
            raise AssertionError("FakeEngine: no reply enqueued for this call")
        reply = self.queue.popleft()
        return self._steps(reply, len(tokens), max_tokens)

    def _steps(self, reply: Reply, n_prompt: int, max_tokens: int | None):
        budget = self.n_ctx - n_prompt
        limit = budget if max_tokens is None else min(max_tokens, budget)
        finish, generated = reply.finish_reason, 0
        for piece in reply.pieces:
            if generated >= limit:
                finish = "length"
                break
            generated += 1
            self.cached_tokens = n_prompt + generated
            yield Step(piece, generated, n_prompt, 0, generated, 0.01, 100.0)
        else:
            if reply.raise_after is not None:
                raise reply.raise_after
        yield Step("", None, n_prompt, 0, generated, 0.01, 100.0, finish)


@dataclass
class Outcome:
    """What an in-process `gemma …` did: exit code and the text on stdout and stderr."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def returncode(self) -> int:  # as subprocess.CompletedProcess names it (tests.clitools.assert_one_line_error)
        return self.exit_code

    @property
    def errors(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("error:")]


class _Pipe(io.TextIOWrapper):
    """stdin or stdout as a pipe (not a terminal), or as a terminal when `tty` is set."""

    def __init__(self, data: bytes = b"", *, tty: bool = False):
        super().__init__(io.BytesIO(data), encoding="utf-8", errors="strict", newline=None, write_through=True)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty

    def text(self) -> str:
        self.flush()
        return self.buffer.getvalue().decode("utf-8", errors="replace")


def run_in_process(*args, input: str | bytes | None = None, stdin_tty: bool = False) -> Outcome:
    """`gemma ARGS…` through the real entry point (cli.main, its error boundary included), in this process.

    Typer's CliRunner gives no way to run `main()`'s error boundary, so this swaps the three
    streams the same way (stdin a pipe unless `stdin_tty`) and catches the SystemExit.
    """
    from gemma_cli.cli import main

    data = input.encode("utf-8") if isinstance(input, str) else (input or b"")
    stdin, stdout, stderr = _Pipe(data, tty=stdin_tty), _Pipe(), _Pipe()
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    return Outcome(code, stdout.text(), stderr.text())


class FakeGemma(FakeEngine):
    """The `fake` fixture: a FakeEngine plus `gemma(…)` to run a command against it, and its model file."""

    def __init__(self, folder: Path, **kw):
        model = write_header_only_gguf(folder / "fake-gemma4.gguf", chat_template=kw.get("chat_template"))
        super().__init__(model, **kw)
        self.model = str(model)

    def open(self, resolved, **kwargs) -> "FakeEngine":
        """In place of `commands.loading.open_engine(resolved, …)`: the model was resolved for real."""
        self.opened.append({"path": resolved.path, "resolved": resolved, **kwargs})
        self.mmproj_path = resolved.mmproj
        return self

    def gemma(self, *args, input: str | bytes | None = None, stdin_tty: bool = False) -> Outcome:
        return run_in_process(*args, input=input, stdin_tty=stdin_tty)


def environment(home: Path) -> dict:
    """The variables a CLI test sets (as tests.clitools.gemma_env does for subprocesses)."""
    return {"GEMMA_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "120", "GEMMA_CONFIG": str(home / "config.yaml")}


__all__ = ["FakeEngine", "FakeGemma", "Outcome", "Reply", "run_in_process", "write_header_only_gguf", "environment"]
