"""The kit's monitor.sh (log forwarding, logs/peak.json) as a supervised service (pure: no
pyinfra import; the operation is glmfleet/ops/service.py's `monitor`).

- systemd hosts (/run/systemd/system exists): a unit `<service_name>-monitor.service`
  (Restart=always, WorkingDirectory=service_dir, ExecStart=service_dir/monitor.sh), enabled
  --now: it survives container restarts, its own crashes and host reboots. The unit is
  rewritten (daemon-reload + restart) only when its content changed. A monitor that
  launch.sh started by hand still holds logs/monitor.lock; the unit's instance (with
  GLMFLEET_MONITOR_UNIT=1, monitor.sh waits instead of exiting) takes over when it ends.
- hosts without systemd (containers, the test fleet): every run of the service stage checks
  that monitor.sh is alive (logs/monitor.pid names a live process) and starts it detached
  (setsid) when not. This is supervision on deploy only: between runs nothing restarts it,
  and it does not come back after a reboot until the next run (or ./launch.sh); surviving
  reboots there needs an init system (runit, s6, supervisord, an @reboot cron line).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
from typing import Any, Iterable

UNIT_DIR = "/etc/systemd/system"


def unit_name(service_name: str) -> str:
    return f"{service_name}-monitor.service"


def unit_path(service_name: str) -> str:
    return f"{UNIT_DIR}/{unit_name(service_name)}"


def render_unit(service_dir: str, service_name: str) -> str:
    return f"""# Written by glmfleet (service stage): the box kit's log forwarder and peak tracker.
[Unit]
Description=glmfleet {service_name}: monitor.sh (logs/serve.log, logs/peak.json)
After=docker.service network-online.target
Wants=docker.service

[Service]
Type=simple
WorkingDirectory={service_dir}
Environment=GLMFLEET_MONITOR_UNIT=1
ExecStart={service_dir}/monitor.sh
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def unit_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def facts_command(service_dir: str, service_name: str) -> str:
    """Read-only: systemd or not, the unit's sha256 and state, the monitor's liveness."""
    q = shlex.quote
    unit = unit_name(service_name)
    return f"""
sd={q(service_dir)}; unit={q(unit)}
[ -x "$sd/monitor.sh" ] && echo kit=1
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  echo systemd=1
  [ -f {q(unit_path(service_name))} ] && echo "unit_sha=$(sha256sum < {q(unit_path(service_name))} | cut -c1-64)"
  systemctl is-enabled --quiet "$unit" 2>/dev/null && echo enabled=1
  systemctl is-active --quiet "$unit" 2>/dev/null && echo active=1
fi
p=$(cat "$sd/logs/monitor.pid" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo alive=1
true
"""


def parse_facts(lines: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"kit": False, "systemd": False, "unit_sha": None, "enabled": False,
                           "active": False, "alive": False}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if not sep or key not in out:
            continue
        out[key] = value if key == "unit_sha" else value == "1"
    return out


@dataclasses.dataclass(frozen=True)
class MonitorPlan:
    action: str  # "none" | "install" (write unit, reload, enable, restart) | "enable" | "start"
    reason: str

    @property
    def changes(self) -> bool:
        return self.action != "none"


def plan(facts: dict, unit_text: str) -> MonitorPlan:
    if not facts["kit"]:
        return MonitorPlan("none", "no kit on this host (monitor.sh absent): nothing to supervise")
    if facts["systemd"]:
        if facts["unit_sha"] != unit_sha(unit_text):
            why = "unit missing" if facts["unit_sha"] is None else "unit content changed"
            return MonitorPlan("install", f"{why}: write it, reload systemd, enable and (re)start")
        if not (facts["enabled"] and facts["active"]):
            return MonitorPlan("enable", "unit not enabled or not running: enable --now")
        return MonitorPlan("none", "systemd unit in place, enabled and running")
    if not facts["alive"]:
        return MonitorPlan("start", "monitor.sh not running (no systemd here): start it detached")
    return MonitorPlan("none", "monitor.sh running (no systemd here: supervised on deploy only)")


def commands(p: MonitorPlan, service_dir: str, service_name: str, unit_text: str) -> list[str]:
    """Shell commands carrying out ``p`` (the unit holds no secret)."""
    q = shlex.quote
    unit, path = unit_name(service_name), unit_path(service_name)
    if p.action == "install":
        return [f"printf %s {q(unit_text)} > {q(path + '.tmp')} && chmod 644 {q(path + '.tmp')} "
                f"&& mv -f {q(path + '.tmp')} {q(path)}",
                "systemctl daemon-reload",
                f"systemctl enable {q(unit)} && systemctl restart {q(unit)}"]
    if p.action == "enable":
        return [f"systemctl enable --now {q(unit)}"]
    if p.action == "start":
        sd = q(service_dir)
        return [f"cd {sd} && mkdir -p logs && if command -v setsid >/dev/null; then "
                f"setsid -f ./monitor.sh >>logs/monitor.out 2>&1 </dev/null; else "
                f"nohup ./monitor.sh >>logs/monitor.out 2>&1 </dev/null & fi"]
    return []
