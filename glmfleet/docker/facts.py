"""Facts for the Docker and NVIDIA Container Toolkit stages.

Each fact is one POSIX sh command printing key=value lines; parsing is pure and tested on
recorded outputs. Nothing here changes the host: a key download goes to a private temp dir
that is removed before the command returns, and its bytes travel back in the output.

Facts used while planning (before any change):  DockerHostFacts.
Facts read by our operations at execution time:  InstalledPackages, KeyringFile,
DownloadedKey, FileDigest, DaemonJson, DockerService, NvidiaDriver, CdiSpec,
GpuContainerCheck.
"""

from __future__ import annotations

import base64
import shlex
from typing import Any

from pyinfra.api import FactBase

from glmfleet.docker.plan import NO_NVIDIA_SMI, parse_gpg_colons, parse_nvidia_smi_list

# dockerd finds runtimes and the NVIDIA hook through PATH; use the same one everywhere.
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APPLIED_STAMP = "/var/lib/glmfleet/docker.applied"

# What a running dockerd depends on, hashed: its config, its binary and the NVIDIA hooks it
# looks up once at start. After each (re)start the value is written to APPLIED_STAMP; a
# running dockerd whose stamp differs is restarted. Being state-based (not "did an operation
# change something in this run"), an interrupted run is finished by the next one.
FINGERPRINT_SH = r"""
dockerd_inputs() {
  if [ -f /etc/docker/daemon.json ]; then sha256sum < /etc/docker/daemon.json; else echo no-daemon-json; fi
  for b in dockerd nvidia-container-runtime-hook nvidia-cdi-hook; do
    if p=$(command -v "$b"); then stat -L -c "$b %s %Y" "$p"; else echo "$b absent"; fi
  done
}
fingerprint=$(dockerd_inputs | sha256sum | cut -c1-64)
"""


def _kv(lines: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """key=value lines -> (last value per key, all values per key)."""
    last: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            last[key] = value
            multi.setdefault(key, []).append(value)
    return last, multi


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


# --- packages --------------------------------------------------------------------------------

def dpkg_query_sh(names: list[str]) -> str:
    return ("dpkg-query -W -f='pkg=${Package}|${db:Status-Abbrev}|${Version}\\n' "
            + " ".join(shlex.quote(n) for n in names) + " 2>/dev/null || true")


def parse_packages(values: list[str]) -> dict[str, str]:
    """pkg=<name>|<status abbrev>|<version> lines -> {name: version} of packages present.
    Present = anything dpkg has unpacked (a half-installed package still conflicts); "rc"
    (removed, config kept) and "un" are absent."""
    out = {}
    for v in values:
        parts = v.split("|")
        if len(parts) == 3 and len(parts[1]) >= 2 and parts[1][1] not in ("n", "c"):
            out[parts[0]] = parts[2]
    return out


class InstalledPackages(FactBase):
    """{name: version} of the named packages that are installed."""

    def command(self, names):
        return dpkg_query_sh(list(names))

    @staticmethod
    def default():
        return {}

    def process(self, output):
        return parse_packages(_kv(output)[1].get("pkg", []))


# --- planning facts --------------------------------------------------------------------------

INTERESTING_PACKAGES = (
    "docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin",
    "docker-ce-rootless-extras", "docker.io", "docker-compose", "docker-compose-v2", "docker-doc",
    "podman-docker", "containerd", "runc", "nvidia-container-toolkit", "nvidia-container-toolkit-base",
    "libnvidia-container-tools", "libnvidia-container1", "gpg", "ca-certificates")

DOCKER_HOST_SH = r"""
have() { command -v "$1" >/dev/null 2>&1; }
if [ -r /etc/os-release ]; then
  grep -E '^(ID|VERSION_ID|VERSION_CODENAME|UBUNTU_CODENAME|PRETTY_NAME)=' /etc/os-release | sed 's/^/os./'
fi
echo "arch=$(dpkg --print-architecture 2>/dev/null)"
if [ -d /run/systemd/system ]; then echo init=systemd; else echo init=none; fi
@DPKG@
have gpg && echo gpg=1
have nvidia-smi && echo nvidia_smi=1
[ -x /usr/lib/apt/apt-helper ] && echo apt_helper=1
echo end=1
"""


def docker_host_command() -> str:
    return DOCKER_HOST_SH.replace("@DPKG@", dpkg_query_sh(list(INTERESTING_PACKAGES)))


def parse_docker_host_facts(text: str) -> dict[str, Any]:
    """-> {complete, os_id, os_version_id, os_codename, os_pretty_name, arch,
    init ("systemd" | "none"), packages {name: version}, gpg, nvidia_smi, apt_helper}.
    os_codename prefers UBUNTU_CODENAME (derivatives set VERSION_CODENAME to their own)."""
    kv, multi = _kv(text.splitlines())
    codename = _unquote(kv.get("os.UBUNTU_CODENAME", "")) or _unquote(kv.get("os.VERSION_CODENAME", ""))
    return {
        "complete": kv.get("end") == "1",
        "os_id": _unquote(kv.get("os.ID", "")).lower() or None,
        "os_version_id": _unquote(kv.get("os.VERSION_ID", "")) or None,
        "os_codename": codename or None,
        "os_pretty_name": _unquote(kv.get("os.PRETTY_NAME", "")) or None,
        "arch": kv.get("arch") or None,
        "init": kv.get("init") or None,
        "packages": parse_packages(multi.get("pkg", [])),
        "gpg": kv.get("gpg") == "1",
        "nvidia_smi": kv.get("nvidia_smi") == "1",
        "apt_helper": kv.get("apt_helper") == "1",
    }


class DockerHostFacts(FactBase):
    """OS release, dpkg architecture, init system and the Docker/toolkit packages present."""

    def command(self):
        return docker_host_command()

    @staticmethod
    def default():
        return parse_docker_host_facts("")

    def process(self, output):
        return parse_docker_host_facts("\n".join(output))


# --- keys ------------------------------------------------------------------------------------

# gpg reads the key in a throwaway GNUPGHOME: nothing is imported anywhere.
_GPG_SHOW = ('g=$(mktemp -d) && GNUPGHOME="$g" gpg --batch --no-tty --show-keys --with-colons "$1" '
             '2>/dev/null | sed "s/^/gpg=/"; rm -rf "$g"')


def keyring_file_command(path: str) -> str:
    return (f"set -- {shlex.quote(path)}; if [ -f \"$1\" ]; then echo exists=1; "
            "echo \"mode=$(stat -c %a \"$1\")\"; "
            "head -c 1024 \"$1\" | grep -q 'BEGIN PGP PUBLIC KEY BLOCK' && echo armored=1; "
            f"{_GPG_SHOW}; fi; echo end=1")


def parse_keyring_file(text: str) -> dict[str, Any]:
    kv, multi = _kv(text.splitlines())
    return {"exists": kv.get("exists") == "1", "mode": kv.get("mode"),
            "armored": kv.get("armored") == "1",
            "keys": parse_gpg_colons("\n".join(multi.get("gpg", [])))}


class KeyringFile(FactBase):
    """An installed apt keyring: exists, mode, armoured, the keys gpg sees in it."""

    def command(self, path):
        return keyring_file_command(path)

    @staticmethod
    def default():
        return {"exists": False, "mode": None, "armored": False, "keys": []}

    def process(self, output):
        return parse_keyring_file("\n".join(output))


def downloaded_key_command(url: str) -> str:
    # apt-helper is apt's own downloader: present wherever apt is, speaks https, and honours
    # the host's apt proxy settings (Acquire::http(s)::Proxy), so air-gapped and proxied
    # sites fetch the key the same way apt fetches the packages.
    return (
        "t=$(mktemp -d) || exit 1; trap 'rm -rf \"$t\"' EXIT; "
        "id _apt >/dev/null 2>&1 && chown _apt \"$t\"; "  # apt's sandbox user writes the file
        f"if ! /usr/lib/apt/apt-helper download-file {shlex.quote(url)} \"$t/key\" >\"$t/log\" 2>&1; then "
        "  echo \"error=$(grep -E '^(E|Err):' \"$t/log\" | tr '\\n' ' ' | cut -c1-400)\"; echo end=1; exit 0; fi; "
        "command -v gpg >/dev/null 2>&1 || { echo 'error=gpg is not installed'; echo end=1; exit 0; }; "
        "head -c 1024 \"$t/key\" | grep -q 'BEGIN PGP PUBLIC KEY BLOCK' && echo armored=1; "
        "echo \"data=$(head -c 262144 \"$t/key\" | base64 -w0)\"; "
        f"set -- \"$t/key\"; {_GPG_SHOW}; echo end=1")


def parse_downloaded_key(text: str) -> dict[str, Any]:
    kv, multi = _kv(text.splitlines())
    data = None
    if "data" in kv:
        try:
            data = base64.b64decode(kv["data"], validate=True)
        except ValueError:
            data = None
    error = kv.get("error")
    if not error and kv.get("end") != "1":
        error = "the download command did not finish"
    return {"error": error.strip() if error else None, "armored": kv.get("armored") == "1",
            "data": data, "keys": parse_gpg_colons("\n".join(multi.get("gpg", [])))}


class DownloadedKey(FactBase):
    """Fetch a signing key into a private temp dir on the host and read it with gpg:
    {error, armored, data (the exact bytes), keys}. The temp dir is gone afterwards."""

    def command(self, url):
        return downloaded_key_command(url)

    @staticmethod
    def default():
        return {"error": "not fetched", "armored": False, "data": None, "keys": []}

    def process(self, output):
        return parse_downloaded_key("\n".join(output))


# --- files -----------------------------------------------------------------------------------

class FileDigest(FactBase):
    """{"mode": "644", "sha256": ...} of a regular file, or None when absent."""

    def command(self, path):
        q = shlex.quote(path)
        return (f"if [ -f {q} ]; then echo \"mode=$(stat -c %a {q})\"; "
                f"echo \"sha256=$(sha256sum < {q} | cut -c1-64)\"; fi; echo end=1")

    @staticmethod
    def default():
        return None

    def process(self, output):
        kv, _ = _kv(output)
        return {"mode": kv["mode"], "sha256": kv.get("sha256")} if "mode" in kv else None


class DaemonJson(FactBase):
    """The text of /etc/docker/daemon.json, or None when there is none."""

    def command(self, path="/etc/docker/daemon.json"):
        q = shlex.quote(path)
        return f"if [ -f {q} ]; then echo present=1; echo \"data=$(base64 -w0 < {q})\"; fi; echo end=1"

    @staticmethod
    def default():
        return None

    def process(self, output):
        kv, _ = _kv(output)
        if kv.get("present") != "1":
            return None
        return base64.b64decode(kv.get("data", "")).decode("utf-8", errors="replace")


# --- the running engine ----------------------------------------------------------------------

DOCKER_SERVICE_SH = r"""
export PATH=@PATH@
have() { command -v "$1" >/dev/null 2>&1; }
t() { timeout 20 "$@"; }
@FINGERPRINT@
echo "fingerprint=$fingerprint"
[ -r @STAMP@ ] && echo "applied=$(head -n 1 @STAMP@)"
if [ -d /run/systemd/system ]; then
  echo manager=systemd
  echo "active=$(systemctl is-active docker 2>/dev/null)"
  echo "enabled=$(systemctl is-enabled docker 2>/dev/null)"
else
  echo manager=none
  p=$(cat /var/run/docker.pid 2>/dev/null)
  [ -n "$p" ] && [ "$(cat /proc/$p/comm 2>/dev/null)" = dockerd ] && echo "pid=$p"
fi
if have docker; then
  echo "server=$(t docker version --format '{{.Server.Version}}' 2>/dev/null)"
  echo "compose_v2=$(t docker compose version --short 2>/dev/null)"
fi
have docker-compose && echo "compose_v1=$(t docker-compose version --short 2>/dev/null)"
have nvidia-ctk && echo "nvidia_ctk=$(nvidia-ctk --version 2>/dev/null | head -n 1)"
echo end=1
"""


def docker_service_command() -> str:
    return (DOCKER_SERVICE_SH.replace("@PATH@", HOST_PATH).replace("@FINGERPRINT@", FINGERPRINT_SH)
            .replace("@STAMP@", APPLIED_STAMP))


def parse_docker_service(text: str) -> dict[str, Any]:
    """-> {manager, running, enabled (None without systemd), pid, fingerprint, applied,
    server_version, compose_v2, compose_v1, nvidia_ctk}."""
    kv, _ = _kv(text.splitlines())
    systemd = kv.get("manager") == "systemd"
    running = kv.get("active") == "active" if systemd else bool(kv.get("pid"))
    return {
        "manager": kv.get("manager"),
        "running": running,
        "enabled": (kv.get("enabled") == "enabled") if systemd else None,
        "pid": int(kv["pid"]) if kv.get("pid", "").isdigit() else None,
        "fingerprint": kv.get("fingerprint") or None,
        "applied": kv.get("applied") or None,
        "server_version": kv.get("server") or None,
        "compose_v2": kv.get("compose_v2") or None,
        "compose_v1": kv.get("compose_v1") or None,
        "nvidia_ctk": kv.get("nvidia_ctk") or None,
    }


class DockerService(FactBase):
    """Is dockerd running (systemd or our init-less helper), is it enabled at boot, and is
    it running what is on disk now (fingerprint vs the stamp written at its last start)."""

    def command(self):
        return docker_service_command()

    @staticmethod
    def default():
        return parse_docker_service("")

    def process(self, output):
        return parse_docker_service("\n".join(output))


# --- CDI and the GPU check -------------------------------------------------------------------

CDI_SPEC = "/var/run/cdi/nvidia.yaml"  # where NVIDIA's docs and nvidia-cdi-refresh put it


class CdiSpec(FactBase):
    """{"same": the spec on disk equals what `nvidia-ctk cdi generate` makes now,
    "error": nvidia-ctk's complaint when it cannot generate one}. The fresh spec goes to a
    private temp dir, removed before the command returns."""

    def command(self, path=CDI_SPEC):
        return ("t=$(mktemp -d) || exit 1; "
                'if nvidia-ctk cdi generate --format=yaml --output="$t/nvidia.yaml" >/dev/null 2>"$t/err"; then '
                f'cmp -s "$t/nvidia.yaml" {shlex.quote(path)} && echo same=1; '
                'else echo "error=$(tail -n 3 "$t/err" | tr \'\\n\' \' \')"; fi; rm -rf "$t"; echo end=1')

    @staticmethod
    def default():
        return {"same": False, "error": "not checked"}

    def process(self, output):
        kv, _ = _kv(output)
        return {"same": kv.get("same") == "1", "error": kv.get("error")}


class NvidiaDriver(FactBase):
    """Path of nvidia-smi ("" when the host has no NVIDIA driver userspace)."""

    def command(self):
        return f"PATH={HOST_PATH}; command -v nvidia-smi || true"

    @staticmethod
    def default():
        return ""

    def process(self, output):
        return "\n".join(output).strip()


GPU_CHECK_SH = r"""
export PATH=@PATH@
command -v nvidia-smi >/dev/null 2>&1 || { echo "skip=@NO_SMI@: the GPU container check runs it, install the driver's utils package (nvidia-utils-<version>) to have it"; echo end=1; exit 0; }
nvidia-smi -L 2>/dev/null | sed 's/^/host=/'
img=@IMAGE@
e=$(mktemp)
if ! docker image inspect "$img" >/dev/null 2>&1; then
  if ! timeout 900 docker pull -q "$img" >/dev/null 2>"$e"; then
    echo "skip=image $img is not on the host and could not be pulled: $(tail -n 1 "$e")"; rm -f "$e"; echo end=1; exit 0
  fi
fi
rm -f "$e"
out=$(timeout 300 docker run --rm --gpus all "$img" nvidia-smi -L 2>&1); echo "rc=$?"
printf '%s\n' "$out" | sed 's/^/out=/'
echo end=1
"""


class GpuContainerCheck(FactBase):
    """Run a throwaway `docker run --rm --gpus all IMAGE nvidia-smi -L` (pulling the image if
    needed). -> {skip: reason or None, rc, uuids (in the container), host_uuids, output}."""

    def command(self, image):
        return (GPU_CHECK_SH.replace("@PATH@", HOST_PATH).replace("@IMAGE@", shlex.quote(image))
                .replace("@NO_SMI@", NO_NVIDIA_SMI))

    @staticmethod
    def default():
        return {"skip": "not run", "rc": None, "uuids": [], "host_uuids": [], "output": ""}

    def process(self, output):
        kv, multi = _kv(output)
        out = "\n".join(multi.get("out", []))
        return {"skip": kv.get("skip"), "rc": int(kv["rc"]) if kv.get("rc", "").isdigit() else None,
                "uuids": parse_nvidia_smi_list(out),
                "host_uuids": parse_nvidia_smi_list("\n".join(multi.get("host", []))),
                "output": out[-2000:]}
