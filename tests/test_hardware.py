"""Hardware detection from recorded tool outputs, and the recommendation against the VRAM guide."""

from __future__ import annotations

import json

import pytest
from clitools import run_gemma
from hubserver import isolate

from gemma_cli.store import hardware
from gemma_cli.store.hardware import Hardware

GIB = 1 << 30
MIB = 1 << 20


@pytest.fixture(autouse=True)
def home(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    return tmp_path


# `nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits`, as recorded.
SMI = {
    4: "NVIDIA GeForce GTX 1650, 4096, 3911\n",
    8: "NVIDIA GeForce RTX 3070, 8192, 7855\n",
    12: "NVIDIA GeForce RTX 3060, 12288, 11917\n",
    16: "NVIDIA GeForce RTX 4080, 16376, 15953\n",
    24: "NVIDIA GeForce RTX 4090, 24564, 24082\n",
    48: "NVIDIA RTX A6000, 49140, 48655\n",
    80: "NVIDIA A100-SXM4-80GB, 81920, 81037\n",
}
TWO_4090 = "NVIDIA GeForce RTX 4090, 24564, 24082\nNVIDIA GeForce RTX 4090, 24564, 23890\n"
MEMINFO_16G = """MemTotal:       16318412 kB
MemFree:          912344 kB
MemAvailable:   11734520 kB
Buffers:          201928 kB
Cached:          9876540 kB
SwapTotal:       2097148 kB
"""


def on_gpu(smi: str, **kw) -> Hardware:
    return Hardware(gpus=hardware.parse_nvidia_smi(smi), ram_total=64 * GIB, ram_available=40 * GIB,
                    cpu_logical=16, cpu_physical=8, offload=kw.get("offload", True))


def cpu_only(available_gib: float) -> Hardware:
    return Hardware(ram_total=int(available_gib * 1.5 * GIB), ram_available=int(available_gib * GIB),
                    cpu_logical=8, cpu_physical=4)


def test_parse_nvidia_smi():
    gpus = hardware.parse_nvidia_smi(TWO_4090 + "NVIDIA GRID T4-1Q, [N/A], [N/A]\n\n")
    assert [(g.name, g.total, g.free, g.vendor) for g in gpus] == [
        ("NVIDIA GeForce RTX 4090", 24564 * MIB, 24082 * MIB, "nvidia"),
        ("NVIDIA GeForce RTX 4090", 24564 * MIB, 23890 * MIB, "nvidia"),
    ]
    assert hardware.parse_nvidia_smi("") == []


def test_parse_rocm_smi():
    out = json.dumps({"card0": {"Card Series": "Radeon RX 7900 XTX", "VRAM Total Memory (B)": "25753026560",
                                "VRAM Total Used Memory (B)": "1073741824"}})
    (g,) = hardware.parse_rocm_smi(out)
    assert (g.name, g.total, g.free, g.vendor) == ("Radeon RX 7900 XTX", 25753026560, 25753026560 - GIB, "amd")
    assert hardware.parse_rocm_smi("not json") == []


def test_parse_meminfo_and_cpuinfo():
    assert hardware.parse_meminfo(MEMINFO_16G) == (16318412 * 1024, 11734520 * 1024)
    old_kernel = "MemTotal: 1000 kB\nMemFree: 100 kB\nCached: 300 kB\n"
    assert hardware.parse_meminfo(old_kernel) == (1000 * 1024, 400 * 1024)
    cpuinfo = "".join(f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i % 4}\n\n" for i in range(8))
    assert hardware.parse_cpuinfo(cpuinfo) == 4  # 8 threads on 4 cores
    assert hardware.parse_cpuinfo("processor : 0\n") == 0


def test_apple_unified_memory():
    vm = "Mach Virtual Memory Statistics: (page size of 16384 bytes)\nPages free: 100000.\nPages inactive: 200000.\nPages speculative: 10000.\n"
    assert hardware.parse_vm_stat(vm) == 310000 * 16384
    g = hardware.apple_gpu(64 * GIB, 40 * GIB)
    assert (g.total, g.free, g.vendor) == (48 * GIB, 40 * GIB, "apple")
    assert hardware.apple_gpu(16 * GIB, 12 * GIB).total == int(16 * GIB * 0.66)


# The seeds' guide: <5 GB E2B 4-bit; 5-8 E4B 4-bit; 15-20 E4B BF16; 24-32 31B 4-bit; 48-80 31B BF16.
@pytest.mark.parametrize("gb,name", [
    (4, "e2b:q4_k_m"),
    (8, "e4b:q4_k_m"),
    (12, "e4b:q4_k_m"),  # between the guide's rows: the lower row
    (16, "e4b:bf16"),
    (24, "31b:q4_k_m"),
    (48, "31b:q8_0"),  # the guide says 31B BF16, but 61 GB of weights do not fit in 48: stepped down
    (80, "31b:bf16"),
])
def test_recommendation_follows_the_vram_guide(gb, name):
    rec = hardware.recommend(on_gpu(SMI[gb]))
    assert rec.name == name
    assert rec.gpu_layers == -1, "all layers fit"
    assert rec.reasons[0].startswith(f"GPU: {SMI[gb].split(',')[0]}, {gb} GB VRAM")
    assert any("the VRAM guide puts" in r for r in rec.reasons)
    assert any(r.startswith("all ") and "layers on the GPU" in r for r in rec.reasons)


def test_the_step_down_is_explained():
    rec = hardware.recommend(on_gpu(SMI[48]))
    assert any("31b:bf16 needs about" in r and "stepped down to 31b:q8_0" in r for r in rec.reasons)


def test_several_gpus_add_up():
    rec = hardware.recommend(on_gpu(TWO_4090))
    assert rec.name == "31b:q8_0" and rec.gpu_layers == -1
    assert rec.reasons[0].startswith("GPU: NVIDIA GeForce RTX 4090 (2x), 48 GB VRAM")
    assert any("split across 2 GPUs" in r for r in rec.reasons)


def test_the_kv_cache_of_a_long_context_counts():
    assert hardware.recommend(on_gpu(SMI[24]), ctx=8192).name == "31b:q4_k_m"
    long = hardware.recommend(on_gpu(SMI[24]), ctx=131072)
    assert long.name == "26b:q4_k_m", "31B with a 128K-token KV cache does not fit: the MoE does"
    assert any("stepped down" in r for r in long.reasons)
    assert long.plan.kv > hardware.recommend(on_gpu(SMI[24]), ctx=8192).plan.kv


def test_a_small_card_gets_as_many_layers_as_fit():
    rec = hardware.recommend(on_gpu("NVIDIA GeForce GT 1030, 2048, 1800\n"))
    assert rec.name == "e2b:q4_k_m" and 0 < rec.gpu_layers < 35
    assert any(f"only {rec.gpu_layers} of 35 layers fit" in r for r in rec.reasons)


@pytest.mark.parametrize("available,name", [(3, "e2b:q4_k_m"), (6, "e2b:q4_k_m"), (11, "e4b:q4_k_m"),
                                            (20, "e4b:q4_k_m"), (30, "26b:q4_k_m"), (100, "26b:q4_k_m")])
def test_cpu_only_picks_by_free_ram(available, name):
    rec = hardware.recommend(cpu_only(available))
    assert rec.name == name and rec.gpu_layers == 0
    assert rec.reasons[0] == "no usable GPU: choosing by free RAM"


def test_cpu_only_from_meminfo_and_moe_reason():
    total, available = hardware.parse_meminfo(MEMINFO_16G)
    assert hardware.recommend(Hardware(ram_total=total, ram_available=available)).name == "e4b:q4_k_m"
    rec = hardware.recommend(cpu_only(64))
    assert any("mixture of experts" in r for r in rec.reasons)


def test_too_little_ram_still_answers_with_a_warning():
    rec = hardware.recommend(cpu_only(2))
    assert rec.name == "e2b:q4_k_m" and any("may not fit" in r for r in rec.reasons)


def test_a_gpu_with_a_cpu_only_build():
    hw = on_gpu(SMI[24], offload=False)
    rec = hardware.recommend(hw)
    assert rec.gpu_layers == 0 and rec.name == "26b:q4_k_m"  # chosen by the 40 GB of RAM
    assert "cannot use it" in rec.reasons[0]
    (problem, fix), = hardware.problems(hw)
    assert "CPU-only" in problem
    assert fix == 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36'


def test_detect_runs_without_tools(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    hw = hardware.detect()  # never asks the engine (commands.machine does)
    assert hw.gpus == [] and hw.cpu_logical >= 1


def test_doctor_json_on_this_machine(home):
    proc = run_gemma("doctor", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) >= {"system", "gpus", "backend", "recommended", "installed", "paths", "problems"}
    assert report["recommended"]["name"] and report["recommended"]["reasons"]
    assert report["paths"]["config"] == str(home / "config.yaml")
    assert report["paths"]["model_dir"] == str(home / "data" / "models")


def test_doctor_json_reports_a_cpu_only_build_on_a_gpu_machine(monkeypatch):
    from typer.testing import CliRunner

    from gemma_cli.cli import app

    monkeypatch.setattr(hardware, "detect", lambda **kw: on_gpu(SMI[16], offload=None))
    from gemma_cli.commands import machine

    monkeypatch.setattr(machine, "gpu_offload", lambda: False)  # the engine's answer, asked at the face
    r = CliRunner().invoke(app, ["doctor", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["backend"]["gpu_offload"] is False
    assert report["gpus"][0]["name"] == "NVIDIA GeForce RTX 4080"
    assert any('CMAKE_ARGS="-DGGML_CUDA=on"' in p["fix"] for p in report["problems"])
    text = CliRunner().invoke(app, ["doctor"]).stdout
    assert "CPU-only build" in text and "fix: CMAKE_ARGS" in text


def test_auto_gpu_layers_for_located_models(tmp_path, synthetic_models):
    from gemma_cli.store import models

    spec = models.REGISTRY["e4b"]
    weights = tmp_path / "gemma-4-E4B-it-Q4_K_M.gguf"
    with open(weights, "wb") as f:
        f.truncate(spec.size("q4_k_m"))  # sparse: the real size without the bytes
    loc = models.Located("e4b:q4_k_m", weights, None, None, spec)
    assert hardware.auto_gpu_layers(loc, hw=on_gpu(SMI[8])) == -1
    small = hardware.auto_gpu_layers(loc, hw=on_gpu("NVIDIA GeForce GT 1030, 2048, 1800\n"))
    assert 0 < small < spec.layers
    assert hardware.auto_gpu_layers(loc, hw=cpu_only(30)) == 0
    unknown = models.Located("x", models.Path(synthetic_models["e_model"]), None, None, None)
    assert hardware.auto_gpu_layers(unknown, hw=on_gpu(SMI[8])) == -1


def test_auto_gpu_layers_counts_the_context_for_a_model_given_by_path(tmp_path, gemma3_base):
    from gemma_cli.store import models

    spec = models.REGISTRY["31b"]
    weights = tmp_path / "gemma-4-31B-it-Q4_K_M.gguf"
    with open(weights, "wb") as f:
        f.truncate(spec.size("q4_k_m"))
    by_path = models.Located(str(weights), weights, None, None, None)  # `-m FILE.gguf`: no spec attached
    assert hardware.auto_gpu_layers(by_path, ctx=4096, hw=on_gpu(SMI[24])) == -1
    long = hardware.auto_gpu_layers(by_path, ctx=131072, hw=on_gpu(SMI[24]))
    assert 0 < long < spec.layers  # the registry's KV layout at 128K does not fit beside the weights
    # A model the registry does not know: its header's KV layout, scaled by the context.
    base = models.Located("base", models.Path(gemma3_base), None, None, None)
    card = on_gpu("NVIDIA GeForce GT 1030, 2048, 1500\n")
    assert hardware.auto_gpu_layers(base, ctx=4096, hw=card) == -1
    assert 0 < hardware.auto_gpu_layers(base, ctx=131072, hw=card) < 18


def test_gpu_offload_is_what_this_llama_cpp_build_says():
    import llama_cpp

    from gemma_cli.commands import machine

    assert machine.gpu_offload() is bool(llama_cpp.llama_supports_gpu_offload())


def fake_tool(folder, name: str, output: str, status: int = 0) -> None:
    tool = folder / name
    tool.write_text(f"#!/bin/sh\nprintf '%s' '{output}'\nexit {status}\n")  # builtins only: PATH is this folder
    tool.chmod(0o755)


def test_detect_reads_a_real_nvidia_smi_run_and_its_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    fake_tool(tmp_path, "nvidia-smi", SMI[24] + SMI[24])
    hw = hardware.detect()
    assert [g.name for g in hw.gpus] == ["NVIDIA GeForce RTX 4090"] * 2 and hw.vram_free == 2 * 24082 * MIB
    fake_tool(tmp_path, "nvidia-smi", "No devices were found\n", status=6)  # a driver without a card
    hw = hardware.detect()
    assert hw.gpus == [] and hardware.recommend(Hardware(ram_total=16 * GIB, ram_available=12 * GIB)).gpu_layers == 0


@pytest.mark.parametrize("total_kb, available_kb, name", [
    (4_026_532, 2_941_268, "e2b:q4_k_m"),     # a 4 GB laptop
    (8_052_520, 6_101_340, "e2b:q4_k_m"),     # 8 GB
    (16_318_412, 11_734_520, "e4b:q4_k_m"),   # 16 GB
    (32_803_468, 29_120_004, "26b:q4_k_m"),   # 32 GB
])
def test_cpu_only_recommendation_from_meminfo_samples(total_kb, available_kb, name):
    sample = f"MemTotal:       {total_kb} kB\nMemFree:         {available_kb // 3} kB\nMemAvailable:   {available_kb} kB\n"
    total, available = hardware.parse_meminfo(sample)
    assert (total, available) == (total_kb * 1024, available_kb * 1024)
    rec = hardware.recommend(Hardware(ram_total=total, ram_available=available))
    assert rec.name == name and rec.gpu_layers == 0
