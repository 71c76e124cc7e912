"""Example tools for `gemma chat --tools examples/tools.py`.

Each public top-level function becomes a tool the model can call; its type hints and
docstring become the declaration. gemma asks before running each call (unless --yes).
These are safe: they read the clock, do arithmetic, and look at file names.
"""

from __future__ import annotations

import ast
import datetime as _dt
import operator as _op
from pathlib import Path
from zoneinfo import ZoneInfo


def current_time(timezone: str = "UTC") -> dict:
    """Get the current date and time.

    Args:
        timezone: An IANA time zone name such as Europe/Paris or Asia/Tokyo.
    """
    now = _dt.datetime.now(ZoneInfo(timezone))
    return {"timezone": timezone, "iso": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A")}


_OPS = {ast.Add: _op.add, ast.Sub: _op.sub, ast.Mult: _op.mul, ast.Div: _op.truediv, ast.Pow: _op.pow,
        ast.Mod: _op.mod, ast.USub: _op.neg, ast.UAdd: _op.pos}


def calculate(expression: str) -> dict:
    """Evaluate an arithmetic expression exactly (numbers, + - * / ** % and parentheses only).

    Args:
        expression: The expression, for example (2 + 3) * 7.
    """
    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError("only numbers and + - * / ** % are allowed")

    return {"expression": expression, "value": ev(ast.parse(expression, mode="eval").body)}


def list_files(folder: str = ".", pattern: str = "*") -> list[str]:
    """List file names in a folder (names only; nothing is read).

    Args:
        folder: The folder to look in.
        pattern: A glob pattern such as *.txt.
    """
    return sorted(p.name for p in Path(folder).expanduser().glob(pattern))[:200]
