"""`gemma describe-image`: a streamed description of each image (or of several together)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from gemma_cli.commands import options as opt
from gemma_cli.errors import CapabilityError, MediaError, UsageError

EXAMPLES = """
Examples:

\b
  gemma describe-image photo.jpg
  gemma describe-image a.png b.png --together -p "What changed between these?"
  gemma describe-image scan.png --image-tokens 1120 -p "Transcribe the text"
  curl -s https://example.com/cat.jpg | gemma describe-image -
"""

BUDGETS = (70, 140, 280, 560, 1120)  # engine.projector.BUDGETS, kept here so --help needs no llama_cpp
DEFAULT_PROMPT = "Describe this image in detail."
DEFAULT_PROMPT_MANY = "Describe these images in detail."



@opt.shared("model", "mmproj", "image_tokens", *opt.SAMPLING, *opt.MACHINE, *opt.DRAFTING, "as_json", "yes", "no_cache",
            "verbose")
def describe_image(
    images: Annotated[List[str], typer.Argument(metavar="IMAGE", help="Image files (PNG, JPEG, WebP, GIF, BMP, TIFF); - reads one from stdin.")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="What to ask about each image.")] = None,
    together: Annotated[bool, typer.Option("--together", help="All images in one turn, one answer.")] = False,
    *,
    o: opt.Common,
) -> None:
    """Describe images: a description per image, streamed as it is written."""
    # lazy: config, commands.loading load only when the command runs; keeps gemma --help fast
    from gemma_cli.commands.loading import sampling_of
    from gemma_cli.store import config

    check_budget(o.image_tokens)
    if sum(1 for i in images if i == "-") > 1:
        raise UsageError("stdin ('-') can hold only one image", "save the others to files")
    loaded, failed = _decode_all(images, together)  # bad files are reported now, before the model loads
    settings = config.load()
    engine, session_for = open_for_media(settings, o.model, o.mmproj, o.image_tokens, o.ctx, o.threads, o.gpu_layers,
                                         o.yes, o.verbose, sampling=sampling_of(settings, o.temperature, o.top_p, o.top_k, o.seed),
                                         max_tokens=settings.pick("max_tokens", o.max_tokens), need="image",
                                         draft=o.draft, draft_max=o.draft_max, cache=not o.no_cache)
    groups = [loaded] if together else [[m] for m in loaded]
    question = prompt or (DEFAULT_PROMPT_MANY if len(groups[0]) > 1 else DEFAULT_PROMPT)
    results = []
    for n, group in enumerate(groups):
        if not o.as_json and len(groups) > 1:
            sys.stdout.write(("\n" if n else "") + f"{group[0].name}:\n")
            sys.stdout.flush()
        result = _describe(session_for(), group, question, stream=not o.as_json)
        results.append({"images": [m.name for m in group], "image_tokens": [engine.media_tokens(m) for m in group],
                        "description": result.answer.strip(), "stats": _stats(result.stats)})
    if o.as_json:
        # lazy: commands.loading loads only when the command runs; keeps gemma --help fast
        from gemma_cli.commands.loading import draft_stats

        out = {"model": engine.path.name, "image_tokens_budget": engine.media.budget, "results": results,
               **draft_stats(engine.draft)}
        if failed:
            out["errors"] = [{"image": name, "error": e.message} for name, e in failed]
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    if failed:
        raise MediaError(f"{len(failed)} of {len(images)} images could not be read: "
                         f"{', '.join(name for name, _ in failed)}", "the others were described")


def _decode_all(images: list[str], together: bool) -> tuple[list, list]:
    """Every image decoded; a bad one is one error line on stderr and the others still go on
    (as `gemma batch` does). All bad, or any with --together: the error, before the model loads."""
    # lazy: media loads only when the command runs; keeps gemma --help fast
    from gemma_cli.media.images import load_image

    loaded, failed = [], []
    for source in images:
        try:
            loaded.append(load_image(source))
        except MediaError as e:
            if together or len(images) == 1:
                raise
            failed.append(("stdin" if source == "-" else source, e))
    if not loaded:
        raise MediaError(f"none of the {len(images)} images could be read", failed[0][1].message)
    for _, e in failed:
        sys.stderr.write(f"error: {e.message}\n")
    return loaded, failed


def check_budget(image_tokens: int | None) -> None:
    if image_tokens is not None and image_tokens not in BUDGETS:
        raise UsageError(f"--image-tokens {image_tokens} is not a Gemma 4 budget",
                         f"use one of {', '.join(map(str, BUDGETS))}")


def open_for_media(settings, model, mmproj, image_tokens, ctx, threads, gpu_layers, yes, verbose, *, sampling,
                   max_tokens, need: str, draft: str | None = None, draft_max: int | None = None, cache: bool = False,
                   check=None):
    """The model with its projector (and drafter, per --draft; the prompt cache on disk with `cache`), and a
    maker of fresh single-turn sessions (thinking off).

    `need` ("image" or "audio") is checked in the projector's header first: a 31B asked for
    audio says so at once, not after loading 17 GB of weights. `check(resolved)` runs then too
    (a clip too long for the context the model will have).
    """
    # lazy: commands.loading loads only when the command runs; keeps gemma --help fast
    from gemma_cli.commands import loading

    resolved = loading.resolve(settings, model, yes=yes, mmproj=mmproj, gpu_layers=gpu_layers)
    path, projector = resolved.path, resolved.mmproj
    if projector is None:
        raise CapabilityError(f"no projector (mmproj) found for {path.name}: it cannot read images or audio without one",
                              "pass --mmproj PATH, or `gemma models pull NAME` to fetch it with the model")
    _check_encoder(resolved, projector, need)
    if check is not None:
        check(resolved)
    engine = loading.open_engine(resolved, ctx=settings.pick("ctx", ctx), threads=settings.pick("threads", threads),
                                 verbose=verbose, load_mmproj=True, image_tokens=image_tokens)
    loading.note_context(engine, loading.asked_ctx(settings, ctx))
    loading.attach_prompt_cache(engine, settings, cache)
    # lazy: session loads only when the command runs; keeps gemma --help fast
    from gemma_cli.chat.session import GEMMA4, ChatSession, format_of_engine

    info = engine.info
    fmt = format_of_engine(engine)
    if fmt.kind != GEMMA4:
        raise CapabilityError(f"{path.name} is not a Gemma 4 model ({info.architecture})",
                              "images and audio need a Gemma 4 GGUF and its mmproj")

    def session_for(media=None):
        return ChatSession(engine, fmt, sampling=sampling, max_tokens=max_tokens, think=False, media=media)

    engine.ensure_projector(need)  # the same check on what llama.cpp loaded
    loading.attach_draft(engine, resolved, draft, draft_max)  # after the projector, which may remake the context a drafter binds to
    return engine, session_for


def _check_encoder(resolved, projector: Path, need: str) -> None:
    # lazy: gguf_header loads only when the command runs; keeps gemma --help fast
    from gemma_cli.gguf_header import read_header

    if not Path(projector).is_file():
        return  # the engine reports a missing file
    header = read_header(projector)
    key = {"image": "clip.has_vision_encoder", "video": "clip.has_vision_encoder", "audio": "clip.has_audio_encoder"}[need]
    if header.architecture != "clip" or header.get(key):
        return
    name = resolved.header.get("general.name") or resolved.path.name
    if need == "audio":
        raise CapabilityError(f"{name} has no audio encoder; audio needs E2B, E4B or 12B",
                              f"{Path(projector).name} only reads images; use gemma-4-E2B, E4B or 12B for audio")
    raise CapabilityError(f"{Path(projector).name} has no vision encoder, so {name} cannot see "
                          f"{'video' if need == 'video' else 'images'} here",
                          "pass the model's vision projector with --mmproj")


def _describe(session, group, question: str, *, stream: bool):
    """One turn: the images first (Gemma 4 wants media before text), then the question."""
    # lazy: reply, render, session load only when the command runs; keeps gemma --help fast
    from gemma_cli.chat.session import Done
    from gemma_cli.format import reply
    from gemma_cli.render import StreamPrinter

    printer = StreamPrinter(show_thinking=False)
    media = [{"type": "image", "media": m} for m in group] if group and not isinstance(group[0], dict) else group
    content = media + [{"type": "text", "text": question}]
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
            "drafted": s.drafted, "accepted": s.accepted, "disk_cached_tokens": s.disk_tokens}


VIDEO_EXAMPLES = """
Examples:

\b
  gemma describe-video clip.mp4
  gemma describe-video clip.mp4 -p "What does the person do after opening the door?"
  gemma describe-video talk.webm --fps 0.5 --json        (a frame every 2 s, at most 32)
  gemma describe-video ui.mov --frames 8 --frame-tokens 280   (fewer, sharper frames)
  cat clip.mp4 | gemma describe-video -
"""
DEFAULT_VIDEO_PROMPT = "Describe what happens in this video."


@opt.shared("model", "mmproj", *opt.SAMPLING, *opt.MACHINE, *opt.DRAFTING, "as_json", "yes", "no_cache", "verbose")
def describe_video(
    videos: Annotated[List[str], typer.Argument(metavar="VIDEO", help="Video files (MP4, WebM, MKV, MOV, AVI, GIF); - reads one from stdin.")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="What to ask about each video.")] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", min=1, max=32, help="Frames to take, evenly over the clip (default 32, the most Gemma 4 was trained with).")] = None,
    fps: Annotated[Optional[float], typer.Option("--fps", min=0.001, help="Frames a second of the clip instead (still at most 32).")] = None,
    frame_tokens: Annotated[int, typer.Option("--frame-tokens", metavar="70|140|280", help="Visual tokens per frame (Gemma 4 was trained on 70).")] = 70,
    *,
    o: opt.Common,
) -> None:
    """Describe videos: 32 frames sampled evenly (70 tokens each, timestamped), as Gemma 4 was trained."""
    # lazy: config, commands.loading, media, video load only when the command runs; keeps gemma --help fast
    from gemma_cli.commands.loading import sampling_of
    from gemma_cli.media.parts import MediaParts
    from gemma_cli.media.video import FRAME_BUDGETS, check_context
    from gemma_cli.store import config

    if frame_tokens not in FRAME_BUDGETS:
        raise UsageError(f"--frame-tokens {frame_tokens} is not a Gemma 4 video budget",
                         f"use one of {', '.join(map(str, FRAME_BUDGETS))}")
    if frames is not None and fps is not None:
        raise UsageError("--frames and --fps both choose the frames", "use one of them")
    if sum(1 for v in videos if v == "-") > 1:
        raise UsageError("stdin ('-') can hold only one video", "save the others to files")
    settings = config.load()
    decoder = MediaParts()
    parts = [decoder.attach("video", v, frames=frames, fps=fps, frame_tokens=frame_tokens) for v in videos]
    clips = decoder.videos(parts)  # decoded now: a bad file or a clip too long fails before the model loads

    def fits(resolved) -> None:  # each clip within the context the model will have, before it loads
        for clip in clips:
            check_context([clip], resolved.context(settings.pick("ctx", o.ctx)), resolved.trained_context)

    engine, session_for = open_for_media(settings, o.model, o.mmproj, frame_tokens, o.ctx, o.threads, o.gpu_layers,
                                         o.yes, o.verbose, sampling=sampling_of(settings, o.temperature, o.top_p, o.top_k, o.seed),
                                         max_tokens=settings.pick("max_tokens", o.max_tokens), need="video",
                                         draft=o.draft, draft_max=o.draft_max, cache=not o.no_cache, check=fits)
    question = prompt or DEFAULT_VIDEO_PROMPT
    results = []
    for n, (part, clip) in enumerate(zip(parts, clips)):
        if not o.as_json and len(parts) > 1:
            sys.stdout.write(("\n" if n else "") + f"{clip.name}:\n")
            sys.stdout.flush()
        result = _describe(session_for(decoder), [part], question, stream=not o.as_json)
        results.append({"video": clip.name, "duration_s": round(clip.duration, 3), "frames_in_clip": clip.total_frames,
                        "frames": len(clip.frames), "timestamps": clip.stamps,
                        "frame_tokens": [engine.media_tokens(f) for f in clip.frames],
                        "description": result.answer.strip(), "stats": _stats(result.stats)})
    if o.as_json:
        # lazy: commands.loading loads only when the command runs; keeps gemma --help fast
        from gemma_cli.commands.loading import draft_stats

        out = {"model": engine.path.name, "frame_tokens_budget": frame_tokens, "results": results,
               **draft_stats(engine.draft)}
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")


def register(app: typer.Typer) -> None:
    app.command("describe-image", epilog=EXAMPLES)(describe_image)
    app.command("describe-video", epilog=VIDEO_EXAMPLES)(describe_video)
