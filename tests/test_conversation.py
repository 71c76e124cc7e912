"""Conversation files (OpenAI chat format), tools from files, and constrained answers."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2.sandbox
import pytest

from gemma_cli.chat import tools
from gemma_cli.errors import GemmaError
from gemma_cli.format import conversation, prompt
from gemma_cli.store import paths
from tests.clitools import assert_one_line_error, run_gemma

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def official(template: str, messages, tools=None, thinking=False) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, tools=tools, enable_thinking=thinking,
                                            add_generation_prompt=True, bos_token="<bos>")


def test_example_conversation_renders_like_the_official_template(official_template):
    conv = conversation.load(EXAMPLES / "conversation.json")
    expected = official(official_template, conv.messages, conv.tools)
    assert prompt.render(conv.messages, conv.tools) == expected
    assert "<|tool_call>call:calculate{expression:<|\"|>17 * 23<|\"|>}<tool_call|>" in expected


def test_print_prompt_of_a_loaded_conversation(e_model, tmp_path, official_template):
    proc = run_gemma("chat", "--model", e_model, "--load", EXAMPLES / "conversation.json", "--print-prompt",
                     home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    conv = conversation.load(EXAMPLES / "conversation.json")
    assert proc.stdout == official(official_template, conv.messages, conv.tools)


FOREIGN = {
    "messages": [
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "text", "text": "What is in these?"},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a1", "type": "function", "function": {"name": "look", "arguments": "{\"zoom\": 2}"}}]},
        {"role": "tool", "tool_call_id": "a1", "content": "a cat"},
        {"role": "assistant", "content": "A cat.", "reasoning_content": "old thought, dropped"},
    ]
}


def test_openai_parts_and_tool_calls_from_other_tools_normalize(tmp_path, official_template):
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(FOREIGN))
    conv = conversation.load(path)
    parts = conv.messages[0]["content"]
    assert [p["type"] for p in parts] == ["image", "audio", "text"]
    assert conv.messages[1]["tool_calls"][0]["function"]["arguments"] == {"zoom": 2}
    text = prompt.render(conv.messages)
    assert text == official(official_template, conv.messages)
    assert "<|image|><|audio|>What is in these?" in text
    assert "old thought" not in text


def test_save_writes_openai_format_and_round_trips(tmp_path):
    conv = conversation.Conversation(
        [{"role": "user", "content": "hi"},
         {"role": "assistant", "content": "", "tool_calls": [
             {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}],
        settings={"temperature": 0.5})
    path = conversation.save(conv, tmp_path / "deep" / "c.json")
    raw = json.loads(path.read_text())
    assert raw["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"x": 1}'
    again = conversation.load(path)
    assert again.messages == conv.messages and again.settings == {"temperature": 0.5}


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON (line 1"),
    pytest.param("[" * 100_000 + "]" * 100_000, "not valid JSON (nested too deeply)", id="nested-too-deeply"),
    ('{"messages": 3}', 'no "messages" list'),
    ('{"messages": [{"role": "wizard", "content": "x"}]}', "unknown role 'wizard'"),
    pytest.param('{"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": [1, 2]}]}',
                 "message 2's content list holds something other than text", id="content-of-numbers"),  # was "a bug"
    pytest.param('{"messages": [{"role": "assistant", "tool_calls": [3]}]}', "message 1's tool_calls is not a list",
                 id="call-not-an-object"),
    pytest.param('{"messages": [{"role": "assistant", "tool_calls": {"f": 1}}]}', "tool_calls is not a list",
                 id="calls-not-a-list"),
])
def test_bad_conversation_files_are_one_line_errors(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(GemmaError, match=None) as e:
        conversation.load(path)
    assert needle in e.value.message and "bad.json" in e.value.message


def test_a_conversation_nested_too_deeply_is_one_line_for_load_and_continue(fake, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.json").write_text(deep)
    last = paths.last_conversation()
    last.parent.mkdir(parents=True, exist_ok=True)
    last.write_text(deep)
    for flags, name in ((["--load", tmp_path / "deep.json"], "deep.json"), (["--continue"], "last.json")):
        proc = fake.gemma("chat", "hi", "--model", fake.model, *flags)
        assert_one_line_error(proc, name, "is not valid JSON (nested too deeply)")
        assert proc.returncode == 1 and "this is a bug" not in proc.stderr
    assert fake.calls == []


def test_tool_call_arguments_nested_too_deeply_stay_text(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": deep}}]}]}))
    conv = conversation.load(path)  # was a RecursionError
    assert conv.messages[1]["tool_calls"][0]["function"]["arguments"] == deep


def test_load_missing_conversation_via_cli(fake, tmp_path):
    proc = fake.gemma("chat", "hi", "--model", fake.model, "--load", tmp_path / "none.json")
    assert_one_line_error(proc, "conversation file not found")


def test_continue_without_history_is_a_clear_error(fake):
    proc = fake.gemma("chat", "hi", "--model", fake.model, "--continue")
    assert_one_line_error(proc, "no earlier conversation")


# ---------------------------------------------------------------- tools


def test_declarations_from_examples_tools():
    box = tools.load(EXAMPLES / "tools.py")
    names = [d["function"]["name"] for d in box.declarations]
    assert names == ["current_time", "calculate", "list_files"]
    calc = box.declarations[1]["function"]
    assert calc["parameters"] == {"type": "object", "required": ["expression"], "properties": {
        "expression": {"type": "string", "description": "The expression, for example (2 + 3) * 7."}}}
    assert box.run("calculate", {"expression": "(2 + 3) * 7"}) == {"expression": "(2 + 3) * 7", "value": 35}


def test_tool_errors_become_results_not_exceptions():
    box = tools.load(EXAMPLES / "tools.py")
    assert "error" in box.run("calculate", {"expression": "__import__('os')"})
    assert "unknown tool" in box.run("nope", {})["error"]
    assert "TypeError" in box.run("calculate", {"wrong": 1})["error"]


@pytest.mark.parametrize("hint, schema", [
    (int, {"type": "integer"}),
    (list[float], {"type": "array", "items": {"type": "number"}}),
    ("typing.Optional[str]", {"type": "string", "nullable": True}),
    ("typing.Literal['a', 'b']", {"type": "string", "enum": ["a", "b"]}),
    (dict, {"type": "object"}),
    (bool, {"type": "boolean"}),
])
def test_schema_of_type_hints(hint, schema):
    import typing  # noqa: F401 - used by eval

    assert tools.schema_of(eval(hint) if isinstance(hint, str) else hint) == schema


def test_json_tools_are_declarations_only(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"name": "lookup", "description": "d", "parameters": {"type": "object"}}]))
    box = tools.load(path)
    assert not box.runnable and box.declarations[0]["function"]["name"] == "lookup"


@pytest.mark.parametrize("data, needle", [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "bad.json is not valid JSON (nested too deeply)", id="nested"),
    pytest.param(b'[{"name": "caf\xe9"}]', "bad.json is not UTF-8 text (byte 14)", id="latin-1"),
])
def test_a_json_tools_file_gemma_cannot_read_is_one_line(fake, tmp_path, data, needle):  # were "a bug"
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    proc = fake.gemma("chat", "hi", "--model", fake.model, "--tools", path)
    assert_one_line_error(proc, needle)
    assert proc.returncode == 1 and "this is a bug" not in proc.stderr


def test_json_tools_in_one_shot_show_the_call_and_json_returns_it(fake, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"type": "function", "function": {"name": "add", "description": "Add.",
                                                                   "parameters": {"type": "object"}}}]))
    fake.enqueue("<|tool_call>", "call:add{a:1,b:", '<|"|>two<|"|>', "}<tool_call|>")  # a grammar forces it for real
    proc = fake.gemma("chat", "add", "--model", fake.model, "--tools", path, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["tool_calls"] == [{"name": "add", "arguments": {"a": 1, "b": "two"}}]
    assert data["tool_results"] == []


def test_python_tools_without_yes_and_without_terminal_are_not_run(fake, tmp_path, monkeypatch):
    (tmp_path / "t.py").write_text("def boom() -> str:\n    '''Boom.'''\n    open('ran', 'w').write('x')\n    return 'x'\n")
    fake.enqueue("<|tool_call>call:boom{}<tool_call|>").enqueue("I could not run it.")
    monkeypatch.chdir(tmp_path)  # where the tool would write
    proc = fake.gemma("chat", "go", "--model", fake.model, "--tools", tmp_path / "t.py", "--max-tool-rounds", "1",
                      "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["tool_results"][0] == {"name": "boom", "ran": False, "result": {"error": "the user declined to run this tool"}}
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------- structured output


def test_format_json_constrains_the_answer(e_model, tmp_path):
    proc = run_gemma("chat", "Give me JSON", "--model", e_model, "--format", "json", "--max-tokens", "300",
                     "--seed", "1", "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    if data["stats"]["finish_reason"] == "stop":
        assert isinstance(json.loads(data["answer"]), dict)
    else:
        assert data["answer"].lstrip().startswith("{")


def test_schema_constrains_the_answer(e_model, tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}))
    proc = run_gemma("chat", "Answer", "--model", e_model, "--schema", schema, "--max-tokens", "50", "--json",
                     "--temperature", "0", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(json.loads(proc.stdout)["answer"])
    assert set(answer) == {"ok"} and isinstance(answer["ok"], bool)


class ScriptedEngine:
    """Stands in for the model only: replays fixed steps and records what it was asked."""

    def __init__(self, *scripts):
        self.scripts = list(scripts)
        self.calls = []

    def tokenize(self, text):
        return [ord(c) for c in text]

    def stream_generate(self, tokens, *, media=None, max_tokens=None, sampling=None, checkpoint_at=None):
        from gemma_cli.engine import Step

        self.calls.append((list(tokens), sampling.grammar, max_tokens))
        script = self.scripts.pop(0)
        for i, (tok, text) in enumerate(script):
            last = i == len(script) - 1
            yield Step(text, tok, len(tokens), 0, i + 1, 0.1, 10.0, "stop" if last else None)


@pytest.mark.parametrize("thinks", [True, False])
def test_with_thinking_the_grammar_applies_only_after_the_thought(thinks):
    from gemma_cli.chat.session import ChatSession, Done, format_for
    from gemma_cli.engine import Sampling

    thought = [(100, "<|channel>"), (9, "thought\nhmm"), (101, "<channel|>")]
    first = thought if thinks else [(7, "{")]
    engine = ScriptedEngine(first + [(8, "more")], [(5, '{"ok":'), (6, " true}")])
    session = ChatSession(engine, format_for("gemma4", None, "<bos>", "<eos>"),
                          sampling=Sampling(grammar="root ::= ..."), max_tokens=50, think=True)
    result = next(e for e in session.send("q") if isinstance(e, Done)).result
    (p1, g1, _), (p2, g2, budget) = engine.calls
    assert g1 is None and g2 == "root ::= ..."  # phase 1 free, phase 2 constrained
    assert result.answer == '{"ok": true}'
    if thinks:
        assert result.thinking == "hmm" and p2 == p1 + [100, 9, 101] and budget == 47
        assert result.stats.generated_tokens == 5
    else:
        assert result.thinking == "" and p2 == p1 and budget == 50  # the "{" is discarded


def test_think_and_format_json_end_to_end(e_model, tmp_path):
    proc = run_gemma("chat", "Give me JSON", "--model", e_model, "--think", "--format", "json",
                     "--max-tokens", "300", "--seed", "2", "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    if data["stats"]["finish_reason"] == "stop":
        assert isinstance(json.loads(data["answer"]), dict)
    else:
        assert data["answer"].lstrip().startswith("{") or data["thinking"]


def test_schema_format_and_grammar_are_exclusive(fake, tmp_path):
    grammar = tmp_path / "g.gbnf"
    grammar.write_text('root ::= "x"\n')
    proc = fake.gemma("chat", "x", "--model", fake.model, "--format", "json", "--grammar", grammar)
    assert_one_line_error(proc, "constrain the answer")


def test_follow_up_retry_and_system_change_evaluate_only_what_changed(e_model, monkeypatch):
    # A full-size SWA cache isolates what this tests: each turn evaluates exactly the prompt
    # tokens the KV cache does not already hold (the SWA window's limits: test_engine.py). What it
    # holds is derived from the previous prompt and reply (tests/generations.py), not asked of the engine.
    from gemma_cli.chat.session import ChatSession, Done, format_of_engine
    from gemma_cli.engine import Engine, Sampling
    from tests.generations import Generations

    greedy = Sampling(temperature=0)
    with Engine(e_model, n_ctx=2048, swa_full=True) as engine, Engine(e_model, n_ctx=2048, swa_full=True) as fresh:
        session = ChatSession(engine, format_of_engine(engine), sampling=greedy, max_tokens=8,
                              system="You answer briefly.")
        seen = Generations(engine, monkeypatch)

        def turn(start, prompt_text=None) -> tuple[int, int]:
            """(evaluated, reused) of the turn `start` runs, checked against what the cache should lack."""
            tokens = engine.tokenize(prompt_text or session.prompt_text())
            want = seen.expected(tokens)
            stats = next(e for e in start() if isinstance(e, Done)).result.stats
            assert seen.calls[-1].prompt == tokens
            assert (stats.prompt_tokens, stats.reused_tokens) == want
            return want

        session.messages.append({"role": "user", "content": "Hello there, how are you today?"})
        assert turn(session.generate)[1] == 0
        for text in ("And a second question?", "A third one, a little longer than the others."):
            session.messages.append({"role": "user", "content": text})
            assert turn(session.generate)[1] > 30  # the earlier turns are in the cache
        answer = session.messages.pop()  # what /retry sends: the prompt before the last answer
        again = session.prompt_text()
        session.messages.append(answer)
        assert turn(session.retry, again)[0] == 1  # the same prompt again: one token evaluated
        session.messages[0] = {"role": "system", "content": "You answer at length."}  # /system
        evaluated, reused = turn(session.generate)  # from where the system text changed on
        assert evaluated > 1 and reused > 0
        seen.assert_same_as(fresh, greedy)  # reusing the cache changed no reply


def test_a_tool_round_that_fails_undoes_the_whole_turn(e_model, tmp_path):
    # The model calls a tool (a grammar makes it); the result is too long for the context, so the round
    # after it fails: the turn goes, call and result included, and the chat goes on (issue 20 item 3).
    from gemma_cli.chat.session import ChatSession, Done, converse, format_of_engine
    from gemma_cli.engine import Engine, Sampling
    from gemma_cli.errors import ContextOverflowError
    from gemma_cli.format import reply

    (tmp_path / "big.py").write_text('def big() -> str:\n    """A long text."""\n    return "word " * 400\n')
    toolbox = tools.load(tmp_path / "big.py")
    with Engine(e_model, n_ctx=256, n_threads=1) as engine:
        grammar = 'root ::= "<|tool_call>call:big{}<tool_call|>"'
        session = ChatSession(engine, format_of_engine(engine), sampling=Sampling(temperature=0, grammar=grammar),
                              max_tokens=32, tools=toolbox.declarations)
        session.messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        before = [dict(m) for m in session.messages]
        events = converse(session, session.send("call big"), toolbox)
        assert isinstance(next(events), reply.ToolCall)  # the first round: the model calls big()
        with pytest.raises(ContextOverflowError):
            list(events)  # its result, then the next round: over the context
        assert session.messages == before
        session.sampling.grammar, session.tools = None, None
        result = next(e for e in session.send("and now?") if isinstance(e, Done)).result
        assert result.stats.generated_tokens > 0
        assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
