"""How often one command resolves its model: store look-ups, config file reads, hardware probes
and GGUF header reads per `gemma chat` / `describe-image` / `batch` run (issue 15, item 1).

Runs each command in-process on the tiny synthetic models (tests/synthetic.py), installed in a
temporary model store under a registry name, and counts calls by wrapping the functions:

    python bench/resolution_counts.py

Not a speed benchmark: the figures are exact counts, the same on every machine.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# (what, module, function): the one place each thing happens.
COUNTED = (
    ("locate", "gemma_cli.store.models", "locate"),
    ("config read", "gemma_cli.store.config", "_read"),
    ("hardware.detect", "gemma_cli.store.hardware", "detect"),
    ("GGUF header read", "gemma_cli.gguf_header", "_parse"),
)


@contextlib.contextmanager
def counting():
    counts: collections.Counter = collections.Counter()
    saved = []
    for what, module, name in COUNTED:
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            continue
        original = getattr(mod, name)

        def wrapper(*a, _o=original, _w=what, **kw):
            counts[_w] += 1
            return _o(*a, **kw)

        setattr(mod, name, wrapper)
        saved.append((mod, name, original))
    try:
        yield counts
    finally:
        for mod, name, original in saved:
            setattr(mod, name, original)


def run(argv: list[str]) -> tuple[int, dict]:
    """`gemma ARGV` in-process; (exit status, counts)."""
    from gemma_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    with counting() as counts, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code or 0
    if code:
        sys.stderr.write(f"gemma {' '.join(argv)}: exit {code}\n{err.getvalue()}")
    return code, {what: counts[what] for what, _, _ in COUNTED}


def setup(home: Path) -> dict:
    """Tiny models written, and installed in the store as e4b:q4_k_m with its projector."""
    import synthetic
    from conftest import REFERENCE

    from gemma_cli.store import models

    files = synthetic.write_all(home / "synthetic",
                                chat_template=(REFERENCE / "gemma4-chat-template.jinja").read_text(encoding="utf-8"))
    spec = models.REGISTRY["e4b"]
    store = home / "data" / "models"
    weights, projector = spec.weights("q4_k_m").files[0], spec.mmproj_files("q4_k_m")[0]
    for f, source in ((weights, files["e_model"]), (projector, files["vision_mmproj"])):
        dest = store / f.repo / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, dest)
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(home / "red.png")
    (home / "in.jsonl").write_text(json.dumps({"id": 1, "prompt": "hi"}) + "\n")
    return files


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="gemma-counts-"))
    os.environ.update({"GEMMA_HOME": str(home), "GEMMA_CONFIG": str(home / "config.yaml"), "NO_COLOR": "1"})
    for var in ("GEMMA_MODEL", "GEMMA_DEBUG"):
        os.environ.pop(var, None)
    files = setup(home)
    gen = ["--max-tokens", "2", "--temperature", "0"]
    cases = {
        "gemma chat -m e4b hi": ["chat", "-m", "e4b", "hi", *gen],
        "gemma chat -m FILE.gguf hi": ["chat", "-m", files["e_model"], "hi", *gen],
        "gemma chat hi (no model: the recommended one)": ["chat", "hi", *gen],
        "gemma describe-image -m e4b red.png": ["describe-image", "-m", "e4b", str(home / "red.png"), *gen],
        "gemma batch in.jsonl -m e4b": ["batch", str(home / "in.jsonl"), "-o", str(home / "out.jsonl"), "-m", "e4b",
                                        "-q", *gen],
    }
    try:
        rows = [(label, *run(argv)) for label, argv in cases.items()]
    finally:
        shutil.rmtree(home, ignore_errors=True)
    width = max(len(label) for label, _, _ in rows)
    heads = [what for what, _, _ in COUNTED]
    print(f"{'command':<{width}}  " + "  ".join(heads) + "  exit")
    for label, code, counts in rows:
        print(f"{label:<{width}}  " + "  ".join(f"{counts[h]:>{len(h)}}" for h in heads) + f"  {code:>4}")


if __name__ == "__main__":
    main()
