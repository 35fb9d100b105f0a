"""The docker and nvidia_toolkit stages on hosts like real servers: systemd as PID 1, reached as
a non-root user with sudo (the inventory's _sudo, what `--sudo` sets), bare (nothing
pre-installed), through the real pyinfra CLI.

  sd13-ce      Debian 13, docker_packages=docker-ce: the apt repository double's trixie suite,
               made of Debian 13's real binaries: dockerd 26.1 and the real compose v2 plugin
  sd13-distro  Debian 13, docker_packages=distro: Debian's docker.io 26.1 + docker-cli +
               docker-compose 2.26 (a real compose v2 plugin)
  sd12-distro  Debian 12, docker_packages=distro: Debian's docker.io 20.10 + compose v1

Then each host is restarted (its machine stopped and started): docker.service comes back by
itself, enabled at boot, and a second deploy changes nothing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testbed.doubles.aptrepo import AptRepoDouble
from testbed.doubles.registry import Registry
from testbed.doubles.serving import image as serving_image

REPO = Path(__file__).resolve().parents[2]
DEPLOY = 'from pyinfra import local\nlocal.include("tasks/docker.py")\nlocal.include("tasks/nvidia_toolkit.py")\n'
# What dockerd needs inside a simulated host (no netfilter of its own, an overlay root).
DAEMON_JSON = {"storage-driver": "vfs", "iptables": False, "bridge": "none"}
COMMON = {"model_revision": "0123456789abcdef0123456789abcdef01234567"}
HOSTS = {"sd13-ce": ("trixie", "docker-ce"), "sd13-distro": ("trixie", "distro"),
         "sd12-distro": ("bookworm", "distro")}


def _pyinfra(cli: str, inventory: Path, deploy: Path) -> tuple[int, dict, str]:
    r = subprocess.run([cli, "-y", "--json", str(inventory), str(deploy)], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    try:
        return r.returncode, json.loads(r.stdout), r.stderr
    except ValueError:
        pytest.fail(f"pyinfra printed no JSON (rc {r.returncode}):\n{r.stderr[-6000:]}")


def _changed(report: dict, host: str) -> list[str]:
    return [op["name"] for op in report["results"]["operations"] if host in op["success"]]


def _active_since(h, unit: str) -> str:
    return h.exec(f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}").stdout.strip()


@pytest.fixture(scope="module")
def matrix(fleet, pyinfra_cli, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("systemd-hosts")
    repo = AptRepoDouble()
    try:
        for name, (suite, _) in HOSTS.items():
            fleet.add_host(name, suite=suite, files={"/etc/docker/daemon.json": json.dumps(DAEMON_JSON)})
        fleet.start(*HOSTS, timeout=90)
        data = {n: {**COMMON, **repo.settings(fleet[n].gateway), "docker_packages": flavour}
                for n, (_, flavour) in HOSTS.items()}
        inventory = fleet.write_inventory(tmp / "inv.py", hosts=list(HOSTS), host_data=data)
        (tmp / "deploy.py").write_text(DEPLOY)
        first = _pyinfra(pyinfra_cli, inventory, tmp / "deploy.py")
        (tmp / "run1.log").write_text(first[2])
        yield {"first": first, "inventory": inventory, "deploy": tmp / "deploy.py", "tmp": tmp}
    finally:
        repo.stop()
        for n in HOSTS:
            if n in fleet.hosts:
                fleet.remove(n)


def test_first_run_installs_a_real_engine_and_compose_on_each_host(fleet, matrix):
    rc, report, log = matrix["first"]
    assert rc == 0, log[-6000:]
    for name, (suite, flavour) in HOSTS.items():
        h = fleet[name]
        assert h.exec("cat /proc/1/comm").stdout.strip() == "systemd"
        engine = h.exec("docker version -f '{{.Server.Version}}'").stdout.strip()
        assert engine.startswith("26.1." if suite == "trixie" else "20.10."), (name, engine)
        assert h.exec("systemctl is-enabled docker").stdout.strip() == "enabled", name
        assert h.exec("systemctl is-active docker").stdout.strip() == "active", name
        if suite == "trixie":  # the real compose v2 plugin, from either flavour's package
            out = h.exec("docker compose version --short").stdout.strip()
            assert out.startswith("2.26."), (name, out)
            pkg = "docker-compose-plugin" if flavour == "docker-ce" else "docker-compose"
            assert "/usr/libexec/docker/cli-plugins/docker-compose" in h.exec(f"dpkg -L {pkg}").stdout
        else:  # Debian 12's distribution compose is v1; never a Debian 13 binary
            assert h.exec("docker-compose version --short").stdout.strip().startswith("1.29.")
            assert h.exec("dpkg-query -W -f='${Version}' docker.io").stdout.startswith("20.10.")
        if flavour == "docker-ce":
            assert h.exec("dpkg-query -W -f='${Version}' docker-ce").stdout.startswith("5:26.1.5-1~debian.13~trixie")


def test_image_pulled_from_a_tls_registry_runs_under_compose_v2(fleet, matrix, tmp_path):
    """Nothing pre-loaded: the serving-image double is pushed to a real registry (Debian's
    docker-registry, TLS from a test CA the host trusts through /etc/docker/certs.d), pulled
    by the host's Docker with progress, and run by the real `docker compose`."""
    assert matrix["first"][0] == 0
    h = fleet["sd13-ce"]
    reg = Registry(tmp_path / "registry")
    try:
        addr = reg.listen_on(h.gateway)
        reg.trust(h, addr)
        reg.push(addr, "glmfleet/serving", "1", serving_image.tarball())
        image = f"{addr}/glmfleet/serving:1"
        assert h.exec(f"docker image inspect {image}", check=False).returncode != 0
        pulled = h.exec(f"docker pull {image}", timeout=300).stdout
        assert "Pull complete" in pulled or "Downloaded newer image" in pulled, pulled
        probe = h.root / "srv/probe"
        probe.mkdir(parents=True, exist_ok=True)
        (probe / "compose.yaml").write_text(
            f"services:\n  probe:\n    image: {image}\n    network_mode: none\n"
            '    command: ["/bin/sh", "-c", "echo hello-from-compose"]\n')
        out = h.exec("cd /srv/probe && docker compose up --no-color 2>&1 && docker compose down",
                     timeout=300).stdout
        assert "hello-from-compose" in out, out
    finally:
        reg.stop()


def test_reboot_brings_docker_back_and_a_second_run_changes_nothing(fleet, matrix, pyinfra_cli):
    assert matrix["first"][0] == 0
    fleet.restart(*HOSTS, timeout=90)
    for name in HOSTS:
        h = fleet[name]
        state = h.exec("systemctl is-system-running --wait", check=False, timeout=120).stdout.strip()
        assert state == "running", (name, state, h.exec("systemctl --failed", check=False).stdout)
        assert h.exec("systemctl is-active docker").stdout.strip() == "active", name
    before = {n: _active_since(fleet[n], "docker") for n in HOSTS}
    rc, report, log = _pyinfra(pyinfra_cli, matrix["inventory"], matrix["deploy"])
    (matrix["tmp"] / "run2.log").write_text(log)
    assert rc == 0, log[-6000:]
    for name in HOSTS:
        assert _changed(report, name) == [], (name, _changed(report, name))
        assert _active_since(fleet[name], "docker") == before[name], name  # not restarted
