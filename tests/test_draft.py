"""Speculative decoding on the real llama.cpp: MTP drafting (Gemma 4 assistant) and prompt lookup.

The promise under test: the same output as plain decoding (greedy, and sampled with a fixed
seed), drafts both kept and thrown away, with text and image prompts, across chat turns; a
drafter that does not fit refused with one warning.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from gemma_cli.engine import Engine, Sampling, draft, ext
from gemma_cli.gguf_header import Header

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic  # noqa: E402

GREEDY = Sampling(temperature=0)
PROMPTS = [
    "<bos>hello",
    "<bos><|turn>user\nWrite a poem about the sea.<turn|>\n<|turn>model\n",
    "<bos>" + "abc def " * 30,  # longer than the 32-token sliding window, and repetitive
    "<bos>Grüße 👋 日本",
    "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nhi<turn|>\n<|turn>model\n",
    "<bos>1 2 3 4 5 6 7 8 9",
]
LENGTHS = (1, 2, 5, 33, 80)


def run(engine: Engine, prompt, n: int, sampling: Sampling = GREEDY, *, reset: bool = True, **kw):
    if reset:
        engine.reset()
    steps = list(engine.stream_generate(prompt, max_tokens=n, sampling=sampling, **kw))
    return [s.token for s in steps if s.token is not None], steps[-1]


def attach(engine: Engine, spec, **kw) -> None:
    assert draft.setup(engine, spec, **kw) is None
    assert engine.draft is not None


@pytest.fixture(scope="module")
def plain(e_model):
    with Engine(e_model, n_ctx=2048, n_batch=64) as engine:
        yield engine


@pytest.fixture(scope="module")
def drafted(e_model, drafter):
    with Engine(e_model, n_ctx=2048, n_batch=64) as engine:
        attach(engine, drafter)
        yield engine


# ---------------------------------------------------------------- same output as plain decoding


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("draft_max, adaptive", [(4, True), (6, False)])
def test_mtp_greedy_output_equals_plain(plain, drafted, prompt, draft_max, adaptive):
    drafted.draft.max, drafted.draft.adaptive = draft_max, adaptive
    for n in LENGTHS:
        want, want_last = run(plain, prompt, n)
        got, last = run(drafted, prompt, n)
        assert got == want, f"{n} tokens"
        assert (last.finish_reason, last.generated_tokens) == (want_last.finish_reason, want_last.generated_tokens)
        assert drafted.cached_tokens == plain.cached_tokens  # rejected drafts left the cache
    assert drafted.draft.total.drafted > 0


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ngram_greedy_output_equals_plain(plain, e_model, prompt):
    with Engine(e_model, n_ctx=2048, n_batch=64) as engine:
        attach(engine, "ngram", draft_max=5)
        for n in LENGTHS:
            assert run(engine, prompt, n)[0] == run(plain, prompt, n)[0], f"{n} tokens"


def test_sampling_with_a_seed_equals_plain_and_repeats(plain, drafted):
    # The engine's own sampler picks every token from the model's distribution in the
    # same order as plain decoding, so a seed gives the very same text.
    s = Sampling(temperature=1.0, top_p=0.95, top_k=64, seed=1234)
    prompt = PROMPTS[1]
    want, _ = run(plain, prompt, 60, s)
    a, _ = run(drafted, prompt, 60, s)
    b, _ = run(drafted, prompt, 60, s)
    assert a == b == want


def test_grammar_constrained_output_equals_plain(plain, drafted):
    s = Sampling(temperature=0, grammar='root ::= [a-z ]+ "."')
    prompt = PROMPTS[0]
    assert run(drafted, prompt, 40, s)[0] == run(plain, prompt, 40, s)[0]


def test_steps_count_drafted_and_accepted(drafted):
    _, last = run(drafted, PROMPTS[2], 40)
    stats = drafted.draft.stats
    assert (last.drafted, last.accepted) == (stats.drafted, stats.accepted)
    assert stats.drafted > 0 and 0 <= stats.accepted <= stats.drafted


def _image(seed: int):
    from gemma_cli.engine.projector import Media

    rgb = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8).tobytes()
    return Media.image(rgb, 64, 48, f"noise-{seed}")


def test_prompts_with_images_give_the_same_output(e_model, drafter, vision_mmproj):
    turn1 = "<bos><|turn>user\n<|image|>Describe this.<turn|>\n<|turn>model\n"
    results = {}
    for spec in ("off", drafter, "ngram"):
        with Engine(e_model, n_ctx=2048, mmproj=vision_mmproj) as engine:
            draft.setup(engine, spec, draft_max=4)
            if engine.draft is not None:
                engine.draft.adaptive = False  # draft every round, through the image positions too
            out = []
            for n in (1, 6, 30):
                out.append(run(engine, turn1, n, media=[_image(1)])[0])
            first, _ = run(engine, turn1, 20, media=[_image(1)])
            follow = turn1 + engine.detokenize(first) + "<turn|>\n<|turn>user\n<|image|>And this?<turn|>\n<|turn>model\n"
            second, last = run(engine, follow, 30, reset=False, media=[_image(1), _image(2)])
            assert last.reused_tokens > 0  # the first image came from the cache
            out.append(second)
            results[str(spec)] = (out, engine.draft.total.drafted if engine.draft else None)
    plain = results.pop("off")[0]
    for spec, (out, drafted) in results.items():
        assert out == plain, spec
    assert results[str(drafter)][1] > 0


# ---------------------------------------------------------------- drafts that are accepted


def _agreeing_pair(directory: Path) -> tuple[Path, Path]:
    """A gemma4 model whose next token depends on the current token only, and a drafter that
    computes the same function, so every greedy draft is right.

    Main: attention and FFN outputs zeroed (and PLE), token embeddings and the output head
    living in the first 32 of 64 dimensions: logits = softcap(out · (w ⊙ e_t) / rms). Drafter
    (hidden 32): its pre-projection copies w ⊙ x into its 32 dimensions, its layers pass the
    residual through, its output head is the main model's, restricted to those dimensions:
    logits ∝ the main model's, the same argmax.
    """
    spec = synthetic.text_spec("e")
    main = synthetic.write_text_model(directory / "agree.gguf", "e", chat_template=None)
    helper = synthetic.write_drafter(directory / "agree-assistant.gguf", spec.n_embd, main=spec)
    half = synthetic.drafter_spec(spec.n_embd, main=spec).n_embd
    reader = gguf.GGUFReader(str(main), "r+")
    tensors = {t.name: t for t in reader.tensors}
    for name, t in tensors.items():
        if name.startswith("blk.") and name.endswith(("attn_output.weight", "ffn_down.weight", ".proj.weight")):
            t.data[...] = 0
    tensors["token_embd.weight"].data[:, half:] = 0
    head = np.array(tensors["output.weight"].data[:, :half])
    norm = np.array(tensors["output_norm.weight"].data[:half])
    del reader, tensors
    reader = gguf.GGUFReader(str(helper), "r+")
    tensors = {t.name: t for t in reader.tensors}
    for name, t in tensors.items():
        if name.endswith(("attn_output.weight", "ffn_down.weight")):
            t.data[...] = 0
    pre = tensors["nextn.pre_projection.weight"].data  # (drafter hidden, 2 * main hidden)
    pre[...] = 0
    pre[np.arange(half), np.arange(half)] = norm
    tensors["output_norm.weight"].data[...] = 1
    tensors["token_embd.weight"].data[...] = head
    del reader, tensors
    return main, helper


@pytest.fixture(scope="module")
def agreeing(tmp_path_factory):
    return _agreeing_pair(tmp_path_factory.mktemp("agree"))


def test_agreeing_drafter_has_every_draft_accepted(agreeing):
    main, helper = agreeing
    with Engine(main, n_ctx=1024, n_batch=64) as engine:
        want, _ = run(engine, PROMPTS[1], 50)
        attach(engine, helper)
        got, last = run(engine, PROMPTS[1], 50)
        stats = engine.draft.stats
    assert got == want
    assert stats.drafted > 20 and stats.accepted == stats.drafted
    assert stats.rounds < 50 / 3  # several tokens per main-model batch
    assert last.accepted == stats.accepted


def test_agreeing_drafter_sampling_keeps_the_distribution(agreeing):
    # Above temperature 0 some drafts hold and some do not: both paths run, and the text
    # is still exactly what plain sampling with the same seed gives.
    main, helper = agreeing
    s = Sampling(temperature=0.7, top_k=8, seed=99)
    with Engine(main, n_ctx=1024, n_batch=64) as engine:
        want, _ = run(engine, PROMPTS[0], 120, s)
        attach(engine, helper)
        got, _ = run(engine, PROMPTS[0], 120, s)
        again, _ = run(engine, PROMPTS[0], 120, s)
        stats = engine.draft.stats
    assert got == again == want
    assert 0 < stats.accepted < stats.drafted


def test_ngram_drafts_are_accepted_on_a_copy_task(gemma3_base):
    text = ("The committee met on Tuesday to review the budget for the new library. After a long "
            "discussion, the members agreed to fund the reading room and a small cafe.")
    prompt = f"<bos>Copy the paragraph exactly.\n\nParagraph:\n{text}\n\nCopy:\n"
    with Engine(gemma3_base, n_ctx=512) as engine:
        want, _ = run(engine, prompt, 40)
        attach(engine, "ngram")
        got, last = run(engine, prompt, 40)
        stats = engine.draft.stats
    assert got == want
    assert stats.accepted >= 0.8 * stats.drafted > 0
    assert stats.rounds <= 10  # 40 tokens in a handful of batches


# ---------------------------------------------------------------- cache state across turns


def _recording(drafter):
    seen = []
    propose = drafter.propose

    def wrapper(engine, token, pos, n, row):
        out = propose(engine, token, pos, n, row)
        seen.append((pos, token, tuple(out)))
        return out

    drafter.propose = wrapper
    return seen


def test_follow_up_turn_drafts_as_on_a_fresh_cache(e_model, drafter, plain):
    """Turn 2 reuses turn 1's cache (cut back and extended): the drafter, which attends over
    that cache, must propose exactly what it proposes after evaluating turn 2 from scratch."""
    from gemma_cli.format import prompt as gemma_prompt

    turn1 = [{"role": "user", "content": "Tell me about the sea."}]
    with Engine(e_model, n_ctx=2048, n_batch=64) as engine:
        attach(engine, drafter)
        p1 = gemma_prompt.render(turn1, bos="<bos>")
        tokens1, _ = run(engine, p1, 30)
        answer = engine.detokenize(tokens1)
        turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And the moon?"}]
        p2 = gemma_prompt.render(turn2, bos="<bos>")
        log = _recording(engine.draft)
        got, last = run(engine, p2, 40, reset=False)
        seen = list(log)
        assert last.reused_tokens > len(engine.tokenize(p1)) // 2
        log.clear()
        fresh, _ = run(engine, p2, 40)
        fresh_seen = list(log)
    want, _ = run(plain, p2, 40)
    assert got == fresh == want
    assert seen and [s for s in seen if s[2]]  # it drafted
    assert seen == fresh_seen


def test_interrupted_generation_leaves_a_consistent_cache(drafted, plain):
    prompt = PROMPTS[1]
    drafted.reset()
    stream = drafted.stream_generate(prompt, max_tokens=50, sampling=GREEDY)
    for _, step in zip(range(7), stream):
        pass
    stream.close()
    # whatever the cache now holds matches its bookkeeping: a longer run reuses it correctly
    assert run(drafted, prompt, 50, reset=False)[0] == run(plain, prompt, 50)[0]


# ---------------------------------------------------------------- refusing what does not fit


def test_wrong_size_drafter_falls_back_with_one_warning(e_model, wrong_drafter, plain):
    with Engine(e_model, n_ctx=1024, n_batch=64) as engine:
        warning = draft.setup(engine, wrong_drafter)
        assert engine.draft is None
        got, _ = run(engine, PROMPTS[1], 20)
    assert "\n" not in warning and "does not fit" in warning and "hidden size 96" in warning
    assert warning.endswith("plain decoding")
    assert got == run(plain, PROMPTS[1], 20)[0]


def test_drafter_of_another_model_and_a_non_drafter_are_refused(e_model, dense_model, drafter):
    with Engine(dense_model, n_ctx=512) as engine:
        warning = draft.setup(engine, drafter)  # made for e_model: hidden 64, not 96
        assert engine.draft is None and "hidden size 64, the model's is 96" in warning
    with Engine(e_model, n_ctx=512) as engine:
        warning = draft.setup(engine, dense_model)
        assert engine.draft is None and "not a gemma4-assistant drafter" in warning


def test_missing_bindings_fall_back_with_one_warning(e_model, drafter, monkeypatch):
    monkeypatch.setattr(ext, "_problem", "missing llama_set_embeddings_nextn")
    with Engine(e_model, n_ctx=512) as engine:
        warning = draft.setup(engine, drafter)
        assert engine.draft is None
        assert warning == ("this llama-cpp-python lacks the MTP bindings (missing llama_set_embeddings_nextn): "
                           "plain decoding")
        draft.setup(engine, "ngram")  # prompt lookup needs none of them
        assert engine.draft is not None and engine.draft.kind == "ngram"


def test_this_llama_cpp_python_has_the_bindings():
    assert ext.problem() is None


def test_missing_drafter_file_is_an_error(e_model, tmp_path):
    from gemma_cli.errors import ModelError

    with Engine(e_model, n_ctx=256) as engine:
        with pytest.raises(ModelError, match="not found"):
            draft.setup(engine, tmp_path / "nope.gguf")


# ---------------------------------------------------------------- --draft auto


def test_auto_picks_the_fitting_drafter_beside_the_model(e_model, dense_model, drafter, wrong_drafter):
    assert draft.choose("auto", e_model) == drafter  # wrong_drafter lies beside it too
    assert draft.choose(None, e_model) == drafter
    assert draft.choose("auto", dense_model) == "off"  # neither fits the dense model
    assert draft.choose("auto", e_model, registry_draft=Path("/x/reg.gguf")) == "/x/reg.gguf"
    assert draft.choose("OFF", e_model) == "off" and draft.choose("ngram", e_model) == "ngram"


def test_auto_is_off_for_the_moe_model(tmp_path):
    path = tmp_path / "moe.gguf"
    w = gguf.GGUFWriter(str(path), "gemma4")
    w.add_uint32("gemma4.expert_count", 128)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert draft.choose("auto", path, registry_draft=Path("/x/reg.gguf")) == "off"
    assert draft.is_moe(Header(path, 3, 0, {"general.architecture": "gemma4", "gemma4.expert_count": 128}))


def test_auto_on_a_model_without_drafter_is_plain(gemma3_base):
    assert draft.choose("auto", gemma3_base) == "off"


# ---------------------------------------------------------------- prompt lookup itself


def test_ngram_proposes_what_followed_the_latest_match():
    class FakeKV:
        _cached = [1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 6, 1, 2]

        def contents(self, start=0, stop=None):  # the engine's view of its KV cache (engine.kv)
            return self._cached[start:stop]

    class FakeEngine:
        kv = FakeKV()

    e = FakeEngine()
    d = draft.NgramDrafter(draft_max=4)  # 4- and 3-grams
    # ... 1, 2, [3]: "1 2 3" last occurred before "7 8 6 1"
    assert d.propose(e, 3, len(e.kv._cached), 4, -1) == [7, 8, 6, 1]
    d.begin(e)
    assert d.propose(e, 3, len(e.kv._cached), 2, -1) == [7, 8]  # no more than asked
    d.begin(e)
    assert d.propose(e, 99, len(e.kv._cached), 4, -1) == []  # nothing ends in 1, 2, 99
    pairs = draft.NgramDrafter(draft_max=4, sizes=(2,))
    e.kv._cached = [5, 6, 7, 5, 0, 0]  # only the first 4 are this generation's (pos 4)
    # "5 [6]" matches the start; what followed runs on into the pending token itself
    assert pairs.propose(e, 6, 4, 4, -1) == [7, 5, 6]


# ---------------------------------------------------------------- the command line


def test_chat_help_explains_draft_and_the_moe_default():
    from typer.testing import CliRunner

    from gemma_cli.cli import app

    out = CliRunner().invoke(app, ["chat", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}).output
    assert "--draft" in out and "--draft-max" in out
    assert "26B-A4B" in out and "ngram" in out


def test_draft_option_attaches_the_drafter_and_reports_its_stats(e_model, wrong_drafter, tmp_path, monkeypatch,
                                                                    capsys):
    from gemma_cli.commands.loading import attach_draft, draft_stats

    monkeypatch.setenv("GEMMA_HOME", str(tmp_path))
    monkeypatch.setenv("GEMMA_CONFIG", str(tmp_path / "config.yaml"))
    with Engine(e_model, n_ctx=1024, n_batch=64) as engine:
        attach_draft(engine, e_model, None, None)  # auto: the drafter beside the model
        assert engine.draft.kind == "mtp" and engine.draft.path.name == "gemma4-e-assistant.gguf"
        attach_draft(engine, e_model, "ngram", 3)
        assert engine.draft.kind == "ngram" and engine.draft.max == 3
        engine.draft.total = draft.DraftStats(drafted=9, accepted=6, rounds=4)
        assert draft_stats(engine.draft) == {"draft": "ngram", "drafted": 9, "accepted": 6,
                                                   "acceptance_rate": 0.6667}
        assert capsys.readouterr().err == ""
        attach_draft(engine, e_model, wrong_drafter, None)
        assert engine.draft is None and draft_stats(None)["draft"] == "off"
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("warning: drafter gemma4-wrong-assistant.gguf does not fit")


def test_chat_json_reports_draft_stats(e_model, tmp_path):
    import json

    from clitools import run_gemma

    # A grammar makes the answer repeat the prompt, so the n-gram drafter finds drafts (the random model
    # alone rarely does): the counts are of real drafting, and the answer is the model's own.
    (tmp_path / "abc.gbnf").write_text('root ::= "abc abc abc abc abc abc abc abc"\n')
    base = ["chat", "-m", e_model, "--temperature", "0", "-n", "40", "--json", "--grammar", tmp_path / "abc.gbnf",
            "say abc abc abc abc abc"]
    plain = run_gemma(*base, "--draft", "off", home=tmp_path)
    proc = run_gemma(*base, "--draft", "ngram", home=tmp_path)
    assert proc.returncode == 0 and plain.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    stats = out["stats"]
    assert stats["draft"] == "ngram" and out["answer"] == json.loads(plain.stdout)["answer"]
    assert 0 < stats["accepted"] <= stats["drafted"]
    assert stats["acceptance_rate"] == pytest.approx(stats["accepted"] / stats["drafted"], abs=0.01)


def test_describe_image_drafts_and_reports_it_in_json(e_model, drafter, vision_mmproj, tmp_path):
    import json

    from clitools import run_gemma
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    base = ["describe-image", tmp_path / "red.png", "-m", e_model, "--mmproj", vision_mmproj, "-t", "0", "-n", "24",
            "--json"]
    plain = run_gemma(*base, "--draft", "off", home=tmp_path)
    fast = run_gemma(*base, "--draft", drafter, home=tmp_path)
    assert plain.returncode == 0 and fast.returncode == 0, fast.stderr
    plain, fast = json.loads(plain.stdout), json.loads(fast.stdout)
    assert fast["draft"] == "mtp" and fast["drafted"] > 0 and plain["draft"] == "off"
    assert fast["results"][0]["description"] == plain["results"][0]["description"]  # the model's own output
    assert fast["results"][0]["stats"]["drafted"] > 0


def test_transcribe_takes_draft(e_model, drafter, audio_mmproj, tmp_path, gemma_home, monkeypatch):
    import soundfile as sf
    from clitools import run_gemma

    from gemma_cli.engine.core import Engine
    from tests.fakeengine import run_in_process

    t = np.arange(16000 * 2) / 16000
    sf.write(tmp_path / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    base = ["transcribe", tmp_path / "tone.wav", "-m", e_model, "--mmproj", audio_mmproj, "-n", "16",
            "--no-vad"]  # a tone is no speech: VAD would send nothing to draft for
    plain = run_gemma(*base, "--draft", "off", home=tmp_path)
    assert plain.returncode == 0, plain.stderr
    # transcribe prints no draft counts: the real engine's last step of each request says them (run in-process).
    ends, real = [], Engine.stream_generate

    def stream_generate(self, *args, **kw):
        for step in real(self, *args, **kw):
            if step.finish_reason:
                ends.append(step)
            yield step

    monkeypatch.setattr(Engine, "stream_generate", stream_generate)
    fast = run_in_process(*base, "--draft", drafter)
    assert fast.exit_code == 0, fast.stderr
    assert fast.stdout == plain.stdout and "warning" not in fast.stderr
    assert ends and all(step.drafted > 0 for step in ends)  # the MTP drafter drafts every round
    assert all(0 <= step.accepted <= step.drafted for step in ends)


def test_batch_drafts_one_line_at_a_time_with_the_same_answers(e_model, drafter, tmp_path):
    import json

    from clitools import run_gemma

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": f"Repeat: {'abc ' * (i + 3)}", "max_tokens": 24}) + "\n"
                           for i in range(6)))
    outs = {}
    for spec in ("off", drafter, "ngram"):
        out = tmp_path / f"out-{Path(spec).name}.jsonl"
        proc = run_gemma("batch", src, "-o", out, "-m", e_model, "-t", "0", "--ctx", "256", "--draft", spec,
                         home=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs[spec] = {r["id"]: r["answer"] for r in map(json.loads, out.read_text().splitlines())}
        if spec != "off":
            kind, accepted, drafted = re.search(r"(\w+) drafts: (\d+) of (\d+) tokens accepted", proc.stderr).groups()
            assert kind == ("ngram" if spec == "ngram" else "mtp") and int(accepted) <= int(drafted)
            if kind == "mtp":  # an MTP drafter drafts every round (ngram only when the output repeats the prompt)
                assert int(drafted) > 0, proc.stderr
    assert outs[drafter] == outs["off"] == outs["ngram"]
    assert sorted(outs["off"]) == list(range(6))


def test_batch_draft_and_parallel_do_not_mix(e_model, tmp_path):
    from clitools import assert_one_line_error, run_gemma

    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "prompt": "hi"}\n')
    proc = run_gemma("batch", src, "-o", tmp_path / "o.jsonl", "-m", e_model, "--draft", "ngram", "-p", "4",
                     home=tmp_path)
    assert_one_line_error(proc, "--draft", "--parallel 4")
    assert proc.returncode == 2


@pytest.mark.parametrize("spec", ["auto", "wrong"])
def test_batch_falls_back_to_plain_decoding_when_the_drafter_cannot_run(spec, dense_model, wrong_drafter, e_model,
                                                                         tmp_path):
    import json

    from clitools import run_gemma

    model, draft_spec = (dense_model, "auto") if spec == "auto" else (e_model, wrong_drafter)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": f"Say {i}", "max_tokens": 6}) + "\n" for i in range(3)))
    proc = run_gemma("batch", src, "-o", tmp_path / "o.jsonl", "-m", model, "-t", "0", "--ctx", "256",
                     "--draft", draft_spec, home=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3
    assert "drafts:" not in proc.stderr  # plain decoding, one line at a time
    if spec == "wrong":
        assert "warning: drafter gemma4-wrong-assistant.gguf does not fit" in proc.stderr


def test_batch_draft_is_refused_with_an_endpoint(tmp_path):
    from clitools import assert_one_line_error, run_gemma

    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "prompt": "hi"}\n')
    proc = run_gemma("batch", src, "--endpoint", "http://127.0.0.1:9/v1", "--draft", "ngram", home=tmp_path)
    assert_one_line_error(proc, "--draft", "--endpoint")
    assert proc.returncode == 2
