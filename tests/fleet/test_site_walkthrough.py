"""The README's "Use" section followed command by command, as written (no -y where it has
none: the prompts are answered on stdin, as a person would press Enter), on the standing
simulated site of `python -m testbed site up`, with the site's inventory in place of
inventory/gpu.py; then `python -m testbed site down`."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def use_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"^## Use\n+```sh\n(.*?)^```", readme, re.M | re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def site(fleet, tmp_path_factory):  # fleet: the same root and tools checks as every fleet test
    workdir = tmp_path_factory.mktemp("site") / "standing"
    up = subprocess.run([sys.executable, "-m", "testbed", "site", "up", "--workdir", str(workdir)],
                        cwd=REPO, capture_output=True, text=True, timeout=1200)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        info = json.loads((workdir / "site.json").read_text())
        assert info["inventory"] in up.stdout and info["hub"] in up.stdout
        yield info
    finally:
        down = subprocess.run([sys.executable, "-m", "testbed", "site", "down", "--workdir",
                               str(workdir)], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not workdir.exists()


def run(line: str, site: dict, revision: str | None, stdin: str = "") -> subprocess.CompletedProcess:
    line = line.replace("inventory/gpu.py", site["inventory"])
    if revision:
        line = line.replace("<40-hex commit>", revision)
    argv = shlex.split(line)
    argv[0] = str(BIN / "pyinfra") if argv[0] == "pyinfra" else sys.executable if argv[0] == "python" else argv[0]
    # The README's note for the site: HF_ENDPOINT is the simulated Hub (site up prints it).
    env = {**os.environ, "HF_ENDPOINT": site["hub"]}
    r = subprocess.run(argv, cwd=REPO, input=stdin, capture_output=True, text=True, timeout=900, env=env)
    assert "Traceback" not in r.stdout + r.stderr, (r.stdout + r.stderr)[-6000:]
    return r


def test_readme_use_section_on_the_standing_site(site):
    commands = use_commands()
    assert [c.split()[:3] for c in commands] == [
        ["pyinfra", "inventory/gpu.py", "deploy.py"], ["python", "-m", "glmfleet.weights.head"],
        ["pyinfra", "inventory/gpu.py", "deploy.py"], ["pyinfra", "inventory/gpu.py", "tasks/status.py"]]
    readiness, head, deploy, status = commands

    # 1. Readiness: the 2x H100 host fails (non-zero exit); pyinfra asks whether to go on
    #    past it and then to run (nothing to run): Enter, Enter.
    r = run(readiness, site, None, stdin="\n\n")
    err = r.stderr
    assert r.returncode != 0
    table = err[err.index("Preflight readiness"):]
    assert re.search(r"^gpu-h100 .* FAIL ", table, re.M) and re.search(r"^gpu-01 .* (PASS|WARN)", table, re.M)

    # 2. The commit to pin, from the (simulated) Hub.
    r = run(head, site, None)
    revision = r.stdout.strip()
    assert r.returncode == 0 and revision == site["revision"], r.stderr

    # 3. Deploy without -y: go on past the dropped host, then Enter at "Press enter to execute".
    r = run(deploy, site, revision, stdin="\n\n")
    out = r.stdout + r.stderr
    assert "Detected changes" in out and "Press enter to execute" in out
    for name in ("gpu-01", "gpu-02"):
        assert f"[{name}] service: PASS" in out, out[-6000:]
    summary = out[out.rindex("Fleet summary"):]
    for name in ("gpu-01", "gpu-02"):
        row = next(line for line in summary.splitlines() if line.startswith(name + " "))
        assert " ok " in row and f"http://{site['hosts'][name]['address']}:8000/v1" in row, row
    assert r.returncode != 0  # gpu-h100 failed preflight, as the demo says

    # 4. Status, as from cron: no terminal, no answer; gpu-h100 serves nothing: exit 1.
    r = subprocess.run(shlex.split(status.replace("inventory/gpu.py", site["inventory"]).replace(
        "pyinfra", str(BIN / "pyinfra"), 1)), cwd=REPO, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr and "Press enter" not in r.stderr
    assert "Service status (2 of 3 hosts serving)" in r.stderr, r.stderr[-4000:]
    for name in ("gpu-01", "gpu-02"):
        row = next(line for line in r.stderr.splitlines() if line.startswith(name + " "))
        assert "running" in row and "answering" in row and revision[:12] in row, row
    assert r.returncode == 1
