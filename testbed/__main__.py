"""CLI for the simulated test fleet.

    python -m testbed up -n 3 --inventory inv.py [--workdir DIR]
    python -m testbed status [--workdir DIR]
    python -m testbed down [--workdir DIR | --all]
    python -m testbed rootfs          # build (or show) the cached host images
    python -m testbed demo [--keep]   # the real deploy.py on 3 simulated hosts, then teardown
    python -m testbed site up|status|down   # a standing simulated site to follow the README on
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from testbed import rootfs
from testbed.fleet import DEFAULT_INIT, DEFAULT_SUITE, Fleet, FleetError

CLI_WORKDIR = "/var/tmp/glmfleet-fleet-cli"
BANNER = ("SIMULATED FLEET: these hosts are Linux namespaces on this machine "
          "(own network, filesystem, hostname, sshd), not real servers.")


def cmd_up(a) -> int:
    wd = Path(a.workdir)
    if (wd / "state.json").exists():
        print(f"a fleet is already up in {wd}; run `python -m testbed down --workdir {wd}` first",
              file=sys.stderr)
        return 1
    fleet = Fleet(wd, a.prefix, apt_proxy=not a.no_proxy, cleanup_at_exit=False)
    try:
        for i in range(1, a.n + 1):
            fleet.add_host(f"{a.name}{i}", shm_size=a.shm_size, suite=a.suite, init=a.init)
        fleet.start()
        fleet.write_inventory(a.inventory)
    except BaseException:
        fleet.teardown()
        raise
    print(BANNER)
    for h in fleet.hosts.values():
        print(f"  {h.name:<12} {h.address:<15} pid {h.pid:<8} root {h.root}")
    if fleet.proxy:
        print(f"apt proxy: {fleet.proxy.url('<host gateway>')} (pid {fleet.proxy.pid})")
    print(f"inventory: {Path(a.inventory).resolve()}   (pyinfra {a.inventory} exec -- hostname)")
    print(f"ssh:       {' '.join(next(iter(fleet.hosts.values())).ssh_argv(user=rootfs.LOGIN_USER))}"
          "   (passwordless sudo; the inventory sets _sudo)")
    print(f"tear down: python -m testbed down --workdir {wd}")
    return 0


def cmd_status(a) -> int:
    wd = Path(a.workdir)
    if not (wd / "state.json").exists():
        print(f"no fleet in {wd}")
        return 1
    fleet = Fleet.load(wd)
    print(BANNER)
    print(f"workdir {wd}, prefix {fleet.prefix}")
    for h in fleet.hosts.values():
        print(f"  {h.name:<12} {h.address:<15} {'running pid ' + str(h.pid) if h.running else 'stopped'}")
    if fleet.proxy:
        print(f"apt proxy: {'running pid ' + str(fleet.proxy.pid) if fleet.proxy.running else 'stopped'}"
              f" on {', '.join(fleet.proxy.addresses) or '-'} port {fleet.proxy.port}")
    return 0


def cmd_down(a) -> int:
    dirs = sorted(Path("/var/tmp").glob("glmfleet-fleet-*")) if a.all else [Path(a.workdir)]
    rc = 0
    for wd in dirs:
        if not (wd / "state.json").exists():
            print(f"no fleet in {wd}")
            continue
        try:
            Fleet.load(wd).teardown()
            print(f"simulated fleet in {wd} torn down")
        except FleetError as e:
            print(e, file=sys.stderr)
            rc = 1
    return rc


def cmd_rootfs(a) -> int:
    for suite, init in rootfs.PROFILES:
        print(f"testbed: test-host image {rootfs.SUITES[suite]} ({suite}), init {init} ready "
              f"(cached in {rootfs.ensure_rootfs(suite, init)})")
    return 0


def cmd_demo(a) -> int:
    from testbed.demo import run_demo

    return run_demo(keep=a.keep)


def cmd_site(a) -> int:
    from testbed import site

    return site.main(a)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed", description=BANNER)
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start N simulated hosts and write a pyinfra inventory")
    up.add_argument("-n", type=int, default=3, help="number of hosts (default 3)")
    up.add_argument("--inventory", required=True, help="path of the pyinfra inventory file to write")
    up.add_argument("--name", default="node", help="host name stem: node1, node2, ...")
    up.add_argument("--prefix", help="namespace name prefix (default: gft-<random id>)")
    up.add_argument("--shm-size", default="1g")
    up.add_argument("--suite", default=DEFAULT_SUITE, choices=sorted(rootfs.SUITES),
                    help=f"Debian release of the hosts (default {DEFAULT_SUITE})")
    up.add_argument("--init", default=DEFAULT_INIT, choices=rootfs.INITS,
                    help=f"PID 1 of the hosts: systemd, or none (sshd; default {DEFAULT_INIT})")
    up.add_argument("--no-proxy", action="store_true", help="no apt proxy (hosts cannot use apt)")
    for name, sp in (("status", "show the fleet"), ("down", "tear the fleet down")):
        s = sub.add_parser(name, help=sp)
        s.add_argument("--workdir", default=CLI_WORKDIR)
        if name == "down":
            s.add_argument("--all", action="store_true",
                           help="every fleet recorded under /var/tmp/glmfleet-fleet-* (all sessions!)")
    up.add_argument("--workdir", default=CLI_WORKDIR)
    sub.add_parser("rootfs", help="build or show the cached host images (every profile the tests use)")
    demo = sub.add_parser("demo", help="run the real deploy.py on 3 simulated hosts, then tear down")
    demo.add_argument("--keep", action="store_true", help="leave the fleet up afterwards")
    site = sub.add_parser("site", help="a standing simulated site (every double running) until `site down`")
    site.add_argument("action", choices=("up", "status", "down", "keep"),
                      help="keep: the site's own keeper process (started by up)")
    site.add_argument("--workdir", default="/var/tmp/glmfleet-site-cli")
    site.add_argument("--hosts", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    return {"up": cmd_up, "status": cmd_status, "down": cmd_down, "rootfs": cmd_rootfs,
            "demo": cmd_demo, "site": cmd_site}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
