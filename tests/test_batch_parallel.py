"""Parallel sequences in one context (engine.parallel) and `gemma batch --parallel` on real weights:
greedy output the same at --parallel 1 and 8, one batch per step for all sequences, continuous
batching, a shared system prompt evaluated once."""

from __future__ import annotations

import json
import re

import pytest

from tests.clitools import run_batch, run_gemma

GREEDY = ["--temperature", "0"]


def by_id(tmp_path, name, lines, *args):
    """The records of a successful `gemma batch` run, by their id."""
    proc, results = run_batch(tmp_path, lines, "-q", *args, name=name, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return {r["id"]: r for r in results}


PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time", "The best way to learn Python is",
           "Water boils at", "My favourite colour is", "In 1969, astronauts", "def fibonacci(n):",
           "The quick brown fox", "Roses are red,", "Dear Sir or Madam,", "The mitochondria is",
           "import numpy as np\n", "Monday, Tuesday,", "The recipe calls for", "Q: What is 2+2?\nA:"]


@pytest.mark.slow
def test_greedy_output_is_the_same_at_parallel_1_and_8(gemma3_base, tmp_path):
    # Under --deterministic (issue 13: the fast kernels are the default, identical output the opt-in).
    lines = [{"id": i, "prompt": p, "max_tokens": 24 + 4 * (i % 3)} for i, p in enumerate(PROMPTS)]
    one = by_id(tmp_path, "p1", lines, "-m", gemma3_base, "-p", "1", "--ctx", "256", "--deterministic", *GREEDY)
    eight = by_id(tmp_path, "p8", lines, "-m", gemma3_base, "-p", "8", "--ctx", "256", "--deterministic", *GREEDY)
    assert one.keys() == eight.keys() == set(range(len(PROMPTS)))
    for i in one:
        assert one[i]["answer"] == eight[i]["answer"], (i, one[i]["answer"], eight[i]["answer"])
        assert one[i]["usage"]["completion_tokens"] == eight[i]["usage"]["completion_tokens"]
    assert one[1]["answer"].startswith(" 5, 6")  # real weights, real answers


def test_batch_help_says_what_deterministic_costs(tmp_path):
    proc = run_gemma("batch", "--help", home=tmp_path / "home")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--deterministic" in text and "independent of --parallel" in text
    assert re.search(r"cost about \d+ ?%", text), text  # the measured figure, not a vague "slower"


def test_prompts_share_a_batch_in_equal_parts_and_beside_running_sequences(base_engine, monkeypatch):
    import llama_cpp

    from gemma_cli.engine.parallel import Parallel, _shares

    assert _shares([250, 250, 250], 512) == [171, 171, 170]
    assert _shares([10, 600], 512) == [10, 502] and _shares([100, 5, 100], 50) == [23, 5, 22]
    calls = []
    decode = llama_cpp.llama_decode
    monkeypatch.setattr(llama_cpp, "llama_decode", lambda ctx, b: calls.append(
        sorted({b.seq_id[i][0] for i in range(b.n_tokens)})) or decode(ctx, b))
    # Job 0 runs long; jobs 1.. come one after another into slot 2 while job 0 decodes.
    done = list(Parallel(base_engine, 2).run(jobs_of([30, 2, 2, 2])))
    assert sorted(d.job.key for d in done) == [0, 1, 2, 3]
    mixed = [seqs for seqs in calls if seqs == [1, 2]]
    assert len(mixed) >= 6  # each new prompt in slot 2 was evaluated beside slot 1's next token, never alone
    assert all(seqs != [2] for seqs in calls[1:12]), calls[:12]


@pytest.mark.slow
def test_shared_system_prompt_and_seeded_sampling_do_not_depend_on_parallel_when_deterministic(e_model, tmp_path):
    # A Gemma 4 prompt: the system turn is shared (evaluated once, then reused from the cache);
    # seeded sampling at temperature 1 is per sequence, so with --deterministic (the matmul kernels that
    # round a row the same whatever the batch's size) it repeats whatever runs beside it. Without
    # --deterministic the logits differ in their last bits with the batch, and so may a sampled token:
    # README and --help promise this only with the flag.
    system = "You answer questions about numbers. " * 6
    lines = [{"id": i, "system": system, "prompt": f"Tell me about {i}", "max_tokens": 16, "seed": i}
             for i in range(12)]
    same = ["-m", e_model, "--ctx", "512", "--temperature", "1", "--deterministic"]
    one = by_id(tmp_path, "p1", lines, "-p", "1", *same)
    six = by_id(tmp_path, "p6", lines, "-p", "6", *same)
    assert all(one[i]["answer"] == six[i]["answer"] for i in one)
    reused = sorted(r["usage"].get("cached_tokens", 0) for r in six.values())
    assert reused[1] >= 40  # every line after the first found the system turn in the cache


# ---------------------------------------------------------------- the engine API


@pytest.fixture(scope="module")
def base_engine(gemma3_base):
    from gemma_cli.engine import Engine

    engine = Engine(gemma3_base, n_ctx=256 * 5, n_threads=2, n_seq=5)
    yield engine
    engine.close()


def jobs_of(lengths, prompt="Count: 1, 2, 3,"):
    from gemma_cli.engine import Sampling
    from gemma_cli.engine.parallel import Job

    return [Job(f"<bos>{prompt} #{i}", Sampling(temperature=0), n, key=i) for i, n in enumerate(lengths)]


def test_all_running_sequences_share_one_batch_per_step(base_engine):
    from gemma_cli.engine.parallel import Parallel

    runner = Parallel(base_engine, 4)
    steps = []
    runner.tick = lambda: steps.append(1)
    done = list(runner.run(jobs_of([10, 10, 10, 10])))
    assert sorted(d.job.key for d in done) == [0, 1, 2, 3]
    assert all(d.generated_tokens == 10 and d.finish_reason == "length" for d in done)
    assert len(steps) == 9  # the first token comes from the prompt; 9 steps of 4 rows give the rest


def test_a_finished_sequence_takes_the_next_job_at_once(base_engine):
    from gemma_cli.engine.parallel import Parallel

    runner = Parallel(base_engine, 2)
    steps = []
    runner.tick = lambda: steps.append(1)
    order = [d.job.key for d in runner.run(jobs_of([40, 4, 4, 4, 4, 4, 4, 4]))]
    # waves of two would take 39 + 3*4 steps; slot two runs the seven short jobs beside the long one
    assert len(steps) <= 40
    assert order[-1] == 0 and sorted(order) == list(range(8))


def test_a_job_that_cannot_run_comes_back_with_its_error(base_engine):
    from gemma_cli.engine import Sampling
    from gemma_cli.engine.parallel import Job, Parallel
    from gemma_cli.errors import ContextOverflowError

    runner = Parallel(base_engine, 2)
    long = Job("<bos>" + "word " * 400, Sampling(temperature=0), 4, key="long")
    bad = Job("<bos>x", Sampling(temperature=0, grammar="root ::= ("), 4, key="grammar")
    done = {d.job.key: d for d in runner.run([long, bad] + jobs_of([3]))}
    assert isinstance(done["long"].error, ContextOverflowError)
    assert "grammar" in done["grammar"].error.message
    assert done[0].error is None and done[0].generated_tokens == 3


def test_closing_the_run_drops_running_sequences(base_engine):
    import llama_cpp as ll

    from gemma_cli.engine.parallel import Parallel

    runner = Parallel(base_engine, 4)
    run = runner.run(jobs_of([30, 30, 5, 30, 30]))
    first = next(run)
    assert first.job.key == 2
    run.close()
    for seq in range(1, 5):  # nothing left in the slots' KV streams
        assert ll.llama_memory_seq_pos_max(base_engine._mem, seq) == -1


def test_stop_takes_no_new_jobs_and_finishes_the_running_ones(base_engine):
    from gemma_cli.engine.parallel import Parallel

    runner = Parallel(base_engine, 2)
    run = runner.run(jobs_of([3, 8, 3, 3, 3]))
    first = next(run)
    runner.stop()
    rest = list(run)
    assert first.job.key == 0 and [d.job.key for d in rest] == [1]


def test_the_engine_must_have_room_for_the_slots(gemma3_base):
    from gemma_cli.engine import Engine
    from gemma_cli.engine.parallel import Parallel
    from gemma_cli.errors import GemmaError

    with Engine(gemma3_base, n_ctx=512, n_threads=2) as engine, pytest.raises(GemmaError, match="n_seq=3"):
        Parallel(engine, 2)


def test_the_prompts_of_free_slots_are_evaluated_in_one_batch(base_engine, monkeypatch):
    import llama_cpp

    from gemma_cli.engine import parallel

    calls = []
    decode = llama_cpp.llama_decode
    monkeypatch.setattr(llama_cpp, "llama_decode", lambda ctx, b: calls.append(b.n_tokens) or decode(ctx, b))
    runner = parallel.Parallel(base_engine, 4)
    done = list(runner.run(jobs_of([1, 1, 1, 1])))  # each ends at its first token, sampled from the prompt
    assert sorted(d.job.key for d in done) == [0, 1, 2, 3] and all(d.generated_tokens == 1 for d in done)
    assert len(calls) == 1 and calls[0] == sum(d.prompt_tokens for d in done)  # four prompts, one llama_decode
    alone = list(parallel.Parallel(base_engine, 1).run(jobs_of([1, 1, 1, 1])))
    assert [d.text for d in sorted(alone, key=lambda d: d.job.key)] == [d.text for d in sorted(done, key=lambda d: d.job.key)]



def test_a_stop_string_ends_a_job_and_is_left_out(base_engine):
    from gemma_cli.engine import Sampling
    from gemma_cli.engine.parallel import Job, Parallel

    plain, = Parallel(base_engine, 1).run([Job("<bos>1, 2, 3, 4, 5,", Sampling(temperature=0), 12)])
    assert plain.text.startswith(" 6, 7, 8")
    jobs = [Job("<bos>1, 2, 3, 4, 5,", Sampling(temperature=0), 12, stop=(" 8", "never"), key="stop"),
            Job("<bos>1, 2, 3, 4, 5,", Sampling(temperature=0), 12, key="free")]
    done = {d.job.key: d for d in Parallel(base_engine, 2).run(jobs)}
    assert done["stop"].text == " 6, 7," and done["stop"].finish_reason == "stop"
    assert done["stop"].generated_tokens < plain.generated_tokens  # it stopped decoding, not only the text
    assert done["free"].text == plain.text  # the other sequence went on


def test_batch_lines_take_stop_in_both_forms(gemma3_base, tmp_path):
    lines = [{"id": "s", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 12, "stop": " 8"},
             {"custom_id": "o", "body": {"messages": [{"role": "user", "content": "1, 2, 3, 4, 5,"}],
                                         "max_tokens": 12, "stop": [" 8"]}}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out.jsonl"
    for how in ([], ["--draft", "ngram"]):  # parallel sequences, and one line at a time with drafting
        proc = run_gemma("batch", src, "-o", out, "-m", gemma3_base, "-t", "0", "--ctx", "256", "-q", "--restart",
                         *how, home=tmp_path)
        assert proc.returncode == 0, proc.stderr
        got = {r.get("custom_id", r["id"]): r for r in map(json.loads, out.read_text().splitlines())}
        assert got["s"]["answer"] == " 6, 7," and got["s"]["finish_reason"] == "stop", how
        assert " 8" not in got["o"]["response"]["body"]["choices"][0]["message"]["content"]


def test_a_row_never_goes_alone_into_a_ubatch_when_deterministic():
    from gemma_cli.engine.parallel import _padding, _ubatches

    # llama.cpp's split (one KV stream per sequence): consecutive sequence ids, as many tokens of each.
    assert list(_ubatches([1, 1, 1, 2, 3, 3], 512)) == [([1, 2, 3], 1), ([1], 2), ([3], 1)]
    assert list(_ubatches([1, 3], 512)) == [([1], 1), ([3], 1)]  # a gap: two ubatches
    assert list(_ubatches([1] * 5 + [2] * 5, 4)) == [([1, 2], 2), ([1, 2], 2), ([1, 2], 1)]
    # One decode row (every step at --parallel 1): a throwaway token after it, never a logit.
    assert _padding([(7, 40, 1, True)], 512, 256) == [(7, 41, 1, False)]
    # 2 tokens and 1: sequence 1's last row would be alone.
    assert _padding([(5, 9, 1, False), (6, 10, 1, True), (8, 3, 2, True)], 512, 256) == [(6, 11, 1, False)]
    assert _padding([(5, 9, 1, False), (6, 10, 1, True), (8, 3, 2, True), (9, 4, 2, True)], 512, 256) == []
    assert _padding([(5, 9, 1, False), (6, 10, 1, False), (6, 11, 1, True), (8, 3, 2, True)], 512, 256) == []
    # Slots 1 and 3 decoding, 2 idle: llama.cpp puts each alone, so each gets one.
    assert _padding([(5, 9, 1, True), (8, 3, 3, True)], 512, 256) == [(5, 10, 1, False), (8, 4, 3, False)]
    assert _padding([(7, 255, 1, True)], 512, 256) == []  # no cell left for it: the sequence is full


@pytest.mark.slow
def test_log_probabilities_do_not_depend_on_parallel_or_a_shared_head_when_deterministic(e_model):
    # What broke the test above: llama.cpp's CPU kernels round a row differently (1) in a ubatch of one
    # row (F32/F16 weights: ggml's vec_dot, not llamafile's sgemm), every decode step at --parallel 1,
    # and (2) in flash attention with 64 query rows or more of one sequence (a tiled kernel), so a prompt
    # row depended on how its prompt was cut: whole at --parallel 1, in shares beside others, or its
    # shared head apart. Log probabilities show the last bits, not only a token that happened to flip.
    from gemma_cli.engine import Engine, Sampling
    from gemma_cli.engine.parallel import Job, Parallel

    head = "<bos><|turn>system\n" + "You answer questions about numbers. " * 6 + "<turn|>\n"
    prompts = [head + f"<|turn>user\n{'Tell me about the number ' * 4 * k}{k}<turn|>\n<|turn>model\n"
               for k in range(5)]  # from 20 to over 100 tokens after the head
    with Engine(e_model, n_ctx=512 * 4, n_seq=4, n_threads=2, batch_invariant=True) as engine:
        shared = len(engine.tokenize(head))

        def run(n, share):
            jobs = [Job(p, Sampling(temperature=0), 8 + 3 * i, logprobs=0, key=i, shared=shared if share else None)
                    for i, p in enumerate(prompts)]  # unequal lengths: sequences left alone, gaps between slots
            done = sorted(Parallel(engine, n).run(jobs), key=lambda f: f.job.key)
            assert all(f.error is None for f in done)
            return [(f.tokens, [lp.logprob for lp in f.logprobs]) for f in done]

        alone = run(1, False)
        assert all(tokens for tokens, _ in alone)
        assert run(3, False) == alone  # bit for bit
        assert run(3, True) == alone  # the head evaluated once in the staging sequence and copied
        assert run(1, True) == alone
