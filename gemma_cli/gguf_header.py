"""Read a GGUF file's metadata without loading its weights (pure Python, fast).

`--print-prompt` and error messages need the architecture, the chat template and the
BOS/EOS token texts; reading them here avoids importing llama.cpp or mapping tensors.
Large arrays (the 262K-entry vocabulary) are not read: only their place in the file is
kept, and single entries are looked up on demand.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from gemma_cli.errors import ModelError

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_SMALL_ARRAY = 64  # arrays longer than this are indexed lazily


@dataclass
class LazyArray:
    """A large metadata array left in the file: its type, length and offset."""

    item_type: int
    count: int
    offset: int


@dataclass
class Header:
    path: Path
    version: int
    n_tensors: int
    meta: dict = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.meta.get("general.architecture", ""))

    @property
    def chat_template(self) -> str | None:
        return self.meta.get("tokenizer.chat_template")

    def get(self, key: str, default=None):
        return self.meta.get(key, default)

    def token_text(self, token_id: int | None) -> str:
        """The text of one vocabulary entry, read from the file on demand ('' if unknown)."""
        tokens = self.meta.get("tokenizer.ggml.tokens")
        if token_id is None or token_id < 0:
            return ""
        if isinstance(tokens, list):
            return tokens[token_id] if token_id < len(tokens) else ""
        if not isinstance(tokens, LazyArray) or tokens.item_type != _STRING or token_id >= tokens.count:
            return ""
        with open(self.path, "rb") as f:
            f.seek(tokens.offset)
            for _ in range(token_id):
                (n,) = struct.unpack("<Q", f.read(8))
                f.seek(n, 1)
            return _read_string(f)


def read_header(path: str | Path) -> Header:
    """Parse the GGUF header of `path`; ModelError for a missing, foreign or truncated file."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}", "check the path, or see `gemma models` for installed models")
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not a GGUF model file", "pass the .gguf file inside it")
    try:
        with open(path, "rb") as f:
            return _parse(f, path)
    except (struct.error, EOFError, UnicodeDecodeError) as e:
        raise ModelError(
            f"{path} is truncated or damaged (its GGUF header ends early: {e})",
            "download the model again (`gemma models pull NAME`)",
        ) from None
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}", "check the file's permissions") from None


def _parse(f, path: Path) -> Header:
    magic = f.read(4)
    if magic != MAGIC:
        raise ModelError(
            f"{path} is not a GGUF model file (it starts with {magic!r}, not b'GGUF')",
            "gemma runs GGUF files; convert other formats with llama.cpp's convert_hf_to_gguf.py",
        )
    version, n_tensors, n_kv = struct.unpack("<IQQ", _read_exact(f, 20))
    if version < 2:
        raise ModelError(f"{path} is GGUF version {version}, too old for llama.cpp", "download a current GGUF of the model")
    header = Header(path=path, version=version, n_tensors=n_tensors)
    for _ in range(n_kv):
        key = _read_string(f)
        (value_type,) = struct.unpack("<I", _read_exact(f, 4))
        header.meta[key] = _read_value(f, value_type)
    return header


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError("unexpected end of file")
    return data


def _read_string(f) -> str:
    (n,) = struct.unpack("<Q", _read_exact(f, 8))
    return _read_exact(f, n).decode("utf-8", errors="replace")


def _read_value(f, value_type: int):
    if value_type in _SCALARS:
        fmt = _SCALARS[value_type]
        return struct.unpack(fmt, _read_exact(f, struct.calcsize(fmt)))[0]
    if value_type == _STRING:
        return _read_string(f)
    if value_type == _ARRAY:
        item_type, count = struct.unpack("<IQ", _read_exact(f, 12))
        if count <= _SMALL_ARRAY:
            return [_read_value(f, item_type) for _ in range(count)]
        lazy = LazyArray(item_type, count, f.tell())
        _skip_array(f, item_type, count)
        return lazy
    raise struct.error(f"unknown metadata value type {value_type}")


def _skip_array(f, item_type: int, count: int) -> None:
    if item_type in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[item_type]) * count, 1)
        return
    for _ in range(count):
        if item_type == _STRING:
            (n,) = struct.unpack("<Q", _read_exact(f, 8))
            f.seek(n, 1)
        else:
            _read_value(f, item_type)
