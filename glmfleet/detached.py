"""A job left running on a host after the SSH command returns (pure: command text, parsing).

Used by the background image pull (glmfleet/service/imagepull.py) and the image cache's copy
(glmfleet/imagecache/plan.py). On the host, a state dir holds `image` (what the job is for),
`pid` and, once it ended, `rc` (its exit status); every output line goes to a log, prefixed
with the host's local time (TIME_FORMAT, as the weights log), between a "<what> started"
line and a "<what> finished: exit N" line.
"""

from __future__ import annotations

import shlex

q = shlex.quote
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def start_command(state_dir: str, log: str, image: str, what: str, describe: str, command: str,
                  setup: str = "", teardown: str = "") -> str:
    """Start ``command`` (bash text) detached: its own session, no descriptor of the SSH
    session; the log says "<what> started: <describe>". ``setup`` runs first and
    ``teardown`` after it, both inside the job (bash text ending in "; ")."""
    body = (f"d={state_dir}; echo $$ > $d/pid; ts() {{ date '+{TIME_FORMAT}'; }}; {setup}"
            f"echo \"$(ts) {what} started: \"{q(describe)} >> {log}; "
            f"( {command} 2>&1; echo \"glmfleet-rc=$?\" ) | "
            "while IFS= read -r l; do case $l in glmfleet-rc=*) echo \"${l#*=}\" > $d/rc.tmp ;; "
            f"*) echo \"$(ts) $l\" >> {log} ;; esac; done; {teardown}"
            f"echo \"$(ts) {what} finished: exit $(cat $d/rc.tmp 2>/dev/null)\" >> {log}; "
            "mv -f $d/rc.tmp $d/rc")
    return (f"set -e; mkdir -p {state_dir} {q(log.rsplit('/', 1)[0])}; chmod 755 {state_dir}; "
            f"rm -f {state_dir}/rc {state_dir}/pid; printf '%s\\n' {q(image)} > {state_dir}/image; "
            f"setsid bash -c {q(body)} </dev/null >/dev/null 2>&1 &")


def state_command(state_dir: str) -> str:
    """Print job_image=, job_running=, job_rc= (read-only)."""
    return (f"d={state_dir}; echo \"job_image=$(cat $d/image 2>/dev/null)\"; "
            "p=$(cat $d/pid 2>/dev/null); "
            "if [ -n \"$p\" ] && [ ! -f $d/rc ] && kill -0 \"$p\" 2>/dev/null; then echo job_running=1; "
            "else echo job_running=0; fi; "
            "echo \"job_rc=$(cat $d/rc 2>/dev/null)\"")


def parse_state(lines) -> dict:
    """{"image": str | None, "running": bool, "rc": int | None} (missing lines: no job)."""
    out = {"image": None, "running": False, "rc": None}
    for line in lines or []:
        key, sep, value = str(line).strip().partition("=")
        value = value.strip()
        if key == "job_image" and sep:
            out["image"] = value or None
        elif key == "job_running" and sep:
            out["running"] = value == "1"
        elif key == "job_rc" and sep:
            out["rc"] = int(value) if value.lstrip("-").isdigit() else None
    return out


def log_tail_command(log: str, lines: int = 1) -> str:
    return f"tail -n {int(lines)} {log} 2>/dev/null || true"
