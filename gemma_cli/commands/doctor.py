"""`gemma doctor`: this machine, the llama.cpp backend, the model that fits and why, and what is wrong."""

from __future__ import annotations

import json
import os
import platform
import sys

import typer

from gemma_cli.commands import options as opt
from gemma_cli.errors import GemmaError

EXAMPLES = """
Examples:

\b
  gemma doctor
  gemma doctor --json | jq .recommended
"""

_ENV = ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "GEMMA_HOME", "GEMMA_CONFIG", "GEMMA_MODEL_DIR", "GEMMA_MODEL")


def doctor(as_json: opt.Json = False) -> None:
    """Check this machine: GPUs and memory, GPU support of the llama.cpp build, the recommended model and why, downloaded models, folders, and problems with their fixes."""
    report = collect()
    if as_json:
        print(json.dumps(report, indent=2))
        return
    _print(report)


def collect() -> dict:
    from gemma_cli.commands import machine  # lazy: keeps `gemma --help` fast
    from gemma_cli.store import (
        config,  # lazy: keeps `gemma --help` fast
        hardware,
        models,
        paths,
    )

    problems: list[dict] = []
    try:
        settings = config.load()
        ctx = settings.pick("ctx", None)
    except GemmaError as e:  # a broken config file is a finding here, not a crash
        problems.append({"problem": e.message, "fix": e.hint or ""})
        settings, ctx = None, None
    hw = hardware.detect()
    hw.offload = machine.gpu_offload()  # asked even without a GPU: doctor reports the build
    rec = hardware.recommend(hw, ctx=ctx)
    problems += [{"problem": p, "fix": f} for p, f in hardware.problems(hw)]
    try:
        root = models.model_dir(settings) if settings else paths.data_dir() / "models"
    except GemmaError:
        root = paths.data_dir() / "models"
    installed = []
    for spec, q in models.installed_registry(root):
        loc = models.locate_registry(spec, q, root=root) if _has(spec, q, root) else None
        if loc:
            installed.append({"name": loc.name, "path": str(loc.path), "size": models.file_size(loc.path),
                              "mmproj": str(loc.mmproj) if loc.mmproj else None,
                              "draft": str(loc.draft) if loc.draft else None})
    for p in models.stray_files(root):
        installed.append({"name": f"hf:{p.relative_to(root).as_posix()}", "path": str(p), "size": models.file_size(p),
                          "mmproj": None, "draft": None})
    problems += _disk_problems(root, rec)
    return {
        "system": {"os": f"{platform.system()} {platform.release()}", "machine": platform.machine(),
                   "python": platform.python_version(),
                   "cpu": {"logical": hw.cpu_logical, "physical": hw.cpu_physical},
                   "ram": {"total": hw.ram_total, "available": hw.ram_available}},
        "gpus": [{"name": g.name, "vendor": g.vendor, "total": g.total, "free": g.free} for g in hw.gpus],
        "backend": {"llama_cpp_python": _version("llama-cpp-python"), "gpu_offload": hw.offload},
        "recommended": {"name": rec.name, "variant": rec.variant, "quant": rec.quant,
                        "gpu_layers": rec.gpu_layers, "reasons": rec.reasons,
                        "installed": any(i["name"] == rec.name for i in installed)},
        "installed": installed,
        "paths": {"config": str(config.path()), "model_dir": str(root), "data_dir": str(paths.data_dir())},
        "env": {k: ("set" if k == "HF_TOKEN" and os.environ.get(k) else os.environ.get(k)) for k in _ENV},
        "problems": problems,
    }


def _has(spec, q, root) -> bool:
    from gemma_cli.store import models  # lazy: keeps `gemma --help` fast

    try:
        models.locate_registry(spec, q, root=root)
        return True
    except models.ModelNotInstalled:
        return False


def _disk_problems(root, rec) -> list[dict]:
    from gemma_cli.store import (
        download,  # lazy: keeps `gemma --help` fast
        models,
    )

    if any((root / f.repo / f.name).is_file() for f in models.REGISTRY[rec.variant].weights(rec.quant).files):
        return []
    need = models.REGISTRY[rec.variant].size(rec.quant)
    free = download.free_space(root)
    if free < need:
        return [{"problem": f"{root} has {models.human_size(free)} free; {rec.name} needs {models.human_size(need)}",
                 "fix": "gemma config set model_dir /a/bigger/disk (or GEMMA_MODEL_DIR)"}]
    return []


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import (  # lazy: keeps `gemma --help` fast
            PackageNotFoundError,
            version,
        )
    except ImportError:
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _print(r: dict) -> None:
    from rich.console import Console  # lazy: keeps `gemma --help` fast

    from gemma_cli.render import use_color  # lazy: keeps `gemma --help` fast
    from gemma_cli.store.models import human_size  # lazy: keeps `gemma --help` fast

    c = Console(no_color=not use_color(), highlight=False)
    s = r["system"]
    c.print("[b]System[/b]")
    c.print(f"  {s['os']} {s['machine']}, Python {s['python']}")
    c.print(f"  CPU: {s['cpu']['physical']} cores ({s['cpu']['logical']} threads)")
    c.print(f"  RAM: {human_size(s['ram']['total'])}, {human_size(s['ram']['available'])} available")
    for g in r["gpus"]:
        c.print(f"  GPU: {g['name']} ({g['vendor']}), {human_size(g['total'])}, {human_size(g['free'])} free")
    if not r["gpus"]:
        c.print("  GPU: none found")
    b = r["backend"]
    offload = {True: "yes", False: "no (CPU-only build)", None: "unknown"}[b["gpu_offload"]]
    c.print("[b]Backend[/b]")
    c.print(f"  llama-cpp-python {b['llama_cpp_python'] or 'not installed'}; GPU offload: {offload}")
    rec = r["recommended"]
    c.print("[b]Recommended[/b]")
    state = "downloaded" if rec["installed"] else f"not downloaded: gemma models pull {rec['name']}"
    c.print(f"  {rec['name']} ({state})")
    for reason in rec["reasons"]:
        c.print(f"  - {reason}")
    c.print("[b]Downloaded models[/b]")
    for m in r["installed"]:
        c.print(f"  {m['name']}  {human_size(m['size'])}  {m['path']}")
    if not r["installed"]:
        c.print("  none yet")
    c.print("[b]Paths[/b]")
    for k, v in r["paths"].items():
        c.print(f"  {k}: {v}")
    c.print("[b]Problems[/b]")
    for p in r["problems"]:
        c.print(f"  [red]✗[/red] {p['problem']}")
        if p["fix"]:
            c.print(f"    fix: {p['fix']}")
    if not r["problems"]:
        c.print("  none found")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("doctor", epilog=EXAMPLES)(doctor)
