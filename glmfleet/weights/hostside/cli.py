"""Model weights on one GPU host: verify them, download what is missing or bad, report.

Runs ON the host. This package (common, verify, download, jobs, cli) reaches the host as one
file, a zip application built by glmfleet/weights/toolapp.py, run as:

    python3 weights.pyz verify   --dir D [--manifest M] [--jobs N] [--rehash] [--strict-extra] [--detach]
    python3 weights.pyz download --dir D [--manifest M] [--token-file F] [--endpoint URL]
                                 [--downloads K] [--attempts A] [--jobs N] [--strict-extra] [--detach]
                                 [--peer URL ... --peer-token-file F]
    python3 weights.pyz serve    --dir D --bind ADDRESS --port P --token-file F [--max-idle S] [--detach]
    python3 weights.pyz serve    --dir D --stop
    python3 weights.pyz status   --dir D [--wait SECONDS]
    (all take --state-dir S; default D/.glmfleet)

The manifest (made on the controller by glmfleet/weights/manifest.py from the Hub's own listing at
the pinned commit) names every file with its size and expected hash: sha256 for LFS files,
the git blob sha1 (`blob <len>\\0` + content) for the others. Verification trusts nothing
but those hashes: the Hub client checks only sizes, and in local_dir mode it skips a file
whenever its .cache/huggingface/download/<path>.metadata says so.

With --peer, download fetches from other hosts of the site first (their `serve`, with aria2:
hostside/peers.py) and only what none of them delivers intact from the Hub. `serve` shares
this host's verified files with them (hostside/serve.py).

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
import json
import logging
import os
import sys
import time

from . import jobs
from .common import (EXIT_OK, BusyError, LocalError, Paths, UsageError, WeightsError, load_manifest,
                     read_json, write_json_atomic)
# serve (http.server) and download are imported by the commands that use them: every
# command starts faster (the deploy runs `status` once per poll on every host)

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
    peer_token = None
    if command == "download" and args.peer:
        if not args.peer_token_file:
            raise UsageError("--peer needs --peer-token-file (the run's token for the other hosts)")
        from .serve import read_secret
        peer_token = read_secret(args.peer_token_file)
    lock_fd = jobs.acquire_lock(paths)
    if args.manifest and os.path.abspath(args.manifest) != paths.manifest:
        write_json_atomic(paths.manifest, manifest)  # kept next to the weights it describes
    ctx = jobs.JobContext(args, paths, manifest, token, peer_token)
    if command == "download":
        from .download import run_download_job as work
    else:
        work = jobs.run_verify_job

    def run(ready=None, detached=False):
        return jobs.job_main(ctx, command, work, ready, detached)
    if args.detach:
        return jobs.detach(run, lock_fd, paths, command)
    try:
        code = run()
    finally:
        os.close(lock_fd)
    result = read_json(paths.state_file, {})
    print(json.dumps(result, sort_keys=True))
    return code


def cmd_serve(args) -> int:
    """Serve the verified files (hostside/serve.py), or stop the server (--stop)."""
    from . import serve
    paths = Paths(args.dir, args.state_dir)
    if args.stop:
        print(json.dumps(serve.stop_server(paths)))
        return EXIT_OK
    if not (args.bind and args.port and args.token_file):
        raise UsageError("serve needs --bind, --port and --token-file (or --stop)")
    manifest = load_manifest(args.manifest or paths.manifest)
    lock_fd = serve.serve_lock(paths)
    srv = serve.open_server(args, paths, manifest)

    def run(ready=None, detached=False):
        jobs.setup_logging(paths, to_stderr=not detached)
        return serve.run_server(srv, lock_fd, args.max_idle, ready)
    if args.detach:
        return jobs.detach(run, lock_fd, paths, "serve", keep=(srv.fileno(),))
    try:
        return run()
    finally:
        os.close(lock_fd)


def cmd_status(args) -> int:
    paths = Paths(args.dir, args.state_dir)
    deadline = time.monotonic() + max(0.0, args.wait or 0.0)
    while True:
        report = jobs.status_report(paths)
        if not report["running"] or time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
    print(json.dumps(report, sort_keys=True))
    return EXIT_OK


# =============================================================================================
# CLI
# =============================================================================================

def parse_args(argv):
    p = argparse.ArgumentParser(prog="weights.pyz", description=__doc__.split("\n\n")[0])
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
    d.add_argument("--peer", action="append", default=[], metavar="URL",
                   help="another host's `serve` (http://ADDRESS:PORT), fetched from first; repeatable")
    d.add_argument("--peer-token-file", help="file holding the run's token for --peer (mode 0600)")
    sv = sub.add_parser("serve", help="serve the verified files to the other hosts of the site")
    common(sv)
    sv.add_argument("--manifest", help="manifest JSON (default STATE_DIR/manifest.json)")
    sv.add_argument("--bind", help="address to listen on (the one the other hosts use)")
    sv.add_argument("--port", type=int, help="port to listen on")
    sv.add_argument("--token-file", help="file holding the token every request must carry (0600)")
    sv.add_argument("--max-idle", type=float, default=900,
                    help="stop after this many seconds without a request (default 900)")
    sv.add_argument("--detach", action="store_true", help="run as a daemon; print its pid and return")
    sv.add_argument("--stop", action="store_true", help="stop the running server")
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
        if args.command == "serve":
            return cmd_serve(args)
        return start_job(args, args.command)
    except WeightsError as e:
        print(f"weights.pyz {args.command}: {e.message}", file=sys.stderr)
        print(json.dumps({"status": e.kind, "error": e.message, "exit_code": e.exit_code,
                          **({"pid": e.pid} if isinstance(e, BusyError) else {})}))
        return e.exit_code


def run() -> None:
    """Entry point of the zip application (its __main__.py calls this)."""
    code = main()
    # A job may leave client threads behind after an error or a signal; do not wait for them.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
