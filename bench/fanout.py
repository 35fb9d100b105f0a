"""Benchmark: getting one checkpoint onto N hosts, three ways, N = 1, 2, 4, 8, in one run.

    .venv/bin/python bench/fanout.py [--hosts 1,2,4,8] [--shards 32] [--shard-mb 2]
                                     [--uplink-mbs 16] [--controller-mbs 16] [--keep]

A simulated host is a weights dir on this machine with the host-side tool run as a host
runs it (its zip application, `weights.pyz ...` processes). The Hub is the TEST DOUBLE on
127.0.0.1 with one rate shared by all its connections (the site's uplink, --uplink-mbs).

(a) hub:        every host downloads from the Hub at once (`weights.pyz download`).
(b) controller: one host downloads from the Hub, then the controller relays the files to
                the others with the relay's own code (glmfleet.weights.ops._copy_file: each
                file read once, written to every receiver) over a link of --controller-mbs
                (full duplex: a throttle on its reads, another on its writes), and
                each receiver hashes what it got (`weights.pyz verify`).
(c) peers:      as the deploy does it: the hosts in rounds (glmfleet.weights.plan.peer_rounds:
                the seed from the Hub, each round from all hosts of the earlier ones, so the
                sources double); every source serves (`weights.pyz serve` on 127.0.0.x) each
                file once verified, and all hosts fetch at once (`weights.pyz download
                --peer ...`, aria2), each file as soon as their sources hold it.
                Host-to-host goes over loopback, unthrottled (a site's LAN is usually many
                times its uplink), but every simulated host shares this machine's cores
                (each receiver runs aria2 and hashes every byte): on a small machine the
                host-to-host part is CPU-bound here, where real hosts each have cores of
                their own. So (c) is pessimistic on few cores; a slower --uplink-mbs shows
                the ratio of a site whose LAN is further ahead of its uplink.

Printed per N and way: wall time and bytes per link (the Hub's uplink from the double's
counters, the controller's link counted by the relay, host to host from the hosts' own
state: peer_bytes). Ratios last; the baseline is (a) at N = 1 in the same run: one host
from the Hub. Goal (issue 15): at N = 8, (c) within 1.5x of that and at least 3x faster
than (a).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glmfleet.weights import manifest as M  # noqa: E402
from glmfleet.weights import ops, plan, toolapp  # noqa: E402
from glmfleet.weights.hostside.common import human_bytes  # noqa: E402
from testbed.doubles.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, HubDouble, make_checkpoint  # noqa: E402

PORT_BASE = 17480


class Link:
    """One rate shared by everything that crosses it (the controller's link)."""

    def __init__(self, rate: float):
        self.rate, self.next, self.bytes = rate, 0.0, 0
        self.lock = threading.Lock()

    def cross(self, n: int) -> None:
        with self.lock:
            self.bytes += n
            now = time.monotonic()
            self.next = max(now, self.next) + n / self.rate
            wait = self.next - now
        if wait > 0:
            time.sleep(wait)


class LocalFile:
    """The part of paramiko's SFTPFile that the relay uses, on a local file, through a Link
    (reads through the link's way in, writes through its way out)."""

    def __init__(self, path: str, mode: str, link: Link):
        self.f, self.link = open(path, mode), link

    def readv(self, chunks):
        out = []
        for off, n in chunks:
            self.f.seek(off)
            data = self.f.read(n)
            self.link.cross(len(data))
            out.append(data)
        return out

    def write(self, data):
        self.link.cross(len(data))
        self.f.write(data)

    def set_pipelined(self, _on=True):
        pass

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalSFTP:
    def __init__(self, link: Link):
        self.link = link

    def open(self, path, mode):
        return LocalFile(path, mode, self.link)


class Bench:
    def __init__(self, work: Path, args):
        self.work, self.args = work, args
        self.tool = toolapp.build(directory=work / "tool").path
        self.repo = work / "repo"
        make_checkpoint(self.repo, shards=args.shards, shard_bytes=args.shard_mb << 20, seed=5)
        self.hub = HubDouble(self.repo).start()
        self.manifest = M.fetch_manifest(DEFAULT_REPO_ID, DEFAULT_REVISION, endpoint=self.hub.url)
        self.size = sum(f["size"] for f in self.manifest["files"])
        self.mfile = work / "manifest.json"
        self.mfile.write_text(M.dumps(self.manifest))
        self.token = work / "peer-token"
        self.token.write_text(os.urandom(24).hex())
        self.token.chmod(0o600)

    # -- helpers ---------------------------------------------------------------------------
    def fresh(self, n: int) -> list[Path]:
        hosts = self.work / "hosts"
        shutil.rmtree(hosts, ignore_errors=True)
        dirs = [hosts / f"h{i}" for i in range(n)]
        for d in dirs:  # as the deploy leaves a host: the manifest in place, nothing else
            (d / ".glmfleet").mkdir(parents=True)
            shutil.copy(self.mfile, d / ".glmfleet" / "manifest.json")
        self.hub.reset_stats()
        self.hub.set_faults(uplink_bytes_per_s=self.args.uplink_mbs << 20)
        return dirs

    def pyz(self, *argv, background=False):
        cmd = [sys.executable, str(self.tool), *map(str, argv)]
        if background:
            return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"weights.pyz {argv[0]} failed: {(p.stdout + p.stderr)[-800:]}")
        return p

    def download(self, d: Path, peers=()):
        argv = ["download", "--dir", d, "--manifest", self.mfile, "--endpoint", self.hub.url]
        for u in peers:
            argv += ["--peer", u]
        if peers:
            argv += ["--peer-token-file", self.token]
        return argv

    def peer_bytes(self, dirs) -> int:
        return sum(json.loads((d / ".glmfleet/state.json").read_text()).get("peer_bytes") or 0
                   for d in dirs)

    def hub_bytes(self) -> int:
        return self.hub.stats()["bytes_served"]

    # -- the three ways ---------------------------------------------------------------------
    def way_hub(self, n: int) -> dict:
        dirs = self.fresh(n)
        t0 = time.perf_counter()
        procs = [self.pyz(*self.download(d), background=True) for d in dirs]
        for p in procs:
            if p.wait():
                raise SystemExit(f"download failed: {p.stderr.read()[-800:]}")
        return {"wall": time.perf_counter() - t0, "hub": self.hub_bytes(), "controller": 0, "lan": 0}

    def way_controller(self, n: int) -> dict:
        dirs = self.fresh(n)
        t0 = time.perf_counter()
        self.pyz(*self.download(dirs[0]))
        # full duplex: the source's bytes come in while the receivers' go out
        link_in, link_out = Link(self.args.controller_mbs << 20), Link(self.args.controller_mbs << 20)
        receivers = dirs[1:]
        if receivers:
            paths = {d: plan.HostPaths("/unused", str(d)) for d in dirs}
            for d in receivers:
                os.makedirs(paths[d].incoming, exist_ok=True)
            for entry, names in plan.push_plan(self.manifest["files"], {d: set() for d in receivers}):
                for d in names:
                    os.makedirs(os.path.dirname(paths[d].file(entry["path"])), exist_ok=True)

                def place(d, tmp, rel):
                    os.replace(tmp, paths[d].file(rel))
                    return True
                failed = ops._copy_file(LocalSFTP(link_in), paths[dirs[0]], entry,
                                        {d: (LocalSFTP(link_out), paths[d]) for d in names}, place)
                if failed:
                    raise SystemExit(f"relay failed for {failed}")
            procs = [self.pyz("verify", "--dir", d, "--manifest", self.mfile, background=True)
                     for d in receivers]
            for p in procs:
                if p.wait():
                    raise SystemExit(f"verify failed: {p.stderr.read()[-800:]}")
        return {"wall": time.perf_counter() - t0, "hub": self.hub_bytes(),
                "controller": link_in.bytes + link_out.bytes, "lan": 0}

    def way_peers(self, n: int) -> dict:
        dirs = self.fresh(n)
        servers = []
        rounds = plan.peer_rounds([], list(range(n)))
        t0 = time.perf_counter()
        try:
            # as the deploy's operation does on all its hosts at once: the servers start
            # together, then every host's fetch
            serving = sorted({i for srcs in rounds.values() for i in srcs})
            starts = {i: self.serve(dirs[i], i, background=True) for i in serving}
            urls = {i: start() for i, start in starts.items()}
            servers += [dirs[i] for i in serving]
            procs = {i: self.pyz(*self.download(dirs[i], [urls[j] for j in rounds[i]]),
                                 background=True) for i in range(n)}
            for i, p in procs.items():
                if p.wait():
                    raise SystemExit(f"download on host {i} failed: {p.stderr.read()[-800:]}")
            wall = time.perf_counter() - t0
        finally:
            for d in servers:
                self.pyz("serve", "--dir", d, "--stop")
        return {"wall": wall, "hub": self.hub_bytes(), "controller": 0, "lan": self.peer_bytes(dirs[1:])}

    def serve(self, d: Path, i: int, background=False):
        """Start host i's server; its URL, or with background a function that waits for the
        start and returns the URL."""
        address = f"127.0.0.{10 + i}"
        with socket.socket() as s:
            s.bind((address, 0))
            port = s.getsockname()[1]
        argv = ("serve", "--dir", d, "--bind", address, "--port", port, "--token-file",
                self.token, "--detach")
        url = plan.peer_url(address, port)
        if not background:
            self.pyz(*argv)
            return url
        p = self.pyz(*argv, background=True)

        def started():
            if p.wait():
                raise SystemExit(f"weights.pyz serve failed: {p.stderr.read()[-800:]}")
            return url
        return started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", default="1,2,4,8", help="host counts (default 1,2,4,8)")
    # The checkpoint's shape, scaled down: 313 GB comes as dozens of multi-GB shards, several
    # times more files than a host fetches at once (weights_parallel_downloads = 8), so a
    # file is verified, and can move on, long before the whole checkpoint is.
    ap.add_argument("--shards", type=int, default=32)
    ap.add_argument("--shard-mb", type=int, default=2)
    ap.add_argument("--uplink-mbs", type=int, default=16, help="the Hub's shared rate, MiB/s")
    ap.add_argument("--controller-mbs", type=int, default=16, help="the controller's link, MiB/s")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    if shutil.which("aria2c") is None:
        print("aria2c is needed for (c): apt-get install aria2", file=sys.stderr)
        return 2
    counts = [int(x) for x in args.hosts.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    bench = Bench(work, args)
    print(f"checkpoint {human_bytes(bench.size)} ({len(bench.manifest['files'])} files); Hub uplink "
          f"{args.uplink_mbs} MiB/s shared; controller link {args.controller_mbs} MiB/s; host to "
          f"host over loopback, unthrottled; {os.cpu_count()} CPU(s)")
    results: dict[tuple[str, int], dict] = {}
    try:
        for n in counts:
            for way, run in (("hub", bench.way_hub), ("controller", bench.way_controller),
                             ("peers", bench.way_peers)):
                r = run(n)
                results[(way, n)] = r
                print(f"N={n:<2} {way:<10} {r['wall']:7.2f} s   Hub uplink {human_bytes(r['hub']):>9}"
                      f"   controller link {human_bytes(r['controller']):>9}"
                      f"   host to host {human_bytes(r['lan']):>9}", flush=True)
    finally:
        bench.hub.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    base = results.get(("hub", 1))
    if base:
        print(f"\nbaseline: one host from the Hub (N=1, hub) {base['wall']:.2f} s")
        for n in counts:
            a, b, c = (results[(w, n)]["wall"] for w in ("hub", "controller", "peers"))
            print(f"N={n:<2} peers / one host {c / base['wall']:5.2f}x   hub / peers {a / c:5.2f}x   "
                  f"controller / peers {b / c:5.2f}x")
        top = max(counts)
        c, a = results[("peers", top)]["wall"], results[("hub", top)]["wall"]
        print(f"goal at N={top}: peers within 1.5x of one host: {c / base['wall']:.2f}x "
              f"({'met' if c / base['wall'] <= 1.5 else 'NOT met'}); peers >= 3x faster than "
              f"every host from the Hub: {a / c:.2f}x ({'met' if a / c >= 3 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
