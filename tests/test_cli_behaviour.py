"""What a user sees from `gemma` (exit codes, notices, JSON, saved files), run in-process on the fake engine.

Each test here is about the CLI's own behaviour; the engine is tests/fakeengine.py's FakeEngine
(scripted replies), so they take milliseconds. What the engine must prove stays in the real-engine
tests (test_chat_cli.py, test_repl.py, test_repl_screen.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gemma_cli.store import paths
from tests.fakeengine import run_in_process


def one_error(out, *needles: str) -> str:
    assert out.exit_code != 0, out
    assert "Traceback" not in out.stderr and "this is a bug" not in out.stderr, out.stderr
    assert len(out.errors) == 1, out.stderr
    for needle in needles:
        assert needle in out.errors[0], out.errors[0]
    return out.errors[0]


# ---- Ctrl-C in a one-shot chat (issue 12, item 3)


def test_ctrl_c_in_a_one_shot_exits_130_with_a_notice_and_keeps_the_text(fake):
    fake.enqueue("The first", " half", raise_after=KeyboardInterrupt())
    out = fake.gemma("chat", "tell me", "-m", fake.model)
    assert out.exit_code == 130
    assert out.stdout == "The first half\n"
    assert "interrupted" in out.stderr and "Traceback" not in out.stderr


def test_ctrl_c_with_json_prints_the_partial_answer_marked_interrupted(fake):
    fake.enqueue("The first", " half", raise_after=KeyboardInterrupt())
    out = fake.gemma("chat", "tell me", "-m", fake.model, "--json")
    assert out.exit_code == 130
    data = json.loads(out.stdout)
    assert data["answer"] == "The first half"
    assert data["stats"]["finish_reason"] == "interrupted"
    assert data["stats"]["generated_tokens"] == 2


def test_ctrl_c_while_loading_is_130_and_says_interrupted(fake, monkeypatch):
    from gemma_cli.commands import loading

    def interrupted(path, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "open_engine", interrupted)
    out = fake.gemma("chat", "hi", "-m", fake.model)
    assert out.exit_code == 130 and "interrupted" in out.stderr


# ---- one-shot calls and the autosaved conversation (item 5)


def test_a_one_shot_chat_does_not_replace_the_interactive_conversation(fake):
    last = paths.last_conversation()
    last.parent.mkdir(parents=True, exist_ok=True)
    last.write_text(json.dumps({"messages": [{"role": "user", "content": "my long chat"},
                                             {"role": "assistant", "content": "yes"}]}))
    before = last.read_text()
    fake.enqueue("ok")
    assert fake.gemma("chat", "scripted question", "-m", fake.model, input="secret piped text").exit_code == 0
    assert last.read_text() == before  # neither the question nor the piped stdin is on disk


def test_save_keeps_a_one_shot_and_continue_goes_on_from_it(fake):
    fake.enqueue("Noted.")
    assert fake.gemma("chat", "The code is 42", "-m", fake.model, "--save").exit_code == 0
    saved = json.loads(paths.last_conversation().read_text())
    assert [m["content"] for m in saved["messages"]] == ["The code is 42", "Noted."]
    fake.enqueue("It is 42.")
    out = fake.gemma("chat", "What is the code?", "-m", fake.model, "--continue")
    assert out.stdout == "It is 42.\n"
    assert "The code is 42" in fake.prompts[-1]
    # a one-shot --continue is a turn of the saved conversation: it is kept
    assert len(json.loads(paths.last_conversation().read_text())["messages"]) == 4


def test_save_keeps_an_interrupted_one_shot(fake):
    fake.enqueue("half an ans", raise_after=KeyboardInterrupt())
    assert fake.gemma("chat", "q", "-m", fake.model, "--save").exit_code == 130
    saved = json.loads(paths.last_conversation().read_text())
    assert saved["messages"][-1] == {"role": "assistant", "content": "half an ans"}


# ---- text that is not UTF-8 (item 7)


def test_stdin_that_is_not_utf8_is_replaced_with_a_warning(fake):
    fake.enqueue("ok")
    out = fake.gemma("chat", "-m", fake.model, input=b"caf\xe9 au lait")
    assert out.exit_code == 0, out.stderr
    assert "stdin is not valid UTF-8" in out.stderr and "byte 3" in out.stderr
    assert "caf\ufffd au lait" in fake.prompts[-1]


def test_an_argument_that_is_not_utf8_is_replaced_with_a_warning(fake):
    fake.enqueue("ok")
    out = fake.gemma("chat", "caf\udce9", "-m", fake.model)  # how Python hands over argv bytes that are not UTF-8
    assert out.exit_code == 0, out.stderr
    assert "the prompt is not valid UTF-8" in out.stderr
    assert "caf\ufffd" in fake.prompts[-1]


def test_a_real_non_utf8_argument_and_stdin_in_a_subprocess(fake, tmp_path):
    # the bytes as a shell hands them over; --print-prompt shows what the model would get
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "gemma_cli", "chat", b"caf\xe9", "-m", fake.model, "--print-prompt"],
                          input=b"th\xe9", capture_output=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "th\ufffd\n\ncaf\ufffd".encode() in proc.stdout
    assert b"Traceback" not in proc.stderr and proc.stderr.count(b"not valid UTF-8") == 2


# ---- --schema (item 8)


@pytest.mark.parametrize("text,needle", [
    ('{"type": "objekt"}', "is not a JSON Schema gemma can use"),
    ('[{"type": "object"}]', "holds a JSON array, not a JSON Schema object"),
    ('"object"', "holds a JSON string"),
    ('{"type": "object",', "is not valid JSON"),
    pytest.param("[" * 100_000 + "]" * 100_000, "is not valid JSON (nested too deeply)", id="nested-too-deeply"),
])
def test_a_schema_gemma_cannot_use_is_one_line_naming_the_file(fake, tmp_path, text, needle):
    schema = tmp_path / "person.json"
    schema.write_text(text)
    one_error(fake.gemma("chat", "hi", "-m", fake.model, "--schema", schema), needle, "person.json")
    assert fake.calls == []  # refused before anything ran


def test_a_schema_file_that_is_not_utf8(fake, tmp_path):
    schema = tmp_path / "latin1.json"
    schema.write_bytes(b'{"description": "caf\xe9"}')
    one_error(fake.gemma("chat", "hi", "-m", fake.model, "--schema", schema), "latin1.json", "not UTF-8")


# ---- --tools that fail at import (item 11)


@pytest.mark.parametrize("body,needle", [
    ("import sys\nsys.exit(3)\n", "failed to load: SystemExit(3)"),
    ("raise RuntimeError('no network')\n", "failed to load: RuntimeError: no network"),
    ("import sys\nsys.exit()\n", "failed to load: SystemExit(None)"),
])
def test_a_tools_file_that_fails_at_import_is_one_line(fake, tmp_path, body, needle):
    tools = tmp_path / "mytools.py"
    tools.write_text(body)
    out = fake.gemma("chat", "hi", "-m", fake.model, "--tools", tools)
    one_error(out, "mytools.py", needle)
    assert out.exit_code == 1


# ---- the context (item 15)


def test_an_answer_cut_by_the_context_says_so_and_json_says_why(fake):
    fake.n_ctx = 80  # the prompt is about 60 tokens (one per character in the fake)
    fake.enqueue(*["word "] * 100)
    out = fake.gemma("chat", "go on", "-m", fake.model)
    assert out.exit_code == 0
    assert "the answer was cut off: the context of 80 tokens is full; raise --ctx" in out.stderr
    fake.enqueue(*["word "] * 100)
    data = json.loads(fake.gemma("chat", "go on", "-m", fake.model, "--json").stdout)
    assert data["stats"]["finish_reason"] == "length" and data["stats"]["limit"] == "context"


def test_an_answer_cut_by_max_tokens_is_not_blamed_on_the_context(fake):
    fake.enqueue(*["word "] * 100)
    out = fake.gemma("chat", "go on", "-m", fake.model, "--max-tokens", "5", "--json")
    data = json.loads(out.stdout)
    assert data["stats"]["finish_reason"] == "length" and data["stats"]["limit"] == "max_tokens"
    assert "context" not in out.stderr
    fake.enqueue("done")
    data = json.loads(fake.gemma("chat", "q", "-m", fake.model, "--json").stdout)
    assert data["stats"]["finish_reason"] == "stop" and data["stats"]["limit"] is None


# ---- config (items 10 and 14)


def test_config_set_takes_a_negative_number(fake):
    out = run_in_process("config", "set", "gpu_layers", "-1")
    assert out.exit_code == 0, out.stderr
    assert "gpu_layers = -1" in out.stderr
    assert json.loads(run_in_process("config", "show", "--json").stdout)["settings"]["gpu_layers"]["value"] == -1
    assert run_in_process("config", "set", "seed", "-5").exit_code == 0


def test_a_config_file_that_is_not_utf8_is_one_line_naming_the_file(fake):
    cfg = paths_config()
    cfg.write_bytes(b"temperature: 0.5\nmodel: caf\xe9\n")
    for args in (["config", "show"], ["chat", "hi", "-m", fake.model]):
        one_error(run_in_process(*args), str(cfg), "not UTF-8", "line 2")


def test_a_broken_config_does_not_lock_out_set_unset_and_path(fake):
    cfg = paths_config()
    cfg.write_text("temprature: 0.5\ntop_k: 40\n")
    one_error(run_in_process("config", "show"), "unknown key 'temprature'", str(cfg))
    assert "gemma config unset temprature" in run_in_process("config", "show").stderr  # the hint names the fix
    assert run_in_process("config", "path").stdout.strip() == str(cfg)
    out = run_in_process("config", "set", "temperature", "0.7")
    assert out.exit_code == 0 and "still has a problem: unknown key 'temprature'" in out.stderr
    out = run_in_process("config", "unset", "temprature")
    assert out.exit_code == 0 and "problem" not in out.stderr
    assert cfg.read_text() == "top_k: 40\ntemperature: 0.7\n"
    assert run_in_process("config", "show").exit_code == 0


def test_set_and_unset_edit_a_file_with_bad_yaml_or_bad_bytes(fake):
    cfg = paths_config()
    cfg.write_bytes(b"# caf\xe9 settings\nmodel: [e4b\n")
    out = run_in_process("config", "set", "model", "e4b")
    assert out.exit_code == 0, out.stderr
    assert cfg.read_bytes() == b"# caf\xe9 settings\nmodel: e4b\n"  # the other bytes are kept as they were
    assert "not UTF-8" in out.stderr  # and what is still wrong is said
    one_error(run_in_process("config", "unset", "nosuchkey"), "unknown key 'nosuchkey'")


def paths_config():
    from gemma_cli.store import config

    return config.path()


# ---- --version and completion (item 20)


def test_version(fake):
    from gemma_cli import __version__

    for flag in ("--version", "-V"):
        out = run_in_process(flag)
        assert out.exit_code == 0
        assert out.stdout.startswith(f"gemma {__version__} (llama-cpp-python ")


def test_shell_completion_is_offered_and_completes_commands_and_options(fake):
    assert "--install-completion" in run_in_process("--help").stdout
    env = {**os.environ, "_GEMMA_COMPLETE": "complete_bash", "COMP_CWORD": "1", "COMP_WORDS": "gemma transc"}
    proc = subprocess.run([sys.executable, "-m", "gemma_cli"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["transcribe"], proc.stderr
    env.update(COMP_CWORD="2", COMP_WORDS="gemma chat --hide-th")
    proc = subprocess.run([sys.executable, "-m", "gemma_cli"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["--hide-thinking"], proc.stderr


# ---- the interactive chat (item 18), on a stdin that says it is a terminal


def repl(fake, *lines: str):
    return fake.gemma("chat", "-m", fake.model, input="".join(line + "\n" for line in lines), stdin_tty=True)


@pytest.mark.parametrize("kind,name", [("image", "notes.png"), ("audio", "notes.wav")])
def test_a_bad_file_is_refused_when_attached_and_the_next_message_still_goes(fake, tmp_path, kind, name):
    bad = tmp_path / name
    bad.write_text("just some text\n" * 20)
    fake.enqueue("A reply")
    out = repl(fake, f"/{kind} {bad}", "hello")
    assert out.exit_code == 0, out.stderr
    assert "error:" in out.stderr and name in out.stderr
    assert "will go with your next message" not in out.stderr
    assert len(fake.calls) == 1 and fake.calls[0].media == []
    assert "hello" in fake.prompts[0] and "<|image|>" not in fake.prompts[0] and "<|audio|>" not in fake.prompts[0]


def test_a_good_image_is_read_when_attached_and_goes_with_the_next_message(fake, tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 24), (200, 30, 30)).save(tmp_path / "red.png")
    fake.enqueue("Red.")
    out = repl(fake, f"/image {tmp_path / 'red.png'}", "What colour?")
    assert "red.png will go with your next message" in out.stderr, out.stderr
    assert fake.projectors[:1] == ["image"]  # the encoder is asked for at /image, before the message
    assert len(fake.calls) == 1 and len(fake.calls[0].media) == 1
    assert "<|image|>" in fake.prompts[0] and "What colour?" in fake.prompts[0]
