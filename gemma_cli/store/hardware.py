"""What this machine has, and which Gemma 4 fits it.

Parsing is kept apart from running the tools: `parse_nvidia_smi(text)` and friends take the
tools' output as strings, so tests feed recorded outputs. `detect()` runs the tools (each with a
timeout, any failure tolerated) and `recommend()` applies the seeds' VRAM guide, then checks the
guide's pick against the memory it really needs: weights + the KV cache of the chosen context +
compute buffers. If the pick does not fit it steps down (a smaller quantization of the same
model, then 26B-A4B after 31B, then the guide's row below), and sets GPU layers to all or to as
many as fit. These are estimates for choosing, not promises: the engine has the last word.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from gemma_cli.gguf_header import Header, read_header
from gemma_cli.store.files import file_size
from gemma_cli.store.registry import REGISTRY, identify

GIB = 1 << 30
MIB = 1 << 20
DEFAULT_CTX = 8192
TOOL_TIMEOUT = 5.0

# The seeds' VRAM guide (GEMMA4_FACTS.md), as "from N GiB up": <5 E2B 4-bit; 5-8 E4B 4-bit;
# 15-20 E4B BF16; 24-32 31B 4-bit; 48-80 31B BF16. Between its rows the lower row applies.
GUIDE = ((48, "31b", "bf16"), (24, "31b", "q4_k_m"), (15, "e4b", "bf16"), (5, "e4b", "q4_k_m"), (0, "e2b", "q4_k_m"))
GUIDE_TEXT = {("31b", "bf16"): "48-80 GB", ("31b", "q4_k_m"): "24-32 GB", ("e4b", "bf16"): "15-20 GB",
              ("e4b", "q4_k_m"): "5-8 GB", ("e2b", "q4_k_m"): "under 5 GB"}
# Without a GPU, speed is bound by memory bandwidth: 4-bit only, and the MoE (3.8B active per
# token, so about E4B speed) once there is room for all its 25.2B parameters.
CPU_GUIDE = ((24, "26b", "q4_k_m"), (8, "e4b", "q4_k_m"), (0, "e2b", "q4_k_m"))
_STEP_DOWN = {"bf16": "q8_0", "q8_0": "q4_k_m"}


@dataclass
class Gpu:
    name: str
    total: int  # bytes
    free: int  # bytes
    vendor: str  # nvidia | amd | apple


@dataclass
class Hardware:
    gpus: list[Gpu] = field(default_factory=list)
    ram_total: int = 0
    ram_available: int = 0
    cpu_logical: int = 1
    cpu_physical: int = 1
    offload: bool | None = None  # can this llama-cpp-python build use a GPU (None: not importable)
    system: str = ""
    notes: list[str] = field(default_factory=list)  # what could not be detected, and why

    @property
    def vram_total(self) -> int:
        return sum(g.total for g in self.gpus)

    @property
    def vram_free(self) -> int:
        return sum(g.free for g in self.gpus)

    @property
    def unified(self) -> bool:
        return any(g.vendor == "apple" for g in self.gpus)

    @property
    def gpu_usable(self) -> bool:
        return bool(self.gpus) and self.offload is not False


# ---------------------------------------------------------------------------------------------
# Parsing tool outputs
# ---------------------------------------------------------------------------------------------


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """`nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits` (MiB)."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) != 3:
            continue
        name, total, free = parts
        try:
            gpus.append(Gpu(name, int(float(total)) * MIB, int(float(free)) * MIB, "nvidia"))
        except ValueError:  # "[N/A]" on some virtual GPUs
            continue
    return gpus


def parse_rocm_smi(text: str) -> list[Gpu]:
    """`rocm-smi --showmeminfo vram --showproductname --json`."""
    try:
        data = json.loads(text)
    except ValueError:
        return []
    gpus = []
    for card, info in sorted(data.items()):
        if not isinstance(info, dict):
            continue
        try:
            total = int(info["VRAM Total Memory (B)"])
            used = int(info.get("VRAM Total Used Memory (B)", 0))
        except (KeyError, ValueError):
            continue
        name = info.get("Card Series") or info.get("Card series") or info.get("Card SKU") or f"AMD GPU ({card})"
        gpus.append(Gpu(str(name), total, max(total - used, 0), "amd"))
    return gpus


def parse_meminfo(text: str) -> tuple[int, int]:
    """/proc/meminfo -> (MemTotal, MemAvailable) in bytes (MemFree + Cached on old kernels)."""
    fields = {}
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if m:
            fields[m.group(1)] = int(m.group(2)) * 1024
    total = fields.get("MemTotal", 0)
    available = fields.get("MemAvailable", fields.get("MemFree", 0) + fields.get("Cached", 0))
    return total, available


def parse_cpuinfo(text: str) -> int:
    """Physical cores from /proc/cpuinfo (distinct physical id + core id); 0 if it does not say."""
    cores, phys, core = set(), None, None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if core is not None:
                cores.add((phys, core))
            phys = core = None
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            core = value.strip()
    return len(cores)


def parse_vm_stat(text: str) -> int:
    """macOS `vm_stat` -> bytes available (free + inactive + speculative pages)."""
    m = re.search(r"page size of (\d+) bytes", text)
    page = int(m.group(1)) if m else 16384
    pages = 0
    for key in ("Pages free", "Pages inactive", "Pages speculative"):
        m = re.search(rf"{key}:\s+(\d+)", text)
        if m:
            pages += int(m.group(1))
    return pages * page


def apple_gpu(memsize: int, available: int, chip: str = "Apple GPU") -> Gpu:
    """Unified memory: Metal lets the GPU use about 3/4 of RAM on big machines, 2/3 on small ones."""
    share = 0.75 if memsize >= 36 * GIB else 0.66
    budget = int(memsize * share)
    return Gpu(chip, budget, min(budget, available), "apple")


# ---------------------------------------------------------------------------------------------
# Running the tools
# ---------------------------------------------------------------------------------------------


def _run(cmd: list[str], notes: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    except FileNotFoundError:
        return None
    except (OSError, subprocess.TimeoutExpired) as e:
        notes.append(f"{cmd[0]} failed: {e}")
        return None
    if out.returncode != 0:
        first = (out.stderr or out.stdout).strip().splitlines()
        notes.append(f"{cmd[0]} exited {out.returncode}" + (f": {first[0]}" if first else ""))
        return None
    return out.stdout


def _windows_memory() -> tuple[int, int]:
    import ctypes  # Windows only

    class MemoryStatus(ctypes.Structure):  # MEMORYSTATUSEX
        _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                    ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                    ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                    ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                    ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

    status = MemoryStatus()
    status.dwLength = ctypes.sizeof(status)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
        raise OSError("GlobalMemoryStatusEx failed")
    return status.ullTotalPhys, status.ullAvailPhys


def detect() -> Hardware:
    """What this machine has. Whether llama.cpp's build can use the GPUs is the engine's to say: the
    caller sets `offload` from it (commands.machine.detect_hardware), the store never asks the engine."""
    hw = Hardware(system=platform.system())
    hw.cpu_logical = os.cpu_count() or 1
    if hw.system == "Linux":
        try:
            with open("/proc/meminfo") as f:
                hw.ram_total, hw.ram_available = parse_meminfo(f.read())
            with open("/proc/cpuinfo") as f:
                hw.cpu_physical = parse_cpuinfo(f.read()) or hw.cpu_logical
        except OSError as e:
            hw.notes.append(f"cannot read /proc: {e}")
    else:
        hw.cpu_physical = hw.cpu_logical
    if hw.system == "Windows":
        try:
            hw.ram_total, hw.ram_available = _windows_memory()
        except (OSError, AttributeError) as e:
            hw.notes.append(f"cannot read the memory size: {e}")
    if hw.system == "Darwin":
        mem = _run(["sysctl", "-n", "hw.memsize"], hw.notes)
        vm = _run(["vm_stat"], hw.notes) or ""
        if mem and mem.strip().isdigit():
            hw.ram_total = int(mem.strip())
            hw.ram_available = parse_vm_stat(vm) or hw.ram_total // 2
            phys = _run(["sysctl", "-n", "hw.physicalcpu"], hw.notes)
            hw.cpu_physical = int(phys) if phys and phys.strip().isdigit() else hw.cpu_logical
            if platform.machine() == "arm64":
                hw.gpus.append(apple_gpu(hw.ram_total, hw.ram_available))
    else:
        out = _run(["nvidia-smi", "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"], hw.notes)
        if out:
            hw.gpus += parse_nvidia_smi(out)
        out = _run(["rocm-smi", "--showmeminfo", "vram", "--showproductname", "--json"], hw.notes)
        if out:
            hw.gpus += parse_rocm_smi(out)
    return hw


# ---------------------------------------------------------------------------------------------
# Choosing
# ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """How one model/quantization would sit on this machine."""

    variant: str
    quant: str
    ctx: int
    weights: int  # bytes in the place it runs (per-layer embeddings stay in RAM)
    kv: int
    overhead: int
    budget: int  # free bytes in the place it runs
    gpu_layers: int  # -1 all, 0 none, else that many
    fits: bool  # everything in fast memory

    @property
    def need(self) -> int:
        return self.weights + self.kv + self.overhead

    @property
    def name(self) -> str:
        return f"{self.variant}:{self.quant}"


@dataclass
class Recommendation:
    variant: str
    quant: str
    gpu_layers: int
    reasons: list[str]
    plan: Plan | None = None

    @property
    def name(self) -> str:
        return f"{self.variant}:{self.quant}"


def _gb(n: int | float) -> str:
    return f"{n / 1e9:.1f} GB"


def _on_gpu(hw: Hardware) -> bool:
    return hw.gpu_usable


def plan(spec, quant: str, hw: Hardware, *, ctx: int | None = None) -> Plan:
    """Memory needed by `spec`/`quant` with `ctx` tokens, against what this machine has free."""
    ctx = ctx or DEFAULT_CTX
    ctx = min(ctx, spec.context)
    size = spec.size(quant)
    kv = spec.kv.bytes(ctx)
    gpu = _on_gpu(hw)
    if gpu:
        # llama.cpp keeps the per-layer embeddings (E2B/E4B) in CPU memory: they cost no VRAM.
        weights = int(size * (1 - spec.ple_params / spec.params_total))
        budget = _gpu_budget(hw)
    else:
        weights = size
        budget = hw.ram_available - GIB  # leave the system room to breathe
    overhead = _overhead(weights)
    fits = weights + kv + overhead <= budget
    layers = _fit_layers(weights, kv, overhead, budget, spec.layers) if gpu else 0
    return Plan(spec.key, quant, ctx, weights, kv, overhead, max(budget, 0), layers, fits)


def _overhead(weights: int) -> int:
    return 400 * MIB + weights // 50  # compute buffers: a base plus ~2% of the weights


def _gpu_budget(hw: Hardware) -> int:
    return hw.vram_free - 256 * MIB * len(hw.gpus)  # driver and context per device


def _fit_layers(weights: int, kv: int, overhead: int, budget: int, layers: int) -> int:
    """-1 (all) when everything fits, else how many of `layers` do (each takes its share of weights and KV)."""
    if weights + kv + overhead <= budget:
        return -1
    per_layer = (weights + kv) / max(layers, 1)
    return max(0, min(layers, int((budget - overhead) // per_layer))) if per_layer else 0


def auto_gpu_layers(loc, *, ctx: int | None = None, hw: Hardware | None = None, header: Header | None = None) -> int:
    """GPU layers for a located model when the user set none: -1 (all) if it fits in free VRAM,
    else as many as fit, 0 without a usable GPU. Works for any GGUF: the registry's KV layout
    when the model is known, the file's own layer count otherwise."""
    hw = hw or detect()
    if not hw.gpu_usable:
        return 0
    first = Path(loc.path)
    size = file_size(first)
    spec = loc.spec or identify(first.name)  # a Gemma 4 file given by path is still a registry variant
    if spec is not None:
        weights = int(size * (1 - spec.ple_params / spec.params_total))
        kv, layers = spec.kv.bytes(min(ctx or DEFAULT_CTX, spec.context)), spec.layers
    else:
        header = header or read_header(first)
        layers = int(header.get(f"{header.architecture}.block_count", 0) or 0)
        weights, kv = size, _kv_estimate(header, ctx or DEFAULT_CTX, layers, size)
        if not layers:
            return -1 if weights + kv + _overhead(weights) <= _gpu_budget(hw) else 0
    return _fit_layers(weights, kv, _overhead(weights), _gpu_budget(hw), layers)


def _kv_estimate(header, ctx: int, layers: int, size: int) -> int:
    """The f16 KV cache of an unknown model at `ctx` from its header, every layer global (an upper
    bound for sliding-window models); a twentieth of the weights when the header does not say."""
    arch = header.architecture
    heads = _most(header.get(f"{arch}.attention.head_count", 0))
    kv_heads = _most(header.get(f"{arch}.attention.head_count_kv", heads))
    embd = int(header.get(f"{arch}.embedding_length", 0) or 0)
    head_k = int(header.get(f"{arch}.attention.key_length", 0) or (embd // heads if heads else 0))
    head_v = int(header.get(f"{arch}.attention.value_length", 0) or head_k)
    if not (layers and kv_heads and head_k):
        return size // 20
    return 2 * layers * ctx * int(kv_heads) * (head_k + head_v)


def _most(value) -> int:
    """A head count, or the largest of per-layer ones."""
    return int(max(value, default=0) if isinstance(value, list) else value or 0)


def _guide_row(table, gib: int) -> tuple[str, str]:
    for lo, variant, quant in table:
        if gib >= lo:
            return variant, quant
    return table[-1][1], table[-1][2]


def _ladder(variant: str, quant: str, table) -> list[tuple[str, str]]:
    """The guide's pick, then smaller quantizations of it, then the rows below, likewise.

    When 31B does not fit, the guide's "high throughput" model, 26B-A4B, comes before E4B: it is
    much closer to 31B in quality (MMLU Pro 82.6 against 85.2; E4B 69.4).
    """
    out: list[tuple[str, str]] = []
    start = [(v, q) for _, v, q in table].index((variant, quant))
    for _, v, q in table[start:]:
        if v != "31b" and any(x == "31b" for x, _ in out) and ("26b", "q4_k_m") not in out:
            out += [("26b", "q8_0"), ("26b", "q4_k_m")]
        while q:
            if (v, q) not in out:
                out.append((v, q))
            q = _STEP_DOWN.get(q)
    return out


def recommend(hw: Hardware, ctx: int | None = DEFAULT_CTX) -> Recommendation:
    reasons: list[str] = []
    ctx_used = ctx or DEFAULT_CTX
    if _on_gpu(hw):
        nominal = round(hw.vram_total / GIB)  # a "24 GB" card reports 23.99 GiB
        names = ", ".join(sorted({g.name for g in hw.gpus}))
        kind = "unified memory for the GPU" if hw.unified else "VRAM"
        reasons.append(f"GPU: {names} ({len(hw.gpus)}x), {nominal} GB {kind}, {_gb(hw.vram_free)} free"
                       if len(hw.gpus) > 1 else f"GPU: {names}, {nominal} GB {kind}, {_gb(hw.vram_free)} free")
        variant, quant = _guide_row(GUIDE, nominal)
        reasons.append(f"the VRAM guide puts {GUIDE_TEXT[(variant, quant)]} at {variant}:{quant}")
        table = GUIDE
    else:
        if hw.gpus and hw.offload is False:
            reasons.append("a GPU is present but this llama-cpp-python build cannot use it: choosing for the CPU "
                           "(`gemma doctor` shows how to rebuild it with GPU support)")
        else:
            reasons.append("no usable GPU: choosing by free RAM")
        nominal = int(hw.ram_available / GIB)
        variant, quant = _guide_row(CPU_GUIDE, nominal)
        reasons.append(f"{_gb(hw.ram_available)} of RAM available; on a CPU, 4-bit models run fastest")
        table = CPU_GUIDE
    chosen = None
    first = None
    for v, q in _ladder(variant, quant, table):
        p = plan(REGISTRY[v], q, hw, ctx=ctx)
        first = first or p
        if p.fits:
            chosen = p
            break
    if chosen is None:  # nothing fits whole: the smallest model, with as many layers as fit
        v, q = table[-1][1], table[-1][2]
        chosen = plan(REGISTRY[v], q, hw, ctx=ctx)
    if first is not None and chosen.name != first.name:
        reasons.append(f"{first.name} needs about {_gb(first.need)} at ctx {ctx_used}, more than the "
                       f"{_gb(first.budget)} free: stepped down to {chosen.name}")
    where = "VRAM" if _on_gpu(hw) else "RAM"
    reasons.append(f"{chosen.name} needs about {_gb(chosen.need)} of {where} at ctx {ctx_used} "
                   f"(weights {_gb(chosen.weights)} + KV cache {_gb(chosen.kv)} + buffers {_gb(chosen.overhead)})")
    spec = REGISTRY[chosen.variant]
    if not _on_gpu(hw):
        if spec.moe:
            reasons.append(f"{spec.key} is a mixture of experts: {spec.params_active:g}B of {spec.params_total:g}B "
                           "parameters work per token, so it answers about as fast as a 4B model")
        if not chosen.fits:
            reasons.append("it may not fit in the free RAM: close other programs, or use a shorter --ctx")
    elif chosen.gpu_layers == -1:
        reasons.append(f"all {spec.layers} layers on the GPU" + (f", split across {len(hw.gpus)} GPUs" if len(hw.gpus) > 1 else ""))
    else:
        reasons.append(f"only {chosen.gpu_layers} of {spec.layers} layers fit on the GPU; the rest run on the CPU")
    if _on_gpu(hw) and chosen.variant == "31b":
        moe = plan(REGISTRY["26b"], "q4_k_m", hw, ctx=ctx)
        if moe.fits:
            reasons.append("for faster answers, 26b (mixture of experts, 3.8B active) also fits")
    return Recommendation(chosen.variant, chosen.quant, chosen.gpu_layers, reasons, chosen)


def problems(hw: Hardware) -> list[tuple[str, str]]:
    """(problem, fix) pairs `gemma doctor` reports."""
    out = []
    if hw.gpus and hw.offload is False:
        vendor = hw.gpus[0].vendor
        flag = {"nvidia": "-DGGML_CUDA=on", "amd": "-DGGML_HIP=on", "apple": "-DGGML_METAL=on"}[vendor]
        out.append((f"{hw.gpus[0].name} is present but this llama-cpp-python build is CPU-only",
                    f'CMAKE_ARGS="{flag}" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36'))
    if hw.offload is None:
        out.append(("llama-cpp-python cannot be imported", "pip install llama-cpp-python==0.3.36"))
    for note in hw.notes:
        out.append((note, "GPU detection skipped that tool"))
    return out
