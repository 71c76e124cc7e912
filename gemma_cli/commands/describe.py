"""`gemma describe-image`: a streamed description of each image (or of several together)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from gemma_cli.commands import options as opt
from gemma_cli.errors import CapabilityError, UsageError

EXAMPLES = """
Examples:

\b
  gemma describe-image photo.jpg
  gemma describe-image a.png b.png --together -p "What changed between these?"
  gemma describe-image scan.png --image-tokens 1120 -p "Transcribe the text"
  curl -s https://example.com/cat.jpg | gemma describe-image -
"""

BUDGETS = (70, 140, 280, 560, 1120)  # engine.media.BUDGETS, kept here so --help needs no llama_cpp
DEFAULT_PROMPT = "Describe this image in detail."
DEFAULT_PROMPT_MANY = "Describe these images in detail."



def describe_image(
    images: Annotated[List[str], typer.Argument(metavar="IMAGE", help="Image files (PNG, JPEG, WebP, GIF, BMP, TIFF); - reads one from stdin.")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="What to ask about each image.")] = None,
    together: Annotated[bool, typer.Option("--together", help="All images in one turn, one answer.")] = False,
    image_tokens: opt.ImageTokens = None,
    model: opt.Model = None,
    mmproj: opt.Mmproj = None,
    max_tokens: opt.MaxTokens = None,
    temperature: opt.Temperature = None,
    top_p: opt.TopP = None,
    top_k: opt.TopK = None,
    seed: opt.Seed = None,
    ctx: opt.Ctx = None,
    threads: opt.Threads = None,
    gpu_layers: opt.GpuLayers = None,
    draft: opt.Draft = None,
    draft_max: opt.DraftMax = None,
    as_json: opt.Json = False,
    yes: opt.Yes = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's log on stderr.")] = False,
) -> None:
    """Describe images: a description per image, streamed as it is written."""
    from gemma_cli import config
    from gemma_cli.media import load_image

    check_budget(image_tokens)
    if sum(1 for i in images if i == "-") > 1:
        raise UsageError("stdin ('-') can hold only one image", "save the others to files")
    loaded = [load_image(i) for i in images]  # a bad file fails now, before the model loads
    settings = config.load()
    engine, session_for = open_for_media(settings, model, mmproj, image_tokens, ctx, threads, gpu_layers, yes, verbose,
                                         sampling=_sampling(settings, temperature, top_p, top_k, seed),
                                         max_tokens=settings.pick("max_tokens", max_tokens), need="image",
                                         draft=draft, draft_max=draft_max)
    groups = [loaded] if together else [[m] for m in loaded]
    question = prompt or (DEFAULT_PROMPT_MANY if len(groups[0]) > 1 else DEFAULT_PROMPT)
    results = []
    for n, group in enumerate(groups):
        if not as_json and len(groups) > 1:
            sys.stdout.write(("\n" if n else "") + f"{group[0].name}:\n")
            sys.stdout.flush()
        result = _describe(session_for(), group, question, stream=not as_json)
        results.append({"images": [m.name for m in group], "image_tokens": [engine.media_tokens(m) for m in group],
                        "description": result.answer.strip(), "stats": _stats(result.stats)})
    if as_json:
        from gemma_cli.commands.loading import draft_stats

        out = {"model": engine.path.name, "image_tokens_budget": engine.media.budget, "results": results,
               **draft_stats(engine.draft)}
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")


def check_budget(image_tokens: int | None) -> None:
    if image_tokens is not None and image_tokens not in BUDGETS:
        raise UsageError(f"--image-tokens {image_tokens} is not a Gemma 4 budget",
                         f"use one of {', '.join(map(str, BUDGETS))}")


def open_for_media(settings, model, mmproj, image_tokens, ctx, threads, gpu_layers, yes, verbose, *, sampling,
                   max_tokens, need: str, draft: str | None = None, draft_max: int | None = None):
    """The model with its projector (and drafter, per --draft), and a maker of fresh single-turn
    sessions (thinking off).

    `need` ("image" or "audio") is checked in the projector's header first: a 31B asked for
    audio says so at once, not after loading 17 GB of weights.
    """
    from gemma_cli.commands import loading

    resolved = loading.resolve(settings, model, yes=yes, mmproj=mmproj, gpu_layers=gpu_layers)
    path, projector = resolved.path, resolved.mmproj
    if projector is None:
        raise CapabilityError(f"no projector (mmproj) found for {path.name}: it cannot read images or audio without one",
                              "pass --mmproj PATH, or `gemma models pull NAME` to fetch it with the model")
    _check_encoder(resolved, projector, need)
    engine = loading.open_engine(resolved, ctx=settings.pick("ctx", ctx), threads=settings.pick("threads", threads),
                                 verbose=verbose, load_mmproj=True, image_tokens=image_tokens)
    from gemma_cli.session import GEMMA4, ChatSession, format_of_engine

    info = engine.info
    fmt = format_of_engine(engine)
    if fmt.kind != GEMMA4:
        raise CapabilityError(f"{path.name} is not a Gemma 4 model ({info.architecture})",
                              "images and audio need a Gemma 4 GGUF and its mmproj")

    def session_for():
        return ChatSession(engine, fmt, sampling=sampling, max_tokens=max_tokens, think=False)

    engine.ensure_projector(need)  # the same check on what llama.cpp loaded
    loading.attach_draft(engine, resolved, draft, draft_max)  # after the projector, which may remake the context a drafter binds to
    return engine, session_for


def _check_encoder(resolved, projector: Path, need: str) -> None:
    from gemma_cli.gguf_header import read_header

    if not Path(projector).is_file():
        return  # the engine reports a missing file
    header = read_header(projector)
    key = {"image": "clip.has_vision_encoder", "audio": "clip.has_audio_encoder"}[need]
    if header.architecture != "clip" or header.get(key):
        return
    name = resolved.header.get("general.name") or resolved.path.name
    if need == "audio":
        raise CapabilityError(f"{name} has no audio encoder; audio needs E2B, E4B or 12B",
                              f"{Path(projector).name} only reads images; use gemma-4-E2B, E4B or 12B for audio")
    raise CapabilityError(f"{Path(projector).name} has no vision encoder, so {name} cannot see images here",
                          "pass the model's vision projector with --mmproj")


def _sampling(settings, temperature, top_p, top_k, seed, *, default_temperature=None):
    from gemma_cli.engine import Sampling

    temp = temperature if temperature is not None else default_temperature
    return Sampling(temperature=settings.pick("temperature", temp), top_p=settings.pick("top_p", top_p),
                    top_k=settings.pick("top_k", top_k), seed=settings.pick("seed", seed))


def _describe(session, group, question: str, *, stream: bool):
    """One turn: the images first (Gemma 4 wants media before text), then the question."""
    from gemma_cli import reply
    from gemma_cli.render import StreamPrinter
    from gemma_cli.session import Done

    printer = StreamPrinter(show_thinking=False)
    content = [{"type": "image", "media": m} for m in group] + [{"type": "text", "text": question}]
    result = None
    events = session.send(content)
    try:
        for event in events:
            if isinstance(event, Done):
                result = event.result
            elif stream and isinstance(event, reply.Answer):
                printer.answer(event.text)
    finally:
        events.close()
        if stream:
            printer.finish()
    return result


def _stats(s) -> dict:
    return {"prompt_tokens": s.prompt_tokens, "reused_tokens": s.reused_tokens, "generated_tokens": s.generated_tokens,
            "ttft_s": round(s.ttft, 4), "tokens_per_s": round(s.tps, 2), "finish_reason": s.finish_reason,
            "drafted": s.drafted, "accepted": s.accepted}


def register(app: typer.Typer) -> None:
    app.command("describe-image", epilog=EXAMPLES)(describe_image)
