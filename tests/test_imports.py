"""The module structure (issue 15, item 2): no import cycles among gemma_cli's modules, counting
imports inside functions, and the layers kept by import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clitools import imported_by

PACKAGE = Path(__file__).resolve().parent.parent / "gemma_cli"

def module_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: modules it imports}, for every import statement anywhere in the file (functions too)."""
    files = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path

    def owner(name: str) -> str | None:  # the module a dotted name lives in (a function, a class, a module)
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        package_name = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package_name.split(".")[: len(package_name.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from a import b`: b is a module of a, or a name defined in a
                names = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = owner(name) if name.startswith("gemma_cli") else None
                if target and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "gemma_cli"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from gemma_cli import b\n")
    (pkg / "b.py").write_text("from gemma_cli.sub.c import thing\n")
    (pkg / "sub" / "c.py").write_text("def g():\n    from .. import a\n\nthing = 1\n")
    graph = module_graph(pkg)
    assert graph["gemma_cli.a"] == {"gemma_cli.b"} and graph["gemma_cli.b"] == {"gemma_cli.sub.c"}
    assert cycles(graph) == [{"gemma_cli.a", "gemma_cli.b", "gemma_cli.sub.c"}]


def test_no_import_cycles_among_gemma_cli_modules():
    found = cycles(module_graph())
    assert not found, f"import cycles: {[sorted(c) for c in found]}"


def test_the_layer_contracts_hold():
    """`lint-imports` runs pyproject.toml's contracts (face -> jobs -> engine / format / store)."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports is not installed: pip install -e '.[test]' (import-linter)")
    root = PACKAGE.parent
    proc = subprocess.run([exe, str(root / "pyproject.toml"), "--no-cache"], capture_output=True,
                          text=True, cwd=root, env={**__import__("os").environ, "PYTHONPATH": str(root)}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout, proc.stdout


# Imports inside functions (issue 15, item 2): only where they keep `gemma --help` fast (or break an import
# cycle), and each says which in a comment on its line or the line just above; one comment covers a block of
# consecutive imports.
LAZY_ALLOWED: set[str] = set()  # modules (dotted) left out of the rule, each named; none today


def uncommented_function_imports(package: Path = PACKAGE) -> list[str]:
    """'path:line: import ...' for every import inside a function with no comment saying why."""
    import io
    import tokenize

    found = []
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if ".".join(parts) in LAZY_ALLOWED:
            continue
        source = path.read_text(encoding="utf-8")
        commented, comment_only = set(), set()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                commented.add(tok.start[0])
                if not tok.line[: tok.start[1]].strip():
                    comment_only.add(tok.start[0])
        inside: list[ast.stmt] = []
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside += [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
        covered: dict[int, bool] = {}  # end line of an import -> whether a comment covers it
        for node in sorted(set(inside), key=lambda n: n.lineno):
            ok = (any(line in commented for line in range(node.lineno, node.end_lineno + 1))
                  or node.lineno - 1 in comment_only or covered.get(node.lineno - 1, False))
            covered[node.end_lineno] = ok
            if not ok:
                found.append(f"{path.relative_to(package.parent)}:{node.lineno}: "
                             f"{ast.get_source_segment(source, node)}")
    return found


def test_the_comment_rule_sees_what_it_must(tmp_path):
    pkg = tmp_path / "gemma_cli"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import json\n")
    (pkg / "a.py").write_text(
        "import os\n\n"
        "def f():\n    import json\n    return json\n\n"                       # no comment: offender
        "def g():\n    import re  # lazy: keeps --help fast\n\n"
        "def h():\n    # lazy: numpy, only when audio is decoded\n    import numpy\n    from PIL import (\n"
        "        Image,\n    )\n    x = 1\n    import csv\n\n"                  # csv: not in the block
        "class C:\n    def m(self):\n        x = 1  # a comment about x\n        import sys\n")
    found = uncommented_function_imports(pkg)
    assert [f.split(": ", 1)[0] for f in found] == ["gemma_cli/a.py:4", "gemma_cli/a.py:17", "gemma_cli/a.py:22"]


def test_every_import_inside_a_function_says_why():
    found = uncommented_function_imports()
    assert not found, (f"{len(found)} imports inside functions with no comment saying why (move a light one to "
                       "the module top; else say what it keeps fast or which cycle it breaks):\n" + "\n".join(found))


# ---------------------------------------------------------------------------------------------
# `--help` stays fast: no command's help loads an engine, media, server, hub or client library (they load only
# inside the commands that use them; the import of llama_cpp alone costs about a second).

HEAVY = ["llama_cpp", "numpy", "PIL", "librosa", "soundfile", "huggingface_hub", "jinja2", "starlette", "uvicorn",
         "multipart", "openai", "httpx", "httpx2", "av", "mcp"]
COMMANDS = [[], ["chat"], ["batch"], ["transcribe"], ["describe-image"], ["describe-video"], ["serve"], ["models"],
            ["models", "pull"], ["config"], ["mcp"], ["doctor"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "gemma")
def test_help_loads_no_heavy_library(command, tmp_path):
    proc, loaded = imported_by([*command, "--help"], HEAVY, home=tmp_path)
    assert "Usage" in proc.stdout and proc.stderr == "", proc.stderr
    if command and command[-1] not in ("models", "config", "mcp"):  # a command, not a group of them
        assert "Examples:" in proc.stdout
    assert loaded == [], f"gemma {' '.join(command)} --help imported {loaded}"
