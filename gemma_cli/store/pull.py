"""Downloading a model's files into the store (`gemma models pull`), and removing them (`rm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gemma_cli.errors import DownloadError, GemmaError, ModelError, UsageError
from gemma_cli.store import config, download
from gemma_cli.store.files import (
    Located,
    first_installed,
    installed,
    installed_registry,
    locate_hf,
    locate_registry,
    match_quant,
    model_dir,
    pick_draft,
    pick_mmproj,
    scan_weights,
    store_path,
)
from gemma_cli.store.names import canonical, is_path_like, parse_hf, resolve
from gemma_cli.store.registry import File, ModelSpec

Progress = Callable[[str, int, "int | None"], None]  # (file name, bytes done, total)


@dataclass
class PullPlan:
    name: str
    groups: list[tuple[str, tuple[File, ...]]] = field(default_factory=list)  # (what, candidates)
    spec: ModelSpec | None = None
    quant: str | None = None


def plan_pull(name: str, *, draft: bool = False, mmproj: bool = True,
              settings: config.Settings | None = None) -> PullPlan:
    """What `gemma models pull NAME` fetches: model, its projector, and with `draft` its drafter."""
    name = name.strip()
    if name.startswith("hf:"):
        return PullPlan(name, [("model", (parse_hf(name),))])
    if is_path_like(name):
        raise UsageError(f"'{name}' is a local file, nothing to download",
                         "pull takes a name like e4b or hf:OWNER/REPO/FILE.gguf")
    spec, quant = resolve(name, quant=(settings or config.load()).pick("quantization", None))
    plan = PullPlan(canonical(spec.key, quant), [("model", spec.weights(quant).files)], spec, quant)
    if mmproj:
        plan.groups.append(("projector", spec.mmproj_files(quant)))
    if draft:
        if not spec.draft:
            raise ModelError(f"no MTP drafter is published for {spec.key}", "pull without --draft")
        plan.groups.append(("drafter", spec.draft))
    return plan


def pull(name: str, *, draft: bool = False, mmproj: bool = True, progress: Progress | None = None) -> Located:
    """Download what a name needs (skipping what is already there) and return it located."""
    settings = config.load()
    plan = plan_pull(name, draft=draft, mmproj=mmproj, settings=settings)
    root = model_dir(settings)
    if plan.spec is None:  # hf: a file, plus the repo's projector when one clearly belongs to it
        f = plan.groups[0][1][0]
        if installed(f, root=root) is None:
            _fetch(f, root, progress)
        if mmproj:
            _fetch_hf_projector(f, root, progress)
        return locate_hf(plan.name, False, root=root)
    todo = [(what, cands) for what, cands in plan.groups if not _have(what, cands, plan, root)]
    if todo:  # the whole pull, before the first byte: a model must not fill the disk half-way
        download.check_space(root, sum(_to_fetch(cands[0], root) for _, cands in todo), plan.name)
    for what, cands in todo:
        _fetch_first(what, cands, plan.quant, root, progress)
    return locate_registry(plan.spec, plan.quant, need_mmproj=mmproj, need_draft=draft, root=root)


def _to_fetch(f: File, root: Path) -> int:
    """Bytes still to download for `f`, by the Hub's sizes (0 where it cannot say: fetch() will)."""
    total = 0
    for n in f.names():
        try:
            size = download.metadata(f.repo, n).size or 0
        except DownloadError:  # not there (the next candidate is tried), offline, refused: fetch() says so
            return 0
        part = download.partial(store_path(f.repo, n, root=root))
        total += max(0, size - (part.stat().st_size if part.is_file() else 0))
    return total


def _have(what: str, cands: tuple[File, ...], plan: PullPlan, root: Path) -> bool:
    if first_installed(cands, root=root):
        return True
    return what == "model" and bool(scan_weights(plan.spec.weights(plan.quant), plan.quant, root))


def _fetch_first(what: str, cands: tuple[File, ...], quant: str | None, root: Path, progress) -> Path:
    """The first candidate the Hub has; if none, the file with the same tag found by listing."""
    for f in cands:
        try:
            return _fetch(f, root, progress)
        except download.FileMissing:
            continue
    for repo in dict.fromkeys(f.repo for f in cands):
        try:
            names = download.list_files(repo)
        except download.FileMissing:
            continue
        if what == "model" and quant:
            found = match_quant(names, quant)
        elif what == "projector":
            one = pick_mmproj(cands[0].name, names)
            found = [one] if one else None
        else:
            one = pick_draft(cands[0].name, names)
            found = [one] if one else None
        if found:
            return _fetch_names(repo, found, root, progress)
    tried = ", ".join(f.ref for f in cands)
    raise ModelError(f"no {what} file found on the Hub (tried {tried})",
                     "the publisher may have renamed it; use hf:OWNER/REPO/FILE.gguf with the new name")


def _fetch(f: File, root: Path, progress) -> Path:
    return _fetch_names(f.repo, f.names(), root, progress)


def _fetch_names(repo: str, names: list[str], root: Path, progress) -> Path:
    first = None
    for n in names:
        dest = store_path(repo, n, root=root)
        cb = (lambda done, total, _n=n: progress(_n, done, total)) if progress else None
        download.fetch(repo, n, dest, progress=cb)
        first = first or dest
    return first


def _fetch_hf_projector(f: File, root: Path, progress) -> None:
    try:
        names = download.list_files(f.repo)
    except GemmaError:
        return  # the projector is optional: the model itself is already here
    top = [n for n in names if "/" not in n or n.rsplit("/", 1)[0] == f.name.rpartition("/")[0]]
    one = pick_mmproj(Path(f.name).name, [n for n in top if n != f.name])
    if one and installed(File(f.repo, one, 0), root=root) is None:
        _fetch(File(f.repo, one, 0), root, progress)


# ---------------------------------------------------------------------------------------------
# Removing
# ---------------------------------------------------------------------------------------------


def remove(name: str) -> list[Path]:
    """Delete a model's downloaded files (and unfinished parts); a projector or drafter only when no
    other installed quantization of the variant still uses it. Returns what was deleted."""
    settings = config.load()
    root = model_dir(settings)
    name = name.strip()
    if name.startswith("hf:"):
        f = parse_hf(name)
        targets = [store_path(f.repo, n, root=root) for n in f.names()]
    elif is_path_like(name):
        p = Path(name).expanduser().resolve()
        if root.resolve() not in p.parents:
            raise ModelError(f"{p} is not in the model store ({root})", "delete files outside the store yourself")
        targets = [p]
    else:
        spec, quant = resolve(name, quant=settings.pick("quantization", None))
        w = spec.weights(quant)
        targets = [store_path(f.repo, n, root=root) for f in w.files for n in f.names()]
        found = scan_weights(w, quant, root)
        if found:
            targets.append(found)
        others = [q for s, q in installed_registry(root) if s is spec and q != quant]
        shared = {installed(f, root=root) for q in others for f in (*spec.mmproj_files(q), *spec.draft)}
        for f in (*spec.mmproj_files(quant), *spec.draft):
            p = installed(f, root=root)
            if p and p not in shared:
                targets.append(p)
    deleted = []
    for t in dict.fromkeys(targets):
        for p in (t, t.with_name(t.name + ".part"), t.with_name(t.name + ".part.json")):
            if p.is_file():
                p.unlink()
                deleted.append(p)
    if not deleted:
        raise ModelError(f"{name} is not downloaded", "`gemma models` lists what is installed")
    _prune_empty(root, [d.parent for d in deleted])
    return deleted


def _prune_empty(root: Path, dirs: list[Path]) -> None:
    for d in dirs:
        while d != root and root in d.parents:
            try:
                d.rmdir()
            except OSError:
                break
            d = d.parent

