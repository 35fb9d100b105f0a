"""The fake libnvidia-ml.so.1 (test double) as the real nvidia-ml-py sees it.

Each scenario runs in its own python process: pynvml loads the library once per process,
and LD_LIBRARY_PATH / FAKE_NVML_CONFIG are read at load and init time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from testbed.doubles import nvml as fake

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the fake is a Linux shared library")


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fake-nvml")
    fake.build_fake_nvml(out)
    return out


def run_pynvml(lib_dir, profile, body: str, tmp_path=None, config_text=None) -> dict:
    """Run `body` (which sets `result`) with the real pynvml loading the fake; return result."""
    conf = lib_dir / f"{profile or 'custom'}.conf"
    if config_text is not None:
        conf.write_text(config_text)
    elif profile is not None:
        fake.write_config(profile, conf)
    code = "import json, pynvml\nresult = {}\n" + textwrap.dedent(body) + \
        "\nprint(json.dumps(result))\n"
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib_dir),
               FAKE_NVML_CONFIG=str(conf) if profile or config_text else str(lib_dir / "absent.conf"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


SYMBOLS = ("nvmlInit_v2", "nvmlInitWithFlags", "nvmlShutdown", "nvmlErrorString",
           "nvmlSystemGetDriverVersion", "nvmlSystemGetCudaDriverVersion",
           "nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetNVMLVersion",
           "nvmlDeviceGetCount_v2", "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetName",
           "nvmlDeviceGetUUID", "nvmlDeviceGetCudaComputeCapability", "nvmlDeviceGetMemoryInfo",
           "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetPersistenceMode", "nvmlDeviceGetEccMode",
           "nvmlDeviceGetCurrPcieLinkGeneration", "nvmlDeviceGetMaxPcieLinkGeneration",
           "nvmlDeviceGetCurrPcieLinkWidth", "nvmlDeviceGetMaxPcieLinkWidth",
           "nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetComputeRunningProcesses_v3",
           "nvmlDeviceGetP2PStatus", "nvmlDeviceGetTopologyCommonAncestor")


def test_build_exports_what_pynvml_resolves(lib_dir):
    # Loaded in a child: this process must never hold a libnvidia-ml.so.1 (dlopen by soname
    # would hand it to any later pynvml user here).
    r = run_pynvml(lib_dir, "rtx6000x4", f"""
        import ctypes
        lib = ctypes.CDLL("libnvidia-ml.so.1")
        result["missing"] = [s for s in {SYMBOLS!r} if not hasattr(lib, s)]
        count = ctypes.c_uint()
        result["before_init"] = lib.nvmlDeviceGetCount_v2(ctypes.byref(count))
    """)
    assert r["missing"] == []
    assert r["before_init"] == 1  # NVML_ERROR_UNINITIALIZED


def test_build_is_reused_while_source_unchanged(lib_dir):
    lib = lib_dir / fake.LIB_NAME
    before = lib.stat().st_mtime_ns
    assert fake.build_fake_nvml(lib_dir) == lib
    assert lib.stat().st_mtime_ns == before


def test_rtx6000x4_through_real_pynvml(lib_dir):
    r = run_pynvml(lib_dir, "rtx6000x4", """
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(3)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
        result.update(
            driver=pynvml.nvmlSystemGetDriverVersion(),
            cuda=pynvml.nvmlSystemGetCudaDriverVersion(),
            cuda_v2=pynvml.nvmlSystemGetCudaDriverVersion_v2(),
            nvml=pynvml.nvmlSystemGetNVMLVersion(),
            count=pynvml.nvmlDeviceGetCount(),
            name=pynvml.nvmlDeviceGetName(h), uuid=pynvml.nvmlDeviceGetUUID(h),
            cc=list(pynvml.nvmlDeviceGetCudaComputeCapability(h)),
            total=mem.total, free=mem.free, used=mem.used, total_v2=mem2.total,
            bus=pynvml.nvmlDeviceGetPciInfo(h).busId,
            bus_legacy=pynvml.nvmlDeviceGetPciInfo(h).busIdLegacy,
            procs=len(pynvml.nvmlDeviceGetComputeRunningProcesses(h)))
        pynvml.nvmlShutdown()
    """)
    assert r["driver"] == "595.45.04" and r["cuda"] == r["cuda_v2"] == 13020
    assert r["nvml"] == "13.595.45.04" and r["count"] == 4
    assert r["name"] == "NVIDIA RTX PRO 6000 Blackwell Server Edition"
    assert r["cc"] == [12, 0]
    assert r["total"] == r["total_v2"] == 102641430528
    assert r["free"] + r["used"] == r["total"]
    assert r["bus"] == "00000000:61:00.0" and r["bus_legacy"] == "0000:61:00.0"
    assert r["procs"] == 0


def test_running_processes_use_the_two_call_protocol(lib_dir):
    r = run_pynvml(lib_dir, "foreignproc", """
        pynvml.nvmlInit()
        result["per_gpu"] = [[(p.pid, p.usedGpuMemory) for p in
                              pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))]
                             for i in range(4)]
    """)
    assert r["per_gpu"] == [[], [[4242, 20 * 2**30]], [], []]


def test_p2p_read_index_quirk(lib_dir):
    """The integer 0 works; nvidia-ml-py's NVML_P2P_CAPS_INDEX_READ (the tuple (0,)) does not."""
    r = run_pynvml(lib_dir, "h100x2", """
        import ctypes
        pynvml.nvmlInit()
        a, b = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlDeviceGetHandleByIndex(1)
        result["constant"] = repr(pynvml.NVML_P2P_CAPS_INDEX_READ)
        result["read"] = pynvml.nvmlDeviceGetP2PStatus(a, b, 0)
        result["write"] = pynvml.nvmlDeviceGetP2PStatus(a, b, pynvml.NVML_P2P_CAPS_INDEX_WRITE)
        result["nvlink"] = pynvml.nvmlDeviceGetP2PStatus(a, b, pynvml.NVML_P2P_CAPS_INDEX_NVLINK)
        result["topology"] = pynvml.nvmlDeviceGetTopologyCommonAncestor(a, b)
        try:
            pynvml.nvmlDeviceGetP2PStatus(a, b, pynvml.NVML_P2P_CAPS_INDEX_READ)
            result["tuple"] = "accepted"
        except ctypes.ArgumentError as e:
            result["tuple"] = "ArgumentError"
    """)
    assert r["constant"] == "(0,)"
    assert (r["read"], r["write"], r["nvlink"], r["topology"]) == (0, 0, 0, 30)
    assert r["tuple"] == "ArgumentError"  # what the real H100 reading hit


def test_not_supported_switch(lib_dir):
    r = run_pynvml(lib_dir, "notsupported", """
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        for key, fn in (("persistence", pynvml.nvmlDeviceGetPersistenceMode),
                        ("ecc", pynvml.nvmlDeviceGetEccMode), ("name", pynvml.nvmlDeviceGetName)):
            try:
                result[key] = str(fn(h))
            except pynvml.NVMLError as e:
                result[key] = type(e).__name__
    """)
    assert r["persistence"] == r["ecc"] == "NVMLError_NotSupported"
    assert r["name"].startswith("NVIDIA RTX PRO 6000")


def test_per_gpu_and_generic_failures(lib_dir):
    conf = fake.config_text("rtx6000x4") + (
        "gpu.2.not_supported = nvmlDeviceGetUUID\nfail.nvmlDeviceGetName = 15\n")
    r = run_pynvml(lib_dir, None, """
        pynvml.nvmlInit()
        def outcome(fn, i):
            try:
                return str(fn(pynvml.nvmlDeviceGetHandleByIndex(i)))[:4]
            except pynvml.NVMLError as e:
                return type(e).__name__
        result["uuid"] = [outcome(pynvml.nvmlDeviceGetUUID, i) for i in range(4)]
        result["name0"] = outcome(pynvml.nvmlDeviceGetName, 0)
    """, config_text=conf)
    assert r["uuid"] == ["GPU-", "GPU-", "NVMLError_NotSupported", "GPU-"]
    assert r["name0"] == "NVMLError_GpuIsLost"


@pytest.mark.parametrize("profile", ["driverdown", None])
def test_init_fails_with_driver_not_loaded(lib_dir, profile):
    """Configured, or the description file missing (library present, no kernel module)."""
    r = run_pynvml(lib_dir, profile, """
        try:
            pynvml.nvmlInit()
            result["init"] = "ok"
        except pynvml.NVMLError as e:
            result["init"] = type(e).__name__
    """)
    assert r["init"] == "NVMLError_DriverNotLoaded"


def test_memory_v2_checks_the_struct_version(lib_dir):
    r = run_pynvml(lib_dir, "rtx6000x4", """
        pynvml.nvmlInit()
        try:
            pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0), version=1)
            result["v"] = "ok"
        except pynvml.NVMLError as e:
            result["v"] = type(e).__name__
    """)
    assert r["v"] == "NVMLError_ArgumentVersionMismatch"


def test_profiles_and_host_files(tmp_path):
    assert set(fake.PROFILES) >= {"rtx6000x4", "h100x2", "one48gb", "olddriver", "foreignproc",
                                  "nodriver"}
    text = fake.write_config("one48gb", tmp_path / "c.conf")
    assert (tmp_path / "c.conf").read_text() == text
    assert "gpu.2.name = NVIDIA RTX PRO 5000 Blackwell" in text
    assert "gpu.0.mem_total = 102641430528" in text
    assert "cuda_driver_version = 12080" in fake.config_text("olddriver")
    assert fake.host_files("nodriver") == {}
    files = fake.host_files("rtx6000x4", build_dir=tmp_path / "build")
    assert set(files) == {fake.HOST_LIB_PATH, fake.HOST_CONFIG_PATH, fake.HOST_VERSION_FILE}
    assert files[fake.HOST_LIB_PATH][:4] == b"\x7fELF"
    assert b"Open Kernel Module" in files[fake.HOST_VERSION_FILE]
    assert b"Open Kernel Module" not in fake.kernel_module_text("proprietary").encode()
    with pytest.raises(KeyError, match="known"):
        fake.profile("nope")
