"""A private image registry for the simulated fleet: Debian's `docker-registry` (the real
distribution registry v2), over TLS with a certificate from a throwaway test CA, as private
registries are run. The registry is real; what it serves is the serving-image TEST DOUBLE.

    reg = Registry(workdir)                    # a test CA and an empty storage dir
    addr = reg.listen_on(host.gateway)         # "10.213.0.1:PORT": a registry process there
    reg.trust(host, addr)                      # /etc/docker/certs.d/<addr>/ca.crt in the host
    reg.push(addr, "glmfleet/serving", "1", serving_image.tarball(), env={...})
    image = f"{addr}/glmfleet/serving:1"       # what the deploy pulls (settings' image)
    reg.stop()

One process per address (a host reaches only its own gateway address), all serving one
storage directory; a push through any of them is pulled through every one. The image is
pushed through the registry's HTTP API (blob uploads, then the manifest), one gzip layer
holding the tarball: what `docker import` + `docker push` would give.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from testbed.rootfs import alive, start_time, wait_gone

REGISTRY = "docker-registry"  # Debian package docker-registry (distribution 2.8)
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class RegistryError(RuntimeError):
    pass


def _openssl(*args, cwd: Path) -> None:
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if p.returncode:
        raise RegistryError(f"openssl {' '.join(args[:2])}: {p.stderr.strip()[-500:]}")


class Registry:
    def __init__(self, workdir: str | os.PathLike, access_log: bool = False):
        if not shutil.which(REGISTRY):
            raise RegistryError(f"{REGISTRY} is not installed: run testbed/setup.sh as root")
        self.dir = Path(workdir)
        self.storage = self.dir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, tuple[subprocess.Popen, int | None]] = {}
        self.access_log = access_log  # one line per request in registry-<ip>.log (counting fetches)
        self.ca = self.dir / "ca.crt"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-days", "2", "-subj", "/CN=glmfleet testbed registry CA (TEST ONLY)",
                 "-keyout", "ca.key", "-out", "ca.crt", cwd=self.dir)

    def _leaf(self, ip: str) -> tuple[Path, Path]:
        """A server certificate for ``ip`` signed by the test CA."""
        name = f"leaf-{ip}"
        (self.dir / f"{name}.ext").write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-subj", f"/CN={ip}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=self.dir)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
                 cwd=self.dir)
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"

    def listen_on(self, ip: str) -> str:
        """Start a registry process on ``ip`` (a free port); returns "ip:port"."""
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        addr = f"{ip}:{port}"
        crt, key = self._leaf(ip)
        config = self.dir / f"config-{ip}.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": not self.access_log}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}},
            "http": {"addr": addr, "tls": {"certificate": str(crt), "key": str(key)}}}))
        log = open(self.dir / f"registry-{ip}.log", "ab")
        p = subprocess.Popen([REGISTRY, "serve", str(config)], stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[addr] = (p, start_time(p.pid))
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection((ip, port), timeout=1):
                    return addr
            except OSError:
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RegistryError(f"the registry on {addr} did not start: "
                                        + (self.dir / f"registry-{ip}.log").read_text()[-1000:])
                time.sleep(0.05)

    def trust(self, host, addr: str) -> None:
        """Make ``host``'s Docker trust the test CA for ``addr`` (as for any private registry)."""
        d = host.root / "etc/docker/certs.d" / addr
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.ca, d / "ca.crt")

    def _request(self, method: str, url: str, data: bytes | None = None,
                 headers: dict | None = None):
        ctx = ssl.create_default_context(cafile=str(self.ca))
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        return urllib.request.urlopen(req, context=ctx, timeout=300)

    def _blob(self, addr: str, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        try:
            self._request("HEAD", f"https://{addr}/v2/{repo}/blobs/{digest}")
            return digest  # already there
        except urllib.error.HTTPError:
            pass
        with self._request("POST", f"https://{addr}/v2/{repo}/blobs/uploads/") as r:
            location = r.headers["Location"]
        sep = "&" if "?" in location else "?"
        if location.startswith("/"):
            location = f"https://{addr}{location}"
        self._request("PUT", f"{location}{sep}digest={digest}", data,
                      {"Content-Type": "application/octet-stream"}).close()
        return digest

    def push(self, addr: str, repo: str, tag: str, tar_path: str | os.PathLike,
             env: dict[str, str] | None = None) -> str:
        """Push a rootfs tarball as a one-layer image ``repo:tag``; returns the manifest digest."""
        raw = Path(tar_path).read_bytes()
        layer = gzip.compress(raw, compresslevel=1, mtime=0)
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": [f"{k}={v}" for k, v in (env or {}).items()]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
            "history": [{"created_by": "glmfleet testbed: serving-image TEST DOUBLE"}]},
            sort_keys=True).encode()
        layer_digest = self._blob(addr, repo, layer)
        config_digest = self._blob(addr, repo, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": config_digest},
            "layers": [{"mediaType": LAYER_TYPE, "size": len(layer), "digest": layer_digest}]}).encode()
        self._request("PUT", f"https://{addr}/v2/{repo}/manifests/{tag}", manifest,
                      {"Content-Type": MANIFEST_TYPE}).close()
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def blob_fetches(self, ip: str) -> dict[str, int]:
        """Blob digest -> how many times the process on ``ip`` served it (needs access_log)."""
        counts: dict[str, int] = {}
        log = self.dir / f"registry-{ip}.log"
        for line in log.read_text().splitlines() if log.exists() else []:
            m = re.search(r'"GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64}) HTTP/[0-9.]+" 200 ', line)
            if m:
                counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        return counts

    def stop(self) -> None:
        for addr, (p, started) in list(self.procs.items()):
            if alive(p.pid, started):
                os.kill(p.pid, signal.SIGTERM)
                if not wait_gone(p.pid, started, 10, p):
                    os.kill(p.pid, signal.SIGKILL)
                    wait_gone(p.pid, started, 5, p)
            del self.procs[addr]


class Uplink:
    """A TCP relay that limits each connection to ``bytes_per_s`` downstream: the site's link
    to Docker Hub, in front of a registry standing in for it (bytes pass through untouched, TLS
    included, so the registry's certificate still matches ``ip``)."""

    def __init__(self, ip: str, target: str, bytes_per_s: int):
        import threading

        self.target = target.rsplit(":", 1)
        self.rate = bytes_per_s
        self.sock = socket.create_server((ip, 0))
        self.addr = f"{ip}:{self.sock.getsockname()[1]}"
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self.stopping.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((self.target[0], int(self.target[1])), timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self._pipe, args=(client, server, 0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, self.rate), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: int) -> None:
        chunk = max(1024, rate // 20) if rate else 65536
        try:
            while not self.stopping.is_set():
                data = src.recv(chunk)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def stop(self) -> None:
        self.stopping.set()
        self.sock.close()
