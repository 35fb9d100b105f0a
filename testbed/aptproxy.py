"""apt-cacher-ng for one simulated fleet.

Hosts have no route out of their /30 link, so their apt talks to this proxy on
the controller-side veth address of their own link. It listens ONLY on those
addresses (never 0.0.0.0), forwards only Debian archive requests to this
machine's own mirror (``ForceManaged``), and keeps its package cache under the
testbed cache root so later runs (and CI) reuse downloaded .debs.

apt-cacher-ng binds its addresses at start-up, so when the fleet's set of links
changes the proxy is restarted with the new list (``apply``); this takes a few
milliseconds and happens only while hosts are being added, started or removed.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from testbed import rootfs
from testbed.rootfs import alive, start_time, wait_gone

DEFAULT_PORT = 13142  # not 3142: a system apt-cacher-ng may hold *:3142


class AptProxy:
    def __init__(self, workdir: Path, port: int = DEFAULT_PORT, state: dict | None = None):
        self.dir = Path(workdir) / "aptproxy"
        self.port = port
        state = state or {}
        self.pid: int | None = state.get("pid")
        self.pid_start: int | None = state.get("pid_start")
        self.addresses: list[str] = state.get("addresses", [])
        self.cache_dir: str | None = state.get("cache_dir")

    def to_state(self) -> dict:
        return {"pid": self.pid, "pid_start": self.pid_start, "addresses": self.addresses,
                "cache_dir": self.cache_dir, "port": self.port}

    @classmethod
    def from_state(cls, workdir: Path, state: dict) -> "AptProxy":
        return cls(workdir, state.get("port", DEFAULT_PORT), state)

    def url(self, address: str) -> str:
        return f"http://{address}:{self.port}"

    @property
    def running(self) -> bool:
        return alive(self.pid, self.pid_start)

    def apply(self, addresses) -> None:
        """Make the proxy listen on exactly ``addresses`` (restart if they changed)."""
        addresses = sorted(set(addresses))
        if addresses == self.addresses and self.running:
            return
        self.stop()
        if addresses:
            self._start(addresses)

    def _config(self, addresses, cache_dir: Path) -> str:
        m = rootfs.debian_mirrors()

        def hostpath(url):  # "http://h/debian" -> "h/debian", the form Remap prefixes take
            u = urlsplit(url)
            return f"{u.netloc}{u.path}".rstrip("/")

        # Any Debian archive name a host may use maps to this machine's mirror;
        # the stock backend list names a host that may not resolve here.
        lines = [
            f"CacheDir: {cache_dir}",
            f"LogDir: {self.dir / 'log'}",
            "SupportDir: /usr/lib/apt-cacher-ng",
            f"Port: {self.port}",
            f"BindAddress: {' '.join(addresses)}",
            f"SocketPath: {self.dir / 'socket'}",
            "ForeGround: 1",
            "ForceManaged: 1",          # only remapped (Debian) repositories, nothing else
            "PassThroughPattern: ^$",   # no CONNECT tunnels
            "ExThreshold: 4",
            "UnbufferLogs: 1",
            # Give up on a stalled upstream transfer (the host's apt then retries).
            "NetworkTimeout: 30",
            f"Remap-debrep: file:deb_mirror*.gz /debian {hostpath(m['debian'])} ; {m['debian']}/",
        ]
        if m["security"]:
            lines.append(
                "Remap-secdeb: security.debian.org security.debian.org/debian-security "
                f"deb.debian.org/debian-security /debian-security {hostpath(m['security'])} ; {m['security']}/")
        return "\n".join(lines) + "\n"

    def _start(self, addresses) -> None:
        conf = self.dir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (self.dir / "log").mkdir(exist_ok=True)
        # The persistent cache is shared between runs but not between two live
        # proxies: the flock is inherited by apt-cacher-ng and released when it exits.
        shared = rootfs.cache_root() / "apt-cacher-ng"
        shared.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(rootfs.cache_root() / "apt-cacher-ng.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                cache_dir = shared
            except BlockingIOError:
                cache_dir = self.dir / "cache"  # another fleet holds the shared cache
                cache_dir.mkdir(exist_ok=True)
            (conf / "acng.conf").write_text(self._config(addresses, cache_dir))
            log = open(self.dir / "log" / "stdout.log", "ab")
            p = subprocess.Popen(["apt-cacher-ng", "-c", str(conf)], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                 pass_fds=(lock_fd,))
            log.close()
        finally:
            os.close(lock_fd)
        self.pid, self.pid_start = p.pid, start_time(p.pid)
        self._popen = p  # so this process reaps it
        self.addresses, self.cache_dir = list(addresses), str(cache_dir)
        deadline = time.monotonic() + 10
        pending = list(addresses)
        while pending:
            if p.poll() is not None:
                raise RuntimeError(f"apt-cacher-ng exited ({p.returncode}); see {self.dir / 'log'}")
            try:
                socket.create_connection((pending[0], self.port), timeout=1).close()
                pending.pop(0)
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"apt-cacher-ng not listening on {pending[0]}:{self.port}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.pid and alive(self.pid, self.pid_start):
            os.kill(self.pid, signal.SIGTERM)
            if not wait_gone(self.pid, self.pid_start, 5, getattr(self, "_popen", None)):
                os.kill(self.pid, signal.SIGKILL)
                wait_gone(self.pid, self.pid_start, 5, getattr(self, "_popen", None))
        self.pid = self.pid_start = None
        self.addresses = []
