"""The interactive chat's screen as a user sees it: a real pseudo-terminal (pexpect), a terminal
emulator (pyte) replaying every byte, a real model whose answer a grammar forces."""

from __future__ import annotations

import json
import sys

import pexpect
import pyte

from tests.clitools import gemma_env

COLUMNS, LINES = 120, 40


class Terminal:
    """`gemma chat` on a colour terminal; `screen()` is what the terminal shows."""

    def __init__(self, home, *args):
        env = gemma_env(home)
        del env["NO_COLOR"]  # a colour terminal: answers render as Markdown while they stream
        self.child = pexpect.spawn(sys.executable, ["-m", "gemma_cli", "chat", *map(str, args)], env=env,
                                   timeout=120, dimensions=(LINES, COLUMNS))
        self.screen = pyte.Screen(COLUMNS, LINES)
        self._stream = pyte.ByteStream(self.screen)
        self.child.logfile_read = self  # every byte the terminal receives, in order
        self.child.expect_exact(b">>> ")

    def write(self, data: bytes) -> None:
        self._stream.feed(data)

    def flush(self) -> None:
        pass

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display if line.strip()]

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


def grammar_file(tmp_path, rule: str):
    path = tmp_path / "answer.gbnf"
    path.write_text(rule)
    return path


HTML_ANSWER = "Use <div> tags, and vector<int> in C++. <br> end, and a < b > c."


def test_html_like_text_in_an_answer_reaches_the_screen(e_model, tmp_path):
    grammar = grammar_file(tmp_path, f'root ::= "{HTML_ANSWER}\\n\\nSome **bold** text.\\n"\n')
    term = Terminal(tmp_path, "--model", e_model, "--grammar", grammar, "--max-tokens", "400")
    try:
        term.child.sendline("answer")
        term.child.expect(rb"\d+ tokens")
        term.child.expect_exact(b">>> ")
        shown = term.lines()
        assert HTML_ANSWER in shown, shown  # every character, rendered as literal text
        assert "Some bold text." in shown  # and the Markdown around it still renders
    finally:
        term.close()


def test_ctrl_c_in_a_streaming_reply_shows_each_line_once(e_model, tmp_path):
    grammar = grammar_file(tmp_path, 'root ::= "First line.\\n\\n" words\nwords ::= ("on and " | "so forth ") words\n')
    term = Terminal(tmp_path, "--model", e_model, "--grammar", grammar, "--max-tokens", "100000")
    try:
        term.child.sendline("Talk forever")
        for _ in range(30):  # several live refreshes of a growing last line (each redraws its words)
            term.child.expect(rb"on and|so forth")
        term.child.sendintr()
        term.child.expect_exact(b"interrupted")
        term.child.expect_exact(b">>> ")
        shown = term.lines()
        start = shown.index(">>> Talk forever") + 1
        end = next(i for i, line in enumerate(shown) if "interrupted: the reply so far is kept" in line)
        on_screen = " ".join(shown[start:end]).split()
        saved = tmp_path / "conv.json"
        term.child.sendline(f"/save {saved}")
        term.child.expect_exact(b">>> ")
        kept = json.loads(saved.read_text())["messages"][-1]["content"].split()
        # the reply shows once, as kept (a Ctrl-C can land between a token kept and a token drawn, and a token
        # can be part of a word: the screen may end inside a word the kept text finishes)
        assert on_screen.count("First") == 1, shown
        assert " ".join(kept).startswith(" ".join(on_screen)) and len(kept) - len(on_screen) <= 2, (on_screen, kept)
        assert "^C" not in " ".join(shown)
    finally:
        term.close()
