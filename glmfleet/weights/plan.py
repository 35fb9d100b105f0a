"""Stage 'weights': the pure decisions (no pyinfra import; tested directly).

- where our things live on a host (tool dir, shipped packages, the transient token file);
- whether a host's weights stand verified from a stat-only look (the WeightsHostState fact);
- the shell commands that run the host-side tool, bin/weights.pyz (the zip application of
  glmfleet/weights/hostside/, see toolapp.py; quoted; never holding a secret);
- fan-out roles: which host fetches from the Hub (the seed), which one serves the others
  (the source), and which files each receiver still needs;
- one-line progress (per host and for the fleet) and outcome texts for the log and the
  fleet summary.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import shlex
from typing import Iterable, Mapping

from glmfleet.weights.hostside.common import EXIT_BUSY, STATE_DIR_NAME, human_bytes
from glmfleet.weights.toolapp import APP_PACKAGE

q = shlex.quote


# ---- host layout -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HostPaths:
    """Our files on a host. The token file lives outside the weights dir, in a 0700 dir,
    and only while a download starts (the job reads it before it detaches)."""
    tool_dir: str
    weights_dir: str

    @property
    def script(self) -> str:
        return f"{self.tool_dir}/bin/weights.pyz"

    @property
    def pylib(self) -> str:
        return f"{self.tool_dir}/pylib"

    def bundle_dir(self, digest: str) -> str:
        return f"{self.pylib}/{digest}"

    @property
    def secrets(self) -> str:
        return f"{self.tool_dir}/secrets"

    @property
    def token_file(self) -> str:
        return f"{self.secrets}/hf-token"

    @property
    def peer_token_file(self) -> str:
        """The run's token for the other hosts' servers, only while a server or a download
        from peers starts (each reads it once)."""
        return f"{self.secrets}/peer-token"

    @property
    def state_dir(self) -> str:
        return f"{self.weights_dir}/{STATE_DIR_NAME}"

    @property
    def manifest(self) -> str:
        return f"{self.state_dir}/manifest.json"

    @property
    def incoming(self) -> str:
        """Fan-out copies land here first (same filesystem, so the rename into place is
        atomic; the tool ignores the state dir when it lists extra files)."""
        return f"{self.state_dir}/incoming"

    def file(self, rel: str) -> str:
        return posixpath.join(self.weights_dir, rel)

    def client_metadata(self, rel: str) -> str:
        """The Hub client's local_dir record of a file (the tool's Paths.client_metadata)."""
        return posixpath.join(self.weights_dir, ".cache", "huggingface", "download", rel) + ".metadata"


# ---- commands ----------------------------------------------------------------------------

RC_MARK = "glmfleet-rc="


def with_rc(command: str) -> str:
    """Run `command`, print its exit code on a line of its own and exit 0, so the caller
    gets the exact code (pyinfra only says success or failure)."""
    return f"{command}; echo {RC_MARK}$?"


def parse_rc(stdout_lines: Iterable[str]) -> int | None:
    for line in reversed(list(stdout_lines)):
        if line.startswith(RC_MARK):
            try:
                return int(line[len(RC_MARK):])
            except ValueError:
                return None
    return None


def job_command(command: str, p: HostPaths, *, pylib: str | None = None, xet: bool = False,
                endpoint: str | None = None, token_file: str | None = None, downloads: int = 8,
                rehash: bool = False, peers: Iterable[str] = ()) -> str:
    """`weights.pyz download|verify --detach` for this host. The tokens travel as file
    names only; HF_ENDPOINT as --endpoint (the script sets it before importing the client);
    peers: the other hosts' servers to fetch from first."""
    env = []
    if command == "download":
        if pylib:
            env.append(f"PYTHONPATH={q(pylib)}")
        if not xet:
            env.append("HF_HUB_DISABLE_XET=1")  # no hf_xet shipped: plain HTTP(S) downloads
    argv = ["python3", q(p.script), command, "--dir", q(p.weights_dir), "--detach"]
    if command == "download":
        argv += ["--downloads", str(int(downloads))]
        if endpoint:
            argv += ["--endpoint", q(endpoint)]
        if token_file:
            argv += ["--token-file", q(token_file)]
        for url in peers:
            argv += ["--peer", q(url)]
        if peers:
            argv += ["--peer-token-file", q(p.peer_token_file)]
    elif rehash:
        argv.append("--rehash")
    return " ".join((["env", *env] if env else []) + argv)


def status_command(p: HostPaths, wait_s: float) -> str:
    return f"python3 {q(p.script)} status --dir {q(p.weights_dir)} --wait {float(wait_s):g}"


def token_write_command(p: HostPaths, path: str | None = None) -> str:
    """Writes stdin (a token) to the token file (or `path` in the secrets dir): umask 077
    before anything is created, in a 0700 dir, through a temp name. The secret is on stdin,
    never in the command."""
    path = path or p.token_file
    tmp = path + ".tmp"
    return (f"umask 077 && mkdir -p {q(p.secrets)} && chmod 700 {q(p.secrets)} && "
            f"cat > {q(tmp)} && mv -f {q(tmp)} {q(path)}")


def token_remove_command(p: HostPaths) -> str:
    return " ".join(["rm -f", *(q(f + ext) for f in (p.token_file, p.peer_token_file)
                                for ext in ("", ".tmp"))])


# ---- host-to-host fan-out (weights_fanout_via = "peers") ---------------------------------

def peer_url(address: str, port: int) -> str:
    """The base URL other hosts use for this host's server (an IPv6 literal in brackets)."""
    return f"http://[{address}]:{int(port)}" if ":" in address else f"http://{address}:{int(port)}"


def serve_command(p: HostPaths, address: str, port: int) -> str:
    """Start this host's server for the other hosts, detached; the token is read from the
    peer token file (written just before, removed right after)."""
    return (f"python3 {q(p.script)} serve --dir {q(p.weights_dir)} --bind {q(address)} "
            f"--port {int(port)} --token-file {q(p.peer_token_file)} --detach")


def serve_stop_command(p: HostPaths) -> str:
    return f"python3 {q(p.script)} serve --dir {q(p.weights_dir)} --stop"


def peer_rounds(holders: list[str], needing: list[str]) -> dict[str, list[str]]:
    """Who fetches from whom: needing host -> its sources (hosts of earlier rounds, oldest
    first); the seed, when no host holds the weights yet, maps to [] (it fetches from the
    Hub). Each round takes as many receivers as there are sources, and all of them serve the
    next rounds, so the sources double each round. Rounds do not wait for each other: every
    host serves each file as soon as it verified it, and a receiver takes a file once all of
    its sources still fetching have it (hostside/peers.py), so a file travels down the
    rounds while the seed is still fetching the next ones."""
    out: dict[str, list[str]] = {}
    sources, todo = list(holders), list(needing)
    if not sources and todo:
        seed = todo.pop(0)
        out[seed] = []
        sources = [seed]
    while todo:
        batch, todo = todo[:len(sources)], todo[len(sources):]
        for h in batch:
            out[h] = list(sources)
        sources += batch
    return out


def bundle_install_command(p: HostPaths, digest: str, upload: str, import_check: str,
                           xet: bool, prune: bool) -> str:
    """Unpack the uploaded bundle beside its final place, prove it imports with the host's
    python3 (as the download will run it), then move it into place. Old bundles are pruned
    only when no job could still be importing from them."""
    final, new = p.bundle_dir(digest), f"{p.pylib}/.new-{digest}"
    extract = ("import sys, tarfile\n"
               "t = tarfile.open(sys.argv[1])\n"
               "kw = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}\n"
               "t.extractall(sys.argv[2], **kw)\n")
    env = f"PYTHONPATH={q(new)}" + ("" if xet else " HF_HUB_DISABLE_XET=1")
    lines = [
        "set -e",
        f"rm -rf {q(new)} && mkdir -p {q(new)}",
        f"python3 -S -c {q(extract)} {q(upload)} {q(new)}",
        f"if ! err=$(env {env} python3 -c {q(import_check)} 2>&1); then",
        f"  rm -rf {q(new)} {q(upload)}",
        "  pyv=$(python3 -V 2>&1); last=$(printf '%s\\n' \"$err\" | tail -n 1)",
        "  echo \"glmfleet: the Python packages shipped from the controller for the download do not "
        "import with this host's $pyv ($last): if weights_wheel_dir is set, check its wheels; "
        "else clear the controller's cache (~/.cache/glmfleet/hostbundle) and deploy again\" >&2",
        "  exit 1",
        "fi",
        f"python3 -m compileall -q {q(new)} >/dev/null 2>&1 || true",  # faster imports later
        f"rm -rf {q(final)} && mv {q(new)} {q(final)} && rm -f {q(upload)}",
    ]
    if prune:
        lines.append(f"for d in {q(p.pylib)}/*; do [ \"$d\" = {q(final)} ] || rm -rf \"$d\"; done")
    return "\n".join(lines)


# ---- reading the tool's output ---------------------------------------------------------

def last_json(lines: Iterable[str]) -> dict | None:
    """The last line that is a JSON object (the tool prints one last; a login banner or a
    warning may come before it)."""
    for line in reversed(list(lines)):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


# ---- the stat-only look --------------------------------------------------------------------

# Run on the host by the WeightsHostState fact with `python3 -S -B` (stdlib only, no
# bytecode written): hashes of our two files, the installed package bundles, whether a
# token file was left behind, and (when the tool is there) the job status and the tool's
# own verification plan over its hash cache, imported from the zip application itself.
# Stats and small JSON reads only: nothing is written or started, so it is safe under --dry.
LOOK_SCRIPT = r'''
import hashlib, importlib, json, os, sys
tool_dir, wd, script, package = sys.argv[1:5]
state_dir = os.path.join(wd, ".glmfleet")
def sha(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None
out = {"python": sys.version.split()[0], "tool_sha256": sha(script),
       "manifest_sha256": sha(os.path.join(state_dir, "manifest.json")),
       "verified_revision": None, "job": None, "check": None, "check_error": None}
try:  # what picks the wheels shipped for the download (glmfleet/weights/hostbundle.py)
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
except (ValueError, OSError):
    libc = ""
out.update(machine=os.uname().machine, implementation=sys.implementation.name,
           glibc=libc.split()[1] if libc.startswith("glibc ") else None)
out["token_file"] = any(os.path.exists(os.path.join(tool_dir, "secrets", name + ext))
                       for name in ("hf-token", "peer-token") for ext in ("", ".tmp"))
pylib = os.path.join(tool_dir, "pylib")
try:
    out["bundles"] = sorted(d for d in os.listdir(pylib)
                            if os.path.isfile(os.path.join(pylib, d, "glmfleet-bundle.json")))
except OSError:
    out["bundles"] = []
if out["tool_sha256"] and os.path.isdir(state_dir):
    try:
        sys.path.insert(0, script)
        C, V, J = (importlib.import_module(package + "." + m) for m in ("common", "verify", "jobs"))
        paths = C.Paths(wd)
        st = J.status_report(paths)
        out["verified_revision"] = st.get("verified_revision")
        out["job"] = {k: st.get(k) for k in ("running", "lock_pid", "pid", "phase", "command",
                                             "revision", "stale", "exit_code", "error")}
        if out["manifest_sha256"] and not st.get("running"):
            m = C.load_manifest(paths.manifest)
            cache = V.HashCache(paths.cache)
            p = V.Verifier(paths, m, cache, 1).plan()
            entries = {e["path"]: e for e in m["files"]}
            idx = [r for r, e in entries.items() if r.endswith(".safetensors.index.json")
                   and cache.index_ok.get(r) != V.index_check_key(C.expected_hash(e)[1], entries)]
            bad = set(c["path"] for c in p["corrupt"])
            out["check"] = {"files": len(entries), "missing": len(p["missing"]),
                            "corrupt": len(bad), "to_hash": len(p["to_hash"]),
                            "structure": len(p["structure"]), "indexes_unchecked": len(idx),
                            "ok_paths": sorted(x for x in p["cached"] if x not in bad)}
    except Exception as e:
        out["check_error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
'''


def look_command(tool_dir: str, weights_dir: str) -> str:
    missing = '{"python": null, "error": "python3 is not installed"}'
    return (f"if ! command -v python3 >/dev/null 2>&1; then echo {q(missing)}; exit 0; fi\n"
            f"python3 -S -B -c {q(LOOK_SCRIPT)} {q(tool_dir)} {q(weights_dir)} "
            f"{q(HostPaths(tool_dir, weights_dir).script)} {APP_PACKAGE} 2>&1 || true")


def parse_look(lines: list[str]) -> dict:
    found = last_json(lines)
    if found is None:
        tail = " ".join(lines[-3:])[:300]
        return {"python": None, "error": f"unreadable output: {tail}"}
    return found


def quick_verdict(fact: Mapping, revision: str, manifest_sha256: str) -> tuple[bool, str]:
    """(verified, why) from the WeightsHostState fact. Verified means: VERIFIED names our
    revision, the manifest on the host is ours, no job runs, and every file still has the
    identity (size, mtime, inode) it had when its hash was checked and found right. Reads
    nothing but stats and small JSON files, so it is safe under --dry."""
    if not fact.get("python"):
        return False, "python3 is missing on the host"
    job = fact.get("job") or {}
    if job.get("running"):
        return False, f"a weights job is running (pid {job.get('lock_pid') or job.get('pid')})"
    if fact.get("verified_revision") != revision:
        have = fact.get("verified_revision")
        return False, (f"verified at another revision ({have[:12]})" if have
                       else "not verified yet")
    if fact.get("manifest_sha256") != manifest_sha256:
        return False, "the manifest on the host is not this run's"
    if fact.get("check_error"):
        return False, f"stat-only check failed: {fact['check_error']}"
    check = fact.get("check")
    if not check:
        return False, "no stat-only check result"
    problems = [f"{check[k]} {label}" for k, label in (
        ("missing", "missing"), ("corrupt", "corrupt"),
        ("to_hash", "changed since they were hashed"), ("structure", "structurally broken"),
        ("indexes_unchecked", "index file(s) not checked")) if check.get(k)]
    if problems:
        return False, "files: " + ", ".join(problems)
    return True, (f"verified at {revision[:12]}: stat-only check of {check['files']} files, "
                  "0 hashed")


def job_running(fact: Mapping) -> bool:
    return bool((fact.get("job") or {}).get("running"))


# ---- fan-out -----------------------------------------------------------------------------

def pick_seed(order: list[str], verified: set[str], running: set[str]) -> str | None:
    """The one host of a fan-out group that downloads from the Hub: none when a host is
    verified already or has a download running (it becomes the source); else the first."""
    if any(h in verified or h in running for h in order):
        return None
    return order[0] if order else None


def pick_source(order: list[str], verified: set[str]) -> str | None:
    """The first verified host (inventory order): it serves the others."""
    return next((h for h in order if h in verified), None)


def push_plan(files: list[Mapping], receivers: Mapping[str, set[str]]) -> list[tuple[dict, list[str]]]:
    """(manifest entry, receivers that need it) for every file some receiver lacks, largest
    first so the long copies start early. `receivers` maps a host to the paths it already
    holds verified (stat-only); everything else is copied (bytes only cross the LAN, and the
    receiver hashes each file afterwards)."""
    out = []
    for entry in sorted(files, key=lambda e: (-e["size"], e["path"])):
        need = sorted(h for h, ok in receivers.items() if entry["path"] not in ok)
        if need:
            out.append((dict(entry), need))
    return out


# ---- texts -------------------------------------------------------------------------------

def human_duration(seconds) -> str:
    s = int(round(float(seconds or 0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def progress_line(st: Mapping) -> str:
    """'download: 1.2 GB of 4.3 GB (28%), 110.0 MB/s, ETA 3m 10s, 3 file(s) in flight'."""
    phase = st.get("phase") or "starting"
    verb = {"check": "checking what is here", "verify": "verifying", "download": "download",
            "connect": "connecting to the Hub"}.get(phase, phase)
    done, total = st.get("bytes_done") or 0, st.get("bytes_total") or 0
    parts = [f"{verb}: {human_bytes(done)} of {human_bytes(total)}"
             + (f" ({100 * done / total:.0f}%)" if total else "")]
    if st.get("rate_bytes_per_s"):
        parts.append(f"{human_bytes(st['rate_bytes_per_s'])}/s")
    if st.get("eta_s") is not None and phase == "download":
        parts.append(f"ETA {human_duration(st['eta_s'])}")
    current = st.get("current_files") or []
    if current:
        parts.append(f"{len(current)} file(s) in flight")
    if phase == "download" and st.get("command") == "download":
        n = st.get("sources") or 0
        parts.append(f"from {n} host(s)" if n else "from the Hub")
    return ", ".join(parts)


def fleet_progress_line(states: Mapping[str, Mapping]) -> str | None:
    """The fleet's download in one line, from each host's last status (host -> status):
    'download: 2.4 GB of 12.9 GB (19%), 220.0 MB/s, ETA 3m 10s, 2 of 3 host(s) running'.
    Bytes are each host's bytes received (partial files included; a finished host counts
    whole); the rate is the sum of the hosts' own sliding-window rates; the ETA is the
    slowest running host's. None while fewer than two hosts download or none runs."""
    running = [st for st in states.values() if st.get("running")]
    if len(states) < 2 or not running:
        return None
    done = sum((st.get("bytes_total") or 0) if job_succeeded(st) else (st.get("bytes_done") or 0)
               for st in states.values())
    total = sum(st.get("bytes_total") or 0 for st in states.values())
    parts = [f"download: {human_bytes(done)} of {human_bytes(total)}"
             + (f" ({100 * done / total:.0f}%)" if total else "")]
    rate = sum(st.get("rate_bytes_per_s") or 0 for st in running if st.get("phase") == "download")
    if rate:
        parts.append(f"{human_bytes(rate)}/s")
    etas = [st["eta_s"] for st in running if st.get("phase") == "download" and st.get("eta_s") is not None]
    if etas:
        parts.append(f"ETA {human_duration(max(etas))}")
    parts.append(f"{len(running)} of {len(states)} host(s) running")
    peers = sum(1 for st in running if st.get("phase") == "download" and st.get("sources"))
    if peers:
        parts[-1] += f" ({peers} from other hosts, {len(running) - peers} from the Hub)"
    return ", ".join(parts)


def job_succeeded(st: Mapping) -> bool:
    return st.get("phase") == "done" and st.get("exit_code") == 0


def job_failure(st: Mapping) -> str:
    """What went wrong with a finished (or vanished) job, for the operator."""
    if st.get("stale"):
        return (f"the weights job (pid {st.get('pid')}) stopped before finishing (killed, or the host "
                "rebooted); run the deploy again: verified files are kept and only the rest is fetched")
    if st.get("error"):
        return str(st["error"])
    result = st.get("result") or {}
    if result.get("summary"):
        return str(result["summary"])
    return f"the weights job ended in phase {st.get('phase')!r} with exit code {st.get('exit_code')}"


def start_refusal(rc: int | None, out: Mapping | None, stderr: str) -> str:
    """Why `weights.pyz ... --detach` did not start a job."""
    if out and out.get("error"):
        return str(out["error"])
    if rc == EXIT_BUSY:
        return "another weights job is running"
    tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
    return f"weights.pyz exited with code {rc}: {tail}"


def size_text(n: int) -> str:
    """'4.2 MB (4194719 B)': readable, and exact for whoever compares numbers."""
    return f"{human_bytes(n)} ({int(n)} B)"


def pass_detail(summary: str, hub_bytes: int, lan_bytes: int = 0, source: str | None = None,
                seconds: float | None = None, peer_bytes: int = 0,
                peers: Iterable[str] = ()) -> str:
    parts = [summary, f"fetched from the Hub: {size_text(hub_bytes)}"]
    if lan_bytes or source:
        parts.append(f"copied from {source} over SSH via the controller: {size_text(lan_bytes)}")
    peers = list(peers)
    if peer_bytes or peers:
        parts.append(f"from {len(peers)} host(s) of the site ({', '.join(peers)}): "
                     f"{size_text(peer_bytes)}")
    if seconds:
        parts.append(f"in {human_duration(seconds)}")
    return "; ".join(parts)
