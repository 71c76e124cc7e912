"""Settings: defaults, the YAML file, GEMMA_* environment, flags; and `gemma config`."""

from __future__ import annotations

import json

import pytest
from clitools import assert_one_line_error
from fakeengine import run_in_process
from hubserver import isolate

from gemma_cli.errors import ConfigError
from gemma_cli.store import config


@pytest.fixture(autouse=True)
def home(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    return tmp_path


@pytest.fixture
def cfg(home):
    return home / "config.yaml"


def test_defaults(cfg):
    s = config.load()
    assert not cfg.exists()
    assert s.as_dict() == {"model": None, "quantization": None, "ctx": 8192, "threads": None, "gpu_layers": None,
                           "temperature": 1.0, "top_p": 0.95, "top_k": 64, "seed": None, "min_p": 0.0,
                           "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": None,
                               "prompt_cache_mb": None,
                           "model_dir": None, "endpoint": None}
    assert s.source("temperature") == "default"


def test_gemma_config_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMMA_CONFIG", str(tmp_path / "elsewhere.yml"))
    assert config.path() == tmp_path / "elsewhere.yml"
    monkeypatch.delenv("GEMMA_CONFIG")
    assert config.path() == tmp_path / "config" / "config.yaml"  # under GEMMA_HOME


def test_precedence_flag_env_file_default(cfg, monkeypatch):
    cfg.write_text("temperature: 0.5\ntop_k: 40\n")
    s = config.load()
    assert (s.pick("temperature"), s.source("temperature")) == (0.5, "file")
    assert s.pick("top_p") == 0.95
    monkeypatch.setenv("GEMMA_TEMPERATURE", "0.7")
    s = config.load()
    assert (s.pick("temperature"), s.source("temperature")) == (0.7, "env GEMMA_TEMPERATURE")
    assert s.pick("temperature", 0.2) == 0.2, "a flag wins"
    assert s.pick("temperature", 0.0) == 0.0, "a flag of zero still wins"
    assert s.pick("top_k") == 40


def test_env_values_are_typed_and_checked(monkeypatch):
    monkeypatch.setenv("GEMMA_CTX", "4096")
    monkeypatch.setenv("GEMMA_SEED", "null")
    monkeypatch.setenv("GEMMA_GPU_LAYERS", "all")
    s = config.load()
    assert (s.pick("ctx"), s.pick("seed"), s.pick("gpu_layers")) == (4096, None, -1)
    monkeypatch.setenv("GEMMA_CTX", "lots")
    with pytest.raises(ConfigError, match="ctx in GEMMA_CTX must be a whole number, not 'lots'"):
        config.load()


def test_invalid_yaml_names_file_and_line(cfg):
    cfg.write_text("temperature: 0.7\ntop_k: 40\nmodel: [e4b\nseed: 1\n")
    with pytest.raises(ConfigError) as e:
        config.load()
    assert e.value.message.startswith(f"invalid YAML in {cfg}, line ")
    assert e.value.hint


def test_yaml_nested_too_deeply_is_one_line(cfg):
    cfg.write_text("temperature: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply") as e:  # was a RecursionError: "a bug"
        config.load()
    assert e.value.message == f"invalid YAML in {cfg}: nested too deeply" and e.value.hint
    assert_one_line_error(run_in_process("config", "show"), "invalid YAML in", "nested too deeply")


def test_tab_indentation_is_reported_with_its_line(cfg):
    cfg.write_text("temperature: 0.7\n\tseed: 1\n")
    with pytest.raises(ConfigError, match=r"line 2"):
        config.load()


def test_unknown_key_names_file_line_and_the_likely_key(cfg):
    cfg.write_text("# my settings\ntemperature: 0.7\ntemprature: 0.5\n")
    with pytest.raises(ConfigError) as e:
        config.load()
    assert e.value.message == f"unknown key 'temprature' in {cfg}, line 3"
    assert e.value.hint.startswith("did you mean 'temperature'?")


@pytest.mark.parametrize("text,message", [
    ("top_k: lots\n", "top_k in {file}, line 1 must be a whole number, not 'lots'"),
    ("top_p: 1.5\n", "top_p in {file}, line 1 must be between 0 and 1, not 1.5"),
    ("ctx: 10\n", "ctx in {file}, line 1 must be at least 64, not 10"),
    ("temperature: null\n", "temperature in {file}, line 1 must be set, not null"),
    ("quantization: q5\n", "quantization in {file}, line 1 must be one of q4_k_m, q8_0, bf16, qat, not 'q5'"),
    ("endpoint: ftp://x\n", "endpoint in {file}, line 1 must be an http(s) URL, not 'ftp://x'"),
    ("- a\n- b\n", "{file} must hold 'key: value' lines, not a list"),
])
def test_bad_values(cfg, text, message):
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load()
    assert e.value.message == message.format(file=cfg)


def test_an_unknown_model_in_the_file_gets_a_suggestion(cfg):
    cfg.write_text("model: e4\n")
    with pytest.raises(ConfigError) as e:
        config.load()
    assert e.value.message == f"model in {cfg}, line 1: unknown model 'e4'"
    assert "did you mean e4b" in e.value.hint


def test_set_keeps_comments_and_other_keys(cfg):
    cfg.write_text("# chosen for my laptop\nmodel: e2b\ntop_k: 40\n")
    config.set_value("model", "e4b:q8_0")
    config.set_value("temperature", "0.7")
    assert cfg.read_text() == "# chosen for my laptop\nmodel: e4b:q8_0\ntop_k: 40\ntemperature: 0.7\n"
    config.unset("top_k")
    assert "top_k" not in cfg.read_text()
    s = config.load()
    assert (s.pick("model"), s.pick("temperature"), s.pick("top_k")) == ("e4b:q8_0", 0.7, 64)


def test_set_refuses_bad_values_and_leaves_the_file(cfg):
    cfg.write_text("top_k: 40\n")
    with pytest.raises(ConfigError, match="top_p \\(gemma config set\\) must be between 0 and 1"):
        config.set_value("top_p", "2")
    with pytest.raises(ConfigError, match="unknown key 'topk'"):
        config.set_value("topk", "2")
    assert cfg.read_text() == "top_k: 40\n"


def test_set_quantization_alias_and_null(cfg):
    assert config.set_value("quantization", "Q8")[1] == "q8_0"
    assert config.set_value("seed", "null")[1] is None
    assert config.load().pick("quantization") == "q8_0"


def test_cli_set_show_path(home, cfg, monkeypatch):
    # in-process through the real entry point (cli.main): no model, nothing that needs a subprocess
    proc = run_in_process("config", "set", "temperature", "0.7")
    assert proc.returncode == 0, proc.stderr
    assert f"temperature = 0.7  ({cfg})" in proc.stderr
    proc = run_in_process("config", "show", "--json")
    data = json.loads(proc.stdout)
    assert data["file"] == str(cfg)
    assert data["settings"]["temperature"] == {"value": 0.7, "source": "file"}
    assert data["settings"]["top_k"] == {"value": 64, "source": "default"}
    monkeypatch.setenv("GEMMA_TOP_K", "20")
    proc = run_in_process("config", "show")
    assert "top_k:" in proc.stdout and "env GEMMA_TOP_K" in proc.stdout
    assert run_in_process("config", "path").stdout.strip() == str(cfg)


def test_cli_errors_are_one_line(home, cfg):
    assert_one_line_error(run_in_process("config", "set", "bogus", "1"), "unknown key 'bogus'")
    assert_one_line_error(run_in_process("config", "set", "model", "e4"), "unknown model 'e4'")
    cfg.write_text("temperature: [\n")
    assert_one_line_error(run_in_process("config", "show"), "invalid YAML in", "line ")
