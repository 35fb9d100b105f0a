"""CUDA versions and the NVIDIA driver each needs (pure).

NVML reports the driver's CUDA version as an int, major * 1000 + minor * 10 (13020 = 13.2).
The image's CUDA userspace runs only on a driver whose CUDA version is at least as new:
workstation and RTX PRO GPUs have no CUDA forward-compatibility package (that exists for
data-center GPUs only), so the driver itself must be new enough.
"""

from __future__ import annotations

import re

# NVIDIA's published minimum driver per CUDA toolkit (GA release), Linux x86_64, from the
# CUDA toolkit release notes ("CUDA Toolkit and Corresponding Driver Versions").
MIN_LINUX_DRIVER = {
    (13, 0): "580.65.06",
    (13, 1): "590.44.01",
    (13, 2): "595.45.04",
}


def parse_cuda(version: str) -> tuple[int, int]:
    """'13.2' -> (13, 2); raises ValueError on anything else."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(version))
    if not m:
        raise ValueError(f"not a CUDA version: {version!r} (expected major.minor, e.g. 13.2)")
    return int(m.group(1)), int(m.group(2))


def cuda_int(version: str) -> int:
    """'13.2' -> 13020, NVML's encoding."""
    major, minor = parse_cuda(version)
    return major * 1000 + minor * 10


def cuda_text(value: int) -> str:
    """13020 -> '13.2'."""
    return f"{value // 1000}.{value % 1000 // 10}"


def min_driver(version: str) -> str | None:
    """The minimum Linux driver for this CUDA version, or None when the table lacks it."""
    return MIN_LINUX_DRIVER.get(parse_cuda(version))


def driver_tuple(driver: str) -> tuple[int, ...]:
    """'595.45.04' -> (595, 45, 4) for comparisons; non-numeric parts are dropped."""
    return tuple(int(p) for p in re.findall(r"\d+", driver))


def driver_supports(driver: str, version: str) -> bool | None:
    """Whether a driver version string is new enough for the CUDA version (None: unknown)."""
    need = min_driver(version)
    if need is None or not driver_tuple(driver):
        return None
    return driver_tuple(driver) >= driver_tuple(need)
