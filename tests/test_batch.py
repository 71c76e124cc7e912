"""`gemma batch`: reading lines, result records, the results file (repair, resume), and the CLI
on the tiny synthetic Gemma 4 model (fast; the real-model and crash tests live beside this file)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from gemma_cli import batch
from gemma_cli.batch import Answer, Failure, Output, parse_line, record
from tests.batchoutput import batch_error, chat_completion
from tests.clitools import run_batch, run_gemma

# ---------------------------------------------------------------- lines


def line(obj, number=1, base=None):
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return parse_line(number, raw + b"\n", base)


def test_simple_prompt_line():
    ln = line({"id": "q1", "prompt": "Hi", "system": "Be brief.", "max_tokens": 5, "temperature": 0, "seed": 3})
    assert ln.error is None and ln.form == "simple" and ln.id == "q1"
    r = ln.request
    assert r.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (r.max_tokens, r.temperature, r.seed) == (5, 0.0, 3)


def test_a_line_without_an_id_is_known_by_its_number_never_by_a_made_up_id():
    # Issue 12 item 4: the line number as an id collided with a real "id": 42 on another line.
    bare = line({"prompt": "Hi"}, number=42)
    assert bare.id is None and bare.key != line({"id": 42, "prompt": "Hi"}).key != line({"id": "42", "prompt": "x"}).key
    openai = line({"custom_id": None, "body": {"messages": [{"role": "user", "content": "x"}]}}, number=7)
    assert openai.id is None and openai.key == bare.key.replace("42", "7")
    assert record(bare, Answer("ok"))["line"] == 42 and record(bare, Answer("ok"))["id"] is None
    broken = line(b"{not json", number=5)
    rec = record(broken, failure=broken.error)
    assert rec["id"] is None and rec["line"] == 5 and rec["error"]["line"] == 5
    assert "line" not in record(line({"id": 3, "prompt": "x"}, number=9), Answer("ok"))  # a real id is enough


def test_ids_keep_their_type_for_resume():
    assert batch.key_of(1) != batch.key_of("1")
    assert line({"id": 1, "prompt": "x"}).key == "1" and line({"id": "1", "prompt": "x"}).key == '"1"'


def test_images_go_before_the_text_and_resolve_beside_the_input(tmp_path):
    ln = line({"prompt": "What is it?", "images": ["cat.png", "data:image/png;base64,AAAA"], "audio": "/abs/a.wav"},
              base=tmp_path)
    content = ln.request.messages[0]["content"]
    assert content[0] == {"type": "image", "path": str(tmp_path / "cat.png")}
    assert content[1] == {"type": "image", "url": "data:image/png;base64,AAAA"}
    assert content[2] == {"type": "audio", "path": "/abs/a.wav"}
    assert content[3] == {"type": "text", "text": "What is it?"}


def test_openai_line_with_image_url_and_input_audio_parts():
    body = {"model": "gemma-4", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "text", "text": "Describe"}]}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "max_completion_tokens": 20, "chat_template_kwargs": {"enable_thinking": True}, "user": "u1"}
    ln = line({"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": body})
    assert ln.error is None and ln.form == "openai" and ln.id == "r1"
    r = ln.request
    assert [p["type"] for p in r.messages[0]["content"]] == ["image", "audio", "text"]
    assert r.schema == {"type": "object"} and r.max_tokens == 20 and r.think is True
    assert r.body is body or r.body == body


@pytest.mark.parametrize("raw, code, needle", [
    (b"{not json", "invalid_json", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "nested too deeply"),  # was a RecursionError: the run stopped
    (b"[1, 2]", "invalid_line", "not an object"),
    (json.dumps({"prompt": "x", "max_token": 5}).encode(), "invalid_line", "unknown field 'max_token'"),
    (json.dumps({"prompt": 5}).encode(), "invalid_line", '"prompt" must be a string'),
    (json.dumps({"prompt": "x", "max_tokens": "many"}).encode(), "invalid_line", '"max_tokens" must be an integer'),
    (json.dumps({"prompt": "x", "temperature": -1}).encode(), "invalid_line", "outside"),
    (json.dumps({"prompt": "x", "think": "yes"}).encode(), "invalid_line", '"think" must be true or false'),
    (json.dumps({"prompt": "x", "messages": []}).encode(), "invalid_line", "either"),
    (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), "invalid_line", "needs a role"),
    (json.dumps({"id": {"a": 1}, "prompt": "x"}).encode(), "invalid_line", "string or an integer"),
    (json.dumps({"custom_id": "a", "url": "/v1/embeddings", "body": {}}).encode(), "invalid_line", "not supported"),
    (json.dumps({"custom_id": "a", "body": {"messages": [{"role": "user", "content": "x"}], "n": 2}}).encode(),
     "invalid_line", "n = 1"),
    (json.dumps({"custom_id": "a", "body": {"messages": [{"role": "user", "content": "x"}], "logprobs": True}}).encode(),
     "invalid_line", "'logprobs' are not written to batch results"),
    (json.dumps({"prompt": "x", "stop": ["a", ""]}).encode(), "invalid_line", '"stop" must be a string or a list'),
    (json.dumps({"custom_id": "a", "body": {"messages": [{"role": "user", "content": "x"}], "tools": [
        {"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {
            "name": "h"}}}}).encode(), "invalid_line", "'h', which is not among the declared tools"),
])
def test_bad_lines_become_failures(raw, code, needle):
    ln = parse_line(3, raw + b"\n")
    assert ln.request is None
    assert ln.error.code == code and needle in ln.error.message, ln.error.message


def test_a_body_field_that_would_change_the_answer_is_an_error_record_naming_it():
    for name, value in {"functions": [{"name": "f"}], "logprobs": True, "modalities": ["audio"]}.items():
        ln = line({"custom_id": "a", "body": {"messages": [{"role": "user", "content": "x"}], name: value}})
        rec = record(ln, failure=ln.error)
        assert ln.request is None and rec["error"]["code"] == "invalid_line", name
        assert f"'{name}'" in rec["error"]["message"] and rec["error"]["message"].startswith("line 1:"), rec


# ---------------------------------------------------------------- records


def test_simple_record_shapes():
    ln = line({"id": 9, "prompt": "x"})
    ok = record(ln, Answer("Paris", "hmm", [{"name": "f", "arguments": {"a": 1}}], 10, 4, 3, "stop"))
    assert ok == {"id": 9, "answer": "Paris", "thinking": "hmm", "tool_calls": [{"name": "f", "arguments": {"a": 1}}],
                  "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13, "cached_tokens": 4},
                  "finish_reason": "stop", "error": None}
    bad = record(ln, failure=Failure("context_overflow", "too long", "raise --ctx"))
    assert bad["answer"] is None and bad["error"] == {"code": "context_overflow", "message": "too long", "line": 1,
                                                      "hint": "raise --ctx"}
    assert set(bad) == set(ok)


def test_openai_record_is_a_batch_output_line_with_a_chat_completion():
    ln = line({"custom_id": "c1", "body": {"messages": [{"role": "user", "content": "x"}]}})
    rec = record(ln, Answer("", "", [{"name": "get_time", "arguments": {"tz": "UTC"}}], 7, 0, 5, "stop", model="m"))
    assert rec["custom_id"] == "c1" and rec["id"].startswith("batch_req_")
    body = chat_completion(rec)  # the openai package's ChatCompletion validates the shape
    assert body.model == "m"
    (choice,) = body.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_time" and json.loads(call.function.arguments) == {"tz": "UTC"}
    assert (body.usage.prompt_tokens, body.usage.completion_tokens, body.usage.total_tokens) == (7, 5, 12)
    failed = record(ln, failure=Failure("http_400", "bad", status=400, body={"error": {"message": "bad"}}))
    assert failed["response"]["status_code"] == 400 and batch_error(failed).code == "http_400"


def test_a_constrained_answer_must_be_json():
    batch.check_json(Answer('{"a": 1}'))
    with pytest.raises(batch.GemmaError) as info:
        batch.check_json(Answer('{"a": ', finish_reason="length"))
    assert info.value.code == "grammar" and "cut at max_tokens" in info.value.message


# ---------------------------------------------------------------- the results file


def rec(ident, error=None):
    return {"id": ident, "answer": "x", "error": error}


def write_lines(path: Path, *items, tail: bytes = b"") -> None:
    path.write_bytes(b"".join(json.dumps(i).encode() + b"\n" for i in items) + tail)


def test_torn_last_line_is_repaired(tmp_path):
    out = tmp_path / "out.jsonl"
    write_lines(out, rec(1), rec(2), tail=b'{"id": 3, "answ')
    o = Output(out)
    assert o.repaired == len(b'{"id": 3, "answ') and o.kept == 2
    o.write(rec(3))
    o.close()
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [1, 2, 3]


def test_a_line_nested_too_deeply_is_no_record_and_stays(tmp_path):
    out = tmp_path / "out.jsonl"
    deep = b"[" * 100_000 + b"]" * 100_000 + b"\n"
    write_lines(out, rec(1), tail=deep + json.dumps(rec(2, {"code": "x", "message": "m"})).encode() + b"\n")
    o = Output(out)  # was a RecursionError: the run stopped as "a bug"
    assert o.kept == 1 and o.retrying == 1 and not o.repaired
    o.close()
    assert out.read_bytes() == json.dumps(rec(1)).encode() + b"\n" + deep  # only the error record was dropped


def test_power_cut_zeros_at_the_end_are_repaired(tmp_path):
    out = tmp_path / "out.jsonl"
    write_lines(out, rec(1), tail=b"\0" * 100)
    o = Output(out)
    o.close()
    assert o.repaired == 100 and out.read_bytes().endswith(b"}\n")


def test_error_records_are_dropped_so_those_lines_run_again(tmp_path):
    out = tmp_path / "out.jsonl"
    write_lines(out, rec("a"), rec("b", {"code": "x", "message": "m"}), rec("c"))
    o = Output(out)
    assert o.retrying == 1 and o.kept == 2
    assert o.answered(line({"id": "a", "prompt": "x"})) and not o.answered(line({"id": "b", "prompt": "x"}))
    o.close()
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["a", "c"]


def test_openai_results_resume_by_custom_id(tmp_path):
    out = tmp_path / "out.jsonl"
    write_lines(out, {"id": "batch_req_1", "custom_id": "r1", "response": {}, "error": None})
    o = Output(out)
    assert o.answered(line({"custom_id": "r1", "body": {"messages": [{"role": "user", "content": "x"}]}}))
    assert not o.answered(line({"id": "batch_req_1", "prompt": "x"}))
    o.close()


def test_restart_empties_the_file(tmp_path):
    out = tmp_path / "out.jsonl"
    write_lines(out, rec(1))
    Output(out, restart=True).close()
    assert out.read_bytes() == b""


def test_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    first = Output(out)
    with pytest.raises(batch.GemmaError, match="another gemma batch"):
        Output(out)
    first.close()


# ---------------------------------------------------------------- the command, on the synthetic model


def test_bad_lines_get_error_records_and_exit_3(e_model, tmp_path):
    lines = [{"id": 1, "prompt": "Hello", "max_tokens": 4}, "{oops", {"id": 3, "prompt": "x", "colour": "red"},
             {"id": 4, "prompt": "Hi", "max_tokens": 4}, {"id": 4, "prompt": "again"}]
    proc, results = run_batch(tmp_path, lines, "-m", e_model, "-p", "2", "--ctx", "256", "-t", "0")
    assert proc.returncode == 3, proc.stderr
    by_line = {r["error"]["line"] if r["error"] else r["id"]: r for r in results}
    assert len(results) == 5
    assert by_line[1]["error"] is None and by_line[4]["error"] is None
    assert by_line[2]["error"]["code"] == "invalid_json" and by_line[2]["id"] is None and by_line[2]["line"] == 2
    assert by_line[3]["error"]["code"] == "invalid_line"
    assert by_line[5]["error"]["code"] == "duplicate_id"
    assert "5 lines: 2 ok, 3 failed, 0 skipped" in proc.stderr


def test_context_overflow_is_an_error_record_and_the_run_goes_on(e_model, tmp_path):
    lines = [{"id": "long", "prompt": "word " * 400}, {"id": "short", "prompt": "Hi", "max_tokens": 3}]
    proc, results = run_batch(tmp_path, lines, "-m", e_model, "--ctx", "128", "-p", "2")
    assert proc.returncode == 3
    got = {r["id"]: r for r in results}
    assert got["long"]["error"]["code"] == "context_overflow" and "--ctx" in got["long"]["error"]["hint"]
    assert got["short"]["error"] is None and got["short"]["usage"]["completion_tokens"] <= 3


def test_fail_fast_stops_at_the_first_failure(e_model, tmp_path):
    lines = ["{bad"] + [{"id": i, "prompt": f"line {i}", "max_tokens": 4} for i in range(2, 40)]
    proc, results = run_batch(tmp_path, lines, "-m", e_model, "-p", "1", "--fail-fast")
    assert proc.returncode == 3
    assert results[0]["error"]["code"] == "invalid_json"
    assert len(results) < 5 and "fail-fast" in proc.stderr


def test_openai_form_round_trip(e_model, tmp_path):
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gemma-4-e4b", "messages": [{"role": "system", "content": "Be brief."},
                                                            {"role": "user", "content": f"Question {i}"}],
                       "max_tokens": 5, "temperature": 0}} for i in range(6)]
    lines.append({"custom_id": "json", "body": {"messages": [{"role": "user", "content": "JSON"}],
                                                "response_format": {"type": "json_object"}, "max_tokens": 60,
                                                "temperature": 0}})
    lines.append({"custom_id": "gbnf", "body": {"messages": [{"role": "user", "content": "Say it"}],
                                                "grammar": 'root ::= "forty two"', "max_tokens": 20}})
    proc, results = run_batch(tmp_path, lines, "-m", e_model, "-p", "3")
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["custom_id"] for r in results) == sorted(x["custom_id"] for x in lines)
    bodies = {r["custom_id"]: chat_completion(r) for r in results}  # validated by the openai package's types
    for custom_id, body in bodies.items():
        asked = next(x["body"]["max_tokens"] for x in lines if x["custom_id"] == custom_id)
        assert body.usage.completion_tokens <= asked
    assert isinstance(json.loads(bodies["json"].choices[0].message.content), dict)
    # llama.cpp's grammar field, as gemma serve takes it
    assert bodies["gbnf"].choices[0].message.content == "forty two"
    # the shared system turn was evaluated once: later lines reuse it from the cache
    cached = [b.usage.prompt_tokens_details.cached_tokens if b.usage.prompt_tokens_details else 0
              for i, b in bodies.items() if i.startswith("req-")]
    assert sorted(cached)[-1] >= 8


def test_stdin_in_stdout_out(e_model, tmp_path):
    src = json.dumps({"id": "s", "prompt": "Hi", "max_tokens": 3}) + "\n"
    proc = run_gemma("batch", "-", "-m", e_model, "-q", home=tmp_path, input=src)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["id"] == "s" and proc.stderr == ""


def test_running_again_resumes_and_restart_redoes(e_model, tmp_path):
    lines = [{"id": i, "prompt": f"n {i}", "max_tokens": 3} for i in range(5)]
    first, results = run_batch(tmp_path, lines, "-m", e_model, "-p", "2")
    assert first.returncode == 0 and len(results) == 5
    again, results = run_batch(tmp_path, lines, "-m", e_model, "-p", "2")
    assert again.returncode == 0 and len(results) == 5
    assert "0 ok, 0 failed, 5 skipped" in again.stderr
    redo, results = run_batch(tmp_path, lines, "-m", e_model, "-p", "2", "--restart")
    assert "5 ok" in redo.stderr and len(results) == 5


def test_images_in_a_batch_line(e_model, vision_mmproj, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "green.png")
    lines = [{"id": "img", "prompt": "Describe", "images": ["green.png"], "max_tokens": 3},
             {"id": "gone", "prompt": "Describe", "images": ["nope.png"], "max_tokens": 3}]
    proc, results = run_batch(tmp_path, lines, "-m", e_model, "--mmproj", vision_mmproj, "-p", "2")
    got = {r["id"]: r for r in results}
    assert got["img"]["error"] is None and got["img"]["usage"]["prompt_tokens"] > 50  # the image's tokens
    assert got["gone"]["error"]["code"] == "media" and "nope.png" in got["gone"]["error"]["message"]
    assert proc.returncode == 3


def test_images_without_a_projector_say_what_is_needed(e_model, tmp_path):
    model = tmp_path / "alone" / "gemma4-e.gguf"  # no mmproj beside it
    model.parent.mkdir()
    os.symlink(e_model, model)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    proc, results = run_batch(tmp_path, [{"id": 1, "prompt": "Describe", "images": ["x.png"]}], "-m", model)
    assert proc.returncode == 3
    assert results[0]["error"]["code"] == "media" and "--mmproj" in results[0]["error"]["hint"]


def test_missing_input_is_a_usage_error(tmp_path):
    proc = run_gemma("batch", tmp_path / "nope.jsonl", "-o", tmp_path / "o.jsonl", home=tmp_path)
    assert proc.returncode == 2 and "input file not found" in proc.stderr


def test_a_progress_bar_on_a_terminal_then_the_summary(e_model, tmp_path):
    import sys

    import pexpect

    from tests.clitools import gemma_env

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": f"Line {i}", "max_tokens": 8}) + "\n" for i in range(40)))
    child = pexpect.spawn(sys.executable, ["-m", "gemma_cli", "batch", str(src), "-o", str(tmp_path / "o.jsonl"),
                                           "-m", e_model, "-p", "2", "--ctx", "128"],
                          env=gemma_env(tmp_path), encoding="utf-8", timeout=120, dimensions=(24, 140))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)
    assert re.search(r"batch ━+ 40/40 .*tok/s", shown), shown[-500:]  # the bar: done of total, speed
    assert "batch: 40 lines: 40 ok, 0 failed, 0 skipped" in shown


# ---------------------------------------------------------------- found in review


def test_dropping_error_records_keeps_the_files_mode(tmp_path):
    out = tmp_path / "out.jsonl"
    write_lines(out, rec("a"), rec("b", {"code": "x", "message": "m"}))
    out.chmod(0o644)
    Output(out).close()
    assert out.stat().st_mode & 0o777 == 0o644 and len(out.read_text().splitlines()) == 1


def test_duplicates_stay_errors_on_every_run(e_model, tmp_path):
    # Line 4 has no id: it is known by its number, which never collides with line 3's real "id": 4 (issue 12 item 4).
    lines = [{"id": "a", "prompt": "x", "max_tokens": 2}, {"id": "a", "prompt": "y", "max_tokens": 2},
             {"id": 4, "prompt": "z", "max_tokens": 2}, {"prompt": "w", "max_tokens": 2}]
    for run in range(2):
        proc, results = run_batch(tmp_path, lines, "-m", e_model, "-p", "2", "--ctx", "128")
        assert proc.returncode == 3, (run, proc.stderr)
        assert len(results) == 4, (run, results)
        assert sorted(r["error"]["line"] for r in results if r["error"]) == [2]
        assert all(r["error"]["code"] == "duplicate_id" for r in results if r["error"])
    assert "3 skipped" in proc.stderr  # the second run: a, 4 and line 4 were answered, the duplicate failed again
    answered = {(r["id"], r.get("line")) for r in results if not r["error"]}
    assert answered == {("a", None), (4, None), (None, 4)}


def test_lines_without_ids_resume_by_their_number_beside_real_numeric_ids(e_model, tmp_path):
    lines = [{"id": 2, "prompt": "x", "max_tokens": 2}, {"prompt": "y", "max_tokens": 2}, "{not json",
             {"id": 3, "prompt": "z", "max_tokens": 2}]
    proc, results = run_batch(tmp_path, lines, "-m", e_model, "-p", "2", "--ctx", "128")
    assert proc.returncode == 3, proc.stderr  # only the unparseable line
    assert sorted((r["id"], r.get("line"), bool(r["error"])) for r in results if r["id"] is not None) == \
        [(2, None, False), (3, None, False)]
    bare = sorted((r.get("line"), r["error"]["code"] if r["error"] else None) for r in results if r["id"] is None)
    assert bare == [(2, None), (3, "invalid_json")]  # each says which line it was
    proc, results = run_batch(tmp_path, lines, "-m", e_model, "-p", "2", "--ctx", "128")
    assert "3 skipped" in proc.stderr and len(results) == 4, proc.stderr  # the bad line's record is redone


# ---------------------------------------------------------------- -o that cannot be written (issue 12 item 9)


def run_to(tmp_path, out, model):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 1, "prompt": "x"}) + "\n")
    return run_gemma("batch", src, "-o", tmp_path / out, "-m", model, home=tmp_path / "home")


def test_results_onto_a_folder_fail_at_once_in_one_line(e_model, tmp_path):
    from tests.clitools import assert_one_line_error

    (tmp_path / "results").mkdir()
    proc = run_to(tmp_path, "results", e_model)
    assert_one_line_error(proc, "cannot write results to", "results", "it is a folder")
    assert proc.returncode == 1 and list((tmp_path / "results").iterdir()) == []


def test_results_under_a_file_fail_at_once_in_one_line(e_model, tmp_path):
    from tests.clitools import assert_one_line_error

    (tmp_path / "notes.txt").write_text("a file")
    for out in ("notes.txt/out.jsonl", "notes.txt/deeper/out.jsonl"):
        proc = run_to(tmp_path, out, e_model)
        assert_one_line_error(proc, f"cannot write {tmp_path / out}", "notes.txt is a file, not a folder")
        assert proc.returncode == 1
    assert (tmp_path / "notes.txt").read_text() == "a file"


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write into, root included (chmod alone does not stop root: chattr +i does)."""
    import shutil
    import subprocess

    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.fail("running as root, a read-only folder needs chattr +i (e2fsprogs) on this file system")
    try:
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)])
        folder.chmod(0o755)


def test_results_into_a_read_only_folder_fail_at_once_in_one_line(e_model, tmp_path, read_only_folder):
    from tests.clitools import assert_one_line_error

    for out in ("locked/out.jsonl", "locked/sub/out.jsonl"):
        proc = run_to(tmp_path, out, e_model)
        assert_one_line_error(proc, f"cannot write {tmp_path / out}")
        assert proc.returncode == 1 and "Loading" not in proc.stderr  # before the model, not after it
    assert list(read_only_folder.iterdir()) == []


def test_the_destination_check_creates_nothing(tmp_path):
    batch.check_destination(tmp_path / "new" / "deeper" / "out.jsonl")
    batch.check_destination(tmp_path / "out.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_an_id_with_a_lone_surrogate_is_written_and_resumed(e_model, tmp_path):
    lines = ['{"id": "a\\ud800", "prompt": "hi", "max_tokens": 2}', {"id": "b", "prompt": "hi", "max_tokens": 2}]
    proc, results = run_batch(tmp_path, lines, "-m", e_model, "--ctx", "128")
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["id"] for r in results) == ["a\ud800", "b"]
    again, results = run_batch(tmp_path, lines, "-m", e_model, "--ctx", "128")
    assert again.returncode == 0 and "2 skipped" in again.stderr and len(results) == 2


def test_each_line_gets_the_context_it_asks_for_up_to_the_trained_one(e_model, tmp_path):
    # 4 lines of 4096 (the synthetic model's trained context) need 5 x 4096 in all: none is cut to 819.
    long = {"id": "long", "prompt": "word " * 300, "max_tokens": 2}
    for ctx in ("4096", "16384"):
        proc, results = run_batch(tmp_path, [long], "-m", e_model, "-p", "4", "--ctx", ctx, "--restart")
        assert proc.returncode == 0, proc.stderr
        assert results[0]["usage"]["prompt_tokens"] > 819


def test_restart_touches_nothing_when_the_run_cannot_start(tmp_path):
    out = tmp_path / "out.jsonl"
    write_lines(out, rec("kept"))
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "prompt": "hi"}\n')
    proc = run_gemma("batch", src, "-o", out, "--restart", "-m", tmp_path / "typo.gguf", home=tmp_path)
    assert proc.returncode != 0 and "not found" in proc.stderr
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["kept"]


def test_an_image_too_big_for_a_small_context_fails_its_line_not_the_run(e_model, vision_mmproj, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "green.png")
    lines = [{"id": "t1", "prompt": "Hi", "max_tokens": 2},
             {"id": "img", "prompt": "Describe", "images": ["green.png"], "max_tokens": 2},
             {"id": "t2", "prompt": "Hi again", "max_tokens": 2}, {"id": "t3", "prompt": "Bye", "max_tokens": 2}]
    proc, results = run_batch(tmp_path, lines, "-m", e_model, "--mmproj", vision_mmproj, "-p", "2", "--ctx", "64")
    assert proc.returncode == 3, proc.stderr  # not a crash (was: a segfault once the context was remade)
    got = {r["id"]: r for r in results}
    assert got["img"]["error"]["code"] == "media" and "--ctx" in got["img"]["error"]["hint"]
    assert all(got[k]["error"] is None for k in ("t1", "t2", "t3"))


def test_a_reply_cut_inside_a_spelled_out_tool_call_marker_does_not_end_with_it(e_model, tmp_path):
    # The grammar makes the model write "<|tool_call>"; the bias bans the control tokens, so it is spelled
    # out piece by piece ("<", "|", "tool", ...). Every max_tokens that cuts inside it: no "<|tool_ca" in content.
    from gemma_cli.engine import Engine

    with Engine(e_model, n_ctx=256, n_threads=1) as engine:
        banned = {str(t): -100 for t in engine.tokenize("<|tool_call><tool_call|>")}
    assert len(banned) == 2  # each one control token

    def line(k):
        return {"custom_id": str(k), "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": k,
                                             "grammar": 'root ::= "Checking.<|tool_call>"', "logit_bias": banned}}

    proc, results = run_batch(tmp_path, [line(k) for k in range(1, 40)], "-m", e_model, "--ctx", "256", "-t", "0")
    assert proc.returncode == 0, proc.stderr
    bodies = {int(r["custom_id"]): r["response"]["body"] for r in results}
    whole = max(b["usage"]["completion_tokens"] for b in bodies.values())  # the whole forced text
    contents = [bodies[k]["choices"][0]["message"]["content"] for k in range(1, whole)]
    assert all(bodies[k]["choices"][0]["finish_reason"] == "length" for k in range(1, whole))
    assert all("Checking.".startswith(c) for c in contents), repr(contents)
    # "Checking." itself is one cut; each later one fell inside the spelled-out marker
    assert contents.count("Checking.") >= 3, contents
