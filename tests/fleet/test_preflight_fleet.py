"""Preflight against the simulated fleet: real SSH, real pyinfra, real nvidia-ml-py; the GPU
driver library (NVML double) and the Hub (Hub double) are the only stand-ins."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testbed import rootfs
from testbed.doubles import nvml
from testbed.doubles.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, HubDouble, make_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    make_checkpoint(root, shards=2, shard_bytes=2**20)
    with HubDouble(root, repo_id=DEFAULT_REPO_ID, revision=DEFAULT_REVISION) as h:
        yield h


def run_pyinfra(pyinfra_cli, inventory, deploy="deploy.py", *args):
    proc = subprocess.run([pyinfra_cli, str(inventory), str(deploy), "-y", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def checks_by_name(report, host):
    return {c["name"]: c for c in report["hosts"][host]["checks"]}


# Profiles of the NVML double, plus hosts broken in other ways: a full disk, no python3.
FLEET = {
    "pf-good": dict(profile="rtx6000x4"),
    "pf-h100": dict(profile="h100x2"),
    "pf-48gb": dict(profile="one48gb"),
    "pf-olddrv": dict(profile="olddriver"),
    "pf-nodrv": dict(profile="nodriver"),
    "pf-full": dict(profile="rtx6000x4", hostfs_size="16m"),
    "pf-nopy": dict(profile="rtx6000x4", no_python=True),
}


@pytest.fixture(scope="module")
def preflight_fleet(fleet, hub, pyinfra_cli, tmp_path_factory):
    """Every host above, and one preflight-only run over all of them."""
    work = tmp_path_factory.mktemp("preflight")
    names = list(FLEET)
    for name, spec in FLEET.items():
        fleet.add_host(name, files=nvml.host_files(spec["profile"]), shm_size="32g",
                       hostfs_size=spec.get("hostfs_size"))
    fleet.start(*names)
    fleet["pf-nopy"].exec("rm -f /usr/bin/python3 /usr/bin/python3.*")
    data = {n: {"model_revision": DEFAULT_REVISION, "hf_endpoint": hub.url}
            for n in names}
    data["pf-full"]["weights_dir"] = "/mnt/llm_models/GLM"  # /mnt is the host's 16 MB disk
    inventory = fleet.write_inventory(work / "inventory.py", hosts=names, host_data=data)
    report_path = work / "report.json"
    rc, out, err = run_pyinfra(pyinfra_cli, inventory, "deploy.py", "--data",
                               "preflight_only=true", "--data", f"preflight_report={report_path}")
    assert report_path.exists(), f"pyinfra wrote no report (exit {rc}):\n{err[-4000:]}"
    yield {"rc": rc, "out": out, "err": err, "report": json.loads(report_path.read_text()),
           "inventory": inventory, "work": work}
    for name in names:
        fleet.remove(name)


def test_target_box_passes(preflight_fleet):
    checks = checks_by_name(preflight_fleet["report"], "pf-good")
    assert preflight_fleet["report"]["hosts"]["pf-good"]["verdict"] in ("PASS", "WARN")
    for name in ("gpu_count", "gpu_compute_capability", "gpu_memory", "driver",
                 "open_kernel_module", "disk", "os", "port", "manifest"):
        assert checks[name]["status"] == "PASS", checks[name]
    gpus = preflight_fleet["report"]["hosts"]["pf-good"]["facts"]["gpu"]["gpus"]
    assert [g["name"] for g in gpus] == ["NVIDIA RTX PRO 6000 Blackwell Server Edition"] * 4


def test_two_h100_fail_on_count_capability_and_memory(preflight_fleet):
    checks = checks_by_name(preflight_fleet["report"], "pf-h100")
    for name in ("gpu_count", "gpu_compute_capability", "gpu_memory"):
        assert checks[name]["status"] == "FAIL"
    assert "2 visible" in checks["gpu_count"]["reason"]
    assert "9.0" in checks["gpu_compute_capability"]["reason"]


def test_one_small_gpu_is_named(preflight_fleet):
    checks = checks_by_name(preflight_fleet["report"], "pf-48gb")
    assert checks["gpu_memory"]["status"] == "FAIL"
    assert "GPU 2" in checks["gpu_memory"]["reason"]
    assert "GPU 0" not in checks["gpu_memory"]["reason"]


def test_old_driver_fails(preflight_fleet):
    checks = checks_by_name(preflight_fleet["report"], "pf-olddrv")
    assert checks["driver"]["status"] == "FAIL"
    assert "595.45.04" in checks["driver"]["remedy"]


def test_no_driver_fails_with_remedy_not_traceback(preflight_fleet):
    checks = checks_by_name(preflight_fleet["report"], "pf-nodrv")
    assert checks["gpu_probe"]["status"] == "FAIL"
    assert "driver" in checks["gpu_probe"]["reason"].lower()
    assert "Traceback" not in preflight_fleet["err"]


def test_no_python_fails_with_remedy(preflight_fleet):
    checks = checks_by_name(preflight_fleet["report"], "pf-nopy")
    assert checks["gpu_probe"]["status"] == "FAIL"
    assert "python3" in checks["gpu_probe"]["reason"] + checks["gpu_probe"]["remedy"]


def test_full_disk_fails(preflight_fleet):
    checks = checks_by_name(preflight_fleet["report"], "pf-full")
    assert checks["disk"]["status"] == "FAIL"
    assert "/mnt" in checks["disk"]["reason"]


def test_report_table_and_exit_status(preflight_fleet):
    assert preflight_fleet["rc"] != 0  # some hosts fail
    err = preflight_fleet["err"]
    assert "Preflight readiness" in err
    for name in FLEET:
        assert name in err
    verdicts = {h: v["verdict"] for h, v in preflight_fleet["report"]["hosts"].items()}
    assert {h for h, v in verdicts.items() if v == "FAIL"} == set(FLEET) - {"pf-good"}


def test_preflight_only_leaves_nothing_behind(fleet, make_host, hub, pyinfra_cli, tmp_path):
    host = make_host("pf-clean", files=nvml.host_files("rtx6000x4"), shm_size="32g")
    upper = Path(host.dir) / "upper"

    def snapshot():
        # left out: what logging in with sudo writes by itself (the journal, sudo's
        # ~/.sudo_as_admin_successful), not the deploy
        files = sorted(str(p.relative_to(upper)) + f":{p.stat().st_mtime_ns}"
                       for p in upper.rglob("*") if not p.is_symlink()
                       and not p.relative_to(upper).as_posix().startswith(("var/log/", f"home/{rootfs.LOGIN_USER}")))
        procs = host.exec("exec ps -e -o pid=,comm=").stdout.split("\n")  # no sh of our own
        return files, sorted(p for p in procs if p.strip() and " ps" not in p)

    inventory = fleet.write_inventory(tmp_path / "inv.py", hosts=["pf-clean"],
                                      host_data={"pf-clean": {"hf_endpoint": hub.url,
                                                              "model_revision": DEFAULT_REVISION}})
    before = snapshot()
    rc, _, err = run_pyinfra(pyinfra_cli, inventory, "deploy.py", "--data", "preflight_only=true",
                             "--data", f"preflight_report={tmp_path / 'r.json'}")
    assert rc == 0, err
    assert snapshot() == before


def test_failing_hosts_dropped_and_passing_hosts_proceed(fleet, preflight_fleet, pyinfra_cli):
    """A full run: hosts failing preflight get no operation at all; the rest go on."""
    deploy = preflight_fleet["work"] / "after_preflight.py"
    deploy.write_text(
        "import io\n"
        "from pyinfra import host, local, state\n"
        "from pyinfra.operations import files\n"
        "from glmfleet import runctx\n"
        "local.include('tasks/preflight.py')\n"
        "if runctx.passed_preflight(state, host):\n"
        "    files.put(name='after preflight', src=io.StringIO('proceeded'),\n"
        "              dest='/root/after-preflight')\n")
    rc, out, err = run_pyinfra(pyinfra_cli, preflight_fleet["inventory"], deploy,
                               "--data", f"preflight_report={preflight_fleet['work'] / 'r2.json'}")
    assert rc != 0  # failed hosts make the run fail
    assert "Dropping 6 host(s) that failed preflight" in err
    assert (fleet["pf-good"].root / "root/after-preflight").read_text() == "proceeded"
    for name in set(FLEET) - {"pf-good"}:
        assert not (fleet[name].root / "root/after-preflight").exists(), name


def test_bad_settings_refused_before_any_connection(fleet, make_host, pyinfra_cli, tmp_path):
    make_host("pf-bad")
    inventory = fleet.write_inventory(tmp_path / "inv.py", hosts=["pf-bad"],
                                      host_data={"pf-bad": {"decode_context_parallel_size": 3}})
    fleet.stop("pf-bad")  # unreachable: a connection attempt would fail differently
    rc, _, err = run_pyinfra(pyinfra_cli, inventory, "deploy.py")
    assert rc != 0
    assert "pf-bad: setting 'decode_context_parallel_size' = 3" in err
    assert "one of 1, 2, 4" in err and "Connecting" not in err


def test_unreachable_hosts_stay_in_the_table_and_report_with_the_ssh_reason(fleet, preflight_fleet,
                                                                            hub, pyinfra_cli):
    good = fleet["pf-good"]
    base = {**fleet.ssh_data(good), "model_revision": DEFAULT_REVISION, "hf_endpoint": hub.url}
    hosts = {"pf-good": base,
             "gone-refused": {**base, "ssh_port": 2},
             "gone-dns": {**base, "ssh_hostname": "gone.invalid"},
             "gone-auth": {**base, "ssh_user": "nosuchuser"}}
    work = preflight_fleet["work"]
    inventory = work / "inv-unreachable.py"
    inventory.write_text(f"hosts = {list(hosts.items())!r}\n")
    report_path = work / "unreachable.json"
    rc, out, err = run_pyinfra(pyinfra_cli, inventory, "deploy.py", "--data", "preflight_only=true",
                               "--data", f"preflight_report={report_path}")
    assert "Traceback" not in out + err
    table = err[err.index("Preflight readiness"):]
    expect = {"gone-refused": "connection refused", "gone-dns": "does not resolve (DNS)",
              "gone-auth": "authentication failed"}
    for name, what in expect.items():
        row = next(line for line in table.splitlines() if line.startswith(name + " "))
        assert "FAIL" in row and "unreachable: SSH" in row and what in row, row
    assert " FAIL " not in next(line for line in table.splitlines() if line.startswith("pf-good "))
    report = json.loads(report_path.read_text())
    for name, what in expect.items():
        entry = report["hosts"][name]
        assert entry["verdict"] == "FAIL" and what in entry["checks"][0]["reason"]
        assert entry["checks"][0]["remedy"]
    assert report["hosts"]["pf-good"]["verdict"] in ("PASS", "WARN")
