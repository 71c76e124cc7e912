"""The batch examples in examples/: every line is valid, both files run on the real engine, and
the nightly script reports the run's outcome through its exit code."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gemma_cli.batch import parse_line
from tests.clitools import gemma_env, run_gemma

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BATCHES = ["batch-simple.jsonl", "batch-openai.jsonl"]


def results_of(path: Path) -> dict:
    out = {}
    for rec in map(json.loads, path.read_text().splitlines()):
        out[rec.get("custom_id", rec.get("id"))] = rec
    return out


@pytest.mark.parametrize("name", BATCHES)
def test_every_example_line_is_valid(name):
    lines = (EXAMPLES / name).read_bytes().splitlines()
    parsed = [parse_line(n, raw, EXAMPLES) for n, raw in enumerate(lines, 1)]
    assert len(parsed) >= 4
    assert [p.error for p in parsed] == [None] * len(parsed)
    assert len({p.key for p in parsed}) == len(parsed)


def test_the_openai_example_has_an_image_and_tools():
    bodies = [json.loads(raw)["body"] for raw in (EXAMPLES / "batch-openai.jsonl").read_text().splitlines()]
    parts = [p for b in bodies for m in b["messages"] if isinstance(m["content"], list) for p in m["content"]]
    assert any(p["type"] == "image_url" for p in parts)
    assert any(b.get("tools") for b in bodies)


@pytest.mark.parametrize("name", BATCHES)
def test_the_examples_run_on_the_engine(name, e_model, av_mmproj, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = run_gemma("batch", EXAMPLES / name, "-o", out, "-m", e_model, "--mmproj", av_mmproj, "--ctx", "1024",
                     "-p", "2", "-q", home=tmp_path, timeout=300)
    got = results_of(out)
    ids = [parse_line(n, raw).id for n, raw in enumerate((EXAMPLES / name).read_bytes().splitlines(), 1)]
    assert sorted(got) == sorted(ids), proc.stderr
    # Random weights need not close a JSON object before max_tokens: only constrained lines may fail, as "grammar".
    errors = {k: r["error"]["code"] for k, r in got.items() if r["error"]}
    assert set(errors) <= {"primes", "json-1"} and set(errors.values()) <= {"grammar"}, errors
    assert proc.returncode == (3 if errors else 0), proc.stderr


def test_the_nightly_script_runs_a_batch_and_reports_through_its_exit_code(e_model, tmp_path):
    if shutil.which("gemma") is None:
        pytest.fail("the gemma command is not on PATH (pip install -e . puts it there)")
    good = tmp_path / "prompts.jsonl"
    good.write_text("".join(json.dumps({"id": i, "prompt": f"Say {i}", "max_tokens": 4}) + "\n" for i in range(3)))
    script = EXAMPLES / "nightly-batch.sh"
    env = gemma_env(tmp_path)
    ok = subprocess.run(["bash", script, good, tmp_path / "results", e_model], env=env, capture_output=True,
                        text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    [out] = (tmp_path / "results").glob("results-*.jsonl")
    assert len(out.read_text().splitlines()) == 3 and "all lines answered" in ok.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "hi", "max_tokens": 2}\n{not json\n')
    failed = subprocess.run(["bash", script, bad, tmp_path / "bad-results", e_model], env=env, capture_output=True,
                            text=True, timeout=300)
    assert failed.returncode == 3 and "1 lines failed" in failed.stderr, failed.stderr
