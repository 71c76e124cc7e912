"""Conversation files: OpenAI chat format plus our own settings.

`{"messages": [...], "tools": [...], "settings": {...}, "model": "..."}`. Files written by
other tools load too: string or list content (`text`, `image_url`, `video_url`, `input_audio` parts),
assistant `tool_calls` (arguments as JSON strings or objects) and `reasoning_content`,
`tool` messages with `tool_call_id`. Loading normalizes them to the shape the Gemma 4
prompt builder (and the official template) reads, as vLLM and transformers do.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gemma_cli.errors import GemmaError

ROLES = {"system", "developer", "user", "assistant", "tool"}


@dataclass
class Conversation:
    messages: list[dict] = field(default_factory=list)
    tools: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    model: str | None = None

    def to_json(self) -> dict:
        data: dict = {"messages": to_openai(self.messages)}
        if self.tools:
            data["tools"] = self.tools
        if self.settings:
            data["settings"] = self.settings
        if self.model:
            data["model"] = self.model
        return data


def load(path: str | Path) -> Conversation:
    """Read a conversation file; a one-line error names the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GemmaError(f"conversation file not found: {path}", "check the path (`/save FILE` writes one)") from None
    except json.JSONDecodeError as e:
        raise GemmaError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})",
                         'a conversation file is {"messages": [...]}') from None
    except RecursionError:
        raise GemmaError(f"{path} is not valid JSON (nested too deeply)", 'a conversation file is {"messages": [...]}') from None
    except (OSError, UnicodeDecodeError) as e:
        raise GemmaError(f"cannot read {path}: {e}", "check the file") from None
    if isinstance(data, list):  # a bare list of messages
        data = {"messages": data}
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise GemmaError(f"{path} has no \"messages\" list", 'a conversation file is {"messages": [...]}')
    messages = [normalize_message(m, path, i) for i, m in enumerate(data["messages"])]
    return Conversation(messages, list(data.get("tools") or []), dict(data.get("settings") or {}), data.get("model"))


def save(conversation: Conversation, path: str | Path) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".conversation-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(conversation.to_json(), f, ensure_ascii=False, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def normalize_message(message: dict, source: Path | str = "conversation", index: int = 0) -> dict:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        role = message.get("role") if isinstance(message, dict) else type(message).__name__
        raise GemmaError(f"{source}: message {index + 1} has an unknown role {role!r}",
                         f"roles are {', '.join(sorted(ROLES))}")
    out = dict(message)
    where = f"{source}: message {index + 1}"
    if isinstance(out.get("content"), list):
        if not all(isinstance(p, (str, dict)) for p in out["content"]):
            raise GemmaError(f"{where}'s content list holds something other than text and content parts",
                             'content is a string, or a list of parts like {"type": "text", "text": "…"}')
        out["content"] = [_normalize_part(p) for p in out["content"]]
    if out.get("tool_calls"):
        calls = out["tool_calls"]
        if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function") or {}, dict)
                                                  for c in calls):
            raise GemmaError(f"{where}'s tool_calls is not a list of calls",
                             'each call is {"type": "function", "function": {"name": …, "arguments": …}}')
        out["tool_calls"] = [_normalize_call(c) for c in calls]
    return out


def _normalize_part(part) -> dict:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    kind = part.get("type")
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return {"type": "image", "url": url}
    if kind == "video_url":  # as vLLM takes video
        url = part.get("video_url")
        url = url.get("url") if isinstance(url, dict) else url
        return {"type": "video", "url": url}
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        return {"type": "audio", "data": audio.get("data"), "format": audio.get("format")}
    return dict(part)


def _normalize_call(call: dict) -> dict:
    # OpenAI sends arguments as a JSON string; the Gemma 4 template formats a mapping.
    call = dict(call)
    function = dict(call.get("function") or {})
    args = function.get("arguments")
    if isinstance(args, str):
        try:
            parsed = json.loads(args) if args.strip() else {}
            if isinstance(parsed, dict):
                function["arguments"] = parsed
        except (json.JSONDecodeError, RecursionError):
            pass  # keep the raw text: the template writes it as it is
    call["function"] = function
    call.setdefault("type", "function")
    return call


def to_openai(messages: list[dict]) -> list[dict]:
    """Messages as OpenAI clients expect them (tool-call arguments as JSON strings)."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": _json_args(c["function"].get("arguments"))}}
                for c in m["tool_calls"]
            ]
        out.append(m)
    return out


def _json_args(args) -> str:
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
