"""Fetch files from the other hosts of the site (their `weights.pyz serve`) with aria2:
every file from all of this host's sources that hold it verified, at once (one connection per
source, each on its own segment) and resumable (aria2's control files in the incoming dir).
aria2 is not asked for its own sha256 check (`checksum=`): this tool hashes every file
anyway, and aria2's digest runs several times slower than Python's hashlib, which uses the
CPU's SHA instructions (measured on the dev VM: 0.4 s against 0.04 s of CPU for 67 MB); on
313 GB that check alone would hold each host for most of an hour.

The sources may still be fetching themselves (the seed from the Hub, earlier rounds from
theirs: glmfleet.weights.plan.peer_rounds). Each one answers what it holds verified now
(GET /<revision>/); a file is fetched once every source of ours that is still fetching has
it, so each file is spread over all of them and no one source serves everyone, and a file
moves down the rounds while the next ones are still on their way from the Hub. A source
that stops answering is dropped (aria2 takes its pieces from the others).

Then each file is hashed here as a Hub download is (check_one: our verdict, recorded in the
hash cache, which is also what lets this host serve it on) before it counts. A file that
fails (the bytes do not match: some source holds a bad copy; or no source was left) is
fetched again from each source alone, in turn; what no source delivers intact is left to the
Hub, as is what no source will have (their own fetch ended without it, or nothing moved on
any of them for STALL_S).

The run's token reaches aria2 on its stdin (the input list), never on its command line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from urllib.parse import quote

from .common import Paths, expected_hash, human_bytes, log, unlink_quiet
from .verify import interruptible

ARIA2 = "aria2c"
MAX_SPLIT = 16
POLL_S = 0.2        # between two looks at what the sources hold
DEAD_AFTER = 5      # looks in a row without an answer: the source is gone
STALL_S = 600.0     # nothing moved on any source that long: stop waiting for them


def source_url(base: str, revision: str) -> str:
    return f"{base.rstrip('/')}/{revision}"


def aria2_input(batch: list, token: str) -> str:
    """aria2's input list: per (entry, its sources), the file's URI on every source
    (tab-separated: mirrors of one file), where to put it and the token header."""
    lines = []
    for e, sources in batch:
        lines.append("\t".join(f"{s}/{quote(e['path'])}" for s in sources))
        lines.append(f"  out={e['path']}")
        lines.append(f"  header=Authorization: Bearer {token}")
    return "\n".join(lines) + "\n"


def aria2_argv(incoming: str, downloads: int, n_sources: int, parent_pid: int) -> list:
    split = max(1, min(MAX_SPLIT, n_sources))
    return [ARIA2, "--input-file=-", f"--dir={incoming}", "--no-conf=true",
            f"--max-concurrent-downloads={max(1, downloads)}",
            f"--split={split}", "--max-connection-per-server=1", "--min-split-size=1M",
            "--uri-selector=inorder", "--continue=true", "--always-resume=true",
            "--allow-overwrite=true", "--auto-file-renaming=false", "--file-allocation=none",
            "--max-tries=2", "--retry-wait=1", "--connect-timeout=5", "--timeout=20",
            "--max-file-not-found=1", "--remote-time=false", "--auto-save-interval=5",
            f"--stop-with-process={parent_pid}", "--summary-interval=0",
            "--console-log-level=warn", "--download-result=hide", "--enable-color=false",
            "--show-console-readout=false",
            # plain HTTP between the hosts: skip loading the system's CA bundle (~13 ms of
            # CPU per aria2 run, one run per file)
            "--ca-certificate=/dev/null"]


def incoming_bytes(paths: Paths) -> int:
    """Bytes received so far into the incoming dir: allocated blocks, not sizes (aria2
    writes each segment at its offset, so a file's size runs ahead of what arrived)."""
    total = 0
    for dirpath, _dirs, files in os.walk(paths.incoming):
        for name in files:
            if not name.endswith(".aria2"):
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    pass
    return total


def run_aria2(paths: Paths, batch: list, token: str, downloads: int) -> int:
    os.makedirs(paths.incoming, exist_ok=True)
    argv = aria2_argv(paths.incoming, downloads, max(len(s) for _, s in batch), os.getpid())
    with open(paths.log, "ab") as out:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out)
        try:
            p.communicate(aria2_input(batch, token).encode())
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    return p.returncode


def drop_partial(paths: Paths, rel: str) -> None:
    part = os.path.join(paths.incoming, *rel.split("/"))
    unlink_quiet(part)
    unlink_quiet(part + ".aria2")


def place(ctx, entry: dict, check_one, buf: int):
    """Move a file aria2 finished into place and hash it; None when it matches, else why.
    An unfinished file (its control file is there) stays in incoming for the next try."""
    paths, rel, size = ctx.paths, entry["path"], entry["size"]
    part = os.path.join(paths.incoming, *rel.split("/"))
    if os.path.exists(part + ".aria2") or not os.path.exists(part):
        return "not delivered intact (aria2's reason is in the log)"
    if os.path.getsize(part) != size:
        drop_partial(paths, rel)
        return "received with the wrong size"
    final = paths.file(rel)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    unlink_quiet(paths.client_metadata(rel))  # the Hub client's record of an older copy
    os.replace(part, final)
    ctx.cache.forget(rel)
    out = check_one(paths, entry, buf, fsync=True)
    algo, want = expected_hash(entry)
    if out["error"] is None and out[algo] == want:
        ctx.cache.record(out, ctx.manifest["revision"])
        ctx.cache.flush()
        return None
    unlink_quiet(final)
    return out["error"] or f"{algo} is {out[algo]}, the manifest says {want}"


class Sources:
    """What each source holds, from its answer to GET /<revision>/ (serve.py)."""

    def __init__(self, sources: list, token: str):
        self.token = token
        self.misses = {u: 0 for u in sources}
        self.views: dict = {}

    def look(self) -> dict:
        """url -> {"files": set, "growing": bool, "progress": ...} for the sources that answer
        (one that missed a look or two keeps its last answer)."""
        for url, misses in self.misses.items():
            if misses >= DEAD_AFTER:
                continue
            req = urllib.request.Request(url + "/", headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    doc = json.load(r)
                self.views[url] = {"files": set(doc.get("files") or ()),
                                   "growing": bool(doc.get("growing")),
                                   "progress": doc.get("progress")}
                self.misses[url] = 0
            except (OSError, ValueError) as e:
                self.misses[url] += 1
                if self.misses[url] >= DEAD_AFTER:
                    self.views.pop(url, None)
                    log.warning("peers: %s does not answer (%s): going on without it", url, e)
        return {u: self.views[u] for u in self.misses if u in self.views}

    def undecided(self) -> bool:
        """A source that has not answered yet but is not given up either."""
        return any(u not in self.views and m < DEAD_AFTER for u, m in self.misses.items())


def ready_files(remaining: list, views: dict) -> list:
    """(entry, the sources holding it) for each file to fetch now: some source holds it and
    no source still fetching lacks it (its copy is coming: wait, so the file is spread over
    all of them)."""
    out = []
    for e in remaining:
        have = [u for u, v in views.items() if e["path"] in v["files"]]
        if have and not any(v["growing"] and e["path"] not in v["files"] for v in views.values()):
            out.append((e, have))
    return out


def fetch_batch(ctx, batch: list, token: str, progress, check_one, buf: int, label: str) -> list:
    """aria2 for (entry, sources) pairs, then our own check of each; returns the failed pairs."""
    t0 = time.monotonic()
    names = sorted({u for _, us in batch for u in us})
    log.info("peers: fetching %d file(s), %s, from %s", len(batch),
             human_bytes(sum(e["size"] for e, _ in batch)), ", ".join(names))
    rc = run_aria2(ctx.paths, batch, token, ctx.args.downloads)
    failed = []
    for e, us in batch:
        why = place(ctx, e, check_one, buf)
        if why is None:
            progress.add(e["size"])
            with ctx._lock:
                ctx.peer_bytes += e["size"]
                ctx.peer_files += 1
        else:
            log.warning("peers: %s from %s: %s", e["path"], ", ".join(us), why)
            failed.append((e, us))
    log.info("peers: %s: %d of %d file(s) fetched and verified in %.1f s (aria2 exit %s)",
             label, len(batch) - len(failed), len(batch), time.monotonic() - t0, rc)
    return failed


def fetch_from_peers(ctx, entries: list, progress, sources: list, token: str, check_one,
                     buf: int) -> list:
    """Fetch entries from the sources (base URLs with the revision) as they come to hold
    them, --downloads files at once (each file on its own, so each one counts and is served
    on as soon as it is checked); returns the entries no source delivered intact. All
    holders at once first, then each source alone for what failed its check."""
    if shutil.which(ARIA2) is None:
        log.warning("peers: %s is not installed: fetching from the Hub instead", ARIA2)
        return list(entries)
    look = Sources(sources, token)
    remaining, failed, running = list(entries), [], set()
    seen, moved, n_sources = None, time.monotonic(), None
    views, looked = {}, -POLL_S
    workers = max(1, ctx.args.downloads)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="peer")
    with interruptible(pool):
        while remaining or running:
            for fut in [f for f in running if f.done()]:
                running.discard(fut)
                failed += fut.result()
            batch = []
            if remaining and len(running) < workers:
                if time.monotonic() - looked >= POLL_S:  # else the last answers stand
                    views, looked = look.look(), time.monotonic()
                if len(views) != n_sources:
                    n_sources = len(views)
                    ctx.state.set(sources=n_sources)
                now_seen = {u: (len(v["files"]), v["growing"], v["progress"]) for u, v in views.items()}
                if now_seen != seen:
                    seen, moved = now_seen, time.monotonic()
                if time.monotonic() - moved > STALL_S:
                    log.warning("peers: nothing moved on any source for %d s: not waiting for them",
                                STALL_S)
                    views = {u: {**v, "growing": False} for u, v in views.items()}
                batch = ready_files(remaining, views)[:workers - len(running)]
                if not batch and not running and not look.undecided() \
                        and not any(v["growing"] for v in views.values()):
                    break  # no source holds or will hold the rest: the Hub
                taken = {e["path"] for e, _ in batch}
                remaining = [e for e in remaining if e["path"] not in taken]
                for pair in batch:
                    running.add(pool.submit(fetch_batch, ctx, [pair], token, progress, check_one,
                                            buf, "round 1"))
            if running:
                wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
            elif remaining and not batch:
                time.sleep(POLL_S)
    # what failed its check from all holders at once: from each source alone, in turn
    n = 1
    for url in sources:
        if not failed:
            break
        mine = [(e, [url]) for e, us in failed if url in us]
        if not mine or url not in look.views:
            continue
        n += 1
        for e, _ in mine:  # a copy that failed its check may hold a bad source's bytes
            drop_partial(ctx.paths, e["path"])
        ctx.state.set(sources=1)
        again = {e["path"] for e, _ in fetch_batch(ctx, mine, token, progress, check_one, buf,
                                                   f"round {n}")}
        failed = [(e, us) for e, us in failed if url not in us or e["path"] in again]
    left = remaining + [e for e, _ in failed]
    if not left:
        shutil.rmtree(ctx.paths.incoming, ignore_errors=True)
    return left
