"""pyinfra side of stage 'weights': one fact, five operations, and the long-running steps.

The work itself is the host-side tool (glmfleet/weights/hostside/, shipped as one zip
application, bin/weights.pyz: glmfleet/weights/toolapp.py), run ON the host as a detached job
(lock, state.json, log), so a 313 GB download survives the SSH session and the controller. Here we:

1. put weights.pyz and the manifest on the host (idempotent by sha256);
2. look at the host with one read-only command (WeightsHostState: a stat-only check against
   the hash cache; it starts nothing, so --dry is safe) and, when a download may be needed,
   install the Python packages it needs, chosen for the host's Python and platform
   (glmfleet/weights/hostbundle.py);
3. start `download --detach` (or attach to a job already running: exit 3 / the fact says
   so) and poll `status --wait N` until it ends, logging bytes (partial files included),
   rate and ETA per host, and a total line for the fleet;
4. with weights_fanout, only one host (the seed) fetches from the Hub. With
   weights_fanout_via="peers" (section 5 below), every host serves the others over the site
   network each file it has verified, all fetch at once, and no weight byte crosses the
   controller; with "controller", after the seed's download, the
   first verified host (the source) copies what each receiver lacks over SSH through the
   controller, reading every file once for all receivers, and each receiver hashes every
   copied file (`verify`), falling back to the Hub for anything that does not match. The
   relay is the one path that exists wherever pyinfra works (SSH to every host), for hosts
   that cannot reach each other; its price: every byte crosses the controller's link once
   per receiver. The ordering relies on pyinfra's default of finishing each operation on
   every host before the next (with --serial the sources grow one host at a time; with
   --no-wait receivers may go to the Hub).

Decisions are pure functions in glmfleet.weights.plan. Operations decide at execution time
from live facts (pyinfra 3 runs an operation's body again when it executes); the long
steps are FunctionCommands (state, host) that return False after recording a FAIL with the
reason, so pyinfra drops the host and the fleet summary says why.

The HF token: read on the controller (runctx.hf_token) inside the step that starts a
download, written through stdin to a 0600 file in a 0700 dir outside the weights dir, named
to the job with --token-file, and deleted as soon as the job has read it (before it
detaches). Never in a command line, an operation argument, a fact, a diff or a log.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import secrets
import shlex
import time

import gevent
from pyinfra import host, logger
from pyinfra.api import FactBase, FunctionCommand, StringCommand, operation
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import apt, server

from glmfleet import remote, roles, runctx
from glmfleet.settings import Settings
from glmfleet.weights import hostbundle
from glmfleet.upload import atomic_upload
from glmfleet.weights import plan, toolapp
from glmfleet.weights.hostside.common import EXIT_BUSY, EXIT_OK, human_bytes
from glmfleet.weights.manifest import ManifestError, fetch_manifest
from glmfleet.weights.manifest import dumps as manifest_text

STAGE = "weights"
q = shlex.quote

# ---- the manifest and the token (read on the controller) -------------------------------------

def hf_token(s: Settings) -> str | None:
    """The HF token: settings' hf_token_file, else $HF_TOKEN; never printed or logged."""
    if s.hf_token_file:
        path = os.path.expanduser(s.hf_token_file)
        try:
            with open(path) as f:
                return f.read().strip() or None
        except OSError as e:
            raise PyinfraError(f"hf_token_file {path!r} cannot be read ({e.strerror}): "
                               "fix the path or its permissions, or unset it") from None
    return os.environ.get("HF_TOKEN") or None


def manifest_for_run(state, s: Settings):
    """(manifest, error) for the pinned revision, fetched once per run on the controller.

    Greenlets sharing a key do not race: the fetch blocks the (unpatched) event loop, so the
    first caller fills the cache before any other host's preflight resumes."""
    if s.model_revision is None:
        return None, None
    key = (s.model_repo, s.model_revision, s.hf_endpoint, s.hf_token_file)
    cache = runctx.per_run(state, "weights.manifests", lambda _state: {})
    if key not in cache:
        try:
            cache[key] = (fetch_manifest(s.model_repo, s.model_revision, s.hf_endpoint,
                                          hf_token(s)), None)
        except ManifestError as e:
            cache[key] = (None, e)
    return cache[key]


def keep_held_manifest(state, host_name: str, manifest: dict) -> None:
    """Preflight found the Hub unreachable and this host verified for the pinned revision:
    its own manifest stands in for the Hub's for the rest of the run."""
    runctx.per_run(state, "weights.held", lambda _state: {})[host_name] = manifest


def held_manifest_for(state, host_name: str) -> dict | None:
    return runctx.per_run(state, "weights.held", lambda _state: {}).get(host_name)


# ---- the fact --------------------------------------------------------------------------------

class WeightsHostState(FactBase):
    """What the weights stage needs to know about a host, in one read-only command
    (weights_plan.look_command: hashes of our files, the job's status, a stat-only check)."""

    def command(self, tool_dir: str, weights_dir: str) -> str:
        return plan.look_command(tool_dir, weights_dir)

    @staticmethod
    def default() -> dict:
        return {"python": None, "error": "the weights look printed nothing"}

    def process(self, output: list[str]) -> dict:
        return plan.parse_look(output)


def _look(s) -> dict:
    return host.get_fact(WeightsHostState, tool_dir=s.weights_tool_dir, weights_dir=s.weights_dir)


# ---- per-run registry (fan-out coordination) ------------------------------------------------

class _Run:
    def __init__(self, state):
        self.state = state
        self.ok_paths: dict[str, set] = {}       # host -> paths it holds verified
        self.running: set[str] = set()           # hosts with a job running at check time
        self.verified: set[str] = set()          # hosts verified during this run
        self.pushed: dict[str, int] = {}         # receiver -> bytes copied to it
        self.push_source: dict[str, str] = {}    # receiver -> the host it was copied from
        self.downloads: dict[str, dict] = {}     # host -> last status of its download job
        self.fleet_logged = 0.0                  # when the fleet progress line was last logged
        self.bundles: dict[str, hostbundle.Bundle] = {}  # host -> its Python packages
        # host-to-host fan-out (weights_fanout_via = "peers")
        self.peer_token: str | None = None       # the run's token for the hosts' servers
        self.rounds: dict[tuple, dict] = {}      # checkpoint -> {host: its sources} (plan.peer_rounds)
        self.urls: dict[str, str] = {}           # host -> base URL of its running server
        self.serving: set[str] = set()           # hosts whose server this run started


def _run(state) -> _Run:
    return runctx.per_run(state, "weights", _Run)


def _peer_token(state) -> str:
    """One random token per run, shared by every server and download of it; never printed."""
    r = _run(state)
    if r.peer_token is None:
        r.peer_token = secrets.token_urlsafe(32)
    return r.peer_token


def _group(state, s) -> list[str]:
    """Active fan-out GPU hosts deploying the same checkpoint, in inventory order (a gateway
    or image cache host runs no weights stage, whatever its settings say)."""
    out = []
    active = set(state.active_hosts)
    for h in state.inventory:  # inventory order: every host picks the same seed and source
        if h not in active or not roles.is_gpu_host(h.groups):
            continue
        hs = runctx.settings(state, h)
        if hs.weights_fanout and (hs.model_repo, hs.model_revision, hs.weights_fanout_via) == \
                (s.model_repo, s.model_revision, s.weights_fanout_via):
            out.append(h.name)
    return out


# ---- small helpers ---------------------------------------------------------------------------

def _failed_here(state) -> set[str]:
    """Hosts whose weights stage has failed in this run."""
    return {n for n, st in runctx.run_for(state).stages.items()
            if (st.get(STAGE) or ("",))[0] == "FAIL"}


def _executing() -> bool:
    return bool(host.state.is_executing)


def _log(h, message: str) -> None:
    h.log(f"weights: {message}", log_func=logger.info)


def _finish(state, h, status: str, detail: str) -> bool:
    runctx.record(h.name, STAGE, status, detail, state)
    runctx.echo(f"[{h.name}] {STAGE}: {status}: {detail}")
    return status != "FAIL"


def _sh(state, h, command: str, stdin: str | None = None, timeout: float | None = None,
        quiet: bool = False):
    """(ok, stdout lines, stderr text) of one command on host h, run as the run's
    operations are (sudo and all: glmfleet.remote)."""
    r = remote.sh(h, command, stdin=stdin, timeout=timeout,
                  show=False if quiet else None)
    return r.ok, r.out, r.err


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fail(message: str, **op_kwargs) -> None:
    """A FAIL known while planning (e.g. no manifest): recorded now, then a failing command
    (pyinfra's server.shell) drops the host when the run executes."""
    runctx.record(host.name, STAGE, "FAIL", message)
    server.shell(commands=[runctx.fail_command(message)], **op_kwargs)


# ---- 1. weights.pyz and the manifest -----------------------------------------------------

@operation()
def tool_and_manifest(s, manifest: dict):
    """weights.pyz and the manifest, replaced atomically (files.put writes in place; a job may read them)."""
    paths = plan.HostPaths(s.weights_tool_dir, s.weights_dir)
    look = _look(s)
    tool = toolapp.build()  # same sources, same bytes: compared by digest
    text = manifest_text(manifest).encode()
    changed = False
    if look.get("tool_sha256") != tool.sha256:
        changed = True
        yield from atomic_upload(paths.script, tool.data, "755")
        # The single-file script of earlier deploys, replaced by the zip application.
        yield StringCommand(f"rm -f {q(paths.tool_dir + '/bin/weights.py')}")
    if look.get("manifest_sha256") != _sha(text):
        changed = True
        # Safe while a job runs: a job reads its manifest once, when it starts.
        yield from atomic_upload(paths.manifest, text, "644")
    if look.get("token_file"):
        # Left by a run that lost its connection while starting a download: no job needs it.
        changed = True
        yield StringCommand(plan.token_remove_command(paths))
    if not changed:
        host.noop("weights.pyz and the manifest are up to date")


# ---- 2. the stat-only check, and the Python packages when a download may be needed -------

def _needs_work(s, look: dict, manifest: dict) -> tuple[bool, str]:
    ok, why = plan.quick_verdict(look, manifest["revision"], _sha(manifest_text(manifest).encode()))
    if ok and s.weights_rehash:
        return True, "weights_rehash is set: every byte is hashed again"
    return not ok, why


@operation()
def check_and_packages(s, manifest: dict):
    """A stat-only check; the Python packages shipped only when a download may be due (no pyinfra equivalent)."""
    look = _look(s)
    needs, why = _needs_work(s, look, manifest)
    if _executing():
        r = _run(host.state)
        r.ok_paths[host.name] = set((look.get("check") or {}).get("ok_paths") or [])
        if plan.job_running(look):
            r.running.add(host.name)
        elif not needs:
            r.verified.add(host.name)
    if not needs:
        host.noop(why)
        return
    try:
        bundle = _bundle(host.state, host, s, look)
    except hostbundle.BundleError as e:
        yield from fail._inner(f"cannot build the Python packages for the download: {e}")
        return
    if bundle.digest in (look.get("bundles") or []):
        host.noop(f"Python packages for the download are installed ({bundle.digest}, "
                  f"{_xet_text(bundle)})")
        return
    yield FunctionCommand(_install_bundle, (s, bundle, not plan.job_running(look)), {})


def _bundle(state, h, s, look: dict | None = None) -> hostbundle.Bundle:
    """The host's Python packages: wheels for its own Python and platform (from its look)."""
    r = _run(state)
    if look is not None or h.name not in r.bundles:
        look = look or h.get_fact(WeightsHostState, tool_dir=s.weights_tool_dir,
                                  weights_dir=s.weights_dir)
        r.bundles[h.name] = hostbundle.build(hostbundle.Target.from_facts(look), s.weights_wheel_dir)
    return r.bundles[h.name]


def _xet_text(bundle: hostbundle.Bundle) -> str:
    return ("with hf_xet: Xet transfers on" if bundle.xet else
            f"without hf_xet ({bundle.note}): plain HTTP(S) downloads, HF_HUB_DISABLE_XET=1")


def _install_bundle(state, host, s, bundle: hostbundle.Bundle, prune: bool) -> bool:  # noqa: F811
    h = host
    paths = plan.HostPaths(s.weights_tool_dir, s.weights_dir)
    upload = f"{paths.pylib}/.{bundle.digest}.tar.gz"
    ok, _, err = _sh(state, h, f"mkdir -p {q(paths.pylib)}")
    if ok:
        ok = remote.put(h, bundle.path, upload)
        err = err or f"upload of {bundle.path.name} failed"
    if ok:
        cmd = plan.bundle_install_command(paths, bundle.digest, upload, bundle.import_check,
                                          bundle.xet, prune)
        ok, _, err = _sh(state, h, cmd, timeout=600)
    if not ok:
        reason = next((line for line in reversed(err.splitlines()) if "glmfleet:" in line), None)
        return _finish(state, h, "FAIL", (reason.split("glmfleet: ", 1)[1] if reason else
                                          f"installing the Python packages for the download "
                                          f"into {paths.pylib} failed: {err.strip()[-300:]}"))
    _log(h, f"Python packages for the download installed in {paths.bundle_dir(bundle.digest)} "
            f"({len(bundle.packages)} packages from the {bundle.source}, {_xet_text(bundle)})")
    return True


# ---- 3. download (or attach), with progress ---------------------------------------------------

class _JobFailed(Exception):
    pass


class _Job:
    """Start/attach/poll of weights.pyz jobs on one host (inside a FunctionCommand)."""

    def __init__(self, state, h, s, manifest: dict):
        self.state, self.h, self.s, self.manifest = state, h, s, manifest
        self.paths = plan.HostPaths(s.weights_tool_dir, s.weights_dir)
        self.hub_bytes = 0
        self.peer_bytes = 0
        self.started = time.monotonic()

    # -- one job -----------------------------------------------------------------------
    def start(self, command: str, peers: tuple = ()) -> bool:
        """Start a detached job; True if started, False if another is running (attach).
        peers: the other hosts' servers a download fetches from first (with the run's token)."""
        token = None
        env = {}
        if command == "download":
            try:
                token = hf_token(self.s)
            except PyinfraError as e:
                raise _JobFailed(str(e)) from None
            try:
                bundle = _bundle(self.state, self.h, self.s)
            except hostbundle.BundleError as e:
                raise _JobFailed(f"cannot build the Python packages for the download: {e}") from None
            env = {"pylib": self.paths.bundle_dir(bundle.digest), "xet": bundle.xet}
        cmd = plan.job_command(command, self.paths, endpoint=self.s.hf_endpoint,
                               token_file=self.paths.token_file if token else None,
                               downloads=self.s.weights_parallel_downloads,
                               rehash=self.s.weights_rehash, peers=peers, **env)
        secret_files = [(self.paths.token_file, token)] if token else []
        if peers:
            secret_files.append((self.paths.peer_token_file, _peer_token(self.state)))
        try:
            for path, secret in secret_files:
                ok, _, err = _sh(self.state, self.h, plan.token_write_command(self.paths, path),
                                 stdin=secret, quiet=True)
                if not ok:
                    raise _JobFailed(f"cannot write the token file {path} on the host: "
                                     f"{err.strip()[-200:]}")
            ok, out, err = _sh(self.state, self.h, plan.with_rc(cmd), timeout=300)
        finally:
            if secret_files:  # the job has read them (or never will): no copy stays on the host
                _sh(self.state, self.h, plan.token_remove_command(self.paths))
        rc = plan.parse_rc(out)
        result = plan.last_json(out)
        if rc == EXIT_OK and result and result.get("status") == "started":
            _log(self.h, f"{command} started (pid {result.get('pid')}, log {result.get('log')})")
            return True
        if rc == EXIT_BUSY:
            return False
        raise _JobFailed(plan.start_refusal(rc, result, err))

    def wait(self) -> dict:
        """Poll `status --wait N` until no job runs; log progress each time. Returns the
        final status. weights_wait_timeout_s bounds the wait, not the job."""
        interval = self.s.weights_progress_interval_s
        limit = self.s.weights_wait_timeout_s
        t0 = time.monotonic()
        while True:
            ok, out, err = _sh(self.state, self.h, plan.status_command(self.paths, interval),
                               timeout=interval + 120)
            st = plan.last_json(out) if ok else None
            if st is None:
                raise _JobFailed(f"cannot read the weights job's status on the host: "
                                 f"{(err or ' '.join(out)).strip()[-300:]}")
            self._note(st)
            if not st.get("running"):
                return st
            _log(self.h, plan.progress_line(st))
            if limit and time.monotonic() - t0 > limit:
                raise _JobFailed(
                    f"the weights job is still running after {plan.human_duration(limit)} "
                    f"(weights_wait_timeout_s); it goes on detached on the host: run the deploy "
                    f"again to attach, or follow it with `{plan.status_command(self.paths, 0)}`")

    def _note(self, st: dict) -> None:
        """Keep this host's download status for the fleet line; log that line at most once
        per weights_progress_interval_s, whichever host polls first."""
        if st.get("command") != "download":
            return
        r = _run(self.state)
        r.downloads[self.h.name] = st
        line = plan.fleet_progress_line(r.downloads)
        now = time.monotonic()
        if line and now - r.fleet_logged >= self.s.weights_progress_interval_s:
            r.fleet_logged = now
            logger.info(f"[fleet] weights: {line}")

    def run(self, command: str, peers: tuple = ()) -> dict:
        """Run one job to its end (attaching first if another job holds the lock)."""
        for _ in range(3):
            if self.start(command, peers):
                st = self.wait()
                self._count(st)
                return st
            _log(self.h, "another weights job is running on this host: attaching to it")
            st = self.wait()
            self._count(st)
            if (plan.job_succeeded(st) and st.get("revision") == self.manifest["revision"]
                    and st.get("command") in (command, "download")):
                return st  # it did what we were about to do
        raise _JobFailed("another weights job keeps holding the lock on this host; wait for it "
                         "(weights.pyz status) or stop it, then run the deploy again")

    def attach(self) -> dict:
        _log(self.h, "a weights job is already running on this host: attaching to it")
        st = self.wait()
        self._count(st)
        return st

    def _count(self, st: dict) -> None:
        if st.get("command") == "download":
            self.hub_bytes += int(st.get("fetched_bytes") or 0)
            self.peer_bytes += int(st.get("peer_bytes") or 0)

    # -- outcome -----------------------------------------------------------------------
    def passed(self, st: dict, lan_bytes: int = 0, source: str | None = None,
               peers: tuple = ()) -> bool:
        summary = (st.get("result") or {}).get("summary") or "verified"
        _run(self.state).verified.add(self.h.name)
        detail = plan.pass_detail(summary, self.hub_bytes, lan_bytes, source,
                                  time.monotonic() - self.started, self.peer_bytes, peers)
        return _finish(self.state, self.h, "PASS", detail)

    def failed(self, reason: str) -> bool:
        if self.hub_bytes:
            reason += f" (fetched from the Hub before that: {plan.size_text(self.hub_bytes)})"
        return _finish(self.state, self.h, "FAIL", reason)


def _download(state, host, s, manifest: dict, attach: bool) -> bool:  # noqa: F811
    """Hub download (weights.pyz checks what is there first and fetches only the rest);
    with weights_rehash a full verify runs first, so bit rot is found and only the bad
    files are fetched."""
    h = host
    job = _Job(state, h, s, manifest)
    try:
        if attach:
            st = job.attach()
            ours = st.get("revision") == manifest["revision"] and st.get("command") == "download"
            if ours and plan.job_succeeded(st):
                return job.passed(st)
            if ours:  # it died or failed: say so; the next run resumes (finished files stay)
                return job.failed(plan.job_failure(st))
            # another kind of job (a verify, another revision) ended: now ours
        elif s.weights_rehash:
            st = job.run("verify")
            if plan.job_succeeded(st):
                return job.passed(st)
        st = job.run("download")
    except _JobFailed as e:
        return job.failed(str(e))
    except Exception as e:  # SSH trouble mid-wait: the host-side job is unaffected
        return job.failed(_lost(e))
    return job.passed(st) if plan.job_succeeded(st) else job.failed(plan.job_failure(st))


def _lost(e: Exception) -> str:
    return (f"lost contact with the host while running the weights job ({type(e).__name__}: "
            f"{e}); a started job goes on detached: run the deploy again to attach to it")


@operation()
def fetch(s, manifest: dict):
    """A detached download job, attached to and followed with progress (server.shell blocks, silent)."""
    look = _look(s)
    needs, why = _needs_work(s, look, manifest)
    if not needs:
        if _executing():
            _finish(host.state, host, "PASS", plan.pass_detail(why, 0))
        host.noop(why)
        return
    running = plan.job_running(look)
    if s.weights_fanout and not running and _executing():
        if s.weights_fanout_via == "peers":
            host.noop("fan-out: fetched in the host-to-host step")
            return
        r = _run(host.state)
        group = _group(host.state, s)
        seed = plan.pick_seed(group, r.verified, r.running)
        if seed != host.name:
            who = seed or plan.pick_source(group, r.verified) or "a host whose download is running"
            host.noop(f"fan-out: receives the weights from {who} in a later step")
            return
        _log(host, "fan-out: this host fetches from the Hub for the group "
                   f"({len(group)} host(s))")
    yield FunctionCommand(_download, (s, manifest, running), {})


# ---- 4. fan-out: copy from the source over SSH, then verify on each receiver -------------

CHUNK = 4 << 20  # per read from the source: memory stays bounded whatever the file size


def _sftp(h):
    """A fresh SFTP channel on the host's existing SSH connection (not pyinfra's shared one:
    several copies run at once)."""
    import paramiko

    client = getattr(h.connector, "client", None)
    if client is None:
        raise RuntimeError(f"{h.name} is not reached over SSH: fan-out needs SFTP")
    return paramiko.SFTPClient.from_transport(client.get_transport())


@operation()
def fanout_push(s, manifest: dict):
    """Copies from a verified host to the others, host to host (files.put only sends controller files)."""
    if not _executing():
        host.noop("fan-out: decided at run time")
        return
    r = _run(host.state)
    group = _group(host.state, s)
    if plan.pick_source(group, r.verified) != host.name:
        host.noop("fan-out: not the source")
        return
    receivers = [n for n in group if n not in r.verified]
    if not receivers:
        host.noop("fan-out: every host of the group is verified")
        return
    yield FunctionCommand(_push, (s, manifest, receivers), {})


def _push(state, host, s, manifest: dict, receivers: list[str]) -> bool:  # noqa: F811
    """Copy what each receiver lacks from this (verified) host: each file is read once and
    written to every receiver that needs it, into its incoming dir, then renamed into place.
    A receiver that fails here is left to its verify/download step; the source never fails
    because of a receiver."""
    src = host
    r = _run(state)
    hosts = {n: state.inventory.get_host(n) for n in receivers}
    rpaths = {n: plan.HostPaths(runctx.settings(state, hosts[n]).weights_tool_dir,
                                runctx.settings(state, hosts[n]).weights_dir) for n in receivers}
    spaths = plan.HostPaths(s.weights_tool_dir, s.weights_dir)
    todo = plan.push_plan(manifest["files"], {n: r.ok_paths.get(n, set()) for n in receivers})
    total = sum(e["size"] * len(names) for e, names in todo)
    _log(src, f"fan-out: copying {len(todo)} file(s) to {len(receivers)} host(s), "
              f"{human_bytes(total)} in all, through the controller")
    try:
        source = _sftp(src)
    except Exception as e:
        _log(src, f"fan-out: cannot open SFTP on the source ({e}); receivers fetch from the Hub")
        return True
    dests, dead = {}, set()
    for n in receivers:
        dirs = {posixpath.dirname(rpaths[n].file(e["path"])) for e, _ in todo}
        # SFTP writes as the login user: under sudo the incoming dir is handed to that user
        # (the files are renamed into place, and given the weights dir's owner, by _place).
        ok, _, err = _sh(state, hosts[n], "mkdir -p " + " ".join(q(d) for d in
                                                                 sorted(dirs | {rpaths[n].incoming}))
                         + f" && chown {q(remote.login_user(hosts[n]))} {q(rpaths[n].incoming)}")
        try:
            if not ok:
                raise RuntimeError(err.strip()[-200:])
            dests[n] = _sftp(hosts[n])
        except Exception as e:
            _log(hosts[n], f"fan-out: cannot receive ({e}); it will fetch from the Hub")
            dead.add(n)
    sent, t0, last = 0, time.monotonic(), time.monotonic()
    try:
        for entry, names in todo:
            names = [n for n in names if n not in dead]
            if not names:
                continue
            dead |= _copy_file(source, spaths, entry, {n: (dests[n], rpaths[n]) for n in names},
                               lambda n, tmp, rel: _place(state, hosts[n], rpaths[n], tmp, rel))
            for n in names:
                if n not in dead:
                    r.pushed[n] = r.pushed.get(n, 0) + entry["size"]
                    r.push_source[n] = src.name
                    sent += entry["size"]
            if time.monotonic() - last >= s.weights_progress_interval_s:
                last = time.monotonic()
                rate = sent / max(1e-6, last - t0)
                _log(src, f"fan-out: {human_bytes(sent)} of {human_bytes(total)} copied, "
                          f"{human_bytes(rate)}/s")
    except Exception as e:  # the source itself broke: every receiver falls back to the Hub
        _log(src, f"fan-out: reading from this host failed ({e}); receivers fetch from the Hub")
    finally:
        for c in [source, *dests.values()]:
            _close_quiet(c)
        for n in dests:  # partial copies of a broken transfer, if any
            try:
                _sh(state, hosts[n], f"rm -rf {q(rpaths[n].incoming)}")
            except Exception:
                pass
    _log(src, f"fan-out: copied {human_bytes(sent)} in "
              f"{plan.human_duration(time.monotonic() - t0)}")
    return True


def _place(state, h, rp, tmp: str, rel: str) -> bool:
    """Rename a copied file into place (as the run's operations would: sudo and all), owned
    like the weights dir, dropping the Hub client's record of an older copy."""
    final = rp.file(rel)
    ok, _, _ = _sh(state, h, f"rm -f {q(rp.client_metadata(rel))} && chown --reference={q(rp.weights_dir)} "
                             f"{q(tmp)} && mv -f {q(tmp)} {q(final)}")
    return ok


def _copy_file(source, spaths, entry: dict, dests: dict, place) -> set:
    """Stream one file from the source to every destination, then ``place`` it (name, temp
    path, rel); returns the receivers that failed. A failing receiver is dropped without
    stopping the others."""
    rel, size = entry["path"], entry["size"]
    tmp_name = hashlib.sha256(rel.encode()).hexdigest()[:24] + ".part"
    handles, failed = {}, set()
    for n, (sftp, rp) in dests.items():
        try:
            f = sftp.open(f"{rp.incoming}/{tmp_name}", "wb")
            f.set_pipelined(True)
            handles[n] = f
        except Exception:
            failed.add(n)
    with source.open(spaths.file(rel), "rb") as src:
        offset = 0
        while offset < size and handles:
            n_bytes = min(CHUNK, size - offset)
            data = b"".join(src.readv([(offset, n_bytes)]))
            if len(data) != n_bytes:
                raise OSError(f"short read of {rel} at {offset}")
            for n in list(handles):
                try:
                    handles[n].write(data)
                except Exception:
                    failed.add(n)
                    _close_quiet(handles.pop(n))
            offset += n_bytes
            gevent.sleep(0)  # let the other hosts' greenlets run between chunks
    for n, f in handles.items():
        sftp, rp = dests[n]
        try:
            f.close()
            if not place(n, f"{rp.incoming}/{tmp_name}", rel):
                failed.add(n)
        except Exception:
            failed.add(n)
    return failed


def _close_quiet(f) -> None:
    try:
        f.close()
    except Exception:
        pass


@operation()
def fanout_receive(s, manifest: dict):
    """The copies hashed on each receiving host against the manifest (no pyinfra equivalent)."""
    if not _executing():
        host.noop("fan-out: decided at run time")
        return
    r = _run(host.state)
    if host.name in r.verified:
        host.noop("verified")
        return
    if host.name in _failed_here(host.state):
        host.noop("failed earlier in this stage")
        return
    yield FunctionCommand(_receive, (s, manifest), {})


def _receive(state, host, s, manifest: dict) -> bool:  # noqa: F811
    """Hash every copied file (weights.pyz verify); whatever does not match, and anything
    that was not copied, comes from the Hub."""
    h = host
    r = _run(state)
    lan, source = r.pushed.get(h.name, 0), r.push_source.get(h.name)
    job = _Job(state, h, s, manifest)
    try:
        if source is None:
            _log(h, "fan-out: no verified host could copy to this one: fetching from the Hub")
        else:
            st = job.run("verify")
            if plan.job_succeeded(st):
                return job.passed(st, lan, source)
            _log(h, f"fan-out: the copy did not verify ({plan.job_failure(st)}); fetching the "
                    "rest from the Hub")
        st = job.run("download")
    except _JobFailed as e:
        return job.failed(str(e))
    except Exception as e:
        return job.failed(_lost(e))
    if plan.job_succeeded(st):
        return job.passed(st, lan, source)
    return job.failed(plan.job_failure(st))


# ---- 5. fan-out host to host: every host serves what it has verified, the others fetch -------
#
# weights_fanout_via = "peers": the hosts of a group are put in rounds (plan.peer_rounds):
# one seed fetches from the Hub (none when a host holds the weights already), each later
# round fetches from all hosts of the earlier ones, so the sources double each round. Every
# host that is someone's source serves (weights.pyz serve: verified files only, range
# requests, the run's token) at site_address:weights_peer_port from the start, each file as
# soon as it has verified it, and all hosts fetch at once: a file moves down the rounds
# while the seed still fetches the next ones (hostside/peers.py). The controller starts and
# stops things; no weight byte crosses it. The servers stop when the exchange ends (and by
# themselves after a while without requests, should the controller go away).

def _rounds(state, s) -> dict[str, list[str]]:
    """The rounds of this host's group (one per checkpoint), decided once, when its first
    host asks (all hosts have been checked by then: the verified ones are the first sources)."""
    r = _run(state)
    key = (s.model_repo, s.model_revision)
    if key not in r.rounds:
        group, failed = _group(state, s), _failed_here(state)
        holders = [h for h in group if h in r.verified]
        needing = [h for h in group if h not in r.verified and h not in failed]
        r.rounds[key] = plan.peer_rounds(holders, needing) if needing else {}
    return r.rounds[key]


@operation()
def peer_tools(s, manifest: dict):
    """apt.packages, but only where a fetch is due (apt.packages alone cannot see that a host
    is verified and needs no aria2): the distribution's aria2 on hosts that fetch from peers."""
    needs, _why = _needs_work(s, _look(s), manifest)
    if not needs:
        host.noop("verified: fetches nothing")
        return
    yield from apt.packages._inner(packages=["aria2"], no_recommends=True, update=True,
                                   cache_time=3600)


@operation()
def peers_serve(s, manifest: dict):
    """The hosts that are some host's source serve their verified files from now on (no
    pyinfra operation runs a server for the length of a stage): started with a per-run token
    on stdin, never on a command line."""
    if not _executing():
        host.noop("fan-out: decided at run time")
        return
    rounds = _rounds(host.state, s)
    if not any(host.name in srcs for srcs in rounds.values()):
        host.noop("fan-out: nobody fetches from this host" if rounds else
                  "fan-out: every host of the group is verified: nothing to serve")
        return
    yield FunctionCommand(_serve_start, (s,), {})


def _serve_start(state, host, s) -> bool:  # noqa: F811
    """Start this host's server. A host that cannot serve only says so: the others use the
    remaining sources (and the Hub for what none of them has)."""
    h, r = host, _run(state)
    paths = plan.HostPaths(s.weights_tool_dir, s.weights_dir)
    address = runctx.site_address(h, s)
    try:
        for attempt in range(2):
            ok, _, err = _sh(state, h, plan.token_write_command(paths, paths.peer_token_file),
                             stdin=_peer_token(state), quiet=True)
            if not ok:
                raise RuntimeError(f"cannot write {paths.peer_token_file}: {err.strip()[-200:]}")
            try:
                ok, out, err = _sh(state, h, plan.with_rc(plan.serve_command(paths, address,
                                                                             s.weights_peer_port)))
            finally:
                _sh(state, h, plan.token_remove_command(paths))
            rc, result = plan.parse_rc(out), plan.last_json(out) or {}
            if rc == EXIT_BUSY and attempt == 0:  # left by an earlier run: it has another token
                _sh(state, h, plan.serve_stop_command(paths))
                continue
            break
        if rc != EXIT_OK or result.get("status") != "started":
            raise RuntimeError(plan.start_refusal(rc, result, err))
    except Exception as e:
        _log(h, f"fan-out: cannot serve the weights to the other hosts ({e}); they use the "
                "other sources")
        return True
    url = plan.peer_url(address, s.weights_peer_port)
    r.serving.add(h.name)
    r.urls[h.name] = url
    held = "the verified weights" if h.name in r.verified else "each file once verified here"
    _log(h, f"fan-out: serving the verified weights to the other hosts at {url} "
            f"(pid {result.get('pid')}; {held})")
    return True


@operation()
def peers_receive(s, manifest: dict):
    """Every host of the group that needs the weights fetches at once, the seed from the
    Hub, the others from their sources as these come to hold each file (no pyinfra
    equivalent): aria2 from all of them, then our own hash of every file."""
    if not _executing():
        host.noop("fan-out: decided at run time")
        return
    if host.name in _run(host.state).verified:
        host.noop("verified")
        return
    if host.name in _failed_here(host.state):
        host.noop("failed earlier in this stage")
        return
    yield FunctionCommand(_peer_receive, (s, manifest), {})


def _peer_receive(state, host, s, manifest: dict) -> bool:  # noqa: F811
    h, r = host, _run(state)
    rounds = _rounds(state, s)
    names = tuple(n for n in rounds.get(h.name, ()) if n in r.urls)
    if h.name in rounds and not rounds[h.name]:
        _log(h, f"fan-out: this host fetches from the Hub for the group ({len(rounds)} host(s))"
                + (" and serves each file on once verified" if h.name in r.urls else ""))
    elif names:
        _log(h, f"fan-out: fetching from {len(names)} host(s): {', '.join(names)} (each file "
                "once they hold it)")
    else:
        _log(h, "fan-out: no host serves the weights: fetching from the Hub")
    job = _Job(state, h, s, manifest)
    try:
        st = job.run("download", tuple(r.urls[n] for n in names))
    except _JobFailed as e:
        return job.failed(str(e))
    except Exception as e:
        return job.failed(_lost(e))
    if not plan.job_succeeded(st):
        return job.failed(plan.job_failure(st))
    return job.passed(st, peers=names if job.peer_bytes else ())


@operation()
def peers_stop(s, manifest: dict):
    """Stop the server this run started here: which hosts serve is known only while the run
    executes, after pyinfra's plan (server.shell decides at plan time)."""
    if not _executing():
        host.noop("fan-out: decided at run time")
        return
    if host.name not in _run(host.state).serving:
        host.noop("fan-out: not serving")
        return
    yield FunctionCommand(_serve_stop, (s,), {})


def _serve_stop(state, host, s) -> bool:  # noqa: F811
    paths = plan.HostPaths(s.weights_tool_dir, s.weights_dir)
    ok, out, err = _sh(state, host, plan.serve_stop_command(paths))
    result = plan.last_json(out) or {}
    _run(state).serving.discard(host.name)
    if ok and result.get("status") in ("stopped", "not running"):
        _log(host, "fan-out: stopped serving the weights")
    else:
        _log(host, f"fan-out: could not stop serving the weights ({result.get('status') or err.strip()[-200:]}); "
                   "the server stops by itself after 15 minutes without requests")
    return True
