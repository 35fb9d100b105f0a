"""pyinfra operations for the Docker and NVIDIA Container Toolkit stages.

Every operation decides at execution time from live facts (pyinfra 3 re-runs an operation's
body when it executes), so each one sees what the earlier ones did and a re-run with nothing
to do yields no command: zero changes, zero restarts. The decisions themselves are pure
functions in glmfleet.docker.plan.

pyinfra's own operations do the plain work (apt.packages, files.put, files.file,
server.shell); the operations written here are the ones pyinfra has no equivalent for, each
saying why in its first docstring line. They write files atomically (upload to a temp name
beside the target, then rename), so an interrupted run never leaves half a file where a good
one was.

Service manager, chosen from facts (/run/systemd/system present or not):
- systemd hosts: `systemctl enable --now docker` / `systemctl restart docker`.
- hosts WITHOUT an init system (containers, chroots, the simulated test hosts): the small
  helper INITLESS_HELPER below starts dockerd detached with its log in /var/log/dockerd.log
  and stops it by the pid in /var/run/docker.pid. Nothing brings it back after a reboot or
  a crash there; the deploy (or `glmfleet-dockerd start`) does.
In both cases dockerd is (re)started only when what it runs changed: see FINGERPRINT_SH in
glmfleet/docker/facts.py and the APPLIED_STAMP it is compared with.
"""

from __future__ import annotations

import io
import posixpath
import shlex

from pyinfra import host
from pyinfra.api import StringCommand, operation
from pyinfra.operations import apt, files, server

from glmfleet import runctx
from glmfleet.upload import atomic_upload
from glmfleet.docker.plan import (DAEMON_JSON, AptRepo, PlanError, cdi_decision, compare_gpus,
                                  dockerd_action, gpu_check_due, gpu_check_key, installed_key_ok,
                                  key_problem, key_refusal, merge_daemon_config,
                                  nvidia_runtime_configured, package_name, packages_to_install,
                                  parse_daemon_json, render_daemon_json)
from glmfleet.docker.facts import (APPLIED_STAMP, CDI_SPEC, GPU_CHECK_RESULT, GPU_CHECK_STAMP, CdiSpec,
                                   DaemonJson, DockerService, DownloadedKey, FileDigest, GpuCheckState,
                                   InstalledPackages, KeyringFile, NvidiaDriver, gpu_check_command)

q = shlex.quote

INITLESS_HELPER = "/usr/local/sbin/glmfleet-dockerd"
INITLESS_SCRIPT = r"""#!/bin/sh
# glmfleet-dockerd: start/stop dockerd on a host WITHOUT an init system (containers, chroots,
# the simulated test hosts). Installed by glmfleet only where /run/systemd/system is absent;
# systemd hosts use `systemctl ... docker` instead.
#
# dockerd runs detached in its own session, logging to /var/log/dockerd.log; it keeps its
# own pid file, /var/run/docker.pid, by which it is found and stopped. Nothing restarts it
# after a crash or a reboot: run `glmfleet-dockerd start` (or the deploy) again.
#
#   glmfleet-dockerd start|stop|restart|status
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PIDFILE=/var/run/docker.pid
LOG=/var/log/dockerd.log
WAIT=60  # seconds for dockerd to answer after start / to exit after SIGTERM

running_pid() {
  p=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = dockerd ] && echo "$p"
}

start() {
  if p=$(running_pid); then echo "dockerd already running (pid $p)"; return 0; fi
  setsid dockerd >>"$LOG" 2>&1 </dev/null &
  child=$!
  n=0
  until docker version >/dev/null 2>&1; do
    if ! kill -0 "$child" 2>/dev/null; then
      echo "dockerd exited during start; the end of $LOG:" >&2; tail -n 20 "$LOG" >&2; return 1
    fi
    n=$((n + 1))
    if [ "$n" -gt $((WAIT * 5)) ]; then echo "dockerd did not answer within ${WAIT}s; see $LOG" >&2; return 1; fi
    sleep 0.2
  done
  echo "dockerd started (pid $(running_pid || echo "$child"))"
}

stop() {
  p=$(running_pid) || { echo "dockerd is not running"; return 0; }
  kill -TERM "$p"
  n=0
  while kill -0 "$p" 2>/dev/null; do
    n=$((n + 1))
    [ "$n" -eq $((WAIT * 5)) ] && kill -KILL "$p" 2>/dev/null
    sleep 0.2
  done
  echo "dockerd stopped (was pid $p)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if p=$(running_pid); then echo "dockerd running (pid $p)"; else echo "dockerd not running"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
"""


def _executing() -> bool:
    return bool(host.state.is_executing)


def _record(stage: str, status: str, detail: str) -> None:
    """The stage's result for the fleet summary, and in full in the log (the summary table
    shows only a FAIL's reason)."""
    runctx.record(host.name, stage, status, detail)
    runctx.echo(f"[{host.name}] {stage}: {status}: {detail}")


def _fail(stage: str, message: str):
    """Record a FAIL for the summary and end this host's run with the message on stderr
    (pyinfra prints a failed command's stderr, so it is not echoed here too)."""
    if _executing():
        runctx.record(host.name, stage, "FAIL", message)
    yield runctx.fail_command(message)


# --- generic: pyinfra's own operations where they do what we need -----------------------------

def plan_fail(stage: str, message: str, **op_kwargs) -> None:
    """A FAIL known while planning (unsupported host, conflicting packages): recorded now, so
    later stages of this host can see it, and a failing command (pyinfra's server.shell) so
    pyinfra drops the host with the message when the run executes."""
    runctx.record(host.name, stage, "FAIL", message)  # echoed when the run executes
    server.shell(commands=[runctx.fail_command(message)], **op_kwargs)


def file_content(path: str, content: str, mode: str = "644", **op_kwargs) -> None:
    """pyinfra's files.put (root-owned; --diff shows the change). Not atomic under a plain
    login (written in place): only for small files no running program reads mid-write."""
    files.put(src=io.StringIO(content), dest=path, mode=mode, user="root", group="root", **op_kwargs)


def file_absent(path: str, **op_kwargs) -> None:
    files.file(path=path, present=False, **op_kwargs)


def apt_install(packages: list[str], **op_kwargs) -> None:
    """pyinfra's apt.packages. `apt-get update` runs first only when a package is missing (or
    pinned at another version) while planning, so a host with everything in place makes no
    apt call at all; a cache window (cache_time) is not used, as it would skip the update
    right after a new source was added (the toolkit's, after the docker stage's update).
    No recommends: a server gets what it asked for (Debian's docker-compose would otherwise
    pull in docker.io, docker-ce would pull docker-ce-rootless-extras)."""
    installed = host.get_fact(InstalledPackages, names=tuple(package_name(p) for p in packages))
    apt.packages(packages=list(packages), update=bool(packages_to_install(list(packages), installed)),
                 no_recommends=True, allow_downgrades=True, **op_kwargs)


def apt_remove(packages: list[str], **op_kwargs) -> None:
    apt.packages(packages=list(packages), present=False, **op_kwargs)


# --- repositories --------------------------------------------------------------------------

@operation()
def trusted_key(repo: AptRepo, stage: str):
    """A repository key trusted only once it matches the pinned fingerprint (apt.key has no check).

    Installs ``repo``'s signing key only after checking it is the pinned one.

    The key is fetched on the host (apt's own downloader, so the site's apt proxy applies),
    read with gpg there, and its bytes come back here; only those exact bytes are written to
    the keyring, so what was checked is what gets trusted. A key already in place and right
    costs no download on later runs."""
    if installed_key_ok(host.get_fact(KeyringFile, path=repo.keyring), repo.fingerprint):
        host.noop(f"{repo.keyring} holds the pinned key {repo.fingerprint}")
        return
    if not _executing():  # planning a --dry/diff run: say what would happen, fetch nothing
        yield StringCommand(f"# fetch {repo.key_url}, require fingerprint {repo.fingerprint}, "
                            f"install it as {repo.keyring}")
        return
    key = host.get_fact(DownloadedKey, url=repo.key_url)
    if key["error"]:
        yield from _fail(stage, (
            f"cannot download the signing key for {repo.title} from {repo.key_url}: {key['error']}. "
            f"Check that the host reaches it (settings {repo.settings[1]}, {repo.settings[0]}, apt_proxy); "
            "nothing was installed from this repository"))
        return
    problem = key_problem(key["keys"], repo.fingerprint, armored=key["armored"])
    if problem or not key["data"]:
        yield from _fail(stage, key_refusal(repo, problem or "its content did not come back intact"))
        return
    yield from atomic_upload(repo.keyring, key["data"], "644")  # _apt must read it


# --- daemon.json ---------------------------------------------------------------------------

def _daemon_config():
    """(text or None, config dict, error message or None) from the live daemon.json."""
    text = host.get_fact(DaemonJson)
    try:
        return text, parse_daemon_json(text), None
    except PlanError as e:
        return text, None, str(e)


@operation()
def daemon_json(log_max_size: str, log_max_file: int, stage: str = "docker",
                registry_mirror: str | None = None):
    """Our keys merged into daemon.json, the operator's kept (files.put replaces whole files).

    Rewritten (atomically) only on a real change."""
    text, config, error = _daemon_config()
    if error:
        yield from _fail(stage, error)
        return
    merged = merge_daemon_config(config, log_max_size=log_max_size, log_max_file=log_max_file,
                                 registry_mirror=registry_mirror)
    if merged == config and text is not None:
        host.noop(f"{DAEMON_JSON} already has our settings")
        return
    current = host.get_fact(FileDigest, path=DAEMON_JSON)
    yield from atomic_upload(DAEMON_JSON, render_daemon_json(merged).encode(),
                             current["mode"] if current else "644")


@operation()
def nvidia_runtime(stage: str = "nvidia_toolkit"):
    """nvidia-ctk's runtime configure, only when needed and atomic (server.shell: always, in place).

    `nvidia-ctk runtime configure --runtime=docker` runs on a copy that then replaces
    daemon.json in one rename (nvidia-ctk itself rewrites in place). Skipped when the
    nvidia runtime is already there."""
    _, config, error = _daemon_config()
    if error:
        yield from _fail(stage, error)
        return
    if nvidia_runtime_configured(config):
        host.noop(f"{DAEMON_JSON} already has the nvidia runtime")
        return
    tmp = "/etc/docker/.daemon.json.glmfleet-tmp"
    yield StringCommand(
        f"set -e; mkdir -p /etc/docker; rm -f {tmp}; trap 'rm -f {tmp}' EXIT; "
        # an empty file is no config: nvidia-ctk refuses it, so start from none
        f"if [ -s {DAEMON_JSON} ]; then cp -p {DAEMON_JSON} {tmp}; fi; "
        f"nvidia-ctk runtime configure --runtime=docker --config={tmp}; "
        f"grep -q '\"nvidia-container-runtime\"' {tmp}; mv -f {tmp} {DAEMON_JSON}")


@operation()
def cdi_spec(setting: str, stage: str = "nvidia_toolkit"):
    """A CDI spec generated on the host, replaced only when it differs (files.put: controller files).

    Generates NVIDIA's CDI spec (/var/run/cdi/nvidia.yaml) when cdi_decision says so and it
    differs from what is there."""
    installed = host.get_fact(InstalledPackages, names=("nvidia-container-toolkit-base",))
    has_driver = bool(host.get_fact(NvidiaDriver))
    wanted, note = cdi_decision(setting, installed.get("nvidia-container-toolkit-base"), has_driver)
    if not wanted:
        host.noop(note)
        return
    spec = host.get_fact(CdiSpec)
    if spec["error"]:
        yield from _fail(stage, f"`nvidia-ctk cdi generate` failed: {spec['error']}; fix the NVIDIA "
                                "driver, or set nvidia_cdi=off to go without a CDI spec")
        return
    if spec["same"]:
        host.noop(f"{CDI_SPEC} is current")
        return
    d = posixpath.dirname(CDI_SPEC)
    yield StringCommand(f"set -e; mkdir -p {d}; t=$(mktemp -d); trap 'rm -rf \"$t\"' EXIT; "
                        f"nvidia-ctk cdi generate --format=yaml --output=\"$t/nvidia.yaml\"; "
                        f"chmod 644 \"$t/nvidia.yaml\"; mv -f \"$t/nvidia.yaml\" {CDI_SPEC}")


# --- the engine ----------------------------------------------------------------------------

@operation()
def docker_service():
    """dockerd restarted only when its inputs changed, init-less hosts too (systemd.service: neither).

    dockerd running what is on disk: start it when stopped, restart it only when its inputs
    changed (stamp; see plan.dockerd_action), adopt a running one that already runs them,
    enable it at boot where there is systemd."""
    svc = host.get_fact(DockerService)
    stamp = (f"mkdir -p {q(posixpath.dirname(APPLIED_STAMP))} && "
             f"printf '%s\\n' {q(svc['fingerprint'] or '')} > {APPLIED_STAMP}.tmp && "
             f"mv -f {APPLIED_STAMP}.tmp {APPLIED_STAMP}")
    systemd = svc["manager"] == "systemd"
    action, why = dockerd_action(svc)
    commands = {"start": "systemctl enable --now docker" if systemd else f"{INITLESS_HELPER} start",
                "restart": "systemctl restart docker" if systemd else f"{INITLESS_HELPER} restart",
                "adopt": None}
    changed = False
    if action:
        if _executing():
            runctx.echo(f"[{host.name}] dockerd: {action}: {why}")
        yield StringCommand(f"{commands[action]} && {stamp}" if commands[action] else stamp)
        changed = True
    if systemd and not svc["enabled"] and action != "start":
        yield StringCommand("systemctl enable docker")
        changed = True
    if not changed:
        host.noop(why)


def _preflight_uuids() -> list[str] | None:
    """The GPU UUIDs preflight found on this host, when preflight ran in this run."""
    entry = runctx.run_for(host.state).preflight.get(host.name) or {}
    gpus = ((entry.get("facts") or {}).get("gpu") or {}).get("gpus")
    uuids = [g.get("uuid") for g in gpus or [] if isinstance(g, dict) and g.get("uuid")]
    return uuids or None


@operation()
def verify_docker(flavour: str, stage: str = "docker"):
    """A check, not a change: Docker answers, compose is there (no pyinfra equivalent).

    The result goes to the run's summary."""
    if not _executing():
        return
    svc = host.get_fact(DockerService)
    if not svc["running"] or not svc["server_version"]:
        where = "`journalctl -u docker`" if svc["manager"] == "systemd" else "/var/log/dockerd.log"
        yield from _fail(stage, f"dockerd is not answering after its start; see {where}")
        return
    if svc["compose_v2"]:
        compose = f"docker compose v{svc['compose_v2']}"
    elif svc["compose_v1"]:
        compose = f"docker-compose {svc['compose_v1']}"
    else:
        yield from _fail(stage, "neither `docker compose` nor `docker-compose` answers; the service "
                                "stage needs one (check the compose package of this flavour)")
        return
    boot = ("enabled at boot" if svc["enabled"] else "NOT enabled at boot") if svc["manager"] == "systemd" \
        else f"no init system: run by {INITLESS_HELPER}, not started at boot"
    _record(stage, "PASS",
            f"{flavour}: engine {svc['server_version']} running ({boot}); {compose}")
    host.noop("Docker verified")


@operation()
def gpu_container_check(image: str | None, always: bool):
    """A throwaway GPU container, only when due, its image pulled with progress (no pyinfra equivalent).

    Pull IMAGE when it is not on the host, then run a throwaway
    `docker run --rm --gpus all IMAGE nvidia-smi -L`; verify_toolkit compares what it saw
    with preflight's GPUs. Runs only when dockerd or the toolkit changed since the last pass
    (or gpu_check_always): a second deploy with nothing changed starts no container."""
    state = host.get_fact(GpuCheckState, image=image) if image else None
    checked = state and state["checked"]
    due, why = gpu_check_due(image=image, has_driver=bool(state and state["driver"]),
                             checked=checked and checked["key"],
                             key=gpu_check_key(state and state["fingerprint"], image or ""), always=always)
    if not due:
        host.noop(why)
        return
    pull = not state["image_present"]
    if _executing():
        runctx.echo(f"[{host.name}] GPU container check: "
                    + (f"pulling {image} (not on the host), then " if pull else "")
                    + f"`docker run --rm --gpus all {image} nvidia-smi -L`")
    yield StringCommand(gpu_check_command(image, gpu_check_key(state["fingerprint"], image), pull))


def _gpu_verdict(image: str | None) -> tuple[str, str, bool]:
    """(status, detail, stamp it?) of the GPU container check: judged from its output of
    this run, else from the stamp of the last check that ran to the end."""
    state = host.get_fact(GpuCheckState, image=image) if image else None
    key = gpu_check_key(state and state["fingerprint"], image or "")
    result = state and state["result"]
    if not (result and result["key"] == key):  # it did not run for this dockerd and image
        checked = state and state["checked"]
        if image is None or not state["driver"]:
            return "WARN", gpu_check_due(image=image, has_driver=False, checked=None, key=key,
                                         always=False)[1], False
        if checked and checked["key"] == key:
            return (checked["status"] if checked["status"] in ("PASS", "WARN") else "WARN",
                    f"{checked['detail']} (checked before with this dockerd, toolkit and image)", False)
        return "WARN", "GPU container check did not run", False
    if result["skip"]:
        return "WARN", f"GPU container check skipped: {result['skip']}", True
    if result["rc"] != 0:
        return "FAIL", (f"`docker run --rm --gpus all {image} nvidia-smi -L` failed "
                        f"(rc {result['rc']}): {result['output'][-400:]}"), False
    expected, source = _preflight_uuids(), "preflight"
    if expected is None and result["host_uuids"]:
        expected, source = result["host_uuids"], "the host's nvidia-smi"
    status, detail = compare_gpus(result["uuids"], expected)
    return status, detail.replace("preflight", source), status == "PASS"


@operation()
def verify_toolkit(gpu_check_image: str | None, cdi_setting: str, stage: str = "nvidia_toolkit"):
    """A check, not a change: the toolkit and the GPUs seen (no pyinfra equivalent).

    The nvidia runtime is configured, and the GPU container check (when it ran) saw the
    GPUs preflight found; its outcome is stamped so the next deploy need not run it again."""
    if not _executing():
        return
    _, config, error = _daemon_config()
    if error or not nvidia_runtime_configured(config):
        yield from _fail(stage, error or f"{DAEMON_JSON} has no nvidia runtime after configuration")
        return
    version = host.get_fact(InstalledPackages, names=("nvidia-container-toolkit",)).get("nvidia-container-toolkit")
    has_driver = bool(host.get_fact(NvidiaDriver))
    _, cdi_note = cdi_decision(cdi_setting, version, has_driver)
    parts = [f"toolkit {version}", "nvidia runtime in daemon.json", cdi_note or f"CDI spec {CDI_SPEC}"]
    status, detail, stamp = _gpu_verdict(gpu_check_image)
    message = "; ".join(filter(None, parts + [detail]))
    if status == "FAIL":
        yield from _fail(stage, message)
        return
    _record(stage, status, message)
    if stamp:  # the check ran to the end: not again until dockerd, the toolkit or the image change
        state = host.get_fact(GpuCheckState, image=gpu_check_image)
        lines = "\n".join([f"key={gpu_check_key(state['fingerprint'], gpu_check_image)}",
                           f"status={status}", f"detail={detail}"])
        yield StringCommand(f"printf '%s\\n' {q(lines)} > {GPU_CHECK_STAMP}.tmp && "
                            f"mv -f {GPU_CHECK_STAMP}.tmp {GPU_CHECK_STAMP} && rm -f {GPU_CHECK_RESULT}")
    else:
        host.noop("toolkit verified")
