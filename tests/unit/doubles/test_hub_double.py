"""Tests of the Hugging Face Hub TEST DOUBLE (testbed/doubles/hub) against the real client.

The double runs in this process; huggingface_hub and the `hf` CLI run in child processes,
because HF_ENDPOINT is read once, when huggingface_hub is imported.
"""

from __future__ import annotations

import http.client
import json
import os
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from testbed.doubles.hub import DEFAULT_REVISION, HubDouble, make_checkpoint, scan  # noqa: E402
from testbed.doubles.hub import server as hub_server_module  # noqa: E402

SERVER_CMD = [sys.executable, "-m", "testbed.doubles.hub.server"]
from glmfleet.kit.index_pattern import DEFAULT_PATTERN, derive  # noqa: E402

REPO = "0xSero/GLM-5.2-NVFP4-REAP-469B"
SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "repo"
    manifest = make_checkpoint(d, shards=3, shard_bytes=2 * 2**20, seed=7)
    return d, {e["path"]: e for e in manifest["files"]}


@pytest.fixture(scope="module")
def hub_server(ckpt):
    with HubDouble(ckpt[0], page_size=2) as hub:
        yield hub


@pytest.fixture
def hub(hub_server):
    hub_server.clear_faults()
    hub_server.reset_stats()
    return hub_server


def client_env(url: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING_FACE_"))}  # no stray token or endpoint
    env.update(HF_ENDPOINT=url, HF_HOME=str(home), HF_HUB_DISABLE_UPDATE_CHECK="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env


def run_client(code: str, url: str, home: Path, timeout: int = 60):
    """Run `code` with huggingface_hub in a child; it prints one JSON line at the end."""
    p = subprocess.run([sys.executable, "-c", code], env=client_env(url, home),
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def hf_verify(url: str, home: Path, local_dir: Path, revision: str = DEFAULT_REVISION):
    return subprocess.run(
        [str(VENV_BIN / "hf"), "cache", "verify", REPO, "--local-dir", str(local_dir),
         "--revision", revision, "--fail-on-missing-files", "--fail-on-extra-files"],
        env=client_env(url, home), capture_output=True, text=True, timeout=60)


def fetch(url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None):
    """(status, headers, body) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


# ---- the checkpoint ------------------------------------------------------------------------

def test_checkpoint_is_deterministic_and_valid(tmp_path):
    a = make_checkpoint(tmp_path / "a", shards=2, shard_bytes=64 * 1024, seed=1)
    b = make_checkpoint(tmp_path / "b", shards=2, shard_bytes=64 * 1024, seed=1)
    c = make_checkpoint(tmp_path / "c", shards=2, shard_bytes=64 * 1024, seed=2)
    assert a == b and a != c
    assert a == scan(tmp_path / "a")
    paths = {e["path"]: e for e in a["files"]}
    assert set(paths) == {".gitattributes", "README.md", "config.json", "generation_config.json",
                          "tokenizer_config.json", "model.safetensors.index.json",
                          "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert [p for p, e in paths.items() if e["lfs"]] == [p for p in paths if p.endswith(".safetensors")]

    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["architectures"] == ["GlmMoeDsaForCausalLM"] and config["num_hidden_layers"] == 78
    assert derive(config) == (DEFAULT_PATTERN, "config.json indexer_types")

    index = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
    seen, data_total = {}, 0
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        raw = (tmp_path / "a" / shard).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        assert n % 8 == 0
        header = json.loads(raw[8:8 + n])
        header.pop("__metadata__")
        end = 0  # tensors must tile the data section exactly, in offset order
        for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
            start, stop = t["data_offsets"]
            elems = 1
            for dim in t["shape"]:
                elems *= dim
            width = {"F32": 4, "BF16": 2, "U8": 1, "F8_E4M3": 1}[t["dtype"]]
            assert start == end and stop - start == elems * width and start % width == 0, name
            end = stop
            seen[name] = shard
        assert end == len(raw) - 8 - n
        data_total += end
    assert index["weight_map"] == seen and index["metadata"]["total_size"] == data_total
    assert any(".indexer." in name for name in seen)


# ---- the real client against the double ----------------------------------------------------

def test_snapshot_download_verify_and_metadata(hub, ckpt, tmp_path):
    _, files = ckpt
    local = tmp_path / "dl"
    out = run_client(f"""
import json, hashlib
from pathlib import Path
from huggingface_hub import snapshot_download, HfApi
d = snapshot_download({REPO!r}, revision={DEFAULT_REVISION!r}, local_dir={str(local)!r})
api = HfApi()
info = api.model_info({REPO!r}, revision={DEFAULT_REVISION!r}, files_metadata=True)
tree = list(api.list_repo_tree({REPO!r}, revision={DEFAULT_REVISION!r}, recursive=True))
main = api.model_info({REPO!r}, revision="main")
print(json.dumps({{
  "files": {{p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in Path(d).rglob("*") if p.is_file() and ".cache" not in p.parts}},
  "siblings": {{s.rfilename: [s.size, s.lfs.sha256 if s.lfs else None, s.blob_id] for s in info.siblings}},
  "sha": info.sha, "main_sha": main.sha,
  "tree": {{t.path: [t.size, t.lfs.sha256 if t.lfs else None] for t in tree}},
}}))
""", hub.url, tmp_path / "home")
    assert out["files"] == {p: e["sha256"] for p, e in files.items()}
    assert out["sha"] == out["main_sha"] == DEFAULT_REVISION
    for p, e in files.items():
        lfs_sha = e["sha256"] if e["lfs"] else None
        assert out["siblings"][p][:2] == out["tree"][p] == [e["size"], lfs_sha]
        assert out["siblings"][p][2] == e.get("pointer_sha1", e["git_sha1"])
    stats = hub.stats()
    # every file came over once, whole; tree paging (size 2) took several requests
    assert {p: s["complete"] for p, s in stats["files"].items()} == dict.fromkeys(files, 1)
    assert stats["bytes_served"] == sum(e["size"] for e in files.values())
    assert stats["by_route"]["tree"] >= 2 * (len(files) // 2)

    # Same commit, same local_dir: the client trusts its metadata and asks nothing.
    before = hub.stats()["requests"]
    run_client(f"""
from huggingface_hub import snapshot_download
snapshot_download({REPO!r}, revision={DEFAULT_REVISION!r}, local_dir={str(local)!r})
print("{{}}")
""", hub.url, tmp_path / "home")
    assert hub.stats()["requests"] == before

    ok = hf_verify(hub.url, tmp_path / "home", local)
    assert ok.returncode == 0 and "checksums match" in ok.stdout, ok.stdout + ok.stderr
    shard = local / SHARDS[1]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    bad = hf_verify(hub.url, tmp_path / "home", local)
    assert bad.returncode == 1 and SHARDS[1] in bad.stdout + bad.stderr, bad.stdout + bad.stderr


def test_tokens_and_error_mapping(ckpt, tmp_path):
    src, _ = ckpt
    with HubDouble(src, token="good", auth_failure="gated") as gated, \
            HubDouble(src, token="good", auth_failure="private") as private, \
            HubDouble(src, token="good", auth_failure="invalid") as invalid, \
            HubDouble(src) as open_:
        out = run_client(f"""
import json
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
R, REV = {REPO!r}, {DEFAULT_REVISION!r}
def kind(fn):
    try:
        fn()
        return "ok"
    except Exception as e:
        name = type(e).__name__
        code = getattr(getattr(e, "response", None), "status_code", None)
        return f"{{name}}:{{code}}:{{'Invalid credentials' in str(e)}}"
def info(url, token=None, repo=R, rev=REV):
    return lambda: HfApi(endpoint=url, token=token).model_info(repo, revision=rev)
def dl(url, token=None, path="config.json", rev=REV):
    return lambda: hf_hub_download(R, path, revision=rev, endpoint=url, token=token,
                                   local_dir={str(tmp_path / "x")!r})
print(json.dumps({{
  "gated_ok": kind(info({gated.url!r}, "good")),
  "gated_none": kind(info({gated.url!r}, False)),
  "gated_wrong": kind(info({gated.url!r}, "bad")),
  "gated_wrong_dl": kind(dl({gated.url!r}, "bad")),
  "private_wrong": kind(info({private.url!r}, "bad")),
  "invalid_wrong": kind(info({invalid.url!r}, "bad")),
  "bad_rev": kind(info({open_.url!r}, rev="f" * 40)),
  "bad_rev_dl": kind(dl({open_.url!r}, rev="f" * 40)),
  "bad_repo": kind(info({open_.url!r}, repo="nobody/nothing")),
  "bad_path": kind(dl({open_.url!r}, path="nope.bin")),
}}))
""", open_.url, tmp_path / "home")
    assert out["gated_ok"] == "ok"
    assert out["gated_none"].startswith("GatedRepoError:401")
    assert out["gated_wrong"].startswith("GatedRepoError:403")
    assert out["gated_wrong_dl"].startswith("GatedRepoError:403")
    assert out["private_wrong"].startswith("RepositoryNotFoundError:404")
    assert out["invalid_wrong"] == "HfHubHTTPError:401:True"
    assert out["bad_rev"].startswith("RevisionNotFoundError:404")
    assert out["bad_rev_dl"].startswith("RevisionNotFoundError:404")
    assert out["bad_repo"].startswith("RepositoryNotFoundError:401")  # anonymous: 401, like the Hub
    assert out["bad_path"].startswith("RemoteEntryNotFoundError:404")
    assert gated.stats()["auth_failures"] == 3


def test_resolve_headers_ranges_and_tree_paging(hub, ckpt):
    _, files = ckpt
    shard = files[SHARDS[0]]
    base = f"{hub.url}/{REPO}/resolve/{DEFAULT_REVISION}"
    status, h, _ = fetch(f"{base}/{SHARDS[0]}", "HEAD")
    assert status == 200 and h["X-Repo-Commit"] == DEFAULT_REVISION
    assert h["ETag"] == f'"{shard["sha256"]}"' and h["X-Linked-Size"] == str(shard["size"])
    assert not any(k.lower().startswith("x-xet") for k in h.keys())
    status, h, _ = fetch(f"{hub.url}/{REPO}/resolve/main/config.json", "HEAD")
    assert h["ETag"] == f'"{files["config.json"]["git_sha1"]}"' and h["X-Repo-Commit"] == DEFAULT_REVISION

    content = (ckpt[0] / SHARDS[0]).read_bytes()
    status, h, body = fetch(f"{base}/{SHARDS[0]}", headers={"Range": "bytes=100-199"})
    assert (status, body, h["Content-Range"]) == (206, content[100:200], f"bytes 100-199/{len(content)}")
    assert fetch(f"{base}/{SHARDS[0]}", headers={"Range": "bytes=-10"})[2] == content[-10:]
    assert fetch(f"{base}/{SHARDS[0]}", headers={"Range": f"bytes={len(content) - 5}-"})[2] == content[-5:]
    assert fetch(f"{base}/{SHARDS[0]}", headers={"Range": f"bytes={len(content)}-"})[0] == 416

    status, h, body = fetch(f"{hub.url}/api/models/{REPO}/revision/main")
    assert status == 200 and json.loads(body)["sha"] == DEFAULT_REVISION
    status, h, _ = fetch(f"{hub.url}/api/models/{REPO}/revision/refs%2Fpr%2F1")
    assert status == 404 and h["X-Error-Code"] == "RevisionNotFound"

    url, seen, pages = f"{hub.url}/api/models/{REPO}/tree/{DEFAULT_REVISION}?recursive=true&expand=false", [], 0
    while url:
        status, h, body = fetch(url)
        seen += [e["path"] for e in json.loads(body)]
        pages += 1
        link = h.get("Link")
        url = link[1:link.index(">")] if link else None
    assert seen == sorted(files) and pages == (len(files) + 1) // 2

    status, _, body = fetch(f"{hub.url}/api/models/{REPO}/paths-info/{DEFAULT_REVISION}", "POST",
                           data=b"paths=config.json&paths=missing&expand=false")
    assert [e["path"] for e in json.loads(body)] == ["config.json"]


def test_faults_seen_by_the_real_client(hub, ckpt, tmp_path):
    _, files = ckpt
    # Flip the switches over HTTP, as a test in another process would.
    status, _, body = fetch(f"{hub.url}/_double/faults", "POST", data=json.dumps({
        "corrupt": {SHARDS[0]: 12345},
        "truncate_after": {SHARDS[1]: 100_000},  # once (default): the client's retry succeeds
        "error_5xx": {SHARDS[2]: {"status": 500, "count": 1, "methods": ["GET"]}},
    }).encode())
    assert status == 200 and json.loads(body)["corrupt"] == {SHARDS[0]: 12345}
    local = tmp_path / "dl"
    out = run_client(f"""
import json, hashlib, os
from huggingface_hub import hf_hub_download
res = {{}}
for name in {SHARDS!r}:
    try:
        p = hf_hub_download({REPO!r}, name, revision={DEFAULT_REVISION!r}, local_dir={str(local)!r})
        res[name] = [os.path.getsize(p), hashlib.sha256(open(p, "rb").read()).hexdigest()]
    except Exception as e:
        res[name] = type(e).__name__
print(json.dumps(res))
""", hub.url, tmp_path / "home")
    # corrupted: same size, different hash, and the client said nothing (its blind spot)
    assert out[SHARDS[0]][0] == files[SHARDS[0]]["size"]
    assert out[SHARDS[0]][1] != files[SHARDS[0]]["sha256"]
    # truncated once, then fetched again whole
    assert out[SHARDS[1]] == [files[SHARDS[1]]["size"], files[SHARDS[1]]["sha256"]]
    # a 500 on GET is not retried by the client
    assert out[SHARDS[2]] in ("HfHubHTTPError", "LocalEntryNotFoundError")
    s = hub.stats()["files"]
    assert s[SHARDS[0]]["corrupted"] == 1
    assert s[SHARDS[1]]["truncated"] == 1 and s[SHARDS[1]]["complete"] == 1
    assert s[SHARDS[1]]["bytes"] == files[SHARDS[1]]["size"] + 100_000
    assert s[SHARDS[2]]["errors"] == 1 and hub.stats()["errors_5xx"] == 1


def test_fault_switches_raw(hub, ckpt, monkeypatch):
    _, files = ckpt
    url = f"{hub.url}/{REPO}/resolve/{DEFAULT_REVISION}/config.json"
    size = files["config.json"]["size"]
    # 5xx with a count, then back to normal; "api" hits API calls only
    hub.set_faults(error_5xx={"config.json": [503, 2], "api": 502})
    assert [fetch(url)[0] for _ in range(3)] == [503, 503, 200]
    assert fetch(f"{hub.url}/api/models/{REPO}")[0] == 502
    hub.set_faults(error_5xx=None)
    assert fetch(f"{hub.url}/api/models/{REPO}")[0] == 200

    # truncation every time: declared length stays, the body comes up short
    hub.set_faults(truncate_after=100, truncate_once=False)
    for _ in range(2):
        conn = http.client.HTTPConnection(hub.host, hub.port, timeout=5)
        conn.request("GET", f"/{REPO}/resolve/{DEFAULT_REVISION}/config.json")
        resp = conn.getresponse()
        assert resp.getheader("Content-Length") == str(size)
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
        conn.close()
    assert hub.stats()["files"]["config.json"]["truncated"] == 2
    hub.clear_faults()

    # throttle: ~200 KB at 1 MB/s; the double pauses to keep to the rate (its pauses are
    # recorded, not waited for: no test depends on how fast this machine is right now)
    pauses = []
    real_sleep = hub_server_module.time.sleep
    monkeypatch.setattr(hub_server_module.time, "sleep",
                        lambda s: pauses.append(s) if threading.current_thread().name != "MainThread" else real_sleep(s))
    hub.set_faults(slow_bytes_per_s=1_000_000)
    status, _, body = fetch(f"{hub.url}/{REPO}/resolve/{DEFAULT_REVISION}/{SHARDS[0]}",
                           headers={"Range": "bytes=0-199999"})
    assert status == 206 and len(body) == 200_000
    assert len(pauses) >= 3 and sum(pauses) >= 0.15  # ~50 KB steps, ~0.2 s asked for in all
    monkeypatch.undo()
    hub.clear_faults()

    # shared uplink: two bodies of 200 KB at once through a 1 MB/s uplink book 0.4 s of one
    # clock between them (a per-response throttle would ask each for ~0.2 s only)
    pauses.clear()
    monkeypatch.setattr(hub_server_module.time, "sleep",
                        lambda s: pauses.append(s) if threading.current_thread().name != "MainThread" else real_sleep(s))
    hub.set_faults(uplink_bytes_per_s=1_000_000)
    url = f"{hub.url}/{REPO}/resolve/{DEFAULT_REVISION}/{SHARDS[0]}"
    got = []
    threads = [threading.Thread(target=lambda: got.append(fetch(url, headers={"Range": "bytes=0-199999"})))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [len(b) for _, _, b in got] == [200_000, 200_000]
    assert max(pauses) >= 0.3, max(pauses)  # the later chunks wait for the other body's too
    monkeypatch.undo()
    hub.clear_faults()
    assert fetch(f"{hub.url}/_double/faults", "POST", data=b'{"uplink_bytes_per_s": 0}')[0] == 400

    # bad switches are refused, in Python and over HTTP
    with pytest.raises(ValueError):
        hub.set_faults(corrupt={"nope": 1})
    with pytest.raises(ValueError):
        hub.set_faults(flood=True)
    assert fetch(f"{hub.url}/_double/faults", "POST", data=b'{"slow_bytes_per_s": -1}')[0] == 400
    assert fetch(f"{hub.url}/_double/faults", "DELETE")[0] == 200
    stats = json.loads(fetch(f"{hub.url}/_double/stats")[2])
    assert stats["files"]["config.json"]["get"] == 5 and stats["requests"] >= 6
    assert json.loads(fetch(f"{hub.url}/_double/stats?reset=true", "POST")[2])["requests"] == 0


def test_cli_serves_and_prints_url(tmp_path):
    (tmp_path / "tok").write_text("sekrit\n")
    p = subprocess.Popen([*SERVER_CMD, "--dir", str(tmp_path / "repo"), "--host", "127.0.0.1",
                          "--port", "0", "--make-checkpoint", "--shards", "1", "--shard-bytes",
                          "65536", "--token-file", str(tmp_path / "tok")],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = p.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), p.stderr.read() if p.poll() is not None else url
        manifest = json.loads(fetch(f"{url}/_double/manifest")[2])
        assert manifest["revision"] == DEFAULT_REVISION
        assert "model-00001-of-00001.safetensors" in [f["path"] for f in manifest["files"]]
        status, h, _ = fetch(f"{url}/api/models/{REPO}")
        assert status == 401 and h["X-Error-Code"] == "GatedRepo"
        status, _, body = fetch(f"{url}/api/models/{REPO}", headers={"Authorization": "Bearer sekrit"})
        assert status == 200 and json.loads(body)["gated"] == "manual"
    finally:
        p.terminate()
        assert p.wait(timeout=10) == 0
