"""The same picture more than once in a prompt (issue 20, item 1), video in `gemma serve` (item 2), two clips
in one message (item 15) and media in a system message (item 17).

The real engine and llama.cpp's real encoders on the tiny synthetic Gemma 4; `gemma serve` is a real
server on 127.0.0.1 driven by the official `openai` client. An encode is counted where llama.cpp is asked
for one (`mtmd_encode_chunk`), and the tokens a picture takes come from llama.cpp's own chunk sizes.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import openai  # a runtime dependency (gemma batch --endpoint): imported plainly, never skipped
import pytest
from PIL import Image

from gemma_cli.engine import Engine, Sampling
from gemma_cli.engine.parallel import Job, Parallel
from gemma_cli.engine.projector import Media
from gemma_cli.media import video as vid
from tests.clitools import assert_one_line_error, run_batch, run_gemma
from tests.test_media import image_media, noise_image
from tests.test_serve import Server, png_data_url
from tests.test_video import write_clip

GREEDY = Sampling(temperature=0)
ONE = ["--threads", "1", "--draft", "off", "--temperature", "0", "-n", "2"]
TURN = "<bos><|turn>user\n{}Describe.<turn|>\n<|turn>model\n"


def write_black_clip(path, n: int = 20, fps: int = 10, w: int = 64, h: int = 48, codec: str = "mpeg4") -> None:
    """A clip of black frames only: every sampled frame is bit-identical (a title card, a pause)."""
    import av

    out = av.open(str(path), "w")
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for _ in range(n):
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((h, w, 3), np.uint8), format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()


@pytest.fixture
def encodes(monkeypatch):
    """How many times llama.cpp's encoder is run (each call of mtmd_encode_chunk)."""
    import llama_cpp.mtmd_cpp as mtmd

    calls = []
    real = mtmd.mtmd_encode_chunk
    monkeypatch.setattr(mtmd, "mtmd_encode_chunk", lambda *a: calls.append(a) or real(*a))
    return calls


@pytest.fixture(scope="module")
def engine(e_model, vision_mmproj):
    with Engine(e_model, n_ctx=2048, n_seq=2, swa_full=True, n_threads=1, mmproj=vision_mmproj,
                image_tokens=70) as e:
        yield e


def span_tokens(engine, m: Media) -> int:
    """The positions one picture takes: llama.cpp's chunk sizes (<|image>, embeddings, <image|>)."""
    return engine.media.span(m).n_pos


# ---------------------------------------------------------------- the engine


def run_one(engine, prompt: str, media: list, logprobs: int = 4):
    engine.reset()
    [done] = list(Parallel(engine, 1).run([Job(engine.tokenize(prompt), GREEDY, 6, media, logprobs=logprobs)]))
    assert done.error is None, done.error
    return done


@pytest.mark.parametrize("order", ["aa", "aba", "aaa"])
def test_a_repeated_picture_is_encoded_once_and_decodes_as_if_encoded_at_each_place(engine, encodes, order):
    pictures = {"a": image_media(seed=11), "b": image_media(seed=12)}
    media = [pictures[c] for c in order]
    prompt = TURN.format("<|image|>" * len(order))
    done = run_one(engine, prompt, media)
    assert len(encodes) == len(set(order))  # one encode per distinct picture
    text = len(engine.tokenize(prompt)) - len(order)
    assert done.prompt_tokens == text + sum(span_tokens(engine, m) for m in media)
    # The oracle: the same pixels under distinct names (digests), so each place is encoded on its own.
    apart = [Media("image", m.data, m.width, m.height, digest=f"{m.digest}:{i}") for i, m in enumerate(media)]
    encodes.clear()
    separate = run_one(engine, prompt, apart)
    assert len(encodes) == len(order)
    assert separate.tokens == done.tokens
    assert [(x.token, x.top) for x in separate.logprobs] == [(x.token, x.top) for x in done.logprobs]


def test_a_repeated_audio_clip_is_encoded_once_too(e_model, av_mmproj, encodes):
    from tests.test_media import clip

    with Engine(e_model, n_ctx=1024, n_seq=2, swa_full=True, n_threads=1, mmproj=av_mmproj) as e:
        sound = clip(0.5)
        prompt = TURN.format("<|audio|><|audio|>")
        done = run_one(e, prompt, [sound, sound])
        assert len(encodes) == 1
        assert done.prompt_tokens == len(e.tokenize(prompt)) - 2 + 2 * span_tokens(e, sound)
        apart = [Media("audio", sound.data, rate=sound.rate, digest=f"{sound.digest}:{i}") for i in range(2)]
        separate = run_one(e, prompt, apart)
        assert len(encodes) == 3
        assert [(x.token, x.top) for x in separate.logprobs] == [(x.token, x.top) for x in done.logprobs]


def test_a_repeated_picture_after_the_cached_prefix_and_history_with_it_three_times(engine, encodes):
    """A fresh prompt whose history holds the picture in three turns; then a follow-up that reuses the cache
    and adds the picture once more (evaluated alone: encoded again, its pixels loaded again)."""
    a = image_media(seed=21)
    turns = "".join(f"<|turn>user\n<|image|>Look {i}.<turn|>\n<|turn>model\nSeen.<turn|>\n" for i in range(3))
    prompt = "<bos>" + turns + "<|turn>user\nWhich?<turn|>\n<|turn>model\n"
    done = run_one(engine, prompt, [a] * 3)
    assert len(encodes) == 1
    assert done.prompt_tokens == len(engine.tokenize(prompt)) - 3 + 3 * span_tokens(engine, a)
    engine.reset()
    steps = list(engine.stream_generate(prompt, media=[a] * 3, max_tokens=2, sampling=GREEDY))
    more = prompt + "Seen.<turn|>\n<|turn>user\n<|image|>Again?<turn|>\n<|turn>model\n"
    steps = list(engine.stream_generate(more, media=[a] * 4, max_tokens=2, sampling=GREEDY))
    assert steps[-1].reused_tokens >= len(engine.tokenize(prompt)) - 3 + 3 * span_tokens(engine, a) - 1
    assert len(encodes) == 3  # the second fresh prompt once, the follow-up once


def test_identical_video_frames_are_encoded_once(engine, encodes, tmp_path):
    from gemma_cli.chat.session import ChatSession, Done, format_of_engine

    write_black_clip(tmp_path / "black.mp4")
    engine.reset()
    session = ChatSession(engine, format_of_engine(engine), sampling=GREEDY, max_tokens=2)
    part = {"type": "video", "path": str(tmp_path / "black.mp4"), "frames": 8}
    result = next(e.result for e in session.send([part, {"type": "text", "text": "What happens?"}])
                  if isinstance(e, Done))
    frames = session.media_parts().load(part).frames
    assert len({f.digest for f in frames}) == 1 and len(frames) == 8
    assert len(encodes) == 1
    assert result.stats.prompt_tokens > 8 * span_tokens(engine, frames[0])


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def pictures(tmp_path):
    noise_image(seed=31).save(tmp_path / "a.png")
    noise_image(seed=32).save(tmp_path / "b.png")
    return tmp_path / "a.png", tmp_path / "b.png"


def chat_json(e_model, vision_mmproj, home, *args):
    proc = run_gemma("chat", "Describe.", *args, "--model", e_model, "--mmproj", vision_mmproj, "--json",
                     "--image-tokens", "70", *ONE, home=home)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["stats"]["prompt_tokens"]


def test_chat_with_the_same_image_twice_and_a_b_a(e_model, vision_mmproj, pictures, tmp_path):
    a, b = pictures
    # a home each: nothing comes from another run's prompt cache on disk
    one = chat_json(e_model, vision_mmproj, tmp_path / "one", "-i", a)
    twice = chat_json(e_model, vision_mmproj, tmp_path / "twice", "-i", a, "-i", a)
    aba = chat_json(e_model, vision_mmproj, tmp_path / "aba", "-i", a, "-i", b, "-i", a)
    with Engine(e_model, n_ctx=512, n_threads=1, mmproj=vision_mmproj, image_tokens=70) as e:
        from gemma_cli.media.images import load_image

        span_a, span_b = (span_tokens(e, load_image(p)) for p in (a, b))
    assert twice - one == span_a
    assert aba - one == span_a + span_b


def test_describe_video_chat_and_batch_with_a_black_clip(e_model, vision_mmproj, tmp_path):
    write_black_clip(tmp_path / "black.mp4")
    proc = run_gemma("describe-video", tmp_path / "black.mp4", "--frames", "2", "--json", "--model", e_model,
                     "--mmproj", vision_mmproj, *ONE, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)["results"][0]
    assert r["frames"] == 2 and r["stats"]["prompt_tokens"] > sum(r["frame_tokens"])
    proc = run_gemma("chat", "What happens?", "-v", tmp_path / "black.mp4", "--model", e_model, "--mmproj",
                     vision_mmproj, "--json", *ONE, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stats"]["prompt_tokens"] > 20 * 70  # every frame of the clip is in
    proc, results = run_batch(tmp_path, [{"id": "black", "prompt": "What happens?", "videos": ["black.mp4"],
                                          "max_tokens": 2}], "-m", e_model, "--mmproj", vision_mmproj, "-t", "0")
    assert proc.returncode == 0, proc.stderr
    assert results[0]["error"] is None and results[0]["usage"]["prompt_tokens"] > 20 * 70


# ---------------------------------------------------------------- gemma serve


@pytest.fixture(scope="module")
def server(e_model, av_mmproj, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve-media"), "-m", e_model, "--mmproj", av_mmproj, "--parallel", "2",
               "--allow-files", "--threads", "1", "--ctx", "8192")
    yield s
    s.stop()


def ask(server, messages, **kw):
    return server.client().chat.completions.create(model="gemma4-e", messages=messages, max_tokens=2,
                                                   temperature=0, **kw)


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_serve_the_same_image_three_times_in_a_message_and_in_three_turns(server):
    url = png_data_url()
    counts = [ask(server, [{"role": "user", "content": [image_part(url)] * n + [{"type": "text", "text": "What?"}]}])
              .usage.prompt_tokens for n in (1, 2, 3)]
    one_image = counts[1] - counts[0]
    assert one_image > 10 and counts[2] - counts[1] == one_image
    history = []
    for i in range(3):
        history += [{"role": "user", "content": [image_part(url), {"type": "text", "text": f"Look {i}."}]},
                    {"role": "assistant", "content": "Seen."}]
    text_only = [{**m, "content": f"Look {i // 2}."} if m["role"] == "user" else m for i, m in enumerate(history)]
    question = [{"role": "user", "content": "Which?"}]
    fresh = ask(server, history + question)
    plain = ask(server, text_only + question)
    assert fresh.choices[0].finish_reason in ("stop", "length")
    assert fresh.usage.prompt_tokens == plain.usage.prompt_tokens + 3 * one_image


def video_url(path) -> str:
    mime = "video/webm" if str(path).endswith(".webm") else "video/mp4"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize("suffix, codec", [("mp4", "mpeg4"), ("webm", "libvpx")])
def test_serve_video_url_from_a_data_url_and_a_file_url(server, tmp_path, suffix, codec):
    path = tmp_path / f"clip.{suffix}"
    write_clip(path, n=30, codec=codec)
    expected = vid.load_video(path)
    text = ask(server, [{"role": "user", "content": "What happens?"}])
    for url in (video_url(path), "file://" + str(path)):
        r = ask(server, [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                      {"type": "text", "text": "What happens?"}]}])
        assert r.choices[0].finish_reason in ("stop", "length")
        # every frame is in the prompt: more than its stamps and its soft tokens at the 70-token budget
        assert r.usage.prompt_tokens > text.usage.prompt_tokens + len(expected.frames) * 70


def test_serve_refuses_a_video_it_would_have_to_download_and_a_broken_one(server):
    with pytest.raises(openai.BadRequestError, match="does not download"):
        ask(server, [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}},
                                                  {"type": "text", "text": "?"}]}])
    with pytest.raises(openai.BadRequestError, match="not a video"):
        ask(server, [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(b"x" * 600).decode()}},
            {"type": "text", "text": "?"}]}])


def test_serve_an_image_too_big_for_one_batch_is_a_400_not_a_500_clients_retry(server):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (3000, 2, 3), dtype=np.uint8)).save(buf, "PNG")
    strip = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    with pytest.raises(openai.BadRequestError, match="in one batch") as e:
        ask(server, [{"role": "user", "content": [image_part(strip), {"type": "text", "text": "?"}]}])
    assert e.value.body["code"] == "invalid_media"


def test_batch_endpoint_with_video_lines_answers_at_once(server, tmp_path):
    """A video line is answered (it was a 500, retried for minutes); a refused one is an error record at once."""
    write_clip(tmp_path / "clip.mp4", n=6)

    def line(cid, url):
        return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": {
            "model": "gemma4-e", "max_tokens": 2, "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What happens?"}]}]}}

    broken = "data:video/mp4;base64," + base64.b64encode(b"x" * 600).decode()
    proc, results = run_batch(tmp_path, [line("good", video_url(tmp_path / "clip.mp4")), line("bad", broken)],
                              "--endpoint", server.url + "/v1")
    records = {r["custom_id"]: r for r in results}
    assert records["good"]["error"] is None, records["good"]
    assert records["good"]["response"]["body"]["usage"]["prompt_tokens"] > 6 * 70
    assert "400" in records["bad"]["error"]["message"] and "not a video" in records["bad"]["error"]["message"]
    assert proc.returncode == 3, proc.stderr
    assert "retried" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------- two clips in one message


def test_two_clips_in_one_message_are_set_apart(e_model, tmp_path):
    write_clip(tmp_path / "a.mp4", n=20)
    write_clip(tmp_path / "b.mp4", n=30)
    proc = run_gemma("chat", "Compare them.", "-v", tmp_path / "a.mp4", "-v", tmp_path / "b.mp4", "--model", e_model,
                     "--print-prompt", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    a, b = vid.load_video(tmp_path / "a.mp4"), vid.load_video(tmp_path / "b.mp4")
    turn = proc.stdout.split("<|turn>user\n", 1)[1].split("<turn|>", 1)[0]
    blocks = turn.split("\n")
    assert blocks == [a.layout, b.layout, "Compare them."]
    assert blocks[0].startswith("00:00") and blocks[1].startswith("00:00")  # both clips start their own clock


# ---------------------------------------------------------------- media in a system message


def system_with_image(url: str) -> dict:
    return {"role": "system", "content": [{"type": "text", "text": "You judge pictures."}, image_part(url)]}


def test_serve_refuses_an_image_in_the_system_message(server):
    with pytest.raises(openai.BadRequestError, match="system message holds an image") as e:
        ask(server, [system_with_image(png_data_url()), {"role": "user", "content": "Is it red?"}])
    assert e.value.body["code"] == "invalid_media" and "put the image in a user message" in e.value.body["message"]


def test_chat_and_batch_refuse_an_image_in_the_system_message(e_model, vision_mmproj, pictures, tmp_path):
    a, _ = pictures
    conv = {"messages": [{"role": "system", "content": [{"type": "text", "text": "Judge."},
                                                        {"type": "image", "path": str(a)}]}]}
    (tmp_path / "conv.json").write_text(json.dumps(conv))
    for extra in (["--print-prompt"], ["--mmproj", vision_mmproj, *ONE]):
        proc = run_gemma("chat", "Is it red?", "--load", tmp_path / "conv.json", "--model", e_model, *extra,
                         home=tmp_path)
        assert_one_line_error(proc, "system message holds an image", "put the image in a user message")
        assert "only the text of the system message" in proc.stderr
    messages = conv["messages"] + [{"role": "user", "content": "Is it red?"}]
    proc, results = run_batch(tmp_path, [{"id": "sys", "messages": messages, "max_tokens": 2},
                                         {"id": "ok", "prompt": "Hi", "max_tokens": 2}],
                              "-m", e_model, "--mmproj", vision_mmproj, "-t", "0")
    got = {r["id"]: r for r in results}
    assert got["ok"]["error"] is None
    assert got["sys"]["error"]["code"] == "media" and "system message holds an image" in got["sys"]["error"]["message"]
    assert proc.returncode == 3
