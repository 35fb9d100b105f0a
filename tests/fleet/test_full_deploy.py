"""The whole deploy.py, every stage, on one simulated GPU host: a first run ends serving, a
second run with nothing changed reports no change at all, and --dry shows none either.

The doubles are the demo's (testbed/demo.py Site): NVML, the Hub, Docker's and NVIDIA's apt
repositories, the serving image (pre-loaded, as simulated hosts have no registry)."""

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


def deploy(pyinfra_cli, site, *args):
    r = subprocess.run([pyinfra_cli, "-y", "--json", *args, str(site.inventory), "deploy.py"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
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


def test_first_run_serves_then_second_run_changes_nothing(site, pyinfra_cli):
    rc, first, err = deploy(pyinfra_cli, site)
    assert rc == 0, err[-6000:]
    assert changed(first), "the first run on a bare host must change things"
    for stage in ("docker", "nvidia_toolkit", "weights", "service"):
        assert any(op["name"].startswith(f"tasks/{stage}.py") for op in first["results"]["operations"])
    assert "[e2e-gpu] service: PASS" in err and "READY at http://" in err
    summary = err[err.rindex("Fleet summary"):]
    row = next(line for line in summary.splitlines() if line.startswith("e2e-gpu"))
    assert f"http://{site.fleet['e2e-gpu'].address}:8000/v1" in row and " ok " in row

    host = site.fleet["e2e-gpu"]
    before = container(host)
    assert before["running"], before
    rc, second, err = deploy(pyinfra_cli, site)
    assert rc == 0, err[-6000:]
    assert changed(second) == [], err[-6000:]
    # Nothing restarted: the same container (id and start time) the first run started.
    assert container(host) == before
    assert "service: PASS" in err and "unchanged" in err.lower()

    rc, dry, err = deploy(pyinfra_cli, site, "--dry")
    assert rc == 0, err[-6000:]
    assert "e2e-gpu" in err and "Preflight readiness" in err
    assert dry["results"] is None and dry["plan"], "--dry plans and executes nothing"
    would_change = [op["name"] for op in dry["plan"]
                    if op["hosts_with_change"] or op["hosts_with_conditional_change"]]
    assert would_change == [], would_change
    assert container(host) == before
