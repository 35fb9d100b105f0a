"""Fetch files from the other hosts of the site that hold them verified (their
`weights.pyz serve`), with aria2: every file from all sources at once (one connection per
source, each on its own segment), resumable (aria2's control files in the incoming dir), and
checked by aria2 against the manifest's sha256 where the Hub publishes one.

Then each file is hashed here as a Hub download is (check_one: our verdict, recorded in the
hash cache) before it counts. A file that fails (a source died and none was left, or the
bytes do not match: some source holds a bad copy) is fetched again from each source alone,
in turn; what no source delivers intact is left to the Hub.

The run's token reaches aria2 on its stdin (the input list), never on its command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from urllib.parse import quote

from .common import Paths, expected_hash, human_bytes, log, unlink_quiet

ARIA2 = "aria2c"
MAX_SPLIT = 16


def source_url(base: str, revision: str) -> str:
    return f"{base.rstrip('/')}/{revision}"


def aria2_input(entries: list, sources: list, token: str) -> str:
    """aria2's input list: per file, its URI on every source (tab-separated: mirrors of one
    file), where to put it, its sha256 and the token header."""
    lines = []
    for e in entries:
        lines.append("\t".join(f"{s}/{quote(e['path'])}" for s in sources))
        lines.append(f"  out={e['path']}")
        if e.get("sha256"):
            lines.append(f"  checksum=sha-256={e['sha256']}")
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
            "--show-console-readout=false"]


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


def run_aria2(paths: Paths, entries: list, sources: list, token: str, downloads: int) -> int:
    os.makedirs(paths.incoming, exist_ok=True)
    argv = aria2_argv(paths.incoming, downloads, len(sources), os.getpid())
    with open(paths.log, "ab") as out:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out)
        try:
            p.communicate(aria2_input(entries, sources, token).encode())
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


def fetch_from_peers(ctx, entries: list, progress, sources: list, token: str, check_one,
                     buf: int) -> list:
    """Fetch entries from the sources (base URLs with the revision); returns the entries no
    source delivered intact. All sources at once first, then each source alone."""
    if shutil.which(ARIA2) is None:
        log.warning("peers: %s is not installed: fetching from the Hub instead", ARIA2)
        return list(entries)
    remaining = list(entries)
    rounds = [sources] + ([[s] for s in sources] if len(sources) > 1 else [sources])
    for n, use in enumerate(rounds, 1):
        if not remaining:
            break
        ctx.state.set(sources=len(use))
        t0 = time.monotonic()
        size = sum(e["size"] for e in remaining)
        log.info("peers: fetching %d file(s), %s, from %s", len(remaining), human_bytes(size),
                 ", ".join(use))
        if n > 1:  # a copy that failed its check may hold a bad source's bytes: start afresh
            for e in remaining:
                drop_partial(ctx.paths, e["path"])
        rc = run_aria2(ctx.paths, remaining, use, token, ctx.args.downloads)
        still = []
        for e in remaining:
            why = place(ctx, e, check_one, buf)
            if why is None:
                progress.add(e["size"])
                with ctx._lock:
                    ctx.peer_bytes += e["size"]
                    ctx.peer_files += 1
            else:
                log.warning("peers: %s from %s: %s", e["path"], ", ".join(use), why)
                still.append(e)
        log.info("peers: round %d: %d of %d file(s) fetched and verified in %.1f s (aria2 exit %s)",
                 n, len(remaining) - len(still), len(remaining), time.monotonic() - t0, rc)
        remaining = still
    if not remaining:
        shutil.rmtree(ctx.paths.incoming, ignore_errors=True)
    return remaining
