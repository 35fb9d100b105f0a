"""Serve this host's verified weights to the other hosts of the site, read-only, while the
deploy's weights stage needs them (`weights.pyz serve`; `serve --stop` ends it).

Why a small server on the standard library's http.server and not a stock one: the host has
python3 and this one zip application, and the server must (1) serve only the files of the
manifest, nothing else of the disk (no listing, no other path), (2) answer HTTP range
requests, since aria2 on the receivers splits each file over all its sources, and (3) refuse
every request without the run's token, which it reads from a 0600 file and never from its
command line. `python3 -m http.server` serves a whole tree with no authentication;
darkhttpd and busybox httpd take their credentials on the command line (visible in `ps`);
nginx could be configured for all three, but is a root daemon and a package install on
every GPU host for the few minutes of a fan-out. Bodies go out with sendfile(2), so the
server costs little CPU.

Requests: GET or HEAD /<revision>/<path> with `Authorization: Bearer <token>`; one range
(`a-b`, `a-`, `-n`) gives 206 with Content-Range. Only verified files are served: all of
them once the weights are verified at the manifest's revision (VERIFIED), and before that,
while this host is still fetching, each file whose hash the tool checked against the
manifest at this revision and that is unchanged since (the hash cache's identity: size,
mtime, inode). So a host serves each file as soon as it has verified it, and a file
arriving, half-written or unchecked is never handed out (404). GET /<revision>/ answers what
this host holds now, for the receivers (hostside/peers.py): {"files": [...], "complete",
"growing": its own fetch is still under way, "progress": its bytes so far}. A server that
nobody asks for anything during --max-idle seconds stops by itself (a controller that died
mid-deploy leaves no server behind for long). One server per weights dir (a lock file).
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
import re
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from .common import (EXIT_OK, BusyError, LocalError, Paths, UsageError, expected_hash, log,
                     read_json, read_marker, write_json_atomic)
from .jobs import lock_holder
from .verify import cached_hash

SEND_CHUNK = 8 << 20  # per sendfile call: a dead receiver is noticed between calls
# A server is started just before its host's own fetch: until that job runs (or if it never
# starts), the host counts as still fetching for this long.
START_GRACE_S = 120.0


def read_secret(path: str) -> str:
    """The token from a file only its owner may read (as the HF token's)."""
    try:
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise UsageError(f"token file {path} is readable by other users "
                             f"(mode {st.st_mode & 0o777:o}); chmod 600 it")
        with open(path) as f:
            token = f.read().strip()
    except OSError as e:
        raise UsageError(f"cannot read token file {path}: {e.strerror or e}") from None
    if len(token) < 16:
        raise UsageError(f"token file {path} holds no usable token (16 characters at least)")
    return token


def parse_range(header: str, size: int):
    """One `bytes=a-b` / `a-` / `-n` range -> (start, end exclusive); None = send it all;
    "unsatisfiable" -> 416."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
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


class WeightsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, paths: Paths, manifest: dict, token: str):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, Handler)
        self.paths, self.token = paths, token.encode()
        self.revision = manifest["revision"]
        self.files = {e["path"]: e["size"] for e in manifest["files"]}
        self.hashes = {e["path"]: expected_hash(e) for e in manifest["files"]}
        self.started = time.time()
        self._cache_key, self._cache = None, {}
        self.last_activity = time.monotonic()
        self.active = 0
        self.sent = 0
        self._lock = threading.Lock()

    def busy(self, delta: int, sent: int = 0) -> None:
        with self._lock:
            self.active += delta
            self.sent += sent
            self.last_activity = time.monotonic()

    def _checked(self) -> dict:
        """The hash cache's files (re-read when the fetch job has rewritten it)."""
        try:
            st = os.stat(self.paths.cache)
        except OSError:
            return {}
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if key != self._cache_key:
                doc = read_json(self.paths.cache, {})
                files = doc.get("files") if isinstance(doc, dict) else None
                self._cache_key, self._cache = key, files if isinstance(files, dict) else {}
            return self._cache

    def holds(self, rel: str, st=None, complete: bool | None = None) -> bool:
        """Is this file verified here (see the module's docstring)? st: its stat, if taken."""
        try:
            st = st or os.stat(self.paths.file(rel))
        except OSError:
            return False
        if st.st_size != self.files[rel]:
            return False
        if complete if complete is not None else read_marker(self.paths) == self.revision:
            return True
        entry = self._checked().get(rel)
        algo, want = self.hashes[rel]
        return (isinstance(entry, dict) and entry.get("revision") == self.revision
                and cached_hash(entry, st, algo) == want)

    def index(self) -> dict:
        verified = read_marker(self.paths) == self.revision
        files = sorted(rel for rel in self.files if self.holds(rel, complete=verified))
        complete = len(files) == len(self.files)
        state = read_json(self.paths.state_file, {}) or {}
        if complete:
            growing = False
        elif lock_holder(self.paths)[0]:
            growing = True
        else:  # no job now: still fetching only if none ended since this server started
            ended = float(state.get("finished_at") or 0) >= self.started
            growing = not ended and time.time() - self.started < START_GRACE_S
        return {"revision": self.revision, "files": files, "complete": complete,
                "growing": growing, "progress": state.get("bytes_done")}


class Handler(BaseHTTPRequestHandler):
    server: WeightsServer
    protocol_version = "HTTP/1.1"
    server_version = "glmfleet-weights"
    sys_version = ""

    quiet = False  # the receivers' frequent looks at the index stay out of the log

    def log_message(self, fmt, *args):  # one line per file request into the tool's log
        if not self.quiet:
            log.info("serve: %s %s", self.client_address[0], fmt % args)

    def _refuse(self, status: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self._serve()

    def do_GET(self):
        self._serve()

    def _serve(self) -> None:
        srv = self.server
        srv.busy(+1)
        self.quiet = False
        sent = 0
        try:
            given = self.headers.get("Authorization", "")
            if not (given.startswith("Bearer ") and
                    hmac.compare_digest(given[7:].strip().encode(), srv.token)):
                return self._refuse(401, "a valid token is required")
            path = unquote(urlsplit(self.path).path)
            prefix = f"/{srv.revision}/"
            rel = path[len(prefix):] if path.startswith(prefix) else None
            if rel == "":
                self.quiet = True
                return self._json(srv.index())
            if rel not in srv.files:
                return self._refuse(404, "not a file of this revision")
            size = srv.files[rel]
            try:
                f = open(srv.paths.file(rel), "rb")
            except OSError:
                return self._refuse(404, "not here")
            with f:
                if not srv.holds(rel, os.fstat(f.fileno())):
                    return self._refuse(404, "not verified on this host (yet)")
                rng = parse_range(self.headers.get("Range"), size)
                if rng == "unsatisfiable":
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = rng or (0, size)
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                if self.command == "HEAD":
                    return
                while start + sent < end:
                    n = self.connection.sendfile(f, start + sent, min(SEND_CHUNK, end - start - sent))
                    if not n:
                        break
                    sent += n
                if start + sent < end:  # the file shrank under us: the receiver sees a short body
                    self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        finally:
            srv.busy(-1, sent)


def serve_lock(paths: Paths) -> int:
    """The serve lock (one server per weights dir); BusyError names the running one's pid."""
    os.makedirs(paths.state, exist_ok=True)
    fd = os.open(paths.serve_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode().strip()
        os.close(fd)
        raise BusyError(int(pid) if pid.isdigit() else None) from None
    return fd


def open_server(args, paths: Paths, manifest: dict) -> WeightsServer:
    """Read the token, then bind (in the caller, so a port in use or a wrong address is
    reported at once, not from the daemon)."""
    token = read_secret(args.token_file)
    try:
        return WeightsServer((args.bind, args.port), paths, manifest, token)
    except OSError as e:
        raise LocalError(f"cannot listen on {args.bind}:{args.port} ({e.strerror or e}): check "
                         "site_address and weights_peer_port (the port must be free)") from None


def run_server(srv: WeightsServer, lock_fd: int, max_idle: float, ready=None) -> int:
    """Serve until SIGTERM or max_idle seconds without a request."""
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
    stop = threading.Event()

    def idle_watch():
        while not stop.wait(1.0):
            if srv.active == 0 and time.monotonic() - srv.last_activity > max_idle:
                log.info("serve: nothing asked for %d s: stopping", max_idle)
                break
        srv.shutdown()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    host, port = srv.server_address[:2]
    write_json_atomic(srv.paths.serve_state, {"pid": os.getpid(), "address": host, "port": port,
                                              "revision": srv.revision, "started_at": time.time()})
    log.info("serve: %d file(s) of %s on %s:%d (pid %d)", len(srv.files), srv.revision, host,
             port, os.getpid())
    if ready is not None:
        ready()
    threading.Thread(target=idle_watch, name="idle", daemon=True).start()
    srv.serve_forever(poll_interval=0.5)
    srv.server_close()
    log.info("serve: stopped after sending %d bytes", srv.sent)
    try:
        os.unlink(srv.paths.serve_state)
    except OSError:
        pass
    return EXIT_OK


def stop_server(paths: Paths, wait_s: float = 10.0) -> dict:
    """SIGTERM the running server, if any, and wait for its lock to be released."""
    try:
        fd = os.open(paths.serve_lock, os.O_RDONLY)
    except OSError:
        return {"status": "not running"}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return {"status": "not running"}
        except BlockingIOError:
            pass
        text = os.pread(fd, 32, 0).decode().strip()
        pid = int(text) if text.isdigit() else None
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return {"status": "stopped", "pid": pid}
            except BlockingIOError:
                time.sleep(0.1)
        return {"status": "still running", "pid": pid}
    finally:
        os.close(fd)
