"""Video: frames sampled and laid out as Gemma 4 was trained, decoded by PyAV, evaluated through mtmd.

The clips are written here by PyAV from numpy frames (a few KB each, well under 0.1 s to write);
the engine tests run llama.cpp's real vision encoder on the tiny synthetic projector.
"""

from __future__ import annotations

import json
import re

import av
import numpy as np
import pytest

from gemma_cli.engine import Engine, Sampling
from gemma_cli.errors import CapabilityError, ContextOverflowError, MediaError
from gemma_cli.media import video as vid
from tests.batchoutput import chat_completion
from tests.clitools import assert_one_line_error, run_gemma
from tests.media_tokens import image_tokens

GREEDY = Sampling(temperature=0)
ONE = ["--threads", "1", "--draft", "off", "--temperature", "0", "-n", "2"]
STAMP_LAYOUT = re.compile(r"(\d\d:\d\d <\|image\|>)( \d\d:\d\d <\|image\|>)*")


def write_clip(path, n: int = 40, fps: int = 10, w: int = 64, h: int = 48, codec: str = "mpeg4",
               fmt: str | None = None) -> None:
    """A clip whose frame i has its left i/n filled white and green = 5*i (so frames differ)."""
    out = av.open(str(path), "w", format=fmt)
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height = w, h
    stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, : (i * w) // n] = 255
        img[..., 1] = (5 * i) % 256
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()


@pytest.fixture(scope="module")
def per_frame(e_model, vision_mmproj) -> int:
    """The tokens of one of write_clip's 64x48 frames at a frame's budget (70), counted by llama.cpp's mtmd."""
    return image_tokens(e_model, vision_mmproj, 64, 48, budget=70)


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(path)
    return path


# ---------------------------------------------------------------- sampling and layout (pure)


def test_frame_indices_are_floor_k_total_over_n():
    assert vid.frame_indices(100) == [k * 100 // 32 for k in range(32)]
    assert vid.frame_indices(100)[:4] == [0, 3, 6, 9] and vid.frame_indices(100)[-1] == 96
    assert vid.frame_indices(20) == list(range(20))  # fewer than 32: every frame
    assert vid.frame_indices(10, 4) == [0, 2, 5, 7]


def test_frame_count_takes_fps_but_never_more_than_32():
    assert vid.frame_count(300, 30.0) == 32
    assert vid.frame_count(300, 30.0, frames=8) == 8
    assert vid.frame_count(300, 30.0, fps=1) == 10  # 10 s at one frame a second
    assert vid.frame_count(3000, 30.0, fps=1) == 32  # 100 s: capped
    assert vid.frame_count(10, 30.0, fps=1) == 1


def test_stamps_are_whole_seconds_as_mm_ss():
    assert [vid.stamp(t) for t in (0, 0.99, 1.0, 59.9, 61.2, 3600.5)] == ["00:00", "00:00", "00:01", "00:59",
                                                                        "01:01", "60:00"]


def test_the_video_placeholder_becomes_timestamped_frames_joined_by_one_space():
    v = vid.Video("c.mp4", frames=[object()] * 3, times=[0.0, 1.5, 62.0])
    assert v.layout == "00:00 <|image|> 00:01 <|image|> 01:02 <|image|>"
    w = vid.Video("d.mp4", frames=[object()], times=[4.0])
    text = "<|turn>user\n<|video|>Compare<|video|><turn|>"
    # a clip is a block of its own: a line break parts it from text written against it and from another clip
    assert vid.with_frames(text, [v, w]) == ("<|turn>user\n00:00 <|image|> 00:01 <|image|> 01:02 <|image|>\nCompare"
                                             "\n00:04 <|image|><turn|>")
    assert vid.with_frames("<|turn>user\n<|video|><|video|> Hi<turn|>", [v, w]) == (
        f"<|turn>user\n{v.layout}\n{w.layout} Hi<turn|>")
    with pytest.raises(MediaError, match="2 <|video|> placeholders for 1 videos"):
        vid.with_frames(text, [v])


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("suffix, codec, fmt", [("mp4", "mpeg4", None), ("webm", "libvpx", None),
                                                ("mkv", "mpeg4", None), ("mov", "mpeg4", None),
                                                ("avi", "mpeg4", None), ("gif", "gif", None)])
def test_every_container_gives_32_frames_at_their_times(tmp_path, suffix, codec, fmt):
    path = tmp_path / f"c.{suffix}"
    write_clip(path, codec=codec, fmt=fmt)
    assert path.stat().st_size < 40_000
    v = vid.load_video(path)
    assert v.total_frames == 40 and abs(v.duration - 4.0) < 0.2
    assert len(v.frames) == 32
    expected = [i / 10 for i in vid.frame_indices(40)]
    assert v.times == pytest.approx(expected, abs=0.011)
    assert v.stamps[0] == "00:00" and v.stamps[-1] == "00:03"
    f = v.frames[-1]
    assert (f.kind, f.width, f.height, f.budget) == ("image", 64, 48, 70)
    rgb = np.frombuffer(f.data, np.uint8).reshape(48, 64, 3)
    white = (rgb[24, :, 0] > 200).sum()
    assert 50 <= white <= 60  # frame 38 of 40: 38/40 of the width filled (a codec blurs the edge)


def test_frames_and_fps_options(clip):
    assert vid.load_video(clip, frames=4).times == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=0.011)
    assert vid.load_video(clip, fps=0.5).stamps == ["00:00", "00:02"]
    assert vid.load_video(clip, budget=140).frames[0].budget == 140
    short = clip.parent / "short.mp4"
    write_clip(short, n=5)
    assert len(vid.load_video(short).frames) == 5  # fewer than 32: every frame


@pytest.mark.parametrize("suffix, codec", [("mp4", "mpeg4"), ("mkv", "mpeg4"), ("webm", "libvpx")])
def test_seeking_a_long_clip_gives_the_frames_of_one_pass(tmp_path, monkeypatch, suffix, codec):
    path = tmp_path / f"long.{suffix}"
    write_clip(path, n=200, fps=25, codec=codec)
    monkeypatch.setattr(vid, "SEEK_OVER", 10**9)
    one_pass = vid.load_video(path)
    monkeypatch.setattr(vid, "SEEK_OVER", 2)
    monkeypatch.setattr(vid, "_decode", lambda *a, **k: pytest.fail("fell back to one pass"))
    seeking = vid.load_video(path)
    assert seeking.times == one_pass.times == pytest.approx([i / 25 for i in vid.frame_indices(200)], abs=0.011)
    assert [f.data for f in seeking.frames] == [f.data for f in one_pass.frames]


@pytest.mark.parametrize("case, needle", [("empty", "is empty (0 bytes)"), ("text", "is not a video gemma can read"),
                                          ("truncated", "truncated or damaged"), ("audio", "has no video track")])
def test_bad_videos_are_one_line_errors_naming_the_file(tmp_path, clip, case, needle):
    bad = tmp_path / f"bad-{case}.mp4"
    if case == "empty":
        bad.write_bytes(b"")
    elif case == "text":
        bad.write_text("not a video at all\n" * 50)
    elif case == "truncated":
        data = clip.read_bytes()
        bad.write_bytes(data[: len(data) // 3])
    else:
        out = av.open(str(bad), "w")
        s = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(10):
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
        out.close()
    with pytest.raises(MediaError) as err:
        vid.load_video(bad)
    assert needle in err.value.message and str(bad) in err.value.message and "\n" not in err.value.message


def test_a_clip_too_long_for_the_context_says_the_numbers(clip):
    v = vid.load_video(clip)
    with pytest.raises(ContextOverflowError, match=r"32 frames x ~70 tokens = about \d+ tokens, more than .* 1024"):
        vid.check_context([v], 1024)
    vid.check_context([v], 8192)


# ---------------------------------------------------------------- the engine and chat sessions


@pytest.fixture(scope="module")
def vision_engine(e_model, vision_mmproj):
    with Engine(e_model, n_ctx=4096, n_threads=1, mmproj=vision_mmproj) as engine:  # images at 280, frames at 70
        yield engine


def session_on(engine, max_tokens: int = 1):
    from gemma_cli.chat.session import ChatSession, format_of_engine

    return ChatSession(engine, format_of_engine(engine), sampling=GREEDY, max_tokens=max_tokens)


def reply_of(events):
    from gemma_cli.chat.session import Done

    return next(e.result for e in events if isinstance(e, Done))


def test_frames_go_through_mtmd_at_70_tokens_and_a_follow_up_evaluates_only_new_tokens(vision_engine, clip,
                                                                                          monkeypatch, per_frame):
    engine = vision_engine
    engine.reset()
    calls = []
    real = engine.media.decode
    monkeypatch.setattr(engine.media, "decode", lambda *a, **k: calls.append(a) or real(*a, **k))
    session = session_on(engine)
    part = {"type": "video", "path": str(clip), "frames": 8}
    first = reply_of(session.send([part, {"type": "text", "text": "What happens?"}]))
    assert len(calls) == 8  # one encode per frame
    frame = session.media_parts().load(part).frames[0]
    assert engine.media_tokens(frame) == per_frame  # budget 70, as llama.cpp's mtmd counts it
    text = session.prompt_text()
    assert "00:00 <|image|> 00:00 <|image|> 00:01 <|image|>" in text and "<|video|>" not in text
    layout = STAMP_LAYOUT.search(text).group(0)
    assert layout.count("<|image|>") == 8
    assert first.stats.prompt_tokens > 8 * per_frame
    second = reply_of(session.send("And then?"))
    assert len(calls) == 8  # the frames were not encoded again
    # every frame (and the text around them) came from the cache: the prompt of the first turn less its
    # generation prompt, which the history writes differently once the answer is in it
    assert second.stats.reused_tokens >= first.stats.prompt_tokens - 8
    follow_up = engine.tokenize("<turn|>\n<|turn>user\nAnd then?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>")
    assert second.stats.prompt_tokens <= len(follow_up) + first.stats.generated_tokens + 2


def test_images_keep_their_budget_beside_video_frames(vision_engine, clip, tmp_path, per_frame):
    from PIL import Image

    engine = vision_engine
    engine.reset()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    session = session_on(engine)
    loader = session.media_parts()
    image = loader.load(loader.attach("image", tmp_path / "p.png"))
    frames = loader.load(loader.attach("video", clip, frames=2)).frames
    assert engine.media_tokens(image) > engine.media_tokens(frames[0]) == per_frame  # the image at 280
    result = reply_of(session.send([{"type": "image", "path": str(tmp_path / "p.png")},
                                    {"type": "video", "path": str(clip), "frames": 2},
                                    {"type": "text", "text": "Same?"}]))
    assert result.stats.prompt_tokens > engine.media_tokens(image) + 2 * per_frame


def test_video_on_a_projector_without_vision_is_a_capability_error(e_model, audio_mmproj, clip):
    with Engine(e_model, n_ctx=1024, n_threads=1, mmproj=audio_mmproj) as engine:
        session = session_on(engine)
        with pytest.raises(CapabilityError, match="cannot see video"):
            session.send([{"type": "video", "path": str(clip)}, {"type": "text", "text": "Hi"}])
        assert session.messages == []


# ---------------------------------------------------------------- the CLI


def test_chat_print_prompt_shows_the_frame_layout(e_model, clip, tmp_path):
    proc = run_gemma("chat", "What happens?", "-v", clip, "--model", e_model, "--print-prompt", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    v = vid.load_video(clip)
    assert proc.stdout.startswith("<bos><|turn>user\n" + v.layout + "\nWhat happens?<turn|>")
    assert proc.stdout.count("<|image|>") == 32 and "<|video|>" not in proc.stdout


def test_chat_with_a_video_from_stdin(e_model, vision_mmproj, clip, tmp_path, per_frame):
    import subprocess
    import sys

    from tests.clitools import gemma_env

    proc = subprocess.run([sys.executable, "-m", "gemma_cli", "chat", "Describe it", "-v", "-", "--model", e_model,
                           "--mmproj", vision_mmproj, "--json", *ONE],
                          input=clip.read_bytes(), capture_output=True, env=gemma_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    stats = json.loads(proc.stdout)["stats"]
    assert stats["prompt_tokens"] > 32 * per_frame


def test_describe_video_json_reports_frames_and_tokens(e_model, vision_mmproj, clip, tmp_path, per_frame):
    proc = run_gemma("describe-video", clip, "--frames", "4", "--json", "--model", e_model, "--mmproj", vision_mmproj,
                     *ONE, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    r = out["results"][0]
    assert out["frame_tokens_budget"] == 70 and r["frames"] == 4 and r["frames_in_clip"] == 40
    assert r["timestamps"] == ["00:00", "00:01", "00:02", "00:03"] and r["frame_tokens"] == [per_frame] * 4
    assert r["stats"]["prompt_tokens"] > 4 * per_frame
    proc = run_gemma("describe-video", clip, "--fps", "0.5", "--frame-tokens", "140", "--json", "--model", e_model,
                     "--mmproj", vision_mmproj, *ONE, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["frame_tokens_budget"] == 140 and out["results"][0]["timestamps"] == ["00:00", "00:02"]


def test_describe_video_errors_come_before_the_model_loads(e_model, vision_mmproj, audio_mmproj, clip, tmp_path):
    (tmp_path / "notes.mp4").write_text("meeting notes\n" * 40)
    proc = run_gemma("describe-video", tmp_path / "notes.mp4", "--model", e_model, "--mmproj", vision_mmproj,
                     home=tmp_path)
    assert_one_line_error(proc, str(tmp_path / "notes.mp4"), "is not a video gemma can read")
    proc = run_gemma("describe-video", clip, "--ctx", "1024", "--model", e_model, "--mmproj", vision_mmproj,
                     home=tmp_path)
    assert_one_line_error(proc, "32 frames x ~70 tokens", "1024")
    assert "Loading" not in proc.stderr
    proc = run_gemma("describe-video", clip, "--frame-tokens", "560", "--model", e_model, home=tmp_path)
    assert_one_line_error(proc, "not a Gemma 4 video budget")
    assert proc.returncode == 2
    proc = run_gemma("describe-video", clip, "--model", e_model, "--mmproj", audio_mmproj, home=tmp_path)
    assert_one_line_error(proc, "has no vision encoder", "cannot see video")
    proc = run_gemma("chat", "Hi", "-v", tmp_path / "missing.mp4", "--model", e_model, home=tmp_path)
    assert_one_line_error(proc, "video file not found")


def test_a_conversation_file_with_a_video_url_part(e_model, vision_mmproj, clip, tmp_path):
    conv = {"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "file://" + str(clip)}},
        {"type": "text", "text": "What happens?"}]}]}
    (tmp_path / "conv.json").write_text(json.dumps(conv))
    proc = run_gemma("chat", "--load", tmp_path / "conv.json", "--model", e_model, "--print-prompt", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("<|image|>") == 32 and "00:03 <|image|>\nWhat happens?" in proc.stdout


# ---------------------------------------------------------------- batch lines


def test_videos_in_batch_lines_simple_messages_and_openai(e_model, vision_mmproj, tmp_path, per_frame):
    import base64

    from tests.clitools import run_batch

    write_clip(tmp_path / "clip.mp4", n=6)
    (tmp_path / "notes.mp4").write_text("not a video\n" * 30)
    data_url = "data:video/mp4;base64," + base64.b64encode((tmp_path / "clip.mp4").read_bytes()).decode()
    lines = [
        {"id": "simple", "prompt": "What happens?", "videos": ["clip.mp4"], "max_tokens": 2},
        {"id": "parts", "messages": [{"role": "user", "content": [{"type": "video", "path": str(tmp_path / "clip.mp4")},
                                                                  {"type": "text", "text": "And?"}]}], "max_tokens": 2},
        {"id": "bad", "prompt": "What happens?", "videos": ["notes.mp4"], "max_tokens": 2},
    ]
    proc, results = run_batch(tmp_path, lines, "-m", e_model, "--mmproj", vision_mmproj, "-p", "2", "-t", "0")
    got = {r["id"]: r for r in results}
    assert got["simple"]["error"] is None and got["simple"]["usage"]["prompt_tokens"] > 6 * per_frame
    assert got["parts"]["error"] is None and got["parts"]["usage"]["prompt_tokens"] > 6 * per_frame, got["parts"]
    assert got["bad"]["error"]["code"] == "media" and "notes.mp4" in got["bad"]["error"]["message"]
    assert proc.returncode == 3
    openai = [{"custom_id": "o1", "method": "POST", "url": "/v1/chat/completions",
               "body": {"max_tokens": 2, "messages": [{"role": "user", "content": [
                   {"type": "video_url", "video_url": {"url": data_url}}, {"type": "text", "text": "What happens?"}]}]}}]
    proc, results = run_batch(tmp_path, openai, "-m", e_model, "--mmproj", vision_mmproj, name="o")
    assert proc.returncode == 0, proc.stderr
    assert chat_completion(results[0]).usage.prompt_tokens > 6 * per_frame  # validated by the openai package


def test_chat_with_a_clip_too_long_for_the_context_fails_before_the_model_loads(e_model, vision_mmproj, clip,
                                                                                  tmp_path):
    proc = run_gemma("chat", "What happens?", "-v", clip, "--ctx", "2048", "--model", e_model, "--mmproj",
                     vision_mmproj, home=tmp_path)
    assert_one_line_error(proc, str(clip), "32 frames x ~70 tokens", "2048")
    assert "Loading" not in proc.stderr


def test_a_folder_is_not_a_video(tmp_path):
    with pytest.raises(MediaError, match="is a folder, not a video file") as err:
        vid.load_video(tmp_path)
    assert err.value.hint == "pass a video file"
    from gemma_cli.media.images import load_image

    with pytest.raises(MediaError, match="is a folder, not an image file"):
        load_image(tmp_path)
