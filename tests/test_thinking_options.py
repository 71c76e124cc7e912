"""Thinking options outside the chat session: the free-thought phases both runners ask, the
endpoint heuristic, batch's keep_thinking field, and the chat flags' bad values."""

from __future__ import annotations

import json

import pytest

from gemma_cli.batch import parse_line
from gemma_cli.format.reply import closes_unopened_thought, thought_phase
from tests.clitools import run_gemma


@pytest.mark.parametrize(("text", "in_thought", "phase"), [
    ("", False, "maybe"), ("<|chan", False, "maybe"), ("<|channel>thought\nhm", False, "open"),
    ("<|channel>thought\nhm<channel|>", False, "closed"), ("Hello", False, "none"), ("x<channel|>", False, "none"),
    ("", True, "open"), ("hm", True, "open"), ("hm<channel|>ok", True, "closed"),
])
def test_thought_phase(text, in_thought, phase):
    assert thought_phase(text, in_thought) == phase


def test_a_reply_closing_an_unopened_thought_started_in_one():
    assert closes_unopened_thought("the tool said 18<channel|>It is 18.")
    assert not closes_unopened_thought("<|channel>thought\nx<channel|>y")
    assert not closes_unopened_thought("plain answer")


def test_batch_keep_thinking_in_both_line_forms():
    simple = parse_line(1, json.dumps({"prompt": "Hi", "keep_thinking": True}).encode() + b"\n")
    assert simple.error is None and simple.request.keep_thinking is True
    body = {"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"preserve_thinking": True}}
    openai = parse_line(2, json.dumps({"custom_id": "a", "body": body}).encode() + b"\n")
    assert openai.error is None and openai.request.keep_thinking is True
    assert parse_line(3, json.dumps({"prompt": "Hi"}).encode() + b"\n").request.keep_thinking is False
    bad = parse_line(4, json.dumps({"prompt": "Hi", "keep_thinking": "yes"}).encode() + b"\n")
    assert bad.request is None and "keep_thinking" in bad.error.message


def test_think_budget_must_be_a_count(tmp_path):
    proc = run_gemma("chat", "Hi", "--think-budget", "-1", "--print-prompt", home=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--think-budget" in proc.stderr
