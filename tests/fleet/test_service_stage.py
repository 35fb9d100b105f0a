"""The service stage on the simulated fleet, through the real pyinfra CLI.

Real here: SSH, pyinfra, dockerd (Debian 12's docker.io 20.10, through the fleet's apt proxy),
Debian's docker-compose 1.29, the box kit's own launch.sh / serve.sh / monitor.sh, the
container runtime. Test doubles, each at the outermost edge:
  * the serving image: the fake vLLM (testbed/doubles/serving/image.py) imported under the
    real image's name; "broken" variants of it have a fault switch baked into the image;
  * nvidia-container-runtime-hook: a no-op stand-in (image.HOOK_STANDIN) on dockerd's PATH,
    which is what makes dockerd accept the compose file's GPU reservation (no GPUs here);
  * the weights: a tiny weights dir with a config.json and the weights stage's VERIFIED
    marker (the weights stage is tested on its own).
Where this machine lacks CAP_SYS_RESOURCE (sandboxed CI), a privileged container or an
unlimited memlock cannot start at all; then the test hosts get a site compose override
(docker-compose.override.yml, never written or managed by the deploy) that turns both off.

One fleet of three hosts (sv-a, sv-b, sv-c, in that inventory order: sv-a is the canary),
shared by the tests of this module, in order: a first deploy, an unchanged re-run, a
monitor.sh killed and started again by a re-run, a settings change on one host, a broken
image (canary fails, rolls back, rollout stops), a
wrong boot log on one host, unverified weights refused, the API key.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from glmfleet.kit.index_pattern import DEFAULT_PATTERN
from glmfleet.settings import load_defaults
from testbed.doubles.serving import image as serving_image

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("sv-a", "sv-b", "sv-c")
REVISION = "3c1f2e0d9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
DEFAULTS = load_defaults()
IMAGE = DEFAULTS["image"]  # the double is tagged as the real image
BROKEN = "glmfleet-test/vllm:broken-boot"
WRONG_SKIPS = "glmfleet-test/vllm:wrong-skips"
SERVICE_DIR, WEIGHTS_DIR, NAME = DEFAULTS["service_dir"], DEFAULTS["weights_dir"], DEFAULTS["service_name"]
DEPLOY = 'from pyinfra import local\nlocal.include("tasks/service.py")\n'
API_KEY = "sk-glmfleet-test-4f9a2c7e11"

def _host_files() -> dict:
    config = {"num_hidden_layers": 78,
              "indexer_types": ["full" if c == "F" else "shared" for c in DEFAULT_PATTERN]}
    files = {
        "/usr/local/bin/nvidia-container-runtime-hook": (serving_image.HOOK_STANDIN, 0o755),
        f"{WEIGHTS_DIR}/config.json": json.dumps(config),
        f"{WEIGHTS_DIR}/model-00001-of-00001.safetensors": b"\0" * 1024,
        f"{WEIGHTS_DIR}/.glmfleet/VERIFIED": REVISION + "\n",
    }
    override = serving_image.site_override(NAME)
    if override:
        files[f"{SERVICE_DIR}/docker-compose.override.yml"] = override
    return files


@pytest.fixture(scope="module")
def svc_fleet(fleet, tmp_path_factory):
    work = tmp_path_factory.mktemp("service")
    made = []
    try:
        for name in HOSTS:
            fleet.add_host(name, files=_host_files(), init="none")  # dockerd pre-started by hand
            made.append(name)
        fleet.start(*HOSTS)
        serving_image.tarball()  # build once, before the threads
        with ThreadPoolExecutor(len(HOSTS)) as pool:
            list(pool.map(lambda h: serving_image.preload(h, IMAGE), [fleet[n] for n in HOSTS]))
        (work / "deploy.py").write_text(DEPLOY)
        # api_key = "open": these hosts serve with no key, said on purpose (the only way).
        yield {"fleet": fleet, "work": work,
               "data": {n: {"model_revision": REVISION, "api_key": "open"} for n in HOSTS}}
    finally:
        for name in made:
            if name in fleet.hosts:
                fleet.remove(name)


def deploy(ctx, cli, *args, hosts=HOSTS, data=None, tag="run", yes=True):
    """Run the real CLI from the repo root with --json; returns (rc, report, stderr, seconds)."""
    inv = ctx["fleet"].write_inventory(ctx["work"] / f"inv-{tag}.py", hosts=list(hosts),
                                       host_data=data or ctx["data"])
    t0 = time.monotonic()
    r = subprocess.run([cli, *(["-y"] if yes else []), "--json", *args, str(inv), str(ctx["work"] / "deploy.py")],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - t0
    (ctx["work"] / f"{tag}.log").write_text(r.stderr)
    try:
        report = json.loads(r.stdout)
    except ValueError:
        # no JSON when every host of the run failed: the run ends with our one-line message
        if r.returncode == 0 or "every host of this run failed" not in r.stderr:
            pytest.fail(f"pyinfra printed no JSON (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
        report = None
    return r.returncode, report, r.stderr, seconds


def changed_hosts(report) -> set[str]:
    return {h for op in report["results"]["operations"] for h in op["success"]}


def errored_hosts(report) -> set[str]:
    return {h for op in report["results"]["operations"] for h in op["error"]}


def container(h) -> dict:
    out = h.exec(f"docker container inspect -f '{{{{.Id}}}}|{{{{.State.StartedAt}}}}|{{{{.Config.Image}}}}|"
                 f"{{{{.State.Running}}}}' {NAME}", check=False).stdout.strip()
    cid, started, img, running = (out.split("|") + ["", "", "", ""])[:4]
    return {"id": cid, "started": started, "image": img, "running": running == "true"}


def api(h, path="/v1/models", body=None, key=None, timeout=10):
    """(status, json) of a request from the controller to the host's endpoint; 0 when it
    does not answer at all."""
    req = urllib.request.Request(f"http://{h.address}:8000{path}", method="POST" if body else "GET",
                                 data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return 0, None


def ready(h, key=None) -> dict:
    status, reply = api(h, "/v1/chat/completions", key=key, body={
        "model": "glm-5.2", "max_tokens": 4000,
        "messages": [{"role": "user", "content": "Reply with exactly one word: READY"}]})
    assert status == 200, status
    message = reply["choices"][0]["message"]
    assert "READY" in message["content"]
    return message


def service_line(log: str, host: str) -> str:
    m = re.search(rf"^\[{host}\] service: (PASS|FAIL): (.*)$", log, re.M)
    assert m, f"no service result for {host}:\n{log[-3000:]}"
    return m.group(0)


@pytest.fixture(scope="module")
def first(svc_fleet, pyinfra_cli):
    rc, report, log, seconds = deploy(svc_fleet, pyinfra_cli, tag="first")
    return {"rc": rc, "report": report, "log": log, "seconds": seconds,
            "containers": {n: container(svc_fleet["fleet"][n]) for n in HOSTS}}


def test_first_deploy_three_hosts_healthy(svc_fleet, first):
    fleet, log = svc_fleet["fleet"], first["log"]
    assert first["rc"] == 0, log[-5000:]
    for name in HOSTS:
        h = fleet[name]
        line = service_line(log, name)
        assert "PASS: started (first start by glmfleet): READY at" in line, line
        assert f"http://{h.address}:8000/v1" in line
        assert "57 indexer-skip lines (= S count), fp8 KV cache" in line
        assert first["containers"][name]["running"] and first["containers"][name]["image"] == IMAGE
        assert api(h)[1]["data"][0]["id"] == "glm-5.2"
        assert ready(h).get("reasoning")  # thinking on by default
        # the kit, its secret file, what runs and the last known good copy
        stat = h.exec(f"cd {SERVICE_DIR} && stat -c '%n %a' .env .env.example launch.sh "
                      ".glmfleet .glmfleet/applied.json .glmfleet/last-good/.env").stdout.split("\n")
        assert stat[:6] == [".env 600", ".env.example 644", "launch.sh 755", ".glmfleet 700",
                            ".glmfleet/applied.json 600", ".glmfleet/last-good/.env 600"], stat
        applied = json.loads(h.exec(f"cat {SERVICE_DIR}/.glmfleet/applied.json").stdout)
        assert applied["revision"] == REVISION and applied["image"] == IMAGE
        assert h.exec(f"test -d {SERVICE_DIR}/.glmfleet/staging", check=False).returncode == 1
    # the canary went first, the other two together after it
    assert re.search(r"\[sv-a\] service: restart: .*\[canary\]", log)
    canary_done = log.index("[sv-a] service: PASS")
    for name in ("sv-b", "sv-c"):
        assert re.search(rf"\[{name}\] service: restart: .*\[batch 1 of 1\]", log)
        assert log.index(f"[{name}] service: restart:") > canary_done
    assert "Service rollout" in log and "Fleet summary" in log


def test_rerun_changes_nothing_and_restarts_nothing(svc_fleet, first, pyinfra_cli):
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, tag="rerun")
    assert rc == 0, log[-4000:]
    assert changed_hosts(report) == set() and errored_hosts(report) == set()
    assert report["results"]["totals"]["success"] == 0
    for name in HOSTS:
        assert container(svc_fleet["fleet"][name]) == first["containers"][name]
        assert "PASS: unchanged, running since" in service_line(log, name)


def monitor_pid(h) -> int | None:
    """The pid of the host's live monitor.sh, None when it is not running."""
    r = h.exec(f"p=$(cat {SERVICE_DIR}/logs/monitor.pid) && kill -0 \"$p\" && echo \"$p\"", check=False)
    return int(r.stdout) if r.returncode == 0 and r.stdout.strip().isdigit() else None


def test_monitor_is_running_and_restarted_by_a_rerun_when_killed(svc_fleet, first, pyinfra_cli):
    """No systemd on the test hosts: the stage starts a dead monitor.sh again (on deploy)."""
    fleet = svc_fleet["fleet"]
    pids = {n: monitor_pid(fleet[n]) for n in HOSTS}
    assert all(pids.values()), pids
    before = {n: container(fleet[n]) for n in HOSTS}
    fleet["sv-c"].exec(f"kill {pids['sv-c']}")
    for _ in range(50):
        if monitor_pid(fleet["sv-c"]) is None:
            break
        time.sleep(0.1)
    assert monitor_pid(fleet["sv-c"]) is None
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, tag="monitor-killed")
    assert rc == 0, log[-4000:]
    assert changed_hosts(report) == {"sv-c"}
    changed_ops = [op["name"] for op in report["results"]["operations"] if op["success"]]
    assert len(changed_ops) == 1 and "monitor.sh supervised" in changed_ops[0], changed_ops
    assert {n: container(fleet[n]) for n in HOSTS} == before  # the service was not restarted
    for _ in range(50):
        if monitor_pid(fleet["sv-c"]):
            break
        time.sleep(0.1)
    assert monitor_pid(fleet["sv-c"]) not in (None, pids["sv-c"])
    assert {n: monitor_pid(fleet[n]) for n in ("sv-a", "sv-b")} == {n: pids[n] for n in ("sv-a", "sv-b")}


def test_thinking_off_restarts_exactly_that_host(svc_fleet, first, pyinfra_cli):
    fleet = svc_fleet["fleet"]
    svc_fleet["data"]["sv-b"]["enable_thinking"] = False  # kept for the rest of the module
    before = {n: container(fleet[n]) for n in HOSTS}
    # --dry first: says what would change on which host, changes nothing
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, "--dry", tag="thinking-off-dry", yes=False)
    assert rc == 0 and report["results"] is None, log[-3000:]
    rollout_op = next(op for op in report["plan"] if "kit placed" in op["name"])
    assert rollout_op["hosts_with_change"] == ["sv-b"]
    assert ("[sv-b] service would restart: settings changed: enable_thinking (1 -> 0); kit files: .env"
            in log)
    assert {n: container(fleet[n]) for n in HOSTS} == before
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, tag="thinking-off")
    assert rc == 0, log[-4000:]
    assert changed_hosts(report) == {"sv-b"}
    after = {n: container(fleet[n]) for n in HOSTS}
    assert after["sv-b"]["id"] != before["sv-b"]["id"]
    for name in ("sv-a", "sv-c"):
        assert after[name] == before[name]
    line = service_line(log, "sv-b")
    assert "restarted (settings changed: enable_thinking (1 -> 0))" in line and "thinking off" in line
    assert not ready(fleet["sv-b"]).get("reasoning")  # direct answers now
    assert ready(fleet["sv-a"]).get("reasoning")


def test_diff_shows_the_compose_change_and_never_the_env_values(svc_fleet, first, pyinfra_cli):
    """--dry --diff on a kit change: the compose file's diff as pyinfra's files.put shows one;
    .env (it may hold the API key) by its name only."""
    fleet = svc_fleet["fleet"]
    data = {n: dict(d) for n, d in svc_fleet["data"].items()}  # this run only
    old = DEFAULTS["docker_log_max_file"]
    data["sv-c"].update(docker_log_max_file=old + 2, api_key=API_KEY)
    before = {n: container(fleet[n]) for n in HOSTS}
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, "--dry", "--diff", data=data, tag="diff", yes=False)
    assert rc == 0 and report["results"] is None, log[-3000:]
    assert f"Will modify {SERVICE_DIR}/docker-compose.yml" in log, log[-3000:]
    assert f'max-file: "{old}"' in log and f'max-file: "{old + 2}"' in log, log[-3000:]
    assert f"Will write {SERVICE_DIR}/.env (may hold the API key: never diffed)" in log
    assert API_KEY not in log and API_KEY not in json.dumps(report)
    assert {n: container(fleet[n]) for n in HOSTS} == before


def test_status_is_read_only_and_reports_every_host(svc_fleet, first, pyinfra_cli):
    fleet = svc_fleet["fleet"]
    before = {n: container(fleet[n]) for n in HOSTS}
    inv = fleet.write_inventory(svc_fleet["work"] / "inv-status.py", hosts=list(HOSTS),
                                host_data=svc_fleet["data"])
    r = subprocess.run([pyinfra_cli, "-y", str(inv), "tasks/status.py", "--data", "status_harness=core"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    (svc_fleet["work"] / "status.log").write_text(r.stderr)
    assert r.returncode == 0, r.stderr[-4000:]
    status, _, coherence = r.stderr.partition("Fleet coherence (core")
    assert "Service status (3 of 3 hosts serving)" in status
    for name in HOSTS:
        row = next(line for line in status.splitlines() if line.startswith(name + " "))
        assert "running" in row and "answering" in row and "matches settings" in row, row
        assert REVISION[:12] in row and f"http://{fleet[name].address}:8000/v1" in row
        # the kit's coherence harness, run from the controller against each endpoint
        row = next(line for line in coherence.splitlines() if line.startswith(name + " "))
        assert re.match(rf"{name}\s+PASS\s+7/7\s+\d", row), row
    assert {n: container(fleet[n]) for n in HOSTS} == before
    # As from cron: no -y, no terminal, no model_revision (status reports what runs).
    unpinned = {n: {k: v for k, v in d.items() if k != "model_revision"}
                for n, d in svc_fleet["data"].items()}
    inv = fleet.write_inventory(svc_fleet["work"] / "inv-status-cron.py", hosts=list(HOSTS),
                                host_data=unpinned)
    r = subprocess.run([pyinfra_cli, str(inv), "tasks/status.py"], cwd=REPO, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Service status (3 of 3 hosts serving)" in r.stderr and "Press enter" not in r.stderr
    assert "Traceback" not in r.stderr
    # a stopped service shows, and makes the status run fail (still no prompt)
    fleet["sv-c"].exec(f"docker stop {NAME} >/dev/null")
    r = subprocess.run([pyinfra_cli, str(inv), "tasks/status.py"], cwd=REPO, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=300)
    fleet["sv-c"].exec(f"docker start {NAME} >/dev/null")
    assert r.returncode == 1, r.stderr[-4000:]
    assert "Press enter" not in r.stderr and "Traceback" not in r.stderr
    row = next(line for line in r.stderr.splitlines() if line.startswith("sv-c "))
    assert "stopped" in row and "not answering" in row, row
    for _ in range(50):  # back up before the next test
        if api(fleet["sv-c"], timeout=2)[0] == 200:
            break
        time.sleep(0.2)


def test_broken_image_canary_fails_rolls_back_and_stops(svc_fleet, first, pyinfra_cli):
    fleet = svc_fleet["fleet"]
    with ThreadPoolExecutor(len(HOSTS)) as pool:  # what a registry would give every host
        list(pool.map(lambda n: serving_image.import_image(fleet[n], BROKEN, {"FAKE_VLLM_FAIL": "boot"}),
                      HOSTS))
    before = {n: container(fleet[n]) for n in HOSTS}
    kits = {n: fleet[n].exec(f"cat {SERVICE_DIR}/docker-compose.yml {SERVICE_DIR}/.env").stdout
            for n in HOSTS}
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, "--data", f"image={BROKEN}", tag="broken")
    assert rc != 0
    assert errored_hosts(report) == {"sv-a"}
    assert changed_hosts(report) == set()  # sv-b and sv-c were never touched
    canary = service_line(log, "sv-a")
    assert "FAIL: health check failed:" in canary
    assert "rolled back to the last known good kit" in canary and "READY again" in canary
    for name in ("sv-b", "sv-c"):
        assert "not rolled out: the rollout stopped after sv-a failed" in service_line(log, name)
        assert container(fleet[name]) == before[name]  # untouched, still the same container
        ready(fleet[name])
    # the canary serves its previous kit again: same files, the old image, answering
    after = container(fleet["sv-a"])
    assert after["running"] and after["image"] == IMAGE and after["id"] != before["sv-a"]["id"]
    assert fleet["sv-a"].exec(f"cat {SERVICE_DIR}/docker-compose.yml {SERVICE_DIR}/.env").stdout == kits["sv-a"]
    ready(fleet["sv-a"])
    # back on the previous settings, nothing is left to do anywhere
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, tag="after-rollback")
    assert rc == 0 and changed_hosts(report) == set(), log[-4000:]


def test_wrong_skip_line_count_fails_the_host(svc_fleet, first, pyinfra_cli):
    fleet = svc_fleet["fleet"]
    serving_image.import_image(fleet["sv-c"], WRONG_SKIPS, {"FAKE_VLLM_WRONG_SKIPS": "3"})
    others = {n: container(fleet[n]) for n in ("sv-a", "sv-b")}
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, "--limit", "sv-c", "--data",
                                f"image={WRONG_SKIPS}", tag="wrong-skips")
    assert rc != 0 and report is None  # its only host failed
    line = service_line(log, "sv-c")
    # every worker logged 3 (real vLLM: each TP worker logs its own, prefixed)
    assert "(worker TP0: 3, worker TP1: 3, worker TP2: 3, worker TP3: 3), expected 57 from each worker" in line, line
    assert "rolled back to the last known good kit" in line
    assert container(fleet["sv-c"])["image"] == IMAGE
    ready(fleet["sv-c"])
    assert {n: container(fleet[n]) for n in ("sv-a", "sv-b")} == others  # --limit kept its meaning


def test_unverified_weights_are_refused_without_change(svc_fleet, first, pyinfra_cli):
    fleet = svc_fleet["fleet"]
    before = container(fleet["sv-c"])
    other = "ffffffffffffffffffffffffffffffffffffffff"
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, "--limit", "sv-c", "--data",
                                f"model_revision={other}", tag="unverified")
    assert rc != 0 and report is None  # its only host failed
    assert "service not started" in log
    line = service_line(log, "sv-c")
    assert f"verified for revision {REVISION}, not the pinned {other}" in line, line
    assert "the service was not started" in line
    assert container(fleet["sv-c"]) == before


def test_api_key_enforced_and_never_printed(svc_fleet, first, pyinfra_cli):
    fleet = svc_fleet["fleet"]
    h = fleet["sv-a"]
    # api_key unset on a host that serves with no key: refused, both choices named, no change.
    del svc_fleet["data"]["sv-a"]["api_key"]
    before = container(h)
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, "--limit", "sv-a", tag="api-key-unset")
    assert rc != 0
    line = service_line(log, "sv-a")
    assert 'api_key = "generate"' in line and 'api_key = "open"' in line, line
    assert container(h) == before and api(h)[0] == 200
    svc_fleet["data"]["sv-a"]["api_key"] = API_KEY
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, "-vvv", "--diff", "--limit", "sv-a",
                                tag="api-key")
    assert rc == 0, log[-4000:]
    assert changed_hosts(report) == {"sv-a"}
    assert "API exposure: was open, now a key is required" in service_line(log, "sv-a")
    assert API_KEY not in log and API_KEY not in json.dumps(report)
    assert api(h)[0] == 401
    assert api(h, key="wrong-key-123")[0] == 401
    assert api(h, key=API_KEY)[0] == 200
    ready(h, key=API_KEY)
    assert h.exec(f"stat -c %a {SERVICE_DIR}/.env").stdout.strip() == "600"
    assert API_KEY in h.exec(f"cat {SERVICE_DIR}/.env").stdout
    assert API_KEY not in h.exec(f"cat {SERVICE_DIR}/.env.example {SERVICE_DIR}/logs/serve.log "
                                 f"{SERVICE_DIR}/logs/monitor.out 2>/dev/null; true").stdout
    assert API_KEY not in h.exec(f"docker logs {NAME} 2>&1; ps -eo args").stdout
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, "--limit", "sv-a", tag="api-key-rerun")
    assert rc == 0 and changed_hosts(report) == set(), log[-4000:]
    # A run that forgets the key keeps the one the host has (it never reopens the API).
    del svc_fleet["data"]["sv-a"]["api_key"]
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, "-vvv", "--limit", "sv-a", tag="api-key-kept")
    assert rc == 0 and changed_hosts(report) == set(), log[-4000:]
    assert API_KEY not in log and api(h)[0] == 401 and api(h, key=API_KEY)[0] == 200
    # Opening it again takes "open", and the output says so.
    svc_fleet["data"]["sv-a"]["api_key"] = "open"
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, "--limit", "sv-a", tag="api-key-open")
    assert rc == 0, log[-4000:]
    assert "API exposure: key REMOVED" in service_line(log, "sv-a")
    assert api(h)[0] == 200


@pytest.mark.parametrize("mode", [["--serial"], ["--parallel", "1"], ["--no-wait"]])
def test_rollout_under_pyinfra_execution_modes(svc_fleet, first, pyinfra_cli, mode):
    """A launch-only setting (no restart) rolled out with pyinfra's --serial, a pool of one
    (--parallel 1) and --no-wait: no deadlock, every host updated, no container restarted."""
    fleet = svc_fleet["fleet"]
    before = {n: container(fleet[n]) for n in HOSTS}
    timeout = {"--serial": 1900, "--parallel": 2000, "--no-wait": 2100}[mode[0]]
    rc, report, log, _ = deploy(svc_fleet, pyinfra_cli, *mode, "--data",
                                      f"ready_timeout_s={timeout}", tag=f"mode{mode[0]}")
    assert rc == 0, log[-4000:]
    assert changed_hosts(report) == set(HOSTS)
    for name in HOSTS:
        assert "kit files updated (.env, .env.example); no restart needed" in service_line(log, name)
        assert f"READY_TIMEOUT={timeout}" in fleet[name].exec(f"cat {SERVICE_DIR}/.env").stdout
    assert {n: container(fleet[n]) for n in HOSTS} == before
