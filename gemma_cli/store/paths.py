"""Where gemma keeps its files. `GEMMA_HOME` puts everything under one folder (tests use it)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "gemma-cli"


def _home() -> Path | None:
    home = os.environ.get("GEMMA_HOME")
    return Path(home).expanduser() if home else None


def config_dir() -> Path:
    home = _home()
    if home:
        return home / "config"
    return Path(platformdirs.user_config_dir(APP))


def data_dir() -> Path:
    home = _home()
    if home:
        return home / "data"
    return Path(platformdirs.user_data_dir(APP))


def conversations_dir() -> Path:
    return data_dir() / "conversations"


def last_conversation() -> Path:
    """The autosaved conversation `gemma chat --continue` resumes."""
    return conversations_dir() / "last.json"


def history_file() -> Path:
    """Up-arrow history of the interactive chat, kept across sessions."""
    return data_dir() / "chat_history"


def cache_dir() -> Path:
    home = _home()
    if home:
        return home / "cache"
    return Path(platformdirs.user_cache_dir(APP))


def prompt_cache_dir() -> Path:
    """The prompt cache on disk (engine.disk): sequence states of earlier prompts, `gemma cache`'s."""
    return cache_dir() / "prompts"


def mcp_config() -> Path:
    """The MCP servers `gemma chat` starts (`{"mcpServers": {...}}`, the Claude Desktop / Cursor form)."""
    return config_dir() / "mcp.json"


def mcp_logs() -> Path:
    """Where each MCP server's stderr goes (one file per server)."""
    return cache_dir() / "mcp-logs"
