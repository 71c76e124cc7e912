"""Issue 20, items 11-13: options that contradict each other or do nothing are refused (exit 2, one line),
bad values are refused, and the words of an error say what is true."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.clitools import assert_one_line_error, run_gemma


def refused(proc, *needles: str) -> None:
    """One `error:` line, no traceback; each needle in the error or its hint."""
    assert_one_line_error(proc)
    for needle in needles:
        assert needle in proc.stderr, proc.stderr

# ---------------------------------------------------------------- 11. contradictory or inert options


@pytest.mark.parametrize("flags, inert", [
    (["--think-budget", "8"], "--think-budget"),
    (["--keep-thinking"], "--keep-thinking"),
    (["--no-think", "--think-budget", "8", "--keep-thinking"], "--think-budget and --keep-thinking"),
])
def test_thinking_options_without_think_are_refused(tmp_path, flags, inert):
    proc = run_gemma("chat", "hi", "--model", tmp_path / "absent.gguf", *flags, home=tmp_path)
    refused(proc, f"{inert} ", "no effect without --think", "add --think")
    assert proc.returncode == 2


def test_the_think_budget_in_force_is_in_the_json_stats(tmp_path, e_model):
    proc = run_gemma("chat", "hi", "--model", e_model, "--think", "--think-budget", "5", "--max-tokens", "24",
                     "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stats"]["think_budget"] == 5
    proc = run_gemma("chat", "hi", "--model", e_model, "--max-tokens", "4", "--json", home=tmp_path)
    assert json.loads(proc.stdout)["stats"]["think_budget"] is None


UNREACHABLE = "http://127.0.0.1:9/v1"  # the discard port: nothing listens; --retries 0 says so at once


def one_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "prompt": "hi"}\n')
    return src


def batch_at_unreachable(tmp_path, *flags: str, **env: str):
    return run_gemma("batch", one_line(tmp_path), "-o", tmp_path / "o.jsonl", "--endpoint", UNREACHABLE, "--retries", "0", *flags,
                     home=tmp_path, **env)


@pytest.mark.parametrize("flags, why", [
    (["--mmproj", "mmproj.gguf"], "is the local engine's projector; with --endpoint the server uses its own"),
    (["--draft", "ngram"], "runs on the local engine; with --endpoint the server decides how it decodes"),
    (["--draft-max", "8"], "sets the local drafter's steps; with --endpoint the server decides how it decodes"),
    (["--think-budget", "8"], "runs on the local engine; OpenAI-compatible servers have no field for it"),
    (["--ctx", "4096"], "sets the local engine's context; with --endpoint the server has its own"),
    (["--threads", "2"], "sets the local engine's CPU threads; with --endpoint the server has its own"),
    (["--gpu-layers", "0"], "sets the local engine's GPU offload; with --endpoint the server has its own"),
    (["--image-tokens", "560"], "sets the local engine's image budget; with --endpoint the server has its own"),
    (["--no-cache"], "skips the local engine's prompt cache; with --endpoint the server has its own"),
    (["--parallel", "4"], "sets the local engine's sequences; with --endpoint, --concurrency sets the requests "
                          "in flight"),
    (["--deterministic"], "picks the local engine's matmul kernels; with --endpoint the server has its own"),
    (["--verbose"], "shows the local engine's (llama.cpp's) log; with --endpoint there is none"),
])
def test_batch_refuses_local_engine_options_with_an_endpoint(tmp_path, flags, why):
    # Each configures only the local engine, and was silently ignored with --endpoint (--mmproj, --draft and
    # --think-budget were refused already). Refused before any request is sent: nothing listens there.
    proc = batch_at_unreachable(tmp_path, *flags)
    refused(proc, f"{flags[0]} {why}", f"drop {flags[0]} (or --endpoint)")
    assert proc.returncode == 2 and not (tmp_path / "o.jsonl").exists()


def test_batch_with_an_endpoint_ignores_local_settings_from_the_config_and_env(tmp_path):
    # Only a flag on the command line is refused: a ctx in the config file or GEMMA_THREADS serves local runs, and
    # --draft off, --no-deterministic and --yes ask for nothing a server run leaves undone. The run goes on to the
    # request, which fails as an unreachable endpoint does (exit 1), not as a usage error.
    for key, value in (("ctx", "4096"), ("gpu_layers", "0")):
        assert run_gemma("config", "set", key, value, home=tmp_path).returncode == 0
    proc = batch_at_unreachable(tmp_path, "--draft", "off", "--no-deterministic", "--yes", GEMMA_THREADS="2")
    assert_one_line_error(proc, f"cannot connect to {UNREACHABLE}/chat/completions")
    assert proc.returncode == 1 and "or --endpoint" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("flags", [["--concurrency", "4"], ["--retries", "3"], ["--timeout", "30"],
                                   ["--api-key", "sk-x"]])
def test_batch_refuses_endpoint_options_without_an_endpoint(tmp_path, flags):
    # They were ignored in silence: `--concurrency 4` on a local run did not decode 4 lines together.
    proc = run_gemma("batch", one_line(tmp_path), "-o", tmp_path / "o.jsonl", *flags, home=tmp_path)
    refused(proc, f"{flags[0]} is for --endpoint; without it lines run on the local engine",
            f"add --endpoint URL, or drop {flags[0]}")
    assert proc.returncode == 2 and not (tmp_path / "o.jsonl").exists()


def test_an_api_key_in_the_environment_is_no_flag(tmp_path):
    # GEMMA_API_KEY set for --endpoint runs must not stop a local one: the run goes on (to its model, absent here).
    proc = run_gemma("batch", one_line(tmp_path), "-o", tmp_path / "o.jsonl", "--model", tmp_path / "none.gguf", home=tmp_path,
                     GEMMA_API_KEY="sk-x")
    assert_one_line_error(proc)
    assert "is for --endpoint" not in proc.stderr and "none.gguf" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, needles", [
    (["--no-vad", "--vad-threshold", "0.7"], ["--vad-threshold has no effect with --no-vad"]),
    (["--no-vad", "--max-cue", "5"], ["--max-cue has no effect with --no-vad"]),
    (["-o", "{tmp}/x.srt", "-f", "vtt"], ["x.srt names a .srt file, but --format is vtt", "name the file .vtt"]),
    (["-o", "{tmp}/x.docx"], ["x.docx: gemma writes txt, srt, vtt, json, not docx", "--format txt"]),
    (["-l", "xx"], ["--language xx", "'xx' is not a language code"]),
    (["--translate-to", "xx"], ["--translate-to xx", "'xx' is not a language code"]),
    (["-l", "en;rm -rf"], ["--language en;rm -rf", "not a language code or a language's name"]),
])
def test_transcribe_refuses_what_would_be_ignored_or_wrong(tmp_path, args, needles):
    # The audio file does not exist: each of these is said first, before anything is read.
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = run_gemma("transcribe", tmp_path / "absent.wav", *args, home=tmp_path)
    refused(proc, *needles)
    assert proc.returncode == 2
    assert not (tmp_path / "x.srt").exists() and not (tmp_path / "x.docx").exists()


def test_transcribe_formats_and_languages_that_agree_pass_the_checks(tmp_path):
    for args in (["-o", str(tmp_path / "x.vtt"), "-f", "vtt"], ["-o", str(tmp_path / "x.docx"), "-f", "txt"],
                 ["-l", "pt-BR", "--translate-to", "Japanese"], ["--vad-threshold", "0.7"]):
        proc = run_gemma("transcribe", tmp_path / "absent.wav", *args, home=tmp_path)
        assert proc.returncode == 1 and "absent.wav" in proc.stderr, (args, proc.stderr)  # the next check: the file


def test_language_codes_and_names():
    from gemma_cli.format.transcript import check_language, language_name

    assert check_language("ja") == "ja" and check_language("pt-BR") == "pt-BR" and check_language(None) is None
    assert check_language("Brazilian Portuguese") == "Brazilian Portuguese" and check_language("auto") is None
    assert language_name("pt-BR") == "Portuguese" and language_name("mr") == "mr"
    for bad in ("xx", "qq-ZZ", "en!", "12"):
        with pytest.raises(ValueError):
            check_language(bad)


# ---------------------------------------------------------------- 12. bad values


@pytest.mark.parametrize("field, value", [("temperature", math.nan), ("temperature", math.inf),
                                          ("top_p", math.nan), ("seed", 2 ** 64), ("seed", -(2 ** 63) - 1)])
def test_request_numbers_must_be_finite_and_seeds_64_bit(field, value):
    from gemma_cli.format.request import RequestError, read_chat

    body = {"messages": [{"role": "user", "content": "hi"}], field: value}
    with pytest.raises(RequestError) as e:
        read_chat(json.loads(json.dumps(body)))  # through JSON, as a client sends it (NaN, Infinity)
    assert e.value.param == field
    assert read_chat({"messages": [{"role": "user", "content": "hi"}], "seed": 2 ** 64 - 1}).seed == 2 ** 64 - 1


@pytest.mark.parametrize("message", [{"role": "user"}, {"role": "user", "content": None}, {"role": "system"},
                                     {"role": "tool", "tool_call_id": "a"}])
def test_a_message_without_content_is_refused(message):
    from gemma_cli.format.request import RequestError, read_chat

    with pytest.raises(RequestError) as e:
        read_chat({"messages": [message, {"role": "user", "content": "hi"}]})
    assert e.value.param == "messages[0].content" and 'has no "content"' in e.value.message
    # An assistant turn that only calls tools has no content, rightly.
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    read_chat({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": calls},
                            {"role": "tool", "tool_call_id": "c1", "content": "ok"}]})


def test_a_seed_over_64_bits_is_refused_on_the_command_line(tmp_path):
    proc = run_gemma("chat", "hi", "--model", tmp_path / "absent.gguf", "--seed", str(2 ** 64), home=tmp_path)
    assert proc.returncode == 2 and "--seed" in proc.stderr and "absent.gguf" not in proc.stderr, proc.stderr


def test_set_in_the_repl_refuses_nan_and_a_seed_over_64_bits(e_model, tmp_path):
    from tests.test_repl import command, leave, spawn

    child = spawn(tmp_path, "--model", e_model, "--max-tokens", "4")
    try:
        assert "temperature needs a float, not 'nan'" in command(child, "/set temperature nan")
        assert "top_p needs a float, not 'inf'" in command(child, "/set top_p inf")
        assert f"seed needs a int, not '{2 ** 64}'" in command(child, f"/set seed {2 ** 64}")
        assert "seed = 7" in command(child, "/set seed 7")
        leave(child)
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_config_refuses_nan_and_a_seed_over_64_bits(tmp_path):
    for key, value, needle in (("temperature", "nan", "finite"), ("seed", str(2 ** 64), "between")):
        proc = run_gemma("config", "set", key, value, home=tmp_path)
        assert proc.returncode != 0 and needle in proc.stderr, proc.stderr


def test_with_name_only_that_model_id_is_served(e_model, tmp_path):
    from tests.test_serve import FAST, Server

    s = Server(tmp_path, "-m", e_model, "--name", "gemma-4-e4b", "--parallel", "1", *FAST)
    try:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        status, out = s.post("/v1/chat/completions", json.dumps({**body, "model": "gemma-4-e4b"}).encode())
        assert status == 200, out
        for other in (Path(e_model).stem, Path(e_model).name, "synthetic-gemma4-e"):
            status, out = s.post("/v1/chat/completions", json.dumps({**body, "model": other}).encode())
            assert status == 404 and out["error"]["code"] == "model_not_found", (other, out)
    finally:
        s.stop()


# ---------------------------------------------------------------- 13. words that say what is true


def test_a_loopback_host_needs_no_key(tmp_path):
    # 127.0.0.2 is this machine only: no --api-key asked; the next error is the missing model's.
    proc = run_gemma("serve", "-m", tmp_path / "absent.gguf", "--host", "127.0.0.2", "--port", "0", home=tmp_path)
    assert "other machines" not in proc.stderr and "--api-key" not in proc.stderr
    assert_one_line_error(proc, "absent.gguf")


def test_an_unknown_host_name_is_not_blamed_on_the_port(tmp_path):
    proc = run_gemma("serve", "-m", tmp_path / "absent.gguf", "--host", "nonexistent.invalid", "--api-key", "k",
                     "--port", "0", home=tmp_path)
    assert_one_line_error(proc, "nonexistent.invalid", "not a known host name")
    assert "--port" not in proc.stderr


def test_an_address_of_another_machine_is_not_blamed_on_the_port(tmp_path):
    proc = run_gemma("serve", "-m", tmp_path / "absent.gguf", "--host", "192.0.2.1", "--api-key", "k",
                     "--port", "0", home=tmp_path)
    refused(proc, "192.0.2.1", "not an address of this machine")
    assert "--port" not in proc.stderr


def test_a_video_over_the_models_context_never_asks_for_more_than_it_takes(tmp_path, e_model, vision_mmproj):
    from gemma_cli.gguf_header import read_header
    from tests.test_video import write_clip

    trained = read_header(e_model).get("gemma4.context_length")
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    proc = run_gemma("describe-video", clip, "--frame-tokens", "280", "--model", e_model, "--mmproj", vision_mmproj,
                     home=tmp_path)
    refused(proc, "32 frames x ~280 tokens", f"context's {trained}", f"at most {trained} tokens of context",
            "--frames")
    assert "raise --ctx" not in proc.stderr
    fit = int(proc.stderr.split("--frames ")[1].split()[0])
    proc = run_gemma("describe-video", clip, "--frame-tokens", "280", "--frames", str(fit), "--model", e_model,
                     "--mmproj", vision_mmproj, "--max-tokens", "2", "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr  # the number it gives does fit
    # Below the model's limit, raising --ctx is still the first hint.
    proc = run_gemma("describe-video", clip, "--ctx", "1024", "--model", e_model, "--mmproj", vision_mmproj,
                     home=tmp_path)
    refused(proc, "raise --ctx to 4096")


def test_a_model_not_downloaded_gives_the_size_gemma_models_lists(tmp_path):
    proc = run_gemma("models", "path", "e4b", home=tmp_path)
    listed = run_gemma("models", home=tmp_path)
    row = next(line for line in listed.stdout.splitlines() if " e4b:q4_k_m " in f" {line} ")
    size = row.split("e4b:q4_k_m", 1)[1].split()[0].lstrip("~") + " GB"
    assert proc.returncode != 0 and f"is not downloaded ({size};" in proc.stderr, (proc.stderr, row)
    assert "with its projector" in proc.stderr
