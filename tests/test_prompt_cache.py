"""The prompt cache on disk (issue 23, engine.disk): real llama.cpp on the synthetic Gemma 4 models (SWA
layers with a 32-token window) and Gemma 3 270M, real files, real processes.

The identity guarantee: greedy output after a restore is the output without the cache (`--no-cache`),
token for token; and the restore really happened (`disk_cached_tokens` in the --json stats)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import stat
import threading
from pathlib import Path

import pytest

from tests.clitools import run_gemma

GREEDY = ["--temperature", "0", "--max-tokens", "8", "--threads", "1", "--json", "--draft", "off"]
DOC = "\n".join(f"Line {i}: the quarterly report says item {i * 7 % 13} grew by {i % 5} points." for i in range(40))


def chat(home: Path, model: str, *args, doc: str | None = None) -> dict:
    proc = run_gemma("chat", "--model", model, *GREEDY, *args, home=home, input=doc)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def cache_dir(home: Path) -> Path:
    return home / "cache" / "prompts"


def entries(home: Path) -> list[Path]:
    return sorted(cache_dir(home).glob("*.kv"))


# ---------------------------------------------------------------- chat, through the CLI


def test_a_second_question_on_the_same_document_restores_the_document(e_model, tmp_path):
    first = chat(tmp_path, e_model, "Summarise it.", doc=DOC)
    assert first["stats"]["disk_cached_tokens"] == 0
    assert entries(tmp_path), "the first run kept no state"
    second = chat(tmp_path, e_model, "List the risks.", doc=DOC)
    cold = chat(tmp_path, e_model, "List the risks.", "--no-cache", doc=DOC)
    assert cold["stats"]["disk_cached_tokens"] == 0
    doc_tokens = len(DOC) // 4  # well under the document's real count: byte-level BPE on a tiny vocabulary
    assert second["stats"]["disk_cached_tokens"] > doc_tokens, second["stats"]
    assert second["stats"]["prompt_tokens"] < 40, second["stats"]  # only the question and the turn's end
    assert second["answer"] == cold["answer"]


def test_the_same_on_gemma3(gemma3_templated, tmp_path):
    chat(tmp_path, gemma3_templated, "Summarise it.", doc=DOC)
    second = chat(tmp_path, gemma3_templated, "What grew most?", doc=DOC)
    cold = chat(tmp_path, gemma3_templated, "What grew most?", "--no-cache", doc=DOC)
    assert second["stats"]["disk_cached_tokens"] > 300, second["stats"]
    assert second["answer"] == cold["answer"]


def test_tool_declarations_without_a_system_prompt_are_a_restart_point(e_model, tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {
        "name": f"tool_{i}", "description": f"Look up the {i}th figure of the quarterly report and its history.",
        "parameters": {"type": "object", "properties": {"year": {"type": "integer"}}}}} for i in range(8)]))
    chat(tmp_path, e_model, "--tools", tools, "What grew?")
    warm = chat(tmp_path, e_model, "--tools", tools, "What fell?")
    cold = chat(tmp_path, e_model, "--tools", tools, "What fell?", "--no-cache")
    assert warm["stats"]["disk_cached_tokens"] > 200, warm["stats"]
    assert warm["answer"] == cold["answer"] and warm["tool_calls"] == cold["tool_calls"]


def test_continue_starts_from_the_end_of_the_last_turn(e_model, tmp_path):
    chat(tmp_path, e_model, "--save", "--system", "You are terse.", "Tell me about the report.", doc=DOC)
    for question in ("And the risks?", "Which item grew most?"):
        saved = tmp_path / "before.json"
        shutil.copy(tmp_path / "data" / "conversations" / "last.json", saved)
        cold = chat(tmp_path, e_model, "--load", saved, "--no-cache", question)
        warm = chat(tmp_path, e_model, "--continue", question)
        assert warm["answer"] == cold["answer"]
        # everything before this turn came from disk: the question and the turn markers are left
        assert warm["stats"]["disk_cached_tokens"] > warm["stats"]["prompt_tokens"] * 5, warm["stats"]
    loaded = chat(tmp_path, e_model, "--load", saved, "Anything else?")  # --load restores the same states
    assert loaded["answer"] == chat(tmp_path, e_model, "--load", saved, "--no-cache", "Anything else?")["answer"]
    assert loaded["stats"]["disk_cached_tokens"] > loaded["stats"]["prompt_tokens"] * 5, loaded["stats"]


def test_files_are_private_and_gemma_cache_lists_and_clears_them(e_model, tmp_path):
    chat(tmp_path, e_model, "Summarise it.", doc=DOC)
    chat(tmp_path, e_model, "Again.", doc=DOC)
    folder = cache_dir(tmp_path)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    listed = run_gemma("cache", "list", "--json", home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    info = json.loads(listed.stdout)
    assert info["path"] == str(folder)
    assert len(info["entries"]) == len(entries(tmp_path)) > 0
    assert {e["model"] for e in info["entries"]} == {Path(e_model).name}
    assert sum(e["hits"] for e in info["entries"]) >= 1
    assert sum(e["bytes"] for e in info["entries"]) == info["bytes"] == sum(p.stat().st_size for p in entries(tmp_path))
    path = run_gemma("cache", "path", home=tmp_path)
    assert path.stdout.strip() == str(folder)
    cleared = run_gemma("cache", "clear", home=tmp_path)
    assert cleared.returncode == 0 and "removed" in cleared.stderr
    assert not list(folder.iterdir())


def test_no_cache_neither_reads_nor_writes(e_model, tmp_path):
    chat(tmp_path, e_model, "Summarise it.", "--no-cache", doc=DOC)
    assert not entries(tmp_path)


def test_a_damaged_entry_is_one_note_and_deleted(e_model, tmp_path):
    first = chat(tmp_path, e_model, "Summarise it.", doc=DOC)
    for path in entries(tmp_path):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    proc = run_gemma("chat", "--model", e_model, *GREEDY, "Summarise it.", home=tmp_path, input=DOC)
    assert proc.returncode == 0, proc.stderr
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("note:")]
    assert notes and all("damaged" in n for n in notes), proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["answer"] == first["answer"]
    assert json.loads(proc.stdout)["stats"]["disk_cached_tokens"] == 0


# ---------------------------------------------------------------- describe-image


def _describe_twice(args: list, home, first: str, second: str) -> tuple[dict, dict]:
    """A describe command asked `first`, then `second` with the cache (warm) and without it (cold)."""

    def run(*extra):
        proc = run_gemma(*args, *extra, home=home)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["results"][0]

    run("-p", first)
    return run("-p", second), run("-p", second, "--no-cache")


def test_describe_image_twice_restores_the_image(e_model, vision_mmproj, tmp_path):
    from tests.test_describe import picture

    image = tmp_path / "scan.png"
    picture(3).save(image)
    args = ["describe-image", image, "--model", e_model, "--mmproj", vision_mmproj, "--image-tokens", "70",
            *GREEDY]
    warm, cold = _describe_twice(args, tmp_path, "What is it?", "Which colours?")
    assert warm["stats"]["disk_cached_tokens"] >= 70, warm["stats"]
    assert warm["description"] == cold["description"]


def test_describe_video_twice_restores_the_frames(e_model, vision_mmproj, tmp_path):
    from tests.test_video import write_clip

    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    args = ["describe-video", clip, "--model", e_model, "--mmproj", vision_mmproj, "--frames", "4", *GREEDY]
    warm, cold = _describe_twice(args, tmp_path, "What happens?", "What moves?")
    assert warm["stats"]["disk_cached_tokens"] >= 4 * 60, warm["stats"]  # the four frames, from disk
    assert warm["description"] == cold["description"]


def test_another_projector_or_image_budget_is_a_miss(e_model, vision_mmproj, av_mmproj, tmp_path):
    from tests.test_describe import picture

    image = tmp_path / "scan.png"
    picture(4).save(image)

    def from_disk(mmproj, budget, question):
        proc = run_gemma("describe-image", image, "--model", e_model, "--mmproj", mmproj, "--image-tokens", budget,
                         "-p", question, *GREEDY, home=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["results"][0]["stats"]["disk_cached_tokens"]

    assert from_disk(vision_mmproj, "70", "What is it?") == 0
    assert from_disk(av_mmproj, "70", "Which colours?") == 0  # another projector file
    assert from_disk(vision_mmproj, "140", "Which colours?") == 0  # another image budget
    assert from_disk(vision_mmproj, "70", "Which colours?") >= 70  # the control: the first one's state


# ---------------------------------------------------------------- the engine's side


def _engine(model, **kw):
    from gemma_cli.engine import Engine

    return Engine(model, n_ctx=4096, n_threads=1, **kw)


def _prefill(engine, cache, text: str, doc_end: str) -> int:
    """Evaluate `text` with a save point after `doc_end`; returns how many items came from disk."""
    engine.reset()  # a new process: nothing in memory
    engine.prompt_cache = cache
    tokens = engine.tokenize(text)
    point = len(engine.tokenize(doc_end))
    assert tokens[:point] == engine.tokenize(doc_end)
    engine.prefill(tokens, None, [point])
    cache.flush()
    return engine.from_disk


def _cache(folder: Path, **kw):
    from gemma_cli.engine.disk import PromptCache

    notes: list[str] = []
    cache = PromptCache(folder, note=notes.append, **kw)
    cache.notes = notes
    return cache


def test_invalidated_by_a_changed_model_file_and_kv_type(e_model, tmp_path):
    model = tmp_path / "m.gguf"
    shutil.copy(e_model, model)
    folder = tmp_path / "c"
    with _engine(model) as engine:
        assert _prefill(engine, _cache(folder), DOC + " Q1", DOC) == 0
        assert _prefill(engine, _cache(folder), DOC + " Q2", DOC) > 0  # the control: it does hit
    with _engine(model, kv_type="q8_0") as engine:
        assert _prefill(engine, _cache(folder), DOC + " Q2", DOC) == 0
    data = bytearray(model.read_bytes())  # same size, same header, other weights at the end
    data[-100] ^= 0x01
    model.write_bytes(bytes(data))
    with _engine(model) as engine:
        assert _prefill(engine, _cache(folder), DOC + " Q2", DOC) == 0


def test_a_cap_smaller_than_one_entry_keeps_nothing_and_answers(e_model, tmp_path):
    folder = tmp_path / "c"
    with _engine(e_model) as engine:
        cache = _cache(folder, cap=1000)
        assert _prefill(engine, cache, DOC + " Q1", DOC) == 0
        assert not list(folder.glob("*.kv")) and not cache.notes


def test_least_recently_used_goes_first(e_model, tmp_path):
    folder = tmp_path / "c"
    with _engine(e_model) as engine:
        _prefill(engine, _cache(folder), DOC + " Q", DOC)
        (one,) = folder.glob("*.kv")
        size = one.stat().st_size
        engine.reset()
        _prefill(engine, _cache(folder, cap=int(size * 1.5)), "Other text. " + DOC + " Q", "Other text. " + DOC)
        left = list(folder.glob("*.kv"))
        assert len(left) == 1 and left[0] != one


# ---------------------------------------------------------------- processes


def _write_at_once(model: str, folder: str, barrier, queue) -> None:
    with _engine(model) as engine:
        cache = _cache(Path(folder))
        engine.prompt_cache = cache
        tokens = engine.tokenize(DOC + " Q")
        point = len(engine.tokenize(DOC))
        barrier.wait()
        engine.prefill(tokens, None, [point])
        cache.flush()
        queue.put(cache.notes)


def test_two_processes_writing_the_same_entry_at_once(e_model, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_write_at_once, args=(e_model, str(tmp_path), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    notes = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert notes == [[], []]
    assert len(list(tmp_path.glob("*.kv"))) == 1
    assert not list(tmp_path.glob(".*.tmp"))
    with _engine(e_model) as engine:
        cache = _cache(tmp_path)
        assert _prefill(engine, cache, DOC + " Other", DOC) > 0 and not cache.notes


def _killed_mid_write(model: str, folder: str, started) -> None:
    real_fsync = os.fsync

    def stuck(fd):  # the data is written, not yet synced nor renamed: say so and wait for the kill
        started.set()
        threading.Event().wait()

    os.fsync = stuck
    try:
        with _engine(model) as engine:
            cache = _cache(Path(folder))
            _prefill(engine, cache, DOC + " Q", DOC)
    finally:
        os.fsync = real_fsync


def test_sigkill_mid_write_leaves_no_entry_that_is_read(e_model, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    child = ctx.Process(target=_killed_mid_write, args=(e_model, str(tmp_path), started))
    child.start()
    assert started.wait(timeout=120), "the child never got to its write"
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL
    assert list(tmp_path.glob(".*.tmp")), "the kill did not land mid-write"
    assert not list(tmp_path.glob("*.kv"))
    with _engine(e_model) as engine:
        cache = _cache(tmp_path)
        assert _prefill(engine, cache, DOC + " Q", DOC) == 0  # nothing half-written is read
        assert not cache.notes
    assert not list(tmp_path.glob(".*.tmp")), "the next writer removes the dead writer's leftovers"
    assert len(list(tmp_path.glob("*.kv"))) == 1


# ---------------------------------------------------------------- batch


def test_batch_restores_the_shared_system_prompt_of_its_lines(e_model, tmp_path):
    system = "You answer questions about the report below.\n" + DOC

    def run(name, *extra):
        src = tmp_path / f"{name}.jsonl"
        src.write_text("".join(json.dumps({"id": i, "system": system, "prompt": f"What about item {i}?",
                                           "max_tokens": 6}) + "\n" for i in range(3)))
        out = tmp_path / f"{name}.out.jsonl"
        proc = run_gemma("batch", src, "-o", out, "-q", "-m", e_model, "--ctx", "4096", "--temperature", "0",
                         "-p", "1", "--threads", "1", *extra, home=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}

    first = run("first")
    assert first[0]["usage"].get("cached_tokens", 0) == 0
    second = run("second")
    cold = run("cold", "--no-cache")
    assert second[0]["usage"]["cached_tokens"] > len(DOC) // 4  # the first line too: from disk
    assert cold[0]["usage"].get("cached_tokens", 0) == 0
    assert {i: r["answer"] for i, r in second.items()} == {i: r["answer"] for i, r in cold.items()}


# ---------------------------------------------------------------- serve


def test_a_restarted_server_serves_a_continuing_client_from_its_kept_slot(e_model, tmp_path):
    from tests.test_serve import FAST, Server

    history = [{"role": "system", "content": "You are terse. " * 20}, {"role": "user", "content": DOC[:600]}]

    def turn(server, messages):
        return server.client().chat.completions.create(model="gemma4-e", messages=messages, max_tokens=8,
                                                       temperature=0, logprobs=True, top_logprobs=3)

    def conversation(home, *extra, restart: bool):
        server = Server(home, "-m", e_model, "--parallel", "2", *FAST, "--ctx", "4096", *extra)
        try:
            first = turn(server, history)
            if restart:
                assert server.stop() == 0
                assert list((home / "cache" / "prompts").glob("*.kv")), "the stopping server kept no slot"
                server = Server(home, "-m", e_model, "--parallel", "2", *FAST, "--ctx", "4096", *extra)
            follow = history + [{"role": "assistant", "content": first.choices[0].message.content},
                                {"role": "user", "content": "And the risks?"}]
            return first, turn(server, follow)
        finally:
            server.stop()

    first, restored = conversation(tmp_path / "a", restart=True)
    _, running = conversation(tmp_path / "b", "--no-cache", restart=False)
    assert restored.choices[0].message.content == running.choices[0].message.content
    # Bit for bit: the running server too reuses its slot only from the end of the last turn (not the answer
    # it decoded token by token), as the restored one does.
    assert restored.choices[0].logprobs.model_dump() == running.choices[0].logprobs.model_dump()
    cached = restored.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 8, restored.usage  # all but the first turn's generation prompt


def test_a_slot_evicted_by_another_conversation_is_restored_from_disk_as_a_cold_run(e_model, tmp_path):
    """--parallel 1: conversation B takes A's slot, so A's state at the end of its last turn goes to disk; A's
    next turn is served from that entry (not from memory: the slot holds B) and answers as a cold server does."""
    from tests.clitools import wait_for
    from tests.test_serve import FAST, Server

    a = [{"role": "system", "content": "You are terse. " * 20}, {"role": "user", "content": DOC[:600]}]
    b = [{"role": "user", "content": "Something else"}]

    def turn(server, messages):  # logprobs: the last bits of the logits show, not just the greedy tokens
        return server.client().chat.completions.create(model="gemma4-e", messages=messages, max_tokens=8,
                                                       temperature=0, logprobs=True, top_logprobs=3)

    home = tmp_path / "a"
    server = Server(home, "-m", e_model, "--parallel", "1", *FAST, "--ctx", "4096")
    try:
        first = turn(server, a)
        assert not entries(home)  # nothing evicted yet
        turn(server, b)  # takes A's slot
        wait_for(lambda: entries(home), "the evicted slot's entry")
        follow = a + [{"role": "assistant", "content": first.choices[0].message.content},
                      {"role": "user", "content": "And the risks?"}]
        restored = turn(server, follow)
    finally:
        server.stop()
    cold_server = Server(tmp_path / "b", "-m", e_model, "--parallel", "1", *FAST, "--ctx", "4096", "--no-cache")
    try:
        cold = turn(cold_server, follow)
    finally:
        cold_server.stop()
    assert not entries(tmp_path / "b")
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert restored.choices[0].message.content == cold.choices[0].message.content
    assert restored.choices[0].logprobs.model_dump() == cold.choices[0].logprobs.model_dump()
    cached = restored.usage.prompt_tokens_details.cached_tokens
    # All of A's first prompt but its generation prompt: far more than B's short prompt could share.
    assert cached >= first.usage.prompt_tokens - 8, restored.usage
    listed = json.loads(run_gemma("cache", "list", "--json", home=home).stdout)["entries"]
    assert [(e["tokens"], e["hits"]) for e in listed if e["hits"]] == [(cached, 1)]  # the evicted slot's entry


def test_continue_after_the_interactive_chat_starts_where_it_ended(e_model, tmp_path):
    from tests.test_repl import leave, say, spawn

    child = spawn(tmp_path, "--model", e_model, "--temperature", "0", "--max-tokens", "8", "--threads", "1",
                  "--draft", "off", "--system", "You are terse.")
    say(child, "Tell me about the report: " + DOC[:500].replace("\n", " "))
    say(child, "And the risks?")
    leave(child)  # the chat's end is kept on leaving
    saved = tmp_path / "before.json"
    shutil.copy(tmp_path / "data" / "conversations" / "last.json", saved)
    cold = chat(tmp_path, e_model, "--load", saved, "--no-cache", "Which item grew most?")
    warm = chat(tmp_path, e_model, "--continue", "Which item grew most?")
    assert warm["answer"] == cold["answer"]
    assert warm["stats"]["disk_cached_tokens"] > warm["stats"]["prompt_tokens"] * 5, warm["stats"]
