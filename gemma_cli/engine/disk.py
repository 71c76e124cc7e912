"""The prompt cache on disk: sequence states (`llama_state_seq_*`) kept across processes.

A new `gemma` process that is sent a prompt starting like an earlier one restores the state
taken at the longest such start and evaluates only the rest.

- **Entries.** One file per state: a header (what the state belongs to, its prompt items:
  token ids and media span keys), the state bytes, a CRC. Its name is a hash of the
  *identity* (what makes a state valid in this engine: the model file's size and a hash of
  its head and tail, the context and batch settings, the KV cache types, llama-cpp-python's
  version; for prompts holding media, the projector file and its image budget) and of the
  items, so a lookup hashes each prefix of a prompt and looks for the names.
- **Restart points.** With sliding-window (SWA) layers a state holds only the last window
  of them, so it is valid only at the exact point where it was taken: the engine saves
  states at the points later prompts share (`save_at`, see docs/architecture.md) and a
  lookup takes only exact prefixes.
- **Writes** go to a temporary file (`.PID.*.tmp`, 0600) that is fsynced and renamed, in a
  thread, so decoding goes on meanwhile (`flush()` waits). A process killed mid-write leaves
  only a temporary file, which the next writer removes.
- **Reads** check the magic, the CRC, the identity and the name; anything else is a damaged
  or foreign entry: one `note:`, and it is deleted.
- **Size.** At most `cap` bytes (default: the smaller of 4 GB and 10 % of the free disk);
  least recently used (file mtime, touched on each hit) first out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


MAGIC = b"GEMMAKV\x01"
SUFFIX = ".kv"
HITS = ".hits"  # a sidecar per entry: one byte per hit
DEFAULT_CAP = 4 * 1000**3
ID_CHARS = 12  # an entry's name starts with this much of its identity's hash
FREE_SHARE = 0.10


def file_identity(path: Path) -> str:
    """A model file's identity, not its path: size and a hash of its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if size <= 2 << 20:
            h.update(f.read())
        else:
            h.update(f.read(1 << 20))
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return f"{size}:{h.hexdigest()}"


def default_cap(folder: Path) -> int:
    """The smaller of 4 GB and 10 % of the free space where the cache lives."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return int(min(DEFAULT_CAP, FREE_SHARE * shutil.disk_usage(probe).free))


def note_on_stderr(text: str) -> None:
    sys.stderr.write(f"note: {text}\n")


@dataclass
class Entry:
    """What `entries()` lists of one cached state."""

    name: str
    path: Path
    size: int
    model: str
    n_tokens: int
    hits: int
    used: float  # last use (mtime), seconds since the epoch
    created: float


def _encode(item) -> bytes:
    if type(item) is tuple:  # a media span key (kind, sha256, i, n)
        return b"\xff" + repr(item).encode()
    return struct.pack("<i", item)


def _decode_items(raw: list) -> list:
    return [tuple(x) if isinstance(x, list) else x for x in raw]


class PromptCache:
    """Sequence states on disk in one folder (0700, files 0600), keyed by identity and prompt items."""

    def __init__(self, folder: Path, *, cap: int | None = None, note: Callable[[str], None] = note_on_stderr):
        self.folder = Path(folder)
        self.cap = default_cap(self.folder) if cap is None else cap
        self.note = note
        self.text_identity: dict = {}  # bind()'s
        self.media_identity: dict | None = None
        self._writes: list[threading.Thread] = []
        self._files: dict[tuple, str] = {}  # file_identity() by (path, size, mtime)
        self._lock = threading.Lock()

    # ---- identity

    def bind(self, model: Path, settings: dict) -> None:
        """What the states of this engine depend on (`settings`: context, batch, KV types, versions)."""
        self.text_identity = {"model": self._identity(model), "name": model.name, **settings}

    def bind_media(self, projector: Path | None, budget: int | None) -> None:
        """The projector (and its image budget) media positions were encoded with."""
        self.media_identity = None if projector is None else {"mmproj": self._identity(projector), "budget": budget}

    def _identity(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._files:
            self._files[key] = file_identity(path)
        return self._files[key]

    def _digests(self, items: Sequence, stop: int) -> list[str]:
        """The entry name of each prefix items[:n], n = 0..stop: the identity's own hash (so the entries of
        this model and settings can be listed), then the hash of identity and items."""
        h = hashlib.blake2b(json.dumps(self.text_identity, sort_keys=True).encode(), digest_size=20)
        own = h.hexdigest()[:ID_CHARS]
        names = [own + h.hexdigest()]
        media = False
        for item in items[:stop]:
            if not media and type(item) is tuple:
                media = True
                h.update(json.dumps(self.media_identity, sort_keys=True).encode())
            h.update(_encode(item))
            names.append(own + h.copy().hexdigest())
        return names

    # ---- the engine's side

    def restore(self, kv, items: Sequence, have: int, *, whole: bool = False) -> int:
        """Put into `kv` (sequence 0) the longest cached state of a prefix of `items` longer than `have` (what
        `kv` already holds of them) and shorter than `items` (`whole`: or all of them); returns how many
        items the cache holds now."""
        found = self.find(items, have, whole=whole)
        if found is None:
            return have
        n, name, state = found
        if kv.adopt(list(items[:n]), state):
            return n
        self._drop(name, "llama.cpp refused its state")
        return kv.shared(items)

    def find(self, items: Sequence, have: int, *, whole: bool = False) -> tuple[int, str, bytes] | None:
        """The longest cached prefix of `items` longer than `have` (and shorter than `items`, unless
        `whole`): (its length, its entry's name, its state), counted as a hit; None: none."""
        own = self._digests((), 0)[0][:ID_CHARS]
        names = {name for name in self._names() if name.startswith(own)}  # this model's and settings' entries
        if not names:
            return None
        digests = self._digests(items, len(items) if whole else len(items) - 1)
        for n in range(len(digests) - 1, have, -1):
            if digests[n] in names:
                state = self._read(digests[n], items[:n])
                if state is not None:
                    self._hit(digests[n])
                    return n, digests[n], state
        return None

    def save(self, kv) -> None:
        """Keep `kv`'s state (sequence 0) as it is now (written in a thread; an entry that exists is only touched)."""
        self.keep_state(kv.contents(), kv.state)

    def keep_state(self, items: Sequence, state) -> None:
        """Keep the state of `items` (`state()` gives its bytes, asked only when the entry is new)."""
        name = self._digests(items, len(items))[-1]
        path = self._path(name)
        if path.exists():
            self._touch(path)
            return
        data = state()
        if len(data) > self.cap:
            return  # it would not fit the cache at all
        header = {"identity": self.text_identity, "media": self.media_identity, "created": time.time(),
                  "items": list(items)}
        thread = threading.Thread(target=self._write, args=(name, header, data), daemon=False)
        thread.start()
        self._writes.append(thread)

    def flush(self) -> None:
        """Wait for the writes under way."""
        while self._writes:
            self._writes.pop().join()

    # ---- files

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}{SUFFIX}"

    def _names(self) -> set[str]:
        try:
            return {e.name[: -len(SUFFIX)] for e in os.scandir(self.folder) if e.name.endswith(SUFFIX)}
        except FileNotFoundError:
            return set()

    def _ensure_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.folder.stat().st_mode & 0o777 != 0o700:
            os.chmod(self.folder, 0o700)

    def _write(self, name: str, header: dict, state: bytes) -> None:
        head = json.dumps(header, separators=(",", ":")).encode()
        body = MAGIC + struct.pack("<I", len(head)) + head + struct.pack("<Q", len(state))
        crc = zlib.crc32(state, zlib.crc32(body))
        tmp = None
        try:
            self._ensure_folder()
            self._sweep_temporaries()
            tmp = self.folder / f".{os.getpid()}.{threading.get_ident()}.{name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.write(state)
                f.write(struct.pack("<I", crc))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(name))
            tmp = None
            self._sync_folder()
            self._evict()
        except OSError as e:
            self.note(f"the prompt cache could not keep a state in {self.folder} ({e.strerror or e}); "
                      "the answer is not affected")
        finally:
            if tmp is not None:
                try:
                    tmp.unlink()
                except OSError:
                    pass

    def _sync_folder(self) -> None:
        try:
            fd = os.open(self.folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sweep_temporaries(self) -> None:
        """Remove what writers killed mid-write left (`.PID.*.tmp` of a process that is gone)."""
        for e in os.scandir(self.folder):
            if not (e.name.startswith(".") and e.name.endswith(".tmp")):
                continue
            try:
                pid = int(e.name.split(".")[1])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not _alive(pid):
                try:
                    os.unlink(e.path)
                except OSError:
                    pass

    def _read(self, name: str, items: Sequence) -> bytes | None:
        """An entry's state, checked; a damaged or foreign one is deleted with one note (None)."""
        path = self._path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # evicted by another process meanwhile
            return None
        except OSError as e:
            self.note(f"the prompt cache entry {path} cannot be read ({e.strerror or e}); it is skipped")
            return None
        problem = None
        try:
            if not data.startswith(MAGIC):
                raise ValueError("not a gemma prompt-cache entry")
            (n_head,) = struct.unpack_from("<I", data, len(MAGIC))
            at = len(MAGIC) + 4
            header = json.loads(data[at : at + n_head])
            at += n_head
            (n_state,) = struct.unpack_from("<Q", data, at)
            at += 8
            if len(data) != at + n_state + 4:
                raise ValueError("truncated")
            (crc,) = struct.unpack_from("<I", data, at + n_state)
            if zlib.crc32(data[: at + n_state]) != crc:
                raise ValueError("checksum mismatch")
            media = any(type(x) is tuple for x in items)
            if (header.get("identity") != self.text_identity or (media and header.get("media") != self.media_identity)
                    or _decode_items(header.get("items", [])) != list(items)):
                raise ValueError("made for another model or prompt")
            return data[at : at + n_state]
        except (ValueError, struct.error, UnicodeDecodeError, AttributeError) as e:
            problem = str(e) or type(e).__name__
        self._drop(name, problem)
        return None

    def _drop(self, name: str, why: str) -> None:
        self.note(f"the prompt cache entry {self._path(name)} is damaged or foreign ({why}); deleted")
        self._remove(name)

    def _remove(self, name: str) -> None:
        for path in (self._path(name), self.folder / f"{name}{HITS}"):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def _touch(self, path: Path) -> None:
        try:
            os.utime(path)
        except OSError:
            pass

    def _hit(self, name: str) -> None:
        self._touch(self._path(name))
        try:
            fd = os.open(self.folder / f"{name}{HITS}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(fd, b".")
            os.close(fd)
        except OSError:
            pass

    def _evict(self) -> None:
        """Least recently used entries out until the cache fits its cap."""
        with self._lock:
            found = []
            for e in os.scandir(self.folder):
                if e.name.endswith(SUFFIX):
                    try:
                        st = e.stat()
                    except FileNotFoundError:
                        continue
                    found.append((st.st_mtime, st.st_size, e.name[: -len(SUFFIX)]))
            total = sum(size for _, size, _ in found)
            for _, size, name in sorted(found):
                if total <= self.cap:
                    break
                self._remove(name)
                total -= size

    # ---- the command's side (`gemma cache`)

    def entries(self) -> list[Entry]:
        """The entries, most recently used first (a damaged one shows as model '?')."""
        out = []
        for name in self._names():
            path = self._path(name)
            try:
                st = path.stat()
                with open(path, "rb") as f:
                    head = f.read(len(MAGIC) + 4)
                    (n_head,) = struct.unpack_from("<I", head, len(MAGIC))
                    header = json.loads(f.read(n_head))
                model, n_tokens, created = header["identity"].get("name", "?"), len(header["items"]), header["created"]
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, struct.error, AttributeError):
                model, n_tokens, created = "?", 0, 0.0
                st = path.stat()
            try:
                hits = (self.folder / f"{name}{HITS}").stat().st_size
            except OSError:
                hits = 0
            out.append(Entry(name, path, st.st_size, model, n_tokens, hits, st.st_mtime, created))
        return sorted(out, key=lambda e: -e.used)

    def clear(self) -> tuple[int, int]:
        """Remove every entry (and leftover temporaries); returns (entries, bytes) removed."""
        count = size = 0
        try:
            listing = list(os.scandir(self.folder))
        except FileNotFoundError:
            return 0, 0
        for e in listing:
            try:
                if e.name.endswith(SUFFIX):
                    count += 1
                    size += e.stat().st_size
                os.unlink(e.path)
            except OSError:
                pass
        return count, size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
