"""pyinfra facts and operations of the gateway stage (decisions: glmfleet.gateway.plan).

On each host of the `gateway` inventory group, in this order:
  packages   HAProxy and socat from the distribution (apt), only when missing;
  config     haproxy.cfg rendered from the inventory, checked with `haproxy -c` before it
             replaces the old one, then HAProxy reloaded (started when not running); an
             unchanged config on a running HAProxy is no change at all;
  admin      after the service stage: a GPU host that failed a stage in this run is held out
             of the backend (maint), one that passed is ready; others are left as they are.

For the rollout (glmfleet/service/ops.py, handed in by tasks/service.py): ``Drainer`` drains
one server on every gateway through the runtime API over SSH, waits for its sessions to
end, and later sets it ready again (or holds it out after a failure).
"""

from __future__ import annotations

import hashlib
import io
import shlex
import time

import gevent
from pyinfra import host, logger
from pyinfra.api import FactBase, FileUploadCommand, StringCommand, operation
from pyinfra.operations import apt

from glmfleet import remote, roles, runctx
from glmfleet.gateway import plan as gw
from glmfleet.settings import Settings

q = shlex.quote
STAGE = "gateway"
DRAIN_POLL_S = 1.0


class GatewayFacts(FactBase):
    """init system, HAProxy and socat installed, the config's sha256, HAProxy answering."""

    def command(self) -> str:
        return f"""
if [ -d /run/systemd/system ]; then echo init=systemd; else echo init=none; fi
echo "haproxy=$(dpkg-query -W -f='${{db:Status-Abbrev}}' haproxy 2>/dev/null)"
echo "socat=$(command -v socat)"
echo "config_sha=$(sha256sum {gw.CONFIG_PATH} 2>/dev/null | cut -c1-64)"
if command -v socat >/dev/null && {RUNNING}; then echo running=1; else echo running=0; fi
"""

    def process(self, output):
        kv = dict(line.partition("=")[::2] for line in output)
        return {"init": kv.get("init", "none"), "haproxy": kv.get("haproxy", "").startswith("ii"),
                "socat": bool(kv.get("socat")), "config_sha": kv.get("config_sha") or None,
                "running": kv.get("running") == "1"}


PIDFILE = "/run/haproxy.pid"
RUNNING = f"[ -S {gw.ADMIN_SOCKET} ] && {gw.runtime_command('show info')} >/dev/null 2>&1"


def _service(init: str, action: str) -> str:
    """start / reload HAProxy. systemd: the package's unit. Init-less hosts: HAProxy as a
    daemon started by the deploy (supervised on deploy only, like monitor.sh there); a
    reload starts the new process with -sf so the old one finishes its connections."""
    if init == "systemd":
        return {"start": "systemctl enable haproxy && systemctl restart haproxy",
                "reload": "systemctl reload haproxy"}[action]
    run = f"mkdir -p /run/haproxy && haproxy -D -f {gw.CONFIG_PATH} -p {PIDFILE}"
    return {"start": run, "reload": f"{run} -sf $(cat {PIDFILE})"}[action]


def _reload_or_start(init: str) -> str:
    """Decided on the host when it runs (the package may just have started HAProxy):
    running -> dump the admin states, reload; else start."""
    return f"if {RUNNING}; then {gw.DUMP_STATE} && {_service(init, 'reload')}; else {_service(init, 'start')}; fi"


# --- settings of every host, in or out of this run's --limit ---------------------------------

def gpu_hosts(state) -> list:
    return [h for h in state.inventory if roles.is_gpu_host(h.groups)]


def gateway_hosts(state) -> list:
    return [h for h in state.inventory if roles.is_gateway(h.groups)]


def servers(state) -> list[gw.Server]:
    """One server per GPU host of the inventory (with or without --limit: the backend is the
    fleet's, so a limited run never drops the hosts it leaves out)."""
    out = []
    for h in gpu_hosts(state):
        s = runctx.host_settings(state, h)
        if s is not None:
            out.append(gw.Server(gw.server_name(h.name), runctx.site_address(h, s), s.port, s.max_num_seqs))
    return out


def render(state, s: Settings) -> str:
    return gw.render_config(servers(state), port=s.gateway_port, stats_port=s.gateway_stats_port,
                            timeout_s=s.gateway_timeout_s, tls_cert=s.gateway_tls_cert)


# --- operations ------------------------------------------------------------------------------

def _record(status: str, detail: str) -> None:
    runctx.record(host.name, STAGE, status, detail)
    runctx.echo(f"[{host.name}] gateway: {status}: {detail}")


def packages(**op_kwargs) -> None:
    """HAProxy and socat from the distribution (pyinfra's apt.packages); `apt-get update` only
    when one is missing, so a host with both makes no apt call."""
    facts = host.get_fact(GatewayFacts)
    apt.packages(packages=list(gw.PACKAGES), update=not (facts["haproxy"] and facts["socat"]),
                 no_recommends=True, **op_kwargs)


@operation()
def config(text: str, endpoint: str):
    """haproxy.cfg validated before it replaces the working one (files.put has no validation step).

    Placed and HAProxy reloaded (admin states kept) only when it changed."""
    facts = host.get_fact(GatewayFacts)
    want = hashlib.sha256(text.encode()).hexdigest()
    if facts["config_sha"] == want:
        if facts["running"]:
            host.noop(f"HAProxy config unchanged and running ({endpoint})")
            if host.state.is_executing:
                _record("PASS", f"unchanged, serving the fleet at {endpoint}")
            return
        yield _service(facts["init"], "start")
    else:
        new = f"{gw.CONFIG_PATH}.glmfleet-new"
        yield FileUploadCommand(io.BytesIO(text.encode()), new)
        # `haproxy -c` first: a config HAProxy refuses never replaces the working one.
        yield StringCommand(
            f"haproxy -c -q -f {q(new)} || {{ rm -f {q(new)}; echo {q('glmfleet: the rendered HAProxy config does not validate (haproxy -c above); the running config was kept')} >&2; exit 1; }}")
        # Admin states (drain/maint) survive the reload through the server-state file.
        yield StringCommand(f"chmod 644 {q(new)} && mv -f {q(new)} {gw.CONFIG_PATH} && "
                            + _reload_or_start(facts["init"]))
    if host.state.is_executing:
        _record("PASS", f"config placed, HAProxy serving the fleet at {endpoint}")


@operation()
def admin_states():
    """HAProxy's runtime API set from this run's results (no pyinfra equivalent).

    After the GPU stages: hosts that failed in this run held out (maint), hosts that
    passed ready again; hosts outside this run are left as they are."""
    if not host.state.is_executing:
        return  # the verdicts exist only once the GPU stages have run
    r = remote.sh(host, gw.SHOW_STAT)  # the socket is root's: run as the run's operations run
    if not r.ok:
        _record("FAIL", "HAProxy's runtime API does not answer: " + " ".join(r.lines)[-200:])
        yield StringCommand("exit 1")
        return
    current = gw.parse_show_stat("\n".join(r.out))
    changes = gw.admin_changes(_verdicts(host.state), current)
    if not changes:
        host.noop("every server's admin state matches this run's results")
        return
    for server, admin in changes:
        logger.info(f"{host.print_prefix}gateway: {server} -> {admin}")
        yield StringCommand(gw.set_state_command(server, admin))


def _verdicts(state) -> dict[str, str]:
    """Per GPU host of this run: FAIL if any stage failed, PASS if the service stage passed."""
    stages = runctx.run_for(state).stages
    out = {}
    for h in gpu_hosts(state):
        results = stages.get(h.name, {})
        if any(status == "FAIL" for status, _ in results.values()) or h in state.failed_hosts:
            out[h.name] = "FAIL"
        elif results.get("service", ("",))[0] == "PASS":
            out[h.name] = "PASS"
    return out


# --- the rollout's drain (called from the GPU host's greenlet) -------------------------------

class Drainer:
    """Drain one server on every gateway of the inventory before its host restarts."""

    def __init__(self, state):
        self.state = state
        self.gateways = gateway_hosts(state)

    def __bool__(self) -> bool:
        return bool(self.gateways)

    def _run(self, gateway, command: str) -> tuple[bool, str]:
        if not gateway.connected:
            try:
                gateway.connect(raise_exceptions=True)
            except Exception as e:  # noqa: BLE001 (any connector error: reported, not raised)
                return False, f"cannot connect: {e}"
        r = remote.sh(gateway, command, timeout=30, show=False)
        return r.ok, "\n".join(r.lines)

    def _set(self, host_name: str, admin: str) -> list[str]:
        problems = []
        for g in self.gateways:
            ok, out = self._run(g, gw.set_state_command(gw.server_name(host_name), admin))
            if not ok or out.strip():  # the runtime API answers nothing on success
                problems.append(f"{g.name}: {out.strip()[-200:] or 'failed'}")
        return problems

    def sessions(self, host_name: str) -> int | None:
        """The server's current sessions summed over the gateways; None if none answered."""
        total, answered = 0, False
        for g in self.gateways:
            ok, out = self._run(g, gw.SHOW_STAT)
            row = gw.parse_show_stat(out).get(gw.server_name(host_name)) if ok else None
            if row is not None:
                total, answered = total + row["scur"] + row["qcur"], True
        return total if answered else None

    def drain(self, host_name: str, timeout_s: int, say) -> bool:
        """Set drain, wait for the sessions to end (at most timeout_s); False when no
        gateway could drain it (e.g. HAProxy not installed yet): the restart goes on as
        without a gateway."""
        problems = self._set(host_name, "drain")
        if problems:
            say("gateway: could not drain (" + "; ".join(problems) + "): restarting without a drain")
            return False
        deadline = time.monotonic() + timeout_s
        say(f"gateway: draining {host_name} (new requests go to the other hosts) ...")
        while True:
            n = self.sessions(host_name)
            if not n:
                return True
            if time.monotonic() >= deadline:
                say(f"gateway: {n} session(s) still open after {timeout_s}s "
                    "(gateway_drain_timeout_s): restarting anyway")
                return True
            gevent.sleep(DRAIN_POLL_S)

    def ready(self, host_name: str, say, up_timeout_s: float = 60) -> None:
        """Set ready, then wait (bounded) until every gateway's checks see it UP, so the next
        batch is drained only once this host takes requests again."""
        problems = self._set(host_name, "ready")
        if problems:
            say("gateway: could not set it ready again: " + "; ".join(problems))
            return
        deadline = time.monotonic() + up_timeout_s
        while time.monotonic() < deadline:
            states = [self._state(g, host_name) for g in self.gateways]
            if all(st == "UP" for st in states):
                say("gateway: back in the backend (UP)")
                return
            gevent.sleep(DRAIN_POLL_S)
        say(f"gateway: set ready, but its health checks did not pass within {up_timeout_s:.0f}s")

    def _state(self, gateway, host_name: str) -> str | None:
        ok, out = self._run(gateway, gw.SHOW_STAT)
        row = gw.parse_show_stat(out).get(gw.server_name(host_name)) if ok else None
        return gw.gateway_state(row["status"]) if row else None

    def hold_out(self, host_name: str, say) -> None:
        problems = self._set(host_name, "maint")
        say("gateway: held out of the backend (maint) until a run passes it again"
            + (" (failed: " + "; ".join(problems) + ")" if problems else ""))


# --- Prometheus file-based service discovery --------------------------------------------------

def write_prometheus_targets(state) -> str | None:
    """The fleet's targets file on the controller (path: prometheus_targets), once per run."""
    done = runctx.per_run(state, "prometheus_targets", lambda _: {"written": False})
    if done["written"]:
        return None
    done["written"] = True
    vllm, gateways, path = {}, {}, ""
    for h in state.inventory:
        s = runctx.host_settings(state, h)
        if s is None:
            continue
        path = path or s.prometheus_targets
        if roles.is_gateway(h.groups):
            gateways[h.name] = f"{h.data.get('ssh_hostname') or h.name}:{s.gateway_stats_port}"
        elif roles.is_gpu_host(h.groups):
            vllm[h.name] = f"{runctx.site_address(h, s)}:{s.port}"
    if not path:
        return None
    runctx.write_json_atomic(path, gw.prometheus_targets(vllm, gateways))
    return path


# --- status (tasks/status.py) ---------------------------------------------------------------

def gateway_view(state) -> dict[str, dict] | None:
    """{GPU host name: {state, scur, stot}} as the gateways see it (sessions summed, states
    joined when gateways disagree); None when the inventory has no gateway."""
    drainer = Drainer(state)
    if not drainer:
        return None
    names = {gw.server_name(h.name): h.name for h in gpu_hosts(state)}
    view: dict[str, dict] = {}
    for g in drainer.gateways:
        ok, out = drainer._run(g, gw.SHOW_STAT)
        for server, row in (gw.parse_show_stat(out) if ok else {}).items():
            if server not in names:
                continue
            v = view.setdefault(names[server], {"states": [], "scur": 0, "stot": 0})
            v["states"].append(gw.gateway_state(row["status"]))
            v["scur"] += row["scur"]
            v["stot"] += row["stot"]
    for v in view.values():
        v["state"] = "/".join(sorted(set(v.pop("states"))))
    return view
