"""Downloads against a real HTTP server on 127.0.0.1 that speaks the Hub's file protocol."""

from __future__ import annotations

import hashlib
import os

import pytest
from hubserver import HubServer, isolate

from gemma_cli.errors import DownloadError, GemmaError
from gemma_cli.store import download, models

MIB = 1 << 20


@pytest.fixture(autouse=True)
def home(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)
    monkeypatch.setattr(download, "RETRY_WAIT", 0.0)
    return tmp_path


@pytest.fixture
def hub(monkeypatch):
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def cdn_hub(monkeypatch):
    with HubServer(redirect=True) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def blob(n: int, seed: int = 1) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"x" * (n % 32)


def test_pull_writes_the_file_and_verifies_it(hub, tmp_path):
    data = blob(3 * MIB + 123)
    hub.add("acme/models", "m.gguf", data)
    seen = []
    dest = download.fetch("acme/models", "m.gguf", tmp_path / "store" / "m.gguf", progress=lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == data
    assert not list(dest.parent.glob("*.part*")), "no partial file or note is left behind"
    assert seen[-1] == (len(data), len(data)) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    head = [h for m, _, h in hub.requests if m == "HEAD"]
    assert head and head[0]["authorization"] == "Bearer hf_test_token", "HF_TOKEN is sent"


def test_lfs_file_behind_a_cdn_redirect(cdn_hub, tmp_path):
    data = blob(MIB + 7)
    cdn_hub.add("acme/models", "sub/dir/m.gguf", data)
    dest = download.fetch("acme/models", "sub/dir/m.gguf", tmp_path / "m.gguf")
    assert dest.read_bytes() == data
    cdn = [h for m, p, h in cdn_hub.requests if p.startswith("/cdn/")]
    assert cdn and "authorization" not in cdn[0], "the token is not sent to the CDN"


def test_a_dropped_connection_is_resumed_with_range(hub, tmp_path):
    data = blob(3 * MIB + 5)
    hub.add("acme/models", "m.gguf", data)
    hub.drop_after[("acme/models", "m.gguf")] = 2 * MIB + 17
    dest = download.fetch("acme/models", "m.gguf", tmp_path / "m.gguf")
    assert dest.read_bytes() == data
    gets = hub.gets("acme/models", "m.gguf")
    assert len(gets) == 2 and "range" not in gets[0]
    start = int(gets[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 2 * MIB + 17


def test_an_interrupted_pull_resumes_on_the_next_run(hub, tmp_path, monkeypatch):
    data = blob(4 * MIB + 9, seed=2)
    hub.add("acme/models", "m.gguf", data)
    hub.drop_after[("acme/models", "m.gguf")] = 3 * MIB + 1
    monkeypatch.setattr(download, "RETRIES", 0)  # this run gives up at the first drop
    dest = tmp_path / "m.gguf"
    with pytest.raises(DownloadError, match="download of m.gguf keeps failing") as e:
        download.fetch("acme/models", "m.gguf", dest)
    assert "resumes where it stopped" in e.value.hint
    part = tmp_path / "m.gguf.part"
    kept = part.stat().st_size
    assert 0 < kept < len(data) and not dest.exists()
    download.fetch("acme/models", "m.gguf", dest)  # a new run
    assert dest.read_bytes() == data and not part.exists()
    assert hub.gets("acme/models", "m.gguf")[-1]["range"] == f"bytes={kept}-"


def test_a_server_that_ignores_range_restarts_cleanly(hub, tmp_path):
    data = blob(3 * MIB, seed=3)
    hub.add("acme/models", "m.gguf", data)
    hub.drop_after[("acme/models", "m.gguf")] = 2 * MIB + 1
    hub.ignore_range = True  # answers 200 with the whole file to a Range request
    assert download.fetch("acme/models", "m.gguf", tmp_path / "m.gguf").read_bytes() == data


def test_a_partial_file_of_another_version_is_discarded(hub, tmp_path):
    data = blob(2 * MIB)
    hub.add("acme/models", "m.gguf", data)
    (tmp_path / "m.gguf.part").write_bytes(b"old bytes")
    (tmp_path / "m.gguf.part.json").write_text('{"etag": "someotherversion"}')
    assert download.fetch("acme/models", "m.gguf", tmp_path / "m.gguf").read_bytes() == data
    assert "range" not in hub.gets("acme/models", "m.gguf")[-1]


def test_a_checksum_mismatch_is_rejected_and_not_kept(hub, tmp_path):
    hub.add("acme/models", "m.gguf", blob(MIB))
    hub.advertise[("acme/models", "m.gguf")] = "0" * 64
    dest = tmp_path / "m.gguf"
    with pytest.raises(DownloadError, match="checksum mismatch for m.gguf") as e:
        download.fetch("acme/models", "m.gguf", dest)
    assert "deleted" in e.value.message
    assert not dest.exists() and not list(tmp_path.glob("m.gguf*"))


def test_a_small_non_lfs_file_is_checked_by_its_git_blob_id(hub, tmp_path):
    hub.add("acme/models", "README.md", b"# hello\n", lfs=False)
    assert download.fetch("acme/models", "README.md", tmp_path / "README.md").read_bytes() == b"# hello\n"


def test_not_enough_disk_space_stops_before_downloading(hub, tmp_path, monkeypatch):
    hub.add("acme/models", "m.gguf", blob(2 * MIB))
    monkeypatch.setattr(download, "free_space", lambda folder: 1000)
    with pytest.raises(DownloadError, match=r"not enough disk space for m.gguf: it needs 2.1 MB") as e:
        download.fetch("acme/models", "m.gguf", tmp_path / "m.gguf")
    assert "model_dir" in e.value.hint
    assert not hub.gets("acme/models", "m.gguf"), "no bytes were requested"


def test_missing_file_and_missing_repo(hub, tmp_path):
    hub.add("acme/models", "m.gguf", b"x" * 100)
    with pytest.raises(download.FileMissing, match="acme/models/nope.gguf: no such file"):
        download.fetch("acme/models", "nope.gguf", tmp_path / "nope.gguf")
    with pytest.raises(download.FileMissing, match="acme/other: no such repository"):
        download.fetch("acme/other", "m.gguf", tmp_path / "m.gguf")


def test_a_refused_token_says_to_set_hf_token(monkeypatch, tmp_path):
    with HubServer(token="the-right-one") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.add("acme/private", "m.gguf", b"x" * 100)
        with pytest.raises(DownloadError) as e:
            download.fetch("acme/private", "m.gguf", tmp_path / "m.gguf")
        assert "HF_TOKEN" in e.value.hint
        monkeypatch.setenv("HF_TOKEN", "the-right-one")
        assert download.fetch("acme/private", "m.gguf", tmp_path / "m.gguf").read_bytes() == b"x" * 100


def test_an_endpoint_that_is_not_a_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1:9"):
        download.fetch("acme/models", "m.gguf", tmp_path / "m.gguf")


def test_gemma_endpoint_beats_hf_endpoint_and_config(monkeypatch, home):
    from gemma_cli.store import config

    config.set_value("endpoint", "https://from-config.example")
    assert download.endpoint() == "https://from-config.example"
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-endpoint.example/")
    assert download.endpoint() == "https://hf-endpoint.example"
    monkeypatch.setenv("GEMMA_ENDPOINT", "https://gemma-endpoint.example")
    assert download.endpoint() == "https://gemma-endpoint.example"


# ---------------------------------------------------------------------------------------------
# Registry pulls
# ---------------------------------------------------------------------------------------------

E2B = models.REGISTRY["e2b"]
E2B_REPO = "unsloth/gemma-4-E2B-it-GGUF"


def serve_e2b(hub, *, weights_name="gemma-4-E2B-it-Q4_K_M.gguf"):
    hub.add(E2B_REPO, weights_name, blob(MIB + 3, seed=5))
    hub.add(E2B_REPO, "mmproj-F16.gguf", blob(300_000, seed=6))
    hub.add(E2B_REPO, "MTP/mtp-gemma-4-E2B-it-Q8_0.gguf", blob(200_000, seed=7))


def test_pull_a_registry_model_with_its_projector_and_drafter(hub, home):
    serve_e2b(hub)
    loc = models.pull("e2b", draft=True)
    root = home / "data" / "models"
    assert loc.name == "e2b:q4_k_m" and loc.spec is E2B
    assert loc.path == root / E2B_REPO / "gemma-4-E2B-it-Q4_K_M.gguf"
    assert loc.mmproj == root / E2B_REPO / "mmproj-F16.gguf"
    assert loc.draft == root / E2B_REPO / "MTP" / "mtp-gemma-4-E2B-it-Q8_0.gguf"
    assert models.locate("e2b", need_mmproj=True, need_draft=True).path == loc.path
    before = len(hub.requests)
    models.pull("e2b", draft=True)  # everything is there: no network at all
    assert len(hub.requests) == before


def test_a_renamed_file_is_found_by_listing_the_repo(hub, home):
    serve_e2b(hub, weights_name="gemma-4-E2B-it-Q4_K_M-v2.gguf")
    loc = models.pull("e2b")
    assert loc.path.name == "gemma-4-E2B-it-Q4_K_M-v2.gguf"
    assert models.locate("e2b").path == loc.path, "locate finds it by its tag afterwards"
    assert any(p.startswith(f"/api/models/{E2B_REPO}/tree/") for _, p, _ in hub.requests)


def test_model_dir_setting_moves_the_store(hub, home, monkeypatch):
    serve_e2b(hub)
    monkeypatch.setenv("GEMMA_MODEL_DIR", str(home / "elsewhere"))
    assert models.pull("e2b").path.is_relative_to(home / "elsewhere")


def test_pull_hf_name_also_fetches_the_repos_projector(hub, home):
    hub.add("acme/vlm-GGUF", "acme-vlm-Q8_0.gguf", blob(MIB, seed=8))
    hub.add("acme/vlm-GGUF", "mmproj-acme-vlm-f16.gguf", blob(1000, seed=9))
    loc = models.pull("hf:acme/vlm-GGUF/acme-vlm-Q8_0.gguf")
    assert loc.path.name == "acme-vlm-Q8_0.gguf" and loc.mmproj.name == "mmproj-acme-vlm-f16.gguf"
    assert models.locate("hf:acme/vlm-GGUF/acme-vlm-Q8_0.gguf").path == loc.path


def test_offline_mode_uses_installed_files_and_refuses_missing_ones(hub, home, monkeypatch):
    serve_e2b(hub)
    models.pull("e2b")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    assert models.locate("e2b").path.is_file()
    assert models.pull("e2b").path.is_file()
    assert len(hub.requests) == before, "offline: no request at all"
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set") as e:
        models.pull("e4b")
    assert "unset HF_HUB_OFFLINE" in e.value.hint
    from gemma_cli.commands.models import ensure_model

    with pytest.raises(GemmaError, match="model e4b:q4_k_m is not downloaded") as e:
        ensure_model("e4b", yes=True)
    assert e.value.hint == "HF_HUB_OFFLINE is set: unset it, then run gemma models pull e4b:q4_k_m"
    assert ensure_model("e2b", yes=False).path.is_file()
    assert len(hub.requests) == before


def test_ensure_model_off_a_terminal_is_one_error_with_the_pull_command(hub, home):
    from gemma_cli.commands.models import ensure_model

    serve_e2b(hub)
    with pytest.raises(GemmaError) as e:
        ensure_model("e2b", yes=False)
    assert e.value.message.startswith("model e2b:q4_k_m is not downloaded (")
    assert "gemma models pull e2b:q4_k_m" in e.value.hint
    assert not hub.requests, "nothing is downloaded without consent"
    loc = ensure_model("e2b", yes=True)  # --yes downloads without asking
    assert loc.path.is_file() and loc.mmproj.is_file()


def test_rm_deletes_the_files_and_keeps_a_shared_projector(hub, home):
    serve_e2b(hub)
    hub.add(E2B_REPO, "gemma-4-E2B-it-Q8_0.gguf", blob(MIB, seed=11))
    q4 = models.pull("e2b")
    q8 = models.pull("e2b:q8_0")
    deleted = models.remove("e2b:q4_k_m")
    assert q4.path in deleted and not q4.path.exists()
    assert q8.mmproj.exists(), "e2b:q8_0 still uses the projector"
    deleted = models.remove("e2b:q8_0")
    assert q8.mmproj in deleted and not q8.mmproj.exists()
    with pytest.raises(GemmaError, match="e2b is not downloaded"):
        models.remove("e2b")


def test_cli_pull_list_path_rm(hub, home):
    from typer.testing import CliRunner

    from gemma_cli.cli import app

    serve_e2b(hub)
    runner = CliRunner()
    r = runner.invoke(app, ["models", "pull", "e2b"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["models", "--json"])
    rows = {m["name"]: m for m in __import__("json").loads(r.stdout)["models"]}
    assert rows["e2b:q4_k_m"]["installed"] and not rows["e4b:q4_k_m"]["installed"]
    r = runner.invoke(app, ["models", "path", "e2b", "--mmproj"])
    assert r.stdout.strip().endswith("mmproj-F16.gguf")
    assert not hub.gets(E2B_REPO, "MTP/mtp-gemma-4-E2B-it-Q8_0.gguf")  # the drafter only with --draft
    r = runner.invoke(app, ["models", "pull", "e2b", "--draft"])
    assert r.exit_code == 0, r.output
    assert len(hub.gets(E2B_REPO, "MTP/mtp-gemma-4-E2B-it-Q8_0.gguf")) == 1
    r = runner.invoke(app, ["models", "path", "e2b", "--draft"])
    assert r.stdout.strip().endswith("mtp-gemma-4-E2B-it-Q8_0.gguf")
    r = runner.invoke(app, ["models", "rm", "e2b"])
    assert r.exit_code == 0 and not os.path.exists(rows["e2b:q4_k_m"]["path"])


def test_ensure_model_on_a_terminal_asks_first(hub, home, monkeypatch):
    from gemma_cli.commands import models as cmd

    serve_e2b(hub)
    asked = []
    monkeypatch.setattr(cmd, "_is_tty", lambda stream: True)
    monkeypatch.setattr(cmd.typer, "confirm", lambda text, **kw: asked.append(text) or False)
    with pytest.raises(GemmaError, match="e2b:q4_k_m is not downloaded") as e:
        cmd.ensure_model("e2b", yes=False)
    assert asked == ["Download it now (4.1 GB)?"] and "gemma models pull e2b:q4_k_m" in e.value.hint
    assert not hub.gets(E2B_REPO, "gemma-4-E2B-it-Q4_K_M.gguf")
    monkeypatch.setattr(cmd.typer, "confirm", lambda text, **kw: True)
    assert cmd.ensure_model("e2b", yes=False).path.is_file()


def test_a_pull_checks_the_disk_for_all_its_files_before_the_first(hub, home, monkeypatch):
    serve_e2b(hub)  # weights 1 MiB + 3, projector 300 kB, drafter 200 kB
    weights = MIB + 3
    monkeypatch.setattr(download, "free_space", lambda folder: weights + download.SPACE_MARGIN + 1000)
    with pytest.raises(DownloadError, match="not enough disk space for e2b"):
        models.pull("e2b", draft=True)  # each file alone would fit; together they do not
    assert not any(method == "GET" and "/resolve/" in path for method, path, _ in hub.requests), "no bytes fetched"
