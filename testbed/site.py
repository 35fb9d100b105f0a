"""A standing simulated site: `python -m testbed site up|status|down`.

    python -m testbed site up      hosts with NVML profiles, every double running, a ready
                                   inventory; stays up until `site down`
    python -m testbed site down    stops the doubles and tears the hosts down

The README's "Use" section can be followed on it command by command, with the site's
inventory in place of inventory/gpu.py. The doubles (the Hub, Docker's and NVIDIA's apt
repositories) are threads of one process, so `up` starts a detached keeper process that
holds them (testbed/demo.py's Site) until `down` sends it SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SITE_WORKDIR = Path("/var/tmp/glmfleet-site-cli")
# Two hosts that can serve the model and one that cannot (2x H100): preflight drops it.
SITE_HOSTS = {"gpu-01": "rtx6000x4", "gpu-02": "rtx6000x4", "gpu-h100": "h100x2"}
READY, PIDFILE, LOG = "site.json", "keeper.pid", "keeper.log"
BANNER = ("SIMULATED SITE: the hosts are Linux namespaces on this machine; their GPUs, the "
          "Hugging Face Hub, the apt repositories and the serving image are test doubles.")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def keep(workdir: Path, hosts: dict[str, str]) -> None:
    """The keeper (runs detached): start the site, record it, hold it until SIGTERM."""
    from testbed.demo import Site
    from testbed.doubles.hub import DEFAULT_REPO_ID, DEFAULT_REVISION
    from testbed.fleet import Fleet

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    fleet = Fleet(workdir / "fleet", cleanup_at_exit=False)
    site = Site(hosts, fleet=fleet, keep=True, work=workdir / "site")
    try:
        site.__enter__()
        info = {"inventory": str(site.inventory), "repo": DEFAULT_REPO_ID, "revision": DEFAULT_REVISION,
                "hub": site.hubs[0].url, "fleet": str(fleet.workdir),
                "hosts": {n: {"profile": p, "address": fleet[n].address} for n, p in hosts.items()},
                "ssh": " ".join(fleet[next(iter(hosts))].ssh_argv())}
        tmp = workdir / (READY + ".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(workdir / READY)
        while not stop:
            time.sleep(0.5)
    finally:
        site.close()
        fleet.teardown()


def up(workdir: Path = SITE_WORKDIR, hosts: dict[str, str] | None = None, timeout: float = 900) -> dict:
    """Start the keeper and wait until the site is ready; returns what site.json records."""
    pidfile = workdir / PIDFILE
    if pidfile.exists() and _alive(int(pidfile.read_text())):
        raise RuntimeError(f"a site is already up in {workdir}: `python -m testbed site down` first")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / READY).unlink(missing_ok=True)
    with open(workdir / LOG, "w") as log:
        p = subprocess.Popen([sys.executable, "-m", "testbed", "site", "keep", "--workdir", str(workdir),
                              "--hosts", json.dumps(hosts or SITE_HOSTS)],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    pidfile.write_text(str(p.pid))
    deadline = time.monotonic() + timeout
    while not (workdir / READY).exists():
        if p.poll() is not None or time.monotonic() > deadline:
            if p.poll() is None:
                p.terminate()
                p.wait(60)
            raise RuntimeError(f"the site did not come up; its log:\n{(workdir / LOG).read_text()[-4000:]}")
        time.sleep(0.5)
    return json.loads((workdir / READY).read_text())


def down(workdir: Path = SITE_WORKDIR, timeout: float = 300) -> bool:
    """Stop the keeper (it stops the doubles and tears the hosts down). False: no site."""
    from testbed.fleet import Fleet
    from testbed.rootfs import remove_tree

    pidfile = workdir / PIDFILE
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
    if (workdir / "fleet" / "state.json").exists():  # the keeper died before tearing down
        Fleet.load(workdir / "fleet").teardown()
    remove_tree(workdir)
    return True


def describe(info: dict, workdir: Path) -> str:
    hosts = "\n".join(f"  {n:<10} {h['address']:<15} {h['profile']}" for n, h in info["hosts"].items())
    return f"""{BANNER}
hosts:
{hosts}
inventory: {info['inventory']}   (use it in place of inventory/gpu.py in the README's "Use")
Hub:       {info['hub']}   (simulated; {info['repo']} head commit {info['revision']})
ssh:       {info['ssh']}
tear down: python -m testbed site down{'' if workdir == SITE_WORKDIR else f' --workdir {workdir}'}"""


def main(a) -> int:
    workdir = Path(a.workdir)
    if a.action == "keep":
        keep(workdir, json.loads(a.hosts))
        return 0
    if a.action == "up":
        try:
            info = up(workdir)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        print(describe(info, workdir))
        return 0
    if a.action == "status":
        ready = workdir / READY
        pidfile = workdir / PIDFILE
        if not (ready.exists() and pidfile.exists() and _alive(int(pidfile.read_text()))):
            print(f"no site up in {workdir}")
            return 1
        print(describe(json.loads(ready.read_text()), workdir))
        return 0
    if not down(workdir):
        print(f"no site in {workdir}")
        return 1
    print(f"simulated site in {workdir} torn down")
    return 0
