"""Docker and NVIDIA Container Toolkit: the decisions, as pure functions (no pyinfra import).

Facts gather (glmfleet/docker/facts.py), this module decides, glmfleet/docker/ops.py
changes. Everything here is tested directly on recorded facts (tests/unit/docker/test_docker_plan.py):

- which apt repository (deb822 text, key URL, pinned fingerprint) and which packages a host
  gets for the chosen flavour (Docker's docker-ce, or the distribution's docker.io);
- which installed packages conflict with that flavour;
- whether a downloaded signing key is the pinned one (parsed from `gpg --with-colons`);
- how daemon.json is merged (operator keys kept, log rotation added) and when the nvidia
  runtime counts as configured;
- when a CDI spec is generated, and whether a container saw the GPUs preflight found.

Sources for the repository layouts, key fingerprints and package names:
shared/reference/install-facts.md.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from typing import Any, Mapping

KEYRINGS_DIR = "/etc/apt/keyrings"
SOURCES_DIR = "/etc/apt/sources.list.d"
DAEMON_JSON = "/etc/docker/daemon.json"
APT_PROXY_CONF = "/etc/apt/apt.conf.d/80glmfleet-proxy"

DOCKER_CE_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
                      "docker-compose-plugin")
DOCKER_CE_PINNED = ("docker-ce", "docker-ce-cli")  # Docker's docs pin these two to one string
TOOLKIT_PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
                    "libnvidia-container-tools", "libnvidia-container1")
# Installed before the key check: apt-helper fetches the key, gpg reads its fingerprint,
# ca-certificates lets apt talk https to Docker's and NVIDIA's servers.
PREREQUISITE_PACKAGES = ("gpg", "ca-certificates")

# What Docker's install pages tell you to remove before installing docker-ce. Debian has no
# docker-compose-v2. docker-ce/docker-ce-cli declare Conflicts: docker.io, and containerd.io
# replaces containerd + runc, so apt would silently remove these: we only do it when allowed.
_CE_CONFLICTS = ("docker.io", "docker-compose", "docker-compose-v2", "docker-doc", "podman-docker",
                 "containerd", "runc")
# Debian's docker.io declares Conflicts: docker-ce, docker-ce-cli, docker-ce-rootless-extras;
# it needs Debian's containerd, which containerd.io replaces. podman-docker ships its own
# /usr/bin/docker. Docker's CLI plugins are left alone: they do not get in docker.io's way.
_DISTRO_CONFLICTS = ("docker-ce", "docker-ce-cli", "docker-ce-rootless-extras", "containerd.io",
                     "podman-docker")

# What nvidia-ctk writes for `runtime configure --runtime=docker` (install-facts.md section 3).
NVIDIA_RUNTIME = {"args": [], "path": "nvidia-container-runtime"}
CDI_MIN_TOOLKIT = (1, 18)  # from 1.18 NVIDIA ships nvidia-cdi-refresh and documents CDI as the way


class PlanError(ValueError):
    """This host cannot get this stage as configured; str() says why and what to do."""


# --- host description ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HostOs:
    id: str            # "ubuntu" | "debian"
    version_id: str    # "24.04", "12"
    codename: str      # the apt suite: UBUNTU_CODENAME or VERSION_CODENAME
    arch: str          # dpkg architecture: amd64, arm64

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> "HostOs":
        os_id, version = facts.get("os_id"), facts.get("os_version_id")
        codename, arch = facts.get("os_codename"), facts.get("arch")
        if os_id not in ("ubuntu", "debian"):
            raise PlanError(f"the Docker stage supports Ubuntu and Debian hosts; this host is "
                            f"{facts.get('os_pretty_name') or os_id or 'unknown'} (from /etc/os-release)")
        if not codename or not version or not arch:
            raise PlanError("cannot tell this host's release codename or dpkg architecture "
                            "(VERSION_CODENAME in /etc/os-release, `dpkg --print-architecture`)")
        return cls(os_id, version, codename, arch)


# --- repositories --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AptRepo:
    """One apt repository written as a deb822 .sources file, signed by one pinned key."""

    name: str                 # file stem: docker -> docker.sources, docker.asc
    title: str                # for the file's comment and messages
    uri: str
    suite: str
    components: tuple[str, ...]
    arch: str
    key_url: str
    fingerprint: str          # 40 hex, upper case
    settings: tuple[str, str, str]  # names of the url, key url and fingerprint settings

    @property
    def keyring(self) -> str:
        return f"{KEYRINGS_DIR}/{self.name}.asc"

    @property
    def sources_path(self) -> str:
        return f"{SOURCES_DIR}/{self.name}.sources"

    @property
    def legacy_list_path(self) -> str:
        """The one-line .list the vendors' guides and install scripts write: apt refuses two
        entries for one repository with different Signed-By, so only one may stay."""
        return f"{SOURCES_DIR}/{self.name}.list"

    def deb822(self) -> str:
        url_s, key_s, fpr_s = self.settings
        lines = [
            f"# {self.title}: managed by glmfleet, rewritten on every deploy.",
            f"# Change it through the settings {url_s}, {key_s} and {fpr_s}.",
            "Types: deb",
            f"URIs: {self.uri}",
            f"Suites: {self.suite}",
        ]
        if self.components:
            lines.append(f"Components: {' '.join(self.components)}")
        lines += [f"Architectures: {self.arch}",
                  # path + fingerprint: apt accepts this repository only when signed by the
                  # pinned key (or its subkeys), even if the keyring file gained other keys.
                  f"Signed-By: {self.keyring} {self.fingerprint}"]
        return "\n".join(lines) + "\n"


def normalize_fingerprint(value: str) -> str:
    """'9DC8 5822 ... CD88' -> '9DC858229FC7DD38854AE2D88D81803C0EBFCD88'."""
    return re.sub(r"\s+", "", value or "").upper()


def docker_repo(host_os: HostOs, s) -> AptRepo:
    uri = (s.docker_repo_url or f"https://download.docker.com/linux/{host_os.id}").rstrip("/")
    return AptRepo(
        name="docker", title="Docker's apt repository", uri=uri, suite=host_os.codename,
        components=("stable",), arch=host_os.arch,
        key_url=s.docker_key_url or f"{uri}/gpg",  # Docker publishes the key beside dists/
        fingerprint=normalize_fingerprint(s.docker_key_fingerprint),
        settings=("docker_repo_url", "docker_key_url", "docker_key_fingerprint"))


def nvidia_repo(host_os: HostOs, s) -> AptRepo:
    # NVIDIA's list file uses $(ARCH), which apt expands; we fill it in ourselves so the file
    # does not depend on how a given apt release handles it in deb822 form.
    uri = s.nvidia_repo_url.replace("$(ARCH)", host_os.arch).rstrip("/")
    return AptRepo(
        name="nvidia-container-toolkit", title="NVIDIA Container Toolkit apt repository",
        uri=uri, suite="/", components=(), arch=host_os.arch, key_url=s.nvidia_key_url,
        fingerprint=normalize_fingerprint(s.nvidia_key_fingerprint),
        settings=("nvidia_repo_url", "nvidia_key_url", "nvidia_key_fingerprint"))


# --- packages ------------------------------------------------------------------------------

def distro_compose_package(host_os: HostOs) -> str:
    """The distribution's compose: Debian 12 packages v1 (docker-compose 1.29), Debian 13 the
    v2 CLI plugin (docker-compose 2.26); Ubuntu has the v2 plugin as docker-compose-v2
    (22.04: in jammy-updates; 24.04: in the release)."""
    return "docker-compose-v2" if host_os.id == "ubuntu" else "docker-compose"


def distro_cli_package(host_os: HostOs) -> str | None:
    """From Debian 13, docker.io no longer carries the `docker` CLI: it is docker-cli (only
    a Recommends, which the stage does not install)."""
    if host_os.id == "debian" and host_os.version_id.split(".")[0].isdigit() \
            and int(host_os.version_id.split(".")[0]) >= 13:
        return "docker-cli"
    return None


def docker_packages(host_os: HostOs, s) -> list[str]:
    """apt install arguments, with the optional version pin ("name=version")."""
    if s.docker_packages == "distro":
        engine = f"docker.io={s.docker_version}" if s.docker_version else "docker.io"
        cli = distro_cli_package(host_os)
        return [engine, *([cli] if cli else []), distro_compose_package(host_os)]
    return [f"{p}={s.docker_version}" if s.docker_version and p in DOCKER_CE_PINNED else p
            for p in DOCKER_CE_PACKAGES]


def toolkit_packages(s) -> list[str]:
    """All four are named and, when pinned, pinned together: before 1.18 the toolkit accepted
    any newer libnvidia-container-tools, so pinning one package alone let apt mix versions."""
    v = s.nvidia_toolkit_version
    return [f"{p}={v}" if v else p for p in TOOLKIT_PACKAGES]


def conflicting_packages(flavour: str, host_os: HostOs | None, installed: Mapping[str, str]) -> list[str]:
    """Installed packages that stand in the way of ``flavour`` ("docker-ce" | "distro").
    Pure, so preflight can report the same list this stage acts on."""
    names = _DISTRO_CONFLICTS if flavour == "distro" else _CE_CONFLICTS
    if flavour != "distro" and host_os is not None and host_os.id == "debian":
        names = tuple(n for n in names if n != "docker-compose-v2")
    return [n for n in names if n in installed]


def package_name(spec: str) -> str:
    return spec.split("=", 1)[0]


def packages_to_install(wanted: list[str], installed: Mapping[str, str]) -> list[str]:
    """The subset of ``wanted`` ("name" or "name=version") that apt must act on: missing
    ones, and pinned ones at another version. Never upgrades an unpinned installed package,
    so a re-run changes nothing."""
    todo = []
    for spec in wanted:
        name, _, version = spec.partition("=")
        have = installed.get(name)
        if have is None or (version and have != version):
            todo.append(spec)
    return todo


def version_tuple(version: str | None) -> tuple[int, ...]:
    """'5:1.18.0-1' -> (1, 18, 0); '' or None -> ()."""
    if not version:
        return ()
    upstream = version.split(":", 1)[-1].split("-", 1)[0].split("~", 1)[0]
    return tuple(int(x) for x in re.findall(r"\d+", upstream)[:3])


# --- signing keys --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PgpKey:
    fingerprint: str
    validity: str                 # gpg's field 2: "-", "e" (expired), "r" (revoked), ...
    uids: tuple[str, ...]
    subkeys: tuple[str, ...]      # their fingerprints


def parse_gpg_colons(text: str) -> list[PgpKey]:
    """Primary keys in `gpg --show-keys --with-colons` output. Each record has one `fpr`
    line right after it, so the first fpr after `pub` is the primary's."""
    keys: list[dict] = []
    last = None
    for line in text.splitlines():
        f = line.split(":")
        kind = f[0]
        if kind == "pub":
            keys.append({"fpr": None, "validity": f[1] if len(f) > 1 else "", "uids": [], "subs": []})
            last = "pub"
        elif kind == "sub" and keys:
            last = "sub"
        elif kind == "fpr" and keys and len(f) > 9:
            if last == "pub" and keys[-1]["fpr"] is None:
                keys[-1]["fpr"] = f[9].upper()
            elif last == "sub":
                keys[-1]["subs"].append(f[9].upper())
            last = None
        elif kind == "uid" and keys and len(f) > 9:
            keys[-1]["uids"].append(f[9])
    return [PgpKey(k["fpr"], k["validity"], tuple(k["uids"]), tuple(k["subs"]))
            for k in keys if k["fpr"]]


def key_problem(keys: list[PgpKey], pinned: str, *, armored: bool = True) -> str | None:
    """Why a key file must not be trusted for a repository pinned to ``pinned``; None if fine.

    Trusted only when the file is ASCII-armoured (it is stored as .asc) and holds exactly one
    primary key whose fingerprint (or one of its subkeys') is the pinned one, not revoked or
    expired. Extra keys are refused rather than ignored: the file is the whole keyring."""
    pinned = normalize_fingerprint(pinned)
    if not armored:
        return "it is not an ASCII-armoured OpenPGP public key (BEGIN PGP PUBLIC KEY BLOCK)"
    if not keys:
        return "it holds no OpenPGP public key that gpg can read"
    found = ", ".join(f"{k.fingerprint}{' (' + k.uids[0] + ')' if k.uids else ''}" for k in keys)
    match = [k for k in keys if pinned == k.fingerprint or pinned in k.subkeys]
    if not match:
        return f"its fingerprint is {found}, not the pinned {pinned}"
    if len(keys) > 1:
        return f"it holds {len(keys)} keys ({found}); only the pinned {pinned} is expected"
    if match[0].validity in ("r", "e"):
        return f"the pinned key {pinned} is {'revoked' if match[0].validity == 'r' else 'expired'}"
    return None


def key_refusal(repo: AptRepo, problem: str) -> str:
    """The operator-facing error for a refused key."""
    url_s, key_s, fpr_s = repo.settings
    return (f"refusing the signing key for {repo.title} downloaded from {repo.key_url}: {problem}. "
            f"It was NOT trusted and nothing was installed from this repository. If the URL is "
            f"right (e.g. your mirror signs with its own key), check that key's fingerprint out "
            f"of band and set {fpr_s}; otherwise fix {key_s} / {url_s}.")


def installed_key_ok(keyring: Mapping[str, Any] | None, pinned: str) -> bool:
    """An installed keyring file that needs no change: the pinned key alone, mode 0644."""
    if not keyring or not keyring.get("exists"):
        return False
    return (keyring.get("mode") == "644"
            and key_problem(keyring.get("keys", []), pinned, armored=keyring.get("armored", False)) is None)


# --- apt proxy -----------------------------------------------------------------------------

def apt_proxy_conf(url: str) -> str:
    # settings.py admits only plain URLs; refuse here too, as this text becomes root's apt config
    if re.search(r'["\';{}\\\s]', url):
        raise PlanError(f"apt_proxy {url!r} holds a quote, ';', brace or space: not a plain URL")
    return ("// Managed by glmfleet (setting apt_proxy): every apt download on this host goes\n"
            "// through this proxy, including Docker's and NVIDIA's repositories.\n"
            f'Acquire::http::Proxy "{url}";\n'
            f'Acquire::https::Proxy "{url}";\n')


# --- daemon.json ---------------------------------------------------------------------------

def parse_daemon_json(text: str | None) -> dict:
    """daemon.json text (None: no file) -> dict. A file we cannot read is an error, never
    something to overwrite: it holds the operator's settings."""
    if text is None:
        return {}
    if not text.strip():
        # dockerd itself accepts an empty file, but nvidia-ctk refuses it; treat as empty.
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise PlanError(f"{DAEMON_JSON} is not valid JSON ({e}); glmfleet never overwrites a file "
                        "it cannot read: fix it (or move it aside) and run the deploy again") from None
    if not isinstance(value, dict):
        raise PlanError(f"{DAEMON_JSON} holds a JSON {type(value).__name__}, not an object; fix it "
                        "(or move it aside) and run the deploy again")
    return value


def merge_daemon_config(existing: Mapping[str, Any], *, log_max_size: str, log_max_file: int,
                        registry_mirror: str | None = None) -> dict:
    """Our keys added to the operator's daemon.json; nothing of theirs is changed.

    registry_mirror: put first in `registry-mirrors` (the operator's own mirrors stay after
    it, tried in order when it fails), so every layer of a Docker Hub image comes through the
    site's mirror; compared without a trailing slash, as dockerd normalises it.

    Log rotation: container logs grow without bound under the default json-file driver, and
    vLLM logs a line per request. max-size/max-file are added when missing, and only for the
    drivers that understand them (json-file, local): for e.g. journald they would stop dockerd
    from starting. An unset log-driver is made explicit (json-file is Docker's default)."""
    merged = copy.deepcopy(dict(existing))
    driver = merged.get("log-driver")
    if driver in (None, "json-file", "local"):
        opts = dict(merged.get("log-opts") or {})
        opts.setdefault("max-size", log_max_size)
        opts.setdefault("max-file", str(log_max_file))  # dockerd wants strings here
        merged["log-opts"] = opts
        merged.setdefault("log-driver", "json-file")
    if registry_mirror:
        ours = registry_mirror.rstrip("/")
        mirrors = list(merged.get("registry-mirrors") or [])
        same = [m for m in mirrors if str(m).rstrip("/") == ours]
        merged["registry-mirrors"] = [same[0] if same else ours, *(m for m in mirrors if m not in same)]
    return merged


def render_daemon_json(config: Mapping[str, Any]) -> str:
    """Sorted keys and 4-space indent, as nvidia-ctk writes it, so the two tools never take
    turns reformatting the file (comparisons are by content anyway)."""
    return json.dumps(config, indent=4, sort_keys=True) + "\n"


def nvidia_runtime_configured(config: Mapping[str, Any]) -> bool:
    """True when daemon.json already has the nvidia runtime. An operator's own absolute path
    to nvidia-container-runtime counts too (it is kept, not rewritten)."""
    runtime = (config.get("runtimes") or {}).get("nvidia")
    return isinstance(runtime, dict) and str(runtime.get("path", "")).rsplit("/", 1)[-1] == \
        NVIDIA_RUNTIME["path"]


# --- CDI and the GPU check -----------------------------------------------------------------

def cdi_decision(setting: str, toolkit_version: str | None, has_driver: bool) -> tuple[bool, str]:
    """(generate the CDI spec?, note). "auto": with toolkit >= 1.18 on a host that has the
    NVIDIA driver (without it nvidia-ctk cannot enumerate GPUs); "on": always (a host without
    the driver then fails loudly); "off": never."""
    if setting == "off":
        return False, "CDI spec not generated (nvidia_cdi=off)"
    if setting == "on":
        return True, ""
    if version_tuple(toolkit_version)[:2] < CDI_MIN_TOOLKIT:
        return False, (f"CDI spec not generated: toolkit {toolkit_version or 'unknown'} < 1.18 "
                       "(set nvidia_cdi=on to force)")
    if not has_driver:
        return False, ("CDI spec not generated: " + NO_NVIDIA_SMI + "; nvidia-ctk needs it to "
                       "list the GPUs (containers still get them through the runtime hook)")
    return True, ""


# What the toolkit stage could not find, and why that is not what preflight checked.
NO_NVIDIA_SMI = ("nvidia-smi not found on this host (the driver's command-line tools; "
                 "preflight's NVML check needs only libnvidia-ml.so.1)")

_UUID = re.compile(r"\(UUID:\s*(GPU-[0-9A-Za-z-]+)\)")


def parse_nvidia_smi_list(text: str) -> list[str]:
    """`nvidia-smi -L` -> GPU UUIDs in order (MIG lines carry MIG- UUIDs and are skipped)."""
    return _UUID.findall(text or "")


def compare_gpus(seen: list[str], expected: list[str] | None) -> tuple[str, str]:
    """(status, detail) of the container GPU check against the GPUs preflight found."""
    if not seen:
        return "FAIL", "a container run with --gpus all listed no GPU"
    if expected is None:
        return "PASS", (f"a container sees {len(seen)} GPU(s) ({', '.join(seen)}); no preflight "
                        "list to compare with")
    if sorted(seen) == sorted(expected):
        return "PASS", f"a container sees the same {len(seen)} GPU(s) as preflight"
    missing = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected))
    return "FAIL", ("the GPUs a container sees differ from preflight's: "
                    + "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "",
                                              f"unexpected {', '.join(extra)}" if extra else ""])))


# --- dockerd (re)start and when the GPU check runs ---------------------------------------------

def dockerd_action(svc: Mapping[str, Any]) -> tuple[str | None, str]:
    """(action, why) for dockerd from the DockerService fact: "start", "restart", "adopt"
    (write the stamp only) or None (nothing to do).

    A restart stops every container on the host, so it happens only on a real change: the
    stamp written at our last (re)start differs from what dockerd's inputs are now. With no
    stamp yet (a host that ran Docker before glmfleet), a running dockerd that started after
    its inputs last changed already runs them: it is adopted, not restarted."""
    if not svc.get("running"):
        return "start", "dockerd is not running"
    if svc.get("applied") and svc.get("applied") == svc.get("fingerprint"):
        return None, "dockerd is running what is on disk"
    started, changed = svc.get("started"), svc.get("inputs_changed")
    if svc.get("applied") is None and started is not None and changed is not None and changed < started:
        return "adopt", "dockerd already runs the configuration on disk: adopted without a restart"
    if svc.get("applied") is None:
        return "restart", "its configuration or binaries changed since dockerd started"
    return "restart", "its configuration or binaries changed since its last start"


def gpu_check_key(fingerprint: str | None, image: str) -> str:
    """What a completed GPU container check vouches for: this dockerd's inputs (config,
    binary, NVIDIA hooks, so toolkit changes too) and this image."""
    return f"{fingerprint or 'unknown'} {image}"


def gpu_check_due(*, image: str | None, has_driver: bool, checked: str | None, key: str,
                  always: bool) -> tuple[bool, str]:
    """(run the GPU container check now?, why not). It pulls an image and starts a container,
    so it runs when dockerd or the toolkit changed since it last ran to the end (``checked``:
    that run's key), or when asked; a re-run with nothing changed starts nothing."""
    if image is None:
        return False, "GPU container check off (gpu_check_image=None)"
    if not has_driver:
        return False, ("GPU container check skipped: " + NO_NVIDIA_SMI + "; install the driver's "
                       "utils package (nvidia-utils-<version>) to have it")
    if always:
        return True, ""
    if checked == key:
        return False, ("GPU container check already done with this dockerd, toolkit and image "
                       "(gpu_check_always=true runs it again)")
    return True, ""
