"""Settings: flags > GEMMA_* environment > the YAML config file > defaults.

The file lives in the platform's user config folder (`gemma config path`); GEMMA_CONFIG names
another file (tests use it), GEMMA_HOME moves every gemma folder at once. Each key has an
environment twin, GEMMA_<KEY> (GEMMA_TEMPERATURE=0.7). A typo in the file is an error with its
line number rather than a setting silently ignored.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from gemma_cli.errors import ConfigError
from gemma_cli.store import names, paths
from gemma_cli.store.registry import QUANTS


@dataclass(frozen=True)
class Key:
    kind: str  # str | int | float | quant | model | path | url
    default: object
    help: str
    lo: float | None = None
    hi: float | None = None
    nullable: bool = True


KEYS: dict[str, Key] = {
    "model": Key("model", None, "default model: a name (e4b, 31b:q8_0), a .gguf path or hf:OWNER/REPO/FILE.gguf"),
    "quantization": Key("quant", None, "quantization when a name gives none: q4_k_m, q8_0, bf16 or qat"),
    "ctx": Key("int", 8192, "context window in tokens (null: the engine chooses)", lo=64),
    "threads": Key("int", None, "CPU threads (null: physical cores)", lo=1),
    "gpu_layers": Key("int", None, "layers on the GPU: -1 all, 0 none (null: chosen from free VRAM)", lo=-1),
    "temperature": Key("float", 1.0, "sampling temperature (0 = greedy)", lo=0.0, nullable=False),
    "top_p": Key("float", 0.95, "nucleus sampling", lo=0.0, hi=1.0, nullable=False),
    "top_k": Key("int", 64, "top-k sampling (0 = off)", lo=0, nullable=False),
    "seed": Key("int", None, "random seed for repeatable output (null: random)"),
    "max_tokens": Key("int", None, "most tokens per answer (null: the engine's limit)", lo=1),
    "model_dir": Key("path", None, "where downloaded models are kept (null: the user data folder)"),
    "endpoint": Key("url", None, "Hugging Face Hub endpoint or mirror for downloads (HF_ENDPOINT also works)"),
}

_NULLS = ("", "null", "none", "~")


def env_name(key: str) -> str:
    return "GEMMA_" + key.upper()


def path() -> Path:
    """The config file: GEMMA_CONFIG, else <user config dir>/config.yaml."""
    override = os.environ.get("GEMMA_CONFIG")
    if override:
        return Path(override).expanduser()
    return paths.config_dir() / "config.yaml"


def _unknown_key(key: str, where: str, file: Path | None = None) -> ConfigError:
    close = difflib.get_close_matches(key, KEYS, n=1)
    hint = (f"did you mean '{close[0]}'? " if close else "") + f"known keys: {', '.join(KEYS)}"
    if file is not None:
        hint += f"; fix {file}, or remove the line with `gemma config unset {key}`"
    return ConfigError(f"unknown key '{key}' {where}", hint)


def check(key: str, value: object, where: str) -> object:
    """A value from YAML (already typed) or from `parse`, validated; raises ConfigError naming `where`."""
    spec = KEYS[key]
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"{key} {where} must be set, not null", f"for example {key}: {spec.default}")
    kind = spec.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} {where} must be a whole number, not {value!r}", f"for example {key}: {spec.default or 1}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} {where} must be a number, not {value!r}", f"for example {key}: {spec.default}")
        value = float(value)
    else:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and kind == "model":
            value = str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key} {where} must be text, not {value!r}", spec.help)
    if spec.lo is not None and value < spec.lo or spec.hi is not None and value > spec.hi:
        bounds = f"at least {spec.lo:g}" if spec.hi is None else f"between {spec.lo:g} and {spec.hi:g}"
        raise ConfigError(f"{key} {where} must be {bounds}, not {value!r}", spec.help)
    if kind == "quant":
        q = names.quant_of(value)
        if q is None:
            raise ConfigError(f"quantization {where} must be one of {', '.join(QUANTS)}, not {value!r}", spec.help)
        value = q
    elif kind == "model":
        if not (value.startswith("hf:") or names.is_path_like(value)):
            try:
                names.split(value)
            except names.UnknownModel as e:
                raise ConfigError(f"model {where}: {e.message}", e.hint) from None
    elif kind == "url" and not re.match(r"https?://[^/\s]+", value):
        raise ConfigError(f"endpoint {where} must be an http(s) URL, not {value!r}", "for example https://huggingface.co")
    return value


def parse(key: str, raw: str, where: str) -> object:
    """A value typed as text (environment, `gemma config set`)."""
    if key not in KEYS:
        raise _unknown_key(key, where)
    spec = KEYS[key]
    text = raw.strip()
    if text.lower() in _NULLS:
        return check(key, None, where)
    if key == "gpu_layers" and text.lower() in ("all", "auto"):
        return -1 if text.lower() == "all" else None
    value: object = text
    if spec.kind == "int":
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{key} {where} must be a whole number, not {raw!r}", spec.help) from None
    elif spec.kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{key} {where} must be a number, not {raw!r}", spec.help) from None
    return check(key, value, where)


class Settings:
    """The merged settings; `pick(key, flag)` applies the precedence."""

    def __init__(self, file_values: dict, file: Path):
        self.file = file
        self.file_values = file_values
        self.env_values: dict = {}
        for key in KEYS:
            raw = os.environ.get(env_name(key))
            if raw is not None:
                self.env_values[key] = parse(key, raw, f"in {env_name(key)}")

    def pick(self, key: str, flag: object = None) -> object:
        """The flag if given, else GEMMA_<KEY>, else the file, else the default."""
        if key not in KEYS:
            raise KeyError(key)
        if flag is not None:
            return flag
        return self.get(key)

    def get(self, key: str) -> object:
        if key in self.env_values:
            return self.env_values[key]
        if key in self.file_values:
            return self.file_values[key]
        return KEYS[key].default

    def source(self, key: str) -> str:
        if key in self.env_values:
            return f"env {env_name(key)}"
        if key in self.file_values:
            return "file"
        return "default"

    def as_dict(self) -> dict:
        return {k: self.get(k) for k in KEYS}


def load() -> Settings:
    file = path()
    return Settings(_read(file), file)


def _read(file: Path) -> dict:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except IsADirectoryError:
        raise ConfigError(f"{file} is a folder, not a config file", "remove it, or set GEMMA_CONFIG to a file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {file}: {e.strerror}", "check its permissions, or set GEMMA_CONFIG") from None
    except UnicodeDecodeError as e:
        line = text_line(file.read_bytes(), e.start)
        raise ConfigError(f"{file} is not UTF-8 text (line {line}, byte {e.start})",
                          f"save {file} as UTF-8, or fix that line with `gemma config set KEY VALUE`") from None
    if not text.strip():
        return {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"invalid YAML in {file}{line}: {problem}",
                          f"fix {file} (it holds lines like 'temperature: 0.7'); `gemma config set` and "
                          "`gemma config unset` still edit it") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{file} must hold 'key: value' lines, not a {type(data).__name__}",
                          "for example: temperature: 0.7")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
    out = {}
    for key, value in data.items():
        where = f"in {file}, line {lines.get(str(key), '?')}"
        if key not in KEYS:
            raise _unknown_key(str(key), where, file)
        out[key] = check(key, value, where)
    return out


def text_line(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def problem(file: Path | None = None) -> str | None:
    """What is wrong with the config file (None when it loads), as one line."""
    try:
        _read(file or path())
    except ConfigError as e:
        return e.message
    return None


def set_value(key: str, raw: str) -> tuple[Path, object]:
    """Validate and write one key, keeping the file's other lines and comments.

    A file with a problem elsewhere (bad YAML, an unknown key, not UTF-8) is still edited line
    by line, so the command that fixes it is never locked out; `problem()` says what is left.
    """
    file = path()
    value = parse(key, raw, "(gemma config set)")
    _write_line(file, key, value)
    return file, value


def unset(key: str) -> Path:
    """Remove one key's line; an unknown key too, when the file has it (that is how a typo is fixed)."""
    file = path()
    if key not in KEYS and not _has_line(file, key):
        raise _unknown_key(key, "(gemma config unset)")
    _write_line(file, key, None, remove=True)
    return file


def _lines(file: Path) -> list[str]:
    # surrogateescape: bytes that are not UTF-8 survive an edit of another line unchanged
    return file.read_text(encoding="utf-8", errors="surrogateescape").splitlines() if file.is_file() else []


def _has_line(file: Path, key: str) -> bool:
    pattern = re.compile(rf"^{re.escape(key)}\s*:")
    return any(pattern.match(ln) for ln in _lines(file))


def _write_line(file: Path, key: str, value: object, *, remove: bool = False) -> None:
    lines = _lines(file)
    rendered = yaml.safe_dump({key: value}, default_flow_style=False, allow_unicode=True).strip()
    pattern = re.compile(rf"^{re.escape(key)}\s*:")
    hit = [i for i, ln in enumerate(lines) if pattern.match(ln)]
    if hit:
        if remove:
            del lines[hit[0]]
        else:
            lines[hit[0]] = rendered
    elif not remove:
        lines.append(rendered)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8", errors="surrogateescape")
    os.replace(tmp, file)
