"""Tools the model may call: declarations from a Python file or a JSON file, and running them.

`--tools FILE.py`: the file's own top-level functions (not imported ones, not `_private`)
become Gemma 4 tool declarations from their type hints and docstrings. Loading the file
runs it, which the user asked for by naming it; each call is still confirmed unless `--yes`.
`--tools FILE.json`: OpenAI-style declarations only; calls are shown, never run.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gemma_cli.errors import GemmaError

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


@dataclass
class ToolOutcome:
    """A call's result with what the host knows about it (MCP: the server, the error, the time)."""

    value: Any
    server: str | None = None
    error: str | None = None
    seconds: float = 0.0
    images: list[str] = field(default_factory=list)  # data URLs the model should see with the result
    arguments: Any = None


@dataclass
class Toolbox:
    declarations: list[dict] = field(default_factory=list)
    functions: dict[str, Callable] = field(default_factory=dict)  # empty for JSON declarations

    @property
    def runnable(self) -> bool:
        return bool(self.functions)

    def serves(self, name: str) -> bool:
        return name in self.functions

    def run(self, name: str, arguments: Any) -> Any:
        """Call a tool; errors become an error result for the model, not an exception."""
        fn = self.functions.get(name)
        if fn is None:
            return {"error": f"unknown tool {name!r}; available: {', '.join(self.functions) or 'none'}"}
        try:
            if isinstance(arguments, dict):
                return fn(**arguments)
            if isinstance(arguments, list):
                return fn(*arguments)
            return fn()
        except Exception as e:  # noqa: BLE001 - the model should see what went wrong
            return {"error": f"{type(e).__name__}: {e}"}


def load(path: str | Path) -> Toolbox:
    path = Path(path)
    if not path.is_file():
        raise GemmaError(f"tools file not found: {path}", "pass a .py file of functions or a .json file of declarations")
    if path.suffix == ".json":
        return Toolbox(declarations=_load_json(path))
    if path.suffix == ".py":
        return _load_python(path)
    raise GemmaError(f"{path}: tools come from a .py or .json file", "rename the file or convert it")


def _load_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GemmaError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})", "fix the file") from None
    except RecursionError:
        raise GemmaError(f"{path} is not valid JSON (nested too deeply)", "fix the file") from None
    except UnicodeDecodeError as e:
        raise GemmaError(f"tools file {path} is not UTF-8 text (byte {e.start})", "save it as UTF-8") from None
    items = data.get("tools", data) if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
        raise GemmaError(f"{path}: expected a list of tool declarations", '[{"type": "function", "function": {...}}]')
    return [t if "function" in t else {"type": "function", "function": t} for t in items]


def _load_python(path: Path) -> Toolbox:
    spec = importlib.util.spec_from_file_location(f"gemma_tools_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:  # sys.exit() at import must not end gemma with the file's status and no word
        raise GemmaError(f"{path} failed to load: SystemExit({e.code!r})",
                         "a tools file should only define functions; run it with python to see why it exits") from None
    except Exception as e:  # noqa: BLE001 - the user's file failed to import
        raise GemmaError(f"{path} failed to load: {type(e).__name__}: {e}", "run it with python to see the error") from None
    functions = {
        name: fn
        for name, fn in vars(module).items()
        if isinstance(fn, types.FunctionType) and not name.startswith("_") and fn.__module__ == module.__name__
    }
    if not functions:
        raise GemmaError(f"{path} defines no public top-level functions", "define functions like `def get_weather(city: str) -> dict:`")
    return Toolbox([declare(fn) for fn in functions.values()], functions)


def declare(fn: Callable) -> dict:
    """An OpenAI-style declaration of `fn` from its signature, hints and docstring."""
    summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
    hints = typing.get_type_hints(fn)
    properties, required = {}, []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        prop = schema_of(hints.get(name, str))
        if name in arg_docs:
            prop["description"] = arg_docs[name]
        properties[name] = prop
        if param.default is inspect.Parameter.empty:
            required.append(name)
    parameters: dict = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return {"type": "function", "function": {"name": fn.__name__, "description": summary, "parameters": parameters}}


def schema_of(hint: Any) -> dict:
    """JSON Schema for a type hint (str, int, float, bool, list[X], dict, Optional[X], Literal[...])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {"type": _JSON_TYPES.get(type(args[0]), "string"), "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        schema = schema_of(rest[0]) if len(rest) == 1 else {"type": "string"}
        if len(rest) < len(args):
            schema["nullable"] = True
        return schema
    if origin in (list, tuple, set, frozenset):
        return {"type": "array", "items": schema_of(args[0]) if args else {"type": "string"}}
    if origin is dict:
        return {"type": "object"}
    return {"type": _JSON_TYPES.get(hint, "string")}


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary paragraph and per-argument text (Google `Args:` or Sphinx `:param x:` style)."""
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    args: dict[str, str] = {}
    for m in re.finditer(r":param\s+(?:\w+\s+)?(\w+):\s*(.+)", doc):
        args[m.group(1)] = m.group(2).strip()
    section = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.+\n?)+)", doc, re.M)
    if section:
        for m in re.finditer(r"^\s+(\w+)(?:\s*\([^)]*\))?:\s*(.+)$", section.group(1), re.M):
            args.setdefault(m.group(1), m.group(2).strip())
    return summary, args


def result_text(value: Any) -> Any:
    """A tool's return value as the template wants it: a mapping, or a string."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:
        return str(value)
