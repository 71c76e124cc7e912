"""The fake engine itself: the CLI runs on it in-process, as on a real one."""

from __future__ import annotations

import json


def test_a_one_shot_answer_streams_to_stdout(fake):
    fake.enqueue("Hello", " there")
    out = fake.gemma("chat", "hi", "-m", fake.model)
    assert (out.exit_code, out.stdout) == (0, "Hello there\n"), out.stderr
    assert fake.prompts == ["<bos><|turn>user\nhi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"]


def test_json_and_the_token_limit(fake):
    fake.enqueue("a", "b", "c", "d")
    out = fake.gemma("chat", "hi", "-m", fake.model, "--max-tokens", "2", "--json")
    data = json.loads(out.stdout)
    assert data["answer"] == "ab" and data["stats"]["finish_reason"] == "length"
    assert data["stats"]["generated_tokens"] == 2
