"""Host facts for preflight: one POSIX sh script, one SSH command, key=value lines back.

Works on a bare Debian minbase (no python3, no ss, no lspci, no docker): every probe is
guarded and an absent tool gives an absent value, never an error.

    from glmfleet.preflight.host import HostFacts
    facts = host.get_fact(HostFacts, weights_dir=settings.weights_dir, port=settings.port)

`parse_host_facts` (pure) turns the output into the dict described in its docstring.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from typing import Any

from pyinfra.api import FactBase

# POSIX sh (dash). @WEIGHTS@ and @PORT@ are replaced with quoted values.
SCRIPT = r"""
W=@WEIGHTS@
P=@PORT@
t() { if command -v timeout >/dev/null 2>&1; then timeout 15 "$@"; else "$@"; fi; }
have() { command -v "$1" >/dev/null 2>&1; }
echo "uid=$(id -u)"
if [ -r /etc/os-release ]; then
  grep -E '^(ID|VERSION_ID|PRETTY_NAME|VERSION_CODENAME)=' /etc/os-release | sed 's/^/os./'
fi
echo "kernel=$(uname -r)"
echo "arch=$(uname -m)"
echo "glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null)"
if have python3; then
  python3 -S -c 'import sys; print("python=%d.%d.%d" % sys.version_info[:3]); print("python_impl=" + sys.implementation.name)' 2>/dev/null
fi
echo "cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null)"
awk '/^MemTotal:/ {print "mem_total_kb=" $2} /^MemAvailable:/ {print "mem_available_kb=" $2}' /proc/meminfo
# Disk: the filesystem that will hold the weights is the nearest existing parent's.
d=$W
while [ ! -e "$d" ] && [ "$d" != / ]; do d=$(dirname "$d"); done
echo "weights_existing_parent=$d"
df -Pk "$d" 2>/dev/null | awk 'NR == 2 {
  print "weights_fs_total_kb=" $2; print "weights_fs_free_kb=" $4
  sub(/^[^ ]+ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+% +/, ""); print "weights_fs_mount=" $0 }'
# Weights already present: only the manifest's files (the "<size> <path>" lines below),
# each at its expected size and fully allocated (a sparse or preallocated-but-unwritten file
# is not present); other revisions, stray files and partials count for nothing.
if [ -d "$W" ]; then
  b=0
  while read -r size path; do
    [ -n "$path" ] && [ -f "$W/$path" ] || continue
    set -- $(stat -L -c '%s %b %B' "$W/$path" 2>/dev/null)
    [ "${1:-}" = "$size" ] && [ $(( ${2:-0} * ${3:-0} )) -ge "$size" ] && b=$((b + size))
  done <<'GLMFLEET_MANIFEST'
@EXPECTED@
GLMFLEET_MANIFEST
  echo "weights_present_bytes=$b"
  # Weights the weights stage verified, and the manifest it verified them against: a Hub
  # outage need not stop a host that already holds the pinned revision.
  if [ -f "$W/.glmfleet/VERIFIED" ] && [ -f "$W/.glmfleet/manifest.json" ]; then
    echo "weights_verified=$(head -c 100 "$W/.glmfleet/VERIFIED" | tr -d ' \n')"
    echo "weights_held_manifest=$(tr -d '\n' < "$W/.glmfleet/manifest.json")"
  fi
fi
df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print "shm_total_kb=" $2; print "shm_free_kb=" $4}'
awk '$2 == "/dev/shm" {print "shm_fstype=" $3}' /proc/mounts 2>/dev/null
# Who listens on the service port: ss when present, else /proc/net/tcp{,6} + a socket-inode
# search. Each listener: listen=<source>|<address>|<pid>|<process>|<container id>.
listener() {
  comm=; cid=
  if [ -n "$3" ]; then
    comm=$(cat "/proc/$3/comm" 2>/dev/null)
    cid=$(grep -o '[0-9a-f]\{64\}' "/proc/$3/cgroup" 2>/dev/null | head -n 1)
  fi
  echo "listen=$1|$2|${3:--}|${comm:--}|${cid:--}"
}
if have ss; then
  echo "listen_tool=ss"
  ss -Hltnp "sport = :$P" 2>/dev/null | while read -r _st _rq _sq local _peer rest; do
    listener ss "$local" "$(echo "$rest" | sed -n 's/.*pid=\([0-9][0-9]*\).*/\1/p')"
  done
else
  echo "listen_tool=proc"
  ph=$(printf '%04X' "$P")
  for f in /proc/net/tcp /proc/net/tcp6; do
    [ -r "$f" ] && awk -v ph="$ph" 'NR > 1 && $4 == "0A" { split($2, a, ":");
      if (toupper(a[2]) == ph) print a[1], $10 }' "$f"
  done | while read -r addr inode; do
    pid=$(find /proc/[0-9]*/fd -maxdepth 1 -lname "socket:\[$inode\]" 2>/dev/null | head -n 1 | cut -d/ -f3)
    listener proc "$addr" "$pid"
  done
fi
echo "cmdline=$(cat /proc/cmdline 2>/dev/null)"
echo "iommu_groups=$(ls /sys/kernel/iommu_groups 2>/dev/null | wc -l)"
echo "iommu_units=$(ls /sys/class/iommu 2>/dev/null | tr '\n' ' ')"
if have lspci; then
  echo "acs_srcvalid=$(t lspci -vvv 2>/dev/null | grep -c 'ACSCtl:.*SrcValid+')"
fi
if have docker; then
  echo "docker_client=$(docker --version 2>/dev/null)"
  echo "docker_server=$(t docker version --format '{{.Server.Version}}' 2>/dev/null)"
  echo "compose_v2=$(t docker compose version --short 2>/dev/null)"
  if out=$(t docker ps --no-trunc --format '{{.ID}}|{{.Names}}|{{.Label "com.docker.compose.service"}}|{{.Image}}|{{.Status}}' 2>/dev/null); then
    echo "docker_ps=ok"
    [ -z "$out" ] || echo "$out" | sed 's/^/container=/'
  fi
fi
if have docker-compose; then echo "compose_v1=$(t docker-compose version --short 2>/dev/null)"; fi
if have nvidia-ctk; then echo "nvidia_ctk=$(nvidia-ctk --version 2>/dev/null | head -n 1)"; fi
echo end=1
exit 0
"""


def host_facts_command(weights_dir: str, port: int, expected=()) -> str:
    """``expected``: (path, size) of the manifest's files, the only ones counted as present."""
    lines = []
    for path, size in expected:
        if "\n" in path or "GLMFLEET_MANIFEST" in path:  # cannot be one line of the list
            continue
        lines.append(f"{int(size)} {path}")
    return (SCRIPT.replace("@WEIGHTS@", shlex.quote(weights_dir)).replace("@PORT@", str(int(port)))
            .replace("@EXPECTED@", "\n".join(lines)))


class HostFacts(FactBase):
    """OS, resources, disk for the weights, /dev/shm, the service port, IOMMU/ACS, Docker."""

    def command(self, weights_dir: str, port: int, expected=()) -> str:
        return host_facts_command(weights_dir, port, expected)

    @staticmethod
    def default() -> dict:
        return parse_host_facts("")

    def process(self, output: list[str]) -> dict:
        return parse_host_facts("\n".join(output))


API_KEY_STATE_SH = r"""
f={env}
if [ -f "$f" ]; then
  v=$(grep -m1 '^API_KEY=' "$f" | cut -d= -f2- | tr -d "\"' ")
  if [ -n "$v" ]; then echo key; else echo open; fi
else
  echo none
fi
"""


class ApiKeyState(FactBase):
    """Whether the kit on the host serves with an API key: "key", "open" (no key) or "none"
    (no kit yet). Prints only that word, never the key (facts can be printed)."""

    def command(self, service_dir: str) -> str:
        return API_KEY_STATE_SH.format(env=shlex.quote(f"{service_dir}/.env"))

    @staticmethod
    def default():
        return None

    def process(self, output: list[str]):
        word = output[0].strip() if output else ""
        return word if word in ("key", "open", "none") else None


# --- parsing (pure) ---------------------------------------------------------------------

_VERSION = re.compile(r"\d+(?:\.\d+)+(?:[-+~][\w.+~-]*)?")
_IOMMU_FLAG = re.compile(r"^(intel_iommu|amd_iommu|iommu|iommu\.passthrough|iommu\.strict)=", re.I)


def _kb(value: str | None) -> int | None:
    return int(value) * 1024 if value and value.isdigit() else None


def _int(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None


def _version(text: str | None) -> str | None:
    """'Docker version 20.10.24+dfsg1, build 297e128' -> '20.10.24+dfsg1'."""
    if not text:
        return None
    match = _VERSION.search(text)
    return match.group(0).rstrip(",") if match else None


def _glibc(text: str | None) -> str | None:
    """getconf GNU_LIBC_VERSION: 'glibc 2.36' -> '2.36'."""
    match = re.fullmatch(r"glibc (\d+\.\d+)\S*", (text or "").strip())
    return match.group(1) if match else None


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def proc_net_address(hex_addr: str) -> str:
    """/proc/net/tcp{,6} local address (hex, host byte order per 32-bit word) -> text."""
    raw = bytes.fromhex(hex_addr)
    # Each 32-bit word is stored little-endian on x86 and arm64 alike.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(words)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return str(addr)


def _ss_address(local: str) -> str:
    """'0.0.0.0:8000', '[::]:8000', '*:8000', '127.0.0.1%lo:8000' -> '0.0.0.0', '::', '::', ..."""
    host = local.rsplit(":", 1)[0]
    host = host.split("%", 1)[0].strip("[]")
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]
    return "::" if host in ("*", "") else host  # ss prints * for a dual-stack wildcard


def _listener(value: str) -> dict | None:
    parts = value.split("|")
    if len(parts) != 5:
        return None
    source, address, pid, process, cid = parts
    try:
        address = proc_net_address(address) if source == "proc" else _ss_address(address)
    except ValueError:
        pass
    return {"address": address, "pid": _int(pid), "process": None if process == "-" else process,
            "container_id": None if cid == "-" else cid}


def _container(value: str) -> dict | None:
    parts = value.split("|", 4)
    if len(parts) != 5:
        return None
    cid, names, service, image, status = parts
    return {"id": cid, "name": names.split(",")[0], "compose_service": service or None,
            "image": image, "status": status}


def _iommu_mode(flags: list[str], groups: int | None, units: list[str]) -> str | None:
    """'off', 'passthrough', 'translated' (DMA remapping on), or None when unknowable."""
    values = {f.split("=", 1)[0].lower(): f.split("=", 1)[1].lower() for f in flags}
    if any(values.get(k) == "off" for k in ("intel_iommu", "amd_iommu", "iommu")):
        return "off"
    if groups is None and not units:
        return None
    if not groups and not units:
        return "off"
    if values.get("iommu") == "pt" or values.get("iommu.passthrough") in ("1", "on", "y"):
        return "passthrough"
    return "translated"


def parse_host_facts(text: str) -> dict[str, Any]:
    """The host-facts script's output -> dict; never raises. Keys (None when unknown):

    complete (bool: the script ran to its end), uid,
    os_id, os_version_id, os_pretty_name, os_codename, os ("ubuntu 24.04"),
    kernel, arch, glibc ("2.36"; None: musl or unknown), python (python3's "3.11.2"; None:
    no python3), python_implementation ("cpython"), cpus, mem_total_bytes, mem_available_bytes,
    weights_existing_parent, weights_fs_mount, weights_fs_total_bytes, weights_fs_free_bytes,
    weights_present_bytes (0 when weights_dir does not exist yet),
    weights_verified (the revision the weights stage verified), weights_held_manifest (the
    manifest it verified against, JSON text),
    shm_total_bytes, shm_free_bytes, shm_fstype,
    listen_tool ("ss" | "proc"), port_listeners [{address, pid, process, container_id}],
    kernel_cmdline, iommu_cmdline_flags [..], iommu_groups, iommu_units [..],
    iommu_mode ("off" | "passthrough" | "translated"), acs_enabled_bridges (None without lspci
    or root), docker_version, docker_server_version (None: daemon not answering),
    compose_v2_version, compose_v1_version, nvidia_ctk_version,
    containers ([{id, name, compose_service, image, status}] of running containers;
    None when docker is absent or `docker ps` failed).
    """
    kv: dict[str, str] = {}
    listeners, containers = [], []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip()
        if key == "listen":
            entry = _listener(value)
            if entry:
                listeners.append(entry)
        elif key == "container":
            entry = _container(value)
            if entry:
                containers.append(entry)
        else:
            kv[key] = value.strip()

    os_id = _unquote(kv.get("os.ID", "")).lower() or None
    os_version = _unquote(kv.get("os.VERSION_ID", "")) or None
    flags = [f for f in kv.get("cmdline", "").split() if _IOMMU_FLAG.match(f)]
    groups = _int(kv.get("iommu_groups"))
    units = kv.get("iommu_units", "").split()
    uid = _int(kv.get("uid"))
    acs = _int(kv.get("acs_srcvalid")) if uid == 0 else None  # lspci needs root for ACSCtl
    docker_client = _version(kv.get("docker_client"))
    return {
        "complete": kv.get("end") == "1",
        "uid": uid,
        "os_id": os_id,
        "os_version_id": os_version,
        "os_pretty_name": _unquote(kv.get("os.PRETTY_NAME", "")) or None,
        "os_codename": _unquote(kv.get("os.VERSION_CODENAME", "")) or None,
        "os": f"{os_id} {os_version}" if os_id and os_version else None,
        "kernel": kv.get("kernel") or None,
        "arch": kv.get("arch") or None,
        "glibc": _glibc(kv.get("glibc")),
        "python": kv.get("python") or None,
        "python_implementation": kv.get("python_impl") or None,
        "cpus": _int(kv.get("cpus")),
        "mem_total_bytes": _kb(kv.get("mem_total_kb")),
        "mem_available_bytes": _kb(kv.get("mem_available_kb")),
        "weights_existing_parent": kv.get("weights_existing_parent") or None,
        "weights_fs_mount": kv.get("weights_fs_mount") or None,
        "weights_fs_total_bytes": _kb(kv.get("weights_fs_total_kb")),
        "weights_fs_free_bytes": _kb(kv.get("weights_fs_free_kb")),
        "weights_present_bytes": _int(kv.get("weights_present_bytes")) if "weights_present_bytes" in kv
        else (0 if kv.get("end") == "1" else None),
        "weights_verified": kv.get("weights_verified") or None,
        "weights_held_manifest": kv.get("weights_held_manifest") or None,  # JSON text
        "shm_total_bytes": _kb(kv.get("shm_total_kb")),
        "shm_free_bytes": _kb(kv.get("shm_free_kb")),
        "shm_fstype": kv.get("shm_fstype") or None,
        "listen_tool": kv.get("listen_tool") or None,
        "port_listeners": listeners,
        "kernel_cmdline": kv.get("cmdline") or None,
        "iommu_cmdline_flags": flags,
        "iommu_groups": groups,
        "iommu_units": units,
        "iommu_mode": _iommu_mode(flags, groups, units),
        "acs_enabled_bridges": acs,
        "docker_version": docker_client,
        "docker_server_version": _version(kv.get("docker_server")) if docker_client else None,
        "compose_v2_version": _version(kv.get("compose_v2")),
        "compose_v1_version": _version(kv.get("compose_v1")),
        "nvidia_ctk_version": _version(kv.get("nvidia_ctk")),
        "containers": containers if kv.get("docker_ps") == "ok" else None,
    }
