"""Media loading (Pillow, soundfile), cutting long audio at pauses, and media in the engine's KV cache.

The engine tests run llama.cpp's real image and audio encoders on the tiny synthetic projectors;
images stay small (encoding cost grows with the square of the patches).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from gemma_cli.engine import Engine, Sampling
from gemma_cli.engine.projector import Media
from gemma_cli.errors import CapabilityError, GemmaError, MediaError, ModelError
from gemma_cli.media.audio import load_audio
from gemma_cli.media.cutting import clips, cut
from gemma_cli.media.images import load_image
from tests.media_tokens import audio_tokens, image_tokens, text_tokens
from tests.needs import skip_or_fail

GREEDY = Sampling(temperature=0)
RED, BLUE = (255, 0, 0), (0, 0, 255)


def pixels(m: Media) -> np.ndarray:
    return np.frombuffer(m.data, np.uint8).reshape(m.height, m.width, 3)


def noise_image(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("fmt, suffix", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp"),
                                         ("TIFF", "tiff"), ("GIF", "gif")])
def test_every_format_loads_as_rgb(tmp_path, fmt, suffix):
    path = tmp_path / f"red.{suffix}"
    Image.new("RGB", (20, 10), RED).save(path, fmt)
    m = load_image(path)
    assert (m.kind, m.width, m.height, len(m.data)) == ("image", 20, 10, 600)
    assert np.abs(pixels(m).astype(int) - RED).max() <= 8  # lossy formats drift a little
    assert m.name == str(path)


def test_gif_gives_its_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert tuple(pixels(load_image(path))[0, 0]) == RED


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), RED)
    image.paste(BLUE, (20, 0, 40, 20))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to show
    path = tmp_path / "phone.jpg"
    image.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    m = load_image(path)
    assert (m.width, m.height) == (20, 40)
    p = pixels(m).astype(int)
    assert np.abs(p[5, 10] - RED).max() < 40 and np.abs(p[35, 10] - BLUE).max() < 40  # right half went down


def test_alpha_is_flattened_onto_white(tmp_path):
    image = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    path = tmp_path / "logo.png"
    image.save(path)
    p = pixels(load_image(path))
    assert tuple(p[0, 0]) == RED and tuple(p[1, 3]) == (255, 255, 255)


def test_palette_with_transparency_cmyk_and_16_bit_are_converted(tmp_path):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "pal.png", transparency=1)
    p = pixels(load_image(tmp_path / "pal.png"))
    assert tuple(p[0, 0]) == RED and tuple(p[1, 1]) == (255, 255, 255)

    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "print.jpg", "JPEG", quality=95)
    assert np.abs(pixels(load_image(tmp_path / "print.jpg"))[0, 0].astype(int) - RED).max() < 30

    deep = np.array([[0, 65535], [32768, 16384]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    p = pixels(load_image(tmp_path / "deep.png"))
    assert p[0, 0, 0] == 0 and p[0, 1, 0] == 255 and 120 < p[1, 0, 0] < 135  # scaled, not clipped


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_the_two_channels_are_mixed_not_one_kept(tmp_path):
    t = np.arange(2 * 44100) / 44100
    left, right = 0.4 * np.sin(2 * np.pi * 440 * t), 0.4 * np.sin(2 * np.pi * 660 * t)
    sf.write(tmp_path / "lr.wav", np.stack([left, right], axis=1), 44100)
    mono = load_audio(tmp_path / "lr.wav", 16000).samples
    spectrum = np.abs(np.fft.rfft(mono))
    freqs = np.fft.rfftfreq(len(mono), 1 / 16000)
    at = {hz: spectrum[np.argmin(np.abs(freqs - hz))] for hz in (440, 660)}
    assert 0.8 < at[440] / at[660] < 1.25  # both channels, at equal weight
    assert abs(np.max(np.abs(mono)) - 0.4) < 0.1  # averaged, not summed (0.8) or clipped


@pytest.mark.parametrize("content, needle", [
    (b"", "empty (0 bytes)"),
    (b"hello, I am text\n" * 10, "not an image"),
    ("truncated", "truncated or damaged"),
    (_png_claiming(100_000, 100_000), "too large"),
], ids=["empty", "text", "truncated", "bomb"])
def test_bad_images_are_one_line_errors_naming_the_file(tmp_path, content, needle):
    path = tmp_path / "bad.png"
    if content == "truncated":
        buf = io.BytesIO()
        noise_image(64, 64).save(buf, "PNG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(MediaError) as err:
        load_image(path)
    assert needle in err.value.message and str(path) in err.value.message
    assert "\n" not in err.value.message and err.value.hint


def test_missing_image_is_an_error(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        load_image(tmp_path / "nope.png")


# ---------------------------------------------------------------- audio


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("fmt, suffix", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
def test_stereo_44k_audio_becomes_mono_16k(tmp_path, fmt, suffix):
    if fmt not in sf.available_formats():
        skip_or_fail(f"this libsndfile cannot write {fmt}")
    stereo = np.stack([tone(2.0, 44100), tone(2.0, 44100)], axis=1)
    path = tmp_path / f"talk.{suffix}"
    sf.write(path, stereo, 44100, format=fmt)
    audio = load_audio(path, 16000)
    assert audio.rate == 16000 and audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    assert abs(audio.seconds - 2.0) < 0.1  # MP3 adds encoder padding
    assert abs(peak_hz(audio.samples, 16000) - 440) < 5


@pytest.mark.parametrize("content, needle", [
    (b"", "empty (0 bytes)"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio at all" * 4, "not audio gemma can read"),
    (bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8)), "not audio gemma can read"),
], ids=["empty", "bad-header", "noise"])
def test_bad_audio_is_one_line_error_naming_the_file(tmp_path, content, needle):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(MediaError) as err:
        load_audio(path)
    assert needle in err.value.message and str(path) in err.value.message and "\n" not in err.value.message


def recording_with_two_pauses(rate: int = 16000) -> np.ndarray:
    """75 s: tones and noise, silent at 24-26 s and 49-51 s."""
    rng = np.random.default_rng(7)
    parts = []
    for seconds, kind in [(24, "tone"), (2, "silence"), (23, "noise"), (2, "silence"), (24, "tone")]:
        n = seconds * rate
        if kind == "tone":
            t = np.arange(n) / rate
            parts.append(0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(t)) * t))
        elif kind == "noise":
            parts.append(0.2 * rng.standard_normal(n))
        else:
            parts.append(0.001 * rng.standard_normal(n))  # a room is never perfectly silent
    return np.concatenate(parts).astype(np.float32)


def test_long_audio_is_cut_in_its_pauses():
    samples = recording_with_two_pauses()
    segments = cut(samples, 16000)
    assert len(segments) == 3
    assert segments[0].start == 0 and segments[-1].end == pytest.approx(75.0)
    for a, b in zip(segments, segments[1:]):
        assert a.end == b.start and a.last == b.first
    assert 24.2 < segments[0].end < 25.8 and 49.2 < segments[1].end < 50.8  # inside the pauses, not at 30 s
    assert all(s.end - s.start <= 30 for s in segments)


def test_audio_without_pauses_is_still_cut_into_30_s_pieces():
    samples = (0.2 * np.random.default_rng(3).standard_normal(70 * 16000)).astype(np.float32)
    segments = cut(samples, 16000)
    assert all(s.end - s.start <= 30 for s in segments) and len(segments) >= 3
    assert segments[0].first == 0 and segments[-1].last == len(samples)
    assert cut(samples[: 16000 * 20], 16000) == [type(segments[0])(0.0, 20.0, 0, 320000)]
    pieces = clips(type("A", (), {"samples": samples, "rate": 16000, "name": "x.wav"})(), segments)
    assert sum(len(p.data) for p in pieces) == 4 * len(samples)


# ---------------------------------------------------------------- the engine


def image_media(w: int = 64, h: int = 48, seed: int = 0, name: str = "img.png") -> Media:
    return Media.image(np.asarray(noise_image(w, h, seed)).tobytes(), w, h, name)


def clip(seconds: float = 1.0) -> Media:
    return Media.audio(tone(seconds, 16000), 16000, "beep.wav")


@pytest.fixture(scope="module")
def av_engine(e_model, av_mmproj):
    with Engine(e_model, n_ctx=2048, n_threads=1, mmproj=av_mmproj, image_tokens=70) as engine:
        yield engine


def test_projector_capabilities_and_batch(av_engine):
    p = av_engine.media
    assert p.vision and p.audio and p.sample_rate == 16000
    # hidden 64 is not E2B/E4B: image attention is non-causal, so a whole image fits one micro-batch
    assert p.non_causal_images and av_engine.n_ubatch >= p.batch_needed >= 70


@pytest.mark.parametrize("budget", [70, 1120])
def test_budget_changes_the_image_token_count(e_model, vision_mmproj, budget):
    with Engine(e_model, n_ctx=2048, n_threads=1, mmproj=vision_mmproj, image_tokens=budget) as engine:
        n = engine.media_tokens(image_media(640, 480))
        assert engine.n_ubatch >= n  # the engine sized its batch for the budget
    # what llama.cpp's mtmd makes of 640x480 at this budget (it rounds up to whole 48 px patches)
    assert n == image_tokens(e_model, vision_mmproj, 640, 480, budget=budget)
    assert 0.85 * budget <= n <= 1.1 * budget


def test_image_and_audio_are_evaluated_in_place(av_engine, e_model, av_mmproj):
    av_engine.reset()
    img, sound = image_media(), clip()
    prompt = "<bos><|turn>user\n<|image|><|audio|>What is this?<turn|>\n<|turn>model\n"
    steps = list(av_engine.stream_generate(prompt, media=[img, sound], max_tokens=3, sampling=GREEDY))
    # Asked of llama.cpp itself: its tokenizer, and mtmd's embeddings of a 64x48 image at 70 and of 1 s of audio.
    n_text = text_tokens(e_model, prompt) - 2
    n_image = image_tokens(e_model, av_mmproj, 64, 48, budget=70)
    n_audio = audio_tokens(e_model, av_mmproj, len(tone(1.0, 16000)))
    # each placeholder became <|image>/<|audio>, the embeddings, <image|>/<audio|>
    assert steps[-1].prompt_tokens == n_text + (n_image + 2) + (n_audio + 2)
    assert steps[-1].generated_tokens == 3
    assert av_engine.media_tokens(img) == n_image and av_engine.media_tokens(sound) == n_audio


def test_same_image_is_reused_from_the_kv_cache(av_engine, monkeypatch):
    av_engine.reset()
    img = image_media(seed=3)
    head = "<bos><|turn>user\n<|image|>"
    list(av_engine.stream_generate(head + "What is it?<turn|>\n<|turn>model\n", media=[img], max_tokens=2,
                                   sampling=GREEDY))
    calls = []
    real = av_engine.media.decode
    monkeypatch.setattr(av_engine.media, "decode", lambda *a, **k: calls.append(a) or real(*a, **k))
    steps = list(av_engine.stream_generate(head + "And the colours?<turn|>\n<|turn>model\n", media=[img],
                                           max_tokens=2, sampling=GREEDY))
    assert calls == []  # not encoded again
    assert steps[-1].reused_tokens >= len(av_engine.tokenize("<bos><|turn>user\n")) + 82
    # another image in the same place: encoded, and only what follows the shared text is evaluated
    list(av_engine.stream_generate(head + "What is it?<turn|>\n<|turn>model\n", media=[image_media(seed=4)],
                                   max_tokens=2, sampling=GREEDY))
    assert len(calls) == 1 and av_engine.last_prefill[1] == len(av_engine.tokenize("<bos><|turn>user\n"))


def test_a_chat_turn_after_an_image_evaluates_only_its_new_tokens(av_engine, e_model, av_mmproj, tmp_path,
                                                                 monkeypatch):
    from gemma_cli.chat.session import ChatSession, Done, format_for

    av_engine.reset()
    noise_image(seed=5).save(tmp_path / "cat.png")
    info = av_engine.info
    session = ChatSession(av_engine, format_for(info.architecture, info.chat_template, info.bos, info.eos),
                          sampling=GREEDY, max_tokens=4)

    def turn(content):
        return next(e.result for e in session.send(content) if isinstance(e, Done))

    first = turn([{"type": "image", "path": str(tmp_path / "cat.png")}, {"type": "text", "text": "What is it?"}])
    n_image = image_tokens(e_model, av_mmproj, 64, 48, budget=70)  # counted by llama.cpp's mtmd
    assert first.stats.prompt_tokens > n_image and first.stats.reused_tokens == 0
    calls = []
    real = av_engine.media.decode
    monkeypatch.setattr(av_engine.media, "decode", lambda *a, **k: calls.append(a) or real(*a, **k))
    second = turn("And the colours?")
    assert calls == []
    assert second.stats.reused_tokens > n_image  # the image (and the text around it) came from the cache
    follow_up = av_engine.tokenize("<turn|>\n<|turn>user\nAnd the colours?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>")
    # the new turn plus at most the previous answer re-tokenized from its text
    assert second.stats.prompt_tokens <= len(follow_up) + first.stats.generated_tokens + 2


def test_an_image_too_big_for_one_batch_is_refused_before_llama_cpp_aborts(e_model, vision_mmproj):
    with Engine(e_model, n_ctx=2048, n_threads=1, n_batch=64, mmproj=vision_mmproj, image_tokens=70) as engine:
        thin = image_media(2, 3000, name="thin.png")  # a 2 px wide strip: llama.cpp scales it to ~300 tokens
        assert engine.media_tokens(thin) > engine.n_ubatch
        with pytest.raises(GemmaError, match="thin.png needs .* tokens in one batch"):
            list(engine.stream_generate("<bos><|turn>user\n<|image|>Hi<turn|>\n", media=[thin], max_tokens=1))
        steps = list(engine.stream_generate("<bos><|turn>user\n<|image|>Hi<turn|>\n", media=[image_media()],
                                            max_tokens=1, sampling=GREEDY))
        assert steps[-1].generated_tokens == 1  # still usable


def test_audio_on_a_vision_only_projector_is_a_capability_error(e_model, vision_mmproj):
    with Engine(e_model, n_ctx=512, n_threads=1, mmproj=vision_mmproj) as engine:
        with pytest.raises(CapabilityError,
                           match="^synthetic-gemma4-e has no audio encoder; audio needs E2B, E4B or 12B"):
            list(engine.stream_generate("<bos><|audio|>", media=[clip()], max_tokens=1))


def test_images_on_an_audio_only_projector_and_without_any(e_model, audio_mmproj, tmp_path):
    with Engine(e_model, n_ctx=512, n_threads=1, mmproj=audio_mmproj) as engine:
        with pytest.raises(CapabilityError, match="no vision encoder"):
            engine.media_tokens(image_media())
    alone = tmp_path / "model.gguf"
    alone.write_bytes(open(e_model, "rb").read())
    with Engine(alone, n_ctx=512, n_threads=1) as engine:
        with pytest.raises(CapabilityError, match="no projector loaded for image"):
            engine.media_tokens(image_media())


def test_wrong_projector_files_are_clean_errors(e_model, dense_vision_mmproj):
    with pytest.raises(ModelError, match="not a projector"):
        Engine(e_model, n_ctx=256, n_threads=1, mmproj=e_model)
    with pytest.raises(ModelError, match="could not load the projector .*mismatch") as e:
        Engine(e_model, n_ctx=256, n_threads=1, mmproj=dense_vision_mmproj)
    assert "\n" not in e.value.message  # llama.cpp logs the reason and a hint in one call: one line of it


def test_placeholders_and_media_must_match(av_engine):
    with pytest.raises(MediaError, match="more <|image|> placeholders"):
        list(av_engine.stream_generate("<bos><|image|><|image|>", media=[image_media()], max_tokens=1))
    with pytest.raises(MediaError, match="out of order"):
        list(av_engine.stream_generate("<bos><|image|>", media=[clip()], max_tokens=1))
    with pytest.raises(MediaError, match="without a placeholder"):
        list(av_engine.stream_generate("<bos>Hi", media=[clip()], max_tokens=1))


def test_attaching_a_projector_later_resizes_the_batch(e_model, vision_mmproj):
    with Engine(e_model, n_ctx=1024, n_threads=1, n_batch=32) as engine:
        assert engine.n_ubatch == 32
        engine.attach_projector(vision_mmproj, image_tokens=70)
        assert engine.n_ubatch >= image_tokens(e_model, vision_mmproj, 64, 48, budget=70)  # an image in one batch
        steps = list(engine.stream_generate("<bos><|turn>user\n<|image|>Hi<turn|>\n", media=[image_media()],
                                            max_tokens=2, sampling=GREEDY))
        assert steps[-1].generated_tokens == 2


# ---------------------------------------------------------------- chat sessions


def session_on(engine, max_tokens: int = 1):
    from gemma_cli.chat.session import ChatSession, format_for

    info = engine.info
    return ChatSession(engine, format_for(info.architecture, info.chat_template, info.bos, info.eos),
                       sampling=GREEDY, max_tokens=max_tokens)


def reply_of(events):
    from gemma_cli.chat.session import Done

    return next(e.result for e in events if isinstance(e, Done))


def test_long_audio_in_a_chat_becomes_clips_cut_at_the_pause(av_engine, tmp_path):
    av_engine.reset()
    rng = np.random.default_rng(2)
    talk = np.concatenate([tone(19, 16000), 0.001 * rng.standard_normal(2 * 16000), tone(19, 16000, 330)])
    sf.write(tmp_path / "talk.wav", talk.astype(np.float32), 16000)
    session = session_on(av_engine)
    result = reply_of(session.send([{"type": "audio", "path": str(tmp_path / "talk.wav")},
                                    {"type": "text", "text": "Summarise."}]))
    parts = session.messages[0]["content"]
    assert [p["type"] for p in parts] == ["audio", "audio", "text"]
    assert parts[0]["start"] == 0 and 19 < parts[0]["end"] == parts[1]["start"] < 21 and parts[1]["end"] == 40
    assert result.stats.prompt_tokens > 2 * 400  # both clips were encoded (25 tokens a second)


def test_media_parts_from_data_urls_and_inline_audio(av_engine, e_model, av_mmproj, tmp_path):
    import base64

    av_engine.reset()
    buf = io.BytesIO()
    noise_image(seed=9).save(buf, "PNG")
    wav = io.BytesIO()
    sf.write(wav, tone(1.0, 16000), 16000, format="WAV")
    session = session_on(av_engine)
    result = reply_of(session.send([
        {"type": "image", "url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()},
        {"type": "audio", "data": base64.b64encode(wav.getvalue()).decode(), "format": "wav"},
        {"type": "text", "text": "Hi"}]))
    # both were decoded and evaluated: more than their embeddings as llama.cpp's mtmd counts them
    n_media = image_tokens(e_model, av_mmproj, 64, 48, budget=70) + audio_tokens(e_model, av_mmproj, 16000)
    assert result.stats.prompt_tokens > n_media
    with pytest.raises(MediaError, match="does not download"):
        session.send([{"type": "image", "url": "https://example.com/cat.png"}, {"type": "text", "text": "Hi"}])
    assert len(session.messages) == 2  # the failed message never joined the history


def test_prompt_order_follows_the_renderer():
    from gemma_cli.format import prompt
    from gemma_cli.media.parts import prompt_order

    img = lambda n: {"type": "image", "path": n}  # noqa: E731
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [img("u1"), {"type": "text", "text": "Look"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}, img("a1")],
         "tool_calls": [{"id": "c", "function": {"name": "snap", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "c", "name": "snap", "content": [{"type": "text", "text": "x"}, img("t1")]},
        {"role": "user", "content": [img("u2"), img("u3"), {"type": "text", "text": "Compare"}]},
    ]
    assert [p["path"] for p in prompt_order(messages)] == ["u1", "t1", "a1", "u2", "u3"]
    assert prompt.render(messages).count("<|image|>") == 5
    # the renderer writes only the text of the system message: an image there is refused, not dropped
    messages[0]["content"].insert(0, img("sys"))
    assert prompt.render(messages).count("<|image|>") == 5
    with pytest.raises(MediaError, match="system message holds an image"):
        prompt_order(messages)


def test_a_projector_is_loaded_at_the_first_image(e_model, vision_mmproj, tmp_path):
    noise_image(seed=6).save(tmp_path / "x.png")
    with Engine(e_model, n_ctx=1024, n_threads=1, n_batch=32) as engine:
        engine.mmproj_path = vision_mmproj  # what `gemma chat` sets for the REPL's /image
        session = session_on(engine)
        result = reply_of(session.send([{"type": "image", "path": str(tmp_path / "x.png")},
                                        {"type": "text", "text": "Hi"}]))
        assert engine.media is not None and result.stats.prompt_tokens > 300  # default budget 280 -> 300
        with pytest.raises(CapabilityError, match="no audio encoder"):
            session.send([{"type": "audio", "path": str(tmp_path / "x.png")}, {"type": "text", "text": "Hi"}])


def test_the_unified_projector_reads_images_and_audio_too(e_model, unified_mmproj):
    # 12B-style encoder-free projector (gemma4uv + gemma4ua): same API, same KV cache handling
    with Engine(e_model, n_ctx=2048, n_threads=1, mmproj=unified_mmproj, image_tokens=70) as engine:
        assert engine.media.vision and engine.media.audio and engine.media.sample_rate == 16000
        prompt = "<bos><|turn>user\n<|image|><|audio|>What is this?<turn|>\n<|turn>model\n"
        steps = list(engine.stream_generate(prompt, media=[image_media(), clip()], max_tokens=2, sampling=GREEDY))
        assert steps[-1].generated_tokens == 2
        assert engine.media_tokens(image_media()) > 0 and engine.media_tokens(clip()) > 0
