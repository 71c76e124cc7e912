"""The machine as the commands see it: what the store's hardware probe finds, and whether this
llama.cpp build can use the GPUs, which only the engine can say. Joined here, at the face, so the
store never asks the engine."""

from __future__ import annotations

from gemma_cli.store import hardware


def detect_hardware() -> hardware.Hardware:
    """The machine, with whether this llama.cpp build can use its GPUs (asked of the engine only when there are any)."""
    hw = hardware.detect()
    if hw.gpus and hw.offload is None:  # detect() leaves it to us
        hw.offload = gpu_offload()
    return hw


def gpu_offload() -> bool | None:
    """Whether the installed llama-cpp-python was built with a GPU backend (None: not importable)."""
    try:
        from gemma_cli.engine.core import (
            supports_gpu_offload,  # llama.cpp loads here, not at `gemma --help`
        )
    except Exception:  # noqa: BLE001 - an ImportError or a broken shared library: both mean "unknown"
        return None
    return supports_gpu_offload()
