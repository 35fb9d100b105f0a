"""The front door on the simulated fleet: HAProxy (Debian's, through the fleet's apt proxy) on
a gateway host in front of three serving hosts, all on the fleet's site network.

Real here: SSH, pyinfra, apt, HAProxy and its runtime API, dockerd, compose, the box kit.
Doubles as in test_service_stage.py (the serving image, the weights marker). Traffic stays on
the test hosts' addresses: the client (this process) talks to the gateway's link address,
the gateway to the serving hosts' site addresses. Every request loop is bounded in count.

One fleet for the module, in order: a first deploy (services + gateway), leastconn spreading
concurrent requests over every host, a dead service taken out by the health check, a rolling
restart of all three hosts under a streaming client loop with zero failures, the status.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from glmfleet.gateway import plan as gw
from test_service_stage import IMAGE, NAME, REVISION, _host_files, container
from testbed.doubles.serving import image as serving_image

REPO = Path(__file__).resolve().parents[2]
SERVING = ("gw-a", "gw-b", "gw-c")
GATEWAY = "gw-lb"
PORT = 8080
DEPLOY = '''from pyinfra import host, local, state
from glmfleet.gateway.ops import write_prometheus_targets
from glmfleet.roles import is_gateway
gateway = is_gateway(host.groups)
if not gateway:
    local.include("tasks/service.py")
if gateway:
    local.include("tasks/gateway.py")
write_prometheus_targets(host.state)
'''


@pytest.fixture(scope="module")
def gw_fleet(fleet, tmp_path_factory):
    work = tmp_path_factory.mktemp("gateway")
    made = []
    try:
        for name in SERVING:
            fleet.add_host(name, files=_host_files(), site=True)
            made.append(name)
        fleet.add_host(GATEWAY, site=True)
        made.append(GATEWAY)
        fleet.start(*made)
        serving_image.tarball()
        with ThreadPoolExecutor(len(SERVING)) as pool:
            list(pool.map(lambda h: serving_image.preload(h, IMAGE), [fleet[n] for n in SERVING]))
        (work / "deploy.py").write_text(DEPLOY)
        data = {n: {"model_revision": REVISION, "site_address": fleet[n].site_address, "api_key": "open"}
                for n in SERVING}  # the clients below send no key
        data[GATEWAY] = {"model_revision": REVISION}  # pinned fleet-wide, as in group_data/all.py
        yield {"fleet": fleet, "work": work, "data": data}
    finally:
        for name in made:
            if name in fleet.hosts:
                fleet.remove(name)


def inventory(ctx, tag: str) -> Path:
    """Two groups: the serving hosts and the `gateway` group."""
    fleet, work = ctx["fleet"], ctx["work"]
    gpu = fleet.write_inventory(work / f"gpu-{tag}.py", hosts=list(SERVING), host_data=ctx["data"], group="gpu")
    lb = fleet.write_inventory(work / f"lb-{tag}.py", hosts=[GATEWAY], host_data=ctx["data"], group="gateway")
    inv = work / f"inv-{tag}.py"
    inv.write_text(gpu.read_text() + lb.read_text())
    return inv


def deploy(ctx, cli, *args, tag="run", script=None):
    """The real CLI from the repo root (config.py, tasks/); returns (rc, --json report, log)."""
    inv = inventory(ctx, tag)
    targets = ctx["work"] / "prometheus-targets.json"
    r = subprocess.run([cli, "-y", *([] if script else ["--json"]), *args, "--data",
                        f"prometheus_targets={targets}", str(inv), script or str(ctx["work"] / "deploy.py")],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    (ctx["work"] / f"{tag}.log").write_text(r.stderr)
    try:
        report = json.loads(r.stdout) if not script else None
    except ValueError:
        report = None
    return r.returncode, report, r.stderr


def changed_hosts(report) -> set[str]:
    return {h for op in report["results"]["operations"] for h in op["success"]}


def stat(ctx) -> dict[str, dict]:
    out = ctx["fleet"][GATEWAY].exec(gw.SHOW_STAT).stdout
    return gw.parse_show_stat(out)


def wait_state(ctx, server: str, want: str, limit: int = 150) -> str:
    for _ in range(limit):  # bounded: 150 x 0.2 s
        got = gw.gateway_state(stat(ctx).get(server, {}).get("status", ""))
        if got == want:
            return got
        time.sleep(0.2)
    return got


def ask(ctx, stream: bool = True, timeout: float = 60) -> str:
    """One chat completion through the gateway; returns "ok" or what went wrong."""
    body = {"model": "glm-5.2", "max_tokens": 4000, "stream": stream,
            "messages": [{"role": "user", "content": "Reply with exactly one word: READY"}]}
    conn = http.client.HTTPConnection(ctx["fleet"][GATEWAY].address, PORT, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read().decode()
        if resp.status != 200:
            return f"HTTP {resp.status}: {data[:200]}"
        if stream:
            if not data.rstrip().endswith("data: [DONE]"):
                return "stream cut short: " + data[-200:]
            text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                           for line in data.splitlines()
                           if line.startswith("data: {") and json.loads(line[6:])["choices"])
        else:
            text = json.loads(data)["choices"][0]["message"]["content"]
        return "ok" if "READY" in text else f"unexpected answer: {text[:100]}"
    except (OSError, http.client.HTTPException, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        conn.close()


@pytest.fixture(scope="module")
def first(gw_fleet, pyinfra_cli):
    rc, _, log = deploy(gw_fleet, pyinfra_cli, tag="first")
    assert rc == 0, log[-6000:]
    return log


def test_first_deploy_puts_every_host_behind_the_gateway(gw_fleet, first):
    fleet = gw_fleet["fleet"]
    assert f"[{GATEWAY}] gateway: PASS: config placed, HAProxy serving the fleet at http://" in first
    cfg = fleet[GATEWAY].exec(f"cat {gw.CONFIG_PATH}").stdout
    for name in SERVING:
        assert f"server {name} {fleet[name].site_address}:8000 maxconn 2" in cfg
        assert wait_state(gw_fleet, name, "UP") == "UP"
    # the targets file for Prometheus, beside where pyinfra ran
    targets = json.loads((gw_fleet["work"] / "prometheus-targets.json").read_text())
    assert {t["targets"][0] for t in targets} == {f"{fleet[n].site_address}:8000" for n in SERVING} | {
        f"{fleet[GATEWAY].address}:8404"}


def test_rerun_changes_nothing(gw_fleet, first, pyinfra_cli):
    before = {n: container(gw_fleet["fleet"][n]) for n in SERVING}
    rc, report, log = deploy(gw_fleet, pyinfra_cli, tag="rerun")
    assert rc == 0, log[-4000:]
    assert f"[{GATEWAY}] gateway: PASS: unchanged" in log
    assert changed_hosts(report) == set(), log[-4000:]
    for name in SERVING:
        assert container(gw_fleet["fleet"][name]) == before[name]


def test_least_connections_spreads_concurrent_requests(gw_fleet, first):
    before = {n: r["stot"] for n, r in stat(gw_fleet).items()}
    with ThreadPoolExecutor(9) as pool:
        results = list(pool.map(lambda _: ask(gw_fleet), range(9)))
    assert results == ["ok"] * 9, results
    after = {n: r["stot"] for n, r in stat(gw_fleet).items()}
    served = {n: after[n] - before[n] for n in SERVING}
    assert all(v >= 1 for v in served.values()), served  # every host took some
    assert sum(served.values()) >= 9


def test_a_dead_service_is_taken_out_and_clients_see_no_error(gw_fleet, first):
    fleet = gw_fleet["fleet"]
    fleet["gw-c"].exec(f"docker stop -t 1 {NAME} >/dev/null")  # no restart policy applies
    try:
        assert wait_state(gw_fleet, "gw-c", "DOWN") == "DOWN"
        results = [ask(gw_fleet, stream=i % 2 == 0) for i in range(12)]
        assert results == ["ok"] * 12, results
    finally:
        fleet["gw-c"].exec(f"docker start {NAME} >/dev/null")
    assert wait_state(gw_fleet, "gw-c", "UP") == "UP"


def test_rolling_restart_under_load_drops_no_request(gw_fleet, first, pyinfra_cli):
    fleet = gw_fleet["fleet"]
    before = {n: container(fleet[n]) for n in SERVING}
    for name in SERVING:  # a setting that restarts every host
        gw_fleet["data"][name]["enable_thinking"] = False
    done, results = threading.Event(), []

    def client():
        for _ in range(3000):  # bounded; ends as soon as the deploy has
            if done.is_set():
                return
            results.append(ask(gw_fleet))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        rc, _, log = deploy(gw_fleet, pyinfra_cli, tag="rolling")
    finally:
        done.set()
        for t in threads:
            t.join(timeout=120)
    assert rc == 0, log[-6000:]
    failures = [r for r in results if r != "ok"]
    assert results and not failures, (len(results), failures[:5])
    for name in SERVING:
        assert container(fleet[name])["id"] != before[name]["id"]  # really restarted
        assert re.search(rf"\[{name}\]\s+gateway: draining {name}", log)  # prefix padded to the longest name
        assert re.search(rf"\[{name}\]\s+gateway: back in the backend \(UP\)", log)
        assert wait_state(gw_fleet, name, "UP") == "UP"


def test_status_shows_the_gateway_view_and_metrics(gw_fleet, first, pyinfra_cli):
    ask(gw_fleet)
    rc, _, log = deploy(gw_fleet, pyinfra_cli, tag="status", script="tasks/status.py")
    assert rc == 0, log[-4000:]
    view = log[log.index("Through the gateway"):]
    for name in SERVING:
        row = next(line for line in view.splitlines() if line.startswith(name + " "))
        cells = row.split()
        assert cells[1] == "UP", row
        assert int(cells[3]) >= 1, row  # total sessions through the gateway
        assert cells[4] == "0" and cells[5] == "0", row  # running, waiting (idle now)
