"""Weights: manifest from the Hub, host-side verify/download/status (issue 6, host part).

The Hub is the TEST DOUBLE (testbed/doubles/hub) on 127.0.0.1, serving a small synthetic
checkpoint; everything else is real: huggingface_hub, the filesystem, fork/setsid, flock,
signals. The tool runs as the host runs it: its zip application, built here by the deploy's
own builder (glmfleet/weights/toolapp.py), in a separate `python weights.pyz ...` process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
SCRIPT: Path | None = None  # the zip application, built once for this module (fixture `tool`)

from testbed.doubles.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, HubDouble, make_checkpoint  # noqa: E402
from glmfleet.weights import manifest as M  # noqa: E402
from glmfleet.weights import toolapp as T  # noqa: E402
from glmfleet.weights.hostside import jobs as J  # noqa: E402
from glmfleet.weights.hostside import verify as V  # noqa: E402

SHARDS = [f"model-0000{i}-of-00004.safetensors" for i in (1, 2, 3, 4)]
SHARD_BYTES = 384 * 1024
TOKEN = "hf_TESTtoken_do_not_leak_0123456789"


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def tool(tmp_path_factory):
    global SCRIPT
    SCRIPT = T.build(directory=tmp_path_factory.mktemp("tool")).path
    return SCRIPT


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("hub") / "repo"
    double_manifest = make_checkpoint(d, shards=4, shard_bytes=SHARD_BYTES, seed=3)
    return d, double_manifest


@pytest.fixture(scope="module")
def hub_server(ckpt):
    with HubDouble(ckpt[0], page_size=3) as hub:  # small pages: the tree call must follow Link
        yield hub


@pytest.fixture
def hub(hub_server):
    hub_server.clear_faults()
    hub_server.reset_stats()
    return hub_server


@pytest.fixture(scope="module")
def manifest(hub_server):
    return M.fetch_manifest(DEFAULT_REPO_ID, DEFAULT_REVISION, endpoint=hub_server.url)


@pytest.fixture
def manifest_file(tmp_path, manifest):
    p = tmp_path / "manifest.json"
    p.write_text(M.dumps(manifest))
    return p


@pytest.fixture
def staged(tmp_path, ckpt, manifest_file):
    """A weights dir pre-staged by copying the repo (no download): for verify tests."""
    d = tmp_path / "weights"
    shutil.copytree(ckpt[0], d)
    return d


def env_for(url: str | None, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_DISABLE_UPDATE_CHECK="1", HF_HUB_DISABLE_TELEMETRY="1")
    if url:
        env["HF_ENDPOINT"] = url
    return env


class Run:
    def __init__(self, p: subprocess.CompletedProcess):
        self.code, self.stdout, self.stderr = p.returncode, p.stdout, p.stderr
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        self.json = json.loads(lines[-1]) if lines else {}


def weights(cmd: str, d: Path, *args, url=None, home=None, timeout=60, env_extra=None) -> Run:
    env = env_for(url, home or d.parent / "hf-home")
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, str(SCRIPT), cmd, "--dir", str(d), *map(str, args)],
                       env=env, capture_output=True, text=True, timeout=timeout)
    return Run(p)


def result(d: Path) -> dict:
    return json.loads((d / ".glmfleet" / "verify.json").read_text())


def marker(d: Path):
    p = d / ".glmfleet" / "VERIFIED"
    return p.read_text().strip() if p.exists() else None


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_gone(pid: int, timeout=20.0) -> None:
    wait_for(lambda: not J.pid_alive(pid) or _is_zombie(pid), timeout, f"pid {pid} to exit")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- manifest (controller side) ------------------------------------------------------------

def test_manifest_from_hub_equals_the_doubles_own(manifest, ckpt):
    own = {e["path"]: e for e in ckpt[1]["files"]}
    got = {e["path"]: e for e in manifest["files"]}
    assert set(got) == set(own)
    for path, e in own.items():
        assert got[path]["size"] == e["size"]
        assert got[path]["lfs"] == e["lfs"]
        if e["lfs"]:  # the Hub publishes sha256 for LFS files only ...
            assert got[path]["sha256"] == e["sha256"] and got[path]["git_sha1"] is None
        else:  # ... and the content's git blob sha1 for the others
            assert got[path]["git_sha1"] == e["git_sha1"] and got[path]["sha256"] is None
    assert manifest["total_size"] == ckpt[1]["total_size"]
    assert manifest["revision"] == DEFAULT_REVISION and manifest["repo"] == DEFAULT_REPO_ID
    assert M.loads(M.dumps(manifest)) == manifest
    assert M.dumps(manifest) == M.dumps(M.loads(M.dumps(manifest)))  # stable text


def test_branch_resolves_to_commit(hub):
    assert M.fetch_manifest(DEFAULT_REPO_ID, "main", endpoint=hub.url)["revision"] == DEFAULT_REVISION


def test_manifest_rejects_unsafe_or_incomplete_entries(manifest):
    for bad_path in ("../etc/passwd", "/abs", ".glmfleet/VERIFIED", ".cache/x", "a//b"):
        bad = json.loads(M.dumps(manifest))
        bad["files"][0]["path"] = bad_path
        with pytest.raises(M.ManifestError) as e:
            M.loads(json.dumps(bad))
        assert e.value.kind == "format" and "safe relative path" in str(e.value)
    bad = json.loads(M.dumps(manifest))
    bad["files"][0].update(sha256=None, git_sha1=None)
    with pytest.raises(M.ManifestError, match="neither sha256 nor git_sha1"):
        M.loads(json.dumps(bad))
    with pytest.raises(M.ManifestError, match="not JSON"):
        M.loads("{")


def test_diff_manifest(manifest):
    files = {f["path"]: f for f in manifest["files"]}
    shard, cfg = files[SHARDS[0]], files["config.json"]
    local = {p: {"size": f["size"], "sha256": f["sha256"], "git_sha1": f["git_sha1"]}
             for p, f in files.items()}
    local[SHARDS[1]]["sha256"] = "0" * 64                       # changed content
    local[SHARDS[2]] = {"size": 1}                              # truncated
    local[SHARDS[3]] = {"size": files[SHARDS[3]]["size"]}       # right size, never hashed
    del local["README.md"]                                      # missing
    local["stray.bin"] = {"size": 5}                            # extra
    diff = M.diff_manifest(manifest, local)
    assert diff["missing"] == ["README.md"]
    assert diff["extra"] == ["stray.bin"]
    assert diff["changed"] == sorted([SHARDS[1], SHARDS[2]])
    assert diff["unverified"] == [SHARDS[3]]
    assert shard["path"] in diff["ok"] and cfg["path"] in diff["ok"]


@pytest.mark.parametrize("auth_failure,kind", [("gated", "gated"), ("invalid", "auth")])
def test_manifest_wrong_token_is_a_clear_error(ckpt, auth_failure, kind):
    with HubDouble(ckpt[0], token=TOKEN, auth_failure=auth_failure) as hub:
        with pytest.raises(M.ManifestError) as e:
            M.fetch_manifest(DEFAULT_REPO_ID, DEFAULT_REVISION, endpoint=hub.url, token="hf_wrong")
        assert e.value.kind == kind
        assert "hf_token_file" in str(e.value) and TOKEN not in str(e.value)
        assert M.fetch_manifest(DEFAULT_REPO_ID, DEFAULT_REVISION, endpoint=hub.url, token=TOKEN)


def test_manifest_unknown_revision_repo_and_endpoint(hub, monkeypatch):
    with pytest.raises(M.ManifestError) as e:
        M.fetch_manifest(DEFAULT_REPO_ID, "f" * 40, endpoint=hub.url)
    assert e.value.kind == "revision" and "f" * 40 in str(e.value) and "model_revision" in str(e.value)
    with pytest.raises(M.ManifestError) as e:
        M.fetch_manifest("nobody/nothing", DEFAULT_REVISION, endpoint=hub.url)
    assert e.value.kind == "repo" and "model_repo" in str(e.value)
    # an unreachable endpoint fails on the first refused connection: no retries
    port, attempts = free_port(), []
    real_connect = socket.create_connection

    def counting(address, *args, **kwargs):
        attempts.append(address)
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting)
    with pytest.raises(M.ManifestError) as e:
        M.fetch_manifest(DEFAULT_REPO_ID, DEFAULT_REVISION, endpoint=f"http://127.0.0.1:{port}")
    assert e.value.kind == "network" and "hf_endpoint" in str(e.value)
    assert [a for a in attempts if a[1] == port] == [("127.0.0.1", port)], attempts


# ---- the zip application ------------------------------------------------------------------

def test_help_runs_from_the_zip_application(tmp_path):
    """One file, run by the host's python3 with nothing but the standard library."""
    r = subprocess.run(["python3", "-S", str(SCRIPT), "--help"], capture_output=True, text=True,
                       cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: weights.pyz") and "{verify,download,serve,status}" in r.stdout


def test_zip_application_is_deterministic_and_follows_its_sources(tmp_path):
    a, b = T.build(directory=tmp_path / "a"), T.build(directory=tmp_path / "b")
    assert a.data == b.data and a.sha256 == b.sha256 and a.path != b.path
    assert a.path.read_bytes() == a.data  # cached under its key
    with zipfile.ZipFile(a.path) as z:
        names = z.namelist()
    assert names == sorted(names) and "__main__.py" in names
    assert f"{T.APP_PACKAGE}/cli.py" in names and not [n for n in names if n.endswith(".pyc")]
    src = tmp_path / "src"
    shutil.copytree(T.SOURCE, src, ignore=shutil.ignore_patterns("__pycache__"))
    assert T.build(directory=tmp_path / "c", source=src).sha256 == a.sha256
    (src / "cli.py").write_text((src / "cli.py").read_text() + "# changed\n")
    assert T.build(directory=tmp_path / "c", source=src).sha256 != a.sha256


# ---- structure checks (pure) --------------------------------------------------------------

def _header(tensors: dict) -> bytes:
    return json.dumps(tensors).encode()


def test_safetensors_structure_rules():
    good = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]}}
    h = _header(good)
    assert V.safetensors_problems(8 + len(h) + 12, len(h), h) == []
    gap = dict(good, b={"dtype": "U8", "shape": [4], "data_offsets": [9, 13]})
    h2 = _header(gap)
    assert any("gap or overlap" in p for p in V.safetensors_problems(8 + len(h2) + 13, len(h2), h2))
    assert any("follow the header" in p for p in V.safetensors_problems(8 + len(h) + 20, len(h), h))
    assert "does not fit" in V.safetensors_problems(100, 10**6, None)[0]
    assert "not valid JSON" in V.safetensors_problems(8 + 3 + 0, 3, b"{x}")[0]
    wrong_size = dict(good, a={"dtype": "F32", "shape": [3], "data_offsets": [0, 8]})
    h3 = _header(wrong_size)
    assert any("expected 12" in p for p in V.safetensors_problems(8 + len(h3) + 12, len(h3), h3))
    assert V.absent_tensors(["a", "b"], h) == [] and V.absent_tensors(["a", "zz"], h) == ["zz"]


def test_index_structure_rules():
    idx = {"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}
    paths = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert V.index_problems(idx, "model.safetensors.index.json", paths) == []
    problems = V.index_problems(idx, "model.safetensors.index.json", {"model-00001-of-00002.safetensors"})
    assert "model-00002-of-00002.safetensors" in problems[0]
    assert V.index_problems({}, "model.safetensors.index.json", paths) == ["has no weight_map object"]
    shards = V.index_shards(idx, "sub/m.safetensors.index.json")  # names relative to the index
    assert shards["sub/model-00001-of-00002.safetensors"] == ["x"]


# ---- verify (host side, stdlib only) ------------------------------------------------------

def test_verify_passes_then_costs_only_stats(staged, manifest_file, manifest):
    r = weights("verify", staged, "--manifest", manifest_file)
    assert r.code == 0, r.stderr
    first = result(staged)
    assert first["ok"] and first["hashed_files"] == len(manifest["files"]) and first["cached_files"] == 0
    assert marker(staged) == DEFAULT_REVISION
    assert (staged / ".glmfleet" / "manifest.json").exists()  # kept next to the weights
    r = weights("verify", staged)  # manifest now taken from the state dir
    assert r.code == 0, r.stderr
    second = result(staged)
    assert second["ok"] and second["hashed_files"] == 0 and second["hashed_bytes"] == 0
    assert second["cached_files"] == len(manifest["files"])
    assert r.json["phase"] == "done" and r.json["exit_code"] == 0


def test_verify_flipped_byte_names_the_file_and_leaves_no_marker(staged, manifest_file):
    assert weights("verify", staged, "--manifest", manifest_file).code == 0
    flip_byte(staged / SHARDS[1], 5000)  # same size; mtime moves, so the cache is bypassed
    r = weights("verify", staged)
    assert r.code == 1
    res = result(staged)
    assert not res["ok"] and marker(staged) is None
    assert [c["path"] for c in res["corrupt"]] == [SHARDS[1]] and res["corrupt"][0]["reason"] == "sha256"
    assert res["hashed_files"] == 1  # only the changed file was read
    assert SHARDS[1] in r.stderr and SHARDS[1] in r.json["error"]


def test_verify_rehash_catches_rot_behind_an_unchanged_stat(staged, manifest_file):
    assert weights("verify", staged, "--manifest", manifest_file).code == 0
    shard = staged / SHARDS[0]
    st = shard.stat()
    flip_byte(shard, 10)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # silent corruption: same size and mtime
    assert weights("verify", staged).code == 0  # the documented limit of a stat cache
    r = weights("verify", staged, "--rehash")
    assert r.code == 1 and result(staged)["corrupt"][0]["path"] == SHARDS[0]


def test_verify_truncated_missing_and_extra(staged, manifest_file, manifest):
    with open(staged / SHARDS[2], "r+b") as f:
        f.truncate(1000)
    (staged / "README.md").unlink()
    (staged / "notes.txt").write_text("stray\n")
    r = weights("verify", staged, "--manifest", manifest_file)
    res = result(staged)
    assert r.code == 1 and marker(staged) is None
    assert res["missing"] == ["README.md"]
    size = {f["path"]: f["size"] for f in manifest["files"]}[SHARDS[2]]
    assert res["corrupt"] == [{"path": SHARDS[2], "reason": "size", "expected": size, "actual": 1000}]
    assert res["hashed_files"] < len(manifest["files"]) - 1  # a wrong size needs no hashing
    assert res["extra"] == ["notes.txt"]


def test_extra_files_fail_only_when_strict(staged, manifest_file):
    (staged / "sub").mkdir()
    (staged / "sub" / "extra.safetensors").write_bytes(b"x")
    assert weights("verify", staged, "--manifest", manifest_file).code == 0
    assert result(staged)["extra"] == ["sub/extra.safetensors"] and marker(staged) == DEFAULT_REVISION
    r = weights("verify", staged, "--strict-extra")
    assert r.code == 1 and marker(staged) is None and "extra" in r.json["error"]


def test_touched_identical_file_is_rehashed_and_passes(staged, manifest_file):
    assert weights("verify", staged, "--manifest", manifest_file).code == 0
    os.utime(staged / SHARDS[3], ns=(time.time_ns(), time.time_ns() + 10**9))
    r = weights("verify", staged)
    assert r.code == 0 and result(staged)["hashed_files"] == 1 and marker(staged) == DEFAULT_REVISION


def test_structurally_broken_shard_fails_even_with_matching_hash(tmp_path, ckpt):
    # A repo whose own shard is broken (a hole in the data offsets): the hash matches the
    # manifest, yet the weights must not be marked verified.
    d = tmp_path / "weights"
    shutil.copytree(ckpt[0], d)
    shard = d / SHARDS[0]
    raw = shard.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] -= 1
    blob = json.dumps(header, separators=(",", ":")).encode()
    assert len(blob) <= n
    blob = blob.ljust(n)  # same header length, so only the offsets are wrong
    shard.write_bytes(raw[:8] + blob + raw[8 + n:])
    mf = tmp_path / "m.json"
    mf.write_text(M.dumps(M.build_manifest(DEFAULT_REPO_ID, DEFAULT_REVISION, _scan(d))))
    r = weights("verify", d, "--manifest", mf)
    res = result(d)
    assert r.code == 1 and not res["corrupt"] and marker(d) is None
    assert res["structure"][0]["path"] == SHARDS[0]


@pytest.mark.parametrize("change", ["unknown tensor", "unknown shard"])
def test_index_inconsistent_with_shards_fails(tmp_path, ckpt, change):
    d = tmp_path / "weights"
    shutil.copytree(ckpt[0], d)
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    if change == "unknown tensor":
        index["weight_map"]["model.layers.0.not_in_any_shard.weight"] = SHARDS[0]
    else:
        index["weight_map"]["model.layers.0.input_layernorm.weight"] = "model-00009-of-00009.safetensors"
    index_path.write_text(json.dumps(index))
    mf = tmp_path / "m.json"
    mf.write_text(M.dumps(M.build_manifest(DEFAULT_REPO_ID, DEFAULT_REVISION, _scan(d))))
    r = weights("verify", d, "--manifest", mf)
    res = result(d)
    assert r.code == 1 and marker(d) is None and not res["corrupt"]
    assert [s["path"] for s in res["structure"]] == ["model.safetensors.index.json"]
    expect = "not_in_any_shard" if change == "unknown tensor" else "model-00009-of-00009.safetensors"
    assert expect in res["structure"][0]["problems"][0]


def _scan(d: Path) -> list:
    """Manifest entries for whatever is in d (for repos the double does not serve)."""
    out = []
    for p in sorted(x for x in d.rglob("*") if x.is_file()):
        data = p.read_bytes()
        lfs = p.name.endswith(".safetensors")
        out.append({"path": p.relative_to(d).as_posix(), "size": len(data), "lfs": lfs,
                    "sha256": hashlib.sha256(data).hexdigest() if lfs else None,
                    "git_sha1": None if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()})
    return out


# ---- download ------------------------------------------------------------------------------

def test_download_full_then_rerun_costs_nothing(tmp_path, hub, manifest_file, manifest):
    d = tmp_path / "weights"
    r = weights("download", d, "--manifest", manifest_file, url=hub.url)
    assert r.code == 0, r.stderr
    assert marker(d) == DEFAULT_REVISION and result(d)["ok"]
    stats = hub.stats()
    assert set(stats["files"]) == {f["path"] for f in manifest["files"]}
    assert all(s["complete"] == 1 and s["get"] == 1 for s in stats["files"].values())
    assert r.json["fetched_bytes"] == manifest["total_size"]
    assert r.json["fetched_files"] == len(manifest["files"])
    assert result(d)["hashed_files"] == 0  # each file was hashed once, right after its download
    hub.reset_stats()
    r = weights("download", d, url=hub.url)
    assert r.code == 0 and hub.stats()["requests"] == 0  # no Hub access at all ...
    assert result(d)["hashed_files"] == 0 and r.json["fetched_bytes"] == 0  # ... and no re-hash


def test_progress_counts_the_bytes_of_a_file_still_downloading(tmp_path):
    """Progress is bytes received, partial files included: while the first shard is still in
    transfer (nothing finished yet) the state already shows its bytes, a rate and an ETA, so a
    313 GB download never sits at 0 % while its multi-GB shards stream in."""
    repo = tmp_path / "repo"
    make_checkpoint(repo, shards=2, shard_bytes=4 << 20, seed=5)
    with HubDouble(repo) as hub:
        m = M.fetch_manifest(DEFAULT_REPO_ID, DEFAULT_REVISION, endpoint=hub.url)
        mf = tmp_path / "m.json"
        mf.write_text(M.dumps(m))
        hub.set_faults(slow_bytes_per_s=512 * 1024)  # a shard takes ~8 s
        d = tmp_path / "weights"
        r = weights("download", d, "--manifest", mf, "--downloads", 1, "--detach", url=hub.url)
        assert r.code == 0, r.stderr
        pid = r.json["pid"]
        try:
            def mid_file():
                st = weights("status", d).json
                finished = [f["path"] for f in m["files"] if (d / f["path"]).exists()]  # after: none then
                return st if st.get("phase") == "download" and st["bytes_done"] and not finished else None
            st = wait_for(mid_file, timeout=60, what="progress from a partial file")
        finally:
            os.kill(pid, signal.SIGTERM)
            wait_gone(pid)
    assert 0 < st["bytes_done"] < st["bytes_total"] == m["total_size"]
    assert st["rate_bytes_per_s"] > 0 and st["eta_s"] > 0
    assert len(st["current_files"]) == 1 and st["current_files"][0].endswith(".safetensors")


def test_killed_download_resumes_without_refetching_completed_files(tmp_path, hub, manifest_file, manifest):
    d = tmp_path / "weights"
    hub.set_faults(slow_bytes_per_s=1 << 20)  # ~0.4 s per shard
    r = weights("download", d, "--manifest", manifest_file, "--downloads", 1, "--detach", url=hub.url)
    assert r.code == 0 and r.json["status"] == "started", r.stderr
    pid = r.json["pid"]
    wait_for(lambda: sum((d / s).exists() for s in SHARDS) >= 2, what="two shards downloaded")
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    done_before = [f["path"] for f in manifest["files"] if (d / f["path"]).exists()]
    assert 2 <= len(done_before) < len(manifest["files"])
    st = weights("status", d).json
    assert st["running"] is False and st["stale"] is True and st["verified_revision"] is None
    hub.clear_faults()
    hub.reset_stats()
    r = weights("download", d, url=hub.url)
    assert r.code == 0, r.stderr
    assert marker(d) == DEFAULT_REVISION
    requested = set(hub.stats()["files"])
    assert not requested & set(done_before), "a completed file was fetched again"
    assert requested == {f["path"] for f in manifest["files"]} - set(done_before)
    assert not list((d / ".cache").rglob("*.incomplete"))  # the killed run's partial file is gone


def test_corrupted_shard_is_deleted_and_refetched_alone(tmp_path, hub, manifest_file):
    d = tmp_path / "weights"
    assert weights("download", d, "--manifest", manifest_file, url=hub.url).code == 0
    flip_byte(d / SHARDS[2], 12345)
    hub.reset_stats()
    r = weights("download", d, url=hub.url)
    assert r.code == 0, r.stderr
    files = hub.stats()["files"]
    assert list(files) == [SHARDS[2]] and files[SHARDS[2]]["get"] == 1
    assert r.json["fetched_files"] == 1 and marker(d) == DEFAULT_REVISION
    log = (d / ".glmfleet" / "weights.log").read_text()
    assert f"{SHARDS[2]}: sha256 mismatch; deleting it" in log


def test_hub_serving_bad_bytes_fails_clearly(tmp_path, hub, manifest_file):
    d = tmp_path / "weights"
    hub.set_faults(corrupt={SHARDS[0]: 100})  # every body of this shard has one flipped byte
    r = weights("download", d, "--manifest", manifest_file, "--attempts", 2, url=hub.url)
    assert r.code == 1 and marker(d) is None
    assert SHARDS[0] in r.json["error"] and "could not be fetched intact" in r.json["error"]
    assert hub.stats()["files"][SHARDS[0]]["get"] == 2
    assert not (d / SHARDS[0]).exists()  # the bad copy is not left where a server would load it


def test_download_wrong_token_and_unknown_revision(tmp_path, ckpt, manifest):
    token_file = tmp_path / "token"
    token_file.write_text("hf_wrong_token\n")
    token_file.chmod(0o600)
    with HubDouble(ckpt[0], token=TOKEN) as hub:
        mf = tmp_path / "m.json"
        mf.write_text(M.dumps(manifest))
        d = tmp_path / "w1"
        r = weights("download", d, "--manifest", mf, "--token-file", token_file, url=hub.url)
        assert r.code == 4 and marker(d) is None
        assert "token" in r.json["error"] and "hf_token_file" in r.stderr
        assert not any(s.get("get") for s in hub.stats()["files"].values())
        bad = dict(manifest, revision="e" * 40)
        mf.write_text(M.dumps(bad))
        token_file.write_text(TOKEN)
        d = tmp_path / "w2"
        r = weights("download", d, "--manifest", mf, "--token-file", token_file, url=hub.url)
        assert r.code == 4 and marker(d) is None
        assert "e" * 40 in r.json["error"] and "model_revision" in r.json["error"]
        st = json.loads((d / ".glmfleet" / "state.json").read_text())
        assert st["phase"] == "failed" and st["exit_code"] == 4


def test_second_download_reports_already_running(tmp_path, hub, manifest_file):
    d = tmp_path / "weights"
    hub.set_faults(slow_bytes_per_s=128 * 1024)  # ~3 s per shard
    r = weights("download", d, "--manifest", manifest_file, "--detach", url=hub.url)
    pid = r.json["pid"]
    try:
        again = weights("download", d, url=hub.url)
        assert again.code == 3 and again.json["pid"] == pid
        assert f"already running (pid {pid})" in again.stderr
        assert weights("verify", d).code == 3  # a verify must not race the download either
        st = weights("status", d).json
        assert st["running"] and st["lock_pid"] == pid and st["phase"] in ("download", "connect", "check")
        assert st["bytes_total"] > 0 and st["pid"] == pid
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid)
    st = weights("status", d).json
    assert not st["running"] and st["phase"] == "failed" and "signal 15" in st["error"]
    assert marker(d) is None


def test_token_never_leaks(tmp_path, ckpt, manifest):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    mf = tmp_path / "m.json"
    mf.write_text(M.dumps(manifest))
    d = tmp_path / "weights"
    with HubDouble(ckpt[0], token=TOKEN) as hub:
        hub.set_faults(slow_bytes_per_s=2 << 20)
        r = weights("download", d, "--manifest", mf, "--token-file", token_file, "--detach", url=hub.url)
        pid = r.json["pid"]
        seen = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
        st = weights("status", d, "--wait", 30).json
        assert st["phase"] == "done" and st["exit_code"] == 0, st
        assert hub.stats()["auth_failures"] == 0
    texts = [seen.decode(errors="replace"), r.stdout, r.stderr]
    texts += [p.read_text(errors="replace") for p in (d / ".glmfleet").iterdir() if p.is_file()]
    assert not [t for t in texts if TOKEN in t]
    token_file.chmod(0o644)
    r = weights("download", d, "--manifest", mf, "--token-file", token_file)
    assert r.code == 2 and "chmod 600" in r.stderr and TOKEN not in r.stdout + r.stderr


def test_disk_full_is_a_clear_error_with_nothing_verified(tmp_path, hub, manifest_file):
    # The real full filesystem is a fleet test; here the free-space reading is forced low.
    d = tmp_path / "weights"
    code = ("import sys; sys.argv = sys.argv[1:]; "
            f"sys.path.insert(0, {str(SCRIPT)!r}); from {T.APP_PACKAGE} import cli, download; "
            "download.free_bytes = lambda path: 1000; sys.exit(cli.main())")
    p = subprocess.run([sys.executable, "-c", code, "weights.pyz", "download", "--dir", str(d),
                        "--manifest", str(manifest_file)], env=env_for(hub.url, tmp_path / "h"),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 5, p.stderr
    assert "not enough disk space" in p.stderr and marker(d) is None
    assert hub.stats()["requests"] == 0  # refused before touching the Hub


def test_status_without_any_job(tmp_path):
    r = weights("status", tmp_path / "nothing")
    assert r.code == 0 and r.json["phase"] is None and r.json["running"] is False
    assert r.json["verified_revision"] is None and r.json["stale"] is False


def test_held_manifest_only_for_weights_verified_at_the_pinned_revision(manifest):
    from glmfleet.preflight.host import parse_host_facts

    text = M.dumps(manifest).replace("\n", "")  # as the host facts carry it: one line
    facts = parse_host_facts(f"weights_verified={DEFAULT_REVISION}\nweights_held_manifest={text}\nend=1\n")
    held = M.held_manifest(facts["weights_verified"], facts["weights_held_manifest"],
                           DEFAULT_REPO_ID, DEFAULT_REVISION)
    assert held == manifest
    other = "f" * 40
    assert M.held_manifest(other, text, DEFAULT_REPO_ID, other) is None  # verified, not for this manifest
    assert M.held_manifest(DEFAULT_REVISION, text, DEFAULT_REPO_ID, other) is None  # another pin
    assert M.held_manifest(None, text, DEFAULT_REPO_ID, DEFAULT_REVISION) is None  # not verified
    assert M.held_manifest(DEFAULT_REVISION, "{broken", DEFAULT_REPO_ID, DEFAULT_REVISION) is None
    assert M.held_manifest(DEFAULT_REVISION, text, "someone/else", DEFAULT_REVISION) is None


def test_summary_of_a_fresh_download_says_when_files_were_hashed():
    r = {"ok": True, "extra": [], "files_total": 9, "bytes_total": 6 * 2**20, "revision": "ab" * 20,
         "hashed_files": 0, "cached_files": 9}
    text = V.result_summary(r)
    assert "9 hashed as they were downloaded or by an earlier check" in text and "checked earlier" not in text
