"""The results file: crash-safe appends (one fsynced write per record), repaired and read on open."""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from pathlib import Path

from gemma_cli.batch.lines import Line, digest, key_of_record
from gemma_cli.errors import GemmaError

class Output:
    """The results file: repaired and read on open, then appended to one fsynced line at a time."""

    def __init__(self, path: str | Path | None, *, restart: bool = False):
        self.path = None if path in (None, "-") else Path(path)
        self.done: set[bytes] = set()  # resume keys (digests) of lines answered in an earlier run
        self.repaired = 0  # bytes of a torn last line dropped
        self.retrying = 0  # error records dropped: those lines run again
        self.kept = 0  # results kept from earlier runs
        if self.path is None:
            self._fd = sys.stdout.fileno()
            return
        check_destination(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise unwritable(self.path, e) from None
        self._lock()
        if restart:
            os.ftruncate(self._fd, 0)
        else:
            self._scan()
        os.fsync(self._fd)

    def _lock(self) -> None:
        try:
            # lazy: POSIX only (not on Windows)
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise GemmaError(f"{self.path} is being written by another gemma batch",
                             "wait for it to finish, or write to another file with -o") from None

    def _scan(self) -> None:
        """Collect answered ids; cut a torn tail; drop error records (atomically) so they run again."""
        good_end, errors, pos = 0, 0, 0
        with open(self.path, "rb") as f:
            for raw in f:
                pos += len(raw)
                rec = _parse_record(raw) if raw.endswith(b"\n") else None
                if rec is None:
                    continue
                good_end = pos
                if rec.get("error") is not None:
                    errors += 1
                    continue
                key = key_of_record(rec)
                if key is not None:
                    self.done.add(digest(key))
        self.kept = len(self.done)
        size = os.fstat(self._fd).st_size
        if size > good_end:
            self.repaired = size - good_end
            os.ftruncate(self._fd, good_end)
        if errors:
            self._drop_errors()
            self.retrying = errors

    def _drop_errors(self) -> None:
        # A copy without the error records replaces the file in one rename: a crash leaves one or the other.
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        except OSError as e:  # a results file that can be written in a folder that cannot
            raise unwritable(self.path, e, "its folder must be writable too: the failed lines' records are "
                                           "dropped by writing a new copy") from None
        os.fchmod(fd, stat.S_IMODE(os.fstat(self._fd).st_mode))  # mkstemp's 0600 would stay after the rename
        try:
            with os.fdopen(fd, "wb") as out, open(self.path, "rb") as src:
                for raw in src:
                    rec = _parse_record(raw)
                    if rec is None or rec.get("error") is None:
                        out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        self._lock()

    def answered(self, line: Line) -> bool:
        return digest(line.key) in self.done

    def write(self, rec: dict) -> None:
        try:
            data = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (valid JSON, not UTF-8): written escaped
            data = (json.dumps(rec) + "\n").encode("ascii")
        view = memoryview(data)
        while view:  # one write() in practice; a short write is finished, never interleaved
            n = os.write(self._fd, view)
            view = view[n:]
        if self.path is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self.path is not None and self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_destination(path: str | Path | None) -> None:
    """Fail at once, before any work, when `path` cannot take results: a folder, a path under a
    file, or a folder that cannot be written. Creates nothing that was not there."""
    if path in (None, "-"):
        return
    path = Path(path)
    if path.is_dir():
        raise GemmaError(f"cannot write results to {path}: it is a folder", f"name a file, e.g. -o {path / 'results.jsonl'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise GemmaError(f"cannot write {path}: {folder} is a file, not a folder", "choose another path with -o")
    if folder != path.parent:  # folders still to be made: they can be, if the nearest one is writable
        if not os.access(folder, os.W_OK | os.X_OK):
            raise unwritable(path, PermissionError(13, "Permission denied"))
        return
    existed = path.exists()
    try:  # opened, not only asked (os.access): root ignores modes, not read-only mounts or immutable folders
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    except OSError as e:
        raise unwritable(path, e) from None
    if not existed:
        path.unlink(missing_ok=True)


def unwritable(path: Path, e: OSError, hint: str | None = None) -> GemmaError:
    """The one-line error for a results file that cannot be opened or written (as `gemma transcribe -o`)."""
    return GemmaError(f"cannot write {path}: {e.strerror or e}",
                      hint or "check the folder exists and is writable, or choose another path with -o")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` survive a power cut (where the platform allows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse_record(raw: bytes) -> dict | None:
    try:
        rec = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # a line nested too deeply is no record
        return None
    return rec if isinstance(rec, dict) and ("id" in rec or "custom_id" in rec) else None
