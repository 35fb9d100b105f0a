"""The whole deploy.py, every stage, on one simulated GPU host, in each of pyinfra's ways of
running: --dry on the bare host (plans every stage, changes nothing), then the deploy
without -y (pyinfra plans every operation, asks, then executes: both phases of every stage
run), a second run with -y (operations run once, at execution) that changes nothing, a
--dry that finds nothing to change; then a Hub outage (the verified host goes on).

The doubles are the demo's (testbed/demo.py Site): NVML, the Hub, Docker's and NVIDIA's apt
repositories, the serving image (pulled by the deploy from the registry double); the hosts run
systemd and are reached as the sudo user, as real servers are."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testbed.demo import Site

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(fleet):
    with Site({"e2e-gpu": "rtx6000x4"}, fleet=fleet) as s:
        yield s


def pyinfra(pyinfra_cli, site, *args, stdin: str | None = None):
    r = subprocess.run([pyinfra_cli, *args, str(site.inventory), "deploy.py"], cwd=REPO,
                       input=stdin, capture_output=True, text=True, timeout=900)
    assert "Traceback" not in r.stdout + r.stderr, (r.stdout + r.stderr)[-6000:]
    return r


def deploy_json(pyinfra_cli, site, *args):
    r = pyinfra(pyinfra_cli, site, "--json", *args)
    try:
        report = json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"no JSON from pyinfra (rc {r.returncode}):\n{r.stderr[-6000:]}")
    return r.returncode, report, r.stderr


def changed(report) -> list[str]:
    return [op["name"] for op in report["results"]["operations"] if op["success"]]


def container(h) -> dict:
    """The service container's id, start time and state (the default service_name)."""
    out = h.exec("docker container inspect -f '{{.Id}} {{.State.StartedAt}} {{.State.Running}}' glm52-vllm",
                 check=False).stdout.split()
    return dict(zip(("id", "started", "running"), out)) | {"running": out[-1:] == ["true"]}


def planned(report) -> list[str]:
    return [op["name"] for op in report["plan"] if op["hosts_with_change"]]


def test_dry_then_deploy_without_y_then_no_change_with_y_and_dry(site, pyinfra_cli):
    host = site.fleet["e2e-gpu"]
    env = host.root / "opt/glm52/.env"  # the kit (the site override may sit beside it)

    # --dry on the bare host: every stage planned (facts of a bare host), nothing changed.
    rc, dry, err = deploy_json(pyinfra_cli, site, "--dry")
    assert rc == 0, err[-6000:]
    assert dry["results"] is None and planned(dry), err[-6000:]
    assert "Preflight readiness" in err
    assert not env.exists(), "--dry must change nothing"

    # Without -y: pyinfra plans every operation, shows the changes, waits for Enter, runs.
    r = pyinfra(pyinfra_cli, site, stdin="\n")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "Detected changes" in out
    assert "[e2e-gpu] service: PASS" in out and "READY at http://" in out
    summary = out[out.rindex("Fleet summary"):]
    row = next(line for line in summary.splitlines() if line.startswith("e2e-gpu"))
    assert f"http://{host.address}:8000/v1" in row and " ok " in row
    before = container(host)
    assert before["running"], before

    # -y: operations run once, at execution; nothing changed since, so nothing changes.
    rc, second, err = deploy_json(pyinfra_cli, site, "-y")
    assert rc == 0, err[-6000:]
    assert changed(second) == [], err[-6000:]
    # Nothing restarted: the same container (id and start time) the first run started.
    assert container(host) == before
    assert "service: PASS" in err and "unchanged" in err.lower()

    # --dry on the serving host: zero changes planned.
    rc, dry, err = deploy_json(pyinfra_cli, site, "--dry")
    assert rc == 0, err[-6000:]
    assert planned(dry) == [], err[-6000:]
    assert container(host) == before
    assert "e2e-gpu" in err and "Preflight readiness" in err

    # The Hub goes away. The host's weights are verified for the pinned revision: it passes
    # preflight with the manifest it holds (a WARN saying so) and the run changes nothing.
    for hub in site.hubs:
        hub.stop()
    rc, outage, err = deploy_json(pyinfra_cli, site, "-y")
    assert rc == 0, err[-6000:]
    assert changed(outage) == [], err[-6000:]
    row = next(line for line in err[err.index("Preflight readiness"):].splitlines()
               if line.startswith("e2e-gpu "))
    assert " WARN " in row and "cannot read the Hub's file list" in row, row
    assert "using the manifest it already holds" in err
    # Without verified weights the same outage stops the host, and the first reason given is
    # the Hub (the root cause), not the disk estimate it leads to.
    marker = host.root / "srv/glm/weights/.glmfleet/VERIFIED"
    marker.rename(marker.with_name("VERIFIED.bak"))
    try:
        err = pyinfra(pyinfra_cli, site, "--dry").stderr  # its only host fails: no JSON
    finally:
        marker.with_name("VERIFIED.bak").rename(marker)
    row = next(line for line in err[err.index("Preflight readiness"):].splitlines()
               if line.startswith("e2e-gpu "))
    assert " FAIL " in row and "cannot read the Hub's file list" in row, row
