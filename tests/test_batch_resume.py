"""Crash safety: SIGKILL at random moments, then resume; SIGINT/SIGTERM stop cleanly. The
results file must end with every id exactly once, whatever happened to the runs before."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.clitools import gemma_env, run_gemma


def write_input(path, n, bad=()):
    lines = []
    for i in range(n):
        lines.append("{broken" if i in bad else json.dumps({"id": f"q{i}", "prompt": f"Count to {i}", "max_tokens": 12}))
    path.write_text("\n".join(lines) + "\n")
    return [("line", i + 1) if i in bad else f"q{i}" for i in range(n)]  # a bad line is known by its number


def start(src, out, model, home, *args):
    cmd = [sys.executable, "-m", "gemma_cli", "batch", str(src), "-o", str(out), "-m", model, "-p", "4",
           "--ctx", "128", "-t", "0", "-q", *args]
    return subprocess.Popen(cmd, env=gemma_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def ids_in(out):
    ids = [(r.get("custom_id") if "custom_id" in r else r["id"], r.get("line")) for r in map(json.loads, out.read_text().splitlines())]
    return [ident if ident is not None else ("line", number) for ident, number in ids]


@pytest.mark.slow
def test_sigkill_at_twenty_random_moments_then_resume(e_model, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    expected = write_input(src, 3000, bad={17, 1500})  # error records are dropped and redone on each resume
    rng = random.Random(20240605)
    progress = []
    for k in range(20):
        before = out.stat().st_size if out.exists() else 0
        proc = start(src, out, e_model, tmp_path)
        if k % 5 == 4:  # now and then while it starts: repairing, compacting, loading
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # mostly while results are being written
            deadline = time.time() + 30
            while proc.poll() is None and time.time() < deadline and (out.stat().st_size if out.exists() else 0) <= before:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        proc.wait()
        if out.exists():  # between kills: every complete line is a record, at most one torn line at the end
            *whole, last = out.read_bytes().split(b"\n")
            assert all(json.loads(x) for x in whole)
            progress.append(len(whole))
    assert progress[-1] < len(expected)  # the kills landed mid-run, not after it was done
    final = run_gemma("batch", src, "-o", out, "-m", e_model, "-p", "4", "--ctx", "128", "-t", "0", home=tmp_path,
                      timeout=300)
    assert final.returncode == 3, final.stderr  # the two bad lines
    got = ids_in(out)
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == set(expected)
    errors = [r for r in map(json.loads, out.read_text().splitlines()) if r["error"]]
    assert sorted(r["line"] for r in errors) == [18, 1501] and all(r["id"] is None for r in errors)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_taking_lines_and_leaves_a_resumable_file(e_model, tmp_path, sig, code):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    expected = write_input(src, 400)
    proc = start(src, out, e_model, tmp_path)
    deadline = time.time() + 60
    while (not out.exists() or out.stat().st_size == 0) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    partial = ids_in(out)
    assert 0 < len(partial) < len(expected) and len(partial) == len(set(partial))
    assert out.read_bytes().endswith(b"\n")  # running lines were finished, not cut
    again = run_gemma("batch", src, "-o", out, "-m", e_model, "-p", "4", "--ctx", "128", "-t", "0", home=tmp_path,
                      timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{len(partial)} skipped" in again.stderr
    got = ids_in(out)
    assert sorted(got) == sorted(expected)
