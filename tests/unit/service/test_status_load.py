"""Status's load view: vLLM's /metrics parsed, the gateway's view beside it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from glmfleet.service.status import load_table, metrics_command, parse_metrics
from testbed.doubles.serving import fake_vllm

REPO = Path(__file__).resolve().parents[3]


def test_parse_metrics_sums_engines_and_ignores_the_rest():
    lines = ['vllm:num_requests_running{engine="0",model_name="m"} 2.0',
             'vllm:num_requests_running{engine="1",model_name="m"} 1.0',
             'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0',
             'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
             'vllm:num_requests_running_other 9']
    assert parse_metrics(lines) == {"running": 3.0, "waiting": 0.0, "kv": 0.25}
    assert parse_metrics(["metrics_error=URLError"]) == {"running": None, "waiting": None, "kv": None}


def test_metrics_command_reads_the_double_like_real_vllm():
    """The command status runs on a host, against the serving double's /metrics."""
    cfg = fake_vllm.parse_args(["serve", "/m", "--host", "127.0.0.1", "--port", "18779",
                                "--served-model-name", "glm-5.2"])
    threading.Thread(target=fake_vllm.serve, args=(cfg,), daemon=True).start()
    for _ in range(50):
        out = subprocess.run(["sh", "-c", metrics_command("0.0.0.0", 18779)], capture_output=True,
                             text=True, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}).stdout
        if "vllm:" in out:
            break
        time.sleep(0.1)
    assert parse_metrics(out.splitlines()) == {"running": 0.0, "waiting": 0.0, "kv": 0.0}


def test_load_table_with_and_without_a_gateway():
    rows = {"a": {}, "b": {}}
    metrics = {"a": {"running": 1.0, "waiting": 0.0, "kv": 0.5}, "b": {"running": None, "waiting": None, "kv": None}}
    text = load_table(rows, metrics, {"a": {"state": "UP", "scur": 1, "stot": 40}})
    assert "Through the gateway" in text
    a = next(line for line in text.splitlines() if line.startswith("a "))
    assert a.split() == ["a", "UP", "1", "40", "1", "0", "50.0%"]
    b = next(line for line in text.splitlines() if line.startswith("b "))
    assert b.split() == ["b", "-", "-", "-", "-", "-", "-"]
    assert "no gateway in the inventory" in load_table(rows, metrics, None)
