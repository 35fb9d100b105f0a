"""The NVML double inside a test host, loaded by the real nvidia-ml-py (pynvml) there."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from testbed.doubles import nvml

PYNVML = Path(importlib.util.find_spec("pynvml").origin).read_bytes()
# Where Debian's python3 finds modules installed by hand.
HOST_PYNVML = "/usr/local/lib/python3.11/dist-packages/pynvml.py"

READ_GPUS = """
import json, pynvml
pynvml.nvmlInit()
out = {"driver": pynvml.nvmlSystemGetDriverVersion(), "gpus": []}
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    out["gpus"].append({"name": pynvml.nvmlDeviceGetName(h),
                        "cc": pynvml.nvmlDeviceGetCudaComputeCapability(h),
                        "mem": pynvml.nvmlDeviceGetMemoryInfo(h).total})
print(json.dumps(out))
"""

NO_DRIVER = """
import pynvml
try:
    pynvml.nvmlInit()
except pynvml.NVMLError_LibraryNotFound as e:
    print("LibraryNotFound:", e)
"""


def test_real_pynvml_reads_the_configured_gpus_on_a_host(make_host):
    host = make_host(files={**nvml.host_files("rtx6000x4"), HOST_PYNVML: PYNVML})
    out = json.loads(host.exec("python3 -", input=READ_GPUS).stdout)
    assert out["driver"] == "595.45.04"
    assert [g["name"] for g in out["gpus"]] == [nvml.RTX_PRO_6000] * 4
    assert all(g["cc"] == [12, 0] and g["mem"] == nvml.RTX_PRO_6000_BYTES for g in out["gpus"])
    # The driver's own version file, where the probe reads the kernel-module flavour.
    assert "Open Kernel Module" in host.exec("cat /proc/driver/nvidia/version").stdout


def test_h100_profile_on_a_host(make_host):
    host = make_host(files={**nvml.host_files("h100x2"), HOST_PYNVML: PYNVML})
    out = json.loads(host.exec("python3 -", input=READ_GPUS).stdout)
    assert [(g["name"], g["cc"]) for g in out["gpus"]] == [("NVIDIA H100 80GB HBM3", [9, 0])] * 2


def test_no_driver_host_raises_library_not_found(make_host):
    host = make_host(files={HOST_PYNVML: PYNVML})  # nvidia-ml-py present, no driver library
    assert host.exec("python3 -", input=NO_DRIVER).stdout.startswith("LibraryNotFound:")
