"""Build the serving-image TEST DOUBLE as a Docker image: the fake vLLM, not the real one.

The image is the simulated hosts' own Debian 12 rootfs (testbed.rootfs, which already has
bash and python3) plus:
  /opt/fake-vllm/        this folder (fake_vllm.py, fake_answers.py, the pkg/ shim)
  /opt/venv/bin/python   a wrapper putting the shim on PYTHONPATH, so the box kit's serve.sh
                         runs `/opt/venv/bin/python -m vllm.entrypoints.cli.main serve ...`
                         unchanged and gets the fake (FAKE_VLLM_IMAGE=1: it runs as the image).
  /etc/profile.d/fake-vllm.sh  image-profile.sh: what only a login shell reads; the fake
                         refuses to boot as the image without it (a non-login start fails).
Docs, man pages and locales are left out (a smaller layer: vfs storage copies it whole).

    tarball()                         -> Path of the cached rootfs tarball (built once)
    import_image(host, tag, env=...)  `docker import` it inside a simulated host, tagged as
                                      the real image name (or any name), with ENV lines baked
                                      in, e.g. {"FAKE_VLLM_FAIL": "boot"} for a broken image.
    HOOK_STANDIN                      a do-nothing nvidia-container-runtime-hook (see below).

The tarball is cached beside the rootfs, keyed by the rootfs directory and a hash of this
folder's sources, so editing the fake gives a new tarball.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from pathlib import Path

from testbed import rootfs

HERE = Path(__file__).resolve().parent
IMAGE_PREFIX = "/opt/fake-vllm"
PYTHON_WRAPPER = (f"#!/bin/sh\n# TEST DOUBLE image: runs the fake vLLM shim\n"
                  f"FAKE_VLLM_IMAGE=1 PYTHONPATH={IMAGE_PREFIX}/pkg exec python3 \"$@\"\n")
PROFILE_SCRIPT = HERE / "image-profile.sh"
# Left out of the image: not needed by bash + python3, and vfs copies every byte per container.
EXCLUDED = ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info",
            "var/cache/apt", "var/lib/apt/lists", "etc/ssh", "root/.ssh")

# TEST DOUBLE of the NVIDIA Container Toolkit's OCI hook, for hosts without GPUs. dockerd
# registers its `nvidia` device driver at start when a binary of this name is on its PATH
# (the toolkit package installs the real one as /usr/bin/nvidia-container-runtime-hook); then
# compose's GPU reservation (`driver: nvidia`) is accepted and runc calls the hook as a
# prestart hook of the container. The real hook would mount the driver and GPUs in; there is
# no GPU on a simulated host, so this one does nothing and lets the container start.
HOOK_STANDIN = """#!/bin/sh
# TEST DOUBLE of nvidia-container-runtime-hook (glmfleet testbed): no GPU here, nothing to do.
case "${1:-}" in
  --version|-v|version) echo "nvidia-container-runtime-hook (glmfleet test double, no-op)"; exit 0 ;;
esac
cat >/dev/null 2>&1 || true   # the OCI state runc passes on stdin
exit 0
"""


def _sources_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(HERE.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        h.update(str(p.relative_to(HERE)).encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(PYTHON_WRAPPER.encode() + repr(EXCLUDED).encode() + PROFILE_SCRIPT.read_bytes())
    return h.hexdigest()[:12]


def tarball() -> Path:
    """The image's rootfs as a tar (built once per rootfs and fake version; root only)."""
    base = rootfs.ensure_rootfs()
    key = hashlib.sha256(f"{base}:{_sources_digest()}".encode()).hexdigest()[:12]
    target = rootfs.cache_root() / f"serving-image-{key}.tar"
    if target.exists():
        return target
    with rootfs.file_lock(rootfs.cache_root() / "serving-image.lock"):
        if target.exists():
            return target
        fd, tmp = tempfile.mkstemp(dir=rootfs.cache_root(), prefix=".serving-image-")
        os.close(fd)
        try:
            _write_tar(base, Path(tmp))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target


def _write_tar(base: Path, out: Path) -> None:
    def keep(info: tarfile.TarInfo):
        name = info.name.removeprefix("./")
        if any(name == e or name.startswith(e + "/") for e in EXCLUDED):
            return None
        return info

    with tarfile.open(out, "w") as tar:
        for entry in sorted(os.listdir(base)):
            if entry == "opt":
                continue
            tar.add(base / entry, arcname=entry, filter=keep)
        _add_dir(tar, "opt", 0o755)
        _add_dir(tar, IMAGE_PREFIX.lstrip("/"), 0o755)
        for p in sorted(HERE.rglob("*")):
            if "__pycache__" in p.parts or p.name.endswith(".pyc"):
                continue
            arc = f"{IMAGE_PREFIX.lstrip('/')}/{p.relative_to(HERE)}"
            if p.is_dir():
                _add_dir(tar, arc, 0o755)
            else:
                tar.add(p, arcname=arc, recursive=False)
        _add_dir(tar, "opt/venv", 0o755)
        _add_dir(tar, "opt/venv/bin", 0o755)
        _add_bytes(tar, "opt/venv/bin/python", PYTHON_WRAPPER.encode(), 0o755)
        if not (base / "etc" / "profile.d").is_dir():
            _add_dir(tar, "etc/profile.d", 0o755)
        _add_bytes(tar, "etc/profile.d/fake-vllm.sh", PROFILE_SCRIPT.read_bytes(), 0o644)


def _add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def lacks_cap_sys_resource() -> bool:
    """True in sandboxes where no process may raise RLIMIT_MEMLOCK (no CAP_SYS_RESOURCE in
    the bounding set): there a privileged container or an unlimited memlock cannot start."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return not int(line.split()[1], 16) & (1 << 24)
    return True


def site_override(service_name: str) -> str | None:
    """A compose override for simulated hosts on such a machine (None where none is needed).
    Compose merges docker-compose.override.yml by itself; the deploy never writes it."""
    if not lacks_cap_sys_resource():
        return None
    return f"""# TEST FLEET ONLY, not part of the kit: this machine lacks CAP_SYS_RESOURCE, so a
# privileged container or an unlimited memlock cannot start here at all. A site override
# that compose merges by itself; the deploy never writes it and never restarts for it.
services:
  {service_name}:
    privileged: false
    ulimits:
      memlock: 8388608
"""


# Start dockerd inside a simulated host (no init system there), then wait until it answers.
DOCKERD = ("setsid dockerd --storage-driver=vfs --iptables=false --bridge=none "
           ">/var/log/dockerd.log 2>&1 </dev/null & "
           "for i in $(seq 150); do docker version >/dev/null 2>&1 && exit 0; sleep 0.2; done; "
           "tail -20 /var/log/dockerd.log; exit 1")


def preload(host, tag: str) -> str:
    """Give a simulated host Debian's docker.io + docker-compose (real packages, through the
    fleet's apt proxy), a running dockerd and the image double tagged ``tag``: a host that
    has Docker and the image already, as simulated hosts have no registry to pull from."""
    host.exec("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
              "--no-install-recommends docker.io docker-compose >/var/log/apt-docker.log 2>&1 "
              "|| { tail -20 /var/log/apt-docker.log; exit 1; }", timeout=300)
    host.exec(DOCKERD, timeout=60)
    return import_image(host, tag)


def import_image(host, tag: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """`docker import` the image inside ``host`` (a testbed Host with dockerd running) as
    ``tag``; ``env`` becomes ENV lines of the image (fault switches of the fake). Returns the
    image id. The tar is streamed on stdin: nothing is left in the host's filesystem."""
    changes = []
    for k, v in (env or {}).items():
        changes += ["--change", f"ENV {k}={v}"]
    cmd = " ".join(["docker", "import", *[_q(c) for c in changes], "-", _q(tag)])
    with open(tarball(), "rb") as f:
        data = f.read()
    p = host.exec(cmd, input=data, text=False, timeout=timeout)
    return p.stdout.decode().strip()


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


if __name__ == "__main__":
    print(tarball())
