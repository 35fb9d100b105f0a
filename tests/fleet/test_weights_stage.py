"""Stage 'weights' against the simulated fleet: real SSH, real pyinfra, real huggingface_hub
on the hosts (shipped from the controller: the hosts have no PyPI), real detached jobs.
The Hub is the TEST DOUBLE (testbed/doubles/hub), one instance per host bound to that
host's gateway (the only controller address a host can reach), all serving one small
checkpoint; the NVML double lets preflight pass. Each deploy file in tmp_path includes
tasks/preflight.py then tasks/weights.py, like deploy.py does.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from glmfleet.weights.hostside.common import human_bytes
from testbed import rootfs
from testbed.doubles import nvml
from testbed.doubles.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, HubDouble, make_checkpoint

REPO = Path(__file__).resolve().parents[2]
SHARDS = [f"model-0000{i}-of-00004.safetensors" for i in (1, 2, 3, 4)]
TOKEN = "hf_fleetTEST_secret_token_5f3a9c0e1d"
WDIR = "/mnt/llm_models/GLM-5.2-NVFP4-REAP-469B"  # the default weights_dir
LOGIN_TRACES = ("var/log/", f"home/{rootfs.LOGIN_USER}")  # a sudo login's own writes
DEPLOY = ("from pyinfra import host, local, state\n"
          "from glmfleet import runctx\n"
          "local.include('tasks/preflight.py')\n"
          "if runctx.passed_preflight(state, host):\n"
          "    local.include('tasks/weights.py')\n")


# ---- helpers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub") / "repo"
    manifest = make_checkpoint(root, shards=4, shard_bytes=1 << 20, seed=6)
    return root, {f["path"]: f for f in manifest["files"]}


class Hubs:
    """One Hub double per host, bound to the host's gateway, all over the same files."""

    def __init__(self, root, **kw):
        self.root, self.kw, self.by_host = root, kw, {}

    def add(self, h) -> str:
        d = HubDouble(self.root, repo_id=DEFAULT_REPO_ID, revision=DEFAULT_REVISION,
                      host=h.gateway, port=0, **self.kw).start()
        self.by_host[h.name] = d
        return d.url

    def files(self, name=None) -> dict:
        """Per file: GETs and body bytes, summed over the doubles (or one host's)."""
        out: dict = {}
        for n, d in self.by_host.items():
            if name and n != name:
                continue
            for path, st in d.stats()["files"].items():
                agg = out.setdefault(path, {"get": 0, "bytes": 0, "complete": 0, "truncated": 0})
                for k in agg:
                    agg[k] += st.get(k, 0)
        return out

    def reset(self) -> None:
        for d in self.by_host.values():
            d.reset_stats()
            d.clear_faults()

    def stop(self) -> None:
        for d in self.by_host.values():
            d.stop()


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("secret") / "hf-token"
    p.write_text(TOKEN + "\n")
    p.chmod(0o600)
    return p


def new_host(fleet, name, **kw):
    fleet.add_host(name, files=nvml.host_files("rtx6000x4"), shm_size="32g", **kw)
    fleet.start(name)
    return fleet[name]


def host_data(hubs, h, token_file, **extra):
    data = {"model_revision": DEFAULT_REVISION, "hf_endpoint": hubs.add(h),
            "hf_token_file": str(token_file), "weights_progress_interval_s": 1}
    data.update(extra)
    return data


def pyinfra(pyinfra_cli, inventory, work: Path, *args, background=False, yes=True):
    deploy = work / "deploy_weights.py"
    deploy.write_text(DEPLOY)
    argv = [pyinfra_cli, str(inventory), str(deploy), *(["-y"] if yes else []), "--data",
            f"preflight_report={work / 'preflight.json'}", *args]
    if background:
        return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout + p.stderr


def state_dir(h, wdir=WDIR) -> Path:
    return h.root / wdir.lstrip("/") / ".glmfleet"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def verified(h, wdir=WDIR) -> str | None:
    p = state_dir(h, wdir) / "VERIFIED"
    return p.read_text().strip() if p.exists() else None


def summary_line(out: str, host: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith(f"[{host}] weights: ")]
    assert lines, f"no weights result for {host}:\n{out[-3000:]}"
    return lines[-1]


def wait_for(predicate, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def cached_shards(h) -> set:
    try:
        doc = read_json(state_dir(h) / "hash-cache.json")
    except (OSError, ValueError):
        return set()
    return {p for p in doc.get("files", {}) if p in SHARDS}


# ---- a fleet of three, downloaded once ------------------------------------------------------

@pytest.fixture(scope="module")
def trio(fleet, ckpt, token_file, pyinfra_cli, tmp_path_factory):
    """Three hosts; the Hub demands TOKEN and sends bodies slowly (the deploy polls several
    times while the downloads run); one shard's body is cut once in transit for w-a."""
    work = tmp_path_factory.mktemp("trio")
    names = ["w-a", "w-b", "w-c"]
    hubs = Hubs(ckpt[0], token=TOKEN, auth_failure="invalid")
    try:
        hosts = {n: new_host(fleet, n) for n in names}
        data = {n: host_data(hubs, hosts[n], token_file) for n in names}
        inventory = fleet.write_inventory(work / "inv.py", hosts=names, host_data=data)
        for d in hubs.by_host.values():
            d.set_faults(slow_bytes_per_s=250_000)  # ~4 s per shard
        hubs.by_host["w-a"].set_faults(truncate_after={SHARDS[2]: 300_000}, truncate_once=True)
        t0 = time.monotonic()
        rc, out = pyinfra(pyinfra_cli, inventory, work, "-vvv")  # -vvv: every command and output
        yield {"rc": rc, "out": out, "hosts": hosts, "hubs": hubs, "inventory": inventory,
               "work": work, "files": hubs.files(), "per_host": {n: hubs.files(n) for n in names},
               "seconds": time.monotonic() - t0}
    finally:
        hubs.stop()
        for n in names:
            if n in fleet.hosts:
                fleet.remove(n)


def test_full_download_and_verify_on_three_hosts(trio, ckpt):
    assert trio["rc"] == 0, trio["out"][-5000:]
    files = ckpt[1]
    total = sum(f["size"] for f in files.values())
    for name, h in trio["hosts"].items():
        assert verified(h) == DEFAULT_REVISION
        v = read_json(state_dir(h) / "verify.json")
        assert v["ok"] and v["files_total"] == len(files) and not v["missing"] and not v["corrupt"]
        st = read_json(state_dir(h) / "state.json")
        assert st["command"] == "download" and st["phase"] == "done"
        assert st["fetched_bytes"] == total  # every byte came from the Hub once
        assert "fetched from the Hub: " in summary_line(trio["out"], name)
        assert f"({total} B)" in summary_line(trio["out"], name)
        # each host's own double served each file exactly once, completely
        per = trio["per_host"][name]
        assert set(per) == set(files)
        for path, f in files.items():
            assert per[path]["complete"] == 1, (name, path, per[path])
    # the shard cut in transit on w-a was fetched again and still verified
    assert trio["per_host"]["w-a"][SHARDS[2]]["truncated"] == 1
    assert "Fleet summary" in trio["out"]


def test_progress_per_host_and_for_the_fleet(trio, ckpt):
    """While the downloads ran, the deploy logged each host's bytes, rate and ETA and a total
    line for the fleet (three hosts' bytes, partial files included)."""
    assert trio["rc"] == 0
    out = trio["out"]
    total = sum(f["size"] for f in ckpt[1].values())
    lines = out.splitlines()
    for name in trio["hosts"]:
        assert [ln for ln in lines if name in ln and "weights: download: " in ln
                and f" of {human_bytes(total)} (" in ln], name
    fleet = [ln for ln in lines if "[fleet] weights: download: " in ln]
    for k in (1, 2, 3):  # a line covers the hosts polled so far: their bytes add up
        for ln in fleet:
            if f" of {k} host(s) running" in ln:
                assert f" of {human_bytes(k * total)} (" in ln, ln
    assert [ln for ln in fleet if " of 3 host(s) running" in ln], out[-3000:]


def test_tool_runs_on_the_host_from_its_zip_application(trio):
    """The deploy shipped one file; over SSH the host's python3 runs it, nothing else needed."""
    assert trio["rc"] == 0
    h = trio["hosts"]["w-a"]
    assert sorted(p.name for p in (h.root / "opt/glmfleet/bin").iterdir()) == ["weights.pyz"]
    p = subprocess.run(h.ssh_argv("python3 /opt/glmfleet/bin/weights.pyz --help"),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: weights.pyz") and "{verify,download,serve,status}" in p.stdout


def test_token_never_leaks(trio):
    """The Hub demanded the token, so it reached the jobs; yet it is in no output (-vvv),
    no log and no file on any host (the token file lives only while a job starts)."""
    assert trio["rc"] == 0
    assert TOKEN not in trio["out"]
    for h in trio["hosts"].values():
        upper = Path(h.dir) / "upper"
        for p in upper.rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert TOKEN.encode() not in p.read_bytes(), f"token found in {p}"
        secrets = h.root / "opt/glmfleet/secrets"
        assert secrets.stat().st_mode & 0o777 == 0o700
        assert list(secrets.iterdir()) == []


def test_second_run_changes_nothing_downloads_nothing_hashes_nothing(trio, pyinfra_cli):
    assert trio["rc"] == 0
    hubs = trio["hubs"]
    hubs.reset()
    before = {n: {f: (state_dir(h) / f).stat().st_mtime_ns for f in ("verify.json", "hash-cache.json",
                                                                    "VERIFIED", "state.json")}
              for n, h in trio["hosts"].items()}
    rc, out = pyinfra(pyinfra_cli, trio["inventory"], trio["work"])
    assert rc == 0, out[-4000:]
    assert hubs.files() == {}  # not one file request
    rows = [line for line in out.splitlines() if line.strip().startswith("tasks/weights.py |")]
    assert rows, f"no weights operation in pyinfra's results table:\n{out[-3000:]}"
    for line in rows:
        cols = line.split()
        assert cols[-2:] == ["-", "-"] or cols[-3] == "-", line  # no Success, no Error
    assert "Grand total" in out
    for n, h in trio["hosts"].items():
        after = {f: (state_dir(h) / f).stat().st_mtime_ns for f in before[n]}
        assert after == before[n], n  # verify.json untouched: nothing was verified again
        assert read_json(state_dir(h) / "verify.json")["hashed_files"] == 0
        line = summary_line(out, n)
        assert "0 hashed" in line and "fetched from the Hub: 0 B" in line


def test_flipped_byte_and_truncated_file_fetch_only_those(trio, pyinfra_cli):
    assert trio["rc"] == 0
    h, hubs = trio["hosts"]["w-c"], trio["hubs"]
    wdir = h.root / WDIR.lstrip("/")
    flipped, cut = wdir / SHARDS[1], wdir / SHARDS[3]
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    with open(cut, "r+b") as f:
        f.truncate(1000)
    hubs.reset()
    rc, out = pyinfra(pyinfra_cli, trio["inventory"], trio["work"])
    assert rc == 0, out[-4000:]
    assert set(hubs.files()) == {SHARDS[1], SHARDS[3]}
    assert all(st["complete"] == 1 for st in hubs.files().values())
    st = read_json(state_dir(h) / "state.json")
    assert st["fetched_files"] == 2
    assert verified(h) == DEFAULT_REVISION
    assert "fetched from the Hub: 0 B" in summary_line(out, "w-a")


def test_bit_rot_found_only_with_rehash(trio, pyinfra_cli):
    """A flipped byte that keeps size, mtime and inode (bit rot) passes the stat-only look;
    weights_rehash=true reads every byte, finds it and fetches that one shard."""
    assert trio["rc"] == 0
    h, hubs = trio["hosts"]["w-b"], trio["hubs"]
    shard = h.root / WDIR.lstrip("/") / SHARDS[0]
    st = shard.stat()
    with open(shard, "r+b") as f:
        f.seek(st.st_size - 10)
        b = f.read(1)
        f.seek(st.st_size - 10)
        f.write(bytes([b[0] ^ 0x80]))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    hubs.reset()
    rc, out = pyinfra(pyinfra_cli, trio["inventory"], trio["work"], "--limit", "w-b")
    assert rc == 0 and hubs.files() == {}, out[-3000:]
    rc, out = pyinfra(pyinfra_cli, trio["inventory"], trio["work"], "--limit", "w-b",
                      "--data", "weights_rehash=true")
    assert rc == 0, out[-4000:]
    assert set(hubs.files()) == {SHARDS[0]}
    assert verified(h) == DEFAULT_REVISION


def test_fanout_fetches_from_the_hub_once_for_the_fleet(trio, pyinfra_cli, ckpt):
    """Same three hosts, a fresh weights dir: one host fetches, the others get copies over
    SSH through the controller (the relay: weights_fanout_via=controller; host to host is
    tests/fleet/test_weights_p2p.py) and hash every file themselves."""
    assert trio["rc"] == 0
    hubs, work = trio["hubs"], trio["work"]
    hubs.reset()
    wdir = "/srv/fanout/GLM"
    args = ("--data", "weights_fanout=true", "--data", "weights_fanout_via=controller",
            "--data", f"weights_dir={wdir}")
    rc, out = pyinfra(pyinfra_cli, trio["inventory"], work, *args)
    assert rc == 0, out[-5000:]
    files = ckpt[1]
    served = hubs.files()
    assert set(served) == set(files)
    for path, f in files.items():
        assert served[path]["get"] == 1 and served[path]["bytes"] == f["size"], path
    total = sum(f["size"] for f in files.values())
    fetched = {}
    for n, h in trio["hosts"].items():
        assert verified(h, wdir) == DEFAULT_REVISION
        line = summary_line(out, n)
        fetched[n] = int(line.split("fetched from the Hub: ")[1].split("(")[1].split(" B)")[0])
        if fetched[n] == 0:  # a receiver: every copied file was hashed on the host
            assert "copied from w-a over SSH via the controller: " in line and f"({total} B)" in line
            v = read_json(state_dir(h, wdir) / "verify.json")
            assert v["ok"] and v["hashed_files"] == len(files)
    assert fetched == {"w-a": total, "w-b": 0, "w-c": 0}
    hubs.reset()
    rc, out = pyinfra(pyinfra_cli, trio["inventory"], work, *args)
    assert rc == 0 and hubs.files() == {}, out[-3000:]


# ---- the shipped Python packages, per host Python -------------------------------------------

# Host kinds: (add_host keywords, the python3 minor version the kind has).
HOST_KINDS = [
    pytest.param({}, "3.11", id="debian12-py3.11"),
    pytest.param({"suite": "trixie"}, "3.13", id="debian13-py3.13"),
]


@pytest.mark.parametrize("kind, python", HOST_KINDS)
def test_packages_resolved_for_the_host_python_with_xet(fleet, ckpt, token_file, pyinfra_cli,
                                                        tmp_path, kind, python):
    """The controller picks wheels for the host's own python3 (not its own Python) and ships
    hf_xet with them, so Xet is on (no HF_HUB_DISABLE_XET). The Hub double serves no Xet
    (no X-Xet headers), so the client takes its plain HTTP path: every file is one complete
    GET on the double."""
    name = "w-py" + python.replace(".", "")
    hubs = Hubs(ckpt[0], token=TOKEN)
    h = new_host(fleet, name, **kind)
    try:
        inventory = fleet.write_inventory(tmp_path / "inv.py", hosts=[name],
                                          host_data={name: host_data(hubs, h, token_file)})
        rc, out = pyinfra(pyinfra_cli, inventory, tmp_path, "-vvv")  # -vvv: the commands
        assert rc == 0, out[-5000:]
        assert verified(h) == DEFAULT_REVISION
        assert "with hf_xet: Xet transfers on" in out
        starts = [ln for ln in out.splitlines() if " download " in ln and "--detach" in ln]
        assert starts and not any("HF_HUB_DISABLE_XET" in ln for ln in starts), starts
        assert all(st["complete"] == 1 for st in hubs.files().values())
        # on the host: hf_xet imports from the shipped packages with the host's own python3
        bundles = [d for d in (h.root / "opt/glmfleet/pylib").iterdir() if not d.name.startswith(".")]
        assert len(bundles) == 1
        meta = read_json(bundles[0] / "glmfleet-bundle.json")
        assert meta["xet"] is True and meta["target"].startswith("cp" + python.replace(".", ""))
        pylib = "/" + str(bundles[0].relative_to(h.root))
        r = h.exec(f"env PYTHONPATH={pylib} python3 -c 'import sys, hf_xet, huggingface_hub; "
                   "print(\"%d.%d\" % sys.version_info[:2], hf_xet.__file__, huggingface_hub.__file__)'")
        version, xet_file, hub_file = r.stdout.split()
        assert version == python
        assert xet_file.startswith(pylib + "/") and hub_file.startswith(pylib + "/")
        # Requires-Python of every shipped distribution admits the host's python3
        pyfull = h.exec("python3 -c 'import platform; print(platform.python_version())'").stdout.strip()
        for dist_info in bundles[0].glob("*.dist-info"):
            requires = next((ln.split(":", 1)[1].strip() for ln in
                             (dist_info / "METADATA").read_text().splitlines()
                             if ln.startswith("Requires-Python:")), "")
            assert SpecifierSet(requires).contains(pyfull), (dist_info.name, requires)
    finally:
        hubs.stop()
        fleet.remove(name)


# ---- one host each ----------------------------------------------------------------------

def test_download_survives_the_controller_resumes_after_a_kill(fleet, ckpt, token_file,
                                                              pyinfra_cli, tmp_path):
    """The controller dies mid-download: the job goes on; the next run attaches to it (with
    progress). The job is then killed: that run fails clearly, and the one after fetches
    only what was not finished."""
    hubs = Hubs(ckpt[0], token=TOKEN)
    h = new_host(fleet, "w-kill")
    try:
        data = host_data(hubs, h, token_file, weights_parallel_downloads=1)
        inventory = fleet.write_inventory(tmp_path / "inv.py", hosts=["w-kill"],
                                          host_data={"w-kill": data})
        hubs.by_host["w-kill"].set_faults(slow_bytes_per_s=250_000)  # ~4 s per shard
        first = pyinfra(pyinfra_cli, inventory, tmp_path, background=True)
        try:
            wait_for(lambda: len(cached_shards(h)) >= 1, what="a first finished shard")
        finally:
            first.kill()  # the controller goes away mid-download
            first.communicate()
        job = read_json(state_dir(h) / "state.json")
        assert job["phase"] == "download"
        h.exec(f"kill -0 {int(job['pid'])}")  # the detached job is still at it

        rc, out = pyinfra(pyinfra_cli, inventory, tmp_path, "--data", "weights_wait_timeout_s=1")
        assert rc != 0 and "attaching to it" in out
        assert "weights: download: " in out and " of 4.3 MB (" in out  # a progress line
        assert "still running after 1s (weights_wait_timeout_s)" in summary_line(out, "w-kill")
        h.exec(f"kill -0 {int(job['pid'])}")  # not waiting is not stopping

        second = pyinfra(pyinfra_cli, inventory, tmp_path, background=True)
        try:
            # the deploy polls `weights.pyz status` once it has attached (we only look)
            wait_for(lambda: "weights.pyz status" in h.exec("ps -e -o args=").stdout,
                     what="the second deploy attaching")
            pid = int(read_json(state_dir(h) / "state.json")["pid"])
            assert pid == int(job["pid"])  # attached to the same job, did not start another
            h.exec(f"kill -9 {pid}")
            out = "".join(second.communicate(timeout=120))
        finally:
            if second.poll() is None:
                second.kill()
        assert second.returncode != 0, out[-6000:]
        assert "attaching to it" in out
        assert "stopped before finishing" in summary_line(out, "w-kill")
        assert verified(h) is None

        done = cached_shards(h)
        hubs.reset()
        rc, out = pyinfra(pyinfra_cli, inventory, tmp_path)
        assert rc == 0, out[-4000:]
        served = hubs.files()
        assert not (done & set(served)), f"re-fetched finished shards {done & set(served)}"
        assert set(SHARDS) - done <= set(served)
        assert verified(h) == DEFAULT_REVISION
    finally:
        hubs.stop()
        fleet.remove("w-kill")


def test_full_disk_is_caught_by_preflight_old_files_do_not_count(fleet, ckpt, token_file, pyinfra_cli,
                                                                 tmp_path):
    """An 8 MB disk holding 5 MB of an older checkpoint: those bytes are not this revision's
    files, so preflight counts none of them as present, sees that the download does not fit
    and drops the host before anything is fetched; nothing is marked verified."""
    hubs = Hubs(ckpt[0], token=TOKEN)
    h = new_host(fleet, "w-full", hostfs_size="8m")
    wdir = "/mnt/w/GLM"
    try:
        h.exec(f"mkdir -p {wdir} && head -c 5000000 /dev/zero > {wdir}/old-model.safetensors")
        data = host_data(hubs, h, token_file, weights_dir=wdir, disk_margin_gib=0)
        inventory = fleet.write_inventory(tmp_path / "inv.py", hosts=["w-full"],
                                          host_data={"w-full": data})
        rc, out = pyinfra(pyinfra_cli, inventory, tmp_path)
        assert rc == 1
        disk = next(ln for ln in out.splitlines() if ln.strip().startswith("[FAIL] disk:"))
        assert "0.0 GiB of the revision's files present in full" in disk and wdir in disk
        assert "every host of this run failed" in out and "Traceback" not in out
        assert verified(h, wdir) is None
        assert hubs.files() == {}  # nothing fetched
    finally:
        hubs.stop()
        fleet.remove("w-full")


def test_wrong_token_and_unknown_revision_clear_errors(fleet, ckpt, pyinfra_cli, tmp_path):
    """Caught before anything changes: preflight reads the manifest with the same token and
    revision (and drops the host with the reason)."""
    hubs = Hubs(ckpt[0], token=TOKEN, auth_failure="invalid")
    wrong = tmp_path / "wrong-token"
    wrong.write_text("hf_not_the_right_one_0000\n")
    right = tmp_path / "right-token"
    right.write_text(TOKEN + "\n")
    unknown = "0123456789abcdef0123456789abcdef01234567"
    try:
        hs = {"w-tok": new_host(fleet, "w-tok"), "w-rev": new_host(fleet, "w-rev")}
        data = {"w-tok": host_data(hubs, hs["w-tok"], wrong),
                "w-rev": host_data(hubs, hs["w-rev"], right, model_revision=unknown)}
        inventory = fleet.write_inventory(tmp_path / "inv.py", hosts=list(hs), host_data=data)
        rc, out = pyinfra(pyinfra_cli, inventory, tmp_path)
        assert rc != 0
        assert "refused the token (HTTP 401)" in out and "check hf_token_file" in out
        assert f"revision {unknown} of {DEFAULT_REPO_ID} does not exist" in out
        assert "check model_revision" in out
        for h in hs.values():
            assert not (h.root / "opt/glmfleet").exists()
            assert not (h.root / WDIR.lstrip("/")).exists()
        assert hubs.files() == {}
    finally:
        hubs.stop()
        for n in ("w-tok", "w-rev"):
            if n in fleet.hosts:
                fleet.remove(n)


def test_dry_run_starts_and_writes_nothing(fleet, ckpt, token_file, pyinfra_cli, tmp_path):
    hubs = Hubs(ckpt[0], token=TOKEN)
    h = new_host(fleet, "w-dry")
    upper = Path(h.dir) / "upper"

    def snapshot():
        # left out: what logging in with sudo writes by itself (the journal, sudo's
        # ~/.sudo_as_admin_successful), not the deploy
        files = sorted(f"{p.relative_to(upper)}:{p.stat().st_mtime_ns}"
                       for p in upper.rglob("*") if not p.is_symlink()
                       and not p.relative_to(upper).as_posix().startswith(LOGIN_TRACES))
        procs = h.exec("exec ps -e -o pid=,comm=").stdout.split("\n")
        return files, sorted(p for p in procs if p.strip() and " ps" not in p)

    try:
        inventory = fleet.write_inventory(tmp_path / "inv.py", hosts=["w-dry"],
                                          host_data={"w-dry": host_data(hubs, h, token_file)})
        before = snapshot()
        # no -y: pyinfra runs every operation's planning (our facts) to show what would change
        rc, out = pyinfra(pyinfra_cli, inventory, tmp_path, "--dry", yes=False)
        assert rc == 0, out[-3000:]
        assert "WeightsHostState" in out or "Weights: download and verify" in out, out[-3000:]
        assert snapshot() == before
        assert hubs.files() == {}
    finally:
        hubs.stop()
        fleet.remove("w-dry")
