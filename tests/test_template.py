"""`gemma_cli.format.template.render_template`: embedded chat templates, rendered only in the sandbox."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gemma_cli.errors import GemmaError, ModelError
from gemma_cli.format.prompt import render
from gemma_cli.format.template import render_template

CHATML = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

HI = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]


def test_chatml():
    assert render_template(CHATML, HI, bos="<s>", eos="</s>") == (
        "<s><|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_template(CHATML, HI, bos="", eos="", add_generation_prompt=False).endswith("Hi<|im_end|>\n")


def test_trim_and_lstrip_blocks():
    # As transformers: the newline after a block tag and the indentation before it are dropped.
    template = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}"
    assert render_template(template, HI, bos="", eos="") == "[Hi]\n"


def test_globals_and_extra_variables():
    template = (
        "{{ eos_token }}|{{ tools | length }}|{{ enable_thinking }}|{{ strftime_now('%Y') | length }}|"
        "{{ {'k': 'é<'} | tojson }}|{% for x in [1, 2, 3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}|"
        "{% generation %}kept{% endgeneration %}"
    )
    out = render_template(template, HI, bos="", eos="</s>", tools=[{"a": 1}], enable_thinking=True)
    assert out == '</s>|1|True|4|{"k": "é<"}|1|kept'


def test_raise_exception():
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate\nuser/assistant') }}{% endif %}"
    with pytest.raises(ModelError, match="refused the conversation: Conversation roles must alternate user/assistant") as info:
        render_template(template, HI, bos="", eos="")
    assert "\n" not in info.value.message
    assert isinstance(info.value, GemmaError) and info.value.hint


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("{{ ''.__class__.__mro__[1].__subclasses__() }}", id="subclasses"),
        pytest.param("{{ messages.__class__.__mro__ }}", id="mro"),
        pytest.param("{{ cycler.__init__.__globals__.os.popen('id').read() }}", id="globals"),
        pytest.param("{% set x = messages.append({'role': 'user'}) %}", id="append-to-messages"),
        pytest.param("{% set l = [1] %}{{ l.append(2) }}", id="append-to-list"),
        pytest.param("{% set d = {} %}{{ d.update({'a': 1}) }}", id="update-dict"),
        pytest.param("{{ messages[0].pop('role') }}", id="pop-from-message"),
    ],
)
def test_sandbox_blocks_escapes_and_mutation(template):
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ModelError, match="unsafe|undefined|failed"):
        render_template(template, messages, bos="", eos="")
    assert messages == [{"role": "user", "content": "Hi"}]


def test_printing_an_unsafe_attribute_leaks_nothing():
    # The sandbox answers a lone unsafe attribute with an empty Undefined (as on the Hub); only
    # going further through it raises.
    assert render_template("[{{ raise_exception.__globals__ }}][{{ ''.__class__ }}]", HI, bos="", eos="") == "[][]"


def test_mutation_is_a_security_error():
    with pytest.raises(ModelError, match="unsafe operation"):
        render_template("{% set l = [1] %}{{ l.append(2) }}", HI, bos="", eos="")
    with pytest.raises(ModelError, match="unsafe operation"):
        render_template("{{ ''.__class__.__mro__ }}", HI, bos="", eos="")


def test_syntax_error_is_one_line():
    with pytest.raises(ModelError, match=r"not valid Jinja \(line 2\)") as info:
        render_template("ok\n{% for x in %}", HI, bos="", eos="")
    assert "\n" not in info.value.message


def test_runtime_error_is_a_model_error():
    with pytest.raises(ModelError, match="TypeError"):
        render_template("{{ 'a' + 1 }}", HI, bos="", eos="")
    with pytest.raises(ModelError, match="undefined"):
        render_template("{{ nothing.there }}", HI, bos="", eos="")


USER = {"role": "user", "content": "Weather in Paris?"}
CALL = {
    "role": "assistant",
    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.mark.parametrize(
    ("messages", "tools", "thinking"),
    [
        pytest.param([USER], None, False, id="plain"),
        pytest.param([{"role": "system", "content": "Short."}, USER], None, True, id="system-thinking"),
        pytest.param([USER, CALL, {"role": "tool", "tool_call_id": "c1", "content": "21"}], TOOLS, False, id="tools"),
        pytest.param(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}], None, False, id="image"
        ),
    ],
)
def test_official_template_equals_prompt_render(official_template, messages, tools, thinking):
    rendered = render_template(official_template, messages, bos="<bos>", eos="<eos>", tools=tools, enable_thinking=thinking)
    assert rendered == render(messages, tools, thinking=thinking)


def test_jinja_imported_lazily():
    code = "import sys, gemma_cli.format.template; sys.exit('jinja2' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_gguf_with_its_own_template_is_prompted_through_it(gemma3_templated, tmp_path):
    # Not gemma4: the embedded template, rendered in the sandbox; the BOS it leaves out is added.
    import json

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from gemma_cli.gguf_header import read_header
    from tests.clitools import run_gemma

    embedded = read_header(gemma3_templated).chat_template
    assert "<start_of_turn>" in embedded and "bos_token" not in embedded
    oracle = ImmutableSandboxedEnvironment().from_string(embedded).render(
        messages=[{"role": "user", "content": "Name a colour."}], add_generation_prompt=True)
    shown = run_gemma("chat", "Name a colour.", "-m", gemma3_templated, "--print-prompt", home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "<bos>" + oracle
    proc = run_gemma("chat", "Name a colour.", "-m", gemma3_templated, "-t", "0", "-n", "6", "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no chat template" not in proc.stderr  # not the plain-completion path
    stats = json.loads(proc.stdout)["stats"]
    from gemma_cli.engine import Engine

    with Engine(gemma3_templated, n_ctx=256, n_threads=1) as engine:
        evaluated = len(engine.tokenize(shown.stdout))
    assert stats["prompt_tokens"] == evaluated and stats["generated_tokens"] > 0  # exactly the rendered prompt


@pytest.mark.parametrize("source,says", [
    ("ok\n{% for x in %}", "is not valid Jinja (line 2)"),
    ("{{ raise_exception('no system messages') }}", "refused the conversation: no system messages"),
    ("{{ 'a' + 1 }}", "failed: TypeError"),
])
def test_errors_of_a_users_template_name_the_file_not_the_model(source, says):
    with pytest.raises(GemmaError) as info:
        render_template(source, HI, bos="", eos="", origin="my.jinja")
    assert not isinstance(info.value, ModelError)  # the user's file, not the model's
    assert info.value.message.startswith("the chat template my.jinja ") and says in info.value.message
    assert "my.jinja" in info.value.hint and "GGUF" not in info.value.hint and "model's chat template" not in str(info.value)


@pytest.mark.parametrize("source,says", [
    pytest.param("{{ bos_token }}{% for m in messages %}\n{% if %}", "is not valid Jinja (line 2)", id="syntax"),
    pytest.param("{{ raise_exception('system role not supported') }}",
                 "refused the conversation: system role not supported", id="refusal"),
])
def test_chat_template_file_errors_name_the_file(e_model, tmp_path, source, says):
    from tests.clitools import assert_one_line_error, run_gemma

    path = tmp_path / "mine.jinja"
    path.write_text(source, encoding="utf-8")
    for extra in (["--print-prompt"], ["--max-tokens", "2"]):
        proc = run_gemma("chat", "Hi", "--model", e_model, "--chat-template", path, *extra, home=tmp_path)
        assert_one_line_error(proc, f"the chat template {path} {says}")
        assert "GGUF" not in proc.stderr and "model's chat template" not in proc.stderr
        assert f"hint: fix {path}, or leave out --chat-template" in proc.stderr
