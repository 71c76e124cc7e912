"""`gemma chat` one-shot through the real CLI and engine; errors as one line.

Tests of the CLI's own rendering, flags and exit codes run in-process on the fake engine (the `fake`
fixture, tests/fakeengine.py); those about what the model and llama.cpp do run the real engine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.clitools import assert_one_line_error, run_gemma
from tests.fakeengine import run_in_process
from tests.needs import skip_or_fail
from tests.test_prompt_variants import reference, templates

GREEDY = ["--temperature", "0"]


def test_real_base_model_answers_paris(gemma3_base, tmp_path):
    proc = run_gemma("chat", "The Eiffel Tower is located in the city of", "--model", gemma3_base,
                     "--max-tokens", "8", *GREEDY, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    # a base model has no template: plain completion, said once on stderr, not on stdout
    assert "plain text completion" in proc.stderr
    assert "plain text completion" not in proc.stdout


def test_real_base_model_counts_on(gemma3_base, tmp_path):
    proc = run_gemma("chat", "1, 2, 3, 4, 5,", "--model", gemma3_base, "--max-tokens", "6", *GREEDY, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(" 6, 7")


def test_piped_prompt_works_like_an_argument(gemma3_base, tmp_path):
    piped = run_gemma("chat", "--model", gemma3_base, "--max-tokens", "6", *GREEDY, home=tmp_path,
                      input="1, 2, 3, 4, 5,")
    argued = run_gemma("chat", "1, 2, 3, 4, 5,", "--model", gemma3_base, "--max-tokens", "6", *GREEDY, home=tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == argued.stdout


def test_print_prompt_is_the_gemma4_prompt_and_loads_nothing(fake):
    proc = fake.gemma("chat", "Hi there", "--model", fake.model, "--system", "Be brief.", "--print-prompt")
    assert proc.returncode == 0, proc.stderr
    assert fake.opened == []
    # The fake model has no template and is no E2B/E4B: the newest large one, rendered by jinja2 here.
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert proc.stdout == reference(templates("2026-07-09-large")[0], messages)
    assert proc.stdout.endswith("<|turn>model\n<|channel>thought\n<channel|>")


def test_print_prompt_with_think(fake):
    proc = fake.gemma("chat", "Hi", "--model", fake.model, "--think", "--print-prompt")
    assert proc.stdout == "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"


def test_json_output_parses_with_stats(fake):
    fake.enqueue(*["tok"] * 40)
    proc = fake.gemma("chat", "Hello", "--model", fake.model, "--max-tokens", "12", "--seed", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) >= {"answer", "thinking", "tool_calls", "stats"}
    # --max-tokens reached the engine and cut the 40 queued tokens at 12; the counters are the engine's.
    assert fake.calls[-1].max_tokens == 12
    assert data["answer"] == "tok" * 12 and data["stats"]["generated_tokens"] == 12
    assert data["stats"]["finish_reason"] == "length"
    assert data["stats"]["prompt_tokens"] == len(fake.prompts[-1])  # one character, one token


def test_thinking_goes_to_stderr_answer_to_stdout(fake):
    # What must hold: stdout has no thinking markers (the reply parser splits them off as they stream).
    fake.enqueue("<|channel>", "thought\n", "Let me see", "<channel|>", "Hello", " back")
    proc = fake.gemma("chat", "Hello", "--model", fake.model, "--max-tokens", "40", "--seed", "5", "--think")
    assert proc.stdout == "Hello back\n" and "Let me see" in proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "<|channel>" not in proc.stdout and "<channel|>" not in proc.stdout


def test_missing_model_file(gemma_home):
    proc = run_in_process("chat", "hi", "--model", gemma_home / "nope.gguf")
    assert_one_line_error(proc, "model file not found", "nope.gguf")


def test_file_that_is_not_gguf(gemma_home):
    bad = gemma_home / "notes.gguf"
    bad.write_text("just some text, not a model\n")
    proc = run_in_process("chat", "hi", "--model", bad)
    assert_one_line_error(proc, "not a GGUF model file", "notes.gguf")


def test_truncated_gguf(e_model, tmp_path):
    cut = tmp_path / "cut.gguf"
    data = Path(e_model).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    proc = run_gemma("chat", "hi", "--model", cut, home=tmp_path)
    assert_one_line_error(proc, "truncated or damaged", "cut.gguf")


def test_truncated_header(e_model, gemma_home):
    cut = gemma_home / "head.gguf"
    cut.write_bytes(Path(e_model).read_bytes()[:100])
    proc = run_in_process("chat", "hi", "--model", cut)
    assert_one_line_error(proc, "truncated or damaged")


def test_unknown_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "alien.gguf"
    w = gguf.GGUFWriter(str(path), "zorblax")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    proc = run_gemma("chat", "hi", "--model", path, home=tmp_path)
    assert_one_line_error(proc, "zorblax")


def test_debug_shows_the_traceback(tmp_path):
    proc = run_gemma("chat", "hi", "--model", tmp_path / "nope.gguf", home=tmp_path, GEMMA_DEBUG="1")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_prompt_longer_than_context_is_one_line(gemma3_base, tmp_path):
    proc = run_gemma("chat", "word " * 400, "--model", gemma3_base, "--ctx", "128", home=tmp_path)
    assert_one_line_error(proc, "tokens but the context holds")


def test_no_prompt_and_empty_stdin_is_a_usage_error(fake):
    proc = fake.gemma("chat", "--model", fake.model, input="")
    assert_one_line_error(proc, "no prompt")
    assert proc.returncode == 2


def test_output_to_a_closed_pipe_is_quiet(gemma3_base, tmp_path):
    if shutil.which("head") is None:
        skip_or_fail("needs the head command")
    import subprocess
    import sys

    from tests.clitools import gemma_env

    cmd = f'"{sys.executable}" -m gemma_cli chat "Tell me a story" --model "{gemma3_base}" --max-tokens 200 | head -c 5'
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=gemma_env(tmp_path), timeout=120)
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["chat", "--bogus"], ["models", "e4"], ["nosuchcommand"]])
def test_bad_usage_is_a_usage_error_without_traceback(gemma_home, args):
    proc = run_in_process(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "this is a bug" not in proc.stderr
    assert "Error:" in proc.stderr


def test_help_has_examples(gemma_home):
    for args in (["--help"], ["chat", "--help"]):
        proc = run_in_process(*args)
        assert proc.returncode == 0 and "Examples:" in proc.stdout


# The fake engine's scripted reply makes the split certain (on a real model a grammar does: test_repl.py).


def test_thinking_goes_to_stderr_and_hide_thinking_drops_it(fake):
    thought = ["<|channel>", "thought\n", "I ponder", " deeply", "<channel|>", "The answer", " is four."]
    fake.enqueue(*thought).enqueue(*thought)
    shown = fake.gemma("chat", "2+2?", "--model", fake.model, "--max-tokens", "60")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "The answer is four."
    assert "I ponder deeply" in shown.stderr
    hidden = fake.gemma("chat", "2+2?", "--model", fake.model, "--max-tokens", "60", "--hide-thinking")
    assert hidden.stdout.strip() == "The answer is four." and "ponder" not in hidden.stderr


def test_a_thought_that_uses_every_token_is_reported_not_printed_empty(fake):
    # No way to end: the reply can only stop at the token limit (a grammar forces this on a real model).
    endless = ["<|channel>", "thought\n"] + ["hmm ", "well "] * 50
    fake.enqueue(*endless).enqueue(*endless)
    proc = fake.gemma("chat", "Think hard", "--model", fake.model, "--max-tokens", "30", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["answer"] == "" and data["stats"]["finish_reason"] == "length"
    assert data["thinking"].split()[0] in ("hmm", "well")
    plain = fake.gemma("chat", "Think hard", "--model", fake.model, "--max-tokens", "30")
    assert plain.stdout == "" and "used all its tokens thinking" in plain.stderr


def test_stdin_and_a_prompt_together_put_stdin_first(fake):
    proc = fake.gemma("chat", "Summarise this", "--model", fake.model, "--print-prompt",
                      input="The meeting moved to Tuesday.\n")
    assert proc.returncode == 0, proc.stderr
    assert "<|turn>user\nThe meeting moved to Tuesday.\n\nSummarise this<turn|>" in proc.stdout


@pytest.mark.parametrize("asked,actual,why", [("64", "256", "multiples of 256"), ("10000000", "4096", "trained for at most 4096")])
def test_a_context_other_than_asked_is_said(e_model, tmp_path, asked, actual, why):
    proc = run_gemma("chat", "hi", "--model", e_model, "--ctx", asked, "--max-tokens", "1", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"note: the context is {actual} tokens, not the {asked} asked for" in proc.stderr and why in proc.stderr
    if asked == "64":  # a size llama.cpp keeps as it is gets no note
        assert "note:" not in run_gemma("chat", "hi", "--model", e_model, "--ctx", "512", "--max-tokens", "1",
                                        home=tmp_path).stderr


def test_an_answer_cut_by_a_real_context_says_so(e_model, tmp_path):
    grammar = tmp_path / "endless.gbnf"
    grammar.write_text('root ::= words\nwords ::= ("on and " | "so forth ") words\n')
    proc = run_gemma("chat", "hi", "--model", e_model, "--ctx", "256", "--grammar", grammar, "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)["stats"]
    assert (stats["finish_reason"], stats["limit"]) == ("length", "context")
    assert stats["prompt_tokens"] + stats["generated_tokens"] >= 250
    assert "the context of 256 tokens is full; raise --ctx" in proc.stderr


def test_sigint_during_a_real_one_shot_exits_130_and_keeps_the_answer(e_model, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from tests.clitools import gemma_env

    grammar = tmp_path / "endless.gbnf"
    grammar.write_text('root ::= words\nwords ::= ("on and " | "so forth ") words\n')
    proc = subprocess.Popen([sys.executable, "-m", "gemma_cli", "chat", "Talk", "--model", e_model, "--grammar",
                             str(grammar), "--max-tokens", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=gemma_env(tmp_path))
    first = proc.stdout.read(6)  # the answer is streaming
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    text = (first + rest).decode().rstrip("\n")
    while text.startswith(("on and ", "so forth ")):  # what the grammar allows, cut anywhere by the Ctrl-C
        text = text[len("on and "):] if text.startswith("on and ") else text[len("so forth "):]
    assert "on and ".startswith(text) or "so forth ".startswith(text), text
    assert b"interrupted" in err and b"Traceback" not in err
