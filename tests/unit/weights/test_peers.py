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
    for path in (".glmfleet/manifest.json", "../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", ""):
        assert get(f"{base}/{path}")[0] == 404, path
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


def test_serve_refuses_unverified_weights_and_unsafe_token_files(env, tmp_path):
    d = tmp_path / "plain"
    shutil.copytree(env["repo"], d)
    (d / ".glmfleet").mkdir()
    shutil.copy(env["mfile"], d / ".glmfleet" / "manifest.json")
    p = pyz(env, "serve", "--dir", d, "--bind", "127.0.0.1", "--port", free_port("127.0.0.1"),
            "--token-file", env["tok"], "--detach", check=False)
    assert p.returncode == 2 and "not verified" in p.stdout
    pyz(env, "verify", "--dir", d)
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
    # the bad copy was caught (aria2's sha256 and ours), then the file came from one source
    # alone; the other files from all sources in one go
    assert f"peers: {SHARDS[1]} from " in log and "Checksum error" in log
    assert "round 1: " in log and f"of {len(env['manifest']['files'])} file(s)" in log
    assert not (tmp_path / "dst" / ".glmfleet" / "incoming").exists()
    assert TOKEN not in log


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
    text = P.aria2_input(entries, ["http://h1:1/r", "http://h2:1/r"], TOKEN)
    lines = text.splitlines()
    assert lines[0] == "http://h1:1/r/a%20b/x.safetensors\thttp://h2:1/r/a%20b/x.safetensors"
    assert "  checksum=sha-256=" + "0" * 64 in lines and "  out=config.json" in lines
    assert lines.count(f"  header=Authorization: Bearer {TOKEN}") == 2
    assert sum("checksum" in ln for ln in lines) == 1  # no sha256 published: our check only
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


@pytest.mark.parametrize("n, rounds", [(2, 1), (3, 2), (4, 2), (8, 3), (9, 4)])
def test_admission_doubles_the_sources_each_round(n, rounds):
    """One seed; as many receivers at once as sources; each finished one serves too."""
    sources, waiting, done_rounds = 1, n - 1, 0
    while waiting:
        admitted = 0
        while waiting and plan.admit(admitted, sources):
            admitted += 1
            waiting -= 1
        sources += admitted
        done_rounds += 1
    assert done_rounds == rounds


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
