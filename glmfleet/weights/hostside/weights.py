#!/usr/bin/env python3
"""Model weights on one GPU host: verify them, download what is missing or bad, report.

Runs ON the host, copied there by the deploy, as one self-contained script:

    python3 weights.py verify   --dir D [--manifest M] [--jobs N] [--rehash] [--strict-extra] [--detach]
    python3 weights.py download --dir D [--manifest M] [--token-file F] [--endpoint URL]
                                [--downloads K] [--attempts A] [--jobs N] [--strict-extra] [--detach]
    python3 weights.py status   --dir D [--wait SECONDS]
    (all take --state-dir S; default D/.glmfleet)

The manifest (made on the controller by glmfleet/weights/manifest.py from the Hub's own listing at
the pinned commit) names every file with its size and expected hash: sha256 for LFS files,
the git blob sha1 (`blob <len>\\0` + content) for the others. Verification trusts nothing
but those hashes: the Hub client checks only sizes, and in local_dir mode it skips a file
whenever its .cache/huggingface/download/<path>.metadata says so.

Verification is stdlib only. Downloading imports huggingface_hub (and uses hf_xet when the
Hub offers Xet); that import happens only when something must be fetched, so a verify-only
host (pre-staged weights) needs neither the package nor a route to the Hub.

Files kept in the state dir (default D/.glmfleet, never part of the repo):
    manifest.json     the manifest the last job used
    hash-cache.json   path -> (size, mtime_ns, inode) and the hashes computed for that identity,
                      so an unchanged file costs one stat on the next run
    verify.json       result of the last verification (written atomically)
    VERIFIED          the verified revision; removed when a job starts, written only when
                      every file matched, so a failed or interrupted run never leaves it
    state.json        progress of the running or last job (see `status`)
    lock              flock'ed by the running job; holds its pid
    weights.log       log of all jobs (a detached job's stdout/stderr go here too)

Exit codes: 0 ok (verified / started detached / status printed), 1 verification failed,
2 bad usage or input, 3 another job is already running, 4 the Hub refused or was
unreachable, 5 local problem (disk full, permissions).

stdout is JSON, one object on the last line:
  verify/download in the foreground: the final state.json (below)
  --detach: {"status": "started", "command", "pid", "state", "log"}
  refused:  {"status": "busy"|"failed"|..., "error", "exit_code"[, "pid" of the running job]}
  status:   state.json + {"dir", "running", "lock_pid", "pid_alive", "stale", "verified_revision"}
state.json: {"command", "phase": starting|check|connect|download|verify|done|failed, "pid",
  "started_at", "updated_at", "finished_at", "repo", "revision", "files_total", "bytes_total",
  "bytes_done", "rate_bytes_per_s", "eta_s", "current_file", "current_files",
  "files_to_fetch", "bytes_to_fetch", "fetched_files", "fetched_bytes", "exit_code", "error",
  "result": {ok, files_total, hashed_files, cached_files, missing, extra, corrupt, structure
  (counts), summary}, "detached", "log"}
verify.json: {"ok", "summary", "repo", "revision", "files_total", "bytes_total",
  "hashed_files", "hashed_bytes", "cached_files", "missing": [path], "extra": [path],
  "corrupt": [{"path", "reason": size|sha256|git_sha1|unreadable|changed, "expected",
  "actual" | "detail"}],
  "structure": [{"path", "problems": [text]}], "elapsed_s", "hash_rate_bytes_per_s", "jobs"}

The token comes from --token-file (a 0600 file) or $HF_TOKEN, never from argv, and is handed
to huggingface_hub in memory; it is written nowhere.

Stdlib only at import time; keep it valid on python3.8+ (the oldest supported hosts).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed

MANIFEST_FORMAT = "glmfleet-manifest/1"
STATE_VERSION = 1
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY, EXIT_HUB, EXIT_LOCAL = 0, 1, 2, 3, 4, 5
STATE_DIR_NAME = ".glmfleet"
# Top-level entries of the weights dir that are not repo files: our state, the Hub client's
# local_dir bookkeeping (.cache/huggingface) and a git checkout (same rule as `hf cache verify`).
IGNORED_TOP = (STATE_DIR_NAME, ".cache", ".git")
HF_DOWNLOAD_META = os.path.join(".cache", "huggingface", "download")
TERMINAL_PHASES = ("done", "failed")

# Hashing reads sequential chunks into one reused buffer per worker; all buffers together
# stay under BUFFER_CAP, so memory is bounded by the worker count, never by file sizes.
# 4 MiB measured faster than 16 MiB on warm data (~5% on a 2-core VM with SHA-NI): the
# chunk is hashed while it is still in the CPU cache. Kernel readahead (FADV_SEQUENTIAL)
# keeps the disk streaming whatever the read size.
BUFFER_CAP = 128 << 20
MAX_BUFFER = 4 << 20
MIN_BUFFER = 1 << 20
DOWNLOAD_BUFFER = 4 << 20  # hashing right after a download shares memory with the client
SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own upper bound
CACHE_FLUSH_S = 10.0  # a killed verify of 313 GB loses at most this much hashing work
STATE_TICK_S = 1.0
LOCK_RETRY_S = 0.25  # rides out a concurrent `status` probe holding the lock for microseconds
LOG_ROTATE_BYTES = 20 << 20

_HEX40 = re.compile(r"[0-9a-f]{40}\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")

log = logging.getLogger("glmfleet.weights")


# =============================================================================================
# Errors: each carries the exit code the CLI returns for it.
# =============================================================================================

class WeightsError(Exception):
    exit_code = EXIT_FAILED

    def __init__(self, message: str, kind: str = "failed"):
        super().__init__(message)
        self.message, self.kind = message, kind


class UsageError(WeightsError):
    exit_code = EXIT_USAGE


class BusyError(WeightsError):
    exit_code = EXIT_BUSY

    def __init__(self, pid):
        super().__init__(f"already running (pid {pid if pid else 'unknown'})", "busy")
        self.pid = pid


class HubAccessError(WeightsError):
    exit_code = EXIT_HUB


class LocalError(WeightsError):
    exit_code = EXIT_LOCAL


# =============================================================================================
# Pure logic: manifest checks, expected hashes, structure of safetensors files and the index,
# the cache's identity rule, Hub error messages. No I/O here.
# =============================================================================================

def safe_relpath(path) -> bool:
    """A repo path we may join onto the weights dir: relative, no '..', not in our state dirs."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    parts = path.split("/")
    return all(p not in ("", ".", "..") for p in parts) and parts[0] not in IGNORED_TOP


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def manifest_problems(m) -> list:
    """Every reason this object is not a usable manifest (empty list = fine). The host checks
    its input itself: a bad path here would make a download write outside the weights dir."""
    if not isinstance(m, dict):
        return ["the manifest is not a JSON object"]
    problems = []
    if m.get("format") != MANIFEST_FORMAT:
        problems.append(f"format is {m.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    if not isinstance(m.get("repo"), str) or "/" not in m.get("repo", ""):
        problems.append(f"repo {m.get('repo')!r} is not an owner/name repo id")
    if not isinstance(m.get("revision"), str) or not _HEX40.match(m["revision"]):
        problems.append(f"revision {m.get('revision')!r} is not a 40-hex commit")
    files = m.get("files")
    if not isinstance(files, list):
        return problems + ["files is not a list"]
    seen = set()
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            problems.append(f"files[{i}] is not an object")
            continue
        path = f.get("path")
        where = f"files[{i}] ({path!r})"
        if not safe_relpath(path):
            problems.append(f"{where}: not a safe relative path inside the weights dir")
        elif path in seen:
            problems.append(f"{where}: listed twice")
        seen.add(path)
        if not _is_int(f.get("size")) or f["size"] < 0:
            problems.append(f"{where}: size {f.get('size')!r} is not a byte count")
        sha256, sha1 = f.get("sha256"), f.get("git_sha1")
        if sha256 is not None and not (isinstance(sha256, str) and _HEX64.match(sha256)):
            problems.append(f"{where}: sha256 {sha256!r} is not 64 lowercase hex digits")
        if sha1 is not None and not (isinstance(sha1, str) and _HEX40.match(sha1)):
            problems.append(f"{where}: git_sha1 {sha1!r} is not 40 lowercase hex digits")
        if sha256 is None and sha1 is None:
            problems.append(f"{where}: has neither sha256 nor git_sha1, so it cannot be checked")
    if _is_int(m.get("total_size")) and not problems:
        total = sum(f["size"] for f in files)
        if m["total_size"] != total:
            problems.append(f"total_size {m['total_size']} is not the sum of the file sizes ({total})")
    return problems


def expected_hash(entry: dict) -> tuple:
    """(algorithm, hex) to check a file by: the Hub publishes sha256 for LFS files only; for
    the others its blob id is the git sha1 of the content."""
    if entry.get("sha256"):
        return "sha256", entry["sha256"]
    return "git_sha1", entry["git_sha1"]


def identity(st) -> list:
    """What must be unchanged for a cached hash to stand for the file without reading it."""
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def cached_hash(cache_entry, st, algo: str):
    """The cached digest for this file, or None when the file's identity moved on (or the
    cache never computed that algorithm for it)."""
    if not isinstance(cache_entry, dict) or cache_entry.get("identity") != identity(st):
        return None
    value = cache_entry.get(algo)
    return value if isinstance(value, str) else None


def buffer_size(jobs: int) -> int:
    per = min(MAX_BUFFER, BUFFER_CAP // max(1, jobs))
    return max(MIN_BUFFER, per - per % MIN_BUFFER)


# Bits per element for safetensors dtypes; sub-byte ones (F4, F6_*) are packed and skipped
# by the size check, which only runs for whole-byte types.
_DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
               "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
               "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
_MAX_LISTED = 8  # problems listed per file; a broken header could otherwise yield thousands


def _cap(problems: list) -> list:
    if len(problems) <= _MAX_LISTED:
        return problems
    return problems[:_MAX_LISTED] + [f"... and {len(problems) - _MAX_LISTED} more"]


def safetensors_problems(file_size: int, header_len, header: bytes | None) -> list:
    """Structural problems of one safetensors file, given its size, the u64 header length
    and the header bytes (None when they could not be read). The format requires the
    tensors' data_offsets to tile the data section exactly: no gap, no overlap, nothing past
    the end."""
    if file_size < 8 or header_len is None:
        return [f"too short for a safetensors file ({file_size} bytes)"]
    if header_len > SAFETENSORS_MAX_HEADER or 8 + header_len > file_size:
        return [f"header length {header_len} does not fit in the file ({file_size} bytes)"]
    try:
        obj = json.loads(header)
    except (ValueError, TypeError) as e:
        return [f"header is not valid JSON ({e})"]
    if not isinstance(obj, dict):
        return ["header is not a JSON object"]
    problems, spans = [], []
    for name, t in obj.items():
        if name == "__metadata__":
            continue
        offs = t.get("data_offsets") if isinstance(t, dict) else None
        shape = t.get("shape") if isinstance(t, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)
                and 0 <= offs[0] <= offs[1]):
            problems.append(f"tensor {name}: bad data_offsets {offs!r}")
            continue
        if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
            problems.append(f"tensor {name}: bad shape {shape!r}")
            continue
        bits = _DTYPE_BITS.get(t.get("dtype"))
        if bits and bits % 8 == 0:
            n = bits // 8
            for d in shape:
                n *= d
            if offs[1] - offs[0] != n:
                problems.append(f"tensor {name}: {offs[1] - offs[0]} bytes for {t['dtype']}{shape} "
                                f"(expected {n})")
        spans.append((offs[0], offs[1], name))
    data_len = file_size - 8 - header_len
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            problems.append(f"tensor {name}: data starts at {begin}, expected {pos} (gap or overlap)")
        pos = max(pos, end)
    if pos != data_len:
        problems.append(f"tensor data ends at {pos} but {data_len} bytes follow the header")
    return _cap(problems)


def absent_tensors(names, header: bytes | None) -> list:
    """Names (from an index's weight_map) that a shard's header does not hold."""
    try:
        held = json.loads(header) if header is not None else {}
    except (ValueError, TypeError):
        held = {}
    held = held if isinstance(held, dict) else {}
    return sorted(n for n in names if n not in held)


def index_shards(index, index_path: str) -> dict:
    """{shard repo path: [tensor names]} from a parsed *.safetensors.index.json (shard names
    in weight_map are relative to the index's directory)."""
    base = index_path.rsplit("/", 1)[0] + "/" if "/" in index_path else ""
    out: dict = {}
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if isinstance(wmap, dict):
        for name, shard in wmap.items():
            if isinstance(shard, str):
                out.setdefault(base + shard, []).append(name)
    return out


def index_problems(index, index_path: str, manifest_paths) -> list:
    """Every shard named by the index must be a file of the manifest."""
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        return ["has no weight_map object"]
    wmap = index["weight_map"]
    if not wmap:
        return ["weight_map is empty"]
    bad = [k for k, v in wmap.items() if not isinstance(v, str)]
    problems = [f"weight_map values must be file names, e.g. for {bad[0]}"] if bad else []
    absent = sorted(p for p in index_shards(index, index_path) if p not in manifest_paths)
    if absent:
        problems.append(f"weight_map names {len(absent)} shard(s) not in the manifest: "
                        f"{', '.join(absent[:5])}")
    return problems


def index_check_key(index_sha: str, manifest_paths) -> str:
    """The index check depends only on the index content and the manifest's file set."""
    h = hashlib.sha256(index_sha.encode())
    for p in sorted(manifest_paths):
        h.update(b"\0" + p.encode())
    return h.hexdigest()


def _exc_chain(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status_of(exc):
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    return code if _is_int(code) else None


def hub_error_message(exc: BaseException, repo: str, revision: str, endpoint: str | None,
                      path: str | None = None) -> tuple:
    """(kind, message) for an exception raised by huggingface_hub. kind is one of gated,
    auth, revision, repo, entry, network, server, offline, hub. The message says what failed
    and what to check, in the deploy's setting names. Matched by class name so this stays
    importable without huggingface_hub. Download calls wrap most HTTP errors in
    LocalEntryNotFoundError, so the whole cause chain is searched, most specific first."""
    where = endpoint or "https://huggingface.co"
    chain = list(_exc_chain(exc))
    names = {n for e in chain for n in (c.__name__ for c in type(e).__mro__)}
    status = next((s for s in map(_status_of, chain) if s), None)
    token_hint = "check hf_token_file (or $HF_TOKEN on the controller)"
    if "GatedRepoError" in names:
        return "gated", (f"the Hub at {where} refused access to {repo} (HTTP {status}): the repo is "
                         f"gated and the token is missing or its account was not granted access; "
                         f"{token_hint} and accept the repo's terms on the Hub")
    if "RevisionNotFoundError" in names:
        return "revision", (f"revision {revision} of {repo} does not exist at {where}: check "
                            "model_revision (a 40-hex commit of that repo)")
    if "RepositoryNotFoundError" in names:
        return "repo", (f"repo {repo} was not found at {where}, or it is private and the token is "
                        f"missing or wrong (the Hub answers 'not found' to both): check model_repo, "
                        f"hf_endpoint, and {token_hint}")
    if status in (401, 403):
        return "auth", (f"the Hub at {where} refused the token (HTTP {status}) for {repo}: "
                        f"{token_hint}: is it valid, unexpired and allowed to read the repo?")
    if "RemoteEntryNotFoundError" in names:
        return "entry", (f"file {path or '?'} is not in {repo} at revision {revision} on {where}: "
                         "the manifest does not match the repo; fetch it again")
    if "OfflineModeIsEnabled" in names:
        return "offline", "HF_HUB_OFFLINE is set on this host, so nothing can be downloaded"
    if names & {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError",
                "ConnectionError", "RemoteProtocolError", "ReadTimeout", "ProxyError"}:
        return "network", (f"network error talking to the Hub at {where} ({_short(chain[-1])}): check "
                           "hf_endpoint, DNS, proxy and firewall from this machine")
    if status and status >= 500:
        return "server", (f"the Hub at {where} answered HTTP {status} for {repo}"
                          f"{' file ' + path if path else ''}; it may be down, try again later")
    return "hub", f"request to the Hub at {where} failed: {_short(chain[0])}"


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


# Kinds after which retrying the same request cannot help: stop the whole download.
PERMANENT_HUB_KINDS = ("gated", "auth", "revision", "repo", "entry", "offline")


def human_bytes(n) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # unreachable; keeps linters calm


def result_summary(r: dict) -> str:
    """One line for an operator: what passed, or what is wrong."""
    if r["ok"]:
        extra = f"; {len(r['extra'])} extra file(s) ignored" if r["extra"] else ""
        return (f"verified {r['files_total']} files ({human_bytes(r['bytes_total'])}) at revision "
                f"{r['revision']}: {r['hashed_files']} hashed by this check, {r['cached_files']} "
                f"hashed as they were downloaded or by an earlier check, unchanged since{extra}")
    parts = []
    if r["missing"]:
        parts.append(f"{len(r['missing'])} missing (e.g. {r['missing'][0]})")
    if r["corrupt"]:
        c = r["corrupt"][0]
        parts.append(f"{len(r['corrupt'])} corrupt (e.g. {c['path']}: {c['reason']})")
    if r["structure"]:
        s = r["structure"][0]
        parts.append(f"{len(r['structure'])} structurally broken (e.g. {s['path']}: {s['problems'][0]})")
    if r["extra"] and r["strict_extra"]:
        parts.append(f"{len(r['extra'])} extra (e.g. {r['extra'][0]})")
    return f"NOT verified at revision {r['revision']}: " + "; ".join(parts)


# =============================================================================================
# Small I/O helpers
# =============================================================================================

def write_json_atomic(path: str, obj, mode: int = 0o644) -> None:
    """Temp file + rename: a reader (or a crash) never sees half a file."""
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path: str, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def unlink_quiet(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


class Paths:
    """Where everything lives for one weights dir."""

    def __init__(self, weights_dir: str, state_dir: str | None = None):
        self.dir = os.path.abspath(weights_dir)
        self.state = os.path.abspath(state_dir) if state_dir else os.path.join(self.dir, STATE_DIR_NAME)
        self.manifest = os.path.join(self.state, "manifest.json")
        self.cache = os.path.join(self.state, "hash-cache.json")
        self.result = os.path.join(self.state, "verify.json")
        self.marker = os.path.join(self.state, "VERIFIED")
        self.state_file = os.path.join(self.state, "state.json")
        self.lock = os.path.join(self.state, "lock")
        self.log = os.path.join(self.state, "weights.log")
        self.hf_meta = os.path.join(self.dir, HF_DOWNLOAD_META)
        self.hf_home = os.path.join(self.state, "hf-home")

    def file(self, rel: str) -> str:
        return os.path.join(self.dir, *rel.split("/"))

    def client_metadata(self, rel: str) -> str:
        """The Hub client's local_dir record for a file: while it exists with our commit, the
        client skips the file without looking at it."""
        return os.path.join(self.hf_meta, *rel.split("/")) + ".metadata"


def load_manifest(path: str) -> dict:
    try:
        with open(path) as f:
            m = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"manifest {path} does not exist: the deploy writes it (glmfleet/weights/manifest.py "
                         "fetch_manifest) before calling this script") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read manifest {path}: {e}") from None
    problems = manifest_problems(m)
    if problems:
        raise UsageError(f"manifest {path} is not valid: " + "; ".join(problems[:5]))
    return m


def read_marker(paths: Paths):
    try:
        with open(paths.marker) as f:
            return f.read().strip() or None
    except OSError:
        return None


def list_local_files(root: str) -> list:
    """Every regular file (or symlink to one) under root as a repo path, skipping IGNORED_TOP."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in IGNORED_TOP]
            rel_dir = ""
        for name in filenames:
            if rel_dir == "" and name in IGNORED_TOP:
                continue
            out.append(f"{rel_dir.replace(os.sep, '/')}/{name}" if rel_dir else name)
    return sorted(out)


# =============================================================================================
# Hashing and per-file checks (run in worker threads: hashlib and readinto release the GIL,
# so threads use every core while one process keeps memory bounded and shares the index)
# =============================================================================================

_tls = threading.local()


def _buffer(size: int) -> bytearray:
    buf = getattr(_tls, "buf", None)
    if buf is None or len(buf) != size:
        buf = _tls.buf = bytearray(size)
    return buf


def _new_sha1(prefix: bytes):
    try:
        h = hashlib.sha1(usedforsecurity=False)  # git's object id, not a security use (FIPS hosts)
    except TypeError:  # python 3.8
        h = hashlib.sha1()
    h.update(prefix)
    return h


def hash_file(path: str, size: int, want_git_sha1: bool, buf_size: int, on_bytes=None,
              fsync: bool = False) -> dict:
    """sha256 (and the git blob sha1 if asked) of one file in a single sequential pass."""
    buf = _buffer(buf_size)
    view = memoryview(buf)
    sha256 = hashlib.sha256()
    sha1 = _new_sha1(b"blob %d\0" % size) if want_git_sha1 else None
    done = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # larger kernel readahead
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                chunk = view[:n]
                sha256.update(chunk)
                if sha1 is not None:
                    sha1.update(chunk)
                done += n
                if on_bytes:
                    on_bytes(n)
        if fsync:
            os.fsync(fd)  # a cache entry must never outlive the data it vouches for (power loss)
    finally:
        os.close(fd)
    return {"sha256": sha256.hexdigest(), "git_sha1": sha1.hexdigest() if sha1 else None, "read": done}


def read_safetensors_header(path: str, size: int):
    """(header_len, header bytes) or (None, None) when the file is too short."""
    if size < 8:
        return None, None
    with open(path, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little")
        if n > SAFETENSORS_MAX_HEADER or 8 + n > size:
            return n, None
        return n, f.read(n)


# Parsing a large header builds many Python objects; one at a time keeps memory bounded.
_header_gate = threading.Semaphore(1)


def check_one(paths: Paths, entry: dict, buf_size: int, on_bytes=None, fsync: bool = False) -> dict:
    """Hash one file and check its structure. Never raises for a file problem: the outcome
    says what went wrong."""
    rel = entry["path"]
    full = paths.file(rel)
    out = {"path": rel, "identity": None, "sha256": None, "git_sha1": None, "structure": None,
           "error": None}
    try:
        before = os.stat(full)
        digest = hash_file(full, before.st_size, entry.get("sha256") is None, buf_size, on_bytes, fsync)
        after = os.stat(full)
        out.update(sha256=digest["sha256"], git_sha1=digest["git_sha1"])
        if identity(before) != identity(after) or digest["read"] != before.st_size:
            out["error"] = "changed while it was being checked (is something writing to it?)"
            return out
        out["identity"] = identity(after)
        if rel.endswith(".safetensors"):
            with _header_gate:
                hlen, header = read_safetensors_header(full, after.st_size)
                out["structure"] = safetensors_problems(after.st_size, hlen, header)
    except OSError as e:
        out["error"] = f"unreadable: {e.strerror or e}"
    return out


# =============================================================================================
# The hash cache
# =============================================================================================

class HashCache:
    """path -> {identity, sha256, git_sha1, structure, revision, checked_at}, shared by threads,
    flushed atomically (at most every CACHE_FLUSH_S while busy, and at the end)."""

    def __init__(self, path: str):
        self.path = path
        doc = read_json(path, {})
        ok = isinstance(doc, dict) and doc.get("version") == 1
        self.files = doc.get("files", {}) if ok and isinstance(doc.get("files"), dict) else {}
        self.index_ok = doc.get("index_ok", {}) if ok and isinstance(doc.get("index_ok"), dict) else {}
        self._lock = threading.Lock()
        self._dirty = False
        self._flushed = time.monotonic()

    def get(self, rel: str):
        with self._lock:
            return self.files.get(rel)

    def record(self, outcome: dict, revision: str) -> None:
        with self._lock:
            self.files[outcome["path"]] = {
                "identity": outcome["identity"], "sha256": outcome["sha256"],
                "git_sha1": outcome["git_sha1"], "structure": outcome["structure"],
                "revision": revision, "checked_at": round(time.time(), 3)}
            self._dirty = True

    def forget(self, rel: str) -> None:
        with self._lock:
            if self.files.pop(rel, None) is not None:
                self._dirty = True

    def set_index_ok(self, rel: str, key: str) -> None:
        with self._lock:
            self.index_ok[rel] = key
            self._dirty = True

    def flush(self, force: bool = True) -> None:
        with self._lock:
            if not self._dirty or (not force and time.monotonic() - self._flushed < CACHE_FLUSH_S):
                return
            doc = {"version": 1, "files": dict(self.files), "index_ok": dict(self.index_ok)}
            self._dirty = False
            self._flushed = time.monotonic()
        write_json_atomic(self.path, doc)


# =============================================================================================
# Progress (thread-safe counters, rate over a sliding window) and the state file
# =============================================================================================

class Progress:
    WINDOW_S = 20.0

    def __init__(self, total: int, done: int = 0):
        self.total, self.done = total, done
        self.current: set = set()
        self._lock = threading.Lock()
        self._samples = deque([(time.monotonic(), done)])

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n

    def rebase(self, n: int) -> None:
        """Count n bytes as done without them showing up as speed (e.g. cached files)."""
        with self._lock:
            self.done += n
            self._samples = deque((t, d + n) for t, d in self._samples)

    def begin(self, rel: str) -> None:
        with self._lock:
            self.current.add(rel)

    def end(self, rel: str) -> None:
        with self._lock:
            self.current.discard(rel)

    def snapshot(self, inflight: int = 0) -> dict:
        now = time.monotonic()
        with self._lock:
            done = min(self.total, self.done + inflight)
            current = sorted(self.current)
            self._samples.append((now, done))
            while len(self._samples) > 2 and now - self._samples[1][0] > self.WINDOW_S:
                self._samples.popleft()
            t0, d0 = self._samples[0]
        rate = max(0.0, (done - d0) / (now - t0)) if now - t0 > 0.5 else None
        eta = (self.total - done) / rate if rate and rate > 0 else None
        return {"bytes_done": done, "bytes_total": self.total,
                "rate_bytes_per_s": round(rate) if rate is not None else None,
                "eta_s": round(eta, 1) if eta is not None else None,
                "current_files": current, "current_file": current[0] if current else None}


class State:
    """The job's state.json: rewritten atomically on every change and once per STATE_TICK_S
    while a Progress is attached, so a poller always reads a whole, fresh object."""

    def __init__(self, path: str, base: dict):
        self.path = path
        self.data = dict(base)
        self._lock = threading.Lock()
        self._progress = None
        self._inflight = None
        self._stop = threading.Event()
        self._thread = None

    def set(self, **kw) -> None:
        with self._lock:
            self.data.update(kw)
            self._write_locked()

    def attach(self, progress, inflight=None) -> None:
        with self._lock:
            self._progress, self._inflight = progress, inflight
            self._write_locked()

    def detach(self) -> None:
        with self._lock:
            self._write_locked()
            self._progress = self._inflight = None

    def _write_locked(self) -> None:
        if self._progress is not None:
            extra = 0
            if self._inflight is not None:
                try:
                    extra = self._inflight()
                except OSError:
                    extra = 0
            self.data.update(self._progress.snapshot(extra))
        self.data["updated_at"] = round(time.time(), 3)
        write_json_atomic(self.path, self.data)

    def start_ticker(self) -> None:
        def tick():
            while not self._stop.wait(STATE_TICK_S):
                with self._lock:
                    if self._progress is not None:
                        try:
                            self._write_locked()
                        except OSError:
                            pass  # a full disk must not kill the job through its progress report
        self._thread = threading.Thread(target=tick, name="state", daemon=True)
        self._thread.start()

    def stop_ticker(self) -> None:
        self._stop.set()


# =============================================================================================
# Verification
# =============================================================================================

class interruptible:
    """Run a pool's work; on an exception (a signal included) cancel what has not started and
    return without waiting, instead of `with pool:`, which would run every queued file."""

    def __init__(self, pool: ThreadPoolExecutor):
        self.pool = pool

    def __enter__(self):
        return self.pool

    def __exit__(self, exc_type, exc, tb):
        self.pool.shutdown(wait=exc_type is None, **({"cancel_futures": True} if exc_type and
                                                      sys.version_info >= (3, 9) else {}))
        return False


class Verifier:
    """Checks a weights dir against a manifest and writes verify.json (and VERIFIED when all
    is well). Unchanged files are judged from the cache; the rest are hashed in parallel."""

    def __init__(self, paths: Paths, manifest: dict, cache: HashCache, jobs: int,
                 strict_extra: bool = False, rehash: bool = False):
        self.paths, self.manifest, self.cache = paths, manifest, cache
        self.jobs, self.strict_extra, self.rehash = max(1, jobs), strict_extra, rehash
        self.entries = {e["path"]: e for e in manifest["files"]}

    # -- planning: stat only --
    def plan(self) -> dict:
        plan = {"missing": [], "corrupt": [], "cached": [], "to_hash": [], "structure": []}
        for rel, entry in sorted(self.entries.items()):
            try:
                st = os.stat(self.paths.file(rel))
            except FileNotFoundError:
                plan["missing"].append(rel)
                continue
            except OSError as e:
                plan["corrupt"].append({"path": rel, "reason": "unreadable", "detail": str(e)})
                continue
            if st.st_size != entry["size"]:  # a truncated or grown file: no need to hash it
                plan["corrupt"].append({"path": rel, "reason": "size", "expected": entry["size"],
                                        "actual": st.st_size})
                continue
            algo, want = expected_hash(entry)
            have = None if self.rehash else cached_hash(self.cache.get(rel), st, algo)
            if have is None:
                plan["to_hash"].append(entry)
            elif have != want:
                plan["corrupt"].append({"path": rel, "reason": algo, "expected": want, "actual": have})
                plan["cached"].append(rel)
            else:
                plan["cached"].append(rel)
                problems = self.cache.get(rel).get("structure")
                if problems:
                    plan["structure"].append({"path": rel, "problems": problems})
        # Largest first: with one worker per core the long files start early, so the run does
        # not end with one core hashing the biggest shard alone.
        plan["to_hash"].sort(key=lambda e: -e["size"])
        return plan

    # -- the run --
    def run(self, progress: Progress | None = None) -> dict:
        t0 = time.monotonic()
        revision = self.manifest["revision"]
        plan = self.plan()
        bufsize = buffer_size(self.jobs)
        corrupt, structure = list(plan["corrupt"]), list(plan["structure"])
        hashed_bytes = 0
        if progress is not None:  # judged without reading: done, but not part of the rate
            progress.rebase(sum(self.entries[p]["size"] for p in plan["cached"]))
        if plan["to_hash"]:
            log.info("hashing %d file(s), %s, with %d worker(s)", len(plan["to_hash"]),
                     human_bytes(sum(e["size"] for e in plan["to_hash"])), self.jobs)
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="hash")
        with interruptible(pool):
            futures = {pool.submit(self._check, e, bufsize, progress): e for e in plan["to_hash"]}
            for fut in as_completed(futures):
                entry, out = futures[fut], fut.result()
                hashed_bytes += entry["size"]
                problem = self._judge(entry, out, revision)
                if problem:
                    corrupt.append(problem)
                elif out["structure"]:
                    structure.append({"path": entry["path"], "problems": out["structure"]})
                if problem:
                    log.warning("%s: %s", entry["path"],
                                problem.get("detail") or problem["reason"] + " mismatch")
                self.cache.flush(force=False)
        index = self._check_indexes(corrupt, plan["missing"])
        structure.extend(index)
        extra = [p for p in list_local_files(self.paths.dir) if p not in self.entries]
        for rel in list(self.cache.files):  # forget files that are gone, keep the cache small
            if rel not in self.entries and rel not in extra:
                self.cache.forget(rel)
        self.cache.flush()
        elapsed = time.monotonic() - t0
        corrupt.sort(key=lambda c: c["path"])
        result = {
            "version": STATE_VERSION, "repo": self.manifest["repo"], "revision": revision,
            "dir": self.paths.dir, "checked_at": round(time.time(), 3), "elapsed_s": round(elapsed, 5),
            "files_total": len(self.entries), "bytes_total": sum(e["size"] for e in self.entries.values()),
            "hashed_files": len(plan["to_hash"]), "hashed_bytes": hashed_bytes,
            "cached_files": len(plan["cached"]), "jobs": self.jobs,
            "hash_rate_bytes_per_s": round(hashed_bytes / elapsed) if hashed_bytes and elapsed > 0 else None,
            "missing": plan["missing"], "extra": extra, "corrupt": corrupt,
            "structure": sorted(structure, key=lambda s: s["path"]), "strict_extra": self.strict_extra,
        }
        result["ok"] = not (result["missing"] or corrupt or structure or (extra and self.strict_extra))
        result["summary"] = result_summary(result)
        return result

    def _check(self, entry, bufsize, progress):
        if progress is not None:
            progress.begin(entry["path"])
        try:
            return check_one(self.paths, entry, bufsize, progress.add if progress else None)
        finally:
            if progress is not None:
                progress.end(entry["path"])

    def _judge(self, entry: dict, out: dict, revision: str):
        """Record a fresh hash in the cache; return a corrupt-file record or None."""
        if out["error"]:
            self.cache.forget(entry["path"])
            reason = "changed" if out["error"].startswith("changed") else "unreadable"
            return {"path": entry["path"], "reason": reason, "detail": out["error"]}
        self.cache.record(out, revision)
        algo, want = expected_hash(entry)
        if out[algo] != want:
            return {"path": entry["path"], "reason": algo, "expected": want, "actual": out[algo]}
        return None

    def _check_indexes(self, corrupt: list, missing: list) -> list:
        """Index files whose own hash is fine: every shard they name must be in the manifest
        and hold every tensor the index maps to it (a loader would fail on either). Cached
        by (index content, manifest file set): the verdict is about content whose hashes
        are pinned, so a stat-only run parses nothing."""
        bad_paths = set(missing) | {c["path"] for c in corrupt}
        out = []
        for rel, entry in sorted(self.entries.items()):
            if not rel.endswith(".safetensors.index.json") or rel in bad_paths:
                continue
            key = index_check_key(expected_hash(entry)[1], self.entries)
            if self.cache.index_ok.get(rel) == key:
                continue
            index = read_json(self.paths.file(rel))
            problems = index_problems(index, rel, self.entries)
            if not problems:
                problems = self._shard_tensor_problems(index_shards(index, rel), bad_paths)
            if problems:
                out.append({"path": rel, "problems": _cap(problems)})
            elif not bad_paths:  # only a verdict over intact shards is worth keeping
                self.cache.set_index_ok(rel, key)
        return out

    def _shard_tensor_problems(self, shards: dict, bad_paths: set) -> list:
        problems = []
        for shard, names in sorted(shards.items()):
            if shard in bad_paths:
                continue  # already reported as missing or corrupt
            full = self.paths.file(shard)
            try:
                with _header_gate:
                    _hlen, header = read_safetensors_header(full, os.stat(full).st_size)
                    absent = absent_tensors(names, header)
            except OSError as e:
                problems.append(f"{shard}: unreadable ({e.strerror or e})")
                continue
            if absent:
                problems.append(f"{shard} lacks {len(absent)} tensor(s) the index maps to it, "
                                f"e.g. {', '.join(absent[:3])}")
        return problems


def publish_result(paths: Paths, result: dict) -> None:
    """verify.json always; VERIFIED only when every file matched (it was removed at start)."""
    write_json_atomic(paths.result, result)
    if result["ok"]:
        tmp = paths.marker + ".tmp"
        with open(tmp, "w") as f:
            f.write(result["revision"] + "\n")
        os.replace(tmp, paths.marker)


# =============================================================================================
# Lock, logging, detaching
# =============================================================================================

def acquire_lock(paths: Paths) -> int:
    """Exclusive flock on the lock file, or BusyError naming the holder's pid. The kernel
    drops the lock when the holder dies, so a killed job never blocks the next one."""
    os.makedirs(paths.state, exist_ok=True)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                pid = _read_lock_pid(fd)
                os.close(fd)
                raise BusyError(pid) from None
            time.sleep(0.05)
    write_lock_pid(fd)
    return fd


def write_lock_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _read_lock_pid(fd: int):
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def lock_holder(paths: Paths) -> tuple:
    """(running, pid) without disturbing a job: a shared lock fails while a job holds the
    exclusive one."""
    try:
        fd = os.open(paths.lock, os.O_RDONLY)
    except OSError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _read_lock_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, None
    finally:
        os.close(fd)


def pid_alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def setup_logging(paths: Paths, to_stderr: bool) -> None:
    """Log to the log file; in the foreground also to stderr. A detached job's stderr is the
    log file already, so it gets one handler only."""
    try:
        if os.path.getsize(paths.log) > LOG_ROTATE_BYTES:
            os.replace(paths.log, paths.log + ".1")
    except OSError:
        pass
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(message)s")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handlers = [logging.FileHandler(paths.log)]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3"):  # one line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)


def close_other_fds(keep) -> None:
    """A daemon holding any descriptor of the SSH session (a pipe the caller inherited)
    would keep that session from closing; keep only what the job needs."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 256))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def detach(run_job, lock_fd: int, paths: Paths, command: str) -> int:
    """Run `run_job(ready)` in a daemon that survives the SSH session (double fork, setsid,
    stdin from /dev/null, stdout/stderr to the log). The daemon keeps the lock through its
    inherited descriptor. Returns once the daemon has written its pid and first state."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:  # the caller: wait for the daemon's pid, print it, return
        os.close(w)
        os.close(lock_fd)
        msg = b""
        while True:
            chunk = os.read(r, 64)
            if not chunk:
                break
            msg += chunk
        os.close(r)
        os.waitpid(pid, 0)
        if not msg.strip().isdigit():
            print(f"weights.py: the detached {command} exited at once; see {paths.log}", file=sys.stderr)
            print(json.dumps({"status": "failed to start", "log": paths.log}))
            return EXIT_FAILED
        print(json.dumps({"status": "started", "command": command, "pid": int(msg),
                          "state": paths.state_file, "log": paths.log}))
        return EXIT_OK
    code = EXIT_FAILED
    try:
        os.close(r)
        os.setsid()  # no controlling terminal: a hang-up of the SSH session does not reach us
        if os.fork():
            os._exit(0)
        os.chdir("/")
        os.umask(0o022)
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
        close_other_fds(keep=(0, 1, 2, lock_fd, w))
        write_lock_pid(lock_fd)

        def ready():
            os.write(w, str(os.getpid()).encode())
            os.close(w)
        code = run_job(ready, detached=True)
    except BaseException:  # anything escaping must still end this process, never the caller's code
        try:
            logging.getLogger().exception("detached %s crashed", command)
        except Exception:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
        finally:
            os._exit(code)


# =============================================================================================
# Jobs: verify and download, run in the foreground or detached
# =============================================================================================

class JobContext:
    def __init__(self, args, paths: Paths, manifest: dict, token: str | None = None):
        self.args, self.paths, self.manifest, self.token = args, paths, manifest, token
        self.jobs = args.jobs or default_jobs()
        self.cache = HashCache(paths.cache)
        self.state: State | None = None
        self.fetched_bytes = 0
        self.fetched_files = 0
        self._lock = threading.Lock()


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def verify_pass(ctx: JobContext, phase: str, rehash: bool = False) -> dict:
    """One verification with progress in the state file; publishes the result."""
    v = Verifier(ctx.paths, ctx.manifest, ctx.cache, ctx.jobs, ctx.args.strict_extra, rehash)
    progress = Progress(sum(e["size"] for e in ctx.manifest["files"]))
    ctx.state.set(phase=phase)
    ctx.state.attach(progress)
    try:
        result = v.run(progress)
    finally:
        ctx.state.detach()
    publish_result(ctx.paths, result)
    if phase == "check" and not result["ok"]:  # before a download, gaps are expected, not alarming
        log.info("check before download: %s", result["summary"])
    else:
        (log.info if result["ok"] else log.warning)("%s", result["summary"])
    return result


def run_verify_job(ctx: JobContext) -> int:
    result = verify_pass(ctx, "verify", rehash=ctx.args.rehash)
    ctx.state.set(result=_result_brief(result))
    if not result["ok"]:
        raise WeightsError(result["summary"], "verify")
    return EXIT_OK


def _result_brief(result: dict) -> dict:
    return {k: (len(result[k]) if isinstance(result[k], list) else result[k])
            for k in ("ok", "files_total", "hashed_files", "cached_files", "missing", "extra",
                      "corrupt", "structure", "summary")}


# ---- download --------------------------------------------------------------------------------

class HubClient:
    """The only place that touches huggingface_hub. Imported lazily, after the environment
    that the client reads at import time (HF_ENDPOINT, HF_HOME, ...) has been set."""

    def __init__(self, paths: Paths, repo: str, revision: str, endpoint: str | None, token):
        os.environ["HF_HOME"] = paths.hf_home  # keeps the client's caches on the weights disk
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # progress is in state.json
        os.environ.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")
        os.environ.setdefault("HF_XET_CHUNK_CACHE_SIZE_BYTES", "0")  # no second copy of 313 GB
        if endpoint:
            os.environ["HF_ENDPOINT"] = endpoint
        try:
            import huggingface_hub
            # Its attributes load lazily, and its logging is configured on the first load:
            # load them now so the handler it adds can be removed below.
            huggingface_hub.hf_hub_download, huggingface_hub.HfApi
        except ImportError as e:
            raise LocalError(f"huggingface_hub is not importable by {sys.executable} ({e}): the "
                             "deploy installs it into the host's private environment; run this "
                             "script with that environment's python") from None
        for h in list(logging.getLogger("huggingface_hub").handlers):
            logging.getLogger("huggingface_hub").removeHandler(h)  # its records reach our log via root
        self.hf = huggingface_hub
        self.paths, self.repo, self.revision = paths, repo, revision
        self.endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
        self.token = token if token else False  # False: never fall back to a token stored on the host
        log.info("huggingface_hub %s, endpoint %s, %s", huggingface_hub.__version__,
                 self.endpoint or "https://huggingface.co", "with a token" if token else "anonymous")

    def check_access(self) -> None:
        """One quick request so a wrong token or revision fails in a second, before anything
        is deleted or downloaded (the download path retries for ~23 s on some errors)."""
        api = self.hf.HfApi(endpoint=self.endpoint)
        for attempt in range(3):
            try:
                api.model_info(self.repo, revision=self.revision, token=self.token)
                return
            except Exception as e:
                kind, msg = hub_error_message(e, self.repo, self.revision, self.endpoint)
                if kind in PERMANENT_HUB_KINDS or attempt == 2:
                    raise HubAccessError(msg, kind) from None
                log.warning("Hub check failed (%s); retrying", msg)
                time.sleep(1 + attempt)

    def download(self, rel: str) -> None:
        self.hf.hf_hub_download(self.repo, rel, revision=self.revision, local_dir=self.paths.dir,
                                token=self.token, endpoint=self.endpoint)


def inflight_bytes(paths: Paths) -> int:
    """Bytes in the client's partial files (<hash>.<etag>.<random>.incomplete next to the
    metadata), so progress moves within a multi-GB file."""
    total = 0
    for dirpath, _dirs, files in os.walk(paths.hf_meta):
        for name in files:
            if name.endswith(".incomplete"):
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
    return total


def clean_partials(paths: Paths) -> int:
    """A killed client leaves its partial files behind (it cannot resume them across runs:
    their names are random); we hold the lock, so none is in use."""
    n = 0
    for dirpath, _dirs, files in os.walk(paths.hf_meta):
        for name in files:
            if name.endswith(".incomplete") and unlink_quiet(os.path.join(dirpath, name)):
                n += 1
    return n


def remove_local(paths: Paths, rel: str) -> None:
    """Make the client fetch this file for real: delete it AND its local_dir metadata, whose
    presence would make the client skip the file without any check."""
    unlink_quiet(paths.file(rel))
    unlink_quiet(paths.client_metadata(rel))


def is_no_space(exc: BaseException) -> bool:
    return any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in _exc_chain(exc))


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_space(paths: Paths, need: int) -> None:
    free = free_bytes(paths.dir)
    if need > free:
        raise LocalError(f"not enough disk space in {paths.dir}: {human_bytes(need)} still to download "
                         f"but only {human_bytes(free)} free; free space or point weights_dir at a "
                         "bigger filesystem (nothing was marked verified)", "disk")


def fetch_one(ctx: JobContext, hub: HubClient, entry: dict, progress: Progress, stop: threading.Event):
    """Download one file, hash it at once (it is still in the page cache), and on a mismatch
    delete it and fetch it again, up to --attempts times. Returns None or a failure text."""
    rel, size = entry["path"], entry["size"]
    algo, want = expected_hash(entry)
    attempts = ctx.args.attempts
    last = "not attempted"
    for attempt in range(1, attempts + 1):
        if stop.is_set():
            return "cancelled"
        remove_local(ctx.paths, rel)
        ctx.cache.forget(rel)
        progress.begin(rel)
        t0 = time.monotonic()
        try:
            hub.download(rel)
        except Exception as e:
            if is_no_space(e):
                raise LocalError(f"disk full while downloading {rel} into {ctx.paths.dir}: free space "
                                 "or use a bigger filesystem (nothing was marked verified)", "disk") from None
            kind, msg = hub_error_message(e, hub.repo, hub.revision, hub.endpoint, rel)
            if kind in PERMANENT_HUB_KINDS:
                raise HubAccessError(msg, kind) from None
            last = msg
            log.warning("%s: attempt %d/%d failed: %s", rel, attempt, attempts, msg)
            if attempt < attempts:
                stop.wait(min(30, 2 ** attempt))
            continue
        finally:
            progress.end(rel)
        seconds = time.monotonic() - t0
        with ctx._lock:
            ctx.fetched_bytes += size
            ctx.fetched_files += 1
        progress.add(size)
        out = check_one(ctx.paths, entry, DOWNLOAD_BUFFER, fsync=True)
        if out["error"] is None and out[algo] == want:
            ctx.cache.record(out, ctx.manifest["revision"])
            ctx.cache.flush()  # per file: a killed download resumes without re-hashing it
            log.info("%s: fetched and verified, %s in %.1f s (%s/s)", rel, human_bytes(size), seconds,
                     human_bytes(size / seconds if seconds > 0 else 0))
            return None
        progress.add(-size)
        last = out["error"] or f"{algo} is {out[algo]}, the Hub publishes {want}"
        log.warning("%s: attempt %d/%d: downloaded content does not match the Hub's hash (%s); "
                    "deleting it", rel, attempt, attempts, last)
        remove_local(ctx.paths, rel)
    return last


def fetch_all(ctx: JobContext, hub: HubClient, entries: list, progress: Progress) -> dict:
    """Fetch files with --downloads threads. A permanent Hub error or a full disk stops the
    rest; a file that keeps failing is reported while the others go on."""
    stop = threading.Event()
    failed: dict = {}
    fatal = None
    pool = ThreadPoolExecutor(max_workers=max(1, ctx.args.downloads), thread_name_prefix="fetch")
    try:
        with interruptible(pool):
            futures = {pool.submit(fetch_one, ctx, hub, e, progress, stop): e for e in entries}
            for fut in as_completed(futures):
                rel = futures[fut]["path"]
                try:
                    problem = fut.result()
                except WeightsError as e:
                    if fatal is None:
                        fatal = e
                        stop.set()  # queued files return at once; running ones finish or fail
                    continue
                if problem and problem != "cancelled":
                    failed[rel] = problem
    finally:
        stop.set()
        ctx.cache.flush()
    if fatal is not None:
        raise fatal
    return failed


def run_download_job(ctx: JobContext) -> int:
    paths, manifest = ctx.paths, ctx.manifest
    n = clean_partials(paths)
    if n:
        log.info("removed %d partial file(s) left by an interrupted download", n)
    # 1. What is already here and good (stat-only for files checked before).
    result = verify_pass(ctx, "check")
    if result["ok"]:
        ctx.state.set(result=_result_brief(result), fetched_bytes=0, fetched_files=0)
        return EXIT_OK
    if result["structure"] and not (result["missing"] or result["corrupt"]):
        # Bytes identical to the Hub's yet structurally broken: fetching again cannot help.
        raise WeightsError(result["summary"] + " (the files match the Hub's hashes: the repo itself "
                           "is broken at this revision)", "structure")
    need = sorted(set(result["missing"]) | {c["path"] for c in result["corrupt"]})
    entries = sorted((e for e in manifest["files"] if e["path"] in need), key=lambda e: -e["size"])
    for c in result["corrupt"]:
        log.warning("%s: %s mismatch; deleting it to fetch it again", c["path"], c["reason"])
        remove_local(paths, c["path"])
    need_bytes = sum(e["size"] for e in entries)
    check_space(paths, need_bytes)
    # 2. Fetch exactly those files.
    ctx.state.set(phase="connect", files_to_fetch=len(entries), bytes_to_fetch=need_bytes)
    hub = HubClient(paths, manifest["repo"], manifest["revision"], ctx.args.endpoint, ctx.token)
    hub.check_access()
    total = sum(e["size"] for e in manifest["files"])
    progress = Progress(total, done=total - need_bytes)
    ctx.state.set(phase="download")
    ctx.state.attach(progress, lambda: inflight_bytes(paths))
    log.info("downloading %d file(s), %s, %d at a time", len(entries), human_bytes(need_bytes),
             ctx.args.downloads)
    try:
        failed = fetch_all(ctx, hub, entries, progress)
    finally:
        ctx.state.detach()
        ctx.state.set(fetched_bytes=ctx.fetched_bytes, fetched_files=ctx.fetched_files)
    if failed:
        rel, why = sorted(failed.items())[0]
        raise WeightsError(f"{len(failed)} file(s) could not be fetched intact after {ctx.args.attempts} "
                           f"attempt(s), e.g. {rel}: {why} (nothing was marked verified)", "fetch")
    # 3. The final verdict (stat-only for everything just hashed).
    result = verify_pass(ctx, "verify")
    ctx.state.set(result=_result_brief(result))
    if not result["ok"]:
        raise WeightsError(result["summary"], "verify")
    return EXIT_OK


def job_main(ctx: JobContext, command: str, ready=None, detached: bool = False) -> int:
    """Everything a job does after it holds the lock: state, log, the work, the final state."""
    paths = ctx.paths
    setup_logging(paths, to_stderr=not detached)
    ctx.state = State(paths.state_file, {
        "version": STATE_VERSION, "command": command, "phase": "starting", "pid": os.getpid(),
        "started_at": round(time.time(), 3), "repo": ctx.manifest["repo"],
        "revision": ctx.manifest["revision"], "files_total": len(ctx.manifest["files"]),
        "bytes_total": sum(e["size"] for e in ctx.manifest["files"]), "bytes_done": 0,
        "rate_bytes_per_s": None, "eta_s": None, "current_file": None, "current_files": [],
        "fetched_bytes": 0, "fetched_files": 0, "exit_code": None, "error": None, "result": None,
        "detached": detached, "log": paths.log})
    unlink_quiet(paths.marker)  # from here on, only a complete success may write it again
    ctx.state.set(phase="starting")  # a poller sees the job before the caller returns
    if ready is not None:
        ready()
    ctx.state.start_ticker()

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if detached:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info("%s of %s at %s into %s started (pid %d)", command, ctx.manifest["repo"],
             ctx.manifest["revision"], paths.dir, os.getpid())
    code, error = EXIT_FAILED, None
    try:
        code = run_download_job(ctx) if command == "download" else run_verify_job(ctx)
    except WeightsError as e:
        code, error = e.exit_code, e.message
        log.error("%s", e.message)
    except SystemExit as e:
        code, error = int(e.code or 1), f"stopped by signal {int(e.code or 1) - 128}"
        log.error("%s", error)
    except OSError as e:
        code = EXIT_LOCAL
        error = f"local I/O error: {e} (nothing was marked verified)"
        log.exception("%s", error)
    except Exception as e:  # a bug: say so plainly, keep the traceback in the log
        code, error = EXIT_FAILED, f"internal error: {_short(e)}; see {paths.log}"
        log.exception("internal error")
    finally:
        ctx.state.stop_ticker()
        try:
            ctx.cache.flush()
        except OSError:
            pass
    ctx.state.set(phase="done" if code == EXIT_OK else "failed", exit_code=code, error=error,
                  finished_at=round(time.time(), 3), current_file=None, current_files=[])
    log.info("%s finished with exit code %d", command, code)
    return code


def read_token(args) -> str | None:
    """From --token-file, else $HF_TOKEN. A token file others can read is refused: it would
    leak the secret to every user of the host."""
    if args.token_file:
        try:
            st = os.stat(args.token_file)
            if st.st_mode & 0o077:
                raise UsageError(f"token file {args.token_file} is readable by other users "
                                 f"(mode {st.st_mode & 0o777:o}); chmod 600 it")
            with open(args.token_file) as f:
                token = f.read().strip()
        except OSError as e:
            raise UsageError(f"cannot read token file {args.token_file}: {e.strerror or e}") from None
        if not token:
            raise UsageError(f"token file {args.token_file} is empty")
        return token
    return os.environ.get("HF_TOKEN") or None


def start_job(args, command: str) -> int:
    """Validate input in the caller (bad usage fails synchronously even with --detach), take
    the lock, then run here or in a daemon."""
    paths = Paths(args.dir, args.state_dir)
    if not os.path.isdir(paths.dir):
        if command == "download":
            try:
                os.makedirs(paths.dir, exist_ok=True)
            except OSError as e:
                raise LocalError(f"cannot create weights dir {paths.dir}: {e.strerror or e}") from None
        else:
            raise UsageError(f"weights dir {paths.dir} does not exist")
    manifest = load_manifest(args.manifest or paths.manifest)
    token = read_token(args) if command == "download" else None
    lock_fd = acquire_lock(paths)
    if args.manifest and os.path.abspath(args.manifest) != paths.manifest:
        write_json_atomic(paths.manifest, manifest)  # kept next to the weights it describes
    ctx = JobContext(args, paths, manifest, token)

    def run(ready=None, detached=False):
        return job_main(ctx, command, ready, detached)
    if args.detach:
        return detach(run, lock_fd, paths, command)
    try:
        code = run()
    finally:
        os.close(lock_fd)
    result = read_json(paths.state_file, {})
    print(json.dumps(result, sort_keys=True))
    return code


# ---- status ------------------------------------------------------------------------------

def status_report(paths: Paths) -> dict:
    """The state file plus what only a live look can tell: is the job still running?"""
    state = read_json(paths.state_file, {}) or {}
    running, lock_pid = lock_holder(paths)
    report = dict(state)
    report.update(dir=paths.dir, running=running, lock_pid=lock_pid,
                  pid_alive=pid_alive(state.get("pid")) if state.get("pid") else False,
                  verified_revision=read_marker(paths))
    phase = state.get("phase")
    report["stale"] = bool(phase) and phase not in TERMINAL_PHASES and not running
    if report["stale"]:
        report["note"] = ("the job stopped before finishing (killed or the host rebooted); run the "
                          "same command again: completed and verified files are kept")
    if not phase:
        report["phase"] = None
    return report


def cmd_status(args) -> int:
    paths = Paths(args.dir, args.state_dir)
    deadline = time.monotonic() + max(0.0, args.wait or 0.0)
    while True:
        report = status_report(paths)
        if not report["running"] or time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
    print(json.dumps(report, sort_keys=True))
    return EXIT_OK


# =============================================================================================
# CLI
# =============================================================================================

def parse_args(argv):
    p = argparse.ArgumentParser(prog="weights.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--dir", required=True, help="the weights dir")
        sp.add_argument("--state-dir", help="where state lives (default DIR/.glmfleet)")

    def job(sp):
        common(sp)
        sp.add_argument("--manifest", help="manifest JSON (default STATE_DIR/manifest.json)")
        sp.add_argument("--jobs", type=int, default=0, help="hash workers (default: one per core)")
        sp.add_argument("--strict-extra", action="store_true",
                        help="files not in the manifest fail verification (default: reported only)")
        sp.add_argument("--detach", action="store_true",
                        help="run as a daemon that survives the SSH session; print its pid and return")

    v = sub.add_parser("verify", help="check the files against the manifest")
    job(v)
    v.add_argument("--rehash", action="store_true", help="ignore the hash cache: read every byte")
    d = sub.add_parser("download", help="fetch what is missing or bad, then verify")
    job(d)
    d.add_argument("--token-file", help="file holding the HF token (mode 0600); else $HF_TOKEN")
    d.add_argument("--endpoint", help="Hub URL (default $HF_ENDPOINT, else huggingface.co)")
    d.add_argument("--downloads", type=int, default=8, help="files fetched at once (default 8)")
    d.add_argument("--attempts", type=int, default=3,
                   help="tries per file on transient errors or hash mismatches (default 3)")
    s = sub.add_parser("status", help="print the job's state as JSON")
    common(s)
    s.add_argument("--wait", type=float, default=0,
                   help="wait up to this many seconds for a running job to end before printing")
    args = p.parse_args(argv)
    if getattr(args, "jobs", 0) < 0:
        p.error("--jobs must be 0 (one per core) or more")
    for name in ("downloads", "attempts"):
        if getattr(args, name, 1) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "status":
            return cmd_status(args)
        return start_job(args, args.command)
    except WeightsError as e:
        print(f"weights.py {args.command}: {e.message}", file=sys.stderr)
        print(json.dumps({"status": e.kind, "error": e.message, "exit_code": e.exit_code,
                          **({"pid": e.pid} if isinstance(e, BusyError) else {})}))
        return e.exit_code


if __name__ == "__main__":
    code = main()
    # A job may leave client threads behind after an error or a signal; do not wait for them.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
