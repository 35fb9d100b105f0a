"""The docker and nvidia_toolkit stages on the simulated fleet, through the real pyinfra CLI.

Real here: SSH, apt and dpkg (Debian packages come through the fleet's apt proxy), gpg,
dockerd (Debian's 20.10 engine, inside the stand-in docker-ce or Debian's own docker.io),
Debian's docker-compose. Test doubles: Docker's and NVIDIA's apt repositories
(testbed/doubles/aptrepo), whose keys are pinned through the settings.

One run over three hosts, then a second run, shared by the tests of this module:
  dk-ce     docker-ce from the double (version pinned), an operator daemon.json, apt_proxy set
  dk-distro docker_packages=distro (Debian's docker.io + docker-compose), toolkit pinned 1.17.8-1
  dk-badkey the double's Docker key, but the real Docker fingerprint pinned: must be refused
Preflight is another stage (it needs GPUs), so the deploy here includes just these two stages.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testbed.doubles.aptrepo import DOCKER_VERSION, AptRepoDouble

REPO = Path(__file__).resolve().parents[2]
REAL_DOCKER_FPR = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"  # group_data/all.py's default
DEPLOY = 'from pyinfra import local\nlocal.include("tasks/docker.py")\nlocal.include("tasks/nvidia_toolkit.py")\n'
# The operator's own daemon.json. storage-driver/iptables/bridge are what dockerd needs inside
# a simulated host; the rest stands for any setting of theirs that must survive the deploy.
OPERATOR_DAEMON_JSON = {"storage-driver": "vfs", "iptables": False, "bridge": "none",
                        "labels": ["site=lab-7"], "max-concurrent-downloads": 2,
                        "log-opts": {"max-size": "10m"}}
DIST_DAEMON_JSON = {"storage-driver": "vfs", "iptables": False, "bridge": "none"}
STARTED = "API listen on /var/run/docker.sock"  # dockerd logs this once per start
# A full deploy must pin the model; these two stages never read it.
COMMON = {"model_revision": "0123456789abcdef0123456789abcdef01234567"}


def _pyinfra(cli: str, inventory: Path, deploy: Path, json_expected: bool = True) -> tuple[int, dict, str]:
    """Run the real CLI from the repo root (config.py, group_data/); --json keeps stdout pure.
    When every host fails, the run ends with our one-line message and prints no JSON."""
    r = subprocess.run([cli, "-y", "--json", str(inventory), str(deploy)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    try:
        report = json.loads(r.stdout)
    except ValueError:
        if json_expected:
            pytest.fail(f"pyinfra printed no JSON (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
        report = None
    return r.returncode, report, r.stderr


def _changed(report: dict, host: str) -> list[str]:
    return [op["name"] for op in report["results"]["operations"] if host in op["success"]]


def _errors(report: dict, host: str) -> list[str]:
    return [op["name"] for op in report["results"]["operations"] if host in op["error"]]


def _installed(h, package: str) -> bool:
    """dpkg's "ii" (a removed package keeps "rc" and `dpkg -s` still succeeds for it)."""
    return h.exec(f"dpkg-query -W -f='${{db:Status-Abbrev}}' {package} 2>/dev/null || true").stdout.startswith("ii")


def _state(h) -> dict:
    """What a test needs to know about a host after a run."""
    log = h.exec("cat /var/log/dockerd.log 2>/dev/null || true").stdout
    return {"starts": log.count(STARTED),
            "pid": h.exec("cat /var/run/docker.pid 2>/dev/null || true").stdout.strip(),
            "daemon_json": h.exec("cat /etc/docker/daemon.json 2>/dev/null || true").stdout}


@pytest.fixture(scope="module")
def repo():
    r = AptRepoDouble()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def hosts(fleet):
    made = {}
    try:
        for name, daemon_json in (("dk-ce", OPERATOR_DAEMON_JSON), ("dk-distro", DIST_DAEMON_JSON),
                                  ("dk-badkey", DIST_DAEMON_JSON)):
            # the init-less profile (dockerd run by glmfleet-dockerd); systemd hosts: test_systemd_hosts.py
            made[name] = fleet.add_host(name, files={"/etc/docker/daemon.json": json.dumps(daemon_json)},
                                        init="none")
        fleet.start(*made)
        yield made
    finally:
        for name in made:
            if name in fleet.hosts:
                fleet.remove(name)


@pytest.fixture(scope="module")
def runs(fleet, hosts, repo, pyinfra_cli, tmp_path_factory):
    """Run 1 on all three hosts, run 2 on the two that should have passed."""
    tmp = tmp_path_factory.mktemp("docker-stage")
    deploy = tmp / "deploy_docker.py"
    deploy.write_text(DEPLOY)
    ce, distro, bad = hosts["dk-ce"], hosts["dk-distro"], hosts["dk-badkey"]
    data = {
        "dk-ce": {**COMMON, **repo.settings(ce.gateway), "docker_version": DOCKER_VERSION,
                  "apt_proxy": fleet.proxy.url(ce.gateway)},
        "dk-distro": {**COMMON, **repo.settings(distro.gateway), "docker_packages": "distro",
                      "nvidia_toolkit_version": "1.17.8-1"},
        # the double's key served where Docker's would be, the real fingerprint still pinned
        "dk-badkey": {**COMMON, **repo.settings(bad.gateway), "docker_key_fingerprint": REAL_DOCKER_FPR},
    }
    inv1 = fleet.write_inventory(tmp / "inventory1.py", hosts=list(hosts), host_data=data)
    first = _pyinfra(pyinfra_cli, inv1, deploy)
    (tmp / "run1.log").write_text(first[2])  # pyinfra's log and our summary, for post-mortems
    after_first = {n: _state(h) for n, h in hosts.items()}
    inv2 = fleet.write_inventory(tmp / "inventory2.py", hosts=["dk-ce", "dk-distro"], host_data=data)
    second = _pyinfra(pyinfra_cli, inv2, deploy)
    (tmp / "run2.log").write_text(second[2])
    return {"first": first, "second": second, "after_first": after_first,
            "after_second": {n: _state(hosts[n]) for n in ("dk-ce", "dk-distro")}}


def test_docker_ce_installed_from_the_repository_double(hosts, repo, fleet, runs):
    rc, report, log = runs["first"]
    h = hosts["dk-ce"]
    assert not _errors(report, "dk-ce"), log[-4000:]
    versions = dict(line.split("\t") for line in h.exec(
        "dpkg-query -W -f='${Package}\\t${Version}\\n' docker-ce docker-ce-cli containerd.io "
        "docker-buildx-plugin docker-compose-plugin").stdout.splitlines())
    assert versions["docker-ce"] == versions["docker-ce-cli"] == DOCKER_VERSION  # the pin
    assert set(versions) == {"docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
                             "docker-compose-plugin"}
    # the packages came from the double, their Debian dependencies through the fleet's apt proxy
    debs = " ".join(repo.deb_requests_from(h.address))
    assert "docker-ce_" in debs and "containerd.io_" in debs
    proxy_log = (fleet.proxy.dir / "log" / "apt-cacher.log").read_text()
    assert "libdevmapper" in proxy_log or "iptables" in proxy_log
    # key: pinned, readable by _apt, armoured; source: deb822 with path + fingerprint
    assert h.exec("stat -c %a /etc/apt/keyrings/docker.asc").stdout.strip() == "644"
    sources = h.exec("cat /etc/apt/sources.list.d/docker.sources").stdout
    assert f"Signed-By: /etc/apt/keyrings/docker.asc {repo.docker_fingerprint}" in sources
    assert f"URIs: {repo.settings(h.gateway)['docker_repo_url']}" in sources
    assert "Suites: bookworm" in sources and "Components: stable" in sources
    assert h.exec("test -e /etc/apt/sources.list.d/docker.list", check=False).returncode == 1
    # a real engine answers, the compose plugin too
    assert h.exec("docker version --format '{{.Server.Version}}'").stdout.startswith("20.10.24")
    assert h.exec("docker compose version --short").stdout.strip() == "2.20.2"
    # apt_proxy became an apt setting
    conf = h.exec("cat /etc/apt/apt.conf.d/80glmfleet-proxy").stdout
    assert f'Acquire::http::Proxy "{fleet.proxy.url(h.gateway)}";' in conf
    assert "[dk-ce] docker: PASS: docker-ce: engine 20.10.24" in log


def test_operator_daemon_json_keys_are_kept(runs):
    config = json.loads(runs["after_first"]["dk-ce"]["daemon_json"])
    for key, value in OPERATOR_DAEMON_JSON.items():
        if key != "log-opts":
            assert config[key] == value, key
    # their own max-size wins; what they did not set is added
    assert config["log-opts"] == {"max-size": "10m", "max-file": "5"}
    assert config["log-driver"] == "json-file"
    assert config["runtimes"]["nvidia"] == {"args": [], "path": "nvidia-container-runtime"}


def test_toolkit_installed_and_wired_into_docker(hosts, runs):
    rc, report, log = runs["first"]
    h = hosts["dk-ce"]
    for pkg in ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
                "libnvidia-container1"):
        assert h.exec(f"dpkg-query -W -f='${{Version}}' {pkg}").stdout == "1.18.0-1"  # newest
    assert "nvidia" in h.exec("docker info --format '{{json .Runtimes}}'").stdout
    # no GPU here: both the CDI spec and the container GPU check say why they were skipped
    assert "[dk-ce] nvidia_toolkit: WARN:" in log
    assert "nvidia-smi not found on this host (the driver's command-line tools" in log
    # the GPU container check is an operation of its own; without a driver it pulls nothing
    check = [op for op in report["results"]["operations"] if op["name"].startswith(
        "tasks/nvidia_toolkit.py | docker.nvidia_toolkit | Toolkit: GPU container check")]
    assert len(check) == 1 and "dk-ce" in check[0]["no_change"], check
    assert h.exec("docker images -q").stdout.strip() == ""
    assert h.exec("test -e /var/run/cdi/nvidia.yaml", check=False).returncode == 1


def test_docker_restarted_exactly_once_on_the_first_run_and_never_on_the_second(runs):
    first, second = runs["after_first"], runs["after_second"]
    for name in ("dk-ce", "dk-distro"):
        # started by the docker stage, restarted once by the toolkit stage (new hook + runtime)
        assert first[name]["starts"] == 2, name
        assert second[name]["starts"] == 2, name
        assert second[name]["pid"] == first[name]["pid"] != "", name
        assert second[name]["daemon_json"] == first[name]["daemon_json"], name


def test_second_run_reports_zero_changes(runs):
    rc, report, log = runs["second"]
    assert rc == 0, log[-4000:]
    totals = report["results"]["totals"]
    assert totals["success"] == 0 and totals["error"] == 0, report["results"]["operations"]
    assert totals["no_change"] > 0


def test_wrong_key_fingerprint_is_refused_and_nothing_installed(hosts, repo, runs):
    rc, report, log = runs["first"]
    h = hosts["dk-badkey"]
    assert rc != 0
    # the key operation failed, nothing before it changed anything, nothing after it ran
    assert _errors(report, "dk-badkey")[0] == "tasks/docker.py | docker.install | Docker: signing key (fingerprint checked)"
    assert _changed(report, "dk-badkey") == []
    assert "refusing the signing key for Docker's apt repository" in log
    assert f"its fingerprint is {repo.docker_fingerprint}" in log and f"not the pinned {REAL_DOCKER_FPR}" in log
    assert "docker_key_fingerprint" in log
    assert "FAILED in docker: refusing the signing key" in log  # the fleet summary
    # nothing trusted, nothing installed, nothing fetched beyond the key
    assert h.exec("ls -A /etc/apt/keyrings/").stdout.split() == []
    assert h.exec("ls -A /etc/apt/sources.list.d/").stdout.split() == ["debian.sources"]
    assert not _installed(h, "docker-ce")
    assert h.exec("command -v dockerd", check=False).returncode != 0
    assert [r["path"] for r in repo.requests_from(h.address)] == ["/linux/debian/gpg"]
    # the other hosts went on
    assert not _errors(report, "dk-ce") and not _errors(report, "dk-distro")


def test_distribution_packages_choice(hosts, repo, runs):
    rc, report, log = runs["first"]
    h = hosts["dk-distro"]
    assert not _errors(report, "dk-distro"), log[-4000:]
    origin = h.exec("apt-cache policy docker.io docker-compose").stdout
    assert "20.10.24+dfsg1" in origin and "1.29.2" in origin
    assert not _installed(h, "docker-ce")
    assert h.exec("test -e /etc/apt/sources.list.d/docker.sources", check=False).returncode == 1
    assert not any("docker-ce" in p for p in repo.deb_requests_from(h.address))
    assert h.exec("docker-compose version --short").stdout.strip() == "1.29.2"
    assert h.exec("docker version --format '{{.Server.Version}}'").stdout.startswith("20.10.24")
    # the toolkit pin holds for all four packages (1.17.8 alone would accept newer libs)
    versions = h.exec("dpkg-query -W -f='${Version} ' nvidia-container-toolkit nvidia-container-toolkit-base "
                      "libnvidia-container-tools libnvidia-container1").stdout.split()
    assert versions == ["1.17.8-1"] * 4
    assert "[dk-distro] docker: PASS: distro: engine 20.10.24+dfsg1 running (no init system" in log
    assert "docker-compose 1.29.2" in log


def test_switching_flavour_needs_permission_to_remove_the_other(fleet, hosts, repo, runs, pyinfra_cli,
                                                                 tmp_path):
    """dk-distro (docker.io) asked for docker-ce: refused while docker_remove_conflicts is
    off, with nothing changed; allowed, the old engine goes and the new one runs."""
    h = hosts["dk-distro"]
    deploy = tmp_path / "deploy_docker.py"
    deploy.write_text(DEPLOY)
    data = {**COMMON, **repo.settings(h.gateway)}
    before = _state(h)
    # apt_proxy set: the refusal must come before the stage writes anything, its proxy file too
    inv = fleet.write_inventory(tmp_path / "refuse.py", hosts=["dk-distro"],
                                host_data={"dk-distro": {**data, "apt_proxy": fleet.proxy.url(h.gateway)}})
    rc, report, log = _pyinfra(pyinfra_cli, inv, deploy, json_expected=False)  # its only host failed
    assert rc == 1 and "every host of this run failed" in log
    assert "No hosts remaining" not in log and "runctx.py" not in log and "Traceback" not in log
    assert ("installed packages conflict with docker_packages='docker-ce': docker.io, docker-compose, "
            "containerd, runc. Nothing was changed.") in log
    assert "docker_remove_conflicts=true" in log
    assert _state(h) == before
    assert _installed(h, "docker.io")
    assert h.exec("test -e /etc/apt/apt.conf.d/80glmfleet-proxy", check=False).returncode == 1

    inv = fleet.write_inventory(tmp_path / "allow.py", hosts=["dk-distro"],
                                host_data={"dk-distro": {**data, "docker_remove_conflicts": True}})
    rc, report, log = _pyinfra(pyinfra_cli, inv, deploy)
    assert rc == 0, log[-4000:]
    assert not _installed(h, "docker.io")
    assert h.exec("dpkg-query -W -f='${Version}' docker-ce").stdout == DOCKER_VERSION
    after = _state(h)
    assert after["starts"] == before["starts"] + 1 and after["pid"] != before["pid"]  # one restart
    assert h.exec("readlink /proc/$(cat /var/run/docker.pid)/exe").stdout.strip() == "/usr/bin/dockerd"
    assert "[dk-distro] docker: PASS: docker-ce: engine 20.10.24" in log


# A host that already runs Docker, configured as the deploy would (Debian's docker.io, the
# operator's daemon.json with the recipe's log rotation), and a container of someone else's.
ADOPT_DAEMON_JSON = {**DIST_DAEMON_JSON, "log-driver": "json-file",
                     "log-opts": {"max-size": "100m", "max-file": "5"}}
DOCKER_ONLY = 'from pyinfra import local\nlocal.include("tasks/docker.py")\n'


def _started_at(h, name: str) -> str:
    return h.exec(f"docker container inspect -f '{{{{.State.StartedAt}}}} {{{{.State.Running}}}}' {name}").stdout.strip()


def test_a_host_already_running_docker_keeps_its_containers(make_host, fleet, pyinfra_cli, tmp_path):
    """First deploy to a host whose dockerd already runs the right configuration: no restart
    (no stamp yet is no reason to stop every container), and the stamp is adopted."""
    from testbed.doubles.serving import image as serving_image

    h = make_host("dk-adopt", files={"/etc/docker/daemon.json": json.dumps(ADOPT_DAEMON_JSON)})
    h.exec("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
           "--no-install-recommends docker.io docker-compose >/var/log/apt-docker.log 2>&1 "
           "|| { tail -20 /var/log/apt-docker.log; exit 1; }", timeout=600)
    h.exec("setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null & "
           "for i in $(seq 150); do docker version >/dev/null 2>&1 && exit 0; sleep 0.2; done; "
           "tail -20 /var/log/dockerd.log; exit 1", timeout=60)
    serving_image.import_image(h, "site/other:1")
    h.exec("docker run -d --name other --network none --entrypoint python3 site/other:1 "
           "-c 'import time; time.sleep(10**6)'")
    before = (_started_at(h, "other"), _state(h)["pid"])
    assert before[0].endswith(" true") and before[1]

    deploy = tmp_path / "deploy_docker_only.py"
    deploy.write_text(DOCKER_ONLY)
    data = {"dk-adopt": {**COMMON, "docker_packages": "distro"}}
    inv = fleet.write_inventory(tmp_path / "adopt.py", hosts=["dk-adopt"], host_data=data)
    rc, report, log = _pyinfra(pyinfra_cli, inv, deploy)
    assert rc == 0, log[-4000:]
    assert (_started_at(h, "other"), _state(h)["pid"]) == before  # nothing restarted
    assert "dockerd: adopt: dockerd already runs the configuration on disk" in log
    assert "[dk-adopt] docker: PASS: distro: engine 20.10.24" in log
    assert json.loads(h.exec("cat /etc/docker/daemon.json").stdout) == ADOPT_DAEMON_JSON
    assert h.exec("cat /var/lib/glmfleet/docker.applied").stdout.strip()

    rc, report, log = _pyinfra(pyinfra_cli, inv, deploy)  # and the stamp holds from now on
    assert rc == 0 and report["results"]["totals"]["success"] == 0, log[-4000:]
    assert (_started_at(h, "other"), _state(h)["pid"]) == before
