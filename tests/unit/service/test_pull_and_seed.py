"""The background image pull and the JIT cache seeding: their pure parts, and the pull's
host script run for real with a stand-in `docker` on PATH."""

from __future__ import annotations

import os
import subprocess
import time

from glmfleet.service import imagepull, jitseed

GPU = {"driver": "595.45.04", "gpus": [{"name": "NVIDIA RTX PRO 6000 Blackwell"}] * 4}
VALUES = {"COMPOSE_PROJECT_NAME": "glm52", "TP": "4", "MAX_NUM_SEQS": "2", "API_KEY": "set",
          "PORT": "8000", "docker-compose.yml": "abc", "serve.sh": "def"}


def test_background_pull_is_started_once_per_image():
    st = imagepull.parse_state(["image_id=", "job_image=", "job_running=0", "job_rc="])
    assert imagepull.background_due(st, "r/i:1") == (True, "")
    running = imagepull.parse_state(["image_id=", "job_image=r/i:1", "job_running=1", "job_rc="])
    assert "is running" in imagepull.background_due(running, "r/i:1")[1]
    failed = imagepull.parse_state(["job_image=r/i:1", "job_running=0", "job_rc=1"])
    due, why = imagepull.background_due(failed, "r/i:1")
    assert not due and "exit 1" in why and "foreground" in why
    assert imagepull.background_due(failed, "r/i:2")[0]  # another image: a new pull
    present = imagepull.parse_state(["image_id=sha256:ab", "job_image=r/i:1"])
    assert not imagepull.background_due(present, "r/i:1")[0]


def test_pull_script_runs_detached_and_timestamps_every_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\n[ \"$1\" = pull ] || exit 1\necho \"1: Pulling from $2\"\n"
                                    "sleep 0.3\necho 'Status: Downloaded newer image'\n")
    (bin_dir / "docker").chmod(0o755)
    log, state = tmp_path / "pull.log", tmp_path / "state"
    script = imagepull.start_command("r/i:1").replace(imagepull.LOG, str(log)).replace(
        imagepull.STATE, str(state)).replace("/var/log/glmfleet", str(tmp_path))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    started = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=10)
    assert started.returncode == 0, started.stderr  # returns at once, the pull goes on
    for _ in range(100):
        if (state / "rc").exists():
            break
        time.sleep(0.1)
    assert (state / "rc").read_text().strip() == "0"
    assert (state / "image").read_text().strip() == "r/i:1"
    lines = log.read_text().splitlines()
    assert lines[0].endswith("pull started: docker pull r/i:1")
    assert any(ln.endswith("Status: Downloaded newer image") for ln in lines)
    assert lines[-1].endswith("pull finished: exit 0")
    for ln in lines:  # every line carries the host's time, as the weights log does
        time.strptime(ln[:19], imagepull.TIME_FORMAT)


def test_seed_key_and_what_differs():
    key, why = jitseed.seed_key("sha256:1", GPU, VALUES)
    assert why == "" and key["gpu"] == "4x NVIDIA RTX PRO 6000 Blackwell"
    assert "API_KEY" not in key["flags"] and "PORT" not in key["flags"]  # not what a compile sees
    other_port = jitseed.seed_key("sha256:1", GPU, {**VALUES, "PORT": "9000"})[0]
    assert jitseed.difference(key, other_port) is None
    assert jitseed.digest(key) == jitseed.digest(other_port)
    h100 = {"driver": "595.45.04", "gpus": [{"name": "NVIDIA H100"}] * 2}
    diff = jitseed.difference(key, jitseed.seed_key("sha256:1", h100, VALUES)[0])
    assert diff.startswith("gpu 2x NVIDIA H100")
    diff = jitseed.difference(key, jitseed.seed_key("sha256:2", {**GPU, "driver": "600.1"},
                                                    {**VALUES, "MAX_NUM_SEQS": "4"})[0])
    assert "image" in diff and "driver 600.1" in diff and "flags MAX_NUM_SEQS" in diff
    assert jitseed.seed_key(None, GPU, VALUES) == (None, "the image id is unknown")
    assert "no preflight facts" in jitseed.seed_key("sha256:1", {}, VALUES)[1]
    assert jitseed.volume_name(VALUES) == "glm52_jit-cache"


def test_behind_a_mirror_the_first_host_pulling_the_image_leads():
    hosts = [("a", "http://m:5000", "img:1"), ("b", "http://m:5000", "img:1"),
             ("c", "http://m:5000", "img:2"), ("d", None, "img:1"), ("e", "http://n:5000", "img:1"),
             ("f", "http://m:5000", "img:2")]
    assert imagepull.pull_lead("a", hosts) is None  # the lead pulls at once
    assert imagepull.pull_lead("b", hosts) == "a"
    assert imagepull.pull_lead("c", hosts) is None and imagepull.pull_lead("f", hosts) == "c"
    assert imagepull.pull_lead("d", hosts) is None  # no mirror: nobody to wait for
    assert imagepull.pull_lead("e", hosts) is None  # alone behind its mirror
    assert imagepull.pull_lead("x", hosts) is None


def test_a_seeded_host_refuses_an_archive_that_is_not_the_canarys(tmp_path, monkeypatch):
    """The fetch (run here against a local http.server) keeps the archive only when its
    sha256 is the one the canary reported over SSH; an altered copy is refused and removed."""
    import hashlib
    import http.server
    import subprocess
    import threading
    from functools import partial

    (tmp_path / "serve").mkdir()
    (tmp_path / "serve/jit-seed.tar.gz").write_bytes(b"kernels" * 1000)
    good = hashlib.sha256(b"kernels" * 1000).hexdigest()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "serve")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(jitseed, "ARCHIVE", str(tmp_path / "got.tar.gz"))
    url = jitseed.url("127.0.0.1", server.server_address[1])
    try:
        bad = subprocess.run(["sh", "-c", jitseed.fetch_command(url, "0" * 64)], capture_output=True, text=True)
        assert bad.returncode != 0 and "does not match the sha256" in bad.stderr
        assert not list(tmp_path.glob("got.tar.gz*"))
        ok = subprocess.run(["sh", "-c", jitseed.fetch_command(url, good)], capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
        assert (tmp_path / "got.tar.gz").read_bytes() == b"kernels" * 1000
    finally:
        server.shutdown()
    assert jitseed.url("fd00::1", 7481) == "http://[fd00::1]:7481/jit-seed.tar.gz"
