"""Jobs: progress and the state file, the lock, logging, running detached from the SSH
session, and the frame every job (verify, download) runs in; the status report.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque

from .common import (EXIT_FAILED, EXIT_LOCAL, EXIT_OK, STATE_VERSION, TERMINAL_PHASES, BusyError,
                     Paths, WeightsError, log, read_json, read_marker, short_error, unlink_quiet,
                     write_json_atomic)
from .verify import HashCache, Verifier, publish_result

STATE_TICK_S = 1.0
LOCK_RETRY_S = 0.25  # rides out a concurrent `status` probe holding the lock for microseconds
LOG_ROTATE_BYTES = 20 << 20


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


def detach(run_job, lock_fd: int, paths: Paths, command: str, keep=()) -> int:
    """Run `run_job(ready)` in a daemon that survives the SSH session (double fork, setsid,
    stdin from /dev/null, stdout/stderr to the log). The daemon keeps the lock through its
    inherited descriptor (and any descriptor in ``keep``, e.g. a listening socket). Returns
    once the daemon has written its pid and first state."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:  # the caller: wait for the daemon's pid, print it, return
        os.close(w)
        os.close(lock_fd)
        for fd in keep:
            os.close(fd)
        msg = b""
        while True:
            chunk = os.read(r, 64)
            if not chunk:
                break
            msg += chunk
        os.close(r)
        os.waitpid(pid, 0)
        if not msg.strip().isdigit():
            print(f"weights.pyz: the detached {command} exited at once; see {paths.log}", file=sys.stderr)
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
        close_other_fds(keep=(0, 1, 2, lock_fd, w, *keep))
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
    def __init__(self, args, paths: Paths, manifest: dict, token: str | None = None,
                 peer_token: str | None = None):
        self.args, self.paths, self.manifest, self.token = args, paths, manifest, token
        self.peer_token = peer_token  # the run's token for the other hosts' servers
        self.jobs = args.jobs or default_jobs()
        self.cache = HashCache(paths.cache)
        self.state: State | None = None
        self.fetched_bytes = 0
        self.fetched_files = 0
        self.peer_bytes = 0   # from other hosts of the site (download --peer)
        self.peer_files = 0
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
    ctx.state.set(result=result_brief(result))
    if not result["ok"]:
        raise WeightsError(result["summary"], "verify")
    return EXIT_OK


def result_brief(result: dict) -> dict:
    return {k: (len(result[k]) if isinstance(result[k], list) else result[k])
            for k in ("ok", "files_total", "hashed_files", "cached_files", "missing", "extra",
                      "corrupt", "structure", "summary")}


def job_main(ctx: JobContext, command: str, work, ready=None, detached: bool = False) -> int:
    """Everything a job does after it holds the lock: state, log, the work (work(ctx) -> exit
    code), the final state."""
    paths = ctx.paths
    setup_logging(paths, to_stderr=not detached)
    ctx.state = State(paths.state_file, {
        "version": STATE_VERSION, "command": command, "phase": "starting", "pid": os.getpid(),
        "started_at": round(time.time(), 3), "repo": ctx.manifest["repo"],
        "revision": ctx.manifest["revision"], "files_total": len(ctx.manifest["files"]),
        "bytes_total": sum(e["size"] for e in ctx.manifest["files"]), "bytes_done": 0,
        "rate_bytes_per_s": None, "eta_s": None, "current_file": None, "current_files": [],
        "fetched_bytes": 0, "fetched_files": 0, "peer_bytes": 0, "peer_files": 0, "sources": 0,
        "exit_code": None, "error": None, "result": None,
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
        code = work(ctx)
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
        code, error = EXIT_FAILED, f"internal error: {short_error(e)}; see {paths.log}"
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
