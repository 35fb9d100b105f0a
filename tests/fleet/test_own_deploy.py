"""One stage from a deploy file of the operator's own, as the README's "Use a stage in your own
deploy" shows: glmfleet installed from its wheel (no checkout on the path), a deploy file and
an inventory in a folder of their own (no config.py, no group_data/), the real pyinfra CLI,
a test host logged in as the sudo user `admin` (`_sudo` in the inventory, what --sudo does).

Real here: the wheel build (pip, the pinned backend), pyinfra, SSH, sudo, apt and dpkg
(Debian's docker.io and docker-compose through the fleet's apt proxy), dockerd.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.packaging import build_wheel, install_wheel

# What an operator writes: their own settings over glmfleet's packaged defaults.
OWN_DEPLOY = '''\
from glmfleet import docker

docker.install({"docker_packages": "distro", "docker_log_max_size": "20m"})
'''
# What dockerd needs inside a simulated host (as in test_docker_stage.py)
DAEMON_JSON = {"storage-driver": "vfs", "iptables": False, "bridge": "none"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("own-deploy-wheel")
    return install_wheel(build_wheel(tmp), tmp / "site")


def _run(cli: str, site: Path, folder: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """pyinfra from the operator's folder; glmfleet comes from the installed wheel only."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([cli, "-y", "--json", "inventory.py", "own_deploy.py"], cwd=folder, env=env,
                       capture_output=True, text=True, timeout=600)
    try:
        return r, json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"pyinfra printed no JSON (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")


def test_operator_deploy_file_runs_the_docker_stage_as_the_sudo_user(fleet, make_host, pyinfra_cli,
                                                                       installed, tmp_path):
    h = make_host("own-1", files={"/etc/docker/daemon.json": json.dumps(DAEMON_JSON)}, init="none")
    folder = tmp_path / "ops-repo"
    folder.mkdir()
    (folder / "own_deploy.py").write_text(OWN_DEPLOY)
    inventory = fleet.write_inventory(folder / "inventory.py", hosts=[h.name])  # login admin, _sudo
    assert "'ssh_user': 'admin'" in inventory.read_text() and "'_sudo': True" in inventory.read_text()

    r, report = _run(pyinfra_cli, installed, folder)
    assert r.returncode == 0, r.stderr[-6000:]
    ops = report["results"]["operations"]
    assert ops and all(op["name"].startswith("docker.install | ") for op in ops), [op["name"] for op in ops]
    assert not [op["name"] for op in ops if op["error"]], r.stderr[-4000:]

    # The stage did its work, as root through sudo, with the operator's settings.
    for package in ("docker.io", "docker-compose"):
        assert h.exec(f"dpkg-query -W -f='${{db:Status-Abbrev}}' {package}").stdout.startswith("ii"), package
    daemon = json.loads(h.exec("cat /etc/docker/daemon.json").stdout)
    assert daemon["log-opts"]["max-size"] == "20m" and daemon["storage-driver"] == "vfs"
    assert h.exec("stat -c %U /etc/docker/daemon.json").stdout.strip() == "root"
    # pyinfra's files.put (the init-less helper), under the inventory's _sudo
    assert h.exec("stat -c '%U %a' /usr/local/sbin/glmfleet-dockerd").stdout.strip() == "root 755"
    assert h.exec("docker info --format '{{.ServerVersion}}'").stdout.strip()

    # A second run with nothing changed changes nothing.
    r, report = _run(pyinfra_cli, installed, folder)
    assert r.returncode == 0, r.stderr[-6000:]
    changed = [op["name"] for op in report["results"]["operations"] if op["success"]]
    assert changed == [], changed
