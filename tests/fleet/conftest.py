"""Fixtures for tests against the simulated fleet (testbed/): real sshd, apt, dpkg
and pyinfra, on hosts that are Linux namespaces of this machine.

    fleet         session-wide Fleet with its apt proxy (created on first use)
    make_host     factory: make_host(name=None, files=..., shm_size=..., hostfs_size=...,
                  suite="bookworm"|"trixie", init="systemd"|"none") adds and starts a fresh
                  host; removed again when the test ends
Hosts boot systemd by default and inventories log in as the hosts' sudo user (`_sudo`), as
real servers are reached; tests about root or the init-less profile ask for them.
    pyinfra_cli   path of the pyinfra command in this venv

Every test under tests/fleet/ gets the ``fleet`` marker (deselect: -m "not fleet").
Needs root and the tools from ``testbed/setup.sh``; skips with the reason otherwise.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testbed import Fleet  # noqa: E402

NEEDED = ("debootstrap", "apt-cacher-ng", "sshd", "ssh", "ssh-keygen", "ip", "unshare", "nsenter")


def pytest_configure(config):
    config.addinivalue_line("markers", "fleet: runs against the simulated fleet (root; testbed/setup.sh)")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.fleet)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "simulated fleet needs root (network/mount/PID namespaces, veths, overlayfs)"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [c for c in NEEDED if not shutil.which(c, path=path)]
    if missing:
        return f"simulated fleet needs {', '.join(missing)}: run testbed/setup.sh as root"
    return None


@pytest.fixture(scope="session")
def fleet():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    f = Fleet()
    try:
        yield f
    finally:
        f.teardown()


_counter = itertools.count(1)


@pytest.fixture
def make_host(fleet):
    """Factory for fresh started hosts; each is removed when the test ends."""
    made = []

    def make(name: str | None = None, **kwargs):
        name = name or f"t{next(_counter)}"
        h = fleet.add_host(name, **kwargs)
        made.append(name)
        fleet.start(name)
        return h

    yield make
    for name in made:
        if name in fleet.hosts:
            fleet.remove(name)


@pytest.fixture(scope="session")
def pyinfra_cli() -> str:
    exe = Path(sys.executable).parent / "pyinfra"
    return str(exe if exe.exists() else shutil.which("pyinfra"))
