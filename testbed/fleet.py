"""A simulated fleet of Debian hosts built from Linux namespaces (root only).

Each host is:
  * a network namespace ``<prefix>-<name>`` joined to the controller by a veth
    pair on its own /30 from 10.213.0.0/16 (controller side .1 = ``gateway``,
    host side .2 = ``address``); no default route, so nothing leaves the link;
  * an overlayfs root (lower: the cached rootfs, upper: per host) mounted on
    the controller at ``Host.root``, so tests can read and write host files;
  * its own mount, PID, UTS and cgroup namespaces, in its own cgroup subtree of every
    hierarchy of this machine (bind-mounted writable at the host's /sys/fs/cgroup, so
    systemd and Docker inside manage their own cgroups without seeing another host's);
  * PID 1 is systemd (``init="systemd"``, the default: sshd comes from ssh.service, Docker
    from docker.service, units enabled at boot start at boot) or, on the init-less profile
    (``init="none"``), a real ``sshd -D``. Stopping a host powers it off (systemd: a clean
    poweroff, like `systemctl poweroff`); killing PID 1 takes the whole host down, like
    pulling the plug.
  * a Debian 13 (``suite="trixie"``) or Debian 12 (``suite="bookworm"``) root.

Everything created is recorded (with PID start times) in ``<workdir>/state.json``
so another process (``python -m testbed down``) can tear it down by PID.
"""

from __future__ import annotations

import atexit
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from testbed import rootfs
from testbed.aptproxy import AptProxy, DEFAULT_PORT
from testbed.sitenet import SiteNet
# A host file that, when present, becomes the host's /proc/driver/nvidia/version (NVML double).
DRIVER_VERSION_SOURCE = "/etc/fake-nvidia-version"

from testbed.rootfs import alive, children, start_time, wait_gone, umount_tree, remove_tree

NET = ipaddress.ip_network("10.213.0.0/16")
NET_LOCK = Path("/run/lock/glmfleet-testbed-net.lock")  # serialises address picks across sessions
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
DEFAULT_SUITE = "bookworm"
DEFAULT_INIT = "systemd"
CGROUP_DIR = "glmfleet-testbed"  # per-host subtrees live under this, below our own cgroup


class FleetError(RuntimeError):
    pass


def cgroup_hierarchies() -> list[tuple[str, str, str]]:
    """(path below /sys/fs/cgroup, mount point, this process's cgroup in it) of every
    cgroup hierarchy mounted under /sys/fs/cgroup ("" for a cgroup2 tree mounted there)."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            own[ctrls] = path
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, post = line.split(" - ", 1)
            mount = pre.split()[4]
            fstype, _, opts = post.split()[:3]
            if fstype not in ("cgroup", "cgroup2") or not (mount + "/").startswith("/sys/fs/cgroup/"):
                continue
            opts = set(opts.split(","))
            key = "" if fstype == "cgroup2" else next(
                (k for k in own if k and set(k.split(",")) <= opts), None)
            if key is not None and key in own:
                found.append((mount[len("/sys/fs/cgroup"):], mount, own[key]))
    return found


def _run(*argv, check=True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    if check and p.returncode:
        raise FleetError(f"{' '.join(map(str, argv))}: {p.stderr.strip() or p.stdout.strip()}")
    return p


@dataclass
class Host:
    """One simulated host. Attributes are plain data (also stored in state.json)."""

    name: str
    netns: str
    veth: str            # controller-side interface name
    address: str         # host-side IP: what SSH / pyinfra connect to
    gateway: str         # controller-side IP on the host's link: serve host-facing test services here
    dir: str             # per-host work dir on the controller (upper/, work/, merged/, boot.log)
    ssh_key: str         # controller private key that root@host accepts
    known_hosts: str     # known_hosts file holding every fleet host's key
    shm_size: str = "1g"
    suite: str = DEFAULT_SUITE
    init: str = DEFAULT_INIT
    cgroups: list = field(default_factory=list)  # controller-side dirs of its cgroup subtree
    hostfs_size: str | None = None
    hostfs_path: str = "/mnt"
    site_address: str | None = None  # address on the fleet's site network (testbed/sitenet.py)
    pid: int | None = None        # the host's PID 1 (sshd), as seen from the controller
    pid_start: int | None = None
    launcher_pid: int | None = None   # `unshare` process that waits on PID 1
    launcher_start: int | None = None
    _popen: object = field(default=None, repr=False, compare=False)

    @property
    def root(self) -> Path:
        """The host's filesystem, mounted on the controller (overlay merged dir).

        Host-private mounts (/proc, /sys, /dev, /run) are not visible here;
        ``hostfs_path`` (if any) is, because it is mounted before the host starts."""
        return Path(self.dir) / "merged"

    @property
    def running(self) -> bool:
        return alive(self.pid, self.pid_start)

    def exec(self, cmd: str, check: bool = True, input=None, timeout: float = 120,
             text: bool = True) -> subprocess.CompletedProcess:
        """Run ``cmd`` with /bin/sh inside the host (its mount, PID, net and UTS
        namespaces and root), without SSH: for test setup and inspection."""
        if not self.running:
            raise FleetError(f"host {self.name} is not running")
        argv = ["nsenter", "-t", str(self.pid), "-m", "-u", "-n", "-p", "-C", "-r", "-w", "--",
                "/usr/bin/env", "-i", f"PATH={HOST_PATH}", "HOME=/root", "LANG=C.UTF-8",
                "/bin/sh", "-c", cmd]
        p = subprocess.run(argv, input=input, capture_output=True, text=text, timeout=timeout)
        if check and p.returncode:
            raise FleetError(f"[{self.name}] {cmd!r} exited {p.returncode}: {p.stderr or p.stdout}")
        return p

    def ssh_argv(self, cmd: str | None = None, user: str = "root") -> list[str]:
        """An OpenSSH command line that logs in as ``user`` on this host (runs ``cmd`` if given)."""
        return ["ssh", "-i", self.ssh_key, "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                "-o", "LogLevel=ERROR", f"{user}@{self.address}"] + ([cmd] if cmd else [])

    def state(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_popen"}


class Fleet:
    """N simulated hosts; see the module docstring. Use as a context manager or
    call ``teardown()`` (idempotent; also registered with atexit by default)."""

    def __init__(self, workdir: str | os.PathLike | None = None, prefix: str | None = None, *,
                 apt_proxy: bool = True, proxy_port: int = DEFAULT_PORT, cleanup_at_exit: bool = True,
                 _state: dict | None = None):
        if os.geteuid() != 0:
            raise PermissionError("the simulated fleet needs root (namespaces, mounts, veths)")
        # a short random id keeps parallel sessions' namespaces and dirs apart
        self.prefix = prefix or f"gft-{secrets.token_hex(3)}"
        self.workdir = Path(workdir or f"/var/tmp/glmfleet-fleet-{self.prefix}")
        self.hosts: dict[str, Host] = {}
        self.proxy = AptProxy(self.workdir, proxy_port) if apt_proxy else None
        self._lowers: dict[tuple[str, str], Path] = {}
        self.site = SiteNet(self.prefix, (_state or {}).get("site"))  # hosts added with site=True
        if _state is not None:  # re-attached by load()
            self.hosts = {n: Host(**h) for n, h in _state["hosts"].items()}
            if _state.get("proxy") is not None:
                self.proxy = AptProxy.from_state(self.workdir, _state["proxy"])
        elif (self.workdir / "state.json").exists():
            raise FleetError(f"{self.workdir} already holds a fleet; use Fleet.load() or `testbed down`")
        self.key = self.workdir / "id_ed25519"  # the controller's key, accepted by root on every host
        if _state is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if not self.key.exists():
                _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"testbed-controller@{self.prefix}",
                     "-f", self.key)
            self._save()
        if cleanup_at_exit:
            atexit.register(self.teardown)

    @classmethod
    def load(cls, workdir: str | os.PathLike, cleanup_at_exit: bool = False) -> "Fleet":
        """Re-attach to a fleet recorded in ``workdir/state.json`` (e.g. from `testbed up`)."""
        state = json.loads((Path(workdir) / "state.json").read_text())
        return cls(workdir, state["prefix"], apt_proxy=False, cleanup_at_exit=cleanup_at_exit, _state=state)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    # --- state ---------------------------------------------------------------

    def _save(self) -> None:
        if not self.workdir.is_dir():
            return
        state = {"prefix": self.prefix, "workdir": str(self.workdir),
                 "hosts": {n: h.state() for n, h in self.hosts.items()},
                 "proxy": self.proxy.to_state() if self.proxy else None,
                 "site": self.site.to_state()}
        tmp = self.workdir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.workdir / "state.json")

    def _write_known_hosts(self) -> None:
        lines = []
        for h in self.hosts.values():
            pub = (h.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
            lines.append(f"{h.address} {pub[0]} {pub[1]}\n")
        (self.workdir / "known_hosts").write_text("".join(lines))

    # --- hosts ---------------------------------------------------------------

    def add_host(self, name: str, *, shm_size: str = "1g",
                 files: dict[str, bytes | str | tuple] | None = None,
                 hostfs_size: str | None = None, hostfs_path: str = "/mnt",
                 suite: str = DEFAULT_SUITE, init: str = DEFAULT_INIT, site: bool = False) -> Host:
        """Create a host (not started). ``files``: {absolute path in host: content or
        (content, mode)} written into its filesystem before start. ``hostfs_size``
        (e.g. "64m") puts a size-limited tmpfs at ``hostfs_path`` to simulate a full disk;
        it survives host restarts like a disk would. ``suite``: "bookworm" (Debian 12) or
        "trixie" (Debian 13); ``init``: "systemd" or "none" (sshd as PID 1). ``site``: also
        put the host on the fleet's site network (``Host.site_address``), where fleet hosts
        reach each other."""
        if not NAME_RE.match(name):
            raise FleetError(f"bad host name {name!r}: use [a-z0-9-], max 31 chars")
        if name in self.hosts:
            raise FleetError(f"host {name} already exists")
        rootfs.build_inputs(suite, init)  # a bad profile fails here, before anything is made
        if (suite, init) not in self._lowers:
            self._lowers[(suite, init)] = rootfs.ensure_rootfs(suite, init)
        lower = self._lowers[(suite, init)]
        netns = f"{self.prefix}-{name}"
        hdir = self.workdir / name
        h = Host(name=name, netns=netns, veth="gv" + hashlib.sha1(netns.encode()).hexdigest()[:10],
                 address="", gateway="", dir=str(hdir), ssh_key=str(self.key),
                 known_hosts=str(self.workdir / "known_hosts"), shm_size=shm_size,
                 hostfs_size=hostfs_size, hostfs_path=hostfs_path, suite=suite, init=init)
        self.hosts[name] = h
        self._save()  # record before creating anything, so a failure can still be torn down
        try:
            for d in ("upper", "work", "merged"):
                (hdir / d).mkdir(parents=True, exist_ok=True)
            _run("mount", "-t", "overlay", "overlay", "-o",
                 f"lowerdir={lower},upperdir={hdir / 'upper'},workdir={hdir / 'work'}", h.root)
            if hostfs_size:
                mp = h.root / hostfs_path.lstrip("/")
                mp.mkdir(parents=True, exist_ok=True)
                _run("mount", "-t", "tmpfs", "-o", f"size={hostfs_size},mode=755", "tmpfs", mp)
            self._create_link(h)
            if site:
                h.site_address = self.site.attach(h.netns)
            self._seed_files(h, files or {})
            self._write_known_hosts()
        except BaseException:
            self._destroy(h)
            raise
        finally:
            self._save()
        return h

    def _create_link(self, h: Host) -> None:
        _run("ip", "netns", "add", h.netns)
        with rootfs.file_lock(NET_LOCK):
            # every network in use here, including other fleets' links (their .1 side)
            used = [ipaddress.ip_interface(line.split()[3]).network
                    for line in _run("ip", "-4", "-o", "addr", "show").stdout.splitlines()]
            net = next(n for n in NET.subnets(new_prefix=30) if not any(n.overlaps(u) for u in used))
            h.gateway, h.address = str(net[1]), str(net[2])
            _run("ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
            _run("ip", "addr", "add", f"{h.gateway}/30", "dev", h.veth)
        _run("ip", "link", "set", h.veth, "up")
        _run("ip", "-n", h.netns, "addr", "add", f"{h.address}/30", "dev", "eth0")
        _run("ip", "-n", h.netns, "link", "set", "eth0", "up")
        _run("ip", "-n", h.netns, "link", "set", "lo", "up")

    def _seed_files(self, h: Host, files: dict) -> None:
        r = h.root
        (r / "etc/hostname").write_text(h.name + "\n")
        (r / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n{h.address}\t{h.name}\n"
                                     "::1\tlocalhost ip6-localhost ip6-loopback\n")
        for home, uid in (("root", 0), (f"home/{rootfs.LOGIN_USER}", rootfs.LOGIN_UID)):
            auth = r / home / ".ssh/authorized_keys"
            auth.write_text(Path(f"{self.key}.pub").read_text())
            auth.chmod(0o600)
            os.chown(auth, uid, uid)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{h.name}",
             "-f", r / "etc/ssh/ssh_host_ed25519_key")
        if self.proxy:
            # Our own link's controller address is reached directly (local test
            # services, e.g. repository doubles, can listen there), the rest via the proxy.
            (r / "etc/apt/apt.conf.d/01proxy").write_text(
                "// simulated test host: no route out, apt goes through the controller's apt-cacher-ng\n"
                f'Acquire::http::Proxy "{self.proxy.url(h.gateway)}";\n'
                f'Acquire::http::Proxy::{h.gateway} "DIRECT";\n'
                "// a stalled transfer is retried instead of hanging a test run; no HTTP\n"
                "// pipelining through the proxy (a closed pipelined connection can stall apt)\n"
                "// retries at once: apt-cacher-ng answers one of several hosts refreshing an\n"
                "// index at the same moment with an error, and apt's delayed retry of it can\n"
                "// leave apt-get update waiting forever on idle methods (seen on bookworm)\n"
                'Acquire::http::Timeout "30";\n'
                'Acquire::Retries "3";\n'
                'Acquire::Retries::Delay "false";\n'
                'Acquire::http::Pipeline-Depth "0";\n')
        for path, content in files.items():
            mode = None
            if isinstance(content, tuple):
                content, mode = content
            if not path.startswith("/"):
                raise FleetError(f"files: {path!r} must be an absolute path inside the host")
            dest = r / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(content.encode() if isinstance(content, str) else content)
            if mode is not None:
                dest.chmod(mode)

    def _boot_script(self, h: Host) -> str:
        """Runs as PID 1 of the new PID namespace, in the host's new mount namespace,
        before chroot: give the host its own /proc, /sys, /dev, /run, then become sshd."""
        r = shlex.quote(str(h.root))
        s = [
            "set -e",
            f"mount -t proc proc {r}/proc",
            # sysfs mounted from inside the netns shows the host's own interfaces; read-only
            # because most of it is the real machine's hardware.
            f"mount -t sysfs -o ro,nosuid,nodev,noexec sysfs {r}/sys",
            f"mount -t tmpfs -o mode=755,size=16m,nosuid tmpfs {r}/dev",
            f"mkdir {r}/dev/pts {r}/dev/shm",
        ]
        # The host's own cgroup subtree of every hierarchy, writable, where the machine has
        # them: systemd and dockerd inside manage cgroups there (the launcher put PID 1 in
        # it and entered a new cgroup namespace, so the host sees it as its root).
        cg = [] if any(rel == "" for rel, _ in h.cgroups) or not h.cgroups else \
            [f"mount -t tmpfs -o mode=755,size=1m,nosuid,nodev,noexec tmpfs {r}/sys/fs/cgroup"]
        for rel, d in h.cgroups:
            cg += [f"mkdir -p {r}/sys/fs/cgroup{rel}", f"mount --bind {shlex.quote(d)} {r}/sys/fs/cgroup{rel}"]
        s[3:3] = cg
        for dev, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
                                  ("urandom", 1, 9), ("tty", 5, 0)):
            s.append(f"mknod -m 666 {r}/dev/{dev} c {major} {minor}")
        s += [
            f"mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts {r}/dev/pts",
            f"ln -s pts/ptmx {r}/dev/ptmx",
            f"ln -s /proc/self/fd {r}/dev/fd",
            f"ln -s /proc/self/fd/0 {r}/dev/stdin",
            f"ln -s /proc/self/fd/1 {r}/dev/stdout",
            f"ln -s /proc/self/fd/2 {r}/dev/stderr",
            f"mount -t tmpfs -o size={shlex.quote(h.shm_size)},mode=1777,nosuid,nodev tmpfs {r}/dev/shm",
            # a fresh /run per boot, as on a real machine (no stale pid files after restart)
            f"mount -t tmpfs -o size=64m,mode=755,nosuid,nodev tmpfs {r}/run",
            f"mkdir -p {r}/run/sshd {r}/run/lock",
            # The NVIDIA kernel module's version file, where the driver puts it, for hosts
            # given one by the NVML double (procfs itself cannot hold it: a tmpfs over
            # /proc/driver, private to this host, can).
            f"if [ -f {r}{DRIVER_VERSION_SOURCE} ]; then mount -t tmpfs -o size=1m tmpfs {r}/proc/driver"
            f" && mkdir {r}/proc/driver/nvidia && cp {r}{DRIVER_VERSION_SOURCE} {r}/proc/driver/nvidia/version; fi",
            f"hostname {shlex.quote(h.name)}",
        ]
        if h.init == "systemd":
            # systemd as PID 1 of a container (it is told so); it starts ssh.service & co.
            s.append(f"exec /usr/bin/env -i container=other PATH={HOST_PATH} LANG=C.UTF-8 "
                     f"/usr/sbin/chroot {r} /lib/systemd/systemd --system")
        else:
            s.append(f"exec /usr/bin/env -i PATH={HOST_PATH} LANG=C.UTF-8 /usr/sbin/chroot {r} /usr/sbin/sshd -D -e")
        return "\n".join(s)

    def _make_cgroups(self, h: Host) -> None:
        """A fresh cgroup subtree for ``h`` in every hierarchy, below our own cgroup."""
        self._remove_cgroups(h)
        h.cgroups = []
        for rel, mount, own in cgroup_hierarchies():
            d = Path(f"{mount}{own.rstrip('/')}/{CGROUP_DIR}/{h.netns}")
            for level in (d.parent, d):
                level.mkdir(exist_ok=True)
                for knob in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset: empty until copied
                    f = level / knob
                    if f.exists() and not f.read_text().strip():
                        f.write_text((level.parent / knob).read_text())
            h.cgroups.append((rel, str(d)))

    @staticmethod
    def _remove_cgroups(h: Host) -> None:
        for _, d in h.cgroups:
            for sub, _dirs, _files in sorted(os.walk(d, topdown=False), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(sub)
                except OSError:
                    pass
        h.cgroups = []

    def _launch(self, h: Host) -> None:
        # nsenter --net (not `ip netns exec`, which remounts /sys and hides the cgroup mounts)
        self._make_cgroups(h)
        log = open(Path(h.dir) / "boot.log", "ab")
        # Into the host's cgroups first, then new namespaces (cgroup included) around PID 1.
        enter = ('b=$1; shift; for d; do echo $$ >"$d/cgroup.procs" || exit 1; done; '
                 'exec unshare --cgroup --mount --pid --fork --uts --propagation private /bin/sh -c "$b"')
        p = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{h.netns}", "/bin/sh", "-c", enter, "enter",
             self._boot_script(h), *(d for _, d in h.cgroups)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        h._popen, h.launcher_pid, h.launcher_start = p, p.pid, start_time(p.pid)
        deadline = time.monotonic() + 10
        while not (kids := children(p.pid)):  # unshare forks PID 1 right away
            if p.poll() is not None or time.monotonic() > deadline:
                raise FleetError(f"host {h.name} did not start; see {h.dir}/boot.log")
            time.sleep(0.01)
        h.pid, h.pid_start = kids[0], start_time(kids[0])

    def start(self, *names: str, timeout: float = 60) -> None:
        """Boot the named hosts (default: all stopped ones) in parallel; return once
        each answers SSH and, on systemd hosts, has finished booting (no start-up job left,
        as a server that is up: `systemctl is-system-running --wait`)."""
        hosts = [self.hosts[n] for n in (names or self.hosts)]
        if self.proxy:
            self.proxy.apply(h.gateway for h in self.hosts.values())
        todo = [h for h in hosts if not h.running]
        try:
            for h in todo:
                self._launch(h)
        finally:
            self._save()
        deadline = time.monotonic() + timeout
        booting = [h for h in todo if h.init == "systemd"]
        while todo:
            h = todo[0]
            if not h.running:
                raise FleetError(f"host {h.name} died while booting; see {h.dir}/boot.log:\n"
                                 + (Path(h.dir) / "boot.log").read_text()[-2000:])
            try:
                with socket.create_connection((h.address, 22), timeout=1) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        todo.pop(0)
                        continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise FleetError(f"host {h.name} not answering SSH after {timeout}s")
            time.sleep(0.05)
        for h in booting:
            left = max(1.0, deadline - time.monotonic())
            try:
                state = h.exec("systemctl is-system-running --wait", check=False, timeout=left).stdout.strip()
            except subprocess.TimeoutExpired:
                raise FleetError(f"host {h.name} still booting after {timeout}s") from None
            if state not in ("running", "degraded"):
                raise FleetError(f"host {h.name} booted to {state!r}; see `systemctl --failed` in it")

    def stop(self, *names: str, timeout: float = 10) -> None:
        """Power off the named hosts (default: all): kill PID 1, which ends every process
        and host-private mount of the host. Its filesystem stays (see ``Host.root``)."""
        for h in [self.hosts[n] for n in (names or self.hosts)]:
            if h.running:
                # systemd powers off on SIGRTMIN+4 (stops its units: Docker, the service)
                os.kill(h.pid, signal.SIGRTMIN + 4 if h.init == "systemd" else signal.SIGTERM)
                if not wait_gone(h.pid, h.pid_start, timeout):
                    os.kill(h.pid, signal.SIGKILL)
                    wait_gone(h.pid, h.pid_start, timeout)
            # the launcher exits once PID 1 has gone
            if h.launcher_pid and not wait_gone(h.launcher_pid, h.launcher_start, 5, h._popen):
                os.kill(h.launcher_pid, signal.SIGKILL)
                wait_gone(h.launcher_pid, h.launcher_start, 5, h._popen)
            h.pid = h.pid_start = h.launcher_pid = h.launcher_start = h._popen = None
            self._remove_cgroups(h)
        self._save()

    def restart(self, *names: str, timeout: float = 60) -> None:
        self.stop(*names)
        self.start(*(names or tuple(self.hosts)), timeout=timeout)

    def _destroy(self, h: Host) -> None:
        """Remove everything of one host; tolerant of half-created hosts."""
        errors = []
        for step in (lambda: self.stop(h.name),
                     lambda: umount_tree(Path(h.dir)),
                     lambda: self.site.detach(h.netns),
                     lambda: _run("ip", "netns", "del", h.netns, check=False),
                     lambda: _run("ip", "link", "del", h.veth, check=False),
                     lambda: remove_tree(Path(h.dir))):
            try:
                step()
            except Exception as e:  # keep going: teardown must get as far as it can
                errors.append(e)
        self.hosts.pop(h.name, None)
        if errors:
            raise FleetError(f"tearing down {h.name}: {errors}")

    def remove(self, name: str) -> None:
        self._destroy(self.hosts[name])
        self._save()
        if self.workdir.is_dir():
            self._write_known_hosts()
        if self.proxy and self.proxy.running:
            self.proxy.apply(h.gateway for h in self.hosts.values())
            self._save()

    def teardown(self) -> None:
        """Stop and delete every host, the proxy and the workdir. Idempotent."""
        errors = []
        for h in list(self.hosts.values()):
            try:
                self._destroy(h)
            except Exception as e:
                errors.append(e)
        try:
            self.site.destroy()
        except Exception as e:
            errors.append(e)
        if self.proxy:
            try:
                self.proxy.stop()
            except Exception as e:
                errors.append(e)
        if self.workdir.is_dir():
            if errors:
                self._save()  # what is left, for `testbed down` to retry
            else:
                remove_tree(self.workdir)
        if errors:
            raise FleetError(f"teardown incomplete (state kept in {self.workdir}): {errors}")

    # --- pyinfra -------------------------------------------------------------

    def ssh_data(self, h: Host, login: str = rootfs.LOGIN_USER) -> dict:
        """pyinfra SSH connector data for ``h`` (pyinfra 3.x key names). ``login``: the
        host's sudo user (default; the data then carries ``_sudo``, what `--sudo` sets for
        a whole run) or "root"."""
        data = {"ssh_hostname": h.address, "ssh_user": login, "ssh_key": h.ssh_key,
                "ssh_known_hosts_file": h.known_hosts, "ssh_strict_host_key_checking": "yes",
                "ssh_allow_agent": False, "ssh_look_for_keys": False}
        if login != "root":
            data["_sudo"] = True
        return data

    def write_inventory(self, path: str | os.PathLike, hosts=None,
                        host_data: dict[str, dict] | None = None, group: str = "testbed",
                        login: str | dict[str, str] = rootfs.LOGIN_USER) -> Path:
        """Write a pyinfra inventory module with one group (``group``) of ``hosts``
        (names; default all). ``host_data``: {host name: extra host data}; values must
        be Python literals. ``login``: see ssh_data (one for all, or {host name: login})."""
        names = list(hosts or self.hosts)
        host_data = host_data or {}

        def login_of(n):
            return login.get(n, rootfs.LOGIN_USER) if isinstance(login, dict) else login
        rows = "".join(f"    ({n!r}, {({**self.ssh_data(self.hosts[n], login_of(n)), **host_data.get(n, {})})!r}),\n"
                       for n in names)
        text = ("# Generated by testbed: a SIMULATED fleet (Linux namespaces on this machine),\n"
                f"# not real servers. Fleet workdir: {self.workdir}\n"
                f"{group} = [\n{rows}]\n")
        Path(path).write_text(text)
        return Path(path)
