"""The box kit's scripts, run for real against the fake vLLM (serving-image test double).

launch.sh drives fake_compose.py (compose test double), which runs the kit's serve.sh with the
rendered compose environment; monitor.sh, chat.sh and the harnesses talk to the fake server on
127.0.0.1. Assertions are about behaviour (exit codes, output, files), never timings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glmfleet.kit.render import STATIC_FILES


def _load(path: Path, name: str):
    # By path, under its own name: several test folders have a conftest.py without a package.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_h = _load(Path(__file__).with_name("conftest.py"), "kit_conftest")
REPO, SKIP_LINE, free_port, http_get, wait_for = _h.REPO, _h.SKIP_LINE, _h.free_port, _h.http_get, _h.wait_for

SHELL_SCRIPTS = sorted(p for p in STATIC_FILES if p.endswith(".sh"))


# --- static checks --------------------------------------------------------------------------

@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_script_passes_bash_n_and_shellcheck(script):
    path = REPO / "files" / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    shellcheck = shutil.which("shellcheck") or "/usr/bin/shellcheck"
    res = subprocess.run([shellcheck, "-x", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# --- launch.sh ----------------------------------------------------------------------------

def test_launch_starts_waits_smoke_tests_and_prints_ready(make_kit):
    kit = make_kit()
    res = kit.run("./launch.sh")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "✅ READY — GLM-5.2 is serving and answered: READY" in res.stdout
    assert f"Endpoint : http://localhost:{kit.settings.port}/v1" in res.stdout
    assert './chat.sh "' in res.stdout
    # The container ran the kit's serve.sh, which handed vLLM the 57-S index pattern.
    assert _skips_per_worker(kit.container_log()) == {f"Worker_TP{r}": 57 for r in range(4)}
    # The monitor was started and forwards the container log.
    wait_for("monitor.pid", lambda: (kit.dir / "logs" / "monitor.pid").exists())
    wait_for("serve.log to hold the boot log",
             lambda: SKIP_LINE in (kit.dir / "logs" / "serve.log").read_text()
             if (kit.dir / "logs" / "serve.log").exists() else False)

    # A second run with nothing changed keeps the same server and succeeds again.
    pid_before = (kit.dir / ".fake-compose" / "pid").read_text()
    again = kit.run("./launch.sh")
    assert again.returncode == 0 and "up-to-date" in again.stdout
    assert (kit.dir / ".fake-compose" / "pid").read_text() == pid_before


def test_launch_thinking_override_lasts_one_run_and_shell_strays_are_ignored(make_kit):
    kit = make_kit()
    # PORT/TP in the caller's shell must not leak into compose: .env is the source.
    off = kit.run("./launch.sh", env=kit.env(ENABLE_THINKING="0", PORT="1", TP="99"))
    assert off.returncode == 0, off.stdout + off.stderr
    args_line = [ln for ln in kit.container_log().splitlines() if " args: " in ln][-1]
    assert "--default-chat-template-kwargs" in args_line and "--reasoning-parser" not in args_line
    assert "--tensor-parallel-size 4" in args_line
    chat = kit.run("./chat.sh", "What is 6 * 7?")
    assert chat.returncode == 0 and "42" in chat.stdout and "[thinking]" not in chat.stdout

    on = kit.run("./launch.sh")  # no override: back to .env (thinking on)
    assert on.returncode == 0, on.stdout + on.stderr
    args_line = [ln for ln in kit.container_log().splitlines() if " args: " in ln][-1]
    assert "--reasoning-parser glm45" in args_line


def test_launch_fails_and_prints_log_tail_when_the_server_dies_at_boot(make_kit):
    kit = make_kit()
    res = kit.run("./launch.sh", env=kit.env(FAKE_VLLM_FAIL="boot", READY_TIMEOUT="5"))
    assert res.returncode != 0
    assert "READY —" not in res.stdout
    assert "did not answer" in res.stderr
    assert "Last lines of the server log" in res.stderr
    assert "EngineCore failed to start" in res.stderr  # the tail shows why


def test_launch_fails_when_the_smoke_answer_is_wrong(make_kit):
    kit = make_kit()
    res = kit.run("./launch.sh", env=kit.env(FAKE_VLLM_FAIL="garbage"))
    assert res.returncode != 0
    assert "smoke test" in res.stderr and "READY —" not in res.stdout


def test_api_key_is_enforced_used_and_never_printed(make_kit):
    key = "s3cret$Key#0123"  # needs quoting in .env: every reader must get it back intact
    kit = make_kit(api_key=key)
    assert oct((kit.dir / ".env").stat().st_mode & 0o777) == "0o600"
    shell = kit.run("bash", "-c", "KIT_DIR=.; . tools/kitlib.sh; kit_dotenv API_KEY")
    assert shell.stdout == key
    res = kit.run("./launch.sh")
    assert res.returncode == 0, res.stdout + res.stderr
    assert key not in res.stdout + res.stderr
    assert http_get(kit.base_url + "/v1/models") == 401
    assert http_get(kit.base_url + "/v1/models", api_key="wrong-key-000") == 401
    assert http_get(kit.base_url + "/v1/models", api_key=key) == 200
    assert key not in kit.container_log()  # not on vLLM's command line, not in its log
    chat = kit.run("./chat.sh", "Reply with exactly one word: READY")
    assert chat.returncode == 0 and "READY" in chat.stdout
    denied = kit.run("python3", "test/coherence_test.py", "core", env=kit.env(API_KEY="wrong-key-000"))
    assert denied.returncode != 0 and "401" in denied.stdout


# --- chat.sh -------------------------------------------------------------------------------

def test_chat_streams_reasoning_dimmed_above_the_answer(served_kit):
    res = served_kit.run("./chat.sh", "What is 48 * 27?", env=served_kit.env(FORCE_COLOR="1"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "\033[2m[thinking]" in out  # dimmed reasoning block
    assert "step by step" in out  # the reasoning text itself
    assert out.index("[thinking]") < out.index("\033[0m") < out.rindex("1296")


def test_chat_needs_a_prompt(served_kit):
    assert served_kit.run("./chat.sh").returncode == 2


# --- monitor.sh ----------------------------------------------------------------------------

def _feed(kit, *pairs: tuple[float, float], marker: str) -> None:
    lines = [f"INFO boot line {marker}"]
    lines += [f"(APIServer pid=1) INFO 01-01 00:00:00 [loggers.py:1] Engine 000: Avg prompt throughput: "
              f"{p:,.1f} tokens/s, Avg generation throughput: {g:.1f} tokens/s, Running: 1 reqs, "
              f"Waiting: 0 reqs, GPU KV cache usage: 1.0%, Prefix cache hit rate: 0.0%" for p, g in pairs]
    (kit.dir / "feed.txt").write_text("\n".join(lines) + "\n")


# The log source stand-in: prints the feed, then waits like `docker logs -f` on a live container.
FEED_CMD = "echo $$ > src.pid; cat feed.txt; exec sleep 600"


def _serve_log(kit) -> str:
    path = kit.dir / "logs" / "serve.log"
    return path.read_text() if path.exists() else ""


def test_monitor_keeps_peaks_across_reattach_and_restart(make_kit):
    kit = make_kit()
    _feed(kit, (1234.5, 20.0), (300.0, 56.7), marker="first")
    kit.start_monitor(LOG_CMD=FEED_CMD)
    wait_for("the first peaks", lambda: (kit.peaks() or {}).get("peak_decode_tps") == 56.7)
    peaks = kit.peaks()
    assert peaks["peak_prefill_tps"] == 1234.5 and peaks["updated"]
    assert "boot line first" in _serve_log(kit)

    # One instance only.
    second = kit.run("./monitor.sh", env=kit.env(LOG_CMD=FEED_CMD))
    assert second.returncode == 0 and "already running" in second.stdout

    # The container restarts: the log stream ends, lower numbers follow; peaks stay.
    _feed(kit, (10.0, 5.0), marker="second")
    os.kill(int((kit.dir / "src.pid").read_text()), signal.SIGTERM)
    wait_for("the re-attach", lambda: "boot line second" in _serve_log(kit))
    assert kit.peaks()["peak_prefill_tps"] == 1234.5 and kit.peaks()["peak_decode_tps"] == 56.7

    # The monitor itself restarts: it reads the old peaks back and only raises them.
    kit.stop_monitor()
    _feed(kit, (99.0, 80.0), marker="third")
    kit.start_monitor(LOG_CMD=FEED_CMD)
    wait_for("the new decode peak", lambda: (kit.peaks() or {}).get("peak_decode_tps") == 80.0)
    assert kit.peaks()["peak_prefill_tps"] == 1234.5
    assert not list((kit.dir / "logs").glob(".peak.*"))  # no temp files left behind


def test_monitor_under_its_systemd_unit_waits_then_takes_over(make_kit):
    """GLMFLEET_MONITOR_UNIT=1 (set by the unit, glmfleet/service/monitor.py): a second instance waits
    for the lock instead of exiting (no restart loop), and takes over when the first ends."""
    kit = make_kit()
    kit.start_monitor(LOG_CMD="exec sleep 600")
    pid_file = kit.dir / "logs" / "monitor.pid"
    wait_for("the first monitor", pid_file.exists)
    first = int(pid_file.read_text())
    unit = kit.start_monitor(LOG_CMD="exec sleep 600", GLMFLEET_MONITOR_UNIT="1")
    time.sleep(1)
    assert unit.poll() is None and int(pid_file.read_text()) == first  # waiting, not exited
    os.kill(first, signal.SIGTERM)
    wait_for("the unit's instance to take over",
             lambda: pid_file.exists() and pid_file.read_text().strip() == str(unit.pid))


def test_monitor_rotates_serve_log(make_kit):
    kit = make_kit()
    (kit.dir / "feed.txt").write_text("".join(f"line {i:04d} " + "x" * 40 + "\n" for i in range(200)))
    kit.start_monitor(LOG_CMD="cat feed.txt; exec sleep 600", LOG_MAX_BYTES="2000", LOG_KEEP="2")
    wait_for("the last line", lambda: "line 0199" in _serve_log(kit))
    logs = kit.dir / "logs"
    assert (logs / "serve.log.1").exists() and (logs / "serve.log.2").exists()
    assert not (logs / "serve.log.3").exists()
    assert all((logs / n).stat().st_size <= 2000 for n in ("serve.log", "serve.log.1", "serve.log.2"))
    # the logs hold requests and errors: owner and group only, old files and the lock too
    for path in logs.iterdir():
        assert path.stat().st_mode & 0o007 == 0, f"{path.name} is {oct(path.stat().st_mode)}"


def test_monitor_follows_the_fake_vllm_log(served_kit):
    served_kit.start_monitor()
    try:
        res = served_kit.run("./chat.sh", "Tell me about GPUs")
        assert res.returncode == 0
        wait_for("a decode peak from the server's throughput lines",
                 lambda: (served_kit.peaks() or {}).get("peak_decode_tps", 0) > 0)
        wait_for("the boot log in serve.log", lambda: _skips_per_worker(_serve_log(served_kit)).get("Worker_TP3") == 57)
    finally:
        served_kit.stop_monitor()


# --- harnesses -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["test/coherence_test.py", "core"],
    ["test/coherence_test.py", "long", "--ctx-tokens", "4000"],
    ["test/longctx_multiturn_test.py", "--ctx-tokens", "6000"],
], ids=["core", "long", "multiturn"])
def test_harness_passes_against_the_fake(served_kit, argv):
    out = served_kit.dir / "summary.json"
    res = served_kit.run("python3", *argv, "--json", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(out.read_text())
    assert summary["ok"] and summary["failed"] == 0 and summary["cases"]
    for case in summary["cases"]:
        assert case["ok"], case
        assert case["ttft_s"] is not None and case["prefill_tps"] and case["decode_tps"]
        assert case["reasoning_chars"] > 0 and case["content_chars"] > 0
    assert "ttft" in res.stdout and "prefill" in res.stdout and "decode" in res.stdout


def test_harness_fails_on_garbage_and_reports_json_on_stdout(tmp_path):
    port = free_port()
    env = {**os.environ, "FAKE_VLLM_FAIL": "garbage", "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-m", "testbed.doubles.serving", "serve", "/model",
                               "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "m"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("the garbage server", lambda: http_get(f"http://127.0.0.1:{port}/health") == 200)
        res = subprocess.run([sys.executable, str(REPO / "files/test/coherence_test.py"), "core",
                              "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m", "--json", "-"],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert res.returncode == 1
        summary = json.loads(res.stdout)  # stdout holds only the JSON
        assert not summary["ok"] and summary["failed"] == len(summary["cases"])
        assert "FAIL" in res.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- the serving double itself ---------------------------------------------------------------

def _fake(*argv: str, env: dict | None = None, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed.doubles.serving", *argv], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv", [
    ["serve", "/model", "--no-such-flag"],
    ["serve", "/model", "--hf-overrides", "{not json"],
    ["serve", "/model", "--speculative-config", "[1]"],
    ["serve", "/model", "--hf-overrides", '{"index_topk_pattern": "FXS"}'],
])
def test_fake_vllm_rejects_what_vllm_would(argv):
    res = _fake(*argv)
    assert res.returncode == 2, res.stdout + res.stderr


def test_fake_vllm_boot_failure_exits_non_zero():
    res = _fake("serve", "/model", "--port", "1", "--hf-overrides", '{"index_topk_pattern": "FSS"}',
                env={"FAKE_VLLM_FAIL": "boot"})
    assert res.returncode == 1
    assert "EngineCore failed to start" in res.stdout


def _skips_per_worker(log: str) -> dict[str, int]:
    """Skip lines per tensor-parallel worker: real vLLM prefixes each worker's lines
    "(Worker_TP<rank> pid=N)" and every worker logs its own."""
    out: dict[str, int] = {}
    for m in re.finditer(r"\((Worker_TP\d+) pid=\d+\) .*" + re.escape(SKIP_LINE), log):
        out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


def test_fake_vllm_skip_lines_follow_the_pattern_or_the_fault(tmp_path):
    def boot_lines(extra_env):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "testbed.doubles.serving", "serve", "/model",
                                 "--host", "127.0.0.1", "--port", str(port), "--kv-cache-dtype", "fp8",
                                 "--hf-overrides", '{"index_topk_pattern": "FSSFS"}'],
                                cwd=REPO, env={**os.environ, **extra_env}, stdout=subprocess.PIPE, text=True)
        try:
            wait_for("boot", lambda: http_get(f"http://127.0.0.1:{port}/health") == 200)
        finally:
            proc.terminate()
        return proc.communicate(timeout=10)[0]

    normal = boot_lines({})
    assert normal.count(SKIP_LINE) == 3
    assert "kv_cache_dtype=fp8" in normal
    assert boot_lines({"FAKE_VLLM_WRONG_SKIPS": "7"}).count(SKIP_LINE) == 7


def test_fake_vllm_chat_semantics(served_kit):
    client = _load(served_kit.dir / "tools" / "oai_client.py", "kit_oai_client")
    ApiError, Target, post_json = client.ApiError, client.Target, client.post_json

    target = Target(served_kit.base_url, None, "GLM-5.2")  # an alias works too
    body = {"model": "GLM-5.2", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
    full = post_json(target, "/v1/chat/completions", body)
    msg = full["choices"][0]["message"]
    assert msg["content"] == "5" and msg["reasoning"] and full["usage"]["completion_tokens"] > 0
    # Thinking spends the budget first: a tiny max_tokens leaves content empty.
    cut = post_json(target, "/v1/chat/completions", {**body, "max_tokens": 3})
    assert cut["choices"][0]["finish_reason"] == "length" and cut["choices"][0]["message"]["content"] is None
    # Per-request no-think, as the chat template allows.
    direct = post_json(target, "/v1/chat/completions",
                       {**body, "chat_template_kwargs": {"enable_thinking": False}})
    assert "reasoning" not in direct["choices"][0]["message"]
    with pytest.raises(ApiError) as err:
        post_json(target, "/v1/chat/completions", {**body, "model": "nope"})
    assert err.value.status == 404


def test_test_seams_are_inert_without_the_test_flag_file(make_kit):
    """COMPOSE_CMD, LOG_CMD and SERVE_PYTHON change what the scripts run only in a kit that
    holds .glmfleet-test-seams (the tests' kits); the deploy never writes it."""
    from glmfleet.kit.render import render_kit

    kit = make_kit()
    assert ".glmfleet-test-seams" not in render_kit(kit.settings, kit.pattern)
    probe = ('KIT_DIR=$PWD; . tools/kitlib.sh; printf "[%s][%s]" "$(kit_seam COMPOSE_CMD)" "$(kit_seam LOG_CMD)"; '
             'SERVE_PRINT_ARGS=1 bash serve.sh 2>/dev/null | head -n 1')
    model = kit.dir / "model-double"  # a checkpoint's config.json, for serve.sh's layer check
    model.mkdir()
    (model / "config.json").write_text('{"num_hidden_layers": %d}' % len(kit.pattern))
    env = kit.env(SERVE_PYTHON="/usr/bin/evil-python", SERVE_MODEL_DIR=str(model))
    seams = kit.run("bash", "-c", f"set -a; . ./.env; set +a; {probe}", env=env).stdout
    assert seams.startswith(f"[{env['COMPOSE_CMD']}][{env['LOG_CMD']}]") and "evil-python" in seams
    (kit.dir / ".glmfleet-test-seams").unlink()
    inert = kit.run("bash", "-c", f"set -a; . ./.env; set +a; {probe}", env=env).stdout
    assert inert.startswith("[][]") and "evil-python" not in inert


def test_fake_vllm_compiles_cold_and_boots_warm_from_the_cache_content(tmp_path):
    """The double's compile model: a boot with no cache entry for its key compiles and keeps
    it on the volume; the next boot with the same flags loads it; other flags, or a cache
    copied to another volume, behave as the key says; no volume keeps nothing."""
    locations = ("VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE", "CUTE_DSL_CACHE_DIR")

    def boot(volume, *flags, **env):
        port = free_port()
        cache = {v: str(volume / v.lower()) for v in locations}
        proc = subprocess.Popen([sys.executable, "-m", "testbed.doubles.serving", "serve", "/model",
                                 "--host", "127.0.0.1", "--port", str(port), "--tensor-parallel-size", "4",
                                 "--api-key", "k1", "k2", *flags],
                                cwd=REPO, env={**os.environ, **cache, "FAKE_VLLM_COMPILE_S": "0.2", **env},
                                stdout=subprocess.PIPE, text=True)
        try:
            wait_for("boot", lambda: http_get(f"http://127.0.0.1:{port}/health") in (200, 401), timeout=120)  # a bound, not a timing check: the machine may be loaded
        finally:
            proc.terminate()
        try:
            return proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:  # seen once: a SIGTERM that never ended it (cause
            proc.kill()                    # not found); what it logged is all this test reads
            return proc.communicate()[0]

    vol = tmp_path / "jit"
    vol.mkdir()
    first = boot(vol)
    assert "compile cache: miss for VLLM_CACHE_ROOT, TRITON_CACHE_DIR" in first
    assert "compile cache: wrote" in first
    warm = boot(vol)
    assert "compile cache: hit" in warm and "compile cache: miss" not in warm
    assert "FlashInfer autotune at 4 ranks" in warm  # never cached at several ranks
    # where it listens and who may call it are not part of the key ...
    assert "compile cache: hit" in boot(vol, "--served-model-name", "x", "y")
    # ... the compile-relevant flags and the GPU model are
    assert "compile cache: miss" in boot(vol, "--max-num-seqs", "4")
    assert "compile cache: miss" in boot(vol, FAKE_VLLM_GPU_NAME="NVIDIA H100")
    # the cache's content decides, wherever it came from: a copy boots warm
    seeded = tmp_path / "seeded"
    shutil.copytree(vol, seeded)
    assert "compile cache: hit" in boot(seeded)
    key = first.split("(key ")[1][:16]
    (seeded / "triton_cache_dir" / f"fake-vllm-compiled-{key}.json").write_text('{"key": "damaged"}')
    assert "compile cache: miss for TRITON_CACHE_DIR (" in boot(seeded)
    # no volume mounted (the parent is missing): nothing is kept, every boot compiles
    gone = tmp_path / "not-mounted" / "jit"
    assert "compile cache: wrote" not in boot(gone) and "compile cache: miss" in boot(gone)
