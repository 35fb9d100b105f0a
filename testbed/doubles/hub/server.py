"""A TEST DOUBLE of the Hugging Face Hub: a local HF_ENDPOINT for one model repo.

It serves one repo at one fixed commit from a directory, answering the requests the real
huggingface_hub 2.4.0 client makes (see shared/reference/hub-endpoint-facts.md): model
info, revision info, the recursive/paginated tree, paths-info, and `resolve` downloads with
the headers the client insists on (X-Repo-Commit, ETag). It never advertises Xet, so the
client stays on plain HTTP. Errors carry `X-Error-Code` so the client raises its typed
exceptions even over http:// (its bare-401 fallback only matches https URLs).

Faults can be switched on at runtime, from Python (`set_faults`) or over HTTP
(`POST /_double/faults`), and counters are read at `GET /_double/stats`, so a test in
another process (or a test host in another network namespace) can drive it.

Stdlib only: `python -m testbed.doubles.hub.server --dir D ...` or `python server.py ...`.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

if __package__:
    from .checkpoint import make_checkpoint, scan
else:  # run as a plain script, e.g. copied into a bare test host
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from checkpoint import make_checkpoint, scan  # type: ignore[no-redef]

DEFAULT_REPO_ID = "0xSero/GLM-5.2-NVFP4-REAP-469B"
# Fixed so tests and the deploy can pin it (the real repo's commit is irrelevant here).
DEFAULT_REVISION = "13b78e74ba3652cfbbcdc59ae70dbb2687403126"
TIMESTAMP = "2026-01-01T00:00:00.000Z"  # fixed, so responses are reproducible
CHUNK = 256 * 1024
AUTH_FAILURES = ("gated", "private", "invalid")
FAULT_KEYS = ("slow_bytes_per_s", "uplink_bytes_per_s", "truncate_after", "truncate_once",
              "corrupt", "error_5xx")

_REPO = r"(?P<repo>[^/]+/[^/]+|[^/]+)"  # "owner/name", or a bare name
_ROUTES = [  # matched against the still-percent-encoded path, so "refs%2Fpr%2F1" stays one segment
    ("model_info", re.compile(rf"^/api/models/{_REPO}$")),
    ("revision", re.compile(rf"^/api/models/{_REPO}/revision/(?P<rev>[^/]+)$")),
    ("tree", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")),
    ("paths_info", re.compile(rf"^/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)$")),
    ("resolve", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
]
_METHODS = {"model_info": ("GET",), "revision": ("GET",), "tree": ("GET",),
            "paths_info": ("POST",), "resolve": ("GET", "HEAD")}


class _HubError(Exception):
    """An error response in the Hub's style: status, optional X-Error-Code, message."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _norm_5xx(key: str, value) -> dict:
    """error_5xx values: 503 (forever), [503, 2] (next 2 requests), or
    {"status": 503, "count": 2, "methods": ["GET"]}. Methods default to all."""
    if isinstance(value, int):
        value = {"status": value}
    elif isinstance(value, (list, tuple)):
        value = {"status": value[0], "count": value[1] if len(value) > 1 else None}
    if not isinstance(value, dict) or not isinstance(value.get("status"), int) \
            or not 500 <= value["status"] <= 599:
        raise ValueError(f"error_5xx[{key!r}]: need a 5xx status, [status, count] or "
                         f"{{status, count, methods}}, got {value!r}")
    count = value.get("count")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError(f"error_5xx[{key!r}].count must be a positive int or null")
    methods = value.get("methods")
    return {"status": value["status"], "count": count,
            "methods": [m.upper() for m in methods] if methods else None}


class HubDouble:
    """A local Hugging Face Hub TEST DOUBLE serving `root_dir` as `repo_id` at `revision`.

    root_dir      directory whose files are the repo (`.cache/` and `.git/` at its top ignored)
    repo_id       the one model repo served; any other repo gets RepoNotFound
    revision      the commit (40 lowercase hex); branches in `branches` resolve to it
    token         if set, every repo request needs `Authorization: Bearer <token>`
    auth_failure  how a missing/wrong token is refused, copying the real Hub:
                  "gated"   (default) missing 401 GatedRepo, wrong 403 GatedRepo
                  "private" missing 401 RepoNotFound, wrong 404 RepoNotFound
                  "invalid" missing 401 RepoNotFound, wrong 401 "Invalid credentials in
                            Authorization header" with no error code (-> HfHubHTTPError)
    host, port    address to bind (port 0 = pick a free one); see `.url`
    page_size     tree entries per page (further pages via a Link rel="next" header)
    branches      branch names that resolve to `revision`
    verbose       log each request to stderr
    """

    def __init__(self, root_dir, repo_id: str = DEFAULT_REPO_ID, revision: str = DEFAULT_REVISION,
                 token: str | None = None, host: str = "127.0.0.1", port: int = 0, *,
                 auth_failure: str = "gated", page_size: int = 50,
                 branches: tuple[str, ...] = ("main",), verbose: bool = False):
        if not re.fullmatch(r"[0-9a-f]{40}", revision):
            raise ValueError(f"revision must be 40 lowercase hex characters, got {revision!r}")
        if auth_failure not in AUTH_FAILURES:
            raise ValueError(f"auth_failure must be one of {AUTH_FAILURES}, got {auth_failure!r}")
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.root = Path(root_dir)
        if not self.root.is_dir():
            raise ValueError(f"root_dir {self.root} is not a directory")
        self.repo_id, self.revision, self.token = repo_id, revision, token
        self.auth_failure, self.page_size, self.branches = auth_failure, page_size, tuple(branches)
        self.host, self.port, self.verbose = host, port, verbose
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.clear_faults()
        self.reset_stats()
        self.rescan()

    # ---- content -------------------------------------------------------------------------
    def rescan(self) -> dict:
        """Re-read root_dir (call after changing its files); returns the manifest.
        Handlers read `_files` without the lock: a swap of whole dicts is atomic enough."""
        manifest = scan(self.root)
        with self._lock:
            self.manifest = manifest
            self._files = {e["path"]: e for e in manifest["files"]}
            dirs: set[str] = set()
            for p in self._files:
                parts = p.split("/")[:-1]
                dirs.update("/".join(parts[:i + 1]) for i in range(len(parts)))
            self._dirs = dirs
        return manifest

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> "HubDouble":
        handler = type("Handler", (_Handler,), {"double": self})
        server_cls = _Server6 if ":" in self.host else _Server
        self._httpd = server_cls((self.host, self.port), handler)
        self.port = self._httpd.server_address[1]
        self._stopping.clear()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-double",
                                         daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # lets throttled streams end early
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "HubDouble":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL to use as HF_ENDPOINT (a wildcard bind is reported as loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    # ---- faults --------------------------------------------------------------------------
    def set_faults(self, **kw) -> dict:
        """Replace the given fault switches (others stay); None resets one. Returns all.

        slow_bytes_per_s  int: throttle every file body to this rate (per response)
        uplink_bytes_per_s int: one rate shared by all file bodies in flight, whatever the
                          connection (the site's uplink: N hosts downloading at once get
                          about 1/N of it each); combines with slow_bytes_per_s
        truncate_after    int, or {path or "*": int}: send only this many body bytes of a file
                          response, then close the connection (Content-Length stays the full
                          length, so the client sees a short read)
        truncate_once     bool (default True): truncate each path only once, then serve it
                          whole; False = truncate every time
        corrupt           {path: offset}: flip (xor 0xFF) the byte at that file offset in
                          every body served; the length and the advertised hashes stay right
        error_5xx         {key: 503 | [503, count] | {"status", "count", "methods"}} where key
                          is a file path (its resolve requests), "api" (all API calls of the
                          repo) or "*" (every repo request). count = how many requests fail
                          (then the entry is removed); none = forever. methods default: all
        """
        unknown = set(kw) - set(FAULT_KEYS)
        if unknown:
            raise ValueError(f"unknown fault switch(es) {sorted(unknown)}; known: {FAULT_KEYS}")
        new = {}
        for key, value in kw.items():
            if value is None:
                new[key] = _DEFAULT_FAULTS[key]
            elif key in ("slow_bytes_per_s", "uplink_bytes_per_s"):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{key} must be a positive int")
                new[key] = value
            elif key == "truncate_after":
                value = {"*": value} if isinstance(value, int) else dict(value)
                if not all(isinstance(v, int) and v >= 0 for v in value.values()):
                    raise ValueError("truncate_after values must be ints >= 0")
                new[key] = value
            elif key == "truncate_once":
                new[key] = bool(value)
            elif key == "corrupt":
                value = dict(value)
                for path, off in value.items():
                    entry = self._files.get(path)
                    if entry is None:
                        raise ValueError(f"corrupt: no file {path!r} in the repo")
                    if not isinstance(off, int) or not 0 <= off < entry["size"]:
                        raise ValueError(f"corrupt[{path!r}]: offset must be 0..{entry['size'] - 1}")
                new[key] = value
            elif key == "error_5xx":
                new[key] = {k: _norm_5xx(k, v) for k, v in dict(value).items()}
        with self._lock:
            self._faults.update(new)
            if "truncate_after" in new or "truncate_once" in new:
                self._truncated.clear()  # a new truncation setting starts afresh
            return copy.deepcopy(self._faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = copy.deepcopy(_DEFAULT_FAULTS)
            self._truncated: set[str] = set()
            self._uplink_next = 0.0  # when the shared uplink is free again (monotonic)

    def faults(self) -> dict:
        with self._lock:
            return copy.deepcopy(self._faults)

    # ---- stats ---------------------------------------------------------------------------
    def reset_stats(self) -> None:
        with self._lock:
            self._stats = {"requests": 0, "by_route": {}, "files": {}, "bytes_served": 0,
                           "auth_failures": 0, "errors_5xx": 0}

    def stats(self) -> dict:
        """See README.md for the shape; `files[path]["complete"]` counts whole-file bodies."""
        with self._lock:
            return copy.deepcopy(self._stats)

    def _count(self, route: str) -> None:
        with self._lock:
            self._stats["requests"] += 1
            self._stats["by_route"][route] = self._stats["by_route"].get(route, 0) + 1

    def _bump(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def _file_stat(self, path: str, **inc) -> None:
        with self._lock:
            f = self._stats["files"].setdefault(path, dict.fromkeys(
                ("head", "get", "bytes", "complete", "ranges", "truncated", "corrupted", "errors"), 0))
            for k, v in inc.items():
                f[k] += v
            self._stats["bytes_served"] += inc.get("bytes", 0)
            self._stats["errors_5xx"] += inc.get("errors", 0)

    # ---- request decisions (used by the handler) -----------------------------------------
    def _take_5xx(self, method: str, keys: tuple[str, ...]) -> int | None:
        with self._lock:
            table = self._faults["error_5xx"]
            for key in keys:
                rule = table.get(key)
                if rule and (rule["methods"] is None or method in rule["methods"]):
                    if rule["count"] is not None:
                        rule["count"] -= 1
                        if rule["count"] <= 0:
                            del table[key]
                    return rule["status"]
        return None

    def _body_plan(self, path: str, length: int) -> tuple[int | None, int | None, int | None]:
        """(bytes to send before cutting or None, rate or None, corrupt offset or None)."""
        with self._lock:
            f = self._faults
            cut = f["truncate_after"].get(path, f["truncate_after"].get("*"))
            if cut is not None and (cut >= length or (f["truncate_once"] and path in self._truncated)):
                cut = None
            if cut is not None:
                self._truncated.add(path)
            return cut, f["slow_bytes_per_s"], f["corrupt"].get(path)

    def _uplink_slot(self, n: int) -> float:
        """Seconds to wait before sending n more body bytes through the shared uplink: each
        chunk of every connection books the next n/rate seconds of one common clock, so the
        sum of all bodies keeps to the rate (an idle uplink saves up no burst)."""
        with self._lock:
            rate = self._faults["uplink_bytes_per_s"]
            if not rate:
                return 0.0
            now = time.monotonic()
            start = max(now, self._uplink_next)
            self._uplink_next = start + n / rate
            return self._uplink_next - now

    def _resolve_rev(self, rev: str) -> str:
        if rev == self.revision or rev in self.branches:
            return self.revision
        raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def _check_access(self, repo: str, auth: str | None) -> None:
        given = auth[7:].strip() if auth and auth.lower().startswith("bearer ") else None
        if repo != self.repo_id:
            # The Hub hides what it will not show: 401 to anonymous callers, 404 otherwise.
            raise _HubError(404 if auth else 401, "RepoNotFound", "Repository not found")
        if self.token is None or given == self.token:
            return
        mode = self.auth_failure
        if mode == "gated":
            if given is None:
                raise _HubError(401, "GatedRepo", f"Access to model {repo} is restricted. You must "
                                "have access to it and be authenticated to access it. Please log in.")
            raise _HubError(403, "GatedRepo", f"Access to model {repo} is restricted and you are "
                            "not in the authorized list.")
        if given is None or mode == "private":
            raise _HubError(401 if given is None else 404, "RepoNotFound", "Repository not found")
        raise _HubError(401, None, "Invalid credentials in Authorization header")

    # ---- JSON bodies ---------------------------------------------------------------------
    def _tree_entry(self, path: str) -> dict:
        if path in self._dirs:
            inside = sorted(e["git_sha1"] for p, e in self._files.items() if p.startswith(path + "/"))
            # Not a real git tree id (that needs the tree object); stable and unique is enough.
            return {"type": "directory", "path": path, "size": 0,
                    "oid": _sha1("tree:" + path + ":" + ",".join(inside))}
        e = self._files[path]
        out = {"type": "file", "path": path, "size": e["size"], "oid": e.get("pointer_sha1", e["git_sha1"])}
        if e["lfs"]:
            out["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": e["pointer_size"]}
        return out

    def _tree(self, under: str, recursive: bool) -> list[dict]:
        if under and under not in self._dirs:
            raise _HubError(404, "EntryNotFound", f"{under} does not exist on {self.revision}")
        prefix = under + "/" if under else ""
        paths = []
        for p in sorted(set(self._files) | self._dirs):
            if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]):
                paths.append(p)
        return [self._tree_entry(p) for p in paths]

    def _model_info(self, blobs: bool) -> dict:
        siblings = []
        for e in self.manifest["files"]:
            s = {"rfilename": e["path"]}
            if blobs:
                s.update(blobId=e.get("pointer_sha1", e["git_sha1"]), size=e["size"])
                if e["lfs"]:
                    s["lfs"] = {"sha256": e["sha256"], "size": e["size"], "pointerSize": e["pointer_size"]}
            siblings.append(s)
        gated = "manual" if self.token and self.auth_failure == "gated" else False
        private = bool(self.token) and self.auth_failure != "gated"
        return {"_id": _sha1(self.repo_id)[:24], "id": self.repo_id, "modelId": self.repo_id,
                "author": self.repo_id.split("/")[0] if "/" in self.repo_id else None,
                "sha": self.revision, "lastModified": TIMESTAMP, "createdAt": TIMESTAMP,
                "private": private, "gated": gated, "disabled": False, "downloads": 0, "likes": 0,
                "tags": ["transformers", "safetensors", "glm_moe_dsa", "text-generation", "test-double"],
                "library_name": "transformers", "pipeline_tag": "text-generation",
                "usedStorage": self.manifest["total_size"], "siblings": siblings}


_DEFAULT_FAULTS = {"slow_bytes_per_s": None, "uplink_bytes_per_s": None, "truncate_after": {},
                   "truncate_once": True, "corrupt": {}, "error_5xx": {}}


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep stop() waiting
    allow_reuse_address = True
    request_queue_size = 64


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive like the real Hub; the client detects a cut body only by comparing
    # received bytes with Content-Length, so every response sends Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = "HubDouble/1"
    double: HubDouble  # set by HubDouble.start()

    def log_message(self, fmt, *args):
        if self.double.verbose:
            sys.stderr.write("hub-double: " + (fmt % args) + "\n")

    # ---- plumbing ------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json",
              headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", "Root=" + uuid.uuid4().hex)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, err: _HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send(err.status, json.dumps({"error": err.message}).encode(), headers=headers)

    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_HEAD(self):
        self._dispatch()

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self) -> None:
        d = self.double
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        # Read any body now: on a keep-alive connection an unread body would be parsed as the
        # next request, even when we answer with an error.
        body = self._read_body()
        try:
            if split.path.startswith("/_double/"):
                return self._control(split.path, query, body)
            for route, rx in _ROUTES:
                m = rx.match(split.path)
                if m:
                    break
            else:
                d._count("other")
                # e.g. api/agent-harnesses (hf cache verify tolerates 404) or xet-read-token
                # (never reached, since Xet is never advertised).
                raise _HubError(404, None, "Not found")
            d._count(route)
            if self.command not in _METHODS[route]:
                raise _HubError(405, None, f"{self.command} not allowed here")
            repo = unquote(m["repo"])
            path = unquote(m["path"]) if m.groupdict().get("path") else ""
            # Injected 5xx come first: an outage ("*") hides even auth and unknown repos.
            status = d._take_5xx(self.command, ("*", path) if route == "resolve" else ("*", "api"))
            if status:
                if route == "resolve":
                    d._file_stat(path, errors=1, **{self.command.lower(): 1})
                else:
                    d._bump("errors_5xx")
                raise _HubError(status, None, f"injected {status} (test double fault)")
            d._check_access(repo, self.headers.get("Authorization"))
            if route == "model_info":
                return self._json(d._model_info(blobs=query.get("blobs") == "true"))
            rev = d._resolve_rev(unquote(m["rev"]))
            if route == "revision":
                return self._json(d._model_info(blobs=query.get("blobs") == "true"))
            if route == "tree":
                return self._tree(repo, m["rev"], path, query)
            if route == "paths_info":
                return self._paths_info(body)
            return self._resolve(path, rev)
        except _HubError as err:
            if err.status in (401, 403) or err.code in ("RepoNotFound", "GatedRepo"):
                d._bump("auth_failures")
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ---- routes --------------------------------------------------------------------------
    def _tree(self, repo: str, raw_rev: str, under: str, query: dict) -> None:
        d = self.double
        entries = d._tree(under.strip("/"), query.get("recursive") == "true")
        start = int(query.get("cursor") or 0)
        page = entries[start:start + d.page_size]
        headers = {}
        if start + d.page_size < len(entries):
            # The client follows this URL verbatim, so it must be absolute and carry the whole
            # query. Build it from the Host the client used: from a test host in another
            # network namespace that is our veth address, not loopback.
            q = dict(query, cursor=str(start + d.page_size))
            base = f"http://{self.headers['Host']}" if self.headers.get("Host") else d.url
            tail = "/" + quote(under, safe="/") if under else ""
            url = (f"{base}/api/models/{repo}/tree/{raw_rev}{tail}?"
                   + "&".join(f"{k}={quote(v, safe='')}" for k, v in q.items()))
            headers["Link"] = f'<{url}>; rel="next"'
        self._json(page, headers=headers)

    def _paths_info(self, body: bytes) -> None:
        d = self.double
        raw = body.decode()
        if "json" in (self.headers.get("Content-Type") or ""):
            paths = json.loads(raw or "{}").get("paths", [])
        else:  # the client posts a form: paths=a&paths=b&expand=false
            paths = parse_qs(raw).get("paths", [])
        out = [d._tree_entry(p) for p in (p.strip("/") for p in paths) if p in d._files or p in d._dirs]
        self._json(out)

    def _resolve(self, path: str, commit: str) -> None:
        d = self.double
        entry = d._files.get(path)
        method = self.command.lower()
        if entry is None:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist on {commit}")
        size = entry["size"]
        etag = entry["sha256"] if entry["lfs"] else entry["git_sha1"]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"'}
        if entry["lfs"]:
            # What the real Hub puts on the LFS redirect; we serve the bytes directly instead.
            headers.update({"X-Linked-Size": str(size), "X-Linked-Etag": f'"{etag}"'})
        start, end = 0, size  # end exclusive
        status = 200
        rng = self.headers.get("Range")
        if rng:
            parsed = _parse_range(rng, size)
            if parsed == "unsatisfiable":
                d._file_stat(path, **{method: 1})
                return self._send(416, b"", headers={**headers, "Content-Range": f"bytes */{size}"})
            if parsed:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        ctype = "application/octet-stream" if entry["lfs"] else "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(end - start))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if method == "head":
            return d._file_stat(path, head=1)
        d._file_stat(path, get=1, ranges=int(status == 206))
        self._stream(path, start, end, status == 206)

    def _stream(self, path: str, start: int, end: int, ranged: bool) -> None:
        d = self.double
        cut, rate, bad = d._body_plan(path, end - start)
        uplink = d.faults()["uplink_bytes_per_s"]
        budget = end - start if cut is None else cut
        slowest = min(r for r in (rate, uplink, CHUNK * 20) if r)
        step = max(1, min(CHUNK, slowest // 20))
        sent, t0 = 0, time.monotonic()
        corrupted = False
        try:
            with open(d.root / path, "rb") as f:
                f.seek(start)
                while sent < budget and not d._stopping.is_set():
                    chunk = f.read(min(step, budget - sent))
                    if not chunk:
                        break
                    pos = start + sent
                    if bad is not None and pos <= bad < pos + len(chunk):
                        chunk = bytearray(chunk)
                        chunk[bad - pos] ^= 0xFF
                        corrupted = True
                    wait = d._uplink_slot(len(chunk)) if uplink else 0.0
                    if wait > 0:  # the shared uplink is booked ahead: our turn comes then
                        time.sleep(wait)
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if rate:  # sleep until we are back under the rate
                        ahead = sent / rate - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            whole = sent == end - start
            d._file_stat(path, bytes=sent, corrupted=int(corrupted), truncated=int(not whole),
                         complete=int(whole and not ranged))
        if sent < end - start:
            # Declared length not delivered: drop the connection so the client sees a short body.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _control(self, path: str, query: dict, body: bytes) -> None:
        """Test-only endpoints: /_double/{stats,faults,manifest}. No auth (loopback/veth only)."""
        d = self.double
        try:
            if path == "/_double/stats":
                if self.command == "DELETE" or (self.command == "POST" and query.get("reset") == "true"):
                    d.reset_stats()
                return self._json(d.stats())
            if path == "/_double/faults":
                if self.command == "DELETE":
                    d.clear_faults()
                elif self.command == "POST":
                    d.set_faults(**json.loads(body or b"{}"))
                return self._json(d.faults())
            if path == "/_double/manifest":
                return self._json({"repo_id": d.repo_id, "revision": d.revision, **d.manifest})
        except (ValueError, TypeError) as e:
            return self._json({"error": str(e)}, status=400)
        self._json({"error": "unknown control endpoint"}, status=404)


def _parse_range(header: str, size: int):
    """One `bytes=a-b`, `bytes=a-` or `bytes=-n` range -> (start, end_exclusive).
    None = ignore the header (multi-range or garbage: a full 200 is a valid answer);
    "unsatisfiable" -> 416."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not m or (m[1] == "" and m[2] == ""):
        return None
    if m[1] == "":
        n = int(m[2])
        return (max(0, size - n), size) if n > 0 and size > 0 else "unsatisfiable"
    a = int(m[1])
    b = int(m[2]) if m[2] else size - 1
    if a >= size or b < a:
        return "unsatisfiable"
    return a, min(b, size - 1) + 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Hugging Face Hub TEST DOUBLE for one model repo.")
    p.add_argument("--dir", required=True, help="directory served as the repo")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0 = any free port)")
    p.add_argument("--repo-id", default=DEFAULT_REPO_ID)
    p.add_argument("--revision", default=DEFAULT_REVISION, help="commit sha served (40 hex)")
    p.add_argument("--token", help="require this Bearer token (visible in ps: prefer --token-file "
                   "or $HUB_DOUBLE_TOKEN)")
    p.add_argument("--token-file", help="file holding the token to require")
    p.add_argument("--auth-failure", choices=AUTH_FAILURES, default="gated")
    p.add_argument("--page-size", type=int, default=50, help="tree entries per page")
    p.add_argument("--make-checkpoint", action="store_true",
                   help="generate the synthetic checkpoint into --dir first (if no config.json)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--shard-bytes", type=int, default=8 * 2**20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--url-file", help="also write the URL to this file (atomically)")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)

    token = a.token or os.environ.get("HUB_DOUBLE_TOKEN") or None
    if a.token_file:
        token = Path(a.token_file).read_text().strip()
    if a.make_checkpoint and not (Path(a.dir) / "config.json").exists():
        make_checkpoint(a.dir, shards=a.shards, shard_bytes=a.shard_bytes, seed=a.seed)
    double = HubDouble(a.dir, a.repo_id, a.revision, token, a.host, a.port,
                       auth_failure=a.auth_failure, page_size=a.page_size, verbose=a.verbose)
    double.start()
    if a.url_file:
        tmp = a.url_file + ".tmp"
        Path(tmp).write_text(double.url + "\n")
        os.replace(tmp, a.url_file)
    print(double.url, flush=True)  # first stdout line: the parent reads it to find the port
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    double.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
