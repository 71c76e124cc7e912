"""`gemma describe-image` and `gemma chat -i/-a` through the real CLI, llama.cpp and the synthetic projectors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.clitools import assert_one_line_error, gemma_env, run_gemma
from tests.media_tokens import image_tokens

FAST = ["--image-tokens", "70", "--max-tokens", "3", "--temperature", "0"]
ONE = ["--threads", "1"]  # llama.cpp's threads spin-wait: with cores shared by other jobs, one thread is steadier
FORMATS = [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tif")]


def picture(seed: int = 0, w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, (fmt, suffix) in enumerate(FORMATS):
        path = tmp_path / f"img{i}.{suffix}"
        picture(i).save(path, fmt)
        paths.append(path)
    return paths


def describe(*args, home, model, mmproj, extra=FAST):
    return run_gemma("describe-image", *args, "--model", model, "--mmproj", mmproj, *extra, *ONE, home=home)


def test_every_image_format_is_described(images, e_model, vision_mmproj, tmp_path):
    proc = describe(*images, "--json", home=tmp_path, model=e_model, mmproj=vision_mmproj)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model"] == "gemma4-e.gguf" and out["image_tokens_budget"] == 70
    assert [r["images"] for r in out["results"]] == [[str(p)] for p in images]
    n = image_tokens(e_model, vision_mmproj, 64, 48, budget=70)  # asked of llama.cpp's mtmd
    for r in out["results"]:
        assert r["image_tokens"] == [n]
        assert r["stats"]["generated_tokens"] <= 3 and r["stats"]["prompt_tokens"] > n
    assert proc.stderr == ""  # llama.cpp's and mtmd's logs stay quiet


def test_text_output_streams_one_description_per_image(images, e_model, vision_mmproj, tmp_path):
    proc = describe(images[0], images[1], home=tmp_path, model=e_model, mmproj=vision_mmproj)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{images[0]}:" and f"{images[1]}:" in lines


def test_together_is_one_turn_with_all_images(images, e_model, vision_mmproj, tmp_path):
    proc = describe(images[0], images[1], "--together", "-p", "What changed?", "--json", home=tmp_path,
                    model=e_model, mmproj=vision_mmproj)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)["results"]
    n = image_tokens(e_model, vision_mmproj, 64, 48, budget=70)
    assert result["images"] == [str(images[0]), str(images[1])] and result["image_tokens"] == [n, n]
    assert result["stats"]["prompt_tokens"] > 2 * n


def test_the_budget_changes_the_image_token_count(e_model, vision_mmproj, tmp_path):
    picture(1, 640, 480).save(tmp_path / "photo.png")
    counts = []
    for budget in ("70", "140"):
        proc = describe(tmp_path / "photo.png", "--json", home=tmp_path, model=e_model, mmproj=vision_mmproj,
                        extra=["--image-tokens", budget, "--max-tokens", "1"])
        assert proc.returncode == 0, proc.stderr
        counts.append(json.loads(proc.stdout)["results"][0]["image_tokens"][0])
    # llama.cpp scales 640x480 to the budget in whole 48 px patches
    assert counts == [image_tokens(e_model, vision_mmproj, 640, 480, budget=b) for b in (70, 140)]
    assert counts[0] < counts[1]


def test_an_image_from_stdin(e_model, vision_mmproj, tmp_path):
    picture(2).save(tmp_path / "x.png")
    proc = subprocess.run([sys.executable, "-m", "gemma_cli", "describe-image", "-", "--json", "--model", e_model,
                           "--mmproj", vision_mmproj, *FAST, *ONE], input=(tmp_path / "x.png").read_bytes(),
                          capture_output=True, timeout=120, env=gemma_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["images"] == ["stdin"]


@pytest.mark.parametrize("content, needle", [(b"", "is empty (0 bytes)"), (b"not a picture\n" * 20, "is not an image"),
                                             ("truncated", "is truncated or damaged")])
def test_bad_images_are_one_line_errors(e_model, vision_mmproj, tmp_path, content, needle):
    bad = tmp_path / "bad.jpg"
    if content == "truncated":
        picture(3, 128, 128).save(tmp_path / "whole.jpg", "JPEG")
        content = (tmp_path / "whole.jpg").read_bytes()[:1500]
    bad.write_bytes(content)
    proc = describe(bad, home=tmp_path, model=e_model, mmproj=vision_mmproj)
    assert_one_line_error(proc, str(bad), needle)


def test_good_images_are_described_when_others_are_bad(e_model, vision_mmproj, tmp_path):
    """Issue 12 item 17: one error line per bad file, the good ones described, a non-zero exit at the end."""
    picture(1).save(tmp_path / "ok.png")
    picture(2).save(tmp_path / "ok2.png")
    (tmp_path / "corrupt.png").write_bytes((tmp_path / "ok.png").read_bytes()[:200])
    (tmp_path / "text.png").write_text("not a picture\n" * 20)
    proc = describe(tmp_path / "ok.png", tmp_path / "corrupt.png", tmp_path / "ok2.png", tmp_path / "text.png",
                    "--json", home=tmp_path, model=e_model, mmproj=vision_mmproj)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert [r["images"] for r in out["results"]] == [[str(tmp_path / "ok.png")], [str(tmp_path / "ok2.png")]]
    assert [e["image"] for e in out["errors"]] == [str(tmp_path / "corrupt.png"), str(tmp_path / "text.png")]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 3 and "corrupt.png" in errors[0] and "text.png" in errors[1]
    assert "2 of 4 images could not be read" in errors[2]
    proc = describe(tmp_path / "ok.png", tmp_path / "corrupt.png", home=tmp_path, model=e_model, mmproj=vision_mmproj)
    assert proc.returncode == 1 and proc.stdout.strip()  # text output: the good one is described too
    proc = describe(tmp_path / "corrupt.png", tmp_path / "text.png", home=tmp_path, model=e_model, mmproj=vision_mmproj)
    assert_one_line_error(proc, "none of the 2 images could be read")


def test_usage_and_projector_errors(images, e_model, audio_mmproj, vision_mmproj, tmp_path):
    proc = describe(images[0], home=tmp_path, model=e_model, mmproj=vision_mmproj, extra=["--image-tokens", "300"])
    assert_one_line_error(proc, "not a Gemma 4 budget")
    assert proc.returncode == 2
    proc = describe(images[0], home=tmp_path, model=e_model, mmproj=audio_mmproj)
    assert_one_line_error(proc, "has no vision encoder")
    proc = describe(images[0], home=tmp_path, model=e_model, mmproj=e_model)
    assert_one_line_error(proc, "is not a projector")
    alone = tmp_path / "solo" / "model.gguf"
    alone.parent.mkdir()
    shutil.copy(e_model, alone)
    proc = run_gemma("describe-image", images[0], "--model", alone, *FAST, *ONE, home=tmp_path)
    assert_one_line_error(proc, "no projector (mmproj) found for model.gguf")


def test_a_projector_beside_the_model_is_found(images, e_model, vision_mmproj, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(e_model, folder / "gemma-4-e.gguf")
    shutil.copy(vision_mmproj, folder / "mmproj-gemma-4-e-f16.gguf")
    proc = run_gemma("describe-image", images[0], "--model", folder / "gemma-4-e.gguf", "--json", *FAST, *ONE,
                     home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["image_tokens"] == [image_tokens(e_model, vision_mmproj, 64, 48,
                                                                                 budget=70)]


# ---------------------------------------------------------------- chat -i / -a


def test_chat_with_an_image_and_audio(images, e_model, av_mmproj, tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "beep.wav", 0.3 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000), 16000)
    proc = run_gemma("chat", "What is this?", "-i", images[0], "-a", tmp_path / "beep.wav", "--model", e_model,
                     "--mmproj", av_mmproj, "--json", "-n", "3", "--temperature", "0", "--draft", "off", "--save", *ONE,
                     home=tmp_path)  # --save: a one-shot is kept for --continue only when asked (issue 12, item 5)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)["stats"]
    assert stats["prompt_tokens"] > 300 + 25  # the default budget (280 -> 300 tokens here) and 1 s of audio
    saved = json.loads((tmp_path / "data" / "conversations" / "last.json").read_text())
    parts = saved["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image", "audio", "text"]  # media first, as Gemma 4 wants
    assert parts[0]["path"] == str(images[0].resolve())  # absolute: --continue works from anywhere


def test_chat_print_prompt_shows_the_placeholders(images, e_model, tmp_path):
    proc = run_gemma("chat", "Hi", "-i", images[0], "--model", e_model, "--print-prompt", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("<bos><|turn>user\n<|image|>Hi<turn|>")


def test_chat_media_errors_come_before_the_model_loads(e_model, vision_mmproj, tmp_path):
    proc = run_gemma("chat", "Hi", "-i", tmp_path / "missing.png", "--model", e_model, home=tmp_path)
    assert_one_line_error(proc, "image file not found")
    (tmp_path / "empty.wav").write_bytes(b"")
    proc = run_gemma("chat", "Hi", "-a", tmp_path / "empty.wav", "--model", e_model, home=tmp_path)
    assert_one_line_error(proc, "empty.wav is empty (0 bytes)")
    picture().save(tmp_path / "ok.png")
    import soundfile as sf

    sf.write(tmp_path / "ok.wav", np.zeros(1600), 16000)
    proc = run_gemma("chat", "Hi", "-a", tmp_path / "ok.wav", "--model", e_model, "--mmproj", vision_mmproj,
                     home=tmp_path)
    assert_one_line_error(proc, "synthetic-gemma4-e has no audio encoder; audio needs E2B, E4B or 12B")
