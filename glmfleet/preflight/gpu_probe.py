# Runs ON a GPU host (python3, stdlib + nvidia-ml-py's pure-python pynvml module) and prints
# ONE JSON object describing the driver and every GPU. It never raises: a missing library,
# a failed nvmlInit or any single failing NVML call is recorded in the output instead.
#
# Two ways to run it:
#   - by the GpuProbe fact: `python3 -` with stdin = a loader for the controller's own
#     pynvml.py (which registers sys.modules["pynvml"]) followed by this file;
#   - by hand on a machine where `import pynvml` works: `python3 gpu_probe.py`.
# It is concatenated after the loader, so: no `from __future__` imports, stdlib only, and
# keep it valid on the oldest supported python3 (3.8).
#
# Output schema (see glmfleet/facts/gpu.py for the normalising parser):
#   {"probe_version", "ok", "error": null | {"kind", "message", "remedy"},
#    "driver", "cuda_driver", "nvml_version", "open_kernel_module", "kernel_module",
#    "count", "gpus": [{"index", "name", "uuid", "cc", "mem_total", "mem_free", "mem_used",
#                        "persistence", "ecc", "pcie_gen", "pcie_gen_max", "pcie_width",
#                        "pcie_width_max", "pci_bus", "procs", "errors"}],
#    "p2p": {"0-1": {"read", "write", "nvlink", "topology", "errors"}}, "errors"}
# A value NVML could not give is null and the reason is in the nearest "errors" map.

import json
import os
import re
import sys

PROBE_VERSION = 1
KERNEL_MODULE_FILE = "/proc/driver/nvidia/version"
# Test seam: the simulated fleet has no NVIDIA kernel module, so it points here instead.
KERNEL_MODULE_FILE_ENV = "GLMFLEET_NVIDIA_VERSION_FILE"

# P2P capability indexes as plain ints. nvidia-ml-py 13.615.71 defines
# NVML_P2P_CAPS_INDEX_READ = 0, (a stray comma makes it the tuple (0,)), which ctypes
# rejects with ArgumentError; so the probe never uses those constants.
P2P_INDEXES = (("read", 0), ("write", 1), ("nvlink", 2))

REMEDY_DRIVER = ("install an NVIDIA driver new enough for the image's CUDA version, with the "
                 "open kernel modules (Ubuntu: nvidia-driver-<branch>-open; NVIDIA's repo: "
                 "nvidia-open), then reboot")
REMEDIES = {
    "no_driver": "the NVML library (libnvidia-ml.so.1) is missing: " + REMEDY_DRIVER,
    "no_nvml": "nvidia-ml-py is not importable here; the deploy feeds its own copy, or run "
               "`pip install nvidia-ml-py` to use this script by hand",
    "driver_not_loaded": "the NVIDIA kernel module is not loaded: check `dmesg | grep -i nvidia`, "
                         "load it with `modprobe nvidia` or reboot after installing the driver "
                         "(Blackwell needs the open kernel modules)",
    "driver_mismatch": "the loaded kernel module and the user-space driver differ (driver "
                       "upgraded without a reboot): reboot the host",
    "no_permission": "this user may not open the NVIDIA devices: run the probe as root or add "
                     "the user to the group owning /dev/nvidia*",
    "init_failed": "NVML could not start: check `nvidia-smi` and `dmesg | grep -i nvidia` on the host",
    "count_failed": "NVML started but cannot enumerate GPUs: check `nvidia-smi` and "
                    "`dmesg | grep -i -e nvidia -e xid`",
    "probe_crashed": "a bug in the GPU probe: report it with this message",
}
# nvmlReturn_t codes (nvml.h) that name a distinct failure of nvmlInit.
INIT_ERROR_KINDS = {12: "no_driver", 9: "driver_not_loaded", 18: "driver_mismatch",
                    4: "no_permission"}

_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def _describe(exc):
    """'NVMLError_NotSupported: Not Supported'; never raises (str() of an NVMLError may call NVML)."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001
        text = repr(exc)
    return "%s: %s" % (type(exc).__name__, text)


def _attempt(errors, key, fn, *args):
    """fn(*args), or None with the reason recorded under errors[key]."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001  any single call may fail; never fatal
        errors[key] = _describe(exc)
        return None


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _failure(kind, message):
    return {"kind": kind, "message": message, "remedy": REMEDIES.get(kind, REMEDIES["init_failed"])}


def read_kernel_module(path=None):
    """(open_kernel_module, first line of the version file); (None, None) when unreadable."""
    path = path or os.environ.get(KERNEL_MODULE_FILE_ENV) or KERNEL_MODULE_FILE
    try:
        with open(path) as f:
            first = f.readline().strip()
    except (OSError, ValueError):
        return None, None
    return ("Open Kernel Module" in first), first


def _read_proc(pid, name):
    try:
        with open("/proc/%d/%s" % (pid, name)) as f:
            return f.read()
    except (OSError, ValueError):
        return None


def describe_process(pid, used_memory):
    """One GPU process; the name and Docker container id help tell our service from others."""
    comm = _read_proc(pid, "comm")
    cgroup = _read_proc(pid, "cgroup") or ""
    match = _CONTAINER_ID.search(cgroup)
    return {"pid": pid, "used_memory": used_memory,
            "name": comm.strip() if comm else None,
            "container_id": match.group(0) if match else None}


def describe_gpu(nvml, index):
    errors = {}
    gpu = {"index": index, "name": None, "uuid": None, "cc": None, "mem_total": None,
           "mem_free": None, "mem_used": None, "persistence": None, "ecc": None,
           "pcie_gen": None, "pcie_gen_max": None, "pcie_width": None, "pcie_width_max": None,
           "pci_bus": None, "procs": None, "errors": errors}
    handle = _attempt(errors, "handle", nvml.nvmlDeviceGetHandleByIndex, index)
    if handle is None:
        return gpu, None
    gpu["name"] = _text(_attempt(errors, "name", nvml.nvmlDeviceGetName, handle))
    gpu["uuid"] = _text(_attempt(errors, "uuid", nvml.nvmlDeviceGetUUID, handle))
    cc = _attempt(errors, "cc", nvml.nvmlDeviceGetCudaComputeCapability, handle)
    gpu["cc"] = list(cc) if cc is not None else None
    mem = _attempt(errors, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
    if mem is not None:
        gpu["mem_total"], gpu["mem_free"], gpu["mem_used"] = int(mem.total), int(mem.free), int(mem.used)
    persistence = _attempt(errors, "persistence", nvml.nvmlDeviceGetPersistenceMode, handle)
    gpu["persistence"] = bool(persistence) if persistence is not None else None
    ecc = _attempt(errors, "ecc", nvml.nvmlDeviceGetEccMode, handle)
    gpu["ecc"] = [bool(ecc[0]), bool(ecc[1])] if ecc is not None else None
    for key, fn in (("pcie_gen", nvml.nvmlDeviceGetCurrPcieLinkGeneration),
                    ("pcie_gen_max", nvml.nvmlDeviceGetMaxPcieLinkGeneration),
                    ("pcie_width", nvml.nvmlDeviceGetCurrPcieLinkWidth),
                    ("pcie_width_max", nvml.nvmlDeviceGetMaxPcieLinkWidth)):
        gpu[key] = _attempt(errors, key, fn, handle)
    pci = _attempt(errors, "pci_bus", nvml.nvmlDeviceGetPciInfo, handle)
    if pci is not None:
        gpu["pci_bus"] = _text(pci.busId)
    procs = _attempt(errors, "procs", nvml.nvmlDeviceGetComputeRunningProcesses, handle)
    if procs is not None:
        gpu["procs"] = [describe_process(int(p.pid), p.usedGpuMemory) for p in procs]
    return gpu, handle


def describe_pair(nvml, a, b):
    errors = {}
    pair = {}
    for key, index in P2P_INDEXES:
        pair[key] = _attempt(errors, key, nvml.nvmlDeviceGetP2PStatus, a, b, index)
    pair["topology"] = _attempt(errors, "topology", nvml.nvmlDeviceGetTopologyCommonAncestor, a, b)
    pair["errors"] = errors
    return pair


def probe(nvml):
    """Describe the driver and GPUs through an importable pynvml module."""
    out = {"probe_version": PROBE_VERSION, "ok": False, "error": None, "driver": None,
           "cuda_driver": None, "nvml_version": None, "open_kernel_module": None,
           "kernel_module": None, "count": None, "gpus": [], "p2p": {}, "errors": {}}
    out["open_kernel_module"], out["kernel_module"] = read_kernel_module()
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001
        kind = INIT_ERROR_KINDS.get(getattr(exc, "value", None), "init_failed")
        out["error"] = _failure(kind, "nvmlInit failed: " + _describe(exc))
        return out
    try:
        errors = out["errors"]
        out["driver"] = _text(_attempt(errors, "driver", nvml.nvmlSystemGetDriverVersion))
        cuda = _attempt(errors, "cuda_driver", nvml.nvmlSystemGetCudaDriverVersion)
        if cuda is None and hasattr(nvml, "nvmlSystemGetCudaDriverVersion_v2"):
            cuda = _attempt(errors, "cuda_driver_v2", nvml.nvmlSystemGetCudaDriverVersion_v2)
        out["cuda_driver"] = cuda
        out["nvml_version"] = _text(_attempt(errors, "nvml_version", nvml.nvmlSystemGetNVMLVersion))
        count = _attempt(errors, "count", nvml.nvmlDeviceGetCount)
        if count is None:
            out["error"] = _failure("count_failed", "nvmlDeviceGetCount failed: " + errors["count"])
            return out
        out["count"] = count
        handles = []
        for index in range(count):
            gpu, handle = describe_gpu(nvml, index)
            out["gpus"].append(gpu)
            handles.append(handle)
        for i in range(count):
            for j in range(i + 1, count):
                if handles[i] is not None and handles[j] is not None:
                    out["p2p"]["%d-%d" % (i, j)] = describe_pair(nvml, handles[i], handles[j])
        out["ok"] = True
        return out
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001  shutting down cannot change the answer
            pass


def run():
    """The probe's result as a dict, whatever happens."""
    try:
        # The fact's loader leaves a reason here when the embedded pynvml failed to load.
        load_error = globals().get("GLMFLEET_PYNVML_ERROR")
        if load_error:
            return probe_failure("no_nvml", "embedded nvidia-ml-py failed to load: " + load_error)
        try:
            import pynvml
        except Exception as exc:  # noqa: BLE001
            return probe_failure("no_nvml", "import pynvml failed: " + _describe(exc))
        return probe(pynvml)
    except Exception as exc:  # noqa: BLE001  the contract is JSON, never a traceback
        return probe_failure("probe_crashed", _describe(exc))


def probe_failure(kind, message):
    out = {"probe_version": PROBE_VERSION, "ok": False, "error": _failure(kind, message),
           "driver": None, "cuda_driver": None, "nvml_version": None, "count": None,
           "gpus": [], "p2p": {}, "errors": {}}
    out["open_kernel_module"], out["kernel_module"] = read_kernel_module()
    return out


def main():
    try:
        text = json.dumps(run())
    except Exception as exc:  # noqa: BLE001  e.g. a value json cannot encode
        text = json.dumps(probe_failure("probe_crashed", "encoding the result: " + _describe(exc)))
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
