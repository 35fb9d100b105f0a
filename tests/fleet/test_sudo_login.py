"""A non-root login with passwordless sudo, run with `--sudo`, exactly as the README's example
inventory says (ssh_user is the cloud image's user; no escalation in the inventory itself).

Regression test: the weights stage used to run its own commands (the Python packages'
install, the job start, polling, the fan-out copy) without pyinfra's `--sudo`, so it failed
on every such host with "mkdir: cannot create directory '/opt/glmfleet/pylib': Permission
denied" while preflight and Docker passed. Two hosts with fan-out: the seed downloads from
the Hub double; the other gets the files over SFTP as the login user and renamed into the
root-owned weights dir under sudo.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from testbed import rootfs
from testbed.doubles import nvml
from testbed.doubles.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, HubDouble, make_checkpoint

REPO = Path(__file__).resolve().parents[2]
WDIR = "/srv/llm/GLM"
DEPLOY = ("from pyinfra import host, local, state\n"
          "from glmfleet import runctx\n"
          "local.include('tasks/preflight.py')\n"
          "if runctx.passed_preflight(state, host):\n"
          "    local.include('tasks/weights.py')\n")


def test_weights_stage_as_sudo_user_with_sudo_flag(fleet, pyinfra_cli, tmp_path):
    ckpt = tmp_path / "repo"
    make_checkpoint(ckpt, shards=2, shard_bytes=256 << 10, seed=11)
    names = ["su-a", "su-b"]
    hubs = []
    try:
        rows = []
        for n in names:
            fleet.add_host(n, files=nvml.host_files("rtx6000x4"), shm_size="32g")
            fleet.start(n)
            h = fleet[n]
            hub = HubDouble(ckpt, repo_id=DEFAULT_REPO_ID, revision=DEFAULT_REVISION,
                            host=h.gateway, port=0).start()
            hubs.append(hub)
            data = {k: v for k, v in fleet.ssh_data(h).items() if k != "_sudo"}
            data.update(model_revision=DEFAULT_REVISION, hf_endpoint=hub.url,
                        weights_dir=WDIR, weights_fanout=True, weights_fanout_via="controller",
                        weights_progress_interval_s=1)  # the relay: its copies under sudo
            rows.append(f"    ({n!r}, {data!r}),\n")
        inventory = tmp_path / "inv.py"
        inventory.write_text("gpu = [\n" + "".join(rows) + "]\n")
        deploy = tmp_path / "deploy_weights.py"
        deploy.write_text(DEPLOY)
        p = subprocess.run([pyinfra_cli, str(inventory), str(deploy), "-y", "--sudo", "--data",
                            f"preflight_report={tmp_path / 'preflight.json'}"],
                           cwd=REPO, capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
        out = p.stdout + p.stderr
        assert p.returncode == 0, out[-5000:]
        assert "Permission denied" not in out
        for n in names:
            h = fleet[n]
            assert (h.root / WDIR.lstrip("/") / ".glmfleet/VERIFIED").read_text().strip() == DEFAULT_REVISION
            assert (h.root / "opt/glmfleet/pylib").stat().st_uid == 0  # made under sudo, as root
            login = h.exec(f"stat -c %U {WDIR}/model-00001-of-00002.safetensors").stdout.strip()
            assert login == "root", n  # a fan-out copy is owned like the weights dir
        lines = {n: next(ln for ln in out.splitlines() if ln.startswith(f"[{n}] weights: "))
                 for n in names}
        assert "PASS" in lines["su-a"] and "PASS" in lines["su-b"], lines
        assert "copied from su-a over SSH" in lines["su-b"], lines
        # the login really was the unprivileged user
        r = subprocess.run(h.ssh_argv("id -u", user=rootfs.LOGIN_USER), capture_output=True, text=True)
        assert r.stdout.strip() == str(rootfs.LOGIN_UID), r.stderr
    finally:
        for hub in hubs:
            hub.stop()
        for n in names:
            if n in fleet.hosts:
                fleet.remove(n)
