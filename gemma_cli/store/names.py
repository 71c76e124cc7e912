"""Model names: registry names with quantizations, paths, and `hf:OWNER/REPO/FILE.gguf`.

A name is one of:
  - a registry name: `e2b`, `e4b`, `12b`, `26b`, `31b`, optionally `:q4_k_m`, `:q8_0`, `:bf16` or `:qat`;
  - a path to a `.gguf` file;
  - `hf:OWNER/REPO/FILE.gguf` for any file on the Hugging Face Hub.
"""

from __future__ import annotations

import difflib
import os
import re

from gemma_cli.errors import ModelError
from gemma_cli.store.registry import (
    DEFAULT_QUANT,
    NAMES,
    QUANT_ALIASES,
    QUANTS,
    REGISTRY,
    File,
    ModelSpec,
)


class UnknownModel(ModelError):
    """A name that is not in the registry, not a file, and not `hf:`."""


def quant_of(text: str) -> str | None:
    """A quantization as people write it (q4, Q4_K_M, f16, q4_0) -> its registry key; None if unknown."""
    return QUANT_ALIASES.get(text.strip().lower().replace("-", "_"))


def canonical(key: str, quant: str) -> str:
    return f"{key}:{quant}"


def all_names() -> list[str]:
    return [*NAMES, *(canonical(k, q) for k in NAMES for q in QUANTS)]


def split(name: str) -> tuple[ModelSpec, str | None]:
    """`e4b:q8_0` -> (spec, 'q8_0'); quant None when not given. Raises UnknownModel."""
    raw = name.strip()
    base, _, quant = raw.partition(":")
    if base.lower() in ("gemma4", "gemma-4") and quant:  # Ollama's spelling: gemma4:e4b, gemma4:26b-a4b-it-q8_0
        m = re.match(r"(e2b|e4b|12b|26b(?:-a4b)?|31b)(?:-it)?(?:-(.+))?$", quant.lower())
        base, quant = (m.group(1), m.group(2) or "") if m else (quant, "")
    key = _variant_key(base)
    if key is None:
        raise _unknown(raw)
    if not quant:
        return REGISTRY[key], None
    q = quant_of(quant)
    if q is None:
        spec = REGISTRY[key]
        raise UnknownModel(f"unknown quantization '{quant}' for {key}",
                           f"choose one of: {', '.join(canonical(spec.key, x) for x in QUANTS)}")
    return REGISTRY[key], q


def resolve(name: str, *, quant: str | None = None) -> tuple[ModelSpec, str]:
    """A registry name with its quantization settled: given > `quant` (the configured one) > q4_k_m."""
    spec, q = split(name)
    return spec, q or quant or DEFAULT_QUANT


def _variant_key(base: str) -> str | None:
    s = base.strip().lower()
    for prefix in ("gemma-4-", "gemma4-", "gemma4", "gemma-4"):
        if s.startswith(prefix):
            s = s[len(prefix):]
            break
    s = s.removesuffix("-it")
    s = {"26b-a4b": "26b", "26ba4b": "26b", "a4b": "26b", "31b-it": "31b"}.get(s, s)
    return s if s in REGISTRY else None


def _unknown(name: str) -> UnknownModel:
    close = difflib.get_close_matches(name.lower(), all_names(), n=3, cutoff=0.5)
    if not close:  # `e4` is short: also try prefixes against the bare names
        close = [n for n in NAMES if n.startswith(name.lower()[:2])][:3]
    hint = (f"did you mean {' or '.join(close)}? " if close else "") + "`gemma models` lists the names"
    return UnknownModel(f"unknown model '{name}'", hint)


def is_path_like(name: str) -> bool:
    return name.lower().endswith(".gguf") or os.sep in name or "/" in name or name.startswith((".", "~"))


def parse_hf(name: str) -> File:
    """`hf:OWNER/REPO/PATH/FILE.gguf` -> File(repo='OWNER/REPO', name='PATH/FILE.gguf')."""
    body = name[3:].strip().strip("/")
    parts = body.split("/")
    if len(parts) < 3 or not parts[-1]:
        raise ModelError(f"cannot read '{name}': expected hf:OWNER/REPO/FILE.gguf",
                         "for example hf:unsloth/gemma-4-E4B-it-GGUF/gemma-4-E4B-it-Q4_K_M.gguf")
    return File("/".join(parts[:2]), "/".join(parts[2:]), 0)

