"""Verification: hash every file of the manifest (in parallel, one sequential pass per file),
judge unchanged files from the hash cache by their identity alone, check the structure of
safetensors files and index files, and publish verify.json (and VERIFIED when all is well).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from .common import (IGNORED_TOP, STATE_VERSION, Paths, expected_hash, human_bytes, is_int, log, read_json,
                     write_json_atomic)

# Hashing reads sequential chunks into one reused buffer per worker; all buffers together
# stay under BUFFER_CAP, so memory is bounded by the worker count, never by file sizes.
# 4 MiB measured faster than 16 MiB on warm data (~5% on a 2-core VM with SHA-NI): the
# chunk is hashed while it is still in the CPU cache. Kernel readahead (FADV_SEQUENTIAL)
# keeps the disk streaming whatever the read size.
BUFFER_CAP = 128 << 20
MAX_BUFFER = 4 << 20
MIN_BUFFER = 1 << 20
SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own upper bound
CACHE_FLUSH_S = 10.0  # a killed verify of 313 GB loses at most this much hashing work


# =============================================================================================
# Pure rules: the cache's identity, structure of safetensors files and the index
# =============================================================================================

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
        if not (isinstance(offs, list) and len(offs) == 2 and all(is_int(o) for o in offs)
                and 0 <= offs[0] <= offs[1]):
            problems.append(f"tensor {name}: bad data_offsets {offs!r}")
            continue
        if not (isinstance(shape, list) and all(is_int(d) and d >= 0 for d in shape)):
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
    def run(self, progress=None) -> dict:
        """progress: a jobs.Progress (or None) that counts the bytes as they are hashed."""
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
