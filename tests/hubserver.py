"""A small Hugging Face Hub on 127.0.0.1, speaking the file protocol huggingface_hub uses.

Point HF_ENDPOINT at `server.url` and huggingface_hub (and gemma's download module) talk to it:
  HEAD/GET /{owner}/{repo}/resolve/{revision}/{path}
      X-Repo-Commit, ETag, and for LFS files X-Linked-Etag (the sha256) and X-Linked-Size;
      with `redirect=True`, LFS files answer 302 to a "CDN" on another origin (localhost instead
      of 127.0.0.1), as the Hub does, so the metadata comes from the redirect itself.
  GET  /cdn/{sha256}                      the bytes, with Range (206 + Content-Range)
  GET  /api/models/{owner}/{repo}/tree/{revision}   the JSON listing list_repo_tree reads
  404s carry X-Error-Code (RepoNotFound, EntryNotFound) so huggingface_hub raises its typed errors.

Faults for tests: `drop_after[(repo, path)] = n` sends n bytes of the body, then drops the
connection (once per entry); `advertise[(repo, path)] = sha` claims a wrong checksum;
`token` makes every request need `Authorization: Bearer <token>`. Every request is recorded in
`requests` as (method, path, headers with lower-case names) for assertions.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self, *, redirect: bool = False, token: str | None = None):
        self.files: dict[tuple[str, str], bytes] = {}
        self.lfs: dict[tuple[str, str], bool] = {}
        self.advertise: dict[tuple[str, str], str] = {}
        self.drop_after: dict[tuple[str, str], int] = {}
        self.ignore_range = False
        self.redirect = redirect
        self.token = token
        self.requests: list[tuple[str, str, dict]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    # -- content -------------------------------------------------------------------------------

    def add(self, repo: str, path: str, data: bytes, *, lfs: bool = True) -> str:
        self.files[(repo, path)] = data
        self.lfs[(repo, path)] = lfs
        return hashlib.sha256(data).hexdigest()

    def etag(self, key: tuple[str, str]) -> str:
        data = self.files[key]
        if key in self.advertise:
            return self.advertise[key]
        if self.lfs[key]:
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's blob id

    def gets(self, repo: str, path: str) -> list[dict]:
        """Headers of the GETs that fetched the bytes of one file (resolve or CDN)."""
        sha = hashlib.sha256(self.files[(repo, path)]).hexdigest()
        return [h for m, p, h in self.requests
                if m == "GET" and (p.endswith(f"/{path}") and "/resolve/" in p or p == f"/cdn/{sha}")]

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> "HubServer":
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.0"  # one request per connection: a dropped body is a closed socket

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    # -- routing -------------------------------------------------------------------------------

    def _route(self, *, body: bool) -> None:
        hub = self.hub
        path = urlparse(self.path).path
        with hub._lock:
            hub.requests.append((self.command, unquote(path), {k.lower(): v for k, v in self.headers.items()}))
        if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
            return self._error(401, "RepoNotFound", "Invalid credentials")
        m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)/?$", path)
        if m:
            return self._tree(unquote(m.group(1)))
        m = re.match(r"^/cdn/([0-9a-f]{64})$", path)
        if m:
            key = next((k for k, v in hub.files.items() if hashlib.sha256(v).hexdigest() == m.group(1)), None)
            if key is None:
                return self._error(404, None, "no such blob")
            return self._send_file(key, body=body, metadata=False)
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if not m:
            return self._error(404, None, "not found")
        repo, file = unquote(m.group(1)), unquote(m.group(3))
        if not any(r == repo for r, _ in hub.files):
            return self._error(404, "RepoNotFound", "Repository not found")
        key = (repo, file)
        if key not in hub.files:
            return self._error(404, "EntryNotFound", "Entry not found", commit=True)
        if hub.redirect and hub.lfs[key]:
            sha = hashlib.sha256(hub.files[key]).hexdigest()
            port = self.server.server_address[1]
            self.send_response(302)
            self._metadata_headers(key)
            self.send_header("Location", f"http://localhost:{port}/cdn/{sha}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return self._send_file(key, body=body, metadata=True)

    def _error(self, status: int, code: str | None, message: str, *, commit: bool = False) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _metadata_headers(self, key: tuple[str, str]) -> None:
        hub = self.hub
        etag = hub.etag(key)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{etag}"')
        if hub.lfs[key]:
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(hub.files[key])))

    def _send_file(self, key: tuple[str, str], *, body: bool, metadata: bool) -> None:
        hub = self.hub
        data = hub.files[key]
        start = 0
        rng = self.headers.get("Range")
        m = re.match(r"bytes=(\d+)-(\d*)$", rng or "")
        partial = bool(m) and not hub.ignore_range
        if partial:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            chunk = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(chunk) - 1}/{len(data)}")
        else:
            chunk = data
            self.send_response(200)
        if metadata:
            self._metadata_headers(key)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if not body:
            return
        with hub._lock:
            cut = hub.drop_after.pop(key, None)
        if cut is not None:
            self.wfile.write(chunk[:max(cut - start, 0)])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-file
            return
        self.wfile.write(chunk)

    def _tree(self, repo: str) -> None:
        hub = self.hub
        entries = []
        for (r, p), data in sorted(hub.files.items()):
            if r != repo:
                continue
            entry = {"type": "file", "path": p, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}  # noqa: S324
            if hub.lfs[(r, p)]:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        if not entries:
            return self._error(404, "RepoNotFound", "Repository not found")
        payload = json.dumps(entries).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        return None


def isolate(monkeypatch, home) -> None:
    """Point every gemma and Hugging Face folder at `home` and clear settings from the environment,
    so a test never reads or writes the real user's files."""
    import os

    for var in list(os.environ):
        if var.startswith("GEMMA_") or var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN",
                                               "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GEMMA_HOME", str(home))
    monkeypatch.setenv("GEMMA_CONFIG", str(home / "config.yaml"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")  # never the user's saved token
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    try:  # read at import: huggingface_hub would otherwise fetch its agent registry from the real Hub
        from huggingface_hub import constants
    except ImportError:
        return
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
