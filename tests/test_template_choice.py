"""Which template a Gemma 4 GGUF gets: its own when gemma knows it, else the newest canonical for its
size with a notice; `--chat-template FILE` over both. Real files, the real `gemma` command."""

from __future__ import annotations

import json

import pytest
import synthetic
from clitools import assert_one_line_error, run_gemma

from gemma_cli.format.prompt import VARIANTS
from tests.test_prompt import compile_reference
from tests.test_prompt_variants import FILES, reference, templates

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                          "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": None}}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
    {"role": "assistant", "content": "18 degrees."},
    {"role": "assistant", "content": "Sunny too."},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{(template name or None, kind): path}: tiny GGUFs embedding each template, and none."""
    folder = tmp_path_factory.mktemp("templated")
    out = {}
    for name in [*FILES, None]:
        for kind in ("e", "dense"):
            if name is not None and kind == "dense" and name != "2026-07-09-large":
                continue
            source = templates(name)[2] if name else None
            out[name, kind] = str(synthetic.write_text_model(folder / f"{name or 'none'}-{kind}.gguf", kind, chat_template=source))
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("conv") / "conversation.json"
    path.write_text(json.dumps({"messages": CONVERSATION}), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", list(FILES))
@pytest.mark.parametrize("think", [False, True])
def test_print_prompt_equals_the_embedded_template(models, saved, tmp_path, name, think):
    kind = "dense" if name == "2026-07-09-large" else "e"
    args = ["chat", "And tomorrow?", "--model", models[name, kind], "--load", saved, "--print-prompt"]
    proc = run_gemma(*args, *(["--think"] if think else []), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # recognised: no notice
    messages = CONVERSATION + [{"role": "user", "content": "And tomorrow?"}]
    official = templates(name)[0]
    assert proc.stdout == official.render(messages=messages, tools=None, enable_thinking=think,
                                          add_generation_prompt=True, bos_token="<bos>")


@pytest.mark.parametrize(("kind", "variant"), [("e", "2026-07-09-small"), ("dense", "2026-07-09-large")])
def test_no_template_uses_the_newest_for_the_size_with_a_notice(models, tmp_path, kind, variant):
    proc = run_gemma("chat", "Hi", "--model", models[None, kind], "--print-prompt", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == reference(templates(variant)[0], [{"role": "user", "content": "Hi"}])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "no chat template" in lines[0] and VARIANTS[variant].label in lines[0]


def test_unknown_embedded_template_falls_back_with_a_notice(tmp_path):
    source = templates("2026-04")[2].replace("<|turn>model\\n", "<|turn>model \\n")
    path = synthetic.write_text_model(tmp_path / "odd.gguf", "e", chat_template=source)
    proc = run_gemma("chat", "Hi", "--model", path, "--print-prompt", home=tmp_path)
    assert proc.returncode == 0
    assert "does not know" in proc.stderr and "2026-07-09 (small: E2B/E4B)" in proc.stderr
    assert proc.stdout.endswith("<|turn>model\n")


def test_chat_template_file_overrides(models, tmp_path):
    model = models["2026-04", "e"]
    known = tmp_path / "interleaved.jinja"
    known.write_text(templates("llamacpp-interleaved")[2], encoding="utf-8")
    proc = run_gemma("chat", "Hi", "--model", model, "--print-prompt", "--chat-template", known, home=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == reference(templates("llamacpp-interleaved")[0], [{"role": "user", "content": "Hi"}])
    # Not a template gemma knows: rendered as it is, in jinja2's sandbox.
    custom = tmp_path / "custom.jinja"
    source = templates("2026-04")[2].replace("<|turn>model\\n", "<|turn>model[custom]\\n")
    custom.write_text(source, encoding="utf-8")
    proc = run_gemma("chat", "Hi", "--model", model, "--print-prompt", "--chat-template", custom, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    want = compile_reference(source).render(messages=[{"role": "user", "content": "Hi"}], tools=None,
                                            enable_thinking=False, add_generation_prompt=True, bos_token="<bos>")
    assert proc.stdout == want and "<|turn>model[custom]\n" in want


def test_chat_template_file_missing_is_a_one_line_error(models, tmp_path):
    proc = run_gemma("chat", "Hi", "--model", models["2026-04", "e"], "--print-prompt",
                     "--chat-template", tmp_path / "nope.jinja", home=tmp_path)
    assert_one_line_error(proc, "nope.jinja")


def test_json_stats_and_show_name_the_template(models, tmp_path):
    proc = run_gemma("chat", "Hi", "--model", models[None, "e"], "--max-tokens", "3", "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)["stats"]
    assert stats["template"] == "Gemma 4 2026-07-09 (small: E2B/E4B), the default for its size"
    proc = run_gemma("chat", "Hi", "--model", models["2026-04", "e"], "--max-tokens", "3", "--json", home=tmp_path)
    assert json.loads(proc.stdout)["stats"]["template"] == "Gemma 4 April 2026 (all sizes), embedded in the model"
