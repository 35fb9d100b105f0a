"""Download: fetch exactly the files that are missing or bad through huggingface_hub (imported
only here and only when something must be fetched), hash each one at once, retry, and end with
a full verification.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from .common import (EXIT_OK, PERMANENT_HUB_KINDS, HubAccessError, LocalError, Paths,
                     WeightsError, exc_chain, expected_hash, human_bytes, hub_error_message, log,
                     unlink_quiet)
from . import peers
from .jobs import JobContext, Progress, result_brief, verify_pass
from .verify import check_one, interruptible

DOWNLOAD_BUFFER = 4 << 20  # hashing right after a download shares memory with the client
# The client writes a body to its partial file in chunks of this size; progress counts the
# partial files' sizes (inflight_bytes), so it moves with every chunk. The client's own 10 MB
# would keep any smaller file at 0 until its end and make every progress step 10 MB per file.
DOWNLOAD_CHUNK = 1 << 20


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
            import huggingface_hub.constants
            # Its attributes load lazily, and its logging is configured on the first load:
            # load them now so the handler it adds can be removed below.
            huggingface_hub.hf_hub_download, huggingface_hub.HfApi
        except ImportError as e:
            raise LocalError(f"huggingface_hub is not importable by {sys.executable} ({e}): the "
                             "deploy installs it into the host's private environment; run this "
                             "script with that environment's python") from None
        for h in list(logging.getLogger("huggingface_hub").handlers):
            logging.getLogger("huggingface_hub").removeHandler(h)  # its records reach our log via root
        huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE = DOWNLOAD_CHUNK  # read at each download
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
    """Bytes received so far into the client's partial files (<hash>.<etag>.<random>.incomplete
    beside its local_dir metadata): counted in the progress, so it moves within a file."""
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
    return any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in exc_chain(exc))


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
        ctx.state.set(result=result_brief(result), fetched_bytes=0, fetched_files=0)
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
    # 2. Fetch exactly those files: from other hosts of the site first (--peer), the rest
    # (all of it without peers) from the Hub.
    total = sum(e["size"] for e in manifest["files"])
    progress = Progress(total, done=total - need_bytes)
    ctx.state.set(phase="download", files_to_fetch=len(entries), bytes_to_fetch=need_bytes)
    ctx.state.attach(progress, lambda: inflight_bytes(paths) + peers.incoming_bytes(paths))
    try:
        if ctx.args.peer:
            sources = [peers.source_url(u, manifest["revision"]) for u in ctx.args.peer]
            entries = peers.fetch_from_peers(ctx, entries, progress, sources, ctx.peer_token,
                                             check_one, DOWNLOAD_BUFFER)
            if entries:
                log.warning("peers: %d file(s) not delivered intact by any host: fetching them "
                            "from the Hub", len(entries))
        failed = {}
        if entries:
            ctx.state.set(phase="connect", sources=0)
            hub = HubClient(paths, manifest["repo"], manifest["revision"], ctx.args.endpoint, ctx.token)
            hub.check_access()
            ctx.state.set(phase="download")
            log.info("downloading %d file(s), %s, %d at a time", len(entries),
                     human_bytes(sum(e["size"] for e in entries)), ctx.args.downloads)
            failed = fetch_all(ctx, hub, entries, progress)
    finally:
        ctx.state.detach()
        ctx.state.set(fetched_bytes=ctx.fetched_bytes, fetched_files=ctx.fetched_files,
                      peer_bytes=ctx.peer_bytes, peer_files=ctx.peer_files)
    if failed:
        rel, why = sorted(failed.items())[0]
        raise WeightsError(f"{len(failed)} file(s) could not be fetched intact after {ctx.args.attempts} "
                           f"attempt(s), e.g. {rel}: {why} (nothing was marked verified)", "fetch")
    # 3. The final verdict (stat-only for everything just hashed).
    result = verify_pass(ctx, "verify")
    ctx.state.set(result=result_brief(result))
    if not result["ok"]:
        raise WeightsError(result["summary"], "verify")
    return EXIT_OK
