"""The registry as data, model names, and locating files (no network)."""

from __future__ import annotations

import json
import re

import pytest
from clitools import assert_one_line_error, run_gemma
from hubserver import isolate

from gemma_cli.errors import ModelError
from gemma_cli.store import hardware, models

GIB = 1 << 30


@pytest.fixture(autouse=True)
def home(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    return tmp_path


@pytest.fixture
def store(home):
    return home / "data" / "models"


def touch(path, size: int = 16):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + b"\0" * (size - 4))
    return path


def install(store, spec_key: str, quant: str, *, mmproj=True, draft=False):
    spec = models.REGISTRY[spec_key]
    f = spec.weights(quant).files[0]
    for n in f.names():
        touch(store / f.repo / n)
    if mmproj:
        m = spec.mmproj_files(quant)[0]
        touch(store / m.repo / m.name)
    if draft:
        d = spec.draft[0]
        touch(store / d.repo / d.name)
    return store / f.repo / f.name


# ---------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------


def test_the_family_matches_the_facts():
    r = models.REGISTRY
    assert list(r) == ["e2b", "e4b", "12b", "26b", "31b"]
    assert {k: s.layers for k, s in r.items()} == {"e2b": 35, "e4b": 42, "12b": 48, "26b": 30, "31b": 60}
    assert {k: s.context for k, s in r.items()} == {"e2b": 131072, "e4b": 131072, "12b": 262144, "26b": 262144, "31b": 262144}
    assert [k for k, s in r.items() if s.audio] == ["e2b", "e4b", "12b"]
    assert (r["26b"].params_total, r["26b"].params_active, r["26b"].moe) == (25.2, 3.8, True)
    assert (r["e2b"].params_total, r["e2b"].params_active) == (5.1, 2.3)
    assert {k: s.hidden for k, s in r.items()} == {"e2b": 1536, "e4b": 2560, "12b": 3840, "26b": 2816, "31b": 5376}


@pytest.mark.parametrize("key", list(models.REGISTRY))
def test_every_variant_has_every_quantization_a_projector_and_sane_files(key):
    spec = models.REGISTRY[key]
    assert set(spec.quants) == set(models.QUANTS)
    assert spec.mmproj and spec.draft
    for f in (*(f for q in models.QUANTS for f in spec.weights(q).files), *spec.mmproj, *spec.draft,
              *(f for q in models.QUANTS for f in spec.mmproj_files(q))):
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", f.repo) and f.name.endswith(".gguf"), f
        assert f.size > 0
        assert f.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.sha256)
        assert f.parts == 1 or "-00001-of-" in f.name
    # sizes grow with precision
    assert spec.size("q4_k_m") < spec.size("q8_0") < spec.size("bf16")


def test_verified_sizes_are_the_published_ones():
    e4b = models.REGISTRY["e4b"].weights("q4_k_m").files[0]
    assert (e4b.repo, e4b.name, e4b.size, e4b.verified) == (
        "unsloth/gemma-4-E4B-it-GGUF", "gemma-4-E4B-it-Q4_K_M.gguf", 4_977_171_584, True)
    qat = models.REGISTRY["12b"].weights("qat").files[0]
    assert (qat.repo, qat.size) == ("google/gemma-4-12B-it-qat-q4_0-gguf", 6_975_879_296)


def test_split_files_name_all_their_parts():
    f = models.REGISTRY["31b"].weights("bf16").files[0]
    assert f.names() == ["BF16/gemma-4-31B-it-BF16-00001-of-00002.gguf", "BF16/gemma-4-31B-it-BF16-00002-of-00002.gguf"]


def test_kv_cache_of_31b_matches_its_config():
    # 50 sliding layers (16 KV heads x 256) capped at the 1024 window, 10 global (4 x 512): f16 K and V.
    kv = models.REGISTRY["31b"].kv
    assert kv.bytes(32768, ubatch=0) == 3_523_215_360
    assert kv.bytes(262144, ubatch=0) == 22_313_697_280


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,expected", [
    ("e4b", ("e4b", "q4_k_m")), ("E4B:Q8_0", ("e4b", "q8_0")), ("31b:bf16", ("31b", "bf16")),
    ("12b:qat", ("12b", "qat")), ("gemma4:e2b", ("e2b", "q4_k_m")), ("26b-a4b", ("26b", "q4_k_m")),
    ("gemma-4-26B-A4B-it:q4", ("26b", "q4_k_m")), ("31b:q8", ("31b", "q8_0")),
])
def test_names(name, expected):
    spec, quant = models.resolve(name)
    assert (spec.key, quant) == expected


def test_the_configured_quantization_applies_when_a_name_gives_none():
    assert models.resolve("e4b", quant="q8_0")[1] == "q8_0"
    assert models.resolve("e4b:bf16", quant="q8_0")[1] == "bf16"


@pytest.mark.parametrize("name,suggestion", [("e4", "e4b"), ("31", "31b"), ("e4bb", "e4b"), ("gemma", None)])
def test_unknown_names_get_suggestions(name, suggestion):
    with pytest.raises(models.UnknownModel) as e:
        models.resolve(name)
    assert e.value.message == f"unknown model '{name}'"
    if suggestion:
        assert f"did you mean {suggestion}" in e.value.hint


def test_unknown_quantization():
    with pytest.raises(models.UnknownModel, match="unknown quantization 'q5' for e4b") as e:
        models.resolve("e4b:q5")
    assert "e4b:q8_0" in e.value.hint


def test_hf_names():
    f = models.parse_hf("hf:unsloth/gemma-4-E4B-it-GGUF/MTP/mtp-gemma-4-E4B-it-Q8_0.gguf")
    assert (f.repo, f.name) == ("unsloth/gemma-4-E4B-it-GGUF", "MTP/mtp-gemma-4-E4B-it-Q8_0.gguf")
    with pytest.raises(ModelError, match="expected hf:OWNER/REPO/FILE.gguf"):
        models.parse_hf("hf:just-a-repo")


# ---------------------------------------------------------------------------------------------
# Locating
# ---------------------------------------------------------------------------------------------


def test_a_registry_model_not_downloaded_says_what_to_pull(store):
    with pytest.raises(models.ModelNotInstalled) as e:
        models.locate("e4b")
    err = e.value
    spec = models.REGISTRY["e4b"]
    assert err.name == "e4b:q4_k_m" and err.command == "gemma models pull e4b:q4_k_m"
    assert err.size == spec.size("q4_k_m") + spec.mmproj[0].size
    assert err.destination == store
    own, both = models.human_size(spec.size("q4_k_m")), models.human_size(err.size)
    assert err.message == f"model e4b:q4_k_m is not downloaded ({own}; {both} with its projector)"
    assert err.hint == "download it with: gemma models pull e4b:q4_k_m"


def test_a_downloaded_registry_model(store):
    path = install(store, "e4b", "q4_k_m")
    loc = models.locate("e4b")
    assert (loc.name, loc.path, loc.spec.key) == ("e4b:q4_k_m", path, "e4b")
    assert loc.mmproj.name == "mmproj-BF16.gguf" and loc.draft is None
    with pytest.raises(models.ModelNotInstalled) as e:
        models.locate("e4b", need_draft=True)
    assert e.value.command == "gemma models pull e4b:q4_k_m --draft"
    assert [f.name for f in e.value.files] == ["MTP/mtp-gemma-4-E4B-it-Q8_0.gguf"]


def test_a_second_candidate_file_counts_as_downloaded(store):
    alt = models.REGISTRY["e2b"].weights("q8_0").files[1]  # the ggml-org copy
    touch(store / alt.repo / alt.name)
    assert models.locate("e2b:q8_0").path == store / alt.repo / alt.name


def test_a_missing_projector_is_asked_for_only_when_needed(store):
    install(store, "e2b", "q4_k_m", mmproj=False)
    assert models.locate("e2b").mmproj is None
    with pytest.raises(models.ModelNotInstalled) as e:
        models.locate("e2b", need_mmproj=True)
    assert [f.name for f in e.value.files] == ["mmproj-F16.gguf"]


def test_a_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelError) as e:
        models.locate(str(missing))
    assert e.value.message == f"model file not found: {missing}"


def test_a_local_file_finds_its_projector_and_drafter(tmp_path):
    model = touch(tmp_path / "m" / "gemma-4-E4B-it-Q4_K_M.gguf")
    loc = models.locate(str(model))
    assert (loc.path, loc.mmproj, loc.draft, loc.spec.key) == (model, None, None, "e4b")
    only = touch(tmp_path / "m" / "mmproj-F16.gguf")
    assert models.locate(str(model)).mmproj == only
    own = touch(tmp_path / "m" / "mmproj-gemma-4-E4B-it-bf16.gguf")
    touch(tmp_path / "m" / "mmproj-gemma-4-E2B-it-bf16.gguf")
    assert models.locate(str(model)).mmproj == own, "the one naming the model"
    draft = touch(tmp_path / "m" / "MTP" / "mtp-gemma-4-E4B-it-Q8_0.gguf")
    assert models.locate(str(model)).draft == draft


def test_projectors_of_other_models_are_not_guessed(tmp_path):
    model = touch(tmp_path / "my-finetune.gguf")
    touch(tmp_path / "mmproj-gemma-4-E2B-it-bf16.gguf")
    touch(tmp_path / "mmproj-gemma-4-31B-it-bf16.gguf")
    assert models.locate(str(model)).mmproj is None


def test_pick_mmproj_prefers_bf16_among_precisions_of_one_projector():
    listing = ["mmproj-BF16.gguf", "mmproj-F16.gguf", "mmproj-F32.gguf"]
    assert models.pick_mmproj("gemma-4-26B-A4B-it-qat-UD-Q4_K_XL.gguf", listing) == "mmproj-BF16.gguf"


# The real file listing of unsloth/gemma-4-E2B-it-GGUF at one point (from the Hub's API).
E2B_LISTING = ["MTP/mtp-gemma-4-E2B-it-BF16.gguf", "MTP/mtp-gemma-4-E2B-it-F16.gguf", "MTP/mtp-gemma-4-E2B-it-Q8_0.gguf",
               "gemma-4-E2B-it-BF16.gguf", "gemma-4-E2B-it-Q8_0.gguf", "gemma-4-E2B-it-UD-IQ2_M.gguf",
               "gemma-4-E2B-it-UD-Q4_K_XL.gguf", "mmproj-F16.gguf", "mtp-gemma-4-E2B-it.gguf"]


def test_match_quant_in_a_real_listing_skips_drafters_and_projectors():
    assert models.match_quant(E2B_LISTING, "q8_0") == ["gemma-4-E2B-it-Q8_0.gguf"]
    assert models.match_quant(E2B_LISTING, "bf16") == ["gemma-4-E2B-it-BF16.gguf"]
    assert models.match_quant(E2B_LISTING, "q4_k_m") is None
    assert models.pick_draft("gemma-4-E2B-it-Q8_0.gguf", E2B_LISTING) == "MTP/mtp-gemma-4-E2B-it-Q8_0.gguf"
    shards = ["BF16/m-BF16-00002-of-00002.gguf", "BF16/m-BF16-00001-of-00002.gguf", "m-Q8_0.gguf"]
    assert models.match_quant(shards, "bf16") == ["BF16/m-BF16-00001-of-00002.gguf", "BF16/m-BF16-00002-of-00002.gguf"]
    assert models.match_quant(["m-UD-Q4_K_M.gguf", "m-Q4_K_M.gguf"], "q4_k_m") == ["m-Q4_K_M.gguf"]
    assert models.match_quant(["gemma-4-E2B_q4_0-it.gguf", "gemma-4-E2B-it-mmproj.gguf"], "qat") == ["gemma-4-E2B_q4_0-it.gguf"]


def test_hf_name_not_downloaded(store):
    with pytest.raises(models.ModelNotInstalled) as e:
        models.locate("hf:acme/x-GGUF/x.gguf")
    assert e.value.command == "gemma models pull hf:acme/x-GGUF/x.gguf"
    path = touch(store / "acme" / "x-GGUF" / "x.gguf")
    assert models.locate("hf:acme/x-GGUF/x.gguf").path == path


def test_no_name_uses_the_configured_model(store):
    from gemma_cli.store import config

    config.set_value("model", "e2b:q8_0")
    with pytest.raises(models.ModelNotInstalled, match="e2b:q8_0"):
        models.locate(None)


def fixed_hw(monkeypatch, vram_mib: int):
    hw = hardware.Hardware(gpus=hardware.parse_nvidia_smi(f"NVIDIA Test, {vram_mib}, {vram_mib - 300}"),
                           ram_total=64 * GIB, ram_available=48 * GIB, offload=True)
    monkeypatch.setattr(hardware, "detect", lambda **kw: hw)
    return hw


def test_no_name_no_config_uses_the_recommended_model(store, monkeypatch):
    fixed_hw(monkeypatch, 8192)
    with pytest.raises(models.ModelNotInstalled, match="e4b:q4_k_m"):
        models.locate(None)
    path = install(store, "e4b", "q4_k_m")
    assert models.locate(None).path == path


def test_no_name_falls_back_to_a_downloaded_model_that_fits(store, monkeypatch):
    fixed_hw(monkeypatch, 24564)  # recommends 31b:q4_k_m
    small = install(store, "e2b", "q4_k_m")
    bigger = install(store, "e4b", "q8_0")
    assert models.locate(None).path == bigger
    assert small.exists()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_unknown_name_is_one_line_with_a_suggestion(home):
    proc = run_gemma("models", "path", "e4", home=home)
    assert_one_line_error(proc, "unknown model 'e4'")
    assert "did you mean e4b" in proc.stderr


def test_cli_models_json(home):
    proc = run_gemma("models", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    names = [m["name"] for m in data["models"]]
    assert len(names) == 20 and "31b:bf16" in names
    assert sum(m["recommended"] for m in data["models"]) == 1
    assert data["recommended"] in names and data["reasons"]
    assert data["model_dir"] == str(home / "data" / "models")


def test_cli_models_table_marks_the_recommended_one(home, monkeypatch):
    from typer.testing import CliRunner

    from gemma_cli.cli import app

    fixed_hw(monkeypatch, 24564)
    install(home / "data" / "models", "e2b", "q4_k_m")
    out = CliRunner().invoke(app, ["models"]).stdout
    star = [ln for ln in out.splitlines() if ln.startswith("★ ") and "recommended here" not in ln]
    assert len(star) == 1 and "31b:q4_k_m" in star[0]
    assert "recommended here: 31b:q4_k_m" in out
    assert any("e2b:q4_k_m" in ln and "downloaded" in ln for ln in out.splitlines())
    installed = CliRunner().invoke(app, ["models", "list", "--installed", "--json"]).stdout
    assert [m["name"] for m in json.loads(installed)["models"]] == ["e2b:q4_k_m"]


def test_the_size_of_a_split_gguf_counts_every_part(tmp_path):
    (tmp_path / "big-00001-of-00002.gguf").write_bytes(b"a" * 10)
    (tmp_path / "big-00002-of-00002.gguf").write_bytes(b"b" * 20)
    (tmp_path / "small.gguf").write_bytes(b"c" * 7)
    assert models.file_size(tmp_path / "big-00001-of-00002.gguf") == 30
    assert models.file_size(tmp_path / "small.gguf") == 7
