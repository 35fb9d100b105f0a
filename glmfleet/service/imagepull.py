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
its pull is done, so the mirror holds every layer (glmfleet/service/ops.py, _Follow); behind
the inventory's own image cache, every host starts once the cache's copy is done.
"""

from __future__ import annotations

import shlex

from glmfleet import detached

q = shlex.quote
LOG = "/var/log/glmfleet/image-pull.log"
STATE = "/var/lib/glmfleet/image-pull"
TIME_FORMAT = detached.TIME_FORMAT


def state_command(image: str) -> str:
    """Print image_id= and the background job's state (one command, read-only)."""
    return (f"echo \"image_id=$(docker image inspect -f '{{{{.Id}}}}' {q(image)} 2>/dev/null)\"; "
            + detached.state_command(STATE))


def parse_state(lines) -> dict:
    job = detached.parse_state(lines)
    image_id = next((str(ln).strip().partition("=")[2].strip() for ln in lines or []
                     if str(ln).strip().startswith("image_id=")), "")
    return {"image_id": image_id or None, "bg_image": job["image"], "bg_running": job["running"],
            "bg_rc": job["rc"]}


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
    """`docker pull IMAGE` detached (glmfleet/detached.py): its lines timestamped into LOG."""
    return detached.start_command(STATE, LOG, image, "pull", f"docker pull {image}",
                                  f"docker pull {q(image)}")


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
    return detached.log_tail_command(LOG, lines)
