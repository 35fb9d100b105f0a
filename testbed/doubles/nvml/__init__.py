"""TEST DOUBLE for NVIDIA's driver library: build the fake libnvidia-ml.so.1 and describe GPUs.

The real nvidia-ml-py loads the fake exactly as it loads the driver's library; only the
library behind NVML is replaced. A host's GPUs come from a text file (see fake_nvml.c for
its format) that these helpers write from named profiles.

    from testbed.doubles import nvml
    files = nvml.host_files("rtx6000x4")      # {path on the host: bytes}
    fleet.add_host("node1", files=files)

Profiles: rtx6000x4 (the target box), h100x2 (mirrors a real 2x H100 reading), one48gb
(GPU 2 is a 48 GB card), olddriver (driver 570 / CUDA 12.8), foreignproc (another process
holds GPU 1), notsupported (persistence, ECC and PCIe width calls answer NotSupported),
driverdown (library present, kernel module not loaded), proprietary (closed kernel module),
nodriver (no library at all: pynvml raises NVMLError_LibraryNotFound).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIB_NAME = "libnvidia-ml.so.1"
# Where NVIDIA's packages put the library on Debian/Ubuntu: a default dlopen search directory.
HOST_LIB_PATH = "/usr/lib/x86_64-linux-gnu/" + LIB_NAME
HOST_CONFIG_PATH = "/etc/fake-nvml.conf"  # the fake's default; $FAKE_NVML_CONFIG overrides
CONFIG_ENV = "FAKE_NVML_CONFIG"
# Where the fleet may place the kernel-module version text (the probe reads it via this env).
HOST_VERSION_FILE = "/etc/fake-nvidia-version"
VERSION_FILE_ENV = "GLMFLEET_NVIDIA_VERSION_FILE"

MIB = 2**20
GIB = 2**30
RTX_PRO_6000 = "NVIDIA RTX PRO 6000 Blackwell Server Edition"
RTX_PRO_6000_BYTES = 102641430528  # NVML total of the "96 GB" card (~97887 MiB, 95.6 GiB)
IDLE_USED = 480 * MIB  # driver reservation on an idle card (the real H100 reading shows this)


@dataclasses.dataclass(frozen=True)
class FakeGpu:
    name: str
    uuid: str
    pci_bus: str
    mem_total: int
    cc: tuple[int, int] = (12, 0)
    mem_free: int | None = None  # None = total minus the idle reservation
    persistence: bool = True
    ecc: tuple[int, int] = (0, 0)
    pcie: tuple[int, int, int, int] = (5, 5, 16, 16)  # gen, max gen, width, max width
    procs: tuple[tuple[int, int], ...] = ()  # (pid, used bytes)
    not_supported: tuple[str, ...] = ()  # NVML functions that answer NotSupported on this GPU


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    gpus: tuple[FakeGpu, ...]
    driver: str = "595.45.04"
    cuda_driver: int = 13020
    nvml_version: str | None = None  # None = "<CUDA major>.<driver>", as real NVML reports
    open_kernel_module: bool = True
    install_library: bool = True  # False = a host with no NVIDIA driver at all
    init_error: int = 0  # nvmlInit's return code (9 = NVML_ERROR_DRIVER_NOT_LOADED)
    not_supported: tuple[str, ...] = ()  # NVML functions that answer NotSupported everywhere
    fails: tuple[tuple[str, int], ...] = ()  # (NVML function, return code)
    p2p: tuple[tuple[int, int, tuple[int, int, int, int]], ...] = ()  # (a, b, (r, w, nvlink, topo))


def _rtx(index: int, **changes) -> FakeGpu:
    gpu = FakeGpu(name=RTX_PRO_6000, uuid=f"GPU-6000b1ac-0000-4000-8000-00000000000{index}",
                  pci_bus=f"00000000:{0x01 + 0x20 * index:02X}:00.0", mem_total=RTX_PRO_6000_BYTES)
    return dataclasses.replace(gpu, **changes)


def _rtx4(name: str = "rtx6000x4", **changes) -> Profile:
    """Four RTX PRO 6000 on a current driver, with the given changes."""
    changes.setdefault("gpus", tuple(_rtx(i) for i in range(4)))
    return Profile(name=name, **changes)


# Mirrors reference/nvml-reading-2x-h100.json (a real host, nvidia-ml-py 13.615.71).
_H100 = dict(name="NVIDIA H100 80GB HBM3", cc=(9, 0), mem_total=85520809984,
             mem_free=85017493504, ecc=(1, 1))

PROFILES: dict[str, Profile] = {
    "rtx6000x4": _rtx4(),
    "h100x2": Profile(
        name="h100x2", driver="580.159.04", cuda_driver=13000, nvml_version="13.580.159.04",
        gpus=(FakeGpu(uuid="GPU-cb52c5df-9543-4542-0fa0-b2302ae89e07", pci_bus="00000000:00:06.0", **_H100),
              FakeGpu(uuid="GPU-b5506ca1-ac76-26bf-6d00-426e0c7a7f61", pci_bus="00000000:00:07.0", **_H100)),
        p2p=((0, 1, (0, 0, 0, 30)),)),  # NVLink up; common ancestor: host bridge
    "one48gb": _rtx4("one48gb", gpus=(
        _rtx(0), _rtx(1),
        _rtx(2, name="NVIDIA RTX PRO 5000 Blackwell", mem_total=49140 * MIB),  # a "48 GB" card
        _rtx(3))),
    "olddriver": _rtx4("olddriver", driver="570.124.06", cuda_driver=12080),
    "foreignproc": _rtx4("foreignproc", gpus=(
        _rtx(0), _rtx(1, procs=((4242, 20 * GIB),), mem_free=RTX_PRO_6000_BYTES - IDLE_USED - 20 * GIB),
        _rtx(2), _rtx(3))),
    "notsupported": _rtx4("notsupported", not_supported=(
        "nvmlDeviceGetPersistenceMode", "nvmlDeviceGetEccMode", "nvmlDeviceGetCurrPcieLinkWidth")),
    "driverdown": _rtx4("driverdown", init_error=9),
    "proprietary": _rtx4("proprietary", open_kernel_module=False),
    "nodriver": Profile(name="nodriver", gpus=(), install_library=False),
}


def profile(which: str | Profile) -> Profile:
    if isinstance(which, Profile):
        return which
    try:
        return PROFILES[which]
    except KeyError:
        raise KeyError(f"unknown fake NVML profile {which!r}; known: {', '.join(PROFILES)}") from None


def config_text(which: str | Profile) -> str:
    """The fake library's description file for this profile."""
    p = profile(which)
    lines = [f"# fake NVML profile {p.name} (test double; see testbed/doubles/nvml)",
             f"driver_version = {p.driver}",
             f"cuda_driver_version = {p.cuda_driver}",
             f"nvml_version = {p.nvml_version or f'{p.cuda_driver // 1000}.{p.driver}'}"]
    if p.init_error:
        lines.append(f"init_error = {p.init_error}")
    if p.not_supported:
        lines.append("not_supported = " + " ".join(p.not_supported))
    lines += [f"fail.{fn} = {code}" for fn, code in p.fails]
    for i, g in enumerate(p.gpus):
        free = g.mem_free if g.mem_free is not None else g.mem_total - IDLE_USED
        lines += [f"gpu.{i}.name = {g.name}", f"gpu.{i}.uuid = {g.uuid}",
                  f"gpu.{i}.cc = {g.cc[0]}.{g.cc[1]}", f"gpu.{i}.mem_total = {g.mem_total}",
                  f"gpu.{i}.mem_free = {free}", f"gpu.{i}.persistence = {int(g.persistence)}",
                  f"gpu.{i}.ecc = {g.ecc[0]} {g.ecc[1]}",
                  f"gpu.{i}.pcie = {' '.join(map(str, g.pcie))}", f"gpu.{i}.pci_bus = {g.pci_bus}"]
        lines += [f"gpu.{i}.proc = {pid} {used}" for pid, used in g.procs]
        if g.not_supported:
            lines.append(f"gpu.{i}.not_supported = " + " ".join(g.not_supported))
    lines += [f"p2p.{a}.{b} = {' '.join(map(str, s))}" for a, b, s in p.p2p]
    return "\n".join(lines) + "\n"


def write_config(which: str | Profile, path: str | os.PathLike | None = None) -> str:
    """The description file's text; also written to `path` (atomically) when one is given."""
    text = config_text(which)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return text


def kernel_module_text(which: str | Profile) -> str:
    """What /proc/driver/nvidia/version says for this profile's driver and module flavour."""
    p = profile(which)
    flavour = "NVIDIA UNIX Open Kernel Module for x86_64" if p.open_kernel_module else \
        "NVIDIA UNIX x86_64 Kernel Module"
    return (f"NVRM version: {flavour}  {p.driver}  Release Build  (dvs-builder@U22-I3-B05-3)  "
            "Tue Mar 10 08:12:04 UTC 2026\nGCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04)\n")


def build_fake_nvml(out_dir: str | os.PathLike) -> Path:
    """Compile fake_nvml.c into out_dir/libnvidia-ml.so.1 (reused while the source is unchanged)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / LIB_NAME
    stamp = out_dir / (LIB_NAME + ".src-sha256")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    if lib.exists() and stamp.exists() and stamp.read_text() == digest:
        return lib
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if not cc:
        raise RuntimeError("building the fake NVML library needs gcc (or $CC) on PATH")
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_lib = Path(tmp) / LIB_NAME
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-fvisibility=hidden",
                        f"-Wl,-soname,{LIB_NAME}", "-o", str(tmp_lib), str(SOURCE)],
                       check=True, capture_output=True, text=True)
        tmp_lib.replace(lib)
    stamp.write_text(digest)
    return lib


def default_build_dir() -> Path:
    return Path(os.environ.get("FAKE_NVML_BUILD_DIR", Path(tempfile.gettempdir()) / "glmfleet-fake-nvml"))


def host_files(which: str | Profile, build_dir: str | os.PathLike | None = None) -> dict[str, bytes]:
    """Files to place on a simulated host: the library, its GPU description, and the kernel
    module version text (the simulated fleet mounts it at /proc/driver/nvidia/version).
    A profile without a library (nodriver) gives no files at all."""
    p = profile(which)
    if not p.install_library:
        return {}
    lib = build_fake_nvml(build_dir or default_build_dir())
    return {HOST_LIB_PATH: lib.read_bytes(),
            HOST_CONFIG_PATH: config_text(p).encode(),
            HOST_VERSION_FILE: kernel_module_text(p).encode()}
