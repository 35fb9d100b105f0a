"""Preflight checks (pure: no pyinfra import): facts + settings -> a list of Check.

Inputs are the parsed GPU probe (glmfleet.preflight.gpu.parse_probe_output), the parsed host
facts (glmfleet.preflight.host.parse_host_facts) and the host's Settings. Every requirement
comes from Settings, so another GPU model is targeted by changing data, not code.
A FAIL drops the host before anything changes; a WARN is reported and the deploy goes on.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from importlib import metadata
from typing import Any, Iterable, Mapping

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from glmfleet.preflight import cuda
from glmfleet.settings import API_KEY_OPEN, DCP1_MAX_MODEL_LEN, Settings

GIB = 2**30
# The recipe's size of the checkpoint (~313 GB on disk), used until the Hub manifest gives
# the exact figure. Only ever an estimate: the real size comes from the manifest.
ESTIMATED_WEIGHTS_BYTES = 313 * 10**9
# The recipe's validated shape (TP 4, DCP 4, 250k context); other allowed shapes get a WARN.
VALIDATED_TP, VALIDATED_DCP, VALIDATED_MAX_MODEL_LEN = 4, 4, 250_000
# What the recipe measured per DCP at its validated context (KV pool, decode speed).
DCP_TABLE = {4: "250k context, 710k-token KV pool, ~60 tok/s",
             2: "250k context, ~355k-token KV pool, ~49 tok/s",
             1: "~131k context, ~178k-token KV pool, ~81 tok/s"}
# The least KV cache per GPU a layout must leave after its share of the weights, within
# gpu_memory_utilization of the GPU (the recipe's TP 4 leaves ~10 GB; below a few GiB it cannot serve).
MIN_KV_GIB = 4
# Failures the probe reports that a driver install fixes; their remedy names the version.
DRIVER_ERRORS = ("no_driver", "driver_not_loaded")

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS | WARN | FAIL
    reason: str
    remedy: str = ""


def check_manifest(manifest: Mapping[str, Any] | None, error: Exception | None,
                   settings: Settings, held: Mapping[str, Any] | None = None) -> Check:
    """The Hub's file list at the pinned revision: needed to size the disk and to download.
    A failure blocks a deploy; a preflight-only run falls back to the size estimate. When the
    Hub cannot be reached, a host whose weights are verified for the pinned revision goes on
    with the manifest it holds (``held``)."""
    if manifest is not None:
        return Check("manifest", PASS, f"{settings.model_repo}@{settings.model_revision[:12]}: "
                     f"{len(manifest['files'])} files, {manifest['total_size'] / 1e9:.1f} GB")
    if error is not None and held is not None:
        return Check("manifest", WARN, f"cannot read the Hub's file list ({error}); this host's "
                     f"weights are verified for {settings.model_revision[:12]}: using the manifest "
                     f"it already holds ({len(held['files'])} files)",
                     "nothing for this host; the Hub is needed again to download another revision")
    if error is None:
        return Check("manifest", WARN, "model_revision is not set: disk needs use the recipe's "
                     f"{ESTIMATED_WEIGHTS_BYTES / 1e9:.0f} GB estimate",
                     "set model_revision to the 40-hex commit you will deploy")
    return Check("manifest", WARN if settings.preflight_only else FAIL,
                 f"cannot read the Hub's file list: {error}",
                 "check hf_endpoint, the HF token (hf_token_file or $HF_TOKEN) and model_revision")


def preflight_checks(gpu: Mapping[str, Any], host: Mapping[str, Any], settings: Settings,
                     manifest: Mapping[str, Any] | None, error: Exception | None,
                     held: Mapping[str, Any] | None = None,
                     docker_conflicts: list[str] | None = None) -> list[Check]:
    """Every check of one host, the manifest first: when the Hub is the problem it is the
    root cause, and the disk check (then sized by an estimate) only its consequence."""
    sized = manifest or (held if error is not None else None)
    return [check_manifest(manifest, error, settings, held),
            *run_checks(gpu, host, settings, weights_total_bytes=sized["total_size"] if sized else None,
                        docker_conflicts=docker_conflicts)]


def verdict(checks: Iterable[Check]) -> str:
    statuses = {c.status for c in checks}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else PASS


def first_failure(checks: Iterable[Check]) -> Check | None:
    return next((c for c in checks if c.status == FAIL), None)


# --- helpers ----------------------------------------------------------------------------

def gib(n: float | None) -> str:
    return "?" if n is None else f"{n / GIB:,.1f} GiB"


def gpu_label(g: Mapping[str, Any]) -> str:
    return f"GPU {g.get('index')} ({g.get('name') or 'unknown model'})"


def _error_of(g: Mapping[str, Any], key: str) -> str:
    err = (g.get("errors") or {}).get(key)
    return f" ({err})" if err else ""


def driver_remedy(settings: Settings) -> str:
    need = cuda.min_driver(settings.image_cuda_version)
    version = (f"driver {need} or newer (NVIDIA's minimum for CUDA {settings.image_cuda_version} "
               "on Linux x86_64)" if need else
               f"a driver that supports CUDA {settings.image_cuda_version} (its CUDA version in "
               "the nvidia-smi header must be at least that)")
    return (f"install the NVIDIA {version} with the open kernel modules, then reboot; "
            "workstation GPUs have no CUDA forward compatibility, so the driver itself must be new enough")


def our_container_ids(host: Mapping[str, Any], settings: Settings) -> set[str]:
    """Running containers that are our service (by name or compose service label)."""
    return {c["id"] for c in host.get("containers") or []
            if settings.service_name in (c.get("name"), c.get("compose_service"))}


def _is_ours(container_id: str | None, ours: set[str]) -> bool:
    return bool(container_id) and any(
        c.startswith(container_id) or container_id.startswith(c) for c in ours)


def _gpus(gpu: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(gpu.get("gpus") or [])


# --- GPU checks -------------------------------------------------------------------------

def check_gpu_probe(gpu: Mapping[str, Any], settings: Settings) -> Check:
    err = gpu.get("error")
    if not err:
        return Check("gpu_probe", PASS, f"NVML answered: driver {gpu.get('driver')}, "
                                        f"{gpu.get('count')} GPU(s)")
    kind = err.get("kind") or "unknown"
    remedy = err.get("remedy") or ""
    if kind == "no_driver":
        remedy = driver_remedy(settings)
    elif kind in DRIVER_ERRORS:
        remedy = f"{remedy}; if the driver is missing or too old: {driver_remedy(settings)}"
    labels = {"no_driver": "no NVIDIA driver (libnvidia-ml.so.1 not found)",
              "no_python": "python3 missing on the host (the GPU probe needs it)",
              "driver_not_loaded": "NVIDIA driver installed but its kernel module is not loaded"}
    reason = labels.get(kind, f"GPU probe failed ({kind})")
    message = err.get("message")
    return Check("gpu_probe", FAIL, f"{reason}: {message}" if message else reason, remedy)


def check_gpu_count(gpu: Mapping[str, Any], settings: Settings) -> Check:
    count = gpu.get("count")
    found = len(_gpus(gpu)) if count is None else count
    models: dict[str, int] = {}
    for g in _gpus(gpu):
        models[g.get("name") or "unknown model"] = models.get(g.get("name") or "unknown model", 0) + 1
    desc = ", ".join(f"{n}x {m}" for m, n in models.items()) or "none"
    if found == settings.gpu_count:
        return Check("gpu_count", PASS, f"{found} GPUs ({desc})")
    return Check("gpu_count", FAIL,
                 f"{settings.gpu_count} GPUs required, {found} visible to NVML ({desc})",
                 f"use a host with exactly {settings.gpu_count} GPUs, or set gpu_count and "
                 "tensor_parallel_size for this host")


def check_compute_capability(gpu: Mapping[str, Any], settings: Settings) -> Check:
    want = tuple(settings.gpu_compute_capability)
    want_text = f"{want[0]}.{want[1]}"
    bad = []
    for g in _gpus(gpu):
        cc = g.get("cc")
        if cc is None:
            bad.append(f"{gpu_label(g)} compute capability unknown{_error_of(g, 'cc')}")
        elif tuple(cc) != want:
            bad.append(f"{gpu_label(g)} is {cc[0]}.{cc[1]}")
    if bad:
        return Check("gpu_compute_capability", FAIL,
                     f"compute capability {want_text} required: " + "; ".join(bad),
                     f"this deploy targets compute capability {want_text} GPUs (set "
                     "gpu_compute_capability only if the image supports the other GPU)")
    return Check("gpu_compute_capability", PASS, f"every GPU is compute capability {want_text}")


def check_gpu_memory(gpu: Mapping[str, Any], settings: Settings) -> Check:
    need = settings.gpu_min_memory_gib
    bad = []
    for g in _gpus(gpu):
        total = g.get("mem_total")
        if total is None:
            bad.append(f"{gpu_label(g)} memory unknown{_error_of(g, 'memory')}")
        elif total / GIB < need:
            bad.append(f"{gpu_label(g)} has {gib(total)}")
    if bad:
        return Check("gpu_memory", FAIL, f"at least {need:g} GiB per GPU required: " + "; ".join(bad),
                     "use GPUs with enough memory: the weights alone take ~78.6 GB per GPU at TP 4")
    smallest = min((g["mem_total"] for g in _gpus(gpu)), default=None)
    return Check("gpu_memory", PASS, f"every GPU has at least {need:g} GiB (smallest {gib(smallest)})")


def check_driver(gpu: Mapping[str, Any], settings: Settings) -> Check:
    want = settings.image_cuda_version
    have, driver = gpu.get("cuda_driver"), gpu.get("driver") or "unknown"
    if isinstance(have, int):
        ok: bool | None = have >= cuda.cuda_int(want)
        supports = f"driver {driver} supports CUDA {cuda.cuda_text(have)}"
    else:
        ok = cuda.driver_supports(driver, want)
        supports = f"driver {driver} (its CUDA version unknown)"
    if ok:
        return Check("driver", PASS, f"{supports}; the image needs CUDA {want}")
    if ok is None:
        return Check("driver", FAIL, f"cannot tell whether {supports} runs the image's CUDA {want}",
                     driver_remedy(settings))
    return Check("driver", FAIL, f"{supports}; the image needs CUDA {want} (the container would "
                                 f"refuse to start: unsatisfied condition cuda>={want})",
                 driver_remedy(settings))


def check_open_kernel_module(gpu: Mapping[str, Any], settings: Settings) -> Check:
    name = "open_kernel_module"
    if not settings.gpu_require_open_kernel_module:
        return Check(name, PASS, "not required (gpu_require_open_kernel_module = false)")
    is_open = gpu.get("open_kernel_module")
    if is_open:
        return Check(name, PASS, "NVIDIA open kernel module loaded")
    remedy = ("install the open flavour of the driver (Ubuntu: nvidia-driver-<branch>-open; "
              "NVIDIA's repo: nvidia-open) and reboot")
    if is_open is False:
        return Check(name, FAIL, "the proprietary NVIDIA kernel module is loaded; Blackwell GPUs "
                                 f"need the open one ({gpu.get('kernel_module')})", remedy)
    return Check(name, WARN, "cannot tell which NVIDIA kernel module is loaded "
                             "(/proc/driver/nvidia/version unreadable); Blackwell needs the open one",
                 remedy)


def check_gpu_processes(gpu: Mapping[str, Any], host: Mapping[str, Any], settings: Settings) -> Check:
    ours = our_container_ids(host, settings)
    foreign, unknown, own = [], [], 0
    for g in _gpus(gpu):
        procs = g.get("procs")
        if procs is None:
            unknown.append(f"GPU {g.get('index')}{_error_of(g, 'procs')}")
            continue
        for p in procs:
            if _is_ours(p.get("container_id"), ours):
                own += 1
                continue
            who = f"pid {p.get('pid')}" + (f" ({p['name']})" if p.get("name") else "")
            foreign.append(f"{who} holds {gib(p.get('used_memory'))} on GPU {g.get('index')}")
    if foreign:
        return Check("gpu_processes", FAIL, "other processes hold GPU memory: " + "; ".join(foreign),
                     "stop them (vLLM takes gpu_memory_utilization of every GPU and would not fit), "
                     "or use another host")
    if unknown:
        return Check("gpu_processes", WARN, "could not list GPU processes on " + ", ".join(unknown),
                     "check `nvidia-smi` for processes holding GPU memory")
    note = f" ({own} of our own service)" if own else ""
    return Check("gpu_processes", PASS, f"no other process holds GPU memory{note}")


def check_persistence(gpu: Mapping[str, Any]) -> Check:
    off = [gpu_label(g) for g in _gpus(gpu) if g.get("persistence") is False]
    unknown = [f"{gpu_label(g)}{_error_of(g, 'persistence')}" for g in _gpus(gpu) if g.get("persistence") is None]
    if off:
        return Check("persistence_mode", WARN, "persistence mode off on " + ", ".join(off) +
                     " (slower start, GPU state reset when idle)",
                     "enable it: `nvidia-smi -pm 1`, or run nvidia-persistenced at boot")
    if unknown:
        return Check("persistence_mode", WARN, "persistence mode unknown on " + ", ".join(unknown),
                     "check with `nvidia-smi -q | grep -i persistence`")
    return Check("persistence_mode", PASS, "persistence mode on")


def check_pcie_link(gpu: Mapping[str, Any]) -> Check:
    slow, unknown = [], []
    for g in _gpus(gpu):
        gen, gen_max = g.get("pcie_gen"), g.get("pcie_gen_max")
        width, width_max = g.get("pcie_width"), g.get("pcie_width_max")
        if None in (gen, gen_max, width, width_max):
            unknown.append(f"{gpu_label(g)}{_error_of(g, 'pcie_width')}")
        if gen is not None and gen_max is not None and gen < gen_max or \
                width is not None and width_max is not None and width < width_max:
            slow.append(f"{gpu_label(g)} at gen {gen} x{width} of gen {gen_max} x{width_max}")
    if slow:
        return Check("pcie_link", WARN, "PCIe link below its maximum: " + "; ".join(slow) +
                     " (idle GPUs lower the link speed; a narrower width is a slot or riser issue)",
                     "re-check under load (`nvidia-smi -q -d PCIE`); reseat the card or use a full x16 slot")
    if unknown:
        return Check("pcie_link", WARN, "PCIe link generation or width unknown on " + ", ".join(unknown),
                     "check with `nvidia-smi -q -d PCIE`")
    return Check("pcie_link", PASS, "every GPU's PCIe link runs at its maximum")


# --- host checks ------------------------------------------------------------------------

def check_host_facts(host: Mapping[str, Any]) -> Check:
    if host.get("complete"):
        return Check("host_facts", PASS, "host facts gathered")
    return Check("host_facts", FAIL, "the host facts script did not run to its end",
                 "run the deploy with -v to see the command's output; the host needs a POSIX sh")


def hub_python_requirement() -> tuple[str, str]:
    """(version, Requires-Python) of the pinned huggingface_hub installed on the controller:
    the weights stage ships that version to the hosts, so their python3 must satisfy it."""
    return metadata.version("huggingface_hub"), metadata.metadata("huggingface_hub").get(
        "Requires-Python") or ""


def check_python(host: Mapping[str, Any], hub: tuple[str, str]) -> Check:
    version, impl = host.get("python"), host.get("python_implementation")
    hub_version, requires = hub
    if not version:
        return Check("python", FAIL, "python3 is not installed: the GPU probe and the weights "
                     "download run with it", "apt-get install -y python3")
    platform = f"{host.get('arch') or '?'}, " + (f"glibc {host['glibc']}" if host.get("glibc")
                                                 else "no glibc found")
    found = f"python3 {version} ({impl or '?'}; {platform})"
    if impl and impl != "cpython":
        return Check("python", FAIL, f"{found}: the weights download needs CPython",
                     "make python3 on the host a CPython")
    try:
        ok = SpecifierSet(requires).contains(version, prereleases=True)
    except InvalidSpecifier:
        ok = True  # a malformed pin's metadata is not the host's fault
    if not ok:
        return Check("python", FAIL, f"{found} is too old for huggingface_hub {hub_version}, which "
                     f"the weights download ships (it requires Python {requires})",
                     f"give the host a python3 {requires} (e.g. Ubuntu 22.04+ or Debian 12+)")
    return Check("python", PASS, found)


def check_os(host: Mapping[str, Any], settings: Settings) -> Check:
    supported = [" ".join(s.lower().split()) for s in settings.supported_os]
    name = host.get("os")
    if name and name.lower() in supported:
        return Check("os", PASS, f"{host.get('os_pretty_name') or name}")
    found = f"{host.get('os_pretty_name') or name}" if name else "unknown (no /etc/os-release)"
    return Check("os", FAIL, f"OS {found} is not supported",
                 "supported: " + ", ".join(settings.supported_os) + " (setting supported_os)")


def check_disk(host: Mapping[str, Any], settings: Settings,
               weights_total_bytes: int | None = None) -> Check:
    free = host.get("weights_fs_free_bytes")
    present = host.get("weights_present_bytes") or 0
    estimated = weights_total_bytes is None
    total = ESTIMATED_WEIGHTS_BYTES if estimated else weights_total_bytes
    to_fetch = max(0, total - present)
    margin = int(settings.disk_margin_gib * GIB)
    where = f"{host.get('weights_fs_mount') or '?'} (holds {settings.weights_dir})"
    note = (f"; weights size estimated at {total / 1e9:.0f} GB, the recipe's figure, until the "
            "Hub manifest is read") if estimated else ""
    if free is None:
        return Check("disk", FAIL, f"could not measure free space on {where}",
                     "check that the weights_dir's parent exists and `df` works")
    need = to_fetch + margin
    detail = (f"{gib(free)} free on {where}; needs {gib(need)} = {gib(to_fetch)} still to "
              f"download ({gib(present)} of the revision's files present in full) + "
              f"{settings.disk_margin_gib:g} GiB margin{note}")
    if free < need:
        return Check("disk", FAIL, detail, f"free {gib(need - free)} on {where}, or point "
                                           "weights_dir at a larger filesystem")
    return Check("disk", PASS, detail)


def check_shm(host: Mapping[str, Any], settings: Settings) -> Check:
    size = host.get("shm_total_bytes")
    want = settings.min_shm_gib
    if host.get("shm_fstype") not in (None, "tmpfs"):
        return Check("shm", WARN, f"/dev/shm is a {host.get('shm_fstype')} mount, not a tmpfs (the "
                                  "container shares it: ipc: host)", "mount a tmpfs on /dev/shm")
    if size is None:
        return Check("shm", WARN, "could not measure /dev/shm (`df` gave no size for it; the "
                                  "container shares it: ipc: host)",
                     f"check it is a tmpfs of at least {want:g} GiB: `df -h /dev/shm`")
    if size < want * GIB:
        return Check("shm", WARN, f"/dev/shm is {gib(size)}, below {want:g} GiB (the container "
                                  "uses the host's through ipc: host; small shm breaks multi-GPU workers)",
                     f"remount it larger: `mount -o remount,size={int(want)}G /dev/shm` (and in /etc/fstab)")
    return Check("shm", PASS, f"/dev/shm is {gib(size)}")


def check_port(host: Mapping[str, Any], settings: Settings) -> Check:
    ours = our_container_ids(host, settings)
    others, own = [], []
    for entry in host.get("port_listeners") or []:
        if _is_ours(entry.get("container_id"), ours) or (
                ours and entry.get("pid") is None and entry.get("container_id") is None):
            own.append(entry)  # no owner visible (not root) while our service runs: take it as ours
            continue
        who = f"pid {entry['pid']} ({entry.get('process') or '?'})" if entry.get("pid") else \
            "an unknown process"
        others.append(f"{who} on {entry.get('address')}")
    if others:
        return Check("port", FAIL, f"port {settings.port} is taken by " + "; ".join(others),
                     "stop that process or set port to a free one")
    if own:
        return Check("port", PASS, f"port {settings.port} is served by our own {settings.service_name}")
    return Check("port", PASS, f"port {settings.port} is free")


def check_api_exposure(settings: Settings, host_key: str | None = None) -> Check:
    """``host_key``: what the kit on the host serves with when api_key is unset ("key",
    "open", "none" = no kit yet; None = not looked at)."""
    addr = settings.bind_address
    try:
        loopback = addr == "localhost" or ipaddress.ip_address(addr).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return Check("api_exposure", PASS, f"API bound to loopback ({addr})")
    if settings.api_key is None and host_key in ("open", "none"):
        # A WARN, not a FAIL: a preflight-only run is fine, and the weights may download
        # meanwhile; the service stage refuses the host until a choice is made.
        return Check("api_exposure", WARN, "api_key is not set and this host has no API key yet: "
                     "the service stage will refuse it",
                     'choose one: api_key = "generate" (one random key for the fleet) or '
                     'api_key = "open" (no key: anyone who reaches the port can use the API)')
    if settings.api_key is None:
        return Check("api_exposure", PASS, f"API on {addr}:{settings.port}: api_key unset, the key "
                     "the host has is kept (a host without one is refused by the service stage)")
    if settings.api_key != API_KEY_OPEN:
        return Check("api_exposure", PASS, f"API on {addr}:{settings.port} requires an API key")
    return Check("api_exposure", WARN, f'API on {addr}:{settings.port} with api_key = "open": anyone '
                                       "who reaches the host can use it",
                 'set api_key = "generate", or bind_address = 127.0.0.1 behind a proxy or firewall')


def check_iommu(host: Mapping[str, Any]) -> Check:
    mode, acs = host.get("iommu_mode"), host.get("acs_enabled_bridges")
    found = []
    if mode == "translated":
        flags = " ".join(host.get("iommu_cmdline_flags") or []) or "on by default"
        found.append(f"IOMMU active ({flags}, {host.get('iommu_groups')} groups)")
    if acs:
        found.append(f"ACS source validation on {acs} PCIe bridge(s)")
    if found:
        return Check("iommu_acs", WARN,
                     "; ".join(found) + ": PCIe P2P between GPUs may hang NCCL all-reduce; the "
                     "service sets NCCL_P2P_DISABLE=1, so GPUs talk through host memory",
                     "nothing needed for this recipe; to allow P2P later use iommu=pt and "
                     "disable ACS in the BIOS")
    acs_note = "" if acs is not None else " (ACS not inspected: needs lspci and root)"
    return Check("iommu_acs", PASS,
                 f"IOMMU {mode or 'unknown'}; NCCL_P2P_DISABLE=1 is set anyway{acs_note}")


def kv_room(weights_bytes: int, tp: int, gpu_bytes: int, utilization: float) -> float:
    """Bytes per GPU left for the KV cache: its share of the memory vLLM may take, less its
    share of the weights."""
    return gpu_bytes * utilization - weights_bytes / tp


def smallest_fitting_tp(weights_bytes: int, gpu_bytes: int, utilization: float) -> int | None:
    """The smallest tensor parallel size that leaves MIN_KV_GIB per GPU (None: not up to 16)."""
    return next((tp for tp in range(1, 17)
                 if kv_room(weights_bytes, tp, gpu_bytes, utilization) >= MIN_KV_GIB * GIB), None)


def _weights_fit(gpu: Mapping[str, Any], settings: Settings, weights_total_bytes: int | None) -> Check | None:
    """Whether each GPU holds its share of the weights and still MIN_KV_GIB of KV cache (None:
    GPU memory unknown). A FAIL with the manifest's size; only a WARN with the estimate."""
    sizes = [g["mem_total"] for g in _gpus(gpu) if g.get("mem_total")]
    if not gpu.get("ok") or not sizes:
        return None
    tp, util = settings.tensor_parallel_size, settings.gpu_memory_utilization
    estimated = weights_total_bytes is None
    total = ESTIMATED_WEIGHTS_BYTES if estimated else weights_total_bytes
    smallest = min(sizes)
    left = kv_room(total, tp, smallest, util)
    numbers = (f"{total / 1e9:.1f} GB of weights{' (estimated)' if estimated else ''} / TP {tp} = "
               f"{gib(total / tp)} per GPU, of {gib(smallest * util)} usable ({gib(smallest)} x "
               f"gpu_memory_utilization {util:g}): {gib(left)} left for the KV cache")
    if left >= MIN_KV_GIB * GIB:
        return Check("sizing", PASS, numbers)
    fits = smallest_fitting_tp(total, smallest, util)
    host = gpu.get("count") or len(sizes)
    if fits is None:
        remedy = "no tensor parallel size up to 16 fits GPUs of this size: use GPUs with more memory"
    elif fits > host:
        remedy = (f"the smallest tensor_parallel_size that fits is {fits}, more than this host's {host} "
                  "GPUs: use a host with more (or larger) GPUs")
    else:
        remedy = f"set tensor_parallel_size {fits} (the smallest that fits) or more, with gpu_count to match"
    return Check("sizing", WARN if estimated else FAIL,
                 f"the weights cannot load with at least {MIN_KV_GIB} GiB of KV cache per GPU: {numbers}",
                 remedy)


def check_sizing(gpu: Mapping[str, Any], settings: Settings, weights_total_bytes: int | None = None) -> Check:
    tp, dcp = settings.tensor_parallel_size, settings.decode_context_parallel_size
    mml = settings.max_model_len
    found = gpu.get("count") if gpu.get("ok") else None
    if found is not None and tp > found:
        return Check("sizing", FAIL, f"tensor_parallel_size {tp} needs {tp} GPUs; the host has {found}",
                     f"set tensor_parallel_size to at most {found}")
    if tp % dcp:
        return Check("sizing", FAIL, f"decode_context_parallel_size {dcp} does not divide "
                                     f"tensor_parallel_size {tp}", "use a divisor of tensor_parallel_size")
    if dcp == 1 and mml > DCP1_MAX_MODEL_LEN:
        return Check("sizing", FAIL, f"max_model_len {mml} with DCP 1 runs out of memory (the recipe "
                                     f"caps DCP 1 at ~{DCP1_MAX_MODEL_LEN})",
                     f"set decode_context_parallel_size 4, or max_model_len {DCP1_MAX_MODEL_LEN}")
    fit = _weights_fit(gpu, settings, weights_total_bytes)
    if fit is not None and fit.status != PASS:
        return fit
    memory = f"; {fit.reason}" if fit else ""
    shape = f"TP {tp}, DCP {dcp}, max_model_len {mml}"
    if (tp, dcp, mml) == (VALIDATED_TP, VALIDATED_DCP, VALIDATED_MAX_MODEL_LEN):
        return Check("sizing", PASS, f"{shape}: the recipe's validated shape ({DCP_TABLE[dcp]}){memory}")
    measured = f"; the recipe measured DCP {dcp} at {DCP_TABLE[dcp]}" if dcp in DCP_TABLE else ""
    beyond = " (above the validated 250000: may not fit)" if mml > VALIDATED_MAX_MODEL_LEN else ""
    return Check("sizing", WARN,
                 f"{shape}{beyond} differs from the validated TP 4 / DCP 4 / 250000{measured}{memory}",
                 "allowed; set decode_context_parallel_size 4 and max_model_len 250000 for the "
                 "validated setup")


def check_docker(host: Mapping[str, Any], settings: Settings,
                 conflicts: list[str] | None = None) -> Check:
    """Docker, compose and the toolkit as found, and the installed packages the docker stage
    would refuse (``conflicts``: decided by glmfleet.docker.plan, handed in by the task)."""
    version, server = host.get("docker_version"), host.get("docker_server_version")
    v2, v1, ctk = host.get("compose_v2_version"), host.get("compose_v1_version"), host.get("nvidia_ctk_version")
    found = "; ".join(filter(None, [f"docker compose {v2}" if v2 else f"docker-compose {v1}" if v1 else "",
                                    f"NVIDIA Container Toolkit {ctk}" if ctk else ""]))
    found = f" ({found})" if found else ""
    if conflicts:
        which = f"installed packages conflict with docker_packages={settings.docker_packages!r}: {', '.join(conflicts)}"
        if settings.docker_remove_conflicts:
            return Check("docker", WARN, f"{which}; the docker stage removes them (docker_remove_conflicts)"
                                         " and their engine's containers stop")
        return Check("docker", FAIL, f"{which}; the docker stage would refuse this host",
                     "remove them yourself, set docker_remove_conflicts=true to let the deploy remove "
                     "them, or choose the other docker_packages")
    if not version:
        return Check("docker", PASS, f"Docker not installed: the docker stage installs it{found}")
    if not server:
        return Check("docker", WARN, f"Docker {version} installed but its daemon did not answer{found}",
                     "the docker stage starts it; check `systemctl status docker` if it stays down")
    return Check("docker", PASS, f"Docker {server} running{found}")


# --- all together -----------------------------------------------------------------------

def run_checks(gpu: Mapping[str, Any] | None, host: Mapping[str, Any] | None, settings: Settings,
               weights_total_bytes: int | None = None,
               hub_python: tuple[str, str] | None = None,
               docker_conflicts: list[str] | None = None) -> list[Check]:
    """Every check, hard requirements first (so first_failure is the most telling one).

    GPU checks that need NVML are skipped when the probe failed (its FAIL says why); host
    checks are skipped when the host facts are incomplete. hub_python: see
    hub_python_requirement (its default).
    """
    gpu = gpu or {"ok": False, "error": {"kind": "probe_failed", "message": "no GPU facts",
                                         "remedy": None}}
    host = host or {}
    probe_ok = not gpu.get("error")
    host_ok = bool(host.get("complete"))
    checks = [check_gpu_probe(gpu, settings)]
    if probe_ok:
        checks += [check_gpu_count(gpu, settings), check_compute_capability(gpu, settings),
                   check_gpu_memory(gpu, settings), check_driver(gpu, settings)]
    if probe_ok or gpu.get("open_kernel_module") is not None:
        checks.append(check_open_kernel_module(gpu, settings))
    if probe_ok:
        checks.append(check_gpu_processes(gpu, host, settings))
    checks.append(check_host_facts(host))
    if host_ok:
        checks += [check_os(host, settings),
                   check_python(host, hub_python or hub_python_requirement()),
                   check_disk(host, settings, weights_total_bytes), check_port(host, settings)]
    checks += [check_sizing(gpu, settings, weights_total_bytes), check_api_exposure(settings, (host or {}).get("api_key_state"))]
    if probe_ok:
        checks += [check_persistence(gpu), check_pcie_link(gpu)]
    if host_ok:
        checks += [check_iommu(host), check_shm(host, settings),
                   check_docker(host, settings, docker_conflicts)]
    return checks


# --- gateway hosts (the `gateway` inventory group: HAProxy, no GPU) -----------------------

GATEWAY_MIN_FREE_GIB = 1.0  # HAProxy and socat with their libraries, logs and state


def check_gateway_port(host: Mapping[str, Any], port: int, setting: str,
                       own: tuple[str, str] = ("haproxy", "HAProxy")) -> Check:
    """The port free, or held by the stage's own server (own: its process name, its name)."""
    others = [f"pid {e['pid']} ({e.get('process') or '?'})" if e.get("pid") else "an unknown process"
              for e in host.get("port_listeners") or [] if e.get("process") != own[0]]
    if others:
        return Check(setting, FAIL, f"port {port} is taken by " + "; ".join(others),
                     f"stop that process or set {setting} to a free port")
    return Check(setting, PASS, f"port {port} is free (or {own[1]}'s own)")


def check_gateway_disk(host: Mapping[str, Any]) -> Check:
    free = host.get("weights_fs_free_bytes")
    where = host.get("weights_fs_mount") or "?"
    if free is None:
        return Check("disk", FAIL, "could not measure free space under /var", "check that `df` works")
    if free < GATEWAY_MIN_FREE_GIB * GIB:
        return Check("disk", FAIL, f"{gib(free)} free on {where}, below {GATEWAY_MIN_FREE_GIB:g} GiB",
                     f"free space on {where} (HAProxy, its logs and state go under /var)")
    return Check("disk", PASS, f"{gib(free)} free on {where}")


def check_gateway_tls(settings: Settings, cert_present: bool | None) -> Check:
    if not settings.gateway_tls_cert:
        return Check("tls", PASS, "plain HTTP (gateway_tls_cert not set)")
    if cert_present:
        return Check("tls", PASS, f"HTTPS with {settings.gateway_tls_cert}")
    return Check("tls", FAIL, f"gateway_tls_cert {settings.gateway_tls_cert} is not a file on this host",
                 "put the PEM (certificate, chain and private key in one file, mode 600) there, "
                 "or unset gateway_tls_cert for plain HTTP")


def run_gateway_checks(host: Mapping[str, Any] | None, settings: Settings,
                       cert_present: bool | None) -> list[Check]:
    """A gateway host needs a supported OS, a little disk, its two ports and, for HTTPS, its
    certificate: no GPU, Docker or weights checks."""
    host = host or {}
    checks = [check_host_facts(host)]
    if host.get("complete"):
        checks += [check_os(host, settings), check_gateway_disk(host),
                   check_gateway_port(host, settings.gateway_port, "gateway_port")]
    checks.append(check_gateway_tls(settings, cert_present))
    return checks


# --- image cache hosts (the `image_cache` inventory group: a registry, no GPU) -------------

IMAGE_CACHE_WARN_FREE_GIB = 50.0  # a vLLM serving image is tens of GB


def run_image_cache_checks(host: Mapping[str, Any] | None, settings: Settings) -> list[Check]:
    """An image cache host needs a supported OS, room for the image under
    /var/lib and its port: no GPU, Docker or weights checks."""
    host = host or {}
    checks = [check_host_facts(host)]
    if host.get("complete"):
        disk = check_gateway_disk(host)
        free = host.get("weights_fs_free_bytes")
        if disk.status == PASS and free < IMAGE_CACHE_WARN_FREE_GIB * GIB:
            disk = Check("disk", WARN, f"{gib(free)} free on {host.get('weights_fs_mount') or '?'}: "
                         "may be too little for the serving image (tens of GB)",
                         "free space under /var/lib/docker-registry")
        checks += [check_os(host, settings), disk,
                   check_gateway_port(host, settings.image_cache_port, "image_cache_port",
                                      own=("docker-registry", "the image cache"))]
    return checks
