"""The image pull that starts as soon as Docker is up (pure: command text and parsing).

The serving image is tens of GB and needs nothing but Docker, so it is pulled while the
weights download: tasks/image_pull.py starts a detached `docker pull` right after the
toolkit stage, and the service stage later waits for it (or pulls in the foreground when
none ran or it failed). On the host:

    /var/log/glmfleet/image-pull.log    every line of `docker pull`, each prefixed with the
                                         host's local time ("%Y-%m-%d %H:%M:%S", as the
                                         weights log), from "pull started" to "pull finished"
    /var/lib/glmfleet/image-pull/       image (the reference being pulled), pid, rc (its exit
                                         status once it finished)

A background pull is started once per image: one that finished (well or not) is not started
again; the service stage's own pull then says what went wrong. Behind a registry_mirror, only
the first host of those pulling the image through it starts at once; the others start when
its pull is done, so the mirror holds every layer (glmfleet/service/ops.py, _Follow).
"""

from __future__ import annotations

import shlex

q = shlex.quote
LOG = "/var/log/glmfleet/image-pull.log"
STATE = "/var/lib/glmfleet/image-pull"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def state_command(image: str) -> str:
    """Print image_id=, bg_image=, bg_running=, bg_rc= (one command, read-only)."""
    return (f"img={q(image)}; d={STATE}; "
            "echo \"image_id=$(docker image inspect -f '{{.Id}}' \"$img\" 2>/dev/null)\"; "
            "echo \"bg_image=$(cat $d/image 2>/dev/null)\"; "
            "p=$(cat $d/pid 2>/dev/null); "
            "if [ -n \"$p\" ] && [ ! -f $d/rc ] && kill -0 \"$p\" 2>/dev/null; then echo bg_running=1; "
            "else echo bg_running=0; fi; "
            "echo \"bg_rc=$(cat $d/rc 2>/dev/null)\"")


def parse_state(lines) -> dict:
    out = {"image_id": None, "bg_image": None, "bg_running": False, "bg_rc": None}
    for line in lines or []:
        key, sep, value = str(line).partition("=")
        if not sep or key not in out:
            continue
        value = value.strip()
        if key == "bg_running":
            out[key] = value == "1"
        elif key == "bg_rc":
            out[key] = int(value) if value.lstrip("-").isdigit() else None
        else:
            out[key] = value or None
    return out


def background_due(state: dict, image: str) -> tuple[bool, str]:
    """(start a background pull now?, why not)."""
    if state["image_id"]:
        return False, f"image {image} is present locally: no pull"
    if state["bg_image"] == image:
        if state["bg_running"]:
            return False, f"a background pull of {image} is running (log: {LOG})"
        return False, (f"a background pull of {image} already ran (exit {state['bg_rc']}); the "
                       "service stage pulls it in the foreground")
    return True, ""


def start_command(image: str) -> str:
    """Start `docker pull IMAGE` detached (its own session, no descriptor of the SSH session),
    every line of its output timestamped into LOG, its exit status into STATE/rc."""
    body = (f"img={q(image)}; d={STATE}; echo $$ > $d/pid; "
            f"ts() {{ date '+{TIME_FORMAT}'; }}; "
            f"echo \"$(ts) pull started: docker pull $img\" >> {LOG}; "
            "( docker pull \"$img\" 2>&1; echo \"glmfleet-pull-rc=$?\" ) | "
            "while IFS= read -r l; do case $l in glmfleet-pull-rc=*) echo \"${l#*=}\" > $d/rc.tmp ;; "
            f"*) echo \"$(ts) $l\" >> {LOG} ;; esac; done; "
            f"echo \"$(ts) pull finished: exit $(cat $d/rc.tmp 2>/dev/null)\" >> {LOG}; "
            "mv -f $d/rc.tmp $d/rc")
    return (f"set -e; mkdir -p {STATE} {q(LOG.rsplit('/', 1)[0])}; rm -f {STATE}/rc {STATE}/pid; "
            f"printf '%s\\n' {q(image)} > {STATE}/image; "
            f"setsid sh -c {q(body)} </dev/null >/dev/null 2>&1 &")


def pull_lead(me: str, hosts: list[tuple[str, str | None, str]]) -> str | None:
    """The host whose pull ``me`` waits for, or None (``me`` pulls at once). ``hosts``: the
    run's active hosts in inventory order as (name, registry_mirror, image). Behind a mirror
    the first host pulling an image through it leads; without one, nobody waits."""
    mine = next(((m, i) for n, m, i in hosts if n == me), None)
    if mine is None or not mine[0]:
        return None
    group = [n for n, m, i in hosts if (m, i) == mine]
    return group[0] if group[0] != me else None


def log_tail_command(lines: int = 1) -> str:
    return f"tail -n {int(lines)} {LOG} 2>/dev/null || true"
