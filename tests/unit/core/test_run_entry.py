"""What a pyinfra run of this project checks before it connects: settings only for this
project's deploy files (pyinfra's own `exec` works ad hoc), the ssh_key file of every host,
and how an unreachable host is described (the real pyinfra CLI, no host needed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from glmfleet import report

REPO = Path(__file__).resolve().parents[3]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")


def pyinfra(tmp_path, hosts: str, *args):
    inv = tmp_path / "inv.py"
    inv.write_text(f"hosts = [{hosts}]\n")
    r = subprocess.run([PYINFRA, "-y", str(inv), *args], cwd=REPO, capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout + r.stderr


def test_missing_ssh_key_is_a_settings_error_naming_host_and_path(tmp_path):
    rc, out = pyinfra(tmp_path, "('gpu-07', {'ssh_hostname': '127.0.0.1', 'ssh_key': '/nonexistent/id_gpu'})",
                      "deploy.py", "--data", "preflight_only=true")
    assert rc != 0 and "Traceback" not in out
    assert "gpu-07: setting 'ssh_key' = '/nonexistent/id_gpu': no such file" in out
    assert "no host was contacted" in out and "Connected" not in out


def test_unreadable_ssh_key_is_named(tmp_path):
    key = tmp_path / "id_dir"
    key.mkdir()
    rc, out = pyinfra(tmp_path, f"('gpu-08', {{'ssh_hostname': '127.0.0.1', 'ssh_key': {str(key)!r}}})",
                      "deploy.py", "--data", "preflight_only=true")
    assert rc != 0 and "Traceback" not in out
    assert f"gpu-08: setting 'ssh_key' = {str(key)!r}: {key} is not a file" in out


def test_pyinfra_exec_is_not_held_to_the_deploy_settings(tmp_path):
    # An unknown key would stop a deploy; an ad-hoc command is pyinfra's own business.
    rc, out = pyinfra(tmp_path, "('box', {'ssh_hostname': '127.0.0.1', 'ssh_port': 1, 'my_own_note': 1})",
                      "exec", "--", "hostname")
    assert "invalid settings" not in out and "Traceback" not in out
    rc, out = pyinfra(tmp_path, "('box', {'ssh_hostname': '127.0.0.1', 'ssh_port': 1, 'my_own_note': 1})",
                      "deploy.py")
    assert rc != 0 and "unknown setting 'my_own_note'" in out


def test_run_kind_from_the_command_line():
    from glmfleet.settings import run_kind

    assert run_kind(["inventory/gpu.py", "deploy.py", "--data", "x=1"], str(REPO)) == "deploy"
    assert run_kind(["inv.py", "tasks/weights.py"], str(REPO)) == "deploy"
    assert run_kind(["inv.py", "tasks/status.py"], str(REPO)) == "status"
    assert run_kind([str(REPO / "tasks/status.py")], "/") == "status"
    assert run_kind(["inv.py", "exec", "--", "hostname"], str(REPO)) is None


def test_ssh_failures_are_named():
    cases = {
        "Could not connect ([Errno 111] Connection refused)": "connection refused",
        "Could not connect (timed out)": "timed out",
        "Could not resolve hostname ([Errno -2] Name or service not known)": "does not resolve (DNS)",
        "Authentication error (username=root, key=/k)": "authentication failed",
    }
    for message, what in cases.items():
        reason, remedy = report.ssh_failure(message)
        assert reason.startswith("unreachable: ") and what in reason and message in reason
        assert remedy


def test_missing_revision_names_the_hubs_head_commit_and_never_uses_it(tmp_path):
    from testbed.doubles.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, HubDouble, make_checkpoint

    make_checkpoint(tmp_path / "ckpt", shards=1, shard_bytes=1024)
    with HubDouble(tmp_path / "ckpt", repo_id=DEFAULT_REPO_ID, revision=DEFAULT_REVISION) as hub:
        rc, out = pyinfra(tmp_path, f"('gpu-09', {{'ssh_hostname': '127.0.0.1', 'ssh_port': 1, "
                                    f"'hf_endpoint': {hub.url!r}}})", "deploy.py")
    assert rc != 0 and "Traceback" not in out and "no host was contacted" in out
    assert "gpu-09: setting 'model_revision' = None is not allowed" in out
    assert f"is {DEFAULT_REVISION}" in out and f"--data model_revision={DEFAULT_REVISION}" in out
    assert "never pins it by itself" in out and "Connected" not in out


def test_a_deploy_file_of_ones_own_is_a_deploy():
    from glmfleet.settings import run_kind

    assert run_kind(["/tmp/inv.py", "/tmp/my-deploy.py", "--data", "x=1"], "/") == "deploy"
    assert run_kind(["/tmp/inv.py", "exec", "--", "python3", "x.py"], "/") is None
    assert run_kind(["inv.py", "exec", "--", "cat", "deploy.py"], str(REPO)) is None


def test_no_host_reachable_still_gives_the_table_and_report(tmp_path):
    report_path = tmp_path / "report.json"
    rc, out = pyinfra(tmp_path, "('gpu-10', {'ssh_hostname': '127.0.0.1', 'ssh_port': 1}), "
                                "('gpu-11', {'ssh_hostname': 'gpu-11.invalid'})",
                      "deploy.py", "--data", "preflight_only=true", "--data", f"preflight_report={report_path}")
    assert rc != 0 and "Traceback" not in out
    table = out[out.index("Preflight readiness"):]
    assert re.search(r"^gpu-10 .*FAIL +unreachable: SSH connection refused", table, re.M), table
    assert re.search(r"^gpu-11 .*FAIL +unreachable: SSH: the host name does not resolve", table, re.M), table
    import json

    hosts = json.loads(report_path.read_text())["hosts"]
    assert hosts["gpu-10"]["verdict"] == "FAIL" and "refused" in hosts["gpu-10"]["checks"][0]["reason"]
    assert "is sshd running" in hosts["gpu-10"]["checks"][0]["remedy"]


def test_status_with_no_host_reachable_names_each_reason_and_never_prompts(tmp_path):
    inv = tmp_path / "inv.py"
    inv.write_text("hosts = [('gpu-12', {'ssh_hostname': '127.0.0.1', 'ssh_port': 1})]\n")
    r = subprocess.run([PYINFRA, str(inv), "tasks/status.py"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)  # no -y, no terminal: as from cron
    assert r.returncode != 0 and "Traceback" not in r.stderr and "Press enter" not in r.stderr
    assert "Service status (0 of 1 hosts serving)" in r.stderr
    assert re.search(r"^gpu-12 +unreachable: SSH connection refused", r.stderr, re.M)
