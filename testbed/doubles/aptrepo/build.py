"""Build the apt repository TEST DOUBLE: stand-in .debs under the real package names,
in two repositories laid out like Docker's and NVIDIA's, each signed with its own
throwaway key made at build time.

What is real and what is not (the deploy must not be able to tell from apt's side):
  * apt sees real, signed repositories (InRelease, Release + Release.gpg, Packages,
    Packages.gz, SHA256 sums) and real Depends/Conflicts/Provides between the packages.
  * One suite per Debian release, each carrying THAT release's binaries only (a Debian 12
    host never gets Debian 13's):
    - trixie (Debian 13): docker-ce, docker-ce-cli, containerd.io, docker-compose-plugin and
      docker-buildx-plugin carry Debian 13's REAL binaries: dockerd 26.1, the docker CLI,
      containerd 1.7 + runc, and the real compose v2 and buildx CLI plugins. So the default
      docker-ce path installs and runs a real engine and a real `docker compose`.
    - bookworm (Debian 12): the engine packages carry Debian 12's dockerd 20.10 and friends;
      docker-buildx-plugin and docker-compose-plugin are small CLI plugins that answer
      `version` only (Debian 12 packages neither).
    The versions say what is inside (5:26.1.5-1~debian.13~trixie, 5:20.10.24-1~debian.12~bookworm).
    docker-ce and containerd.io ship systemd units (docker.service, containerd.service) and,
    like the real packages, enable and start them on systemd hosts.
  * The four NVIDIA Container Toolkit packages ship stand-ins: nvidia-ctk edits daemon.json
    the way the real one does; the hook/runtime/cli exist where the real ones are but
    cannot drive a GPU (there is none). Published at two versions, 1.17.8-1 and 1.18.0-1,
    with the real dependency rules of each (1.17: libs >=, 1.18: libs =).

The Debian binaries are fetched with apt from this machine's Debian mirror, with a private
apt state per release (lists kept in the cache). The result is cached under the testbed cache
root, keyed by a hash of this builder, the stand-ins and the Debian package versions; a build
takes a minute, a cached one none.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from email.utils import formatdate
from pathlib import Path

HERE = Path(__file__).resolve().parent
STANDINS = HERE / "standins"
BUILD_VERSION = 2  # bump when the layout changes in a way the input hash cannot see

ARCH = "amd64"


@dataclasses.dataclass(frozen=True)
class Suite:
    """Docker's packages for one Debian release, made of that release's own binaries."""

    name: str
    debian: str        # "12"
    docker: str        # docker-ce / docker-ce-cli version
    containerd: str    # containerd.io version
    buildx: str
    compose: str
    # Debian package -> [(path in its .deb, path in our package)]
    binaries: dict
    real_plugins: bool  # the compose/buildx packages carry the real plugins


SUITES = {
    "bookworm": Suite(
        "bookworm", "12", "5:20.10.24-1~debian.12~bookworm", "1.6.20-1",
        "0.10.5-1~debian.12~bookworm", "2.20.2-1~debian.12~bookworm",
        {"docker.io": [("usr/sbin/dockerd", "usr/bin/dockerd"), ("usr/sbin/docker-proxy", "usr/bin/docker-proxy"),
                       ("usr/bin/docker", "usr/bin/docker")],
         "containerd": [("usr/bin/containerd", "usr/bin/containerd"),
                        ("usr/bin/containerd-shim-runc-v2", "usr/bin/containerd-shim-runc-v2")],
         "runc": [("usr/sbin/runc", "usr/bin/runc")],
         "tini": [("usr/bin/tini-static", "usr/bin/docker-init")]},  # docker-ce ships tini as docker-init
        real_plugins=False),
    "trixie": Suite(
        "trixie", "13", "5:26.1.5-1~debian.13~trixie", "1.7.24-1",
        "0.13.1-1~debian.13~trixie", "2.26.1-1~debian.13~trixie",
        {"docker.io": [("usr/sbin/dockerd", "usr/bin/dockerd"), ("usr/sbin/docker-proxy", "usr/bin/docker-proxy")],
         "docker-cli": [("usr/bin/docker", "usr/bin/docker")],
         "tini": [("usr/bin/tini-static", "usr/bin/docker-init")],
         "containerd": [("usr/bin/containerd", "usr/bin/containerd"),
                        ("usr/bin/containerd-shim-runc-v2", "usr/bin/containerd-shim-runc-v2")],
         "runc": [("usr/sbin/runc", "usr/bin/runc")],
         "docker-compose": [("usr/libexec/docker/cli-plugins/docker-compose",
                             "usr/libexec/docker/cli-plugins/docker-compose")],
         "docker-buildx": [("usr/libexec/docker/cli-plugins/docker-buildx",
                            "usr/libexec/docker/cli-plugins/docker-buildx")]},
        real_plugins=True),
}
DOCKER_SUITE = "bookworm"  # the Debian 12 hosts' suite (kept for the tests that pin it)
DOCKER_VERSION = SUITES["bookworm"].docker
TOOLKIT_VERSIONS = ("1.17.8-1", "1.18.0-1")

# Paths of the two repositories inside the served tree, mirroring the real URLs:
# https://download.docker.com/linux/debian and https://nvidia.github.io/libnvidia-container.
DOCKER_ROOT = "linux/debian"
NVIDIA_ROOT = "libnvidia-container"
NVIDIA_FLAT = f"{NVIDIA_ROOT}/stable/deb/{ARCH}"

# systemd units, where Docker's packages put them (the binaries are in /usr/bin there).
DOCKER_UNIT = b"""\
[Unit]
Description=Docker Application Container Engine (glmfleet TEST DOUBLE package, real dockerd)
After=network-online.target containerd.service
Wants=network-online.target containerd.service

[Service]
Type=notify
ExecStart=/usr/bin/dockerd --containerd=/run/containerd/containerd.sock
ExecReload=/bin/kill -s HUP $MAINPID
Restart=always
RestartSec=2
TimeoutStartSec=120
LimitNOFILE=infinity
TasksMax=infinity
Delegate=yes
KillMode=process
OOMScoreAdjust=-500

[Install]
WantedBy=multi-user.target
"""
CONTAINERD_UNIT = b"""\
[Unit]
Description=containerd container runtime (glmfleet TEST DOUBLE package, real containerd)
After=network.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNOFILE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
"""
# Like the real packages: enable and start the units where systemd runs (and create the
# docker group that owns the API socket).
_ENABLE_START = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
    @GROUP@if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
        systemctl enable @UNIT@ >/dev/null 2>&1 || true
        systemctl start @UNIT@ || echo "@UNIT@ did not start: see journalctl -u @UNIT@" >&2
    fi
fi
"""
_DOCKER_GROUP = ("if ! getent group docker >/dev/null; then groupadd --system docker; fi\n"
                 "    ")


class BuildError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class BuiltRepo:
    """A built repository tree. ``www`` is what the server serves."""

    dir: Path
    docker_fingerprint: str
    nvidia_fingerprint: str

    @property
    def www(self) -> Path:
        return self.dir / "www"

    @property
    def wrong_key(self) -> Path:
        """A key that is neither repository's, served at /wrong/gpg (for mismatch tests)."""
        return self.www / "wrong" / "gpg"


def _run(*argv, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    if p.returncode:
        raise BuildError(f"{' '.join(map(str, argv))}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def _log(msg: str) -> None:
    print(f"[aptrepo double] {msg}", file=sys.stderr, flush=True)


# --- Debian inputs ---------------------------------------------------------------------

def _apt_options(suite: str) -> list[str]:
    """apt options for a private apt state of one Debian release (sources from this machine's
    mirror; lists kept in the cache), so this machine's own apt is left alone."""
    from testbed import rootfs

    d = rootfs.cache_root() / f"apt-{suite}"
    (d / "lists/partial").mkdir(parents=True, exist_ok=True)
    (d / "cache/archives/partial").mkdir(parents=True, exist_ok=True)
    m = rootfs.debian_mirrors()
    lines = [f"deb {m['debian']} {suite} main", f"deb {m['debian']} {suite}-updates main"]
    if m["security"]:
        lines.append(f"deb {m['security']} {suite}-security main")
    (d / "sources.list").write_text("\n".join(lines) + "\n")
    opts = {"Dir::Etc::SourceList": d / "sources.list", "Dir::Etc::SourceParts": "/dev/null",
            "Dir::State::Lists": d / "lists", "Dir::Cache": d / "cache",
            "Dir::State::status": "/dev/null", "APT::Architecture": ARCH}
    if rootfs.build_inputs()["no_valid_until"]:
        opts["Acquire::Check-Valid-Until"] = "false"
    return [a for k, v in opts.items() for a in ("-o", f"{k}={v}")]


def _apt_update(suite: str) -> None:
    _run("apt-get", *_apt_options(suite), "update", "-q")


def debian_versions() -> dict[str, str]:
    """Candidate versions of the Debian packages we take binaries from, per release (part
    of the cache key). The lists are fetched once, then reused (a build refreshes them)."""
    out = {}
    for suite in SUITES.values():
        opts = _apt_options(suite.name)
        for attempt in (0, 1):
            p = subprocess.run(["apt-cache", *opts, "policy", *suite.binaries], capture_output=True, text=True)
            cands, pkg = {}, None
            for ln in p.stdout.splitlines():
                if ln and not ln[0].isspace() and ln.endswith(":"):
                    pkg = ln[:-1]
                elif "Candidate:" in ln and pkg:
                    cands[pkg] = ln.split(":", 1)[1].strip()
            if all(cands.get(k) not in (None, "", "(none)") for k in suite.binaries):
                break
            if attempt:
                raise BuildError(f"Debian {suite.debian} ({suite.name}) has no candidate for "
                                 f"{sorted(set(suite.binaries) - set(cands))} on this machine's mirror")
            _apt_update(suite.name)
        out.update({f"{suite.name}/{k}": v for k, v in cands.items()})
    return out


def _fetch_debian_binaries(work: Path, suite: Suite) -> Path:
    """apt-get download one release's packages and unpack them; returns the unpack root."""
    dl = work / f"debian-debs-{suite.name}"
    dl.mkdir()
    # _apt downloads into the directory (apt's sandbox); give it the directory.
    try:
        shutil.chown(dl, user="_apt")
    except (LookupError, PermissionError):
        pass
    try:
        _run("apt-get", *_apt_options(suite.name), "download", "-q", *suite.binaries, cwd=dl)
    except BuildError:  # stale lists (the mirror moved on): refresh once
        _apt_update(suite.name)
        _run("apt-get", *_apt_options(suite.name), "download", "-q", *suite.binaries, cwd=dl)
    root = work / f"debian-root-{suite.name}"
    for deb in sorted(dl.glob("*.deb")):
        _run("dpkg-deb", "-x", deb, root)
    return root


# --- keys and signing ------------------------------------------------------------------

class Signer:
    """A throwaway OpenPGP key in its own GNUPGHOME (ed25519, signing only, no passphrase)."""

    def __init__(self, home: Path, uid: str):
        self.home = home
        home.mkdir(mode=0o700)
        self._gpg("--quick-gen-key", uid, "ed25519", "sign", "never")
        out = self._gpg("--with-colons", "--list-secret-keys").stdout
        self.fingerprint = next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:"))

    def _gpg(self, *args) -> subprocess.CompletedProcess:
        return _run("gpg", "--homedir", self.home, "--batch", "--quiet", "--pinentry-mode", "loopback",
                    "--passphrase", "", *args)

    def export(self, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._gpg("--armor", "--output", dest, "--export", self.fingerprint)

    def sign_release(self, release: Path) -> None:
        d = release.parent
        self._gpg("--local-user", self.fingerprint, "--digest-algo", "SHA256", "--clearsign",
                  "--output", d / "InRelease", release)
        self._gpg("--local-user", self.fingerprint, "--digest-algo", "SHA256", "--armor",
                  "--detach-sign", "--output", d / "Release.gpg", release)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"],
                       capture_output=True)


# --- packages --------------------------------------------------------------------------

@dataclasses.dataclass
class Pkg:
    name: str
    version: str
    description: str
    files: dict[str, tuple[bytes | Path, int]]  # path in package -> (content or source file, mode)
    fields: dict[str, str] = dataclasses.field(default_factory=dict)  # Depends, Conflicts, ...
    postinst: str | None = None


def _standin(name: str, **subst: str) -> bytes:
    text = (STANDINS / name).read_text()
    for k, v in subst.items():
        text = text.replace(f"@{k}@", v)
    return text.encode()


def _docker_packages(bins: Path, suite: Suite) -> list[Pkg]:
    b = {dst: (bins / src, 0o755) for pkg in suite.binaries.values() for src, dst in pkg}
    engine = suite.docker.split(":")[1].split("-")[0]
    note = ("TEST DOUBLE (glmfleet testbed): stand-in for Docker's package of the same name,\n"
            f" carrying Debian {suite.debian}'s binaries ({engine}) repackaged.")
    plugins = []
    for pkg, plugin, title, version in (("docker-buildx-plugin", "buildx", "github.com/docker/buildx", suite.buildx),
                                        ("docker-compose-plugin", "compose", "Docker Compose", suite.compose)):
        path = f"usr/libexec/docker/cli-plugins/docker-{plugin}"
        if suite.real_plugins:
            plugins.append(Pkg(pkg, version, f"{title} CLI plugin\n {note}", {path: b[path]}))
        else:
            upstream = version.split("-")[0]
            plugins.append(Pkg(pkg, version, f"{title} CLI plugin\n TEST DOUBLE (glmfleet testbed): answers `version` only.",
                               {path: (_standin("docker-cli-plugin", PLUGIN=plugin, PACKAGE=pkg, VERSION=upstream,
                                                TITLE=title), 0o755)}))
    units = "lib/systemd/system"
    return [
        Pkg("docker-ce", suite.docker, f"Docker: the open-source application container engine\n {note}",
            {**{k: v for k, v in b.items() if k in ("usr/bin/dockerd", "usr/bin/docker-proxy", "usr/bin/docker-init")},
             f"{units}/docker.service": (DOCKER_UNIT, 0o644)},
            {"Depends": f"containerd.io (>= 1.6.4), docker-ce-cli, iptables, libc6, libsystemd0"
                        f"{', libdevmapper1.02.1' if suite.name == 'bookworm' else ''}",
             "Conflicts": "docker (<< 1.5~), docker-engine, docker.io", "Replaces": "docker-engine"},
            postinst=_ENABLE_START.replace("@UNIT@", "docker.service").replace("@GROUP@", _DOCKER_GROUP)),
        Pkg("docker-ce-cli", suite.docker, f"Docker CLI: the open-source application container engine\n {note}",
            {"usr/bin/docker": b["usr/bin/docker"]},
            {"Depends": "libc6", "Conflicts": "docker (<< 1.5~), docker-engine, docker.io",
             "Replaces": "docker-engine"}),
        Pkg("containerd.io", suite.containerd, f"An open and reliable container runtime\n {note}",
            {"usr/bin/containerd": b["usr/bin/containerd"],
             "usr/bin/containerd-shim-runc-v2": b["usr/bin/containerd-shim-runc-v2"],
             "usr/bin/runc": b["usr/bin/runc"],
             "etc/containerd/config.toml": (b'disabled_plugins = ["cri"]\n', 0o644),
             f"{units}/containerd.service": (CONTAINERD_UNIT, 0o644)},
            {"Depends": "libc6, libseccomp2", "Conflicts": "containerd, runc",
             "Replaces": "containerd, runc", "Provides": "containerd, runc"},
            postinst=_ENABLE_START.replace("@UNIT@", "containerd.service").replace("@GROUP@", "")),
        *plugins,
    ]


def _toolkit_packages(version: str) -> list[Pkg]:
    upstream = version.split("-")[0]
    minor = tuple(int(x) for x in upstream.split(".")[:2])
    # From 1.18.0 the toolkit wants exactly its own libnvidia-container-tools; before, any newer.
    tools_dep = f"libnvidia-container-tools (= {version})" if minor >= (1, 18) else \
        f"libnvidia-container-tools (>= {version}), libnvidia-container-tools (<< 2.0.0)"
    note = "TEST DOUBLE (glmfleet testbed): stand-in, no GPU support."
    tool = lambda name: (_standin("nvidia-tool", NAME=name, VERSION=upstream), 0o755)  # noqa: E731
    base_files = {"usr/bin/nvidia-ctk": (_standin("nvidia-ctk", VERSION=upstream), 0o755),
                  "usr/bin/nvidia-container-runtime": tool("nvidia-container-runtime"),
                  "usr/bin/nvidia-cdi-hook": tool("nvidia-cdi-hook")}
    return [
        Pkg("nvidia-container-toolkit", version, f"NVIDIA Container toolkit\n {note}",
            {"usr/bin/nvidia-container-runtime-hook": tool("nvidia-container-runtime-hook")},
            {"Depends": f"nvidia-container-toolkit-base (= {version}), {tools_dep}"}),
        Pkg("nvidia-container-toolkit-base", version, f"NVIDIA Container Toolkit Base\n {note}",
            base_files, {"Depends": "python3"}),  # the stand-in nvidia-ctk is a python3 script
        Pkg("libnvidia-container-tools", version, f"NVIDIA container runtime library (command-line tools)\n {note}",
            {"usr/bin/nvidia-container-cli": tool("nvidia-container-cli")},
            {"Depends": f"libnvidia-container1 (>= {version})"}),
        Pkg("libnvidia-container1", version, f"NVIDIA container runtime library\n {note}",
            {"usr/share/doc/libnvidia-container1/TEST-DOUBLE": (b"stand-in: no library inside\n", 0o644)},
            {"Depends": "libc6"}),
    ]


def _build_deb(pkg: Pkg, out_dir: Path, work: Path) -> Path:
    root = work / f"pkg-{pkg.name}-{pkg.version.replace(':', '_')}"
    size = 0
    for rel, (content, mode) in pkg.files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, dest)
        else:
            dest.write_bytes(content)
        dest.chmod(mode)
        size += dest.stat().st_size
    (root / "DEBIAN").mkdir(parents=True)
    fields = {"Package": pkg.name, "Version": pkg.version, "Architecture": ARCH,
              "Maintainer": "glmfleet testbed <testbed@glmfleet.invalid>",
              "Installed-Size": str(max(1, size // 1024)), **pkg.fields,
              "Section": "admin", "Priority": "optional", "Description": pkg.description}
    (root / "DEBIAN" / "control").write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
    if pkg.postinst:
        (root / "DEBIAN" / "postinst").write_text(pkg.postinst)
        (root / "DEBIAN" / "postinst").chmod(0o755)
    upstream_version = pkg.version.split(":")[-1]
    deb = out_dir / f"{pkg.name}_{upstream_version}_{ARCH}.deb"
    out_dir.mkdir(parents=True, exist_ok=True)
    # gzip -1: the engine binaries are ~190 MB; fast to build and to unpack.
    _run("dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", root, deb)
    shutil.rmtree(root)
    return deb


def _packages_index(debs: list[Path], base: Path) -> str:
    stanzas = []
    for deb in debs:
        control = _run("dpkg-deb", "-f", deb).stdout.rstrip("\n")
        data = deb.read_bytes()
        stanzas.append(control + "\n" + "".join([
            f"Filename: {'./' if base == deb.parent else ''}{deb.relative_to(base)}\n",
            f"Size: {len(data)}\n",
            f"MD5sum: {hashlib.md5(data).hexdigest()}\n",
            f"SHA1: {hashlib.sha1(data).hexdigest()}\n",
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n"]))
    return "\n".join(stanzas)


def _write_index(index_dir: Path, text: str) -> list[Path]:
    index_dir.mkdir(parents=True, exist_ok=True)
    (index_dir / "Packages").write_text(text)
    with gzip.open(index_dir / "Packages.gz", "wb", compresslevel=9) as f:
        f.write(text.encode())
    return [index_dir / "Packages", index_dir / "Packages.gz"]


def _release(release_dir: Path, files: list[Path], fields: dict[str, str]) -> Path:
    lines = [f"{k}: {v}" for k, v in fields.items()]
    lines.append(f"Date: {formatdate(time.time(), usegmt=True)}")
    for algo, name in (("md5", "MD5Sum"), ("sha256", "SHA256")):
        lines.append(f"{name}:")
        for f in files:
            data = f.read_bytes()
            lines.append(f" {hashlib.new(algo, data).hexdigest()} {len(data):>16} {f.relative_to(release_dir)}")
    release = release_dir / "Release"
    release.write_text("\n".join(lines) + "\n")
    return release


# --- the whole build -------------------------------------------------------------------

def _input_hash(versions: dict[str, str]) -> str:
    h = hashlib.sha256(f"{BUILD_VERSION}\n{json.dumps(versions, sort_keys=True)}\n".encode())
    for f in [Path(__file__), *sorted(STANDINS.iterdir())]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def _build(dest: Path) -> BuiltRepo:
    work = Path(tempfile.mkdtemp(prefix="aptrepo-", dir="/tmp"))  # short: gpg-agent socket paths
    signers = []
    try:
        www = dest / "www"
        docker = Signer(work / "g-docker", "Docker CE deb TEST DOUBLE <docker-double@glmfleet.invalid>")
        nvidia = Signer(work / "g-nvidia", "NVIDIA toolkit TEST DOUBLE <nvidia-double@glmfleet.invalid>")
        wrong = Signer(work / "g-wrong", "Someone else's key TEST DOUBLE <wrong@glmfleet.invalid>")
        signers = [docker, nvidia, wrong]

        # Docker, per release: <root>/dists/<suite>/stable/binary-<arch>/Packages, debs in
        # <root>/dists/<suite>/pool/stable/<arch>/ (as download.docker.com lays them out).
        droot = www / DOCKER_ROOT
        for suite in SUITES.values():
            bins = _fetch_debian_binaries(work, suite)
            suite_dir = droot / "dists" / suite.name
            debs = [_build_deb(p, suite_dir / "pool" / "stable" / ARCH, work)
                    for p in _docker_packages(bins, suite)]
            shutil.rmtree(bins)
            idx = _write_index(suite_dir / "stable" / f"binary-{ARCH}", _packages_index(debs, droot))
            rel = _release(suite_dir, idx, {"Origin": "Docker", "Label": "Docker CE (glmfleet TEST DOUBLE)",
                                            "Suite": suite.name, "Codename": suite.name,
                                            "Architectures": ARCH, "Components": "stable",
                                            "Description": "TEST DOUBLE of Docker's apt repository"})
            docker.sign_release(rel)
        docker.export(droot / "gpg")

        # NVIDIA: one flat repository per architecture (suite "/"), key at <root>/gpgkey.
        flat = www / NVIDIA_FLAT
        debs = [_build_deb(p, flat, work) for v in TOOLKIT_VERSIONS for p in _toolkit_packages(v)]
        idx = _write_index(flat, _packages_index(debs, flat))
        rel = _release(flat, idx, {"Origin": "https://nvidia.github.io/libnvidia-container",
                                   "Label": "NVIDIA CORPORATION (glmfleet TEST DOUBLE)", "Architectures": ARCH,
                                   "Description": "TEST DOUBLE of the NVIDIA Container Toolkit repository"})
        nvidia.sign_release(rel)
        nvidia.export(www / NVIDIA_ROOT / "gpgkey")
        wrong.export(www / "wrong" / "gpg")

        meta = {"docker_fingerprint": docker.fingerprint, "nvidia_fingerprint": nvidia.fingerprint,
                "wrong_fingerprint": wrong.fingerprint}
        (dest / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        return BuiltRepo(dest, docker.fingerprint, nvidia.fingerprint)
    finally:
        for s in signers:
            s.close()
        shutil.rmtree(work, ignore_errors=True)


def build(cache_root: Path | None = None, *, rebuild: bool = False) -> BuiltRepo:
    """The built repository tree (cached; built on first use, under a lock)."""
    if cache_root is None:
        from testbed import rootfs
        cache_root = rootfs.cache_root()
    cache_root.mkdir(parents=True, exist_ok=True)
    dest = cache_root / f"aptrepo-{_input_hash(debian_versions())}"
    with open(cache_root / "aptrepo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        meta = dest / "meta.json"
        if meta.exists() and not rebuild:
            m = json.loads(meta.read_text())
            return BuiltRepo(dest, m["docker_fingerprint"], m["nvidia_fingerprint"])
        started = time.monotonic()
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        built = _build(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        _log(f"built {dest} in {time.monotonic() - started:.1f}s")
        return BuiltRepo(dest, built.docker_fingerprint, built.nvidia_fingerprint)
