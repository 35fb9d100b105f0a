"""What every part of the weights tool shares, and what the controller reuses so both sides
apply the same rules: the manifest's format and checks, which hash a file is checked by, the
exit codes and errors, how Hub errors are explained, the host layout of a weights dir (Paths)
and small file helpers. Stdlib only; valid on python3.8+.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading

MANIFEST_FORMAT = "glmfleet-manifest/1"
STATE_VERSION = 1
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY, EXIT_HUB, EXIT_LOCAL = 0, 1, 2, 3, 4, 5
STATE_DIR_NAME = ".glmfleet"
# Top-level entries of the weights dir that are not repo files: our state, the Hub client's
# local_dir bookkeeping (.cache/huggingface) and a git checkout (same rule as `hf cache verify`).
IGNORED_TOP = (STATE_DIR_NAME, ".cache", ".git")
HF_DOWNLOAD_META = os.path.join(".cache", "huggingface", "download")
TERMINAL_PHASES = ("done", "failed")

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
# Manifest rules, expected hashes, Hub error messages (pure)
# =============================================================================================

def safe_relpath(path) -> bool:
    """A repo path we may join onto the weights dir: relative, no '..', not in our state dirs."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    parts = path.split("/")
    return all(p not in ("", ".", "..") for p in parts) and parts[0] not in IGNORED_TOP


def is_int(v) -> bool:
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
        if not is_int(f.get("size")) or f["size"] < 0:
            problems.append(f"{where}: size {f.get('size')!r} is not a byte count")
        sha256, sha1 = f.get("sha256"), f.get("git_sha1")
        if sha256 is not None and not (isinstance(sha256, str) and _HEX64.match(sha256)):
            problems.append(f"{where}: sha256 {sha256!r} is not 64 lowercase hex digits")
        if sha1 is not None and not (isinstance(sha1, str) and _HEX40.match(sha1)):
            problems.append(f"{where}: git_sha1 {sha1!r} is not 40 lowercase hex digits")
        if sha256 is None and sha1 is None:
            problems.append(f"{where}: has neither sha256 nor git_sha1, so it cannot be checked")
    if is_int(m.get("total_size")) and not problems:
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


def exc_chain(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status_of(exc):
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    return code if is_int(code) else None


def hub_error_message(exc: BaseException, repo: str, revision: str, endpoint: str | None,
                      path: str | None = None) -> tuple:
    """(kind, message) for an exception raised by huggingface_hub. kind is one of gated,
    auth, revision, repo, entry, network, server, offline, hub. The message says what failed
    and what to check, in the deploy's setting names. Matched by class name so this stays
    importable without huggingface_hub. Download calls wrap most HTTP errors in
    LocalEntryNotFoundError, so the whole cause chain is searched, most specific first."""
    where = endpoint or "https://huggingface.co"
    chain = list(exc_chain(exc))
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
        return "network", (f"network error talking to the Hub at {where} ({short_error(chain[-1])}): check "
                           "hf_endpoint, DNS, proxy and firewall from this machine")
    if status and status >= 500:
        return "server", (f"the Hub at {where} answered HTTP {status} for {repo}"
                          f"{' file ' + path if path else ''}; it may be down, try again later")
    return "hub", f"request to the Hub at {where} failed: {short_error(chain[0])}"


def short_error(exc: BaseException, limit: int = 300) -> str:
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
        self.incoming = os.path.join(self.state, "incoming")  # files from peers, until checked
        self.serve_lock = os.path.join(self.state, "serve.lock")
        self.serve_state = os.path.join(self.state, "serve.json")

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
                         "fetch_manifest) before running this tool") from None
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
