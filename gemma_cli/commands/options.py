"""The options the generating commands share, defined once.

Each is an `Annotated` alias (as huggingface_hub's CLI does), and `shared(...)` adds a list of them to a
command: after the command's own options, in one order, so `--help` reads the same in chat,
describe-image, describe-video, transcribe, batch and serve. The command gets their values as one
`Common` argument `o` (`o.model`, `o.temperature`, ...). A command whose help says more for one of them
passes its own alias by keyword (`shared(*ENGINE, ctx=BatchCtx)`): same flag, its own text.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

Model = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Model: a name (e4b, 31b:q8_0), a path to a .gguf, or hf:OWNER/REPO/FILE.gguf."),
]
Mmproj = Annotated[
    Optional[Path],
    typer.Option("--mmproj", help="Vision/audio projector GGUF (default: found beside the model)."),
]
MaxTokens = Annotated[Optional[int], typer.Option("--max-tokens", "-n", min=1, help="Most tokens to generate.")]
Temperature = Annotated[Optional[float], typer.Option("--temperature", "-t", min=0.0, help="Sampling temperature (default 1.0; 0 = greedy).")]
TopP = Annotated[Optional[float], typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling (default 0.95).")]
TopK = Annotated[Optional[int], typer.Option("--top-k", min=0, help="Top-k sampling (default 64).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed, for repeatable output.")]
Ctx = Annotated[Optional[int], typer.Option("--ctx", "-c", min=64, help="Context window in tokens.")]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads (default: physical cores).")]
GpuLayers = Annotated[Optional[int], typer.Option("--gpu-layers", help="Layers to offload to the GPU (-1 = all; default: chosen from free VRAM).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to every question (downloads, tool calls).")]
Draft = Annotated[
    Optional[str],
    typer.Option(
        "--draft",
        metavar="auto|off|ngram|PATH",
        help="Speculative decoding: cheap drafts checked by the model in one batch, so the output stays "
        "the model's own; faster when drafts hit. "
        "auto (default): the model's Gemma 4 MTP drafter when installed (`gemma models pull NAME --draft`), "
        "on for dense models, off for 26B-A4B (a MoE: reports show little or no gain there); "
        "ngram: prompt lookup, any model, for copy-heavy work (transcripts, rewriting, extraction); "
        "PATH: a gemma4-assistant GGUF; off: plain decoding.",
    ),
]
DraftMax = Annotated[
    Optional[int],
    typer.Option("--draft-max", min=1, max=32, help="Most tokens drafted per step (default 4 with an MTP drafter, 16 with ngram); fewer while drafts miss."),
]
ImageTokens = Annotated[
    Optional[int],
    typer.Option("--image-tokens", metavar="70|140|280|560|1120",
                 help="Visual token budget per image: 70 fast, 140 captions, 280 general (default), 560 charts, 1120 OCR/fine detail."),
]
Verbose = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's log on stderr.")]


# name -> its alias. The order is --help's.
SHARED = {"model": Model, "mmproj": Mmproj, "image_tokens": ImageTokens, "max_tokens": MaxTokens,
          "temperature": Temperature, "top_p": TopP, "top_k": TopK, "seed": Seed, "ctx": Ctx, "threads": Threads,
          "gpu_layers": GpuLayers, "draft": Draft, "draft_max": DraftMax, "as_json": Json, "yes": Yes,
          "verbose": Verbose}


def _default(alias):
    return False if typing.get_args(alias)[0] is bool else None  # a flag is off, a value unset


Common = make_dataclass("Common", [(n, a, field(default=_default(a))) for n, a in SHARED.items()])
Common.__module__ = __name__
Common.__doc__ = "The shared options' values for one command run, one field per SHARED name (unset: None or False)."

SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "seed")
MACHINE = ("ctx", "threads", "gpu_layers")
DRAFTING = ("draft", "draft_max")


def shared(*names: str, **aliases):
    """Add the shared options `names` to a Typer command, handed to it as `o: Common`.

    `aliases` give a command's own alias for a shared name (a help text that says more)."""
    unknown = set(names) - set(SHARED) or set(aliases) - set(names)
    if unknown:
        raise TypeError(f"not shared options of this command: {sorted(unknown)}")

    def add(command):
        hints = typing.get_type_hints(command, include_extras=True)
        own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(command).parameters.values()
               if p.name != "o"]
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=_default(SHARED[n]),
                                   annotation=aliases.get(n, SHARED[n])) for n in names]

        @functools.wraps(command)
        def run(**kw):
            o = Common(**{n: kw.pop(n) for n in names})
            return command(**kw, o=o)

        run.__signature__ = inspect.Signature(own + added, return_annotation=None)
        run.__annotations__ = {p.name: p.annotation for p in own + added}
        return run

    return add
