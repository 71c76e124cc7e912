"""Shared option aliases (Annotated), so every generating command spells them the same."""

from __future__ import annotations

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
