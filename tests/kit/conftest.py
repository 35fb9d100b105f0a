"""Fixtures for the box-kit tests.

A kit is rendered with the real renderer into a temp folder and its real scripts are run.
Docker is replaced at its edge: COMPOSE_CMD points launch.sh at fake_compose.py (a test
double), which runs the kit's own serve.sh with the fake vLLM server (testbed/doubles/serving,
a test double of the serving image) on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from glmfleet.kit.index_pattern import derive
from glmfleet.kit.render import render_kit, write_kit
from glmfleet.settings import load_defaults, validate

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FAKE_COMPOSE = HERE / "fake_compose.py"
SKIP_LINE = "Using index_topk_pattern/index_topk_freq to skip sparse MLA indexer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, predicate, timeout: float = 20, interval: float = 0.1):
    """Poll predicate until it returns something truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def http_get(url: str, api_key: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


class Kit:
    """One rendered kit folder and helpers to run its scripts."""

    def __init__(self, root: Path, **overrides):
        data = load_defaults()
        data.update(model_revision="0" * 40, bind_address="127.0.0.1", port=free_port(),
                    weights_dir=str(root / "weights"), ready_timeout_s=60, smoke_timeout_s=30)
        data.update(overrides)
        self.settings = validate("kit-test", data)
        self.pattern, _ = derive(None, self.settings.index_topk_pattern)
        self.dir = root / "kit"
        (root / "weights").mkdir(parents=True, exist_ok=True)
        # What serve.sh reads of the checkpoint: its layer count (one pattern letter per layer).
        (root / "weights" / "config.json").write_text(json.dumps({"num_hidden_layers": len(self.pattern)}))
        self.record_path = root / "record.jsonl"
        write_kit(self.dir, render_kit(self.settings, self.pattern))
        (self.dir / ".glmfleet-test-seams").write_text("test kit: COMPOSE_CMD, LOG_CMD, SERVE_PYTHON, SERVE_MODEL_DIR act\n")
        self.base_url = f"http://127.0.0.1:{self.settings.port}"
        self.monitors: list[subprocess.Popen] = []

    def env(self, **extra: str | None) -> dict[str, str]:
        """A clean environment for the scripts; a None value leaves the variable out."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "COMPOSE_CMD": f"{sys.executable} {FAKE_COMPOSE}",
            "LOG_CMD": "exec tail -n +1 -F .fake-compose/container.log 2>/dev/null",
            "FAKE_VLLM_STATS_INTERVAL": "0.3", "FAKE_VLLM_TOKEN_DELAY": "0.0005",
            "FAKE_VLLM_COMPILE_S": "0.2", "FAKE_VLLM_AUTOTUNE_S": "0.05",
            "FAKE_VLLM_RECORD": str(self.record_path),
        }
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    def run(self, *argv: str, env: dict | None = None, timeout: float = 90,
            input: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), cwd=self.dir, env=env or self.env(), capture_output=True,
                              text=True, timeout=timeout, start_new_session=True, input=input)

    def compose(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return self.run(sys.executable, str(FAKE_COMPOSE), *args, env=env)

    def start_monitor(self, **env: str | None) -> subprocess.Popen:
        proc = subprocess.Popen(["./monitor.sh"], cwd=self.dir, env=self.env(**env), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.monitors.append(proc)
        return proc

    def stop_monitor(self, timeout: float = 10) -> None:
        pid_file = self.dir / "logs" / "monitor.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
            wait_for("the monitor to stop", lambda: not pid_file.exists(), timeout)
        for proc in self.monitors:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.monitors.clear()

    def records(self, event: str) -> list[dict]:
        """What the serving double recorded (FAKE_VLLM_RECORD): "boot" or "chat" events."""
        if not self.record_path.exists():
            return []
        lines = self.record_path.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["event"] == event]

    def container_log(self) -> str:
        path = self.dir / ".fake-compose" / "container.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def peaks(self) -> dict | None:
        try:
            return json.loads((self.dir / "logs" / "peak.json").read_text())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        self.stop_monitor()
        self.compose("down")


@pytest.fixture
def make_kit(tmp_path):
    kits: list[Kit] = []

    def make(**overrides) -> Kit:
        kit = Kit(tmp_path / f"k{len(kits)}", **overrides)
        kits.append(kit)
        return kit

    yield make
    for kit in kits:
        kit.cleanup()


@pytest.fixture(scope="module")
def served_kit(tmp_path_factory):
    """A kit whose fake vLLM is up (started the way compose would, thinking on)."""
    kit = Kit(tmp_path_factory.mktemp("served"))
    assert kit.compose("up", "-d").returncode == 0
    wait_for("the fake vLLM to answer", lambda: http_get(kit.base_url + "/v1/models") == 200)
    yield kit
    kit.cleanup()
