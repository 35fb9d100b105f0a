"""The service stage's pure decisions: restart-on-change, weights gate, boot-log health,
endpoint, host facts parsing, and the rollout order (canary, batches, stop)."""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess

import pytest

from glmfleet.service import plan as svc
from glmfleet.kit.index_pattern import DEFAULT_PATTERN
from glmfleet.kit.render import render_kit
from glmfleet.settings import load_defaults, validate

REV = "0123456789abcdef0123456789abcdef01234567"
IMAGE_ID = "sha256:" + "a" * 64


def settings(**over):
    data = {**load_defaults(), "model_revision": REV, **over}
    return validate("h1", data)


def kit(**over):
    return render_kit(settings(**over), DEFAULT_PATTERN)


def on_host(files):
    """What the ServiceFacts command reports for files placed exactly as rendered."""
    return {p: svc.file_digest(c, m) for p, (c, m) in files.items()}


def plan(new_files, *, current=None, applied="same", image=None, image_id=IMAGE_ID, revision=REV,
         running=True):
    base = kit()
    want = svc.desired_applied(new_files, image or settings().image, image_id, revision)
    if applied == "same":
        applied = svc.desired_applied(base, settings().image, IMAGE_ID, REV)
    return svc.plan_change(new_files, on_host(base) if current is None else current, applied, want, running)


# --- restart only on change ------------------------------------------------------------------

def test_unchanged_host_needs_nothing():
    p = plan(kit())
    assert p.action == "none" and not p.changes and p.files == ()


def test_thinking_off_restarts_and_rewrites_env():
    p = plan(kit(enable_thinking=False))
    assert p.action == "restart"
    assert p.files == (".env", ".env.example")
    assert p.reasons == ("settings changed: enable_thinking (1 -> 0)",)  # the setting is named


def test_restart_reason_names_settings_and_never_the_key():
    p = plan(kit(max_num_seqs=4, gpu_memory_utilization=0.9))
    assert p.reasons == ("settings changed: gpu_memory_utilization (0.95 -> 0.9), max_num_seqs (2 -> 4)",)
    p = plan(kit(api_key="a-new-secret-key-1"))
    assert p.reasons == ("settings changed: api_key (none -> set)",)
    base = kit(api_key="old-secret-key-12")
    new = kit(api_key="new-secret-key-34")
    p = svc.plan_change(new, on_host(base), svc.desired_applied(base, settings().image, IMAGE_ID, REV),
                        svc.desired_applied(new, settings().image, IMAGE_ID, REV), True)
    assert p.reasons == ("api_key (the API key changed)",) and "secret" not in repr(p)
    # applied.json written by an older glmfleet has no values: the old wording
    old = dataclasses.replace(svc.desired_applied(base, settings().image, IMAGE_ID, REV), values=None)
    p = svc.plan_change(new, on_host(base), old, svc.desired_applied(new, settings().image, IMAGE_ID, REV), True)
    assert p.reasons == ("compose file / .env / serve.sh changed",)


def test_launch_only_settings_change_files_without_restart():
    # READY_TIMEOUT is read by launch.sh, not by the container: no restart for it
    p = plan(kit(ready_timeout_s=3600))
    assert p.action == "files" and p.files == (".env", ".env.example")


def test_new_image_tag_restarts():
    p = plan(kit(image="example/vllm:other"), image="example/vllm:other")
    assert p.action == "restart" and "docker-compose.yml" in p.files
    assert any(r.startswith("image ") for r in p.reasons)


def test_same_tag_new_build_restarts_without_file_change():
    p = plan(kit(), image_id="sha256:" + "b" * 64)
    assert p.action == "restart" and p.files == ()
    assert p.reasons == ("new image build under the same tag",)


def test_image_not_pulled_yet_counts_as_a_change():
    assert plan(kit(), image_id=None).action == "restart"


def test_new_weights_revision_restarts():
    p = plan(kit(), revision="f" * 40)
    assert p.action == "restart" and p.files == ()
    assert p.reasons == (f"weights revision {REV} -> {'f' * 40}",)


def test_first_start_and_hand_edited_kit():
    assert plan(kit(), current={}, applied=None).reasons == ("first start by glmfleet",)
    files = kit()
    current = on_host(files)
    current[".env"] = ("0" * 64, "600")  # edited by hand on the box
    p = plan(files, current=current)
    assert p.action == "files" and p.files == (".env",)  # put back; what runs did not change
    current = on_host(files)
    current[".env"] = (current[".env"][0], "644")  # the secret file made world-readable
    assert plan(files, current=current).files == (".env",)


def test_stopped_container_is_started_not_restarted():
    p = plan(kit(), running=False)
    assert p.action == "start" and p.changes
    assert "start: the container is not running" in p.describe()


def test_applied_round_trip_and_garbage():
    a = svc.Applied("r" * 64, "img:1", IMAGE_ID, REV)
    assert svc.Applied.from_json(a.to_json()) == a
    assert svc.Applied.from_json("not json") is None
    assert svc.Applied.from_json(None) is None
    assert svc.Applied.from_json("[]") is None


# --- weights gate ----------------------------------------------------------------------------

def test_weights_must_be_verified_for_the_pinned_revision():
    assert svc.weights_problem(REV + "\n", REV, "/w") is None
    missing = svc.weights_problem(None, REV, "/w")
    assert "not verified" in missing and "/w/.glmfleet/VERIFIED" in missing
    other = svc.weights_problem("f" * 40, REV, "/w")
    assert f"verified for revision {'f' * 40}, not the pinned {REV}" in other
    assert "service was not started" in other


# --- boot log --------------------------------------------------------------------------------

def _boot(skips: int, kv_line: str | None) -> list[str]:
    lines = [f"INFO [gpu_model_runner.py] Using index_topk_pattern/index_topk_freq to {svc.SKIP_MARK} "
             f"for layer {i}" for i in range(skips)]
    if kv_line:
        lines.append(kv_line)
    return lines


@pytest.mark.parametrize("kv_line", [
    "INFO Initializing a V1 LLM engine with config: model='/model', kv_cache_dtype=fp8, seed=0",
    "INFO non-default args: {'model': '/model', 'kv_cache_dtype': 'fp8', 'max_model_len': 250000}",
    "INFO kv_cache_dtype=fp8: MLA KV cache stored as fp8 (fp8_ds_mla)",
])
def test_healthy_boot_log(kv_line):
    check = svc.evaluate_boot_log(_boot(57, kv_line), DEFAULT_PATTERN)
    assert check.ok and check.skip_lines == 57 and check.kv_dtype == "fp8"
    assert "57 indexer-skip lines" in check.describe()


def test_wrong_skip_count_fails():
    check = svc.evaluate_boot_log(_boot(3, "kv_cache_dtype=fp8"), DEFAULT_PATTERN)
    assert not check.ok
    assert "3 'skip sparse MLA indexer' lines, expected 57" in check.describe()
    # no pattern at all in effect: zero lines
    assert not svc.evaluate_boot_log(_boot(0, "kv_cache_dtype=fp8"), DEFAULT_PATTERN).ok


def _workers(counts: list[int]) -> list[str]:
    """Skip lines as real vLLM logs them at TP len(counts): each worker's prefixed."""
    return [f"(Worker_TP{rank} pid={1000 + rank}) INFO [gpu_model_runner.py] Using "
            f"index_topk_pattern/index_topk_freq to {svc.SKIP_MARK} for layer {i}"
            for rank, n in enumerate(counts) for i in range(n)] + ["(APIServer pid=9) kv_cache_dtype=fp8"]


def test_skip_lines_are_counted_per_worker():
    check = svc.evaluate_boot_log(_workers([57] * 4), DEFAULT_PATTERN, workers=4)
    assert check.ok and check.workers == 4, check.problems
    assert "57 indexer-skip lines (= S count)" in check.describe() and "4 workers" in check.describe()
    check = svc.evaluate_boot_log(_workers([57, 57, 56, 57]), DEFAULT_PATTERN, workers=4)
    assert not check.ok and "worker TP2: 56" in check.describe() and "expected 57 from each" in check.describe()
    # a worker that logged none at all (it would otherwise go unseen)
    check = svc.evaluate_boot_log(_workers([57, 57, 57]), DEFAULT_PATTERN, workers=4)
    assert not check.ok and "worker TP3: none" in check.describe()
    # older builds' prefix
    old = [ln.replace("Worker_TP", "VllmWorker rank=") for ln in _workers([57, 56])]
    assert "worker TP1: 56" in svc.evaluate_boot_log(old, DEFAULT_PATTERN).describe()
    # no prefixes at all (one process): 57 in all passes
    assert svc.evaluate_boot_log(_boot(57, "kv_cache_dtype=fp8"), DEFAULT_PATTERN, workers=4).ok


def test_kv_cache_must_be_fp8():
    check = svc.evaluate_boot_log(_boot(57, "engine config: kv_cache_dtype=auto, seed=0"), DEFAULT_PATTERN)
    assert not check.ok and "KV cache dtype is auto, not fp8" in check.describe()
    check = svc.evaluate_boot_log(_boot(57, None), DEFAULT_PATTERN)
    assert not check.ok and "does not say which KV cache dtype" in check.describe()


def test_skip_count_follows_the_pattern_in_use():
    pattern = "F" * 70 + "S" * 8
    assert svc.evaluate_boot_log(_boot(8, "kv_cache_dtype=fp8"), pattern).ok
    assert not svc.evaluate_boot_log(_boot(57, "kv_cache_dtype=fp8"), pattern).ok


# --- endpoint --------------------------------------------------------------------------------

def test_endpoint():
    assert svc.endpoint("0.0.0.0", 8000, "gpu-01.lab") == "http://gpu-01.lab:8000/v1"
    assert svc.endpoint("10.0.0.5", 9000, "gpu-01") == "http://10.0.0.5:9000/v1"
    assert svc.endpoint("127.0.0.1", 8000, "gpu-01").startswith("http://127.0.0.1:8000/v1 (loopback")
    assert svc.endpoint("::", 8000, "fd00::5") == "http://[fd00::5]:8000/v1"


# --- host facts ------------------------------------------------------------------------------

def test_fact_command_on_a_local_kit(tmp_path):
    """The real fact command (sh) against a kit written to disk here; docker may be absent."""
    from glmfleet.kit.render import write_kit

    files = kit(api_key="sk-secret-value-1")
    sd, wd = tmp_path / "kit", tmp_path / "weights"
    write_kit(sd, files)
    (wd / ".glmfleet").mkdir(parents=True)
    (wd / ".glmfleet/VERIFIED").write_text(REV + "\n")
    (wd / "config.json").write_text(json.dumps({"num_hidden_layers": 78}))
    (sd / ".glmfleet").mkdir()
    applied = svc.Applied("r" * 64, "img:1", IMAGE_ID, REV)
    (sd / svc.APPLIED).write_text(applied.to_json())
    (sd / "logs").mkdir()
    (sd / "logs/peak.json").write_text(json.dumps({"peak_decode_tps": 61.5}))
    cmd = svc.facts_command(str(sd), str(wd), "img:1", "glm52-vllm-unit-test", tuple(sorted(files)))
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60).stdout
    assert "sk-secret-value-1" not in out  # hashes, never content
    facts = svc.parse_service_facts(out.splitlines())
    assert facts["verified"] == REV
    assert json.loads(facts["config_json"]) == {"num_hidden_layers": 78}
    assert facts["files"] == on_host(files)
    assert svc.Applied.from_json(facts["applied"]) == applied
    assert facts["last_good"] is None and facts["override"] is False
    assert svc.peak_decode(facts["peak"]) == 61.5
    assert facts["docker"] is not None  # "absent", "down" or a version


def test_parse_recorded_facts():
    lines = [
        "verified=" + REV,
        "file=.env|" + "a" * 64 + "|600",
        "applied=" + base64.b64encode(b'{"runtime": "x"}').decode(),
        "docker=20.10.24+dfsg1",
        "image_id=" + IMAGE_ID,
        "container=abc123|true|2026-01-02T03:04:05.123456789Z|" + IMAGE_ID + "|0",
        "compose=docker-compose",
        "override=1",
    ]
    f = svc.parse_service_facts(lines)
    assert f["files"] == {".env": ("a" * 64, "600")}
    assert f["container"]["running"] and f["container"]["id"] == "abc123"
    assert f["compose"] == "docker-compose" and f["override"] is True
    assert f["image_id"] == IMAGE_ID and f["config_json"] is None


# --- rollout ---------------------------------------------------------------------------------

def arrive_all(r, names, changes=True):
    for i, n in enumerate(names):
        r.arrive(n, i, changes)
    r.seal()


def test_canary_then_batches_in_inventory_order():
    r = svc.Rollout(2)
    for i, n in reversed(list(enumerate("abcde"))):  # arrival order does not matter within a group
        r.arrive(n, i, True)
    r.seal()
    assert r.batches() == [["a"], ["b", "c"], ["d", "e"]]
    assert [r.turn(n) for n in "abcde"] == ["go", "wait", "wait", "wait", "wait"]
    assert r.role("a") == "canary" and r.role("d") == "batch 2 of 2"
    r.start("a")
    r.finish("a", True)
    assert [r.turn(n) for n in "bcde"] == ["go", "go", "wait", "wait"]
    r.start("b")
    r.finish("b", True)
    assert r.turn("d") == "wait" and r.blockers("d") == ["c"]  # the whole batch must be done
    r.start("c")
    r.finish("c", True)
    assert r.turn("d") == r.turn("e") == "go"


def test_failure_stops_everyone_not_started():
    r = svc.Rollout(2)
    arrive_all(r, "abc")
    r.start("a")
    r.finish("a", False)
    assert r.turn("b") == r.turn("c") == "stop" and r.failed == ["a"]


def test_failure_in_a_batch_lets_started_peers_finish():
    r = svc.Rollout(2)
    arrive_all(r, "abcd")
    r.start("a"), r.finish("a", True)
    r.start("b"), r.start("c")
    r.finish("b", False)
    assert r.turn("c") == "go"  # already running: it finishes its own work
    assert r.turn("d") == "stop"


def test_unchanged_hosts_are_not_in_the_rollout():
    r = svc.Rollout(1)
    r.arrive("a", 0, False)
    r.arrive("b", 1, True)
    r.arrive("c", 2, True)
    r.seal()
    assert r.batches() == [["b"], ["c"]]  # the first host needing a change is the canary
    assert r.turn("b") == "go" and r.turn("c") == "wait"


def test_dropped_host_is_not_waited_for():
    r = svc.Rollout(2)
    arrive_all(r, "abc")
    r.drop("a")  # failed elsewhere before its turn
    assert r.turn("b") == r.turn("c") == "go"
    r.start("b")
    r.drop("b")  # a host that already started is never dropped: it reports its own result
    assert r.state["b"] == "running"


def test_late_arrival_goes_after_the_sealed_group():
    """A host that arrives after the others were placed (a pool smaller than the fleet,
    --serial, --no-wait) goes after them, whatever its inventory position."""
    r = svc.Rollout(2)
    r.arrive("b", 1, True)
    r.arrive("c", 2, True)
    r.seal()
    r.arrive("a", 0, True)
    assert r.turn("a") == "wait"  # not placed until sealed
    r.seal()
    assert r.sequence == ["b", "c", "a"]


def test_serial_run_goes_one_by_one():
    r = svc.Rollout(2)
    for i, n in enumerate("abc"):  # each host arrives after the previous one finished
        r.arrive(n, i, True)
        r.seal()
        assert r.turn(n) == "go"
        r.start(n)
        r.finish(n, True)


def test_rollout_table(monkeypatch):
    rows = {
        "gpu-01": {"action": "restart", "status": "PASS", "endpoint": "http://gpu-01:8000/v1",
                   "revision": REV, "image": settings().image, "peak_decode": 61.23, "detail": "ok"},
        "gpu-02": {"action": "not rolled out", "status": "FAIL", "detail": "x" * 200},
    }
    text = svc.rollout_table(rows)  # not a terminal: wide, nothing cut
    assert "Service rollout" in text and "61.2" in text and "gpu-02" in text and "x" * 200 in text
    monkeypatch.setattr("glmfleet.report.table_width", lambda: 150)  # a terminal 150 wide
    text = svc.rollout_table(rows)
    assert "x" * 100 not in text and "xxx..." in text
    assert max(len(line) for line in text.splitlines()) <= 150


# --- read-only status and the fleet harness table ---------------------------------------------

from glmfleet.service import status as st  # noqa: E402


def _status_facts(files, applied, running=True, probe_rc="0", restarts="0"):
    return {"files": on_host(files), "applied": applied.to_json() if applied else None,
            "docker": "20.10.24", "container": {"id": "c1", "running": running, "started_at": "x",
                                                "image_id": IMAGE_ID, "restarts": restarts},
            "peak": json.dumps({"peak_prefill_tps": 9000.0, "peak_decode_tps": 61.0}),
            "uptime_s": "93784", "probe_rc": probe_rc}


def test_status_row_healthy_host():
    files = kit()
    applied = svc.desired_applied(files, settings().image, IMAGE_ID, REV)
    row = st.status_row(_status_facts(files, applied), files, REV, "http://h:8000/v1")
    assert row["healthy"] and row["state"] == "running" and row["ready"] == "answering"
    assert row["kit"] == "matches settings" and row["uptime"] == "1d02h"
    assert row["revision"] == REV[:12] and row["peak_decode"] == 61.0
    assert "1 of 1 hosts serving" in st.status_table({"h": row})


def test_status_row_problems():
    files = kit()
    applied = svc.desired_applied(files, settings().image, IMAGE_ID, "f" * 40)
    row = st.status_row(_status_facts(files, applied, running=False, probe_rc="1", restarts="4"),
                        kit(enable_thinking=False), REV, "e")
    assert not row["healthy"]
    assert row["state"] == "stopped (4 restarts)" and row["ready"] == "not answering"
    assert row["revision"].endswith("(not the pinned one)") and row["uptime"] == "-"
    assert row["kit"] == "differs: .env, .env.example"
    assert st.status_row({"files": {}, "docker": "absent"}, files, REV, "e")["state"] == "no docker"
    assert st.status_row({"files": {}, "docker": "1", "probe_rc": "2"}, files, REV, "e")["ready"] == "key refused"


def test_status_needs_no_pin_and_fails_only_a_host_that_is_not_serving():
    files = kit()
    other = svc.desired_applied(files, settings().image, IMAGE_ID, "f" * 40)
    row = st.status_row(_status_facts(files, other), files, None, "e")  # no model_revision
    assert row["healthy"] and row["revision"] == "f" * 12  # what runs, nothing to compare with
    row = st.status_row(_status_facts(files, other), files, REV, "e")  # serving another pin
    assert row["healthy"] and row["revision"].endswith("(not the pinned one)")
    down = st.unreachable_row("unreachable: SSH connection refused: ...")
    assert not down["healthy"] and "refused" in st.status_table({"h": down})


def test_harness_rows_and_table():
    summary = {"ok": False, "passed": 2, "cases": [
        {"name": "logic", "ok": True, "ttft_s": 0.5, "decode_tps": 60.0, "prefill_tps": 900.0},
        {"name": "math", "ok": True, "ttft_s": 0.7, "decode_tps": 58.0, "prefill_tps": 1200.0},
        {"name": "code", "ok": False, "ttft_s": 2.0, "decode_tps": None, "prefill_tps": None}]}
    row = st.harness_row(summary)
    assert row["result"] == "FAIL" and row["cases"] == "2/3" and row["ttft"] == 0.7
    assert row["decode"] == 59.0 and row["decode_min"] == 58.0 and row["prefill"] == 1200.0
    assert row["detail"] == "failed: code"
    skipped = st.harness_row(None, "API bound to loopback")
    table = st.harness_table("core", {"a": row, "b": skipped})
    assert "0.70" in table and "not run" in table and "API bound to loopback" in table
    assert st.base_url("http://h:8000/v1") == "http://h:8000"
    assert st.base_url("http://127.0.0.1:8000/v1 (loopback, on the host)") is None


def test_harness_argv_keeps_the_key_out():
    argv = st.harness_argv("python3", "/repo", "core", "http://h:8000")
    assert "--api-key" not in argv and argv[1] == "/repo/files/test/coherence_test.py"


@pytest.mark.parametrize("tool,expected", [("docker", "docker compose"), ("docker-compose", "docker-compose")])
def test_one_compose_probe_for_the_box_and_the_deploy(tmp_path, tool, expected):
    """kitlib.sh's kit_compose and the service stage's host facts both run the kit's
    tools/compose_probe.sh, so they cannot disagree on `docker compose` vs `docker-compose`."""
    import os
    import shutil as sh

    from glmfleet.kit.render import FILES_DIR

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = {"docker": '[ "$1 $2" = "compose version" ] && echo "Docker Compose version v2.20.2" && exit 0; exit 1',
            "docker-compose": '[ "$1 $2" = "version --short" ] && echo 1.29.2 && exit 0; exit 1'}[tool]
    (bin_dir / tool).write_text(f"#!/bin/sh\n{fake}\n")
    (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    kit = tmp_path / "kit"
    (kit / "tools").mkdir(parents=True)
    for name in ("kitlib.sh", "compose_probe.sh", "kitenv.py"):
        sh.copy(FILES_DIR / "tools" / name, kit / "tools" / name)
    box = subprocess.run(["bash", "-c", '. "$1/tools/kitlib.sh"; KIT_DIR=$1; kit_compose; echo "${COMPOSE[*]}"',
                          "-", str(kit)], env=env, capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run(["sh", "-c", svc.facts_command(str(kit), str(tmp_path), "img:1", "n", [])],
                         env=env, capture_output=True, text=True).stdout
    assert box == expected == svc.parse_service_facts(out.splitlines())["compose"]
