"""The cached Debian root filesystems the simulated hosts boot from.

One per (suite, init): Debian 12 ``bookworm`` or Debian 13 ``trixie``; ``systemd``
(systemd as PID 1, sshd from ssh.service, like a real server) or ``none`` (no init
system: sshd is PID 1, the init-less profile). Built once with
``debootstrap --variant=minbase`` and kept as a plain directory (the read-only lower
layer of each host's overlayfs). The cache directory name carries a hash of every
build input, so changing the package list, suite, mirror or the preparation steps
gives a new directory instead of a stale one.

Cache root: ``/var/cache/glmfleet-testbed`` or ``$GLMFLEET_TESTBED_CACHE``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

SUITE = "bookworm"  # the controller's own suite (mirror discovery) and the default hosts'
SUITES = {"bookworm": "Debian 12", "trixie": "Debian 13"}
INITS = ("systemd", "none")
# The host images the test suite uses (built by testbed/setup.sh, so CI builds them first).
PROFILES = (("bookworm", "systemd"), ("trixie", "systemd"), ("bookworm", "none"))
VARIANT = "minbase"
# python3: the deploy runs Python probes on hosts. gnupg: apt-key style repo setup.
# sudo: hosts are reached as a non-root login with sudo, as cloud images are.
PACKAGES = ("openssh-server", "python3", "iproute2", "ca-certificates", "procps", "gnupg", "sudo")
# systemd hosts: systemd as PID 1 (systemd-sysv: /sbin/init), dbus for systemctl and logind.
SYSTEMD_PACKAGES = ("systemd", "systemd-sysv", "dbus")
# Bump when prepare() changes, so old caches are not reused.
PREPARE_VERSION = 2
# The login user of every host (like the `admin`/`debian` user of Debian's cloud images):
# key login, passwordless sudo. Root logs in with the same key, for tests about root.
LOGIN_USER = "admin"
LOGIN_UID = 1000
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def cache_root() -> Path:
    return Path(os.environ.get("GLMFLEET_TESTBED_CACHE", "/var/cache/glmfleet-testbed"))


def log(msg: str) -> None:
    print(f"[testbed] {msg}", file=sys.stderr, flush=True)


# --- mirror discovery -------------------------------------------------------

def _source_entries():
    """Yield (uri, suites) for every enabled ``deb`` source of this machine."""
    d = Path("/etc/apt/sources.list.d")
    files = [Path("/etc/apt/sources.list")] + sorted(d.glob("*.list")) + sorted(d.glob("*.sources"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            # deb822: paragraphs separated by blank lines
            for para in re.split(r"\n\s*\n", text):
                fields = {}
                for line in para.splitlines():
                    if line.startswith("#") or ":" not in line or line[0].isspace():
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.split()
                if "deb" not in fields.get("types", []) or fields.get("enabled", ["yes"])[0] == "no":
                    continue
                for uri in fields.get("uris", []):
                    yield uri, fields.get("suites", [])
        else:
            for line in text.splitlines():
                line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(line) >= 3 and line[0] == "deb":
                    yield line[1], line[2:3]


def debian_mirrors() -> dict[str, str]:
    """The machine's own Debian mirror URLs: {"debian": ..., "security": ... or ""}.

    The well-known names are not guaranteed to resolve on CI machines, so we
    use whatever this machine's apt already uses. ``$GLMFLEET_TESTBED_MIRROR``
    overrides the main archive URL.
    """
    found = {"debian": "", "security": ""}
    for uri, suites in _source_entries():
        uri = uri.rstrip("/")
        # Only plain HTTP can go through the caching proxy; prefer bookworm entries.
        if not uri.startswith("http://"):
            continue
        kind = "security" if uri.endswith("/debian-security") else "debian" if uri.endswith("/debian") else None
        if kind and not found[kind] and (not suites or any(s.startswith(SUITE) for s in suites)):
            found[kind] = uri
    found["debian"] = os.environ.get("GLMFLEET_TESTBED_MIRROR", found["debian"] or DEFAULT_MIRROR).rstrip("/")
    return found


def _controller_skips_valid_until() -> bool:
    # Snapshot mirrors serve Release files whose Valid-Until has passed; if this
    # machine's apt is told to ignore that, the hosts must be told the same.
    out = subprocess.run(["apt-config", "shell", "V", "Acquire::Check-Valid-Until"],
                         capture_output=True, text=True).stdout
    return "false" in out.lower()


def packages(init: str) -> tuple[str, ...]:
    return PACKAGES + (SYSTEMD_PACKAGES if init == "systemd" else ())


def build_inputs(suite: str = SUITE, init: str = "none") -> dict:
    if suite not in SUITES or init not in INITS:
        raise ValueError(f"no test host image for suite={suite!r} init={init!r}: "
                         f"suites {sorted(SUITES)}, inits {list(INITS)}")
    m = debian_mirrors()
    return {
        "suite": suite, "init": init, "variant": VARIANT, "packages": sorted(packages(init)),
        "mirror": m["debian"], "security": m["security"],
        "no_valid_until": _controller_skips_valid_until(), "prepare": PREPARE_VERSION,
    }


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]


# --- helpers shared with fleet.py and aptproxy.py ---------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # fields after "(comm)": state is [0], ppid [1], starttime [19]
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """Kernel start time of ``pid``: recorded with every PID we keep, so a
    recycled PID is never mistaken for (and never killed as) one of ours."""
    st = _stat(pid)
    return int(st[19]) if st else None


def alive(pid: int | None, started: int | None) -> bool:
    st = _stat(pid) if pid else None
    return bool(st) and st[0] != "Z" and int(st[19]) == started


def children(pid: int) -> list[int]:
    res = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st and int(st[1]) == pid:
                res.append(int(d))
    return res


def wait_gone(pid: int, started: int | None, timeout: float, popen=None) -> bool:
    """Wait until ``pid`` has exited; reap it through ``popen`` when it is our child."""
    deadline = time.monotonic() + timeout
    while True:
        if popen is not None:
            popen.poll()
        if not alive(pid, started):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    p = os.path.realpath(path)
    res = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            mp = line.split()[1].encode().decode("unicode_escape")  # \040 etc.
            if mp == p or mp.startswith(p.rstrip("/") + "/"):
                res.append(mp)
    return sorted(set(res), key=lambda m: m.count("/"), reverse=True)


def umount_tree(path: Path) -> None:
    """Unmount everything at or below ``path`` (never rmtree through a live mount)."""
    for mp in mounts_under(path):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def remove_tree(path: Path) -> None:
    if os.path.lexists(path):
        umount_tree(path)
        if mounts_under(path):
            raise RuntimeError(f"refusing to delete {path}: still has mounts")
        shutil.rmtree(path, ignore_errors=True)


# --- build ------------------------------------------------------------------

SSHD_CONF = """\
# Simulated test host: the login user and root log in with the controller's key only.
# No PAM: there is no init system or login-session tracking in these hosts.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# Each host gets its own key at creation (see testbed/fleet.py).
HostKey /etc/ssh/ssh_host_ed25519_key
UseDNS no
PrintMotd no
"""

APT_NO_DEBS = """\
// Simulated test host: keep downloaded .debs out of the image and the hosts'
// overlay dirs (the controller's apt-cacher-ng keeps them instead).
APT::Keep-Downloaded-Packages "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };
Acquire::Languages "none";
"""


def _prepare(root: Path, inputs: dict) -> None:
    """Turn a fresh debootstrap tree into a bootable host image."""
    # openssh-server's postinst generated host keys; every host must have its own.
    for k in (root / "etc/ssh").glob("ssh_host_*"):
        k.unlink()
    (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (root / "etc/ssh/sshd_config.d/10-testbed.conf").write_text(SSHD_CONF)

    # Sources: the same mirror the controller uses (reached through the proxy).
    suite = inputs["suite"]
    src = f"Types: deb\nURIs: {inputs['mirror']}\nSuites: {suite} {suite}-updates\nComponents: main\n" \
          "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    if inputs["security"]:
        src += f"\nTypes: deb\nURIs: {inputs['security']}\nSuites: {suite}-security\nComponents: main\n" \
               "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    (root / "etc/apt/sources.list.d/debian.sources").write_text(src)
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    conf = APT_NO_DEBS
    if inputs["no_valid_until"]:
        conf += 'Acquire::Check-Valid-Until "false";\n'
    (root / "etc/apt/apt.conf.d/90testbed").write_text(conf)

    # No route out of a host: no resolver either, so lookups fail fast (127.0.0.1 default).
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("# simulated test host: no DNS (no route out)\n")
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)

    # The login user: a key login (its password field is "*", not the locked "!" that sshd
    # refuses without PAM) and passwordless sudo, as on a cloud image.
    subprocess.run(["chroot", str(root), "useradd", "--create-home", "--uid", str(LOGIN_UID),
                    "--user-group", "--shell", "/bin/bash", "--password", "*", LOGIN_USER], check=True)
    sudoers = root / f"etc/sudoers.d/90-{LOGIN_USER}"
    sudoers.write_text(f"{LOGIN_USER} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    home_ssh = root / f"home/{LOGIN_USER}/.ssh"
    home_ssh.mkdir(mode=0o700)
    os.chown(home_ssh, LOGIN_UID, LOGIN_UID)

    if inputs["init"] == "systemd":
        # No kernel modules can be loaded from a test host: mask the one unit that tries.
        (root / "etc/systemd/system/systemd-modules-load.service").symlink_to("/dev/null")

    subprocess.run(["chroot", str(root), "apt-get", "clean"], check=True)
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)  # a fresh server has none
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)


def ensure_rootfs(suite: str = SUITE, init: str = "none") -> Path:
    """Return the cached rootfs directory, building it first if needed (root only)."""
    inputs = build_inputs(suite, init)
    key = cache_key(inputs)
    base = cache_root()
    target = base / f"rootfs-{key}"
    if target.is_dir():
        return target
    if os.geteuid() != 0:
        raise PermissionError("building the testbed rootfs needs root")
    with file_lock(base / f"rootfs-{key}.lock"):
        if target.is_dir():  # another process built it while we waited
            return target
        for stale in base.glob(f".build-{key}-*"):
            remove_tree(stale)
        tmp = base / f".build-{key}-{os.getpid()}"
        logf = base / f"rootfs-{key}.log"
        log(f"building Debian {suite} rootfs ({'systemd' if init == 'systemd' else 'no init'}) from {inputs['mirror']} into {target} (log: {logf}) ...")
        t0 = time.monotonic()
        try:
            with open(logf, "w") as lf:
                subprocess.run(
                    ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(packages(init))}",
                     suite, str(tmp), inputs["mirror"]],
                    stdout=lf, stderr=subprocess.STDOUT, check=True)
            _prepare(tmp, inputs)
            (base / f"rootfs-{key}.json").write_text(json.dumps(inputs, indent=1) + "\n")
            os.rename(tmp, target)  # the atomic "done" marker
        except BaseException:
            remove_tree(tmp)
            raise
        log(f"rootfs ready in {time.monotonic() - t0:.0f}s")
    return target


if __name__ == "__main__":
    print(ensure_rootfs())
