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

from tests.clitools import BOUND, gemma_env, run_gemma, wait_for


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


def lines_in(out) -> int:
    """Complete records in the results file so far."""
    return out.read_bytes().count(b"\n") if out.exists() else 0


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
        lines = lines_in(out)
        proc = start(src, out, e_model, tmp_path)
        if k % 5 == 4:  # now and then while it starts (repairing, compacting, loading): a moment picked, not awaited
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # mostly while results are being written: once the file has grown by a random number of records
            grown = rng.randint(1, 40)
            wait_for(lambda: proc.poll() is not None or lines_in(out) >= lines + grown, f"{grown} more records")
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
    wait_for(lambda: lines_in(out) > 0 or proc.poll() is not None, "the first record")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=BOUND)
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
