"""The fleet's front door, decided (pure: no pyinfra): HAProxy's config and its runtime API.

One frontend on ``gateway_port`` (HTTPS when ``gateway_tls_cert`` names a PEM on the gateway
host), one backend with every GPU host of the inventory, least-connections balancing, active
checks on vLLM's ``/health``. Decisions, each with its reason:

* ``maxconn`` per server = that host's ``max_num_seqs``: vLLM runs at most that many sequences
  at once and queues the rest inside the engine, where no other host can take them. Capped
  here, the extra requests wait in HAProxy's queue instead and go to whichever host frees a
  slot first; a host being drained or failing never holds a private queue of requests.
* The API key passes through: vLLM on each host checks the ``Authorization`` header as it
  does without a gateway, so one key works both ways and the gateway holds no secret.
  ``/health`` (the check) needs no key.
* Streams: HAProxy forwards response data as it arrives (no buffering) and compresses
  nothing unless told to (no ``compression`` line here), so SSE reaches clients token by
  token. ``timeout server`` is an idle timer: ``gateway_timeout_s`` must cover the prefill
  before a stream's first byte, or a whole non-streamed generation.
* L7 retries only where the request surely did not run: a refused connection or an empty
  reply (a host that just died) is retried on another server, so clients do not see it.
* Admin states (drain / maint, set through the runtime API by the rollout) survive reloads:
  the state is dumped to ``server-state-file`` before each reload and loaded at start.
"""

from __future__ import annotations

import csv
import io
import re
import shlex
from dataclasses import dataclass

CONFIG_PATH = "/etc/haproxy/haproxy.cfg"
ADMIN_SOCKET = "/run/haproxy/admin.sock"
STATE_FILE = "/var/lib/haproxy/server-state"
BACKEND = "vllm"
FRONTEND = "fleet"
PACKAGES = ("haproxy", "socat")  # socat: talks to the runtime API socket from a shell
CHECK_INTERVAL = "2s"  # with fall 2: a dead host is out ~4 s after it stops answering


@dataclass(frozen=True)
class Server:
    name: str      # the inventory name, made HAProxy-safe
    address: str   # what the gateway connects to (site_address, else the SSH hostname)
    port: int
    maxconn: int


def server_name(host_name: str) -> str:
    """HAProxy allows letters, digits and - _ . : in server names."""
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", host_name)


def render_config(servers: list[Server], *, port: int, stats_port: int, timeout_s: int,
                  tls_cert: str | None) -> str:
    bind = f"bind :{port}" + (f" ssl crt {tls_cert}" if tls_cert else "")
    lines = [
        "# Written by glmfleet (the gateway stage) from the inventory: edits are overwritten.",
        "global",
        "    log /dev/log local0",
        "    chroot /var/lib/haproxy",
        f"    stats socket {ADMIN_SOCKET} mode 600 level admin",
        "    stats timeout 30s",
        "    user haproxy",
        "    group haproxy",
        "    daemon",
        f"    server-state-file {STATE_FILE}",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlognull",
        "    timeout connect 5s",
        f"    timeout client {timeout_s}s",
        f"    timeout server {timeout_s}s",
        f"    timeout queue {timeout_s}s",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 10s",
        "    timeout check 5s",
        "",
        f"frontend {FRONTEND}",
        f"    {bind}",
        "    option forwardfor",
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance leastconn",
        "    load-server-state-from-file global",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
        f"    default-server check inter {CHECK_INTERVAL} fall 2 rise 2",
    ]
    for s in sorted(servers, key=lambda s: s.name):
        lines.append(f"    server {s.name} {s.address}:{s.port} maxconn {s.maxconn}")
    if not servers:
        lines.append("    # no GPU host in the inventory yet: every request gets 503")
    lines += [
        "",
        "frontend stats",
        f"    bind :{stats_port}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 10s",
        "",
    ]
    return "\n".join(lines)


# --- the runtime API --------------------------------------------------------------------------

def runtime_command(*commands: str) -> str:
    """A shell command sending runtime API commands (';'-separated, one connection)."""
    return f"echo {shlex.quote('; '.join(commands))} | socat stdio {ADMIN_SOCKET}"


def set_state_command(server: str, admin_state: str) -> str:
    assert admin_state in ("ready", "drain", "maint")
    return runtime_command(f"set server {BACKEND}/{server} state {admin_state}")


SHOW_STAT = runtime_command("show stat")
# Keep admin states over a reload: dump them where `load-server-state-from-file` reads them.
DUMP_STATE = f"{runtime_command('show servers state')} > {STATE_FILE}.tmp && mv {STATE_FILE}.tmp {STATE_FILE}"


def parse_show_stat(text: str) -> dict[str, dict]:
    """`show stat` CSV -> {server: {status, scur, stot, qcur}} for our backend's servers.

    status is HAProxy's: UP, DOWN, DRAIN, MAINT (also "UP 1/2" while rising, "no check")."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        return {}
    rows = csv.DictReader(io.StringIO("\n".join([lines[0][2:]] + lines[1:])))
    out = {}
    for r in rows:
        if r.get("pxname") != BACKEND or r.get("svname") in ("BACKEND", "FRONTEND"):
            continue
        out[r["svname"]] = {"status": r.get("status", ""), "scur": _int(r.get("scur")),
                            "stot": _int(r.get("stot")), "qcur": _int(r.get("qcur"))}
    return out


def _int(v) -> int:
    try:
        return int(v or 0)
    except ValueError:
        return 0


def gateway_state(status: str) -> str:
    """HAProxy's status reduced to one word: UP, DOWN, DRAIN or MAINT ("UP 1/2": still in
    rotation while checks fail; "DOWN 1/2": out until the checks rise)."""
    word = status.split()[0] if status.strip() else "-"
    if word.startswith("MAINT"):
        return "MAINT"
    if word == "NOLB":
        return "UP"
    return word


def admin_changes(results: dict[str, str], current: dict[str, dict]) -> list[tuple[str, str]]:
    """(server, state) to set after a run: a host whose stages passed in this run is ready,
    one that failed is held out (maint) until a later run passes it; hosts that were not in
    this run are left as they are. Only servers whose state differs are listed."""
    out = []
    for host_name, verdict in sorted(results.items()):
        name = server_name(host_name)
        if name not in current:
            continue
        word = gateway_state(current[name]["status"])
        if verdict == "FAIL" and word != "MAINT":
            out.append((name, "maint"))
        elif verdict == "PASS" and word in ("MAINT", "DRAIN"):
            out.append((name, "ready"))
    return out


# --- Prometheus file-based service discovery --------------------------------------------------

def prometheus_targets(vllm: dict[str, str], gateways: dict[str, str]) -> list[dict]:
    """file_sd entries: each vLLM endpoint ("addr:port", job glmfleet-vllm) and each gateway's
    HAProxy exporter (job glmfleet-haproxy), labelled with the inventory host name."""
    out = [{"targets": [t], "labels": {"job": "glmfleet-vllm", "host": h}} for h, t in sorted(vllm.items())]
    out += [{"targets": [t], "labels": {"job": "glmfleet-haproxy", "host": h}}
            for h, t in sorted(gateways.items())]
    return out

