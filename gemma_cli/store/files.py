"""The model store on disk; locating a model's files in it (or beside a .gguf); picking a projector,
drafter or quantization out of file names (a folder, a repo listing).

Downloaded files live in the model store, `<model_dir>/<owner>/<repo>/<file>`, so files of the
same name from different repos (every unsloth projector is `mmproj-F16.gguf`) never collide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from gemma_cli.errors import GemmaError, ModelError
from gemma_cli.store import config, paths
from gemma_cli.store.names import canonical, parse_hf
from gemma_cli.store.registry import (
    ACCESSORY,
    QUANT_TAGS,
    QUANTS,
    REGISTRY,
    File,
    ModelSpec,
    Weights,
    human_size,
    identify,
)


class ModelNotInstalled(GemmaError):
    """A registry (or `hf:`) model whose files are not downloaded yet.

    Carries what a download would fetch, so the command layer can ask on a terminal
    (name, size, destination) or print the exact pull command elsewhere.
    """

    def __init__(self, name: str, files: list[File], destination: Path, *, draft: bool = False):
        self.name = name
        self.files = files
        self.destination = destination
        self.draft = draft
        self.command = f"gemma models pull {name}" + (" --draft" if draft else "")
        super().__init__(f"model {name} is not downloaded{self._sizes()}", f"download it with: {self.command}")

    def _sizes(self) -> str:
        """The model's size as `gemma models` lists it, then what its projector or drafter adds."""
        own = sum(f.size for f in self.files if not ACCESSORY.search(f.name))
        extra = [f for f in self.files if ACCESSORY.search(f.name)]
        if not self.size:
            return ""
        if not extra:
            return f" ({human_size(self.size)})"
        what = " and ".join(dict.fromkeys("drafter" if re.search(r"mtp-|assistant|dflash", f.name, re.I) else "projector"
                                          for f in extra))
        if not own:
            return f" (its {what}: {human_size(self.size)})"
        return f" ({human_size(own)}; {human_size(self.size)} with its {what})"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def model_dir(settings: config.Settings | None = None) -> Path:
    """Where downloads go: GEMMA_MODEL_DIR > config model_dir > <user data dir>/models."""
    configured = (settings or config.load()).pick("model_dir", None)
    return Path(configured).expanduser() if configured else paths.data_dir() / "models"


def store_path(repo: str, name: str, *, root: Path | None = None) -> Path:
    return (root or model_dir()) / repo / name


def installed(f: File, *, root: Path | None = None) -> Path | None:
    """The local path of `f` (its first part) when every part is downloaded."""
    paths_ = [store_path(f.repo, n, root=root) for n in f.names()]
    return paths_[0] if all(p.is_file() for p in paths_) else None


def first_installed(files: Iterable[File], *, root: Path | None = None) -> Path | None:
    for f in files:
        p = installed(f, root=root)
        if p:
            return p
    return None


def scan_weights(w: Weights, quant: str, root: Path) -> Path | None:
    """A file of this quantization that `pull` found by listing (its pinned name had changed)."""
    for repo in dict.fromkeys(f.repo for f in w.files):
        folder = root / repo
        if not folder.is_dir():
            continue
        names = [p.relative_to(folder).as_posix() for p in folder.rglob("*.gguf")]
        found = match_quant(names, quant)
        if found and all((folder / n).is_file() for n in found):
            return folder / found[0]
    return None


@dataclass
class Located:
    """A model's files: the weights (first part), its projector and MTP drafter when found, its registry entry."""


    name: str
    path: Path
    mmproj: Path | None
    draft: Path | None
    spec: ModelSpec | None


def locate_registry(spec: ModelSpec, quant: str, *, need_mmproj: bool = False, need_draft: bool = False,
                    root: Path | None = None) -> Located:
    root = root or model_dir()
    name = canonical(spec.key, quant)
    w = spec.weights(quant)
    weights = first_installed(w.files, root=root) or scan_weights(w, quant, root)
    mmproj = first_installed(spec.mmproj_files(quant), root=root)
    draft = first_installed(spec.draft, root=root)
    missing: list[File] = []
    if weights is None:
        missing.append(w.files[0])
        if mmproj is None:  # `pull` fetches the projector with the model
            missing.append(spec.mmproj_files(quant)[0])
    elif need_mmproj and mmproj is None:
        missing.append(spec.mmproj_files(quant)[0])
    if need_draft and draft is None and spec.draft:
        missing.append(spec.draft[0])
    if missing:
        raise ModelNotInstalled(name, missing, root, draft=need_draft and draft is None and bool(spec.draft))
    return Located(name, weights, mmproj, draft, spec)


def locate_file(path: Path, *, need_mmproj: bool = False, need_draft: bool = False) -> Located:
    """A .gguf given by path, with the projector and drafter beside it when one is clearly its own."""
    if not path.is_file():
        hint = ("check the path" if path.suffix.lower() == ".gguf"
                else "give a .gguf file, a name like e4b (see `gemma models`), or hf:OWNER/REPO/FILE.gguf")
        raise ModelError(f"model file not found: {path}", hint)
    siblings = [p.name for p in path.parent.glob("*.gguf") if p != path]
    sub = [f"MTP/{p.name}" for p in (path.parent / "MTP").glob("*.gguf")] if (path.parent / "MTP").is_dir() else []
    mm = pick_mmproj(path.name, siblings)
    dr = pick_draft(path.name, siblings + sub)
    return Located(str(path), path, path.parent / mm if mm else None, path.parent / dr if dr else None,
                   identify(path.name))


def locate_hf(name: str, need_mmproj: bool = False, *, root: Path | None = None) -> Located:
    """An `hf:OWNER/REPO/FILE.gguf` in the store (its projector found as beside any file)."""
    f = parse_hf(name)
    root = root or model_dir()
    p = installed(f, root=root)
    if p is None:
        raise ModelNotInstalled(name, [f], root)
    loc = locate_file(p)
    loc.name = name
    return loc


def installed_registry(root: Path | None = None) -> list[tuple[ModelSpec, str]]:
    root = root or model_dir()
    out = []
    for spec in REGISTRY.values():
        for q in QUANTS:
            w = spec.weights(q)
            if first_installed(w.files, root=root) or scan_weights(w, q, root):
                out.append((spec, q))
    return out


def file_size(path: Path) -> int:
    """Bytes of a GGUF on disk, every part of a split one (`-00001-of-0000N`) counted."""
    path = Path(path)
    shards = sorted(path.parent.glob(re.sub(r"-00001-of-(\d{5})\.gguf$", r"-*-of-\1.gguf", path.name)))
    return sum(p.stat().st_size for p in shards) if len(shards) > 1 else path.stat().st_size


def stray_files(root: Path | None = None) -> list[Path]:
    """GGUF files in the store that no registry entry accounts for (pulled with hf:)."""
    root = root or model_dir()
    if not root.is_dir():
        return []
    known = set()
    for spec in REGISTRY.values():
        for q in QUANTS:
            for f in (*spec.weights(q).files, *spec.mmproj_files(q)):
                known.update(store_path(f.repo, n, root=root) for n in f.names())
        for f in spec.draft:
            known.update(store_path(f.repo, n, root=root) for n in f.names())
    scanned = {scan_weights(s.weights(q), q, root) for s, q in installed_registry(root)}
    return sorted(p for p in root.rglob("*.gguf") if p not in known and p not in scanned)


# ---------------------------------------------------------------------------------------------
# Picking files out of a folder or a repo listing
# ---------------------------------------------------------------------------------------------

_MMPROJ_PREFERENCE = ("bf16", "f16", "q8_0", "f32")  # same projector at several precisions


def _stem_base(model_name: str) -> str:
    """gemma-4-E4B-it-Q4_K_M.gguf -> gemma-4-e4b-it (drop the quantization suffix)."""
    stem = Path(model_name).stem.lower()
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", stem)
    return re.sub(r"[-_.](ud-)?(q\d[\w]*|iq\d[\w]*|bf16|f16|f32|mxfp4\w*|qat[\w-]*)$", "", stem)


def pick_mmproj(model_name: str, names: list[str]) -> str | None:
    """The projector for a model among sibling file names: the only one, or the one clearly its own."""
    cands = [n for n in names if "mmproj" in Path(n).name.lower()]
    if len(cands) <= 1:
        return cands[0] if cands else None
    base = _stem_base(model_name)
    own = [n for n in cands if base and base in n.lower()] or (
        cands if not any(identify(n) for n in cands) else [])
    if len(own) == 1:
        return own[0]
    return _by_precision(own)


def pick_draft(model_name: str, names: list[str]) -> str | None:
    """An MTP drafter beside a model (`mtp-…` or `…assistant…`): the only one, or the one naming the model."""
    cands = [n for n in names if re.search(r"(^|/)mtp-|assistant", n, re.IGNORECASE)]
    if len(cands) <= 1:
        return cands[0] if cands else None
    base = _stem_base(model_name).removesuffix("-it")
    own = [n for n in cands if base and base in n.lower()]
    return own[0] if len(own) == 1 else (_by_precision(own, ("q8_0", "bf16", "f16")) if own else None)


def _by_precision(names: list[str], order: tuple[str, ...] = _MMPROJ_PREFERENCE) -> str | None:
    for tag in order:
        hit = [n for n in names if re.search(rf"(?<![a-z0-9]){tag}(?![a-z0-9])", n.lower())]
        if len(hit) == 1:
            return hit[0]
    return None


def match_quant(names: list[str], quant: str) -> list[str] | None:
    """The model file (all its shards) of a quantization in a repo listing; accessories excluded.

    Prefers a plain tag over an unsloth dynamic one (Q4_K_M over UD-Q4_K_M), and a single file
    over shards.
    """
    models = [n for n in names if n.lower().endswith(".gguf") and not ACCESSORY.search(n)]
    for tag in QUANT_TAGS[quant]:
        pat = re.compile(rf"(?<![A-Za-z0-9]){re.escape(tag)}(?![A-Za-z0-9])", re.IGNORECASE)
        hits = [n for n in models if pat.search(Path(n).name)]
        if tag == "F16":  # "F16" must not be the tail of "BF16"
            hits = [n for n in hits if not re.search(r"bf16", Path(n).name, re.IGNORECASE)]
        if not hits:
            continue
        plain = [n for n in hits if "ud-" not in n.lower()] or hits
        singles = [n for n in plain if not re.search(r"-\d{5}-of-\d{5}\.gguf$", n)]
        if singles:
            return [sorted(singles, key=len)[0]]
        first = sorted(n for n in plain if "-00001-of-" in n)
        if first:
            total = re.search(r"-00001-of-(\d{5})\.gguf$", first[0])
            stem = first[0][: total.start()]
            shards = sorted(n for n in plain if n.startswith(stem) and re.search(r"-\d{5}-of-\d{5}\.gguf$", n))
            return shards
    return None

