"""The whole deploy.py on bare hosts like real servers: systemd as PID 1, a non-root login
with sudo, nothing pre-installed, the serving image pulled from a registry.

  e2e13-ce      Debian 13, docker_packages=docker-ce (Docker's package names over Debian 13's
                real dockerd 26.1 and compose v2 plugin, from the apt repository double)
  e2e12-distro  Debian 12, docker_packages=distro (docker.io 20.10 + compose v1)
  e2e12-root    Debian 12 with no init system, logged into as root, docker_packages=distro
                (the init-less profile: dockerd run by glmfleet-dockerd; not in the reboot test)

Doubles at the edge: NVML (4 simulated RTX PRO 6000), the Hub, Docker's and NVIDIA's apt
repositories, and the serving image, pushed to a real registry (Debian's docker-registry,
TLS from a test CA each host trusts through /etc/docker/certs.d, as private registries are).

First run: READY everywhere; second run: no change, no restart; `systemctl is-enabled` docker
and the monitor unit; then each machine is stopped and started: Docker, the service (its
restart policy) and the monitor come back with no deploy, the status mode shows it serving,
and the peaks in logs/peak.json survived.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from glmfleet.settings import load_defaults
from testbed.doubles import nvml
from testbed.doubles.aptrepo import AptRepoDouble
from testbed.doubles.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, HubDouble, make_checkpoint
from testbed.doubles.registry import Registry
from testbed.doubles.serving import image as serving_image

REPO = Path(__file__).resolve().parents[2]
HOSTS = {"e2e13-ce": ("trixie", "docker-ce"), "e2e12-distro": ("bookworm", "distro"),
         "e2e12-root": ("bookworm", "distro")}
INITLESS_ROOT = "e2e12-root"
SYSTEMD_HOSTS = [n for n in HOSTS if n != INITLESS_ROOT]
# What dockerd needs inside a simulated host (no netfilter of its own, an overlay root): the
# operator's own daemon.json, which the deploy keeps.
DAEMON_JSON = {"storage-driver": "vfs", "iptables": False, "bridge": "none"}


def deploy(cli: str, inventory: Path, *args: str, target: str = "deploy.py"):
    r = subprocess.run([cli, "-y", "--json", *args, str(inventory), target], cwd=REPO,
                       capture_output=True, text=True, timeout=1200)
    try:
        report = json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"no JSON from pyinfra (rc {r.returncode}):\n{r.stderr[-6000:]}")
    return r.returncode, report, r.stderr


def changed(report, host: str) -> list[str]:
    return [op["name"] for op in report["results"]["operations"] if host in op["success"]]


@pytest.fixture(scope="module")
def site(fleet, pyinfra_cli, tmp_path_factory):
    work = tmp_path_factory.mktemp("deploy-systemd")
    defaults = load_defaults()
    checkpoint = work / "hub"
    make_checkpoint(checkpoint, shards=3, shard_bytes=2 * 2**20)
    repo, reg, hubs = AptRepoDouble(), Registry(work / "registry"), []
    try:
        override = serving_image.site_override(defaults["service_name"])
        for name, (suite, _) in HOSTS.items():
            files = nvml.host_files("rtx6000x4")
            files["/etc/docker/daemon.json"] = json.dumps(DAEMON_JSON)
            files["/usr/local/bin/nvidia-container-runtime-hook"] = (serving_image.HOOK_STANDIN, 0o755)
            if override:  # this machine cannot start privileged containers (see image.py)
                files[f"{defaults['service_dir']}/docker-compose.override.yml"] = override
            fleet.add_host(name, suite=suite, files=files, shm_size="32g",
                           init="none" if name == INITLESS_ROOT else "systemd")
        fleet.start(*HOSTS, timeout=90)
        data, pushed = {}, False
        for name, (_, flavour) in HOSTS.items():
            h = fleet[name]
            addr = reg.listen_on(h.gateway)
            reg.trust(h, addr)
            if not pushed:
                reg.push(addr, "glmfleet/serving", "1", serving_image.tarball())
                pushed = True
            hubs.append(HubDouble(checkpoint, repo_id=DEFAULT_REPO_ID, revision=DEFAULT_REVISION,
                                  host=h.gateway, port=0).start())
            data[name] = {**repo.settings(h.gateway), "docker_packages": flavour,
                          "image": f"{addr}/glmfleet/serving:1", "model_revision": DEFAULT_REVISION,
                          "hf_endpoint": hubs[-1].url, "weights_dir": "/srv/glm/weights",
                          "preflight_report": str(work / "preflight-report.json"),
                          "api_key": "generate", "api_key_file": str(work / "api-key")}
        inventory = fleet.write_inventory(work / "inventory.py", hosts=list(HOSTS), host_data=data,
                                          login={INITLESS_ROOT: "root"})
        first = deploy(pyinfra_cli, inventory)
        (work / "run1.log").write_text(first[2])
        yield {"inventory": inventory, "first": first, "work": work, "data": data, "registry": reg,
               "addr": addr}
    finally:
        for hub in hubs:
            hub.stop()
        reg.stop()
        repo.stop()
        for name in HOSTS:
            if name in fleet.hosts:
                fleet.remove(name)


def test_first_run_pulls_and_serves_on_bare_systemd_hosts(fleet, site):
    rc, report, log = site["first"]
    assert rc == 0, log[-8000:]
    monitor = f"{load_defaults()['service_name']}-monitor.service"
    for name in HOSTS:
        assert f"[{name}] service: PASS" in log, log[-6000:]
        assert f"pulling {site['data'][name]['image']}" in log  # nothing was pre-loaded
        if name == INITLESS_ROOT:
            continue
        enabled = fleet[name].exec(f"systemctl is-enabled docker {monitor}", check=False).stdout.split()
        assert enabled == ["enabled", "enabled"], (name, enabled)


def test_second_run_changes_nothing(site, pyinfra_cli):
    assert site["first"][0] == 0
    rc, report, log = deploy(pyinfra_cli, site["inventory"])
    (site["work"] / "run2.log").write_text(log)
    assert rc == 0, log[-6000:]
    for name in HOSTS:
        assert changed(report, name) == [], (name, changed(report, name))


def _started_at(h) -> str:
    name = load_defaults()["service_name"]
    return h.exec(f"docker container inspect -f '{{{{.State.StartedAt}}}}' {name}").stdout.strip()


def test_a_setting_change_restarts_only_the_host_it_touches(fleet, site, pyinfra_cli):
    assert site["first"][0] == 0
    before = {n: _started_at(fleet[n]) for n in HOSTS}
    data = {n: dict(d) for n, d in site["data"].items()}
    data["e2e12-distro"]["enable_thinking"] = False
    inventory = fleet.write_inventory(site["work"] / "inventory-thinking.py", hosts=list(HOSTS),
                                      host_data=data, login={INITLESS_ROOT: "root"})
    rc, report, log = deploy(pyinfra_cli, inventory)
    (site["work"] / "run-thinking.log").write_text(log)
    assert rc == 0, log[-6000:]
    after = {n: _started_at(fleet[n]) for n in HOSTS}
    assert after["e2e12-distro"] != before["e2e12-distro"]
    assert {n: after[n] for n in HOSTS if n != "e2e12-distro"} == \
        {n: before[n] for n in HOSTS if n != "e2e12-distro"}
    assert [n for n in HOSTS if changed(report, n)] == ["e2e12-distro"]
    # back to the fleet's settings for the next tests
    rc, _, log = deploy(pyinfra_cli, site["inventory"])
    assert rc == 0, log[-4000:]


def test_a_broken_image_on_the_canary_rolls_back_and_stops_the_rollout(fleet, site, pyinfra_cli):
    assert site["first"][0] == 0
    reg, addr = site["registry"], site["addr"]
    reg.push(addr, "glmfleet/serving", "broken", serving_image.tarball(), env={"FAKE_VLLM_FAIL": "boot"})
    before = {n: _started_at(fleet[n]) for n in HOSTS}
    data = {n: {**d, "image": d["image"].rsplit(":", 1)[0] + ":broken"} for n, d in site["data"].items()}
    inventory = fleet.write_inventory(site["work"] / "inventory-broken.py", hosts=list(HOSTS),
                                      host_data=data, login={INITLESS_ROOT: "root"})
    rc, report, log = deploy(pyinfra_cli, inventory)
    (site["work"] / "run-broken.log").write_text(log)
    assert rc != 0
    canary = next(iter(HOSTS))
    line = next(ln for ln in log.splitlines() if ln.startswith(f"[{canary}] service: "))
    assert "FAIL" in line and "rolled back to the last known good kit" in line, line
    for name in list(HOSTS)[1:]:  # never touched: still the container they had
        assert _started_at(fleet[name]) == before[name], name
    # the canary serves its last good kit again, and a run with the fleet's settings is a no-op
    rc, report, log = deploy(pyinfra_cli, site["inventory"])
    assert rc == 0, log[-4000:]


def test_reboot_brings_the_service_back_with_no_deploy(fleet, site, pyinfra_cli):
    assert site["first"][0] == 0
    sd = load_defaults()["service_dir"]
    peaks = {}
    for name in SYSTEMD_HOSTS:  # a request, so the monitor records a decode peak
        h = fleet[name]
        h.exec(f"cd {sd} && ./chat.sh 'Tell me about GPUs' >/dev/null", timeout=120)
        peak = h.root / sd.lstrip("/") / "logs/peak.json"
        for _ in range(300):
            if peak.exists() and json.loads(peak.read_text() or "{}").get("peak_decode_tps", 0) > 0:
                break
            time.sleep(0.2)
        peaks[name] = peak.read_text()
        assert json.loads(peaks[name]).get("peak_decode_tps", 0) > 0, (name, peaks[name])
    fleet.restart(*SYSTEMD_HOSTS, timeout=90)
    for name in SYSTEMD_HOSTS:
        h = fleet[name]
        h.exec("systemctl is-system-running --wait", check=False, timeout=120)
        assert h.exec("systemctl is-active docker").stdout.strip() == "active", name
    limit = [a for n in SYSTEMD_HOSTS for a in ("--limit", n)]
    # status is read-only and ends before any operation (no prompt, no JSON report)
    r = subprocess.run([pyinfra_cli, *limit, str(site["inventory"]), "tasks/status.py"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    (site["work"] / "status.log").write_text(log)
    assert r.returncode == 0, log[-4000:]
    assert "Beginning operation run" not in log and "Traceback" not in log, log[-4000:]
    n = len(SYSTEMD_HOSTS)
    assert f"Service status ({n} of {n} hosts serving)" in log, log[-4000:]
    sd = load_defaults()["service_dir"]
    for name in SYSTEMD_HOSTS:
        row = next(ln for ln in log.splitlines() if ln.startswith(name))
        assert "running" in row and "answering" in row, row
        # the peaks survived the reboot
        after = json.loads((fleet[name].root / sd.lstrip("/") / "logs/peak.json").read_text())
        for key, value in json.loads(peaks[name]).items():
            if isinstance(value, (int, float)):
                assert after.get(key, 0) >= value, (name, key, after)
