"""Host-to-host fan-out, host side: `weights.pyz serve` and `download --peer` (aria2).

Everything is real and local: the zip application run as a host runs it, its server on
127.0.0.x, aria2c (the distribution's package; the test skips without it), the Hub double
for the Hub fallback. Plus the pure parts of the controller's side (plan.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from testbed.doubles.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, HubDouble, make_checkpoint  # noqa: E402
from glmfleet.weights import manifest as M  # noqa: E402
from glmfleet.weights import plan  # noqa: E402
from glmfleet.weights import toolapp as T  # noqa: E402
from glmfleet.weights.hostside import peers as P  # noqa: E402

SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
TOKEN = "peer-token-for-this-run-0123456789abcdef"
needs_aria2 = pytest.mark.skipif(shutil.which("aria2c") is None,
                                 reason="aria2c is not installed (apt-get install aria2)")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The tool, a checkpoint (3 shards of 2.5 MB: aria2 splits a file in 1 MB pieces at
    least, so two sources each get a piece) and its manifest."""
    base = tmp_path_factory.mktemp("peers")
    tool = T.build(directory=base / "tool").path
    repo = base / "repo"
    make_checkpoint(repo, shards=3, shard_bytes=5 << 19, seed=9)
    with HubDouble(repo) as hub:
        manifest = M.fetch_manifest(DEFAULT_REPO_ID, DEFAULT_REVISION, endpoint=hub.url)
    mfile = base / "manifest.json"
    mfile.write_text(M.dumps(manifest))
    tok = base / "tok"
    tok.write_text(TOKEN + "\n")
    tok.chmod(0o600)
    return {"tool": tool, "repo": repo, "manifest": manifest, "mfile": mfile, "tok": tok}


def pyz(env, *args, check=True):
    # this venv's python: it has huggingface_hub, as a host's shipped packages give it
    p = subprocess.run([sys.executable, str(env["tool"]), *map(str, args)], capture_output=True,
                       text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def verified_copy(env, where: Path) -> Path:
    shutil.copytree(env["repo"], where)
    pyz(env, "verify", "--dir", where, "--manifest", env["mfile"])
    return where


def free_port(address: str) -> int:
    import socket
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def get(url, token=TOKEN, method="GET", headers=None):
    req = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def server(env, tmp_path):
    """A verified copy served (detached, as the deploy starts it); stopped afterwards."""
    started = []

    def start(name="src", address="127.0.0.1", corrupt=None):
        d = verified_copy(env, tmp_path / name)
        if corrupt:  # bit rot after the verify: a flipped byte in every MB of that file
            f = d / corrupt
            data = bytearray(f.read_bytes())
            for off in range(7, len(data), 1 << 20):
                data[off] ^= 0xFF
            st = f.stat()
            f.write_bytes(bytes(data))
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        port = free_port(address)
        out = json.loads(pyz(env, "serve", "--dir", d, "--bind", address, "--port", port,
                             "--token-file", env["tok"], "--detach").stdout.splitlines()[-1])
        assert out["status"] == "started"
        started.append(d)
        return d, f"http://{address}:{port}"

    yield start
    for d in started:
        pyz(env, "serve", "--dir", d, "--stop")


# ---- the server ----------------------------------------------------------------------------

def test_serves_only_the_manifests_files_with_the_token_and_ranges(env, server):
    d, url = server()
    base = f"{url}/{DEFAULT_REVISION}"
    size = (d / SHARDS[0]).stat().st_size
    assert get(f"{base}/{SHARDS[0]}", token=None)[0] == 401
    assert get(f"{base}/{SHARDS[0]}", token="wrong-token-wrong-token")[0] == 401
    status, headers, body = get(f"{base}/{SHARDS[0]}")
    assert status == 200 and body == (d / SHARDS[0]).read_bytes()
    status, headers, body = get(f"{base}/{SHARDS[0]}", headers={"Range": "bytes=100-199"})
    assert status == 206 and body == (d / SHARDS[0]).read_bytes()[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{size}"
    assert get(f"{base}/{SHARDS[0]}", headers={"Range": f"bytes={size}-"})[0] == 416
    status, headers, body = get(f"{base}/{SHARDS[0]}", method="HEAD")
    assert status == 200 and headers["Content-Length"] == str(size) and body == b""
    # nothing but the manifest's files: not the state dir, not another revision, no ../
    for path in (".glmfleet/manifest.json", "../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd"):
        assert get(f"{base}/{path}")[0] == 404, path
    status, _, body = get(f"{base}/")  # what it holds, for the receivers
    index = json.loads(body)
    assert status == 200 and index["files"] == sorted(f["path"] for f in env["manifest"]["files"])
    assert index["complete"] and not index["growing"]
    assert get(f"{base}/", token=None)[0] == 401
    assert get(f"{url}/{'0' * 40}/{SHARDS[0]}")[0] == 404
    # a copy whose size is not the manifest's is not handed out
    with open(d / SHARDS[1], "r+b") as f:
        f.truncate(1000)
    assert get(f"{base}/{SHARDS[1]}")[0] == 404
    # one server per weights dir; the token is not on its command line
    again = pyz(env, "serve", "--dir", d, "--bind", "127.0.0.1", "--port", free_port("127.0.0.1"),
                "--token-file", env["tok"], "--detach", check=False)
    assert again.returncode == 3 and "already running" in again.stdout
    ps = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True).stdout
    assert f"{env['tool'].name} serve" in ps and TOKEN not in ps


def index(url):
    status, _, body = get(f"{url}/{DEFAULT_REVISION}/")
    assert status == 200
    return json.loads(body)


def test_serve_hands_out_verified_files_only_and_refuses_unsafe_token_files(env, server, tmp_path):
    """A host still fetching serves each file once its hash matched the manifest here and it
    is unchanged since (the hash cache's record); nothing else."""
    d = tmp_path / "plain"
    shutil.copytree(env["repo"], d)
    (d / ".glmfleet").mkdir()
    shutil.copy(env["mfile"], d / ".glmfleet" / "manifest.json")
    port = free_port("127.0.0.1")
    out = pyz(env, "serve", "--dir", d, "--bind", "127.0.0.1", "--port", port,
              "--token-file", env["tok"], "--detach")
    assert json.loads(out.stdout.splitlines()[-1])["status"] == "started"
    url = f"http://127.0.0.1:{port}"
    try:
        first = index(url)
        assert first["files"] == [] and not first["complete"]
        assert first["growing"]  # just started: its host's own fetch is about to begin
        assert get(f"{url}/{DEFAULT_REVISION}/{SHARDS[0]}")[0] == 404  # there, never checked
        pyz(env, "verify", "--dir", d)
        assert index(url)["complete"] and get(f"{url}/{DEFAULT_REVISION}/{SHARDS[0]}")[0] == 200
        # the hash cache alone (no VERIFIED, as while a download runs): files unchanged since
        # their check are served; one touched since is not
        (d / ".glmfleet" / "VERIFIED").unlink()
        os.utime(d / SHARDS[1])
        now = index(url)
        assert SHARDS[0] in now["files"] and SHARDS[1] not in now["files"]
        assert not now["complete"] and not now["growing"]  # its last job ended: nothing more comes
        assert get(f"{url}/{DEFAULT_REVISION}/{SHARDS[0]}")[0] == 200
        assert get(f"{url}/{DEFAULT_REVISION}/{SHARDS[1]}")[0] == 404
    finally:
        pyz(env, "serve", "--dir", d, "--stop")
    loose = tmp_path / "loose"
    loose.write_text(TOKEN)
    loose.chmod(0o644)
    p = pyz(env, "serve", "--dir", d, "--bind", "127.0.0.1", "--port", free_port("127.0.0.1"),
            "--token-file", loose, "--detach", check=False)
    assert p.returncode == 2 and "readable by other users" in p.stdout
    assert json.loads(pyz(env, "serve", "--dir", d, "--stop").stdout)["status"] == "not running"


# ---- download --peer ------------------------------------------------------------------------

def receive(env, dest: Path, urls, endpoint="http://127.0.0.1:9"):
    args = ["download", "--dir", dest, "--manifest", env["mfile"], "--endpoint", endpoint,
            "--peer-token-file", env["tok"]]
    for u in urls:
        args += ["--peer", u]
    p = pyz(env, *args, check=False)
    state = json.loads((dest / ".glmfleet" / "state.json").read_text())
    log = (dest / ".glmfleet" / "weights.log").read_text()
    return p.returncode, state, log


@needs_aria2
def test_fetch_from_all_sources_a_bad_copy_is_caught_and_fetched_from_another(env, server, tmp_path):
    total = sum(f["size"] for f in env["manifest"]["files"])
    _, good = server("good", "127.0.0.1")
    _, bad = server("bad", "127.0.0.2", corrupt=SHARDS[1])
    dead = f"http://127.0.0.3:{free_port('127.0.0.3')}"  # nothing listens: a source gone
    rc, st, log = receive(env, tmp_path / "dst", [bad, dead, good])
    assert rc == 0, log[-3000:]
    assert st["peer_bytes"] == total and st["fetched_bytes"] == 0  # nothing from the Hub
    assert (tmp_path / "dst" / ".glmfleet" / "VERIFIED").read_text().strip() == DEFAULT_REVISION
    # the bad copy was caught (by our own check), then the file came from one source
    # alone; every file was first fetched from all sources holding it, each on its own
    assert f"peers: {SHARDS[1]} from " in log and "the manifest says" in log
    assert log.count("round 1: 1 of 1 file(s)") == len(env["manifest"]["files"]) - 1
    assert log.count("round 1: 0 of 1 file(s)") == 1
    assert "round 2: 0 of 1 file(s)" in log and "round 3: 1 of 1 file(s)" in log  # bad, then good
    assert not (tmp_path / "dst" / ".glmfleet" / "incoming").exists()
    assert TOKEN not in log


@needs_aria2
def test_a_receiver_follows_a_source_that_is_still_fetching(env, tmp_path):
    """The source holds two shards verified and is still fetching (its server just started:
    counts as fetching); the receiver takes what it holds, waits for the third shard, and
    takes it once the source has verified it."""
    src = tmp_path / "src"
    shutil.copytree(env["repo"], src)
    late = src / SHARDS[2]
    held = late.read_bytes()
    late.unlink()
    (src / ".glmfleet").mkdir()
    shutil.copy(env["mfile"], src / ".glmfleet" / "manifest.json")
    assert pyz(env, "verify", "--dir", src, check=False).returncode == 1  # one file missing
    port = free_port("127.0.0.4")
    pyz(env, "serve", "--dir", src, "--bind", "127.0.0.4", "--port", port, "--token-file",
        env["tok"], "--detach")
    url = f"http://127.0.0.4:{port}"
    try:
        assert index(url)["growing"]
        dest = tmp_path / "dst"
        args = ["download", "--dir", dest, "--manifest", env["mfile"], "--endpoint",
                "http://127.0.0.1:9", "--peer-token-file", env["tok"], "--peer", url]
        p = subprocess.Popen([sys.executable, str(env["tool"]), *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log = dest / ".glmfleet" / "weights.log"
        for _ in range(600):  # up to 60 s for the first files to arrive
            if (dest / SHARDS[0]).exists() and (dest / SHARDS[1]).exists():
                break
            assert p.poll() is None, p.communicate()[0]
            subprocess.run(["sleep", "0.1"])
        assert not (dest / SHARDS[2]).exists() and p.poll() is None  # waiting for it
        late.write_bytes(held)
        pyz(env, "verify", "--dir", src)  # the source has it now, verified
        assert p.wait(timeout=60) == 0, p.communicate()[0]
    finally:
        pyz(env, "serve", "--dir", src, "--stop")
    st = json.loads((dest / ".glmfleet" / "state.json").read_text())
    total = sum(f["size"] for f in env["manifest"]["files"])
    assert st["peer_bytes"] == total and st["fetched_bytes"] == 0
    text = log.read_text()
    assert text.count("round 1: ") >= 2 and "round 1: 1 of 1 file(s)" in text, text[-2000:]


def test_a_file_is_taken_once_every_source_still_fetching_has_it():
    a, b, c = "http://a/r", "http://b/r", "http://c/r"
    x, y = {"path": "x", "size": 1}, {"path": "y", "size": 1}
    views = {a: {"files": {"x", "y"}, "growing": False}, b: {"files": {"x"}, "growing": True},
             c: {"files": set(), "growing": False}}  # c's own fetch ended without them
    assert P.ready_files([x, y], views) == [(x, [a, b])]  # y: b is still getting it
    views[b]["growing"] = False  # b's fetch ended without y: a alone serves it
    assert P.ready_files([x, y], views) == [(x, [a, b]), (y, [a])]
    assert P.ready_files([x], {b: {"files": set(), "growing": True}}) == []


@needs_aria2
def test_what_no_source_delivers_comes_from_the_hub(env, tmp_path):
    dead = f"http://127.0.0.3:{free_port('127.0.0.3')}"
    with HubDouble(env["repo"]) as hub:
        rc, st, log = receive(env, tmp_path / "dst", [dead], endpoint=hub.url)
        served = hub.stats()["files"]
    assert rc == 0, log[-3000:]
    total = sum(f["size"] for f in env["manifest"]["files"])
    assert st["peer_bytes"] == 0 and st["fetched_bytes"] == total
    assert all(f["complete"] == 1 for f in served.values())
    assert "not delivered intact by any host: fetching them from the Hub" in log


def test_aria2_gets_the_token_on_stdin_only():
    entries = [{"path": "a b/x.safetensors", "size": 5, "sha256": "0" * 64},
               {"path": "config.json", "size": 2, "git_sha1": "1" * 40}]
    text = P.aria2_input([(e, ["http://h1:1/r", "http://h2:1/r"]) for e in entries], TOKEN)
    lines = text.splitlines()
    assert lines[0] == "http://h1:1/r/a%20b/x.safetensors\thttp://h2:1/r/a%20b/x.safetensors"
    assert "  out=config.json" in lines and "  out=a b/x.safetensors" in lines
    assert lines.count(f"  header=Authorization: Bearer {TOKEN}") == 2
    assert not any("checksum" in ln for ln in lines)  # our own check, with a faster sha256
    argv = P.aria2_argv("/w/.glmfleet/incoming", 8, 3, 1234)
    assert TOKEN not in " ".join(argv) and "--input-file=-" in argv and "--split=3" in argv


# ---- the controller's pure parts ------------------------------------------------------------

def test_commands_carry_token_file_names_never_tokens():
    p = plan.HostPaths("/opt/glmfleet", "/w")
    cmd = plan.job_command("download", p, peers=["http://10.0.0.2:7480", "http://[fd00::3]:7480"])
    assert "--peer http://10.0.0.2:7480 --peer 'http://[fd00::3]:7480'" in cmd
    assert "--peer-token-file /opt/glmfleet/secrets/peer-token" in cmd
    assert "--peer" not in plan.job_command("download", p)
    assert plan.serve_command(p, "10.0.0.2", 7480) == (
        "python3 /opt/glmfleet/bin/weights.pyz serve --dir /w --bind 10.0.0.2 --port 7480 "
        "--token-file /opt/glmfleet/secrets/peer-token --detach")
    assert "/opt/glmfleet/secrets/peer-token" in plan.token_remove_command(p)
    assert plan.peer_url("fd00::3", 7480) == "http://[fd00::3]:7480"
    assert plan.peer_url("gpu-01.site", 7480) == "http://gpu-01.site:7480"


def test_rounds_double_the_sources():
    """One seed from the Hub; each round as many receivers as there are sources, fetching
    from all of them; a host that holds the weights already is a source from the start."""
    hosts = [f"h{i}" for i in range(8)]
    r = plan.peer_rounds([], hosts)
    assert r["h0"] == [] and r["h1"] == ["h0"]
    assert r["h2"] == r["h3"] == ["h0", "h1"]
    assert r["h4"] == r["h7"] == ["h0", "h1", "h2", "h3"]
    assert plan.peer_rounds(["v"], ["a", "b", "c"]) == {"a": ["v"], "b": ["v", "a"], "c": ["v", "a"]}
    assert plan.peer_rounds([], ["only"]) == {"only": []}
    assert plan.peer_rounds(["v"], []) == {}


def test_progress_names_the_sources():
    st = {"command": "download", "phase": "download", "bytes_done": 1 << 20,
          "bytes_total": 4 << 20, "rate_bytes_per_s": 1 << 20, "eta_s": 3, "sources": 3}
    assert plan.progress_line(st).endswith("ETA 3s, from 3 host(s)")
    assert plan.progress_line({**st, "sources": 0}).endswith("from the Hub")
    hub = {"command": "download", "phase": "download", "running": True, "bytes_done": 1 << 20,
           "bytes_total": 4 << 20, "rate_bytes_per_s": 1 << 20, "eta_s": 3, "sources": 0}
    line = plan.fleet_progress_line({"a": hub, "b": st | {"running": True}, "c": {**hub, "running": False,
                                     "phase": "done", "exit_code": 0}})
    assert line.endswith("2 of 3 host(s) running (1 from other hosts, 1 from the Hub)"), line
    assert line.startswith("download: 6.3 MB of 12.6 MB (50%)"), line
    detail = plan.pass_detail("verified", 0, peer_bytes=4 << 20, peers=("w-a", "w-b"))
    assert "from 2 host(s) of the site (w-a, w-b): 4.2 MB (4194304 B)" in detail
