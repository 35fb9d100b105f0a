"""Stage 'weights', controller side without a fleet: the pure decisions (weights_plan), the
host-side Python bundle (hostbundle), and the read-only look the stage takes at a host (the
WeightsHostState script), run here against a real weights dir checked by the tool's zip
application (weights.pyz, built by glmfleet/weights/toolapp.py)."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from glmfleet.weights import hostbundle as hb  # noqa: E402
from glmfleet.weights import manifest as M  # noqa: E402
from glmfleet.weights import plan as P  # noqa: E402
from glmfleet.weights import toolapp as T  # noqa: E402

REV = "13b78e74ba3652cfbbcdc59ae70dbb2687403126"
PATHS = P.HostPaths("/opt/glm fleet", "/mnt/w/GLM")  # a space: quoting must hold


def sh(cmd: str, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", cmd], input=stdin, capture_output=True, text=True, cwd=cwd)


# ---- commands --------------------------------------------------------------------------------

def test_download_command_names_the_token_file_never_the_token():
    cmd = P.job_command("download", PATHS, pylib="/opt/x/pylib/abc", endpoint="http://10.0.0.1:9",
                        token_file=PATHS.token_file, downloads=4)
    assert cmd.startswith("env PYTHONPATH=/opt/x/pylib/abc HF_HUB_DISABLE_XET=1 python3 ")
    assert "'/opt/glm fleet/bin/weights.pyz' download --dir /mnt/w/GLM --detach --downloads 4" in cmd
    assert "--endpoint http://10.0.0.1:9" in cmd
    assert "--token-file '/opt/glm fleet/secrets/hf-token'" in cmd
    anonymous = P.job_command("download", PATHS, xet=True)
    assert "--token-file" not in anonymous and "HF_HUB_DISABLE_XET" not in anonymous
    assert "--rehash" in P.job_command("verify", PATHS, rehash=True)
    assert "PYTHONPATH" not in P.job_command("verify", PATHS, pylib="/x")


def test_token_file_is_private_from_the_first_byte(tmp_path):
    paths = P.HostPaths(str(tmp_path / "tool"), "/w")
    os.umask(0o022)
    r = sh(P.token_write_command(paths), stdin="hf_secret\n")
    assert r.returncode == 0, r.stderr
    token = Path(paths.token_file)
    assert token.read_text() == "hf_secret\n"
    assert token.stat().st_mode & 0o777 == 0o600
    assert Path(paths.secrets).stat().st_mode & 0o777 == 0o700
    assert "hf_secret" not in P.token_write_command(paths)
    assert sh(P.token_remove_command(paths)).returncode == 0 and not token.exists()


def test_exit_code_travels_in_the_output():
    r = sh(P.with_rc("""echo '{"a": 1}'; sh -c 'exit 3'"""))
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert P.parse_rc(lines) == 3 and P.last_json(lines) == {"a": 1}
    assert P.parse_rc(["no marker"]) is None
    assert P.last_json(["banner", "{broken", '{"x": 2}', "trailing text"]) == {"x": 2}
    assert P.last_json(["[1, 2]"]) is None


def _tarball(path: Path, files: dict) -> None:
    with open(path, "wb") as f:
        hb.write_tarball(f, [(k, v.encode()) for k, v in files.items()])


def test_bundle_install_swaps_in_a_tested_dir_and_prunes(tmp_path):
    paths = P.HostPaths(str(tmp_path / "tool"), "/w")
    Path(paths.pylib, "olddigest").mkdir(parents=True)
    upload = f"{paths.pylib}/.new1.tar.gz"
    _tarball(Path(upload), {"fakepkg/__init__.py": "VALUE = 7\n"})
    r = sh(P.bundle_install_command(paths, "new1", upload, "import fakepkg", False, prune=True))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(paths.pylib)) == ["new1"]
    assert Path(paths.bundle_dir("new1"), "fakepkg", "__init__.py").exists()


def test_bundle_that_does_not_import_is_refused_and_left_nowhere(tmp_path):
    paths = P.HostPaths(str(tmp_path / "tool"), "/w")
    Path(paths.pylib, "keep").mkdir(parents=True)
    upload = f"{paths.pylib}/.bad.tar.gz"
    _tarball(Path(upload), {"fakepkg/__init__.py": "raise ImportError('needs python 9')\n"})
    r = sh(P.bundle_install_command(paths, "bad", upload, "import fakepkg", False, prune=True))
    assert r.returncode == 1
    assert "glmfleet: the Python packages shipped from the controller" in r.stderr
    assert "needs python 9" in r.stderr
    assert os.listdir(paths.pylib) == ["keep"]  # nothing half-installed, nothing pruned


# ---- the stat-only verdict -------------------------------------------------------------------

def _look(**kw) -> dict:
    base = {"python": "3.11.2", "verified_revision": REV, "manifest_sha256": "m",
            "job": {"running": False}, "check_error": None,
            "check": {"files": 9, "missing": 0, "corrupt": 0, "to_hash": 0, "structure": 0,
                      "indexes_unchecked": 0, "ok_paths": []}}
    base.update(kw)
    return base


@pytest.mark.parametrize("change, verdict, why", [
    ({}, True, "stat-only check of 9 files, 0 hashed"),
    ({"python": None}, False, "python3 is missing"),
    ({"job": {"running": True, "lock_pid": 42}}, False, "running (pid 42)"),
    ({"verified_revision": None}, False, "not verified yet"),
    ({"verified_revision": "a" * 40}, False, "another revision (aaaaaaaaaaaa)"),
    ({"manifest_sha256": "other"}, False, "manifest on the host is not this run's"),
    ({"check_error": "ValueError: x"}, False, "stat-only check failed"),
    ({"check": None}, False, "no stat-only check"),
])
def test_quick_verdict(change, verdict, why):
    ok, text = P.quick_verdict(_look(**change), REV, "m")
    assert ok is verdict and why in text


def test_quick_verdict_names_what_changed():
    check = dict(_look()["check"], missing=1, to_hash=2)
    ok, text = P.quick_verdict(_look(check=check), REV, "m")
    assert not ok and "1 missing" in text and "2 changed since they were hashed" in text


# ---- fan-out -----------------------------------------------------------------------------

def test_seed_and_source():
    order = ["a", "b", "c"]
    assert P.pick_seed(order, set(), set()) == "a"
    assert P.pick_seed(order, {"c"}, set()) is None  # a verified host will serve
    assert P.pick_seed(order, set(), {"b"}) is None  # a running download will finish
    assert P.pick_seed([], set(), set()) is None
    assert P.pick_source(order, {"c", "b"}) == "b"
    assert P.pick_source(order, set()) is None


def test_push_plan_copies_only_what_each_receiver_lacks_largest_first():
    files = [{"path": "small.json", "size": 10}, {"path": "big.safetensors", "size": 100},
             {"path": "mid.safetensors", "size": 50}]
    todo = P.push_plan(files, {"b": {"big.safetensors"}, "c": set()})
    assert [(e["path"], names) for e, names in todo] == [
        ("big.safetensors", ["c"]), ("mid.safetensors", ["b", "c"]), ("small.json", ["b", "c"])]
    assert P.push_plan(files, {"b": {f["path"] for f in files}}) == []


# ---- texts ---------------------------------------------------------------------------------

def test_progress_and_outcome_texts():
    st = {"phase": "download", "bytes_done": 1_200_000_000, "bytes_total": 4_800_000_000,
          "rate_bytes_per_s": 110_000_000, "eta_s": 190, "current_files": ["a", "b"]}
    assert P.progress_line(st) == ("download: 1.2 GB of 4.8 GB (25%), 110.0 MB/s, ETA 3m 10s, "
                                   "2 file(s) in flight")
    assert P.progress_line({"phase": "verify", "bytes_done": 0, "bytes_total": 0}) == \
        "verifying: 0 B of 0 B"
    assert P.human_duration(7322) == "2h 02m" and P.human_duration(5) == "5s"
    assert "stopped before finishing" in P.job_failure({"stale": True, "pid": 9})
    assert P.job_failure({"error": "not enough disk space"}) == "not enough disk space"
    assert P.job_failure({"result": {"summary": "NOT verified"}}) == "NOT verified"
    assert P.job_succeeded({"phase": "done", "exit_code": 0})
    assert not P.job_succeeded({"phase": "done", "exit_code": 1})
    assert P.start_refusal(2, {"error": "token file is empty"}, "") == "token file is empty"
    assert P.start_refusal(5, None, "boom\nlast line") == "weights.pyz exited with code 5: last line"
    detail = P.pass_detail("verified", 4_194_719, 10, "host-a", 61)
    assert "fetched from the Hub: 4.2 MB (4194719 B)" in detail
    assert "copied from host-a over SSH via the controller: 10 B (10 B)" in detail
    assert detail.endswith("in 1m 01s")


def test_fleet_progress_line_sums_the_hosts_bytes_in_flight():
    a = {"running": True, "phase": "download", "command": "download", "bytes_done": 1_000_000_000,
         "bytes_total": 4_000_000_000, "rate_bytes_per_s": 100_000_000, "eta_s": 30}
    b = dict(a, bytes_done=500_000_000, rate_bytes_per_s=50_000_000, eta_s=70)
    done = {"running": False, "phase": "done", "exit_code": 0, "command": "download",
            "bytes_done": 123, "bytes_total": 4_000_000_000}
    assert P.fleet_progress_line({"a": a, "b": b, "c": done}) == (
        "download: 5.5 GB of 12.0 GB (46%), 150.0 MB/s, ETA 1m 10s, 2 of 3 host(s) running")
    checking = dict(b, phase="check", eta_s=None)  # hashing what is there: no download rate yet
    assert P.fleet_progress_line({"a": a, "b": checking}) == (
        "download: 1.5 GB of 8.0 GB (19%), 100.0 MB/s, ETA 30s, 2 of 2 host(s) running")
    assert P.fleet_progress_line({"a": a}) is None  # one host: its own line says it all
    assert P.fleet_progress_line({"c": done, "d": dict(done)}) is None  # nothing runs


# ---- the read-only look (WeightsHostState's script) --------------------------------------------

def _scan(d: Path) -> list:
    out = []
    for p in sorted(x for x in d.rglob("*") if x.is_file() and ".glmfleet" not in x.parts):
        data = p.read_bytes()
        lfs = p.name.endswith(".safetensors")
        out.append({"path": p.relative_to(d).as_posix(), "size": len(data), "lfs": lfs,
                    "sha256": hashlib.sha256(data).hexdigest() if lfs else None,
                    "git_sha1": None if lfs else
                    hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()})
    return out


@pytest.fixture
def host_like(tmp_path):
    """A tool dir and a weights dir verified by the real weights.pyz, as a host has them."""
    from testbed.doubles.hub import DEFAULT_REPO_ID, make_checkpoint

    tool, wd = tmp_path / "tool", tmp_path / "weights"
    (tool / "bin").mkdir(parents=True)
    (tool / "bin" / "weights.pyz").write_bytes(T.build(directory=tmp_path / "cache").data)
    make_checkpoint(wd, shards=2, shard_bytes=64 * 1024, seed=1)
    manifest = M.build_manifest(DEFAULT_REPO_ID, REV, _scan(wd))
    (wd / ".glmfleet").mkdir()
    text = M.dumps(manifest)
    (wd / ".glmfleet" / "manifest.json").write_text(text)
    r = subprocess.run([sys.executable, str(tool / "bin" / "weights.pyz"), "verify", "--dir", str(wd)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return tool, wd, hashlib.sha256(text.encode()).hexdigest()


def _run_look(tool: Path, wd: Path) -> dict:
    # weights_plan, not the pyinfra fact class: importing pyinfra's CLI package would
    # monkey-patch this whole test process with gevent.
    r = subprocess.run(["sh", "-c", P.look_command(str(tool), str(wd))], capture_output=True,
                       text=True)
    return P.parse_look(r.stdout.splitlines())


def _tree(*dirs: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for d in dirs for p in d.rglob("*")}


def test_look_is_read_only_and_sees_verified_weights(host_like):
    tool, wd, msha = host_like
    before = _tree(tool, wd)
    look = _run_look(tool, wd)
    assert _tree(tool, wd) == before  # no file written, not even __pycache__
    ok, why = P.quick_verdict(look, REV, msha)
    assert ok, (why, look)
    assert look["check"]["files"] == len(look["check"]["ok_paths"])
    assert look["tool_sha256"] == hashlib.sha256((tool / "bin" / "weights.pyz").read_bytes()).hexdigest()
    assert look["bundles"] == [] and look["token_file"] is False
    # what picks the shipped wheels, as the host's python3 reports it
    target = hb.Target.from_facts(look)
    assert (target.python, target.machine) == (look["python"], platform.machine())
    assert target.glibc == platform.libc_ver()[1] and target.implementation == "cpython"


def test_look_sees_a_touched_shard_and_a_missing_file(host_like):
    tool, wd, msha = host_like
    shard = next(wd.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes())  # same bytes, new mtime: must be hashed again
    (wd / "config.json").unlink()
    look = _run_look(tool, wd)
    ok, why = P.quick_verdict(look, REV, msha)
    assert not ok and "1 missing" in why and "1 changed since they were hashed" in why
    assert shard.name not in look["check"]["ok_paths"]


def test_look_without_the_tool_or_python(tmp_path):
    look = _run_look(tmp_path / "none", tmp_path / "none")
    assert look["tool_sha256"] is None and look["check"] is None
    assert not P.quick_verdict(look, REV, "x")[0]
    assert P.parse_look(["garbage"])["python"] is None
