"""Codex CLI and Claude Code, installed from npm, each finishing a one-shot prompt against a real `gemma serve`
(issue 21): Codex speaks only the Responses API (`codex exec` with a `model_providers` entry, `wire_api =
"responses"`), Claude Code only Anthropic's Messages API (`claude -p` with ANTHROPIC_BASE_URL). Their prompts are
10-20 thousand tokens of a real tokenizer (40-90 KB of instructions and tool schemas, more tokens still on the
synthetic model's small vocabulary), so the server runs a tiny synthetic Gemma 4 trained for a long context.

Both run offline: their update checks, telemetry, plugin and marketplace fetches are turned off by config and
environment, and every HTTP(S) request that is not for 127.0.0.1 goes to a recording proxy that refuses it; the
tests assert it recorded nothing. The npm packages are installed once into pytest's cache, keyed by their
versions (never globally); without node and npm the tests skip, and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import synthetic
from tests.needs import cached_folder, skip_or_fail
from tests.test_serve import Server

PACKAGES = {"codex": "@openai/codex@0.171.0", "claude": "@anthropic-ai/claude-code@2.1.332"}
CONTEXT = 131072  # the synthetic tokenizer spends about a token per character of these prompts
NAME = "gemma-local"
# Sampled at temperature 1, the random model ends its turn (an end-of-turn token) after ~300 tokens on average
# (12 seeds: 9 to 1008); under greedy decoding it never would, and a reply cut at a limit fails both clients.
MAX_TOKENS = 6000
TIMEOUT = 600


@pytest.fixture(scope="session")
def npm_bin(request, tmp_path_factory) -> Path:
    """node_modules/.bin holding `codex` and `claude`, installed once under pytest's cache and reused."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        skip_or_fail("Codex CLI and Claude Code come from npm: node and npm are not on PATH")
    root = cached_folder(request, tmp_path_factory, "npm-clients", *sorted(PACKAGES.values()))
    bin_dir = root / "node_modules" / ".bin"
    if all((bin_dir / name).exists() for name in PACKAGES):
        return bin_dir
    try:
        proc = subprocess.run([npm, "install", "--prefix", str(root), "--no-audit", "--no-fund", "--no-save",
                               "--no-update-notifier", "--cache", str(root / "npm-cache"), *PACKAGES.values()],
                              capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        proc = subprocess.CompletedProcess([], 1, "", str(e))
    if proc.returncode != 0 or not all((bin_dir / name).exists() for name in PACKAGES):
        skip_or_fail(f"cannot install {', '.join(PACKAGES.values())} with npm: "
                     f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or 'npm failed'}")
    return bin_dir


class RefusingProxy:
    """An HTTP(S) proxy that answers every request 403 and records where it was meant to go."""

    def __init__(self):
        self.targets: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def refuse(self):
                proxy.targets.append(f"{self.command} {self.path}")
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()

            do_CONNECT = do_GET = do_POST = do_HEAD = do_PUT = refuse

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def env(self) -> dict:
        local = "127.0.0.1,localhost"
        return {"HTTPS_PROXY": self.url, "HTTP_PROXY": self.url, "ALL_PROXY": self.url, "https_proxy": self.url,
                "http_proxy": self.url, "all_proxy": self.url, "NO_PROXY": local, "no_proxy": local}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def long_server(tmp_path_factory):
    """gemma serve on a tiny Gemma 4 trained for CONTEXT tokens, one sequence of all of them."""
    home = tmp_path_factory.mktemp("serve-long")
    template = synthetic.REFERENCE_TEMPLATE.read_text(encoding="utf-8")
    model = synthetic.write_text_model(home / "gemma4-e-long.gguf", "e", chat_template=template,
                                       context_length=CONTEXT, name="synthetic-gemma4-e-long")
    s = Server(home, "-m", str(model), "--name", NAME, "--ctx", str(CONTEXT), "--parallel", "1",
               "--threads", "2", "--max-tokens", str(MAX_TOKENS), "--temperature", "1", timeout=300)
    yield s
    s.stop()


@pytest.fixture
def proxy():
    p = RefusingProxy()
    yield p
    p.close()


def client_env(tmp_path: Path, proxy: RefusingProxy, **extra: str) -> dict:
    """A clean environment: a home of its own, no keys or settings of the user's, the refusing proxy."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TERM", "SYSTEMROOT")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"),
               NO_COLOR="1", CI="true", **proxy.env(), **extra)
    return env


def run_client(argv: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def test_codex_exec_finishes_a_prompt_against_gemma_serve(npm_bin, long_server, proxy, tmp_path):
    codex_home, work = tmp_path / "codex", tmp_path / "work"
    codex_home.mkdir()
    work.mkdir()
    (codex_home / "config.toml").write_text(f"""\
model = "{NAME}"
model_provider = "gemma"
check_for_update_on_startup = false

[model_providers.gemma]
name = "gemma serve"
base_url = "{long_server.url}/v1"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[feedback]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false
""")
    env = client_env(tmp_path, proxy, CODEX_HOME=str(codex_home))
    last = tmp_path / "last.txt"
    proc = run_client([npm_bin / "codex", "exec", "--json", "--skip-git-repo-check", "--sandbox", "read-only",
                       "--output-last-message", last, "Say hello in one word."], env, work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    turns = [e for e in events if e.get("type") == "turn.completed"]
    assert turns and not [e for e in events if e.get("type") in ("turn.failed", "error")], proc.stdout[-3000:]
    usage = turns[-1]["usage"]
    assert usage["input_tokens"] > 10000 and 0 < usage["output_tokens"] <= MAX_TOKENS, usage  # gemma serve's counts
    assert proxy.targets == [], f"Codex CLI reached for the network: {proxy.targets}"


def test_claude_code_print_mode_finishes_a_prompt_against_gemma_serve(npm_bin, long_server, proxy, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = client_env(
        tmp_path, proxy,
        CLAUDE_CONFIG_DIR=str(tmp_path / "claude"), ANTHROPIC_BASE_URL=long_server.url, ANTHROPIC_API_KEY="unused",
        ANTHROPIC_MODEL=NAME, ANTHROPIC_SMALL_FAST_MODEL=NAME, ANTHROPIC_DEFAULT_HAIKU_MODEL=NAME,
        ANTHROPIC_DEFAULT_SONNET_MODEL=NAME, ANTHROPIC_DEFAULT_OPUS_MODEL=NAME,
        CLAUDE_CODE_MAX_OUTPUT_TOKENS=str(MAX_TOKENS), CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1", DISABLE_ERROR_REPORTING="1", DISABLE_BUG_COMMAND="1")
    proc = run_client([npm_bin / "claude", "-p", "Say hello in one word.", "--model", NAME, "--output-format", "json",
                       "--max-turns", "1"], env, work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["is_error"] is False and result["subtype"] == "success", result
    usage = result["usage"]
    tokens = usage["input_tokens"] + usage.get("cache_read_input_tokens", 0)
    assert tokens > 10000 and 0 < usage["output_tokens"] <= MAX_TOKENS, usage  # gemma serve's counts
    assert proxy.targets == [], f"Claude Code reached for the network: {proxy.targets}"
