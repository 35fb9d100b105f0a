"""Preflight checks on passing and failing input, and the host-facts script and parser."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from glmfleet.preflight import checks, cuda
from glmfleet.preflight.checks import Check, run_checks
from glmfleet.preflight.gpu import parse_probe_output
from glmfleet.preflight.host import HostFacts, host_facts_command, parse_host_facts, proc_net_address
from glmfleet.settings import load_defaults, validate

DATA = Path(__file__).parent.parent / "data"
GIB = 2**30
OUR_ID = "4f1c2a9be0d8e7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2918070605040302010ff"


@pytest.fixture
def settings():
    return validate("test", {**load_defaults(), "preflight_only": True})


def with_(settings, **changes):
    return dataclasses.replace(settings, **changes)


@pytest.fixture
def gpu():
    """A passing probe result: 4x RTX PRO 6000 (recorded from the fake)."""
    return parse_probe_output((DATA / "probe-rtx6000x4.json").read_text().replace("\n", " "))


@pytest.fixture
def host():
    """A passing host: Ubuntu 24.04 with our service already running."""
    return parse_host_facts((DATA / "host-ubuntu2404.txt").read_text())


def named(found, name) -> Check:
    return next(c for c in found if c.name == name)


# --- verdict and first failure ----------------------------------------------------------------

def test_verdict_and_first_failure():
    p, w, f = Check("a", "PASS", ""), Check("b", "WARN", ""), Check("c", "FAIL", "why", "fix")
    assert checks.verdict([]) == "PASS" and checks.verdict([p]) == "PASS"
    assert checks.verdict([p, w]) == "WARN" and checks.verdict([w, f, p]) == "FAIL"
    assert checks.first_failure([p, w]) is None and checks.first_failure([w, f, f]) is f
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.status = "PASS"


def test_the_target_box_passes(gpu, host, settings):
    found = run_checks(gpu, host, settings, weights_total_bytes=313_046_722_560)
    assert [c for c in found if c.status != "PASS"] == []
    # Only an API opened on purpose is worth a word on a fully set-up box.
    found = run_checks(gpu, host, with_(settings, api_key="open"), weights_total_bytes=313_046_722_560)
    assert [c.name for c in found if c.status != "PASS"] == ["api_exposure"]
    assert len({c.name for c in found}) == len(found) == 19  # compose and the toolkit are part of the docker check


# --- GPU checks ---------------------------------------------------------------------------

def test_gpu_count(gpu, settings):
    assert checks.check_gpu_count(gpu, settings).status == "PASS"
    three = copy.deepcopy(gpu)
    three["gpus"].pop()
    three["count"] = 3
    c = checks.check_gpu_count(three, settings)
    assert c.status == "FAIL" and "4 GPUs required, 3 visible" in c.reason
    five = with_(settings, gpu_count=5)
    assert checks.check_gpu_count(gpu, five).status == "FAIL"  # exactly, not at least


def test_compute_capability_names_the_gpu(gpu, settings):
    assert checks.check_compute_capability(gpu, settings).status == "PASS"
    gpu["gpus"][3]["cc"] = [8, 9]
    gpu["gpus"][3]["name"] = "NVIDIA RTX 6000 Ada Generation"
    gpu["gpus"][1]["cc"] = None
    gpu["gpus"][1]["errors"] = {"cc": "NVMLError_Unknown: Unknown Error"}
    c = checks.check_compute_capability(gpu, settings)
    assert c.status == "FAIL"
    assert "GPU 3 (NVIDIA RTX 6000 Ada Generation) is 8.9" in c.reason
    assert "GPU 1" in c.reason and "Unknown Error" in c.reason and "GPU 0" not in c.reason


def test_gpu_memory_in_gib_as_nvml_reports(gpu, settings):
    assert checks.check_gpu_memory(gpu, settings).status == "PASS"  # 95.6 GiB >= 95
    assert checks.check_gpu_memory(gpu, with_(settings, gpu_min_memory_gib=96.0)).status == "FAIL"
    gpu["gpus"][0]["mem_total"] = None
    c = checks.check_gpu_memory(gpu, settings)
    assert c.status == "FAIL" and "GPU 0" in c.reason and "unknown" in c.reason


def test_driver(gpu, settings):
    c = checks.check_driver(gpu, settings)
    assert c.status == "PASS" and "supports CUDA 13.2" in c.reason
    gpu["cuda_driver"] = 13010
    gpu["driver"] = "590.44.01"
    c = checks.check_driver(gpu, settings)
    assert c.status == "FAIL" and "595.45.04" in c.remedy and "forward compatibility" in c.remedy
    assert checks.check_driver(gpu, with_(settings, image_cuda_version="13.1")).status == "PASS"
    # No CUDA version from NVML: fall back to the driver version table.
    gpu["cuda_driver"] = None
    gpu["driver"] = "596.10.01"
    assert checks.check_driver(gpu, settings).status == "PASS"
    gpu["driver"] = "580.95.05"
    assert checks.check_driver(gpu, settings).status == "FAIL"
    # A CUDA version missing from the table: the remedy says what to look for instead.
    c = checks.check_driver(gpu, with_(settings, image_cuda_version="14.0"))
    assert c.status == "FAIL" and "supports CUDA 14.0" in c.remedy


def test_open_kernel_module(gpu, settings):
    assert checks.check_open_kernel_module(gpu, settings).status == "PASS"
    gpu["open_kernel_module"] = None
    assert checks.check_open_kernel_module(gpu, settings).status == "WARN"
    gpu["open_kernel_module"] = False
    assert checks.check_open_kernel_module(gpu, settings).status == "FAIL"
    relaxed = with_(settings, gpu_require_open_kernel_module=False)
    assert checks.check_open_kernel_module(gpu, relaxed).status == "PASS"


def test_probe_errors_each_fail_with_a_remedy(settings):
    for kind, needle in (("no_driver", "595.45.04"), ("no_python", "python3"),
                         ("init_failed", "nvidia-smi"), ("driver_not_loaded", "modprobe")):
        remedy = {"no_python": "install python3", "init_failed": "check nvidia-smi",
                  "driver_not_loaded": "modprobe nvidia"}.get(kind)
        facts = parse_probe_output(json.dumps(
            {"ok": False, "error": {"kind": kind, "message": "m", "remedy": remedy}}))
        found = run_checks(facts, {}, settings)
        first = checks.first_failure(found)
        assert first.name == "gpu_probe" and needle in first.remedy, kind
        # NVML-dependent checks are skipped rather than failing on missing data.
        assert not {"gpu_count", "gpu_memory", "driver"} & {c.name for c in found}
    assert run_checks(None, None, settings)[0].status == "FAIL"


def test_foreign_gpu_process_fails_but_our_service_passes(gpu, host, settings):
    gpu["gpus"][2]["procs"] = [{"pid": 31337, "used_memory": 90 * GIB, "name": "python3",
                                "container_id": OUR_ID}]
    c = checks.check_gpu_processes(gpu, host, settings)
    assert c.status == "PASS" and "our own" in c.reason
    gpu["gpus"][0]["procs"] = [{"pid": 777, "used_memory": 2 * GIB, "name": "Xorg", "container_id": None}]
    c = checks.check_gpu_processes(gpu, host, settings)
    assert c.status == "FAIL" and "pid 777 (Xorg) holds 2.0 GiB on GPU 0" in c.reason
    assert "31337" not in c.reason
    # Without our container running, the same vLLM process is someone else's.
    c = checks.check_gpu_processes(gpu, {**host, "containers": []}, settings)
    assert "pid 31337" in c.reason
    gpu["gpus"][0]["procs"] = None
    gpu["gpus"][2]["procs"] = []
    assert checks.check_gpu_processes(gpu, host, settings).status == "WARN"


def test_persistence_mode(gpu):
    assert checks.check_persistence(gpu).status == "PASS"
    gpu["gpus"][1]["persistence"] = False
    c = checks.check_persistence(gpu)
    assert c.status == "WARN" and "GPU 1" in c.reason and "nvidia-smi -pm 1" in c.remedy


def test_pcie_link(gpu):
    assert checks.check_pcie_link(gpu).status == "PASS"
    gpu["gpus"][3]["pcie_width"] = 8
    c = checks.check_pcie_link(gpu)
    assert c.status == "WARN" and "GPU 3" in c.reason and "x8 of gen 5 x16" in c.reason
    gpu["gpus"][3]["pcie_width"] = None  # unknown is not slow, nor at its maximum
    c = checks.check_pcie_link(gpu)
    assert c.status == "WARN" and "unknown" in c.reason and "below" not in c.reason
    gpu["gpus"][0]["pcie_gen"] = 1
    assert checks.check_pcie_link(gpu).status == "WARN"


# --- host checks --------------------------------------------------------------------------

def test_os(host, settings):
    assert checks.check_os(host, settings).status == "PASS"
    deb = parse_host_facts((DATA / "host-debian12.txt").read_text())
    assert checks.check_os(deb, settings).status == "PASS"
    c = checks.check_os({**host, "os": "ubuntu 20.04", "os_pretty_name": "Ubuntu 20.04.6 LTS"}, settings)
    assert c.status == "FAIL" and "Ubuntu 20.04.6" in c.reason and "ubuntu 24.04" in c.remedy
    assert checks.check_os({**host, "os": None}, settings).status == "FAIL"
    assert checks.check_os({**host, "os": "rocky 9"}, with_(settings, supported_os=("Rocky  9",))).status == "PASS"


def test_python_against_the_pinned_hub(host, settings):
    """The bar is huggingface_hub's own Requires-Python, read from its installed metadata."""
    from importlib import metadata
    hub = checks.hub_python_requirement()
    assert hub == (metadata.version("huggingface_hub"),
                   metadata.metadata("huggingface_hub")["Requires-Python"])
    c = checks.check_python(host, hub)
    assert c.status == "PASS" and c.reason == "python3 3.12.3 (cpython; x86_64, glibc 2.39)"
    jammy = parse_host_facts((DATA / "host-ubuntu2204.txt").read_text())
    assert (jammy["python"], jammy["glibc"], jammy["arch"]) == ("3.10.12", "2.35", "x86_64")
    assert checks.check_python(jammy, hub).status == "PASS"
    old = checks.check_python({**host, "python": "3.9.2"}, ("2.4.0", ">=3.10.0"))
    assert old.status == "FAIL" and "3.9.2" in old.reason and "huggingface_hub 2.4.0" in old.reason
    assert ">=3.10.0" in old.reason and ">=3.10.0" in old.remedy
    none = checks.check_python({**host, "python": None}, hub)
    assert none.status == "FAIL" and "apt-get install -y python3" in none.remedy
    pypy = checks.check_python({**host, "python_implementation": "pypy"}, hub)
    assert pypy.status == "FAIL" and "CPython" in pypy.reason
    found = run_checks(None, {**host, "python": "3.8.10"}, settings)
    assert named(found, "python").status == "FAIL"


def test_disk_counts_bytes_present_and_margin(host, settings):
    total = 313 * 10**9
    base = {**host, "weights_fs_mount": "/mnt", "weights_present_bytes": 0}
    need = total + 20 * GIB
    assert checks.check_disk({**base, "weights_fs_free_bytes": need}, settings, total).status == "PASS"
    c = checks.check_disk({**base, "weights_fs_free_bytes": need - 1}, settings, total)
    assert c.status == "FAIL" and "still to download" in c.reason and "/mnt" in c.remedy
    # Bytes already there need no new space.
    half = {**base, "weights_present_bytes": total // 2, "weights_fs_free_bytes": total // 2 + 20 * GIB}
    assert checks.check_disk(half, settings, total).status == "PASS"
    done = {**base, "weights_present_bytes": total, "weights_fs_free_bytes": 20 * GIB}
    assert checks.check_disk(done, settings, total).status == "PASS"
    assert checks.check_disk({**base, "weights_fs_free_bytes": None}, settings, total).status == "FAIL"


def test_disk_without_manifest_uses_the_recipe_estimate(host, settings):
    assert checks.ESTIMATED_WEIGHTS_BYTES == 313 * 10**9
    c = checks.check_disk({**host, "weights_present_bytes": 0,
                           "weights_fs_free_bytes": 300 * GIB}, settings)
    assert c.status == "FAIL" and "estimated at 313 GB" in c.reason
    c = checks.check_disk({**host, "weights_present_bytes": 0, "weights_fs_free_bytes": 400 * GIB},
                          settings, weights_total_bytes=300 * GIB)
    assert c.status == "PASS" and "estimated" not in c.reason


def test_shm(host, settings):
    assert checks.check_shm(host, settings).status == "PASS"
    c = checks.check_shm({**host, "shm_total_bytes": 8 * GIB}, settings)
    assert c.status == "WARN" and "16 GiB" in c.reason
    assert checks.check_shm({**host, "shm_total_bytes": None}, settings).status == "WARN"
    assert checks.check_shm({**host, "shm_total_bytes": 8 * GIB}, with_(settings, min_shm_gib=0.0)).status == "PASS"


def test_port(host, settings):
    c = checks.check_port(host, settings)  # our vLLM listens
    assert c.status == "PASS" and "our own" in c.reason
    assert checks.check_port({**host, "port_listeners": []}, settings).reason.endswith("is free")
    foreign = parse_host_facts((DATA / "host-ubuntu2204.txt").read_text())
    c = checks.check_port(foreign, settings)
    assert c.status == "FAIL" and "pid 1234 (nginx)" in c.reason
    # Owner invisible (not root): ours only when our container runs.
    hidden = [{"address": "0.0.0.0", "pid": None, "process": None, "container_id": None}]
    assert checks.check_port({**host, "port_listeners": hidden}, settings).status == "PASS"
    c = checks.check_port({**host, "port_listeners": hidden, "containers": []}, settings)
    assert c.status == "FAIL" and "unknown process" in c.reason


def test_api_exposure(settings, host):
    unset = checks.check_api_exposure(settings)  # the host's own key is kept
    assert unset.status == "PASS" and "kept" in unset.reason
    assert checks.check_api_exposure(settings, "key").status == "PASS"
    for state in ("none", "open"):  # nothing to keep: the service stage will refuse the host
        c = checks.check_api_exposure(settings, state)
        assert c.status == "WARN" and "will refuse" in c.reason
        assert 'api_key = "generate"' in c.remedy and 'api_key = "open"' in c.remedy
    found = run_checks(None, {**host, "api_key_state": "none"}, settings)
    assert named(found, "api_exposure").status == "WARN"
    assert checks.check_api_exposure(with_(settings, api_key="s3cret-key")).status == "PASS"
    opened = with_(settings, api_key="open")
    assert checks.check_api_exposure(opened).status == "WARN"
    for addr in ("127.0.0.1", "::1", "localhost", "127.0.0.53"):
        assert checks.check_api_exposure(with_(opened, bind_address=addr)).status == "PASS", addr
    c = checks.check_api_exposure(with_(opened, bind_address="10.0.0.5"))
    assert c.status == "WARN" and "10.0.0.5:8000" in c.reason


def test_iommu_and_acs(host):
    assert checks.check_iommu(host).status == "PASS"  # iommu=pt, no ACS
    c = checks.check_iommu(parse_host_facts((DATA / "host-ubuntu2204.txt").read_text()))
    assert c.status == "WARN" and "intel_iommu=on" in c.reason and "ACS" in c.reason
    assert "NCCL_P2P_DISABLE=1" in c.reason


def test_sizing(gpu, settings):
    assert checks.check_sizing(gpu, settings).status == "PASS"
    c = checks.check_sizing(gpu, with_(settings, decode_context_parallel_size=2))
    assert c.status == "WARN" and "355k" in c.reason
    c = checks.check_sizing(gpu, with_(settings, decode_context_parallel_size=1, max_model_len=131072))
    assert c.status == "WARN" and "81 tok/s" in c.reason
    c = checks.check_sizing(gpu, with_(settings, decode_context_parallel_size=1))
    assert c.status == "FAIL" and "131072" in c.reason
    assert checks.check_sizing(gpu, with_(settings, max_model_len=300000)).status == "WARN"
    two = copy.deepcopy(gpu)
    two["count"] = 2
    c = checks.check_sizing(two, settings)
    assert c.status == "FAIL" and "tensor_parallel_size 4" in c.reason
    assert checks.check_sizing(gpu, with_(settings, decode_context_parallel_size=3)).status == "FAIL"


RECIPE_WEIGHTS = 313_046_722_560  # bytes, as a manifest of the checkpoint sums them


def test_sizing_leaves_room_for_the_kv_cache_on_the_recipe_box(gpu, settings):
    c = checks.check_sizing(gpu, settings, RECIPE_WEIGHTS)
    # 313.0 GB / 4 = 72.9 GiB per GPU of 95.6 GiB x 0.95 = 90.8 GiB: 17.9 GiB for the KV cache.
    assert c.status == "PASS"
    assert "72.9 GiB per GPU" in c.reason and "90.8 GiB usable" in c.reason and "17.9 GiB left" in c.reason


def test_sizing_refuses_a_tp_too_small_for_the_weights(gpu, settings):
    two = with_(settings, tensor_parallel_size=2, decode_context_parallel_size=2)
    c = checks.check_sizing(gpu, two, RECIPE_WEIGHTS)
    assert c.status == "FAIL"
    assert "313.0 GB of weights / TP 2 = 145.8 GiB per GPU" in c.reason and "-55.0 GiB left" in c.reason
    assert "tensor_parallel_size 4 (the smallest that fits)" in c.remedy
    # The whole run drops the host on it.
    found = run_checks(gpu, None, two, weights_total_bytes=RECIPE_WEIGHTS)
    assert named(found, "sizing").status == "FAIL"
    # Without the manifest the size is the recipe's estimate: worth a warning, not a refusal.
    assert checks.check_sizing(gpu, two).status == "WARN"


def test_sizing_keeps_4_gib_of_kv_cache_per_gpu(gpu, settings):
    # 0.80 of 95.6 GiB = 76.5 GiB; 72.9 GiB of weights leave 3.6 GiB: too little to serve.
    tight = with_(settings, gpu_memory_utilization=0.80)
    c = checks.check_sizing(gpu, tight, RECIPE_WEIGHTS)
    assert c.status == "FAIL" and "3.6 GiB left for the KV cache" in c.reason
    assert "smallest tensor_parallel_size that fits is 5, more than this host's 4 GPUs" in c.remedy
    assert checks.check_sizing(gpu, with_(settings, gpu_memory_utilization=0.85), RECIPE_WEIGHTS).status == "PASS"
    # The smallest GPU decides.
    small = copy.deepcopy(gpu)
    small["gpus"][2]["mem_total"] = 80 * GIB
    c = checks.check_sizing(small, settings, RECIPE_WEIGHTS)
    assert c.status == "FAIL" and "of 76.0 GiB usable (80.0 GiB x" in c.reason


def test_smallest_fitting_tp():
    assert checks.smallest_fitting_tp(RECIPE_WEIGHTS, 102641430528, 0.95) == 4
    assert checks.smallest_fitting_tp(RECIPE_WEIGHTS, 80 * GIB, 0.95) == 5
    assert checks.smallest_fitting_tp(10 * GIB, 80 * GIB, 0.95) == 1
    assert checks.smallest_fitting_tp(10**15, 80 * GIB, 0.95) is None


def test_docker_check_reports_what_it_found(host, settings):
    bare = parse_host_facts((DATA / "host-debian12.txt").read_text())
    assert checks.check_docker(host, settings).status == "PASS"
    c = checks.check_docker(bare, settings)
    assert c.status == "PASS" and "install" in c.reason
    down = parse_host_facts((DATA / "host-ubuntu2204.txt").read_text())
    c = checks.check_docker(down, settings)
    assert c.status == "WARN" and "docker compose 2.21.0" in c.reason


def test_docker_check_fails_on_packages_the_docker_stage_would_refuse(host, settings):
    """The same list the docker stage acts on (glmfleet.docker.plan.conflicting_packages),
    reported before any deploy instead of at the docker stage."""
    c = checks.check_docker(host, settings, ["docker.io", "containerd"])
    assert c.status == "FAIL" and "docker.io, containerd" in c.reason
    assert "docker_remove_conflicts=true" in c.remedy
    c = checks.check_docker(host, with_(settings, docker_remove_conflicts=True), ["docker.io"])
    assert c.status == "WARN" and "removes them" in c.reason
    found = run_checks(None, host, settings, docker_conflicts=["podman-docker"])
    assert named(found, "docker").status == "FAIL"


def test_no_check_passes_whatever_its_input(gpu, host, settings):
    """Compose and the toolkit are reported inside the docker check; no check of their own
    that could never fail."""
    names = {c.name for c in run_checks(gpu, host, settings)}
    assert not {"compose", "nvidia_toolkit"} & names
    assert not hasattr(checks, "check_compose") and not hasattr(checks, "check_nvidia_toolkit")


def test_unknown_values_are_warn_with_the_reason(gpu, host, settings):
    gpu["gpus"][2]["persistence"] = None
    gpu["gpus"][2].setdefault("errors", {})["persistence"] = "NVMLError_NotSupported"
    c = checks.check_persistence(gpu)
    assert c.status == "WARN" and "unknown" in c.reason and "NotSupported" in c.reason
    gpu["gpus"][1]["pcie_gen_max"] = None
    c = checks.check_pcie_link(gpu)
    assert c.status == "WARN" and "unknown" in c.reason
    c = checks.check_shm({**host, "shm_total_bytes": None, "shm_fstype": "tmpfs"}, settings)
    assert c.status == "WARN" and "not a tmpfs" not in c.reason and "could not measure" in c.reason
    c = checks.check_shm({**host, "shm_fstype": "ext4"}, settings)
    assert c.status == "WARN" and "ext4" in c.reason


def test_incomplete_host_facts_fail_once(gpu, settings):
    found = run_checks(gpu, parse_host_facts("uid=0\n"), settings)
    assert named(found, "host_facts").status == "FAIL"
    assert not {"os", "disk", "port", "shm", "docker"} & {c.name for c in found}


def test_first_failure_order_puts_hardware_first(gpu, settings):
    gpu["gpus"][0]["cc"] = [9, 0]
    foreign = parse_host_facts((DATA / "host-ubuntu2204.txt").read_text())
    found = run_checks(gpu, foreign, settings)
    assert checks.first_failure(found).name == "gpu_compute_capability"
    assert {c.name for c in found if c.status == "FAIL"} == {"gpu_compute_capability", "disk", "port"}


def test_cuda_table():
    assert cuda.cuda_int("13.2") == 13020 and cuda.cuda_text(12080) == "12.8"
    assert cuda.min_driver("13.0") == "580.65.06" and cuda.min_driver("13.1") == "590.44.01"
    assert cuda.min_driver("13.2") == "595.45.04" and cuda.min_driver("11.8") is None
    assert cuda.driver_supports("595.45.04", "13.2") and not cuda.driver_supports("595.44.99", "13.2")
    assert cuda.driver_supports("garbage", "13.2") is None
    with pytest.raises(ValueError):
        cuda.parse_cuda("13")


# --- host facts: parser on constructed outputs (tests/unit/data/host-*.txt, written by hand) ---

def test_parse_ubuntu_2404():
    f = parse_host_facts((DATA / "host-ubuntu2404.txt").read_text())
    assert f["complete"] and f["os"] == "ubuntu 24.04" and f["os_codename"] == "noble"
    assert (f["kernel"], f["arch"], f["cpus"]) == ("6.8.0-57-generic", "x86_64", 64)
    assert f["mem_total_bytes"] == 528161544 * 1024
    assert f["weights_fs_mount"] == "/mnt/llm_models" and f["weights_fs_free_bytes"] == 3121930112 * 1024
    assert f["weights_present_bytes"] == 313046722560
    assert f["shm_total_bytes"] == 264080772 * 1024 and f["shm_fstype"] == "tmpfs"
    assert f["port_listeners"] == [{"address": "0.0.0.0", "pid": 31337, "process": "python3",
                                    "container_id": OUR_ID}]
    assert f["iommu_cmdline_flags"] == ["amd_iommu=on", "iommu=pt"] and f["iommu_mode"] == "passthrough"
    assert f["iommu_units"] == ["ivhd0", "ivhd1"] and f["acs_enabled_bridges"] == 0
    assert (f["docker_version"], f["docker_server_version"], f["compose_v2_version"]) == \
        ("27.5.1", "27.5.1", "2.32.4")
    assert f["nvidia_ctk_version"] == "1.17.4" and f["compose_v1_version"] is None
    assert f["containers"][0]["name"] == f["containers"][0]["compose_service"] == "glm52-vllm"
    assert f["containers"][0]["status"] == "Up 3 hours"


def test_parse_ubuntu_2204():
    f = parse_host_facts((DATA / "host-ubuntu2204.txt").read_text())
    assert f["os"] == "ubuntu 22.04" and f["os_pretty_name"] == "Ubuntu 22.04.5 LTS"
    assert [lst["address"] for lst in f["port_listeners"]] == ["0.0.0.0", "::"]
    assert f["iommu_mode"] == "translated" and f["iommu_groups"] == 148 and f["acs_enabled_bridges"] == 4
    assert f["docker_version"] == "24.0.7" and f["docker_server_version"] is None
    assert f["containers"] is None and f["nvidia_ctk_version"] is None


def test_parse_debian_12_minbase():
    f = parse_host_facts((DATA / "host-debian12.txt").read_text())
    assert f["os"] == "debian 12" and f["listen_tool"] == "proc" and f["port_listeners"] == []
    assert f["weights_existing_parent"] == "/mnt" and f["weights_present_bytes"] == 0
    assert f["iommu_mode"] == "off" and f["acs_enabled_bridges"] is None
    assert f["docker_version"] is None and f["containers"] is None


def test_parse_never_raises_and_marks_incomplete():
    for text in ("", "garbage", "listen=a|b\ncontainer=x\n", "cpus=many\nuid=\nmem_total_kb=-1\n",
                 "listen=proc|zz|1|x|-\n"):
        f = parse_host_facts(text)
        assert f["complete"] is False and isinstance(f["port_listeners"], list)
    assert HostFacts.default()["complete"] is False


def test_acs_needs_root():
    assert parse_host_facts("uid=1000\nacs_srcvalid=0\n")["acs_enabled_bridges"] is None


@pytest.mark.parametrize("hex_addr,text", [
    ("0100007F", "127.0.0.1"), ("00000000", "0.0.0.0"), ("0500000A", "10.0.0.5"),
    ("00000000000000000000000000000000", "::"), ("00000000000000000000000001000000", "::1"),
    ("0000000000000000FFFF00000100007F", "127.0.0.1"),
])
def test_proc_net_addresses(hex_addr, text):
    assert proc_net_address(hex_addr) == text


# --- host facts: the real script on this machine --------------------------------------------

@pytest.fixture
def listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def run_script(weights_dir: str, port: int, path: str | None = None, expected=()) -> dict:
    env = {**os.environ, "PATH": path} if path else None
    proc = subprocess.run(["/bin/sh", "-c", host_facts_command(weights_dir, port, expected)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return parse_host_facts(proc.stdout)


def test_script_runs_here_and_finds_the_listener(tmp_path, listener):
    weights = tmp_path / "models" / "GLM it's 5.2"  # quoting: a space and a quote
    weights.mkdir(parents=True)
    (weights / "model-00001.safetensors").write_bytes(b"x" * 5000)
    (weights / "sub").mkdir()
    (weights / "sub" / "config.json").write_bytes(b"{}")
    (weights / ".cache").mkdir()
    (weights / ".cache" / "partial.incomplete").write_bytes(b"y" * 9000)
    f = run_script(str(weights), listener,
                   expected=[("model-00001.safetensors", 5000), ("sub/config.json", 2)])
    assert f["complete"] and f["os"] and f["cpus"] and f["mem_total_bytes"]
    assert f["weights_existing_parent"] == str(weights)
    assert f["weights_present_bytes"] == 5002  # the manifest's files; the .cache partial left out
    assert f["weights_fs_free_bytes"] > 0
    assert [(lst["address"], lst["pid"]) for lst in f["port_listeners"]] == [("127.0.0.1", os.getpid())]
    py = subprocess.run(["python3", "-c", "import platform; print(platform.python_version())"],
                        capture_output=True, text=True).stdout.strip()
    assert (f["python"], f["python_implementation"]) == (py, "cpython")
    assert f["glibc"] == os.confstr("CS_GNU_LIBC_VERSION").split()[1] and f["arch"] == os.uname().machine
    missing = run_script(str(tmp_path / "not" / "yet"), listener)
    assert missing["weights_existing_parent"] == str(tmp_path) and missing["weights_present_bytes"] == 0


def test_only_the_manifests_files_at_full_size_count_as_present(tmp_path, listener):
    """Other revisions, stray files, wrong sizes and sparse files (apparent size without the
    blocks) must not make the disk check believe the download is done."""
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "a.safetensors").write_bytes(b"a" * 40_000)            # right size, written
    (weights / "b.safetensors").write_bytes(b"b" * 1000)              # a manifest file, short
    with open(weights / "c.safetensors", "wb") as f:                  # right size, but sparse
        f.truncate(40_000)
    (weights / "old-revision.safetensors").write_bytes(b"o" * 80_000)  # not in this manifest
    expected = [("a.safetensors", 40_000), ("b.safetensors", 40_000), ("c.safetensors", 40_000),
                ("missing.safetensors", 40_000)]
    assert run_script(str(weights), listener, expected=expected)["weights_present_bytes"] == 40_000
    assert run_script(str(weights), listener)["weights_present_bytes"] == 0  # no manifest: nothing


def test_script_without_ss_reads_proc_net_tcp(tmp_path, listener):
    """Debian minbase has no ss: the /proc/net/tcp fallback finds the same listener."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "awk", "sed", "grep", "find", "cat", "head", "cut", "printf", "ls", "wc",
                 "tr", "df", "du", "id", "uname", "getconf", "dirname", "timeout", "stat"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    f = run_script(str(tmp_path), listener, path=str(bin_dir))
    assert f["complete"] and f["listen_tool"] == "proc"
    assert f["port_listeners"][0]["address"] == "127.0.0.1"
    assert f["port_listeners"][0]["pid"] == os.getpid()
    assert f["docker_version"] is None and f["containers"] is None
    assert f["python"] is None and f["glibc"]  # no python3 on that PATH: absent, no error


def test_real_1x_h100_probe_output_is_refused_then_passes_with_matching_requirements():
    """Recorded on a real H100 host (driver 580.159.04) by tests/real_gpu/check.sh."""
    import json
    from pathlib import Path

    from glmfleet.preflight.checks import run_checks as run, verdict as verdict_of
    from glmfleet.preflight.gpu import parse_probe_output
    from glmfleet.settings import load_defaults, validate

    raw = (Path(__file__).parent.parent / "data" / "probe-real-1x-h100.json").read_text()
    gpu = parse_probe_output(json.dumps(json.loads(raw)))
    assert gpu["ok"] and gpu["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["gpus"][0]["mem_total"] == 81559 * 2**20  # nvidia-smi: 81559 MiB
    from glmfleet.preflight.host import parse_host_facts

    host = parse_host_facts((Path(__file__).parent.parent / "data" / "host-ubuntu2404.txt").read_text())
    host.update(weights_fs_free_bytes=10**15, port_listeners=[])
    strict = validate("h100", dict(load_defaults(), preflight_only=True))
    failed = {c.name for c in run(gpu, host, strict) if c.status == "FAIL"}
    assert {"gpu_count", "gpu_compute_capability", "gpu_memory", "driver"} <= failed
    matched = validate("h100", dict(load_defaults(), preflight_only=True, gpu_count=1,
                                    tensor_parallel_size=1, decode_context_parallel_size=1,
                                    max_model_len=131072, gpu_compute_capability="9.0",
                                    gpu_min_memory_gib=75, image_cuda_version="13.0"))
    assert verdict_of(run(gpu, host, matched)) != "FAIL"


def test_hub_outage_root_cause_first_and_a_verified_host_goes_on(gpu, host, settings):
    settings = with_(settings, preflight_only=False, model_revision="ab" * 20)
    outage = OSError("cannot reach https://huggingface.co: connection refused")
    half_full = {**host, "weights_fs_free_bytes": 50 * 2**30, "weights_present_bytes": 6 * 2**20}
    found = checks.preflight_checks(gpu, half_full, settings, None, outage)
    first = checks.first_failure(found)
    assert first.name == "manifest" and "cannot read the Hub's file list" in first.reason
    held = {"files": [{"path": "a", "size": 6 * 2**20}], "total_size": 6 * 2**20}
    found = checks.preflight_checks(gpu, half_full, settings, None, outage, held)
    assert checks.first_failure(found) is None
    manifest = next(c for c in found if c.name == "manifest")
    assert manifest.status == "WARN" and "using the manifest it already holds" in manifest.reason
    assert next(c for c in found if c.name == "disk").status == "PASS"
