"""Stage 'weights', host to host (weights_fanout, weights_fanout_via="peers"), on four
simulated hosts that reach each other on the fleet's site network (testbed/sitenet.py):
real SSH, pyinfra, apt (aria2 from the distribution, through the fleet's apt proxy), aria2,
the host-side tool's server; the Hub is the TEST DOUBLE, one instance for the whole fleet
with one rate shared by all its connections (the site's uplink), reached by each host at
its own gateway. Host-to-host traffic is not throttled.

pyinfra runs under tests/fleet/sshbytes.py, which counts every byte on its SSH connections
per host: what the controller carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glmfleet.weights import hostbundle
from testbed.doubles import nvml
from testbed.doubles.hub import DEFAULT_REVISION, HubDouble, make_checkpoint

REPO = Path(__file__).resolve().parents[2]
NAMES = ["p-a", "p-b", "p-c", "p-d"]
SHARDS = [f"model-0000{i}-of-00004.safetensors" for i in (1, 2, 3, 4)]
SHARD_BYTES = 6 << 20  # each shard is bigger than anything the controller uploads on purpose
UPLINK = 4 << 20  # the Hub's one shared rate: ~6 s for the whole checkpoint
TOKEN = "hf_p2pTEST_secret_token_77c1e0a9d2"
DEPLOY = ("from pyinfra import host, local, state\n"
          "from glmfleet import runctx\n"
          "local.include('tasks/preflight.py')\n"
          "if runctx.passed_preflight(state, host):\n"
          "    local.include('tasks/weights.py')\n")
WDIR = "/srv/p2p/GLM"


def sdir(h, wdir=WDIR) -> Path:
    return h.root / wdir.lstrip("/") / ".glmfleet"


def verified(h, wdir=WDIR) -> str | None:
    p = sdir(h, wdir) / "VERIFIED"
    return p.read_text().strip() if p.exists() else None


def summary_line(out: str, host: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith((f"[{host}] weights: PASS: ",
                                                             f"[{host}] weights: FAIL: "))]
    assert lines, f"no weights result for {host}:\n{out[-3000:]}"
    return lines[-1]


def wait_for(predicate, timeout=120.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Site:
    """The four hosts, the one Hub double, an inventory, and pyinfra runs with SSH bytes."""

    def __init__(self, fleet, work: Path, ckpt: Path, token_file: Path):
        self.fleet, self.work = fleet, work
        self.hub = HubDouble(ckpt, token=TOKEN, host="0.0.0.0", port=0).start()
        self.hosts = {}
        for n in NAMES:
            fleet.add_host(n, files=nvml.host_files("rtx6000x4"), shm_size="32g", site=True)
        fleet.start(*NAMES)
        self.hosts = {n: fleet[n] for n in NAMES}
        data = {n: {"model_revision": DEFAULT_REVISION,
                    "hf_endpoint": f"http://{h.gateway}:{self.hub.port}",
                    "hf_token_file": str(token_file), "weights_progress_interval_s": 1,
                    "weights_fanout": True,
                    "site_address": h.site_address} for n, h in self.hosts.items()}
        self.inventory = fleet.write_inventory(work / "inv.py", hosts=NAMES, host_data=data)
        (work / "deploy_weights.py").write_text(DEPLOY)

    def pyinfra(self, *args, wdir=WDIR, background=False):
        """(rc, output, {host: {"sent", "received"}}) of one run into weights dir `wdir`;
        background: the Popen."""
        counts = self.work / "ssh-bytes.json"
        counts.unlink(missing_ok=True)
        argv = [sys.executable, str(REPO / "tests/fleet/sshbytes.py"), str(counts),
                str(self.inventory), str(self.work / "deploy_weights.py"), "-y", "--data",
                f"preflight_report={self.work / 'preflight.json'}", "--data", f"weights_dir={wdir}",
                *args]
        if background:
            return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, text=True)
        try:
            out = p.communicate(timeout=600)[0]
        except subprocess.TimeoutExpired:
            raise AssertionError(self.hung(p)) from None
        return p.returncode, out, self.ssh_bytes()

    def hung(self, p: subprocess.Popen) -> str:
        """What a run that did not end was doing: each host's processes and weights log,
        the apt proxy's log, then the end of pyinfra's output with its stacks (sshbytes.py
        dumps them on SIGUSR1). The whole output is kept in hung-run.log."""
        p.send_signal(signal.SIGUSR1)
        time.sleep(3)
        p.kill()
        out = p.communicate()[0]
        (self.work / "hung-run.log").write_text(out)
        parts = ["pyinfra did not end in 600 s"]
        for n, h in self.hosts.items():
            ps = h.exec("ps -eo pid,ppid,etime,args", check=False).stdout
            logs = " ".join(str(d / ".glmfleet/weights.log") for d in h.root.glob("srv/*/GLM"))
            tail = subprocess.run(f"tail -n 30 {logs} /dev/null", shell=True,
                                  capture_output=True, text=True).stdout
            parts.append(f"--- {n}: processes\n{ps}\n--- {n}: weights logs\n{tail}")
        if self.fleet.proxy:
            parts.append("--- the apt proxy's log\n" + subprocess.run(
                f"tail -n 40 {self.fleet.proxy.dir}/log/*", shell=True, capture_output=True,
                text=True).stdout)
        parts.append(f"--- pyinfra's output (all of it: {self.work / 'hung-run.log'}), its end:\n"
                     + out[-30000:])
        return "\n".join(parts)

    def ssh_bytes(self) -> dict:
        raw = json.loads((self.work / "ssh-bytes.json").read_text())
        return {n: raw.get(h.address, {"sent": 0, "received": 0}) for n, h in self.hosts.items()}

    def served(self) -> dict:
        return self.hub.stats()["files"]

    def stop(self) -> None:
        self.hub.stop()
        for n in NAMES:
            if n in self.fleet.hosts:
                self.fleet.remove(n)


@pytest.fixture(scope="module")
def site(fleet, tmp_path_factory):
    base = tmp_path_factory.mktemp("p2p")
    ckpt = base / "repo"
    manifest = make_checkpoint(ckpt, shards=4, shard_bytes=SHARD_BYTES, seed=11)
    token_file = base / "hf-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    s = Site(fleet, base, ckpt, token_file)
    s.files = {f["path"]: f for f in manifest["files"]}
    s.total = sum(f["size"] for f in manifest["files"])
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def first(site):
    """The first deploy on four bare hosts, the Hub's uplink throttled."""
    site.hub.set_faults(uplink_bytes_per_s=UPLINK)
    rc, out, ssh = site.pyinfra("-vvv")  # -vvv: every command and its output, for the token check
    site.hub.clear_faults()
    return {"rc": rc, "out": out, "ssh": ssh, "served": site.served()}


def uploads(h) -> int:
    """What the deploy uploads to a host on purpose: the tool, the manifest and the Python
    packages for a Hub download (the bundle archive from the controller's cache)."""
    tool = (h.root / "opt/glmfleet/bin/weights.pyz").stat().st_size
    manifest = (sdir(h) / "manifest.json").stat().st_size
    digests = [d.name for d in (h.root / "opt/glmfleet/pylib").iterdir() if not d.name.startswith(".")]
    archives = {hashlib.sha256(p.read_bytes()).hexdigest()[:16]: p.stat().st_size
                for p in hostbundle.cache_dir().glob("*.tar.gz")}  # named by sha256[:16] on the host
    return tool + manifest + sum(archives[d] for d in digests)


def test_hub_serves_each_file_once_and_the_controller_carries_no_weight_bytes(site, first):
    assert first["rc"] == 0, first["out"][-6000:]
    for n, h in site.hosts.items():
        assert verified(h) == DEFAULT_REVISION, n
    served = first["served"]
    assert set(served) == set(site.files)
    for path, f in site.files.items():
        assert served[path]["get"] == 1 and served[path]["bytes"] == f["size"], (path, served[path])
    # Over SSH, each host got what the deploy uploads on purpose and commands, nothing more:
    # any one shard (6 MB) relayed through the controller would show here.
    for n, h in site.hosts.items():
        extra = first["ssh"][n]["sent"] - uploads(h)
        assert extra < 2 << 20, (n, first["ssh"][n], uploads(h))
        assert first["ssh"][n]["received"] < 2 << 20, (n, first["ssh"][n])


def test_each_finished_host_serves_the_next_ones(site, first):
    """p-a (first in the inventory) fetched from the Hub; one host from p-a; then the other
    two from both at once (the sources double; nobody is left to serve after them). The
    rounds overlapped: p-a served files while its own download was still running. Every
    receiver hashed what it got; the servers stopped when the exchange ended."""
    out = first["out"]
    log = (sdir(site.hosts["p-a"]) / "weights.log").read_text().splitlines()
    end = next(i for i, ln in enumerate(log) if "download finished with exit code 0" in ln)
    assert any('serve: ' in ln and '"GET /' in ln for ln in log[:end]), "\n".join(log[-60:])
    assert f"fetched from the Hub: {site.total / 1e6:.1f} MB ({site.total} B)" in summary_line(out, "p-a")
    lines = {n: summary_line(out, n) for n in NAMES[1:]}
    second = [n for n, ln in lines.items() if "from 1 host(s) of the site (p-a): " in ln]
    assert len(second) == 1, lines
    for n, line in lines.items():
        assert "fetched from the Hub: 0 B (0 B)" in line and f"({site.total} B)" in line, line
        if n not in second:
            assert f"from 2 host(s) of the site ({', '.join(sorted(['p-a', second[0]]))}): " in line \
                or f"from 2 host(s) of the site (p-a, {second[0]}): " in line, line
    for n in NAMES[1:]:
        h = site.hosts[n]
        st = json.loads((sdir(h) / "state.json").read_text())
        assert st["peer_bytes"] == site.total and st["fetched_bytes"] == 0
        cache = json.loads((sdir(h) / "hash-cache.json").read_text())["files"]
        assert set(cache) == set(site.files)  # each file hashed on the receiver
    for n, h in site.hosts.items():
        assert not (sdir(h) / "serve.json").exists(), n
        ps = h.exec("ps -e -o args=").stdout
        assert "weights.pyz serve" not in ps, (n, ps)
        assert h.exec("command -v aria2c", check=False).returncode == 0, n  # from apt
    for n in ("p-a", second[0]):
        assert ("fan-out: serving the verified weights to the other hosts at "
                f"http://{site.hosts[n].site_address}:7480") in out, n
    assert out.count("fan-out: stopped serving the weights") == 2


def test_progress_per_host_and_for_the_fleet(site, first):
    lines = first["out"].splitlines()
    hub = [ln for ln in lines if "[p-a]" in ln and "weights: download: " in ln]
    assert hub and all("from the Hub" in ln for ln in hub), hub
    assert any("ETA " in ln and "/s" in ln for ln in hub), hub


def test_no_token_leaks(site, first):
    """Neither the HF token nor the run's peer token is in the output (-vvv), a process
    list or a file left on a host."""
    assert TOKEN not in first["out"]
    for h in site.hosts.values():
        secrets = h.root / "opt/glmfleet/secrets"
        assert list(secrets.iterdir()) == []
        upper = Path(h.dir) / "upper"
        for p in upper.rglob("*"):
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 1 << 20:
                assert TOKEN.encode() not in p.read_bytes(), p


def test_second_run_fetches_nothing_and_serves_nothing(site, first):
    assert first["rc"] == 0
    site.hub.reset_stats()
    rc, out, _ = site.pyinfra()
    assert rc == 0, out[-4000:]
    assert site.served() == {}
    assert "serving the verified weights" not in out
    for n in NAMES:
        assert "fetched from the Hub: 0 B (0 B)" in summary_line(out, n)


def _two_sources(site, wdir: str) -> None:
    """p-a and p-b verified in a fresh weights dir (p-a from the Hub, p-b from p-a)."""
    rc, out, _ = site.pyinfra("--limit", "p-a", "--limit", "p-b", wdir=wdir)
    assert rc == 0, out[-4000:]
    for n in ("p-a", "p-b"):
        assert verified(site.hosts[n], wdir) == DEFAULT_REVISION, out[-4000:]
    site.hub.reset_stats()


def test_a_bad_copy_on_a_source_is_caught_and_fetched_from_another(site, first):
    """p-b's copy of one shard rots after it was verified (same size, mtime and inode, so
    it still serves). p-c and p-d fetch that shard from p-a and p-b at once: the receiver's
    own check catches it, and the shard comes from one source alone."""
    assert first["rc"] == 0
    wdir = "/srv/p2p-bad/GLM"
    _two_sources(site, wdir)
    shard = site.hosts["p-b"].root / wdir.lstrip("/") / SHARDS[1]
    st = shard.stat()
    data = bytearray(shard.read_bytes())
    for off in range(5, len(data), 1 << 20):  # any piece p-b sends holds a bad byte
        data[off] ^= 0xFF
    with open(shard, "r+b") as f:
        f.write(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    rc, out, _ = site.pyinfra(wdir=wdir)
    assert rc == 0, out[-5000:]
    assert site.served() == {}  # nothing from the Hub
    caught = []
    for n in ("p-c", "p-d"):
        h = site.hosts[n]
        assert verified(h, wdir) == DEFAULT_REVISION
        log = (sdir(h, wdir) / "weights.log").read_text()
        if f"peers: {SHARDS[1]} from " in log:
            caught.append(n)
            assert "the manifest says" in log  # the receiver's own check
            assert "round 2: 1 of 1 file(s) fetched and verified" in log or \
                   "round 3: 1 of 1 file(s) fetched and verified" in log, log[-3000:]
    assert caught, "neither receiver fetched a piece of the bad copy"


def test_a_source_that_dies_mid_transfer_does_not_fail_the_receivers(site, first):
    """Both sources' site links are slowed (tc in their namespaces: p-b's to 1 MB/s, p-a's to
    4 MB/s), so the exchange takes seconds; p-b's server is killed as soon as it serves a
    receiver: aria2 takes those pieces from p-a and both receivers verify, with nothing from
    the Hub."""
    assert first["rc"] == 0
    wdir = "/srv/p2p-dies/GLM"
    _two_sources(site, wdir)
    b = site.hosts["p-b"]
    shaped = {"p-a": "32mbit", "p-b": "8mbit"}
    for n, rate in shaped.items():
        subprocess.run(["ip", "netns", "exec", site.hosts[n].netns, "tc", "qdisc", "add", "dev",
                        "eth1", "root", "tbf", "rate", rate, "burst", "64kb", "latency", "2s"],
                       check=True)
    try:
        run = site.pyinfra(wdir=wdir, background=True)
        try:
            log = sdir(b, wdir) / "weights.log"
            others = {site.hosts[n].site_address for n in ("p-c", "p-d")}
            wait_for(lambda: log.exists() and any(f"serve: {a} " in log.read_text() for a in others),
                     what="p-b serving a receiver")
            pid = json.loads((sdir(b, wdir) / "serve.json").read_text())["pid"]
            b.exec(f"kill -9 {int(pid)}")
            out = run.communicate(timeout=300)[0]
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
    finally:
        for n in shaped:
            subprocess.run(["ip", "netns", "exec", site.hosts[n].netns, "tc", "qdisc", "del",
                            "dev", "eth1", "root"], check=False)
    assert run.returncode == 0, out[-5000:]
    assert site.served() == {}
    # progress while they fetched: per host, with its sources, and the fleet's total
    lines = out.splitlines()
    assert [ln for ln in lines if ("p-c" in ln or "p-d" in ln) and "weights: download: " in ln
            and "from 2 host(s)" in ln], out[-4000:]
    assert [ln for ln in lines if "[fleet] weights: download: " in ln and "from other hosts" in ln], \
        out[-4000:]
    for n in ("p-c", "p-d"):
        assert verified(site.hosts[n], wdir) == DEFAULT_REVISION, n
        assert "fetched from the Hub: 0 B (0 B)" in summary_line(out, n)
