"""Fetching files from the Hugging Face Hub: resumable, checked, and plain about failures.

The file's metadata comes from `huggingface_hub.get_hf_file_metadata` (a HEAD on the resolve
URL: size, ETag = the LFS sha256, commit, CDN location), the bytes from a streamed GET on
huggingface_hub's own HTTP session (its proxies, headers and user agent). We do not use
`hf_hub_download` for the bytes because, in huggingface_hub 2.x, it
  - deletes its partial file when interrupted, so a Ctrl-C on a 20 GB download starts over,
  - checks only the size, not the sha256, of what it wrote,
  - hands xet-stored repos to hf-xet, which needs the Hub's xet service: a plain HTTP mirror
    (HF_ENDPOINT) or our test server could not serve it. The resolve URL still answers a plain
    GET (the Hub redirects it to a CDN that honours Range), which is all we need.

A download writes `<file>.part` (plus `<file>.part.json`, the remote version it belongs to) and
renames it into place only after the sha256 matched, so a file in the store is a verified file.
Environment: HF_TOKEN (sent as a bearer token), HF_HUB_OFFLINE=1 (never touch the network),
HF_ENDPOINT or GEMMA_ENDPOINT (a mirror). They are read at call time, not at import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from gemma_cli.errors import DownloadError
from gemma_cli.store import config
from gemma_cli.store.registry import human_size

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
RETRIES = 5  # network drops in a row before giving up (each resumes where the last stopped)
RETRY_WAIT = 1.0  # seconds before the first retry, doubled after each
SPACE_MARGIN = 64 << 20  # keep a little room so the disk is never filled to the last byte
_TRUE = ("1", "true", "yes", "on")

ProgressFn = Callable[[int, "int | None"], None]  # (bytes done, total bytes or None)


class FileMissing(DownloadError):
    """The repo, revision or file is not on the Hub (so a caller may try another candidate)."""


@dataclass
class Remote:
    repo: str
    filename: str
    url: str  # where the bytes are (the CDN location when the Hub redirects)
    size: int | None
    etag: str
    commit: str | None
    headers: dict = field(default_factory=dict)
    revision: str = "main"

    @property
    def sha256(self) -> str | None:
        return self.etag if re.fullmatch(r"[0-9a-f]{64}", self.etag) else None

    @property
    def git_sha1(self) -> str | None:
        """Small files outside LFS: the ETag is the git blob id, sha1 of 'blob <size>\\0' + bytes."""
        return self.etag if re.fullmatch(r"[0-9a-f]{40}", self.etag) else None


def endpoint() -> str:
    """GEMMA_ENDPOINT > HF_ENDPOINT > config `endpoint` > https://huggingface.co."""
    settings = config.load()
    if settings.source("endpoint").startswith("env") and settings.get("endpoint"):
        return str(settings.get("endpoint")).rstrip("/")
    if os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"].rstrip("/")
    return str(settings.get("endpoint") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _token() -> str | None:
    # None lets huggingface_hub fall back to a token saved by `hf auth login`.
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _host(url: str) -> str:
    return urlparse(url).netloc or url


def _version() -> str:
    try:
        return version("gemma-cli")
    except Exception:  # noqa: BLE001 - a source checkout has no metadata; the user agent can do without
        return "dev"


def _offline_error(what: str, dest: Path | None = None) -> DownloadError:
    where = f", or put the file at {dest}" if dest else ""
    return DownloadError(f"{what} is not downloaded and HF_HUB_OFFLINE is set",
                         f"unset HF_HUB_OFFLINE to download it{where}")


def _mapped(e: BaseException, repo: str, filename: str | None) -> DownloadError:
    """A huggingface_hub or HTTP exception as one line the user can act on."""
    # lazy: the Hub's clients (httpx2, huggingface_hub) load when gemma talks to the Hub, not at every start
    import httpx2
    from huggingface_hub import errors as hf

    ep = endpoint()
    what = f"{repo}/{filename}" if filename else repo
    if isinstance(e, hf.GatedRepoError):
        return DownloadError(f"{repo} is gated: its license must be accepted first",
                             f"accept it at {ep}/{repo}, then set HF_TOKEN to a read token from {ep}/settings/tokens")
    if isinstance(e, hf.RepositoryNotFoundError):
        return FileMissing(f"{repo}: no such repository on {_host(ep)} (or it is private)",
                           "check the name; for a private repo set HF_TOKEN")
    if isinstance(e, (hf.RevisionNotFoundError, hf.EntryNotFoundError)):
        return FileMissing(f"{what}: no such file on {_host(ep)}", "check the file name on the repo's page")
    if isinstance(e, hf.OfflineModeIsEnabled):
        return _offline_error(what)
    if isinstance(e, hf.HfHubHTTPError):
        status = e.response.status_code if e.response is not None else "?"
        if status in (401, 403):
            return DownloadError(f"{_host(ep)} refused {what} (HTTP {status})",
                                 "set HF_TOKEN to a token that can read this repo")
        return DownloadError(f"{_host(ep)} answered HTTP {status} for {what}", "try again in a moment")
    if isinstance(e, httpx2.TimeoutException):
        return DownloadError(f"{_host(ep)} did not answer in time for {what}",
                             "check your connection; HF_ENDPOINT can point at a mirror")
    if isinstance(e, httpx2.TransportError):
        return DownloadError(f"cannot reach {_host(ep)}: {e}",
                             "check your connection; HF_ENDPOINT can point at a mirror; HF_HUB_OFFLINE=1 uses installed models only")
    return DownloadError(f"download of {what} failed: {type(e).__name__}: {e}", "run the same command again")


def metadata(repo: str, filename: str, *, revision: str = "main") -> Remote:
    """What the Hub says about one file (size, sha256, where to GET it), without its bytes."""
    if offline():
        raise _offline_error(f"{repo}/{filename}")
    # lazy: the Hub's clients (httpx2, huggingface_hub) load when gemma talks to the Hub, not at every start
    import httpx2
    from huggingface_hub import errors as hf
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    ep = endpoint()
    url = hf_hub_url(repo, filename, revision=revision, endpoint=ep)
    headers = build_hf_headers(token=_token(), library_name="gemma-cli", library_version=_version())
    try:
        meta = get_hf_file_metadata(url, headers=headers, endpoint=ep, token=_token())
    except (hf.HfHubHTTPError, hf.OfflineModeIsEnabled, httpx2.HTTPError) as e:
        raise _mapped(e, repo, filename) from None
    if not meta.etag or not meta.commit_hash:
        raise DownloadError(f"{_host(ep)} sent no ETag/X-Repo-Commit for {repo}/{filename}",
                            "HF_ENDPOINT must point at a Hugging Face Hub (or a mirror of it)")
    location = meta.location or url
    if _host(location) != _host(url):
        headers.pop("authorization", None)  # a signed CDN URL: the token stays with the Hub
    return Remote(repo, filename, location, meta.size, meta.etag, meta.commit_hash, headers, revision)


def list_files(repo: str, *, revision: str = "main") -> list[str]:
    """Every file path in a repo (to find a renamed file by its quantization tag)."""
    if offline():
        raise _offline_error(repo)
    # lazy: the Hub's clients (httpx2, huggingface_hub) load when gemma talks to the Hub, not at every start
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint(), token=_token(), library_name="gemma-cli", library_version=_version())
    try:
        return [f.path for f in api.list_repo_tree(repo, recursive=True, revision=revision) if isinstance(f, RepoFile)]
    except (hf.HfHubHTTPError, hf.OfflineModeIsEnabled, httpx2.HTTPError) as e:
        raise _mapped(e, repo, None) from None


def free_space(folder: Path) -> int:
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_space(folder: Path, need: int, what: str) -> None:
    free = free_space(folder)
    if need + SPACE_MARGIN > free:
        raise DownloadError(
            f"not enough disk space for {what}: it needs {human_size(need)}, {folder} has {human_size(free)} free",
            "free some space, or download elsewhere: gemma config set model_dir /bigger/disk (or GEMMA_MODEL_DIR)")


def partial(dest: Path) -> Path:
    """Where an interrupted download of `dest` is kept until it resumes."""
    return dest.with_name(dest.name + ".part")


def fetch(repo: str, filename: str, dest: Path, *, progress: ProgressFn | None = None, revision: str = "main") -> Path:
    """Download one file to `dest`, resuming a `.part` left by an interrupted run, and verify it."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    if offline():
        raise _offline_error(f"{repo}/{filename}", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _lock(dest):
        if dest.is_file():  # another process finished it while we waited
            return dest
        remote = metadata(repo, filename, revision=revision)
        if remote.sha256 is None and (remote.git_sha1 is None or remote.size is None):
            raise DownloadError(f"cannot verify {repo}/{filename}: the Hub sent no sha256 (ETag {remote.etag!r})",
                                "HF_ENDPOINT must point at a Hugging Face Hub (or a mirror of it)")
        part = partial(dest)
        note = dest.with_name(dest.name + ".part.json")
        have = _resume_point(part, note, remote)
        if remote.size is not None:
            check_space(dest.parent, remote.size - have, Path(filename).name)
        note.write_text(json.dumps({"repo": repo, "file": filename, "etag": remote.etag, "size": remote.size}))
        hasher = _Digest(remote)
        _hash_file(part, hasher, progress, remote.size)
        _download(remote, part, hasher, progress)
        digest = hasher.hexdigest()
        expected = remote.sha256 or remote.git_sha1
        if digest != expected:
            part.unlink(missing_ok=True)
            note.unlink(missing_ok=True)
            raise DownloadError(
                f"checksum mismatch for {filename}: expected {expected[:12]}…, got {digest[:12]}…; the damaged download was deleted",
                "run the pull again; if it repeats, the mirror (HF_ENDPOINT) serves a different file")
        os.replace(part, dest)
        note.unlink(missing_ok=True)
    return dest


def _resume_point(part: Path, note: Path, remote: Remote) -> int:
    """Bytes of `part` that can be kept: none if it belongs to another version of the file."""
    if not part.exists():
        return 0
    try:
        kept = json.loads(note.read_text())
    except (OSError, ValueError):
        kept = {}
    too_long = remote.size is not None and part.stat().st_size > remote.size
    if kept.get("etag") != remote.etag or too_long:
        part.unlink()
        return 0
    return part.stat().st_size


class _Digest:
    """The running checksum of what is in `.part`: the LFS sha256, or git's blob sha1."""

    def __init__(self, remote: Remote):
        self.remote = remote
        self.reset()

    def reset(self) -> None:
        if self.remote.sha256:
            self.h = hashlib.sha256()
        else:
            self.h = hashlib.sha1()  # noqa: S324 - git's blob id, compared with the Hub's
            self.h.update(f"blob {self.remote.size}\0".encode())

    def update(self, data: bytes) -> None:
        self.h.update(data)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def _hash_file(path: Path, hasher: _Digest, progress: ProgressFn | None, total: int | None) -> None:
    """Checksum what an earlier run left, so the whole file is verified at the end of this one."""
    if not path.exists():
        return
    done = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            hasher.update(block)
            done += len(block)
            if progress:
                progress(done, total)


class _ShortRead(Exception):
    pass


def _download(remote: Remote, part: Path, hasher: _Digest, progress: ProgressFn | None) -> None:
    # lazy: the Hub's clients (httpx2, huggingface_hub) load when gemma talks to the Hub, not at every start
    import httpx2

    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        if remote.size is not None and before >= remote.size:
            return
        try:
            done = _stream(remote, part, before, hasher, progress)
            if remote.size is None or done >= remote.size:
                return
            raise _ShortRead(f"connection closed after {done} of {remote.size} bytes")
        except (httpx2.TransportError, _ShortRead) as e:
            progressed = part.exists() and part.stat().st_size > before
            failures = 1 if progressed else failures + 1  # only drops in a row without progress count
            if failures > RETRIES:
                raise DownloadError(f"download of {remote.filename} keeps failing: {e}",
                                    "run the same command again: it resumes where it stopped") from None
            time.sleep(RETRY_WAIT * 2 ** (failures - 1))
            fresh = metadata(remote.repo, remote.filename, revision=remote.revision)
            if fresh.etag != remote.etag:
                raise DownloadError(f"{remote.filename} changed on the Hub during the download",
                                    "run the pull again to fetch the new version") from None
            remote.url, remote.headers = fresh.url, fresh.headers  # CDN links expire


def _stream(remote: Remote, part: Path, done: int, hasher: _Digest, progress: ProgressFn | None) -> int:
    """One GET from `done` on; returns the bytes now in `part`."""
    # lazy: the Hub's clients (httpx2, huggingface_hub) load when gemma talks to the Hub, not at every start
    import httpx2
    from huggingface_hub.utils import get_session, hf_raise_for_status

    headers = {**remote.headers, "Accept-Encoding": "identity"}
    if done:
        headers["Range"] = f"bytes={done}-"
    timeout = httpx2.Timeout(60.0, connect=15.0)
    with get_session().stream("GET", remote.url, headers=headers, timeout=timeout, follow_redirects=True) as r:
        if r.status_code == 416:  # nothing left to send from `done`: complete, or a part we cannot trust
            if remote.size is not None and done == remote.size:
                return done
            part.unlink(missing_ok=True)
            hasher.reset()
            raise _ShortRead("the server refused to resume; starting over")
        if r.status_code >= 400:
            r.read()
            try:
                hf_raise_for_status(r)
            except Exception as e:  # noqa: BLE001 - mapped to one line below
                raise _mapped(e, remote.repo, remote.filename) from None
        if done and r.status_code != 206:  # the server ignored Range: start over
            part.unlink(missing_ok=True)
            hasher.reset()
            done = 0
        if progress:
            progress(done, remote.size)
        with open(part, "ab") as out:
            for chunk in r.iter_bytes(CHUNK):
                out.write(chunk)
                hasher.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, remote.size)
    return done


@contextlib.contextmanager
def _lock(dest: Path) -> Iterator[None]:
    """One download of a file at a time (two would append to the same .part)."""
    lock = dest.with_name(dest.name + ".lock")
    try:
        import fcntl  # POSIX only
    except ImportError:  # Windows: no advisory locks here; concurrent pulls are rare there
        yield
        return
    with open(lock, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"another gemma is downloading {dest.name}", "wait for it to finish") from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)
