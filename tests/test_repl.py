"""The interactive chat driven in a real pseudo-terminal (pexpect) on real models.

Slash commands and what they print run in-process on the fake engine (`fake`, tests/fakeengine.py),
with stdin a terminal; what needs a real terminal (Ctrl-C, readline, Markdown) or a real model
(the KV cache, images, a grammar's tool call) runs here in a pseudo-terminal.
"""

from __future__ import annotations

import json
import re
import sys

import pexpect
import pytest

from tests.clitools import gemma_env

PROMPT = ">>> "
STATUS = re.compile(r"\d+ tokens · [\d.]+ s to first token")


def spawn(home, *args) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "gemma_cli", "chat", *map(str, args)], env=gemma_env(home),
                          encoding="utf-8", timeout=90, dimensions=(40, 120))
    child.expect_exact(PROMPT)
    return child


def say(child: pexpect.spawn, text: str) -> str:
    child.sendline(text)
    child.expect(STATUS)
    out = child.before
    child.expect_exact(PROMPT)
    return out


def command(child: pexpect.spawn, text: str) -> str:
    child.sendline(text)
    child.expect_exact(PROMPT)
    return child.before


def leave(child: pexpect.spawn) -> None:
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def in_process(fake, *lines: str) -> str:
    """The chat on the fake engine, fed `lines` as typed on a terminal; what it printed on stderr."""
    out = fake.gemma("chat", "--model", fake.model, input="".join(line + "\n" for line in lines), stdin_tty=True)
    assert out.exit_code == 0, out.stderr
    return out.stderr


def saved_file(path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture
def tiny_chat(e_model, tmp_path):
    child = spawn(tmp_path, "--model", e_model, "--max-tokens", "16", "--seed", "1")
    yield child
    if child.isalive():
        child.terminate(force=True)


def saved(tmp_path, child, name="conv.json") -> dict:
    path = tmp_path / name
    command(child, f"/save {path}")
    return json.loads(path.read_text())


def test_two_turns_then_stats_show_the_cache_reused(tiny_chat, tmp_path):
    say(tiny_chat, "hello there")
    say(tiny_chat, "and a second question")
    stats = command(tiny_chat, "/stats")
    cached = int(re.search(r"prompt tokens cached\s+(\d+)", stats).group(1))
    evaluated = int(re.search(r"prompt tokens evaluated\s+(\d+)", stats).group(1))
    # the first user turn and `<|turn>model\n` come from the cache; the answer is evaluated
    # again because history drops the empty thought block the generation prompt had
    assert cached >= 12 and evaluated > 0
    data = saved(tmp_path, tiny_chat)
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "user", "assistant"]
    leave(tiny_chat)


def test_think_on_changes_the_prompt(fake, tmp_path):
    fake.enqueue("ok")
    shown = in_process(fake, "/think on", "/show", "think about this", f"/save {tmp_path / 'conv.json'}")
    assert "thinking on" in shown
    assert re.search(r"thinking\s+on", shown)
    assert "<|think|>" in fake.prompts[-1]
    assert saved_file(tmp_path / "conv.json")["settings"]["think"] is True


def test_multiline_input(fake, tmp_path):
    fake.enqueue("ok")
    assert STATUS.search(in_process(fake, '"""', "line one", "line two", '"""', f"/save {tmp_path / 'conv.json'}"))
    assert saved_file(tmp_path / "conv.json")["messages"][0] == {"role": "user", "content": "line one\nline two"}


def test_save_clear_load_round_trip(fake, tmp_path):
    fake.enqueue("Fine.")
    in_process(fake, "/system You are terse.", "first", f"/save {tmp_path / 'a.json'}", "/clear",
               f"/save {tmp_path / 'b.json'}", f"/load {tmp_path / 'a.json'}", f"/save {tmp_path / 'c.json'}")
    before = saved_file(tmp_path / "a.json")
    assert [m["content"] for m in before["messages"]] == ["You are terse.", "first", "Fine."]
    assert saved_file(tmp_path / "b.json")["messages"] == [{"role": "system", "content": "You are terse."}]
    assert saved_file(tmp_path / "c.json")["messages"] == before["messages"]


def test_set_and_unknown_command_suggestion(fake):
    shown = in_process(fake, "/help")
    assert all(c in shown for c in ("/think", "/system", "/set", "/show", "/clear", "/retry", "/save", "/load",
                                    "/image", "/audio", "/exit", '"""'))
    assert "temperature = 0.5" in in_process(fake, "/set temperature 0.5")
    assert "needs a float" in in_process(fake, "/set temperature warm")
    assert "did you mean /think" in in_process(fake, "/thnk on")


def test_continue_resumes_the_autosaved_conversation(fake):
    fake.enqueue("I will.")
    in_process(fake, "remember this", "/exit")
    out = fake.gemma("chat", "--model", fake.model, "--continue", input="/show\n", stdin_tty=True)
    assert re.search(r"messages\s+2", out.stderr)


def test_ctrl_c_at_prompt_twice_exits(tiny_chat):
    tiny_chat.sendintr()
    tiny_chat.expect("Ctrl-C again")
    tiny_chat.sendintr()
    tiny_chat.expect(pexpect.EOF)


def test_ctrl_d_exits(fake):
    out = fake.gemma("chat", "--model", fake.model, input="", stdin_tty=True)  # input() meets the end of input
    assert out.exit_code == 0 and "Traceback" not in out.stderr


def test_ctrl_c_stops_a_long_reply_keeps_it_and_chat_goes_on(gemma3_base, tmp_path):
    child = spawn(tmp_path, "--model", gemma3_base, "--max-tokens", "3000", "--seed", "4")
    child.sendline("Once upon a time, in a land far away,")
    child.expect_exact("far away,\r\n")  # the line's echo; then wait for the reply to stream, however loaded the CPU
    child.expect(r"\S[^\r\n]{10}")
    child.sendintr()
    child.expect_exact("interrupted")
    child.expect_exact(PROMPT)
    data = saved(tmp_path, child)
    partial = data["messages"][-1]
    assert partial["role"] == "assistant" and len(partial["content"]) > 10
    command(child, "/set max_tokens 5")
    say(child, " The end.")
    assert len(saved(tmp_path, child, "after.json")["messages"]) == 4
    leave(child)


TOOLS = '''
from pathlib import Path

def add(a: int, b: int) -> dict:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    Path(__file__).with_name("ran.txt").write_text(f"{a}+{b}")
    return {"sum": a + b}
'''

CALL_GRAMMAR = 'root ::= "<|tool_call>call:add{a:2,b:3}<tool_call|>"\n'


def tool_files(folder):
    """The tools file and a grammar that makes the model call add(2, 3)."""
    tools, grammar = folder / "mytools.py", folder / "call.gbnf"
    tools.write_text(TOOLS)
    grammar.write_text(CALL_GRAMMAR)
    return tools, grammar


@pytest.mark.parametrize("confirm", ["--yes", "ask"])
def test_tool_from_python_file_is_called_and_result_fed_back(e_model, tmp_path, confirm):
    tools, grammar = tool_files(tmp_path)
    extra = ["--yes"] if confirm == "--yes" else []
    child = spawn(tmp_path, "--model", e_model, "--tools", tools, "--grammar", grammar, "--max-tool-rounds", "1",
                  "--max-tokens", "64", *extra)
    child.sendline("what is 2 + 3?")
    child.expect_exact("→ add")
    if confirm == "ask":
        child.expect_exact("run add(")
        child.sendline("y")
    child.expect_exact("result:")
    child.expect(STATUS)
    child.expect_exact(PROMPT)
    assert (tmp_path / "ran.txt").read_text() == "2+3"
    messages = saved(tmp_path, child)["messages"]
    call = messages[1]["tool_calls"][0]["function"]
    assert call["name"] == "add" and json.loads(call["arguments"]) == {"a": 2, "b": 3}
    assert messages[2] == {"role": "tool", "tool_call_id": messages[1]["tool_calls"][0]["id"], "name": "add",
                           "content": {"sum": 5}}
    leave(child)


def test_declined_tool_call_is_not_run(e_model, tmp_path):
    tools, grammar = tool_files(tmp_path)
    child = spawn(tmp_path, "--model", e_model, "--tools", tools, "--grammar", grammar, "--max-tool-rounds", "1")
    child.sendline("what is 2 + 3?")
    child.expect_exact("run add(")
    child.sendline("n")
    child.expect_exact("not run")
    child.expect_exact(PROMPT)
    assert not (tmp_path / "ran.txt").exists()
    leave(child)


def test_retry_before_any_message_says_so_and_the_chat_goes_on(fake, tmp_path):
    fake.enqueue("one answer").enqueue("another answer")
    shown = in_process(fake, "/retry", "hello", f"/save {tmp_path / 'conv.json'}", "/retry",
                       f"/save {tmp_path / 'again.json'}")
    assert "no answer to retry" in shown
    first = saved_file(tmp_path / "conv.json")["messages"]
    again = saved_file(tmp_path / "again.json")["messages"]  # the answer again: one model turn, not two
    assert [m["role"] for m in again] == ["user", "assistant"] and again[0] == first[0]
    assert again[1]["content"] == "another answer" and fake.prompts[0] == fake.prompts[1]


def test_up_arrow_history_survives_a_restart(e_model, tmp_path):
    child = spawn(tmp_path, "--model", e_model, "--max-tokens", "4")
    say(child, "a line worth remembering")
    leave(child)
    child = spawn(tmp_path, "--model", e_model, "--max-tokens", "4")
    child.send("\x1b[A\x1b[A")  # Up twice: past "/exit", to the line from the last session
    child.sendline("")
    child.expect(STATUS)
    child.expect_exact(PROMPT)
    assert saved(tmp_path, child)["messages"][0] == {"role": "user", "content": "a line worth remembering"}
    leave(child)


def test_image_command_uses_the_image_token_budget(e_model, vision_mmproj, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 48), (30, 90, 200)).save(tmp_path / "blue.png")
    child = spawn(tmp_path, "--model", e_model, "--mmproj", vision_mmproj, "--image-tokens", "70", "--max-tokens", "4")
    assert "will go with your next message" in command(child, f"/image {tmp_path / 'blue.png'}")
    say(child, "What colour?")
    evaluated = int(re.search(r"prompt tokens evaluated\s+(\d+)", command(child, "/stats")).group(1))
    leave(child)
    # The oracle: the model's own template rendered by jinja2, llama.cpp's tokenizer, and mtmd's count of a
    # 64x48 picture at budget 70 (the default 280 would give several times as many).
    import synthetic

    from tests.media_tokens import image_tokens, text_tokens
    from tests.test_prompt import compile_reference

    template = compile_reference(synthetic.REFERENCE_TEMPLATE.read_text(encoding="utf-8"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    prompt = template.render(messages=messages, tools=None, enable_thinking=False, add_generation_prompt=True,
                             bos_token="<bos>")
    n = image_tokens(e_model, vision_mmproj, 64, 48, budget=70)
    assert n < image_tokens(e_model, vision_mmproj, 64, 48, budget=280)
    assert evaluated == text_tokens(e_model, prompt) - 1 + (n + 2)  # <|image|>: <|image>, n embeddings, <image|>


def test_video_command_sends_the_clip_as_timestamped_frames(e_model, vision_mmproj, tmp_path):
    from tests.test_video import write_clip

    write_clip(tmp_path / "clip.mp4", n=6)
    child = spawn(tmp_path, "--model", e_model, "--mmproj", vision_mmproj, "--max-tokens", "2")
    assert "will go with your next message" in command(child, f"/video {tmp_path / 'clip.mp4'}")
    say(child, "What happens?")
    evaluated = int(re.search(r"prompt tokens evaluated\s+(\d+)", command(child, "/stats")).group(1))
    from tests.media_tokens import image_tokens

    # every frame of the 6, each a 64x48 picture at a frame's budget of 70 tokens (counted by llama.cpp's mtmd)
    assert evaluated > 6 * image_tokens(e_model, vision_mmproj, 64, 48, budget=70)
    leave(child)


def test_a_tool_question_goes_to_the_terminal_not_to_redirected_stdout(e_model, tmp_path):
    tools, grammar = tool_files(tmp_path)
    out = tmp_path / "out.txt"
    cmd = (f"{sys.executable} -m gemma_cli chat --model {e_model} --tools {tools} --grammar {grammar} "
           f"--max-tool-rounds 1 --max-tokens 64 'what is 2 + 3?' > {out}")
    child = pexpect.spawn("bash", ["-c", cmd], env=gemma_env(tmp_path), encoding="utf-8", timeout=90)
    child.expect_exact("run add(")
    child.sendline("y")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "ran.txt").read_text() == "2+3"
    assert "run add" not in out.read_text() and "[y/N]" not in out.read_text()


def test_answers_render_as_markdown_on_a_terminal(e_model, tmp_path):
    grammar = tmp_path / "md.gbnf"
    grammar.write_text('root ::= "# Title\\n\\nSome **bold** words and a list:\\n\\n- one\\n- two\\n"\n')
    env = gemma_env(tmp_path)
    del env["NO_COLOR"]  # a colour terminal: Rich renders the Markdown as it streams
    child = pexpect.spawn(sys.executable, ["-m", "gemma_cli", "chat", "--model", str(e_model), "--grammar",
                                           str(grammar), "--max-tokens", "60"], env=env, encoding="utf-8",
                          timeout=90, dimensions=(40, 120))
    child.expect_exact(PROMPT)
    child.sendline("write some markdown")
    child.expect(STATUS)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)  # what the eye sees, less the colours
    child.expect_exact(PROMPT)
    assert "bold" in shown and "**bold**" not in shown  # rendered, not the raw Markdown
    assert "• one" in shown and "- one" not in shown
    assert "Title" in shown and "# Title" not in shown
    assert saved(tmp_path, child)["messages"][1]["content"].startswith("# Title")  # history keeps the text
    leave(child)


def test_ctrl_c_in_a_gemma4_reply_keeps_it_and_the_next_turn_reuses_the_cache(e_model, tmp_path):
    grammar = tmp_path / "endless.gbnf"
    grammar.write_text('root ::= words\nwords ::= ("on and " | "so forth ") words\n')  # never ends by itself
    child = spawn(tmp_path, "--model", e_model, "--grammar", grammar, "--max-tokens", "100000", "--ctx", "32768")
    child.sendline("Talk forever")
    for _ in range(8):  # the reply is streaming: a few more words of it drawn
        child.expect(r"on and|so forth")
    child.sendintr()
    child.expect_exact("interrupted")
    child.expect_exact(PROMPT)
    partial = saved(tmp_path, child)["messages"][-1]
    assert partial["role"] == "assistant" and partial["content"].startswith(("on and", "so forth"))
    command(child, "/set max_tokens 4")
    say(child, "Stop now")
    cached = int(re.search(r"prompt tokens cached\s+(\d+)", command(child, "/stats")).group(1))
    assert cached > 5  # the turn before the interrupted reply came from the cache
    assert len(saved(tmp_path, child, "after.json")["messages"]) == 4
    leave(child)


def test_show_template_and_set_think_budget(tiny_chat):
    # The synthetic model embeds the April release: recognised, named with its size.
    assert "Gemma 4 April 2026 (all sizes), embedded in the model" in command(tiny_chat, "/show template")
    assert "think_budget = 12" in command(tiny_chat, "/set think_budget 12")
    assert "budget 12 tokens" in command(tiny_chat, "/show")
    assert "think_budget needs a int" in command(tiny_chat, "/set think_budget -3")
    assert "think_budget = off" in command(tiny_chat, "/set think_budget off")
    assert "budget" not in command(tiny_chat, "/show")
    leave(tiny_chat)


# ---- a failed turn (issue 20 item 3)


def failing(child: pexpect.spawn, text: str) -> str:
    """Send a message the model cannot take; what the chat said about it."""
    child.sendline(text)
    child.expect_exact("error:")
    child.expect_exact(PROMPT)
    return child.before


def answered(child: pexpect.spawn, text: str) -> None:
    """Send a message (or /retry) that must be answered; fails at once on an error instead of waiting."""
    child.sendline(text)
    assert child.expect([STATUS, "error:"]) == 0, child.before + child.read_nonblocking(2000, timeout=5)
    child.expect_exact(PROMPT)


def test_a_failed_turn_leaves_the_conversation_as_it_was(e_model, tmp_path):
    from tests.clitools import run_gemma

    opts = ["--model", e_model, "--ctx", "256", "--max-tokens", "8", "--temperature", "0"]
    child = spawn(tmp_path, *opts)
    answered(child, "hello there")
    before = saved(tmp_path, child, "before.json")["messages"]
    shown = failing(child, "word " * 400)  # longer than the whole context
    assert saved(tmp_path, child, "after_error.json")["messages"] == before  # /save writes no failed message
    assert "the message was not sent: the conversation is as it was" in " ".join(shown.split())
    answered(child, "and again")
    answered(child, "/retry")
    after = saved(tmp_path, child, "after.json")["messages"]
    assert after[:2] == before and after[2] == {"role": "user", "content": "and again"} and len(after) == 4
    # the KV cache is consistent with the history: a fresh process given the same history answers the same
    fresh = run_gemma("chat", "--load", tmp_path / "before.json", "and again", "--json", *opts, home=tmp_path / "fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["answer"] == after[3]["content"]
    command(child, "/system " + "rule " * 400)  # now even a retry of the last answer is too long
    failing(child, "/retry")
    assert saved(tmp_path, child, "after_retry.json")["messages"][1:] == after  # the answer it was to replace is kept
    command(child, "/system")
    leave(child)  # the autosave: `--continue` picks up the good conversation, without the failed message
    prompt = run_gemma("chat", "--continue", "one more", "--print-prompt", *opts, home=tmp_path)
    assert "and again" in prompt.stdout and "word word" not in prompt.stdout
    resumed = run_gemma("chat", "--continue", "one more", *opts, home=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
