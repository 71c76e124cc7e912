"""How a command turns --model and the settings into files: hf: names, drafters and projectors
given as the model, and `gemma models` in a pipe (issue 12, items 2, 12, 19)."""

from __future__ import annotations

import shutil

import pytest
from clitools import assert_one_line_error, run_gemma

HF = "hf:acme/tiny-GGUF/tiny-gemma4-Q8_0.gguf"


def _in_store(home, source: str):
    dest = home / "data" / "models" / "acme" / "tiny-GGUF" / "tiny-gemma4-Q8_0.gguf"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, dest)
    return dest


def test_an_hf_name_of_a_downloaded_file_is_found_not_taken_for_a_path(tmp_path, e_model):
    dest = _in_store(tmp_path, e_model)
    found = run_gemma("models", "path", HF, home=tmp_path)
    assert found.returncode == 0 and found.stdout.strip() == str(dest), found.stderr
    proc = run_gemma("chat", "-m", HF, "hello", "--print-prompt", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "hello" in proc.stdout and "<|turn>user" in proc.stdout


def test_an_hf_name_set_in_the_config_is_found(tmp_path, e_model):
    _in_store(tmp_path, e_model)
    assert run_gemma("config", "set", "model", HF, home=tmp_path).returncode == 0
    proc = run_gemma("chat", "hello", "--print-prompt", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "<|turn>user" in proc.stdout


@pytest.mark.parametrize("command", [["describe-image", "IMG"], ["transcribe", "WAV"]])
def test_media_commands_find_an_hf_model_too(tmp_path, e_model, command):
    """The tiny model has no projector in the store: the error is about that, not 'file not found'."""
    import numpy as np
    import soundfile
    from PIL import Image

    _in_store(tmp_path, e_model)
    img, wav = tmp_path / "a.png", tmp_path / "a.wav"
    Image.new("RGB", (32, 32), "red").save(img)
    soundfile.write(wav, np.zeros(16000, dtype="float32"), 16000)
    args = [{"IMG": img, "WAV": wav}.get(a, a) for a in command]
    proc = run_gemma(*args, "-m", HF, home=tmp_path)
    assert_one_line_error(proc, "no projector (mmproj) found for tiny-gemma4-Q8_0.gguf")


def test_an_hf_name_not_downloaded_names_the_pull_command(tmp_path):
    proc = run_gemma("chat", "-m", "hf:acme/none-GGUF/none.gguf", "hi", home=tmp_path)
    assert_one_line_error(proc, "hf:acme/none-GGUF/none.gguf is not downloaded")
    assert "gemma models pull hf:acme/none-GGUF/none.gguf" in proc.stderr


def test_a_drafter_given_as_the_model_says_to_use_draft(tmp_path, drafter):
    proc = run_gemma("chat", "-m", drafter, "hi", home=tmp_path)
    assert_one_line_error(proc, "is an MTP drafter, not a model")
    assert f"--draft {drafter}" in proc.stderr and "--ctx" not in proc.stderr


def test_a_projector_given_as_the_model_says_to_use_mmproj(tmp_path, vision_mmproj):
    proc = run_gemma("chat", "-m", vision_mmproj, "hi", home=tmp_path)
    assert_one_line_error(proc, "is an image/audio projector (mmproj), not a model")
    assert f"--mmproj {vision_mmproj}" in proc.stderr


def test_models_in_a_pipe_shows_full_names_and_sizes(tmp_path):
    """`gemma models | cat`: no terminal, no COLUMNS: nothing is cut to 80 columns."""
    long = "hf:" + "acme/" + "a-very-long-repository-name-GGUF/" + "gemma-4-some-fine-tune-with-a-long-name-Q8_0.gguf"
    path = tmp_path / "data" / "models" / long[3:]
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF" + b"\0" * 12_345_678)
    proc = run_gemma("models", home=tmp_path, COLUMNS="")
    assert proc.returncode == 0, proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if "a-very-long" in ln)
    assert long in row and "12.3 MB" in row and "downloaded" in row
    assert "…" not in proc.stdout


def test_batch_runs_an_hf_model(tmp_path, e_model):
    import json

    _in_store(tmp_path, e_model)
    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps({"id": "a", "prompt": "hi", "max_tokens": 2}) + "\n")
    proc = run_gemma("batch", lines, "-o", tmp_path / "out.jsonl", "-m", HF, "--temperature", "0", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert record["id"] == "a" and record["error"] is None and record["usage"]["completion_tokens"] >= 1


def test_one_chat_resolves_its_model_once(tmp_path, monkeypatch, e_model, capsys):
    """`gemma chat -m e4b hi`: one store look-up, one config read, one hardware probe, where it was 3, 7
    and 1; the model's GGUF header read twice, where it was 3: by the resolution step (the engine loads
    with that header) and by `--draft auto`'s check of the model, inside the engine."""
    import collections

    from hubserver import isolate

    from gemma_cli import gguf_header
    from gemma_cli.cli import main
    from gemma_cli.store import config, hardware, models

    isolate(monkeypatch, tmp_path)
    f = models.REGISTRY["e4b"].weights("q4_k_m").files[0]
    dest = tmp_path / "data" / "models" / f.repo / f.name
    dest.parent.mkdir(parents=True)
    shutil.copy(e_model, dest)
    counts: collections.Counter = collections.Counter()

    def counted(module, name, key=None):
        original = getattr(module, name)

        def wrapper(*a, **kw):
            counts[key(*a) if key else name] += 1
            return original(*a, **kw)

        monkeypatch.setattr(module, name, wrapper)

    counted(models, "locate")
    counted(config, "_read")
    counted(hardware, "detect")
    counted(gguf_header, "_parse", key=lambda f, path: f"header {path.name}")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(""))  # nothing piped
    with pytest.raises(SystemExit) as done:
        main(["chat", "-m", "e4b", "hi", "--max-tokens", "2", "--temperature", "0"])
    assert done.value.code == 0, capsys.readouterr().err
    assert counts == {"locate": 1, "_read": 1, "detect": 1, f"header {f.name}": 2}


def test_a_model_file_named_without_a_folder_or_suffix(tmp_path, e_model):
    """`-m model` for a file of that name in the current folder is that file, as before the resolution step."""
    import subprocess
    import sys

    from clitools import gemma_env

    shutil.copy(e_model, tmp_path / "tiny")
    proc = subprocess.run([sys.executable, "-m", "gemma_cli", "chat", "-m", "tiny", "hi", "--print-prompt"],
                          capture_output=True, text=True, cwd=tmp_path, env=gemma_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "<|turn>user\nhi" in proc.stdout


def test_the_resolved_model_says_why_and_picks_gpu_layers(tmp_path, e_model):
    """Resolved: the GPU layers from the setting, else from the hardware detected once; the context
    capped at the model's trained one; each choice in `why`."""
    from pathlib import Path

    from gemma_cli.gguf_header import read_header
    from gemma_cli.store import hardware, models
    from gemma_cli.store.resolution import resolve_model

    located = models.locate_file(Path(e_model))
    header = read_header(e_model)
    gpu = hardware.Hardware(gpus=hardware.parse_nvidia_smi("NVIDIA Test, 24564, 24000"), offload=True)
    cpu_build = hardware.Hardware(gpus=gpu.gpus, offload=False)
    assert resolve_model(e_model, located, header, hw=gpu).gpu_layers(8192) == -1  # a tiny model fits
    assert resolve_model(e_model, located, header, hw=cpu_build).gpu_layers(8192) == 0
    chosen = resolve_model(e_model, located, header, gpu_layers=3, hw=gpu)
    assert chosen.gpu_layers(8192) == 3 and "GPU layers: 3 (--gpu-layers or the config)" in chosen.why
    trained = chosen.trained_context
    assert trained > 0 and chosen.context(10 * trained) == trained and chosen.context(None) == min(8192, trained)
    mm = resolve_model(e_model, located, header, mmproj=tmp_path / "p.gguf")
    assert mm.mmproj == tmp_path / "p.gguf" and f"projector: {tmp_path / 'p.gguf'} (--mmproj)" in mm.why


def test_verbose_shows_how_the_model_was_resolved(tmp_path, e_model):
    proc = run_gemma("chat", "-m", e_model, "hi", "--max-tokens", "1", "--verbose", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"model: {e_model} ({e_model})" in proc.stderr and "GPU layers: 0" in proc.stderr
