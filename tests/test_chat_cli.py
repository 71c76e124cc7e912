"""`gemma chat` one-shot through the real CLI and engine; errors as one line.

Tests of the CLI's own rendering, flags and exit codes run in-process on the fake engine (the `fake`
fixture, tests/fakeengine.py); those about what the model and llama.cpp do run the real engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clitools import assert_one_line_error, run_gemma
from tests.fakeengine import run_in_process
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
    # `gemma chat … | head -c 5`: the reader takes five bytes and leaves. The bytes may end inside a UTF-8
    # character, so everything is read as bytes; gemma must end on its own, exit 0, and print no traceback.
    import subprocess
    import sys

    from tests.clitools import gemma_env

    cmd = [sys.executable, "-m", "gemma_cli", "chat", "Tell me a story", "--model", gemma3_base, "--max-tokens", "200"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=gemma_env(tmp_path)
    )
    try:
        head = proc.stdout.read(5)
        proc.stdout.close()  # the reader leaves, as `head -c 5` does
        stderr = proc.stderr.read().decode("utf-8", "replace")
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(head) == 5
    assert "Traceback" not in stderr and "this is a bug" not in stderr, stderr
    assert code == 0, stderr


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
    import os
    import signal
    import subprocess
    import sys

    from tests.clitools import BOUND, gemma_env

    grammar = tmp_path / "endless.gbnf"
    grammar.write_text('root ::= words\nwords ::= ("on and " | "so forth ") words\n')
    proc = subprocess.Popen([sys.executable, "-m", "gemma_cli", "chat", "Talk", "--model", e_model, "--grammar",
                             str(grammar), "--max-tokens", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=gemma_env(tmp_path))
    first = b""
    while len(first) < 6:  # the answer is streaming; read from the pipe itself: communicate() below reads the
        chunk = os.read(proc.stdout.fileno(), 6)  # pipe too, never a buffer a buffered read(6) would have filled
        assert chunk, proc.stderr.read()
        first += chunk
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=BOUND)
    assert proc.returncode == 130, err
    text = (first + rest).decode().rstrip("\n")
    while text.startswith(("on and ", "so forth ")):  # what the grammar allows, cut anywhere by the Ctrl-C
        text = text[len("on and "):] if text.startswith("on and ") else text[len("so forth "):]
    assert "on and ".startswith(text) or "so forth ".startswith(text), text
    assert b"interrupted" in err and b"Traceback" not in err


# ---- a saved conversation that ends in a tool's result (issue 20 item 10)

TOOL_ANSWERED = [
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1_0", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
    {"role": "tool", "tool_call_id": "call_1_0", "name": "add", "content": {"sum": 5}},
]


def test_load_of_a_conversation_ending_in_a_tool_result_runs_the_models_next_turn(e_model, tmp_path):
    from gemma_cli.engine import Engine

    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps({"messages": TOOL_ANSWERED}), encoding="utf-8")
    shown = run_gemma("chat", "--load", conv, "--model", e_model, "--print-prompt", home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    proc = run_gemma("chat", "--load", conv, "--model", e_model, "--max-tokens", "4", "--seed", "1", "--json",
                     "--save", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)["stats"]
    with Engine(e_model, n_ctx=512, n_threads=1) as engine:
        assert stats["prompt_tokens"] + stats["reused_tokens"] == len(engine.tokenize(shown.stdout))
    assert stats["generated_tokens"] > 0
    # --save keeps the model's answer after the tool result, for --continue
    kept = json.loads((tmp_path / "data" / "conversations" / "last.json").read_text(encoding="utf-8"))["messages"]
    assert [m["role"] for m in kept] == ["user", "assistant", "tool", "assistant"] and kept[2]["content"] == {"sum": 5}
    # without a tool result to answer, no prompt is still a usage error
    conv.write_text(json.dumps({"messages": TOOL_ANSWERED[:1]}), encoding="utf-8")
    assert_one_line_error(run_gemma("chat", "--load", conv, "--model", e_model, home=tmp_path), "no prompt given")


# ---- a prompt over the context (issue 20 item 3): raise --ctx only while the model allows more


def test_a_prompt_over_the_context_hints_raise_ctx_only_below_the_models_limit(e_model, e_spec, tmp_path):
    limit = e_spec.context_length  # what the GGUF says the model was trained for
    long = "word " * (limit + 500)
    at_most = run_gemma("chat", long, "--model", e_model, "--ctx", limit, home=tmp_path)
    assert_one_line_error(at_most, f"but the context holds {limit}")
    assert "raise --ctx" not in at_most.stderr
    assert f"hint: shorten the input: {limit} tokens is the most this model supports" in at_most.stderr
    below = run_gemma("chat", long, "--model", e_model, "--ctx", "256", home=tmp_path)
    assert_one_line_error(below, "but the context holds 256")
    assert f"hint: raise --ctx (this model supports up to {limit}) or shorten the input" in below.stderr


# ---- a model without a chat template (issue 20 item 16)


def test_a_model_without_a_template_keeps_every_message_a_line_apart(gemma3_base, tmp_path):
    from gemma_cli.gguf_header import read_header

    header = read_header(gemma3_base)
    assert header.chat_template is None  # a base model: no template
    conv = tmp_path / "conv.json"
    history = [{"role": "user", "content": "Roses are red,"}, {"role": "assistant", "content": "violets are blue,"}]
    conv.write_text(json.dumps({"messages": history}), encoding="utf-8")
    args = ["chat", "sugar is sweet,", "--model", gemma3_base, "--system", "A poem.", "--load", conv]
    shown = run_gemma(*args, "--print-prompt", home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    bos = header.token_text(header.get("tokenizer.ggml.bos_token_id"))
    assert shown.stdout == bos + "A poem.\nRoses are red,\nviolets are blue,\nsugar is sweet,"
    proc = run_gemma(*args, "--max-tokens", "3", *GREEDY, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "no chat template" in line]
    assert len(notes) == 1 and notes[0].startswith("note: "), proc.stderr  # said once
