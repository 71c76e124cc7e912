"""MCP tools in `gemma chat`: real servers (tests/mcp_server.py, written with the SDK's `MCPServer`) over
stdio and streamable HTTP on 127.0.0.1, real processes, the tiny model with its calls forced by a grammar."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clitools import assert_one_line_error, gemma_env, run_gemma, wait_for

SERVER = str(Path(__file__).with_name("mcp_server.py"))


def alive(pid: int) -> bool:
    """Whether `pid` is in the process table and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def write_config(path: Path, servers: dict) -> Path:
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


def ours(*args, **extra) -> dict:
    return {"command": sys.executable, "args": [SERVER, *map(str, args)], **extra}


@pytest.fixture
def home(tmp_path, monkeypatch):
    for key, value in gemma_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    return tmp_path


# ---------------------------------------------------------------- config


def test_an_unmodified_claude_desktop_file_is_read(home, monkeypatch):
    from gemma_cli.chat import mcp

    monkeypatch.setenv("MY_TOKEN", "s3cret")
    monkeypatch.delenv("UNSET_ONE", raising=False)
    path = home / "claude_desktop_config.json"
    path.write_text(json.dumps({
        "globalShortcut": "Ctrl+Space",
        "mcpServers": {
            "filesystem": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]},
            "github": {"command": "docker", "args": ["run", "-i", "ghcr.io/github/github-mcp-server"],
                       "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "${MY_TOKEN}", "LEVEL": "${UNSET_ONE:-info}"}},
            "remote": {"type": "http", "url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ${MY_TOKEN}"}},
            "broken": {"command": "x", "env": {"K": "${UNSET_ONE}"}},
        },
    }))
    config = mcp.read_config(path)
    fs, gh, remote, broken = (config.servers[n] for n in ("filesystem", "github", "remote", "broken"))
    assert fs.command == "npx" and fs.args[-1] == "/tmp" and fs.transport == "stdio"
    assert gh.env == {"GITHUB_PERSONAL_ACCESS_TOKEN": "s3cret", "LEVEL": "info"}
    assert remote.transport == "http" and remote.headers == {"Authorization": "Bearer s3cret"}
    assert broken.problem and "${UNSET_ONE} is not set" in broken.problem


def test_gemini_cli_settings_are_read(home):
    from gemma_cli.chat import mcp

    path = home / "settings.json"
    path.write_text(json.dumps({"theme": "Default", "mcpServers": {
        "web": {"httpUrl": "http://127.0.0.1:1/mcp", "timeout": 30000, "trust": True},
        "git": {"command": "uvx", "args": ["mcp-server-git"], "cwd": "/tmp", "includeTools": ["git_status"],
                "excludeTools": ["git_commit"]},
    }}))
    config = mcp.read_config(path)
    web, git = config.servers["web"], config.servers["git"]
    assert web.transport == "http" and web.timeout == 30 and web.trust
    assert git.cwd == "/tmp" and mcp.filtered(git, ["git_status", "git_log", "git_commit"]) == ["git_status"]


def test_a_config_that_is_not_json_is_one_line(home):
    bad = home / "mcp.json"
    for text in ("{nope", "[" * 100_000 + "]" * 100_000):  # the second was a RecursionError: "this is a bug"
        bad.write_text(text)
        proc = run_gemma("mcp", "list", "--mcp-config", bad, home=home)
        assert_one_line_error(proc, str(bad), "not valid JSON")
    assert_one_line_error(run_gemma("mcp", "list", "--mcp-config", home, home=home), str(home), "is a folder")


def test_names_become_callable_and_clashes_get_the_server(home):
    from gemma_cli.chat import mcp

    tools = [mcp.McpTool("a", "get-time.now", "", "", {}), mcp.McpTool("b", "get-time.now", "", "", {}),
             mcp.McpTool("a", "ns:search", "", "", {}), mcp.McpTool("c", "add", "", "", {})]
    mcp.assign_names(tools, taken={"add"})
    assert [t.public for t in tools] == ["a__get_time_now", "b__get_time_now", "ns_search", "c__add"]


def test_gemma_mcp_add_list_test_remove(home):
    proc = run_gemma("mcp", "add", "ours", "--", sys.executable, SERVER, home=home)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((home / "config" / "mcp.json").read_text())
    assert saved["mcpServers"]["ours"] == {"command": sys.executable, "args": [SERVER]}
    proc = run_gemma("mcp", "list", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)["servers"][0]
    assert row["status"] == "ready" and {t["as"] for t in row["tools"]} >= {"echo", "math_add_numbers"}
    proc = run_gemma("mcp", "test", "ours", home=home)
    assert proc.returncode == 0 and "started and listed 7 tools" in proc.stdout, proc.stderr
    proc = run_gemma("mcp", "remove", "ours", home=home)
    assert proc.returncode == 0 and json.loads((home / "config" / "mcp.json").read_text())["mcpServers"] == {}
    assert_one_line_error(run_gemma("mcp", "test", "ours", home=home), "no MCP server named 'ours'")


def test_an_unknown_server_name_is_a_usage_error_listing_the_names_everywhere(home, fake):
    # remove said exit 2, test and chat --mcp exit 1: all are 2 now, with the names that exist
    (home / "config").mkdir(exist_ok=True)
    write_config(home / "config" / "mcp.json", {"time": ours(), "git": {"type": "http", "url": "http://127.0.0.1:9/mcp"}})
    for args in (["mcp", "remove", "nosuch"], ["mcp", "test", "nosuch"],
                 ["chat", "hi", "--model", fake.model, "--mcp", "nosuch"]):
        proc = fake.gemma(*args)
        assert_one_line_error(proc, "no MCP server named 'nosuch'", "(configured: time, git)")
        assert proc.returncode == 2, args
    assert fake.calls == []


def test_gemma_mcp_add_refuses_what_would_not_work_and_takes_a_bare_url(home):
    own = home / "config" / "mcp.json"
    for name in ("bad name!", ""):  # were added
        assert_one_line_error(run_gemma("mcp", "add", name, "--", "echo", home=home), "MCP server name", "letters")
    assert_one_line_error(run_gemma("mcp", "add", "web", "--url", "notaurl", home=home), "'notaurl'", "http(s)")
    assert not own.exists()
    proc = run_gemma("mcp", "add", "web", "http://127.0.0.1:1/mcp", home=home)  # was saved as a command
    assert proc.returncode == 0, proc.stderr
    assert json.loads(own.read_text())["mcpServers"]["web"] == {"type": "http", "url": "http://127.0.0.1:1/mcp"}
    own.write_text('{"mcpServers": []}')
    assert_one_line_error(run_gemma("mcp", "add", "time", "--", "echo", home=home), str(own), '"mcpServers" must be')


def test_servers_with_args_env_or_headers_of_the_wrong_type_have_a_problem(home):
    from gemma_cli.chat import mcp

    path = write_config(home / "x.json", {"s": {"command": "echo", "args": "hello"},  # was run as h e l l o
                                          "e": {"command": "echo", "env": ["A=1"]},
                                          "h": {"url": "http://127.0.0.1:1/mcp", "headers": 5}})
    config = mcp.read_config(path)
    assert '"args" must be an array' in config.servers["s"].problem
    assert '"env" must be an object' in config.servers["e"].problem
    assert '"headers" must be an object' in config.servers["h"].problem


# ---------------------------------------------------------------- the host over stdio


def test_stdio_servers_list_call_errors_images_timeouts_and_restarts(home):
    from gemma_cli.chat import mcp

    crashfile, pidfile = home / "crashed", home / "pid"
    specs = [
        mcp.ServerSpec("ours", command=sys.executable, args=[SERVER, "--crashfile", str(crashfile), "--pidfile",
                                                               str(pidfile)], timeout=3),
        mcp.ServerSpec("noisy", command=sys.executable, args=[SERVER, "garbage"], include=["echo"]),
        mcp.ServerSpec("mute", command=sys.executable, args=[SERVER, "hang"], startup_timeout=3),
        mcp.ServerSpec("absent", command="no-such-mcp-command"),
    ]
    host = mcp.Host(mcp.McpConfig(home / "mcp.json", {}), specs, approve_all=True)
    try:
        servers = {s.spec.name: s for s in host.wait()}
        assert servers["ours"].status == "ready" and servers["noisy"].status == "ready"  # garbage lines are skipped
        assert servers["mute"].status == "failed" and "handshake within 3 s" in servers["mute"].why
        assert servers["absent"].status == "failed" and "'no-such-mcp-command' not found" in servers["absent"].why
        assert "PATH=" in servers["absent"].why
        assert [t.public for t in servers["noisy"].tools] == ["noisy__echo"]  # includeTools; echo clashes
        assert {t.public for t in servers["ours"].tools} == {"ours__echo", "math_add_numbers", "fail", "picture",
                                                            "big", "slow", "crash"}
        assert host.call("ours__echo", {"text": "hi"}).value == "echo: hi"
        assert host.call("noisy__echo", {"text": "ho"}).value == "echo: ho"
        out = host.call("math_add_numbers", {"a": 2, "b": 3})
        assert out.value == '{"sum":5}' and out.server == "ours" and out.error is None and out.seconds > 0
        failed = host.call("fail", {"reason": "on purpose"})
        assert failed.value == {"error": failed.error} and "it failed: on purpose" in failed.error
        picture = host.call("picture", {})
        assert "image/png" in picture.value and "no vision projector" in picture.value and not picture.images
        host.vision = True
        assert host.call("picture", {}).images[0].startswith("data:image/png;base64,")
        slow = host.call("slow", {})
        assert "no result or progress within 3 s" in slow.error
        first_pid = int(pidfile.read_text())
        crashed = host.call("crash", {})
        assert "exited during the call" in crashed.error and "restarted once" in crashed.error
        wait_for(lambda: not alive(first_pid), "the crashed server to be gone")
        assert host.call("crash", {}).value == "alive again"  # restarted at its next call
        assert int(pidfile.read_text()) != first_pid
        pids = set(host._known_children)
    finally:
        host.close()
    assert pids and not [p for p in pids if alive(p)]


def test_a_server_that_dies_between_calls_is_restarted_at_the_next_one(home):
    # Between calls the host's loop rests (calls run it in the caller's thread): the death is seen at the next
    # call, which starts the server again and answers, as a server that dies mid-call gets at its next call.
    from gemma_cli.chat import mcp

    pidfile = home / "pid"
    host = mcp.Host(mcp.McpConfig(home / "mcp.json", {}),
                    [mcp.ServerSpec("ours", command=sys.executable, args=[SERVER, "--pidfile", str(pidfile)])],
                    approve_all=True)
    try:
        host.wait()
        assert host.call("echo", {"text": "one"}).value == "echo: one"
        first = int(pidfile.read_text())
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{first}").exists(), "the killed server to be reaped")
        again = host.call("echo", {"text": "two"})
        assert again.error is None and again.value == "echo: two", again
        assert int(pidfile.read_text()) != first
        assert "exited between calls" not in (host.servers["ours"].why or "")  # it is running again
        assert host.servers["ours"].status == "ready"
    finally:
        host.close()


def test_a_server_that_exits_at_start_is_named_with_the_end_of_its_stderr(home):
    from gemma_cli.chat import mcp

    host = mcp.Host(mcp.McpConfig(home / "mcp.json", {}),
                    [mcp.ServerSpec("db", command=sys.executable, args=[SERVER, "die"], startup_timeout=60)])
    try:
        [server] = host.wait()
    finally:
        host.close()
    assert server.status == "failed"
    assert "its stderr ends: starting up | cannot open the database: it is locked" in server.why, server.why
    assert "cannot open the database" in server.log.read_text()  # the whole stderr is kept in its log
    assert str(home) in str(server.log)  # under gemma's cache dir


SPAWN_ORDER = """
import json, sys
from pathlib import Path
events = []
sys.addaudithook(lambda event, args: events.append(event) if event == "subprocess.Popen"
                 or (event == "import" and args[0] == "mcp") else None)
from gemma_cli.chat import mcp
specs = [mcp.ServerSpec(f"s{i}", command=sys.executable, args=[sys.argv[1]]) for i in range(3)]
host = mcp.Host(mcp.McpConfig(Path("mcp.json"), {}), specs)
try:
    statuses = [s.status for s in host.wait()]
finally:
    host.close()
print(json.dumps({"events": events, "statuses": statuses}))
"""


def test_stdio_servers_are_spawned_before_the_sdk_is_imported(home):
    # The SDK's import takes seconds: a server spawned only after it could not overlap its own start with it.
    out = subprocess.run([sys.executable, "-c", SPAWN_ORDER, SERVER], capture_output=True, text=True, timeout=120,
                         cwd=home, env=os.environ | {"PYTHONPATH": str(Path(__file__).parent.parent)})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["statuses"] == ["ready"] * 3
    assert seen["events"][:4] == ["subprocess.Popen"] * 3 + ["import"], seen["events"]


def test_progress_notifications_extend_the_call_timeout(home):
    from gemma_cli.chat import mcp

    host = mcp.Host(mcp.McpConfig(home / "mcp.json", {}),
                    [mcp.ServerSpec("ours", command=sys.executable, args=[SERVER], timeout=2)], approve_all=True)
    try:
        host.wait()
        # 4 s in all, never more than 0.2 s without progress: a tenth of the timeout, so a loaded machine's pauses
        # cannot pass for a silent server
        out = host.call("slow", {"ticks": 20, "every": 0.2})
        assert out.error is None and out.value == "done after 20 ticks" and out.seconds > 2, out
        assert "no result or progress within 2 s" in host.call("slow", {}).error
    finally:
        host.close()


def test_budget_cuts_a_long_result_with_a_marker(home):
    from gemma_cli.chat import mcp

    host = mcp.Host(mcp.McpConfig(home / "mcp.json", {}), [mcp.ServerSpec("ours", command=sys.executable,
                                                                           args=[SERVER])], approve_all=True)
    try:
        host.wait()
        host.count, host.result_budget = (lambda text: len(text.split())), 100
        value = host.call("big", {"n": 5000}).value
    finally:
        host.close()
    assert value.count("word") < 100 and "[… cut: the result was 5000 tokens, over the budget of 100" in value


def test_streamable_http_server_on_localhost(home):
    from gemma_cli.chat import mcp

    proc = subprocess.Popen([sys.executable, SERVER, "http"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # the server says where it listens once its socket accepts
        assert line.startswith("listening on "), line
        url = line.split()[-1]
        config = home / "mcp.json"
        write_config(config, {"web": {"type": "http", "url": url, "headers": {"X-Test": "1"}}})
        cfg = mcp.read_config(config)
        host = mcp.Host(cfg, list(cfg.servers.values()), approve_all=True)
        try:
            [server] = host.wait()
            assert server.status == "ready", server.why
            assert host.call("echo", {"text": "over http"}).value == "echo: over http"
            assert host.call("fail", {}).error
        finally:
            host.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_an_http_url_that_is_no_mcp_endpoint_says_the_status_it_got(home):
    # The SDK's words were "Not Found" or "Unexpected content type: text/html", with no status.
    import http.server
    import threading

    class NotMcp(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/page"):
                body = b"<html><body>a web page</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404 if self.path.startswith("/missing") else 500)

        do_GET = do_DELETE = do_POST

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotMcp)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        config = write_config(home / "mcp.json", {name: {"type": "http", "url": f"{base}/{name}/mcp"}
                                                  for name in ("missing", "page", "broken")})
        for name, words in (("missing", f"HTTP 404 from {base}/missing/mcp: not an MCP endpoint?"),
                            ("page", f"HTTP 200 (text/html) from {base}/page/mcp: not an MCP endpoint?"),
                            ("broken", f"HTTP 500 from {base}/broken/mcp: Server returned an error response")):
            proc = run_gemma("mcp", "test", name, "--mcp-config", config, home=home)
            assert_one_line_error(proc, f"MCP server {name} did not start: {words}")
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------- through gemma chat


CALL = 'root ::= "<|tool_call>call:math_add_numbers{{a:2,b:3}}<tool_call|>"{more}\n'


def chat_json(home, e_model, config, *args, grammar=None, **kw) -> tuple[subprocess.CompletedProcess, dict | None]:
    grammar = grammar or CALL.format(more="")
    path = home / "call.gbnf"
    path.write_text(grammar)
    proc = run_gemma("chat", "add 2 and 3", "--model", e_model, "--mcp-config", config, "--grammar", path,
                     "--max-tokens", "160", "--json", *args, home=home, **kw)
    try:
        return proc, json.loads(proc.stdout)
    except json.JSONDecodeError:
        return proc, None


def test_one_shot_chat_calls_an_mcp_tool_and_shows_it_in_json(home, e_model):
    config = write_config(home / "servers.json", {"ours": ours(trust=True)})
    proc, out = chat_json(home, e_model, config, "--max-tool-rounds", "2")
    assert proc.returncode == 0, proc.stderr
    first, second, stop = out["tool_results"]
    assert stop["ran"] is False and stop["result"] == "stopped after 2 tool rounds"
    assert first == {"name": "math_add_numbers", "ran": True, "result": '{"sum":5}', "server": "ours",
                     "arguments": {"a": 2, "b": 3}, "error": None, "seconds": first["seconds"]}
    # The grammar makes the model repeat the call: answered from the first result, not run again.
    assert second["repeated"] and second["result"]["result"] == '{"sum":5}' and "not run again" in second["result"]["note"]


def test_without_a_terminal_or_yes_nothing_runs_and_the_model_is_told(home, e_model):
    config = write_config(home / "servers.json", {"ours": ours()})
    proc, out = chat_json(home, e_model, config, "--max-tool-rounds", "1")
    assert proc.returncode == 0, proc.stderr
    run = out["tool_results"][0]
    assert run["ran"] is False and "no terminal to ask" in run["result"]["error"]


def test_yes_runs_and_a_failing_server_is_one_line(home, e_model):
    config = write_config(home / "servers.json", {"ours": ours(), "gone": {"command": "no-such-mcp-command"}})
    proc, out = chat_json(home, e_model, config, "--max-tool-rounds", "1", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert out["tool_results"][0]["ran"] and out["tool_results"][0]["result"] == '{"sum":5}'
    [line] = [ln for ln in proc.stderr.splitlines() if "gone" in ln]
    assert line.startswith("MCP server gone did not start: command 'no-such-mcp-command' not found")


def test_declarations_over_half_the_context_are_refused_with_numbers(home, e_model):
    config = write_config(home / "servers.json", {"ours": ours()})
    proc, _ = chat_json(home, e_model, config, "--ctx", "256")
    assert_one_line_error(proc, "tool declarations take", "256-token context", "ours")
    assert "--mcp NAME" in proc.stderr and "includeTools" in proc.stderr and "--ctx" in proc.stderr


def test_no_mcp_and_mcp_pick_servers(home, e_model):
    config = write_config(home / "servers.json", {"ours": ours(trust=True), "other": ours(trust=True)})
    proc, out = chat_json(home, e_model, config, "--no-mcp", "--max-tool-rounds", "1")
    assert proc.returncode == 0 and out["tool_results"] == [], proc.stderr
    proc, out = chat_json(home, e_model, config, "--mcp", "other", "--max-tool-rounds", "1")
    assert out["tool_results"][0]["server"] == "other"
    assert_one_line_error(chat_json(home, e_model, config, "--mcp", "nope")[0], "no MCP server named 'nope'")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_no_server_process_is_left_behind(home, e_model, how):
    started, pidfile = home / "started", home / "pid"
    config = write_config(home / "servers.json", {"ours": ours("--pidfile", pidfile, "--startedfile", started,
                                                              trust=True)})
    grammar = home / "slow.gbnf"
    grammar.write_text('root ::= "<|tool_call>call:slow{}<tool_call|>"\n')
    proc = subprocess.Popen([sys.executable, "-m", "gemma_cli", "chat", "wait", "--model", e_model, "--mcp-config",
                             str(config), "--grammar", str(grammar), "--max-tokens", "64", "--max-tool-rounds", "1",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=gemma_env(home))
    try:
        wait_for(started.exists, "the slow tool to run")
        server = int(pidfile.read_text())
        assert alive(server)
        proc.send_signal(how)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if how == signal.SIGINT:  # Ctrl-C cancels the call, not the chat: the model is told and the chat ends normally
        assert proc.returncode == 0, err
        run = json.loads(out)["tool_results"][0]
        assert "cancelled" in run["error"]
    else:
        assert proc.returncode == 128 + signal.SIGTERM, err
    assert not alive(server), "the MCP server outlived gemma"


def test_gemma_chat_runs_with_an_unmodified_claude_desktop_file(home, e_model):
    """The file as Claude Desktop writes it (its own keys beside mcpServers, no gemma fields) is read as it is
    and left as it was."""
    path = home / "claude_desktop_config.json"
    path.write_text(json.dumps({
        "globalShortcut": "Alt+Space",
        "isUsingBuiltInNodeForMcp": True,
        "mcpServers": {"ours": {"command": sys.executable, "args": [SERVER], "env": {"OURS_HOME": "${HOME}"}}},
    }, indent=2))
    before = path.read_bytes()
    proc, out = chat_json(home, e_model, path, "--yes", "--max-tool-rounds", "1")
    assert proc.returncode == 0, proc.stderr
    run = out["tool_results"][0]
    assert run["server"] == "ours" and run["ran"] and run["result"] == '{"sum":5}'
    assert path.read_bytes() == before


def test_read_only_tools_run_unasked_only_when_the_user_opts_in(home, e_model):
    """`echo` carries readOnlyHint, `math.add-numbers` does not; no terminal and no --yes."""
    rule = ('root ::= "<|tool_call>call:echo{text:<|\\"|>hi<|\\"|>}<tool_call|>'
            '<|tool_call>call:math_add_numbers{a:2,b:3}<tool_call|>"\n')
    for opt_in in (False, True):
        config = write_config(home / "servers.json", {"ours": ours(autoApproveReadOnly=opt_in)})
        proc, out = chat_json(home, e_model, config, "--max-tool-rounds", "1", grammar=rule)
        assert proc.returncode == 0, proc.stderr
        echo, add = out["tool_results"][:2]
        assert echo["name"] == "echo" and echo["ran"] is opt_in, echo
        assert echo["result"] == "echo: hi" if opt_in else "no terminal to ask" in echo["result"]["error"]
        assert add["name"] == "math_add_numbers" and add["ran"] is False  # not read-only: still needs a yes


# ---------------------------------------------------------------- approval on a terminal


def terminal(home, e_model, grammar_rule: str, *extra):
    from tests.test_repl_screen import Terminal

    config = write_config(home / "servers.json", {"ours": ours()})
    grammar = home / "call.gbnf"
    grammar.write_text(grammar_rule)
    return Terminal(home, "--model", e_model, "--mcp-config", config, "--grammar", grammar, "--max-tool-rounds", "1",
                    "--max-tokens", "64", *extra)


def test_approval_shows_the_full_escaped_arguments_and_always_is_remembered(home, e_model):
    rule = 'root ::= "<|tool_call>call:echo{text:<|\\"|>red\\x1b[31mtext\\x9b<|\\"|>}<tool_call|>"\n'
    term = terminal(home, e_model, rule)
    try:
        term.child.sendline("say it")
        term.child.expect_exact(b"[N]o: ")
        shown = "\n".join(term.lines())
        assert "MCP tool echo (server ours) wants to run with:" in shown
        assert '{"text": "red\\u001b[31mtext\\u009b"}' in shown, shown  # control characters escaped, in full
        term.child.sendline("t")  # always this tool
        term.child.expect_exact(b"result:")
        term.child.expect_exact(b">>> ")
        saved = json.loads((home / "config" / "mcp.json").read_text())
        assert saved["approvals"] == {"ours": ["echo"]}
        term.child.sendline("again")  # remembered: no question this time
        term.child.expect_exact(b"result:")
        term.child.expect_exact(b">>> ")
        assert sum("wants to run with" in line for line in term.lines()) == 1
        term.child.sendline("/tools")
        term.child.expect_exact(b"total")
        term.child.expect_exact(b">>> ")
        term.child.sendline("/mcp")
        term.child.expect_exact(b"7 tools")
        term.child.expect_exact(b">>> ")
        shown = "\n".join(term.lines())
        assert "MCP ours" in shown and "ours             ready" in shown
    finally:
        term.close()


def test_approval_no_runs_nothing_and_always_this_server_is_remembered(home, e_model):
    rule = 'root ::= "<|tool_call>call:math_add_numbers{a:2,b:3}<tool_call|>"\n'
    term = terminal(home, e_model, rule)
    try:
        term.child.sendline("add")
        term.child.expect_exact(b"[N]o: ")
        term.child.sendline("n")
        term.child.expect_exact(b"not run")
        term.child.expect_exact(b">>> ")
        assert not (home / "config" / "mcp.json").exists()
        term.child.sendline("add again")
        term.child.expect_exact(b"[N]o: ")
        term.child.sendline("s")
        term.child.expect_exact(b"result:")
        term.child.expect_exact(b">>> ")
        assert json.loads((home / "config" / "mcp.json").read_text())["approvals"] == {"ours": ["*"]}
    finally:
        term.close()


def test_ctrl_c_during_a_call_cancels_that_call_and_the_chat_goes_on(home, e_model):
    """In the REPL, Ctrl-C while a tool runs ends that call (the model is told), not the chat; the server's
    session stays open: the next call goes to the same process."""
    started, pidfile = home / "started", home / "pid"
    config = write_config(home / "servers.json", {"ours": ours("--pidfile", pidfile, "--startedfile", started,
                                                              trust=True)})
    from tests.test_repl_screen import Terminal

    grammar = home / "slow.gbnf"
    grammar.write_text('root ::= "<|tool_call>call:slow{}<tool_call|>"\n')
    term = Terminal(home, "--model", e_model, "--mcp-config", config, "--grammar", grammar, "--max-tool-rounds", "1",
                    "--max-tokens", "64")
    try:
        server = int(pidfile.read_text())
        for message in ("first", "second"):
            started.unlink(missing_ok=True)
            term.child.sendline(message)
            wait_for(started.exists, "the slow tool to run")
            assert int(started.read_text()) == server  # the same process: one session for the whole chat
            term.child.sendintr()
            term.child.expect_exact(b"cancelled this call")
            term.child.expect_exact(b">>> ")
            assert term.child.isalive() and alive(server)
        shown = "\n".join(term.lines())
        assert "interrupted" not in shown  # the turn went on: the model was told, the reply was not cut
    finally:
        term.close()


# ---------------------------------------------------------------- real servers from PyPI


REAL_SERVERS = ["mcp-server-time", "mcp-server-git"]


@pytest.fixture(scope="session")
def real_servers(request, tmp_path_factory) -> Path:
    """A virtualenv holding mcp-server-time and mcp-server-git, made once under pytest's cache and reused."""
    from tests.needs import virtualenv

    return virtualenv(request, tmp_path_factory, "mcp-servers", REAL_SERVERS, timeout=600)


def test_real_mcp_server_time_through_gemma_chat(home, e_model, real_servers):
    config = write_config(home / "servers.json", {"time": {"command": str(real_servers / "mcp-server-time"),
                                                           "args": ["--local-timezone", "UTC"]}})
    rule = 'root ::= "<|tool_call>call:get_current_time{timezone:<|\\"|>Asia/Tokyo<|\\"|>}<tool_call|>"\n'
    proc, out = chat_json(home, e_model, config, "--yes", "--max-tool-rounds", "1", grammar=rule)
    assert proc.returncode == 0, proc.stderr
    run = out["tool_results"][0]
    assert run["server"] == "time" and run["arguments"] == {"timezone": "Asia/Tokyo"} and run["error"] is None
    assert json.loads(run["result"])["timezone"] == "Asia/Tokyo"  # fed back: the model's next turn saw it
    assert out["stats"]["prompt_tokens"] > 0 and len(out["tool_calls"]) == 2


def test_real_mcp_server_git_through_gemma_chat(home, e_model, real_servers):
    repo = home / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "trunk", str(repo)], check=True)
    (repo / "new.txt").write_text("hello")
    config = write_config(home / "servers.json", {"git": {"command": str(real_servers / "mcp-server-git"),
                                                          "args": ["--repository", str(repo)],
                                                          "includeTools": ["git_status", "git_log"]}})
    rule = f'root ::= "<|tool_call>call:git_status{{repo_path:<|\\"|>{repo}<|\\"|>}}<tool_call|>"\n'
    proc, out = chat_json(home, e_model, config, "--yes", "--max-tool-rounds", "1", grammar=rule)
    assert proc.returncode == 0, proc.stderr
    run = out["tool_results"][0]
    assert run["server"] == "git" and run["error"] is None
    assert "trunk" in run["result"] and "new.txt" in run["result"]


def test_real_mcp_server_git_with_every_tool_overflows_a_small_context(home, e_model, real_servers):
    config = write_config(home / "servers.json", {"git": {"command": str(real_servers / "mcp-server-git")}})
    proc, _ = chat_json(home, e_model, config, "--yes", "--ctx", "2048")
    assert_one_line_error(proc, "tool declarations take", "2048-token context", "by server: git")
