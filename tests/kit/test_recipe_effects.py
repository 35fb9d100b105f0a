"""The recipe's settings, checked by their effect on the served process (issue 13).

The kit runs as in test_kit_scripts.py: fake_compose.py (compose test double) starts the
compose file's own entrypoint with the fake vLLM (serving-image test double), which records
what it received (FAKE_VLLM_RECORD): at boot its argv and environment, per chat request the
sampling parameters and the chat-template variables its template got.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_h = _load(Path(__file__).with_name("conftest.py"), "kit_conftest_effects")
http_get, wait_for = _h.http_get, _h.wait_for

# recipe-facts.md: the variables launch.sh unsets, and every cache location it sets.
UNSET = ("NCCL_GRAPH_FILE", "NCCL_GRAPH_DUMP_FILE", "VLLM_B12X_MLA_EXTEND_MAX_CHUNKS")
CACHE_VARS = ("XDG_CACHE_HOME", "CUDA_CACHE_PATH", "VLLM_CACHE_DIR", "TVM_FFI_CACHE_DIR",
              "FLASHINFER_WORKSPACE_BASE", "TORCH_EXTENSIONS_DIR", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR",
              "TORCHINDUCTOR_CACHE_DIR", "CUTE_DSL_CACHE_DIR")


def up(kit) -> dict:
    """Start the service as compose would; the boot record of the served process."""
    res = kit.compose("up", "-d")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_for("the fake vLLM to answer", lambda: http_get(kit.base_url + "/health") == 200 or
             "ERROR" in kit.container_log())
    boots = kit.records("boot")
    assert boots, kit.container_log()
    return boots[-1]


def chat(kit, **body) -> dict:
    """One chat request; the double's record of it."""
    before = len(kit.records("chat"))
    data = json.dumps({"messages": [{"role": "user", "content": "What is 2 + 3?"}], **body}).encode()
    req = urllib.request.Request(kit.base_url + "/v1/chat/completions", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    records = kit.records("chat")
    assert len(records) == before + 1
    return records[-1]


def flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


# --- item 3 and 6: how the container starts, and what its process gets ---------------------

def test_served_process_starts_through_a_login_shell_with_the_recipe_environment(make_kit):
    kit = make_kit()
    boot = up(kit)
    env = boot["env"]
    assert env.get("FAKE_VLLM_PROFILE") == "loaded"  # the image's login profile ran ...
    assert not [name for name in UNSET if name in env]  # ... and what it presets was unset after it
    for name in CACHE_VARS:  # every cache on the named JIT volume
        assert env[name] == "/cache/jit" or env[name].startswith("/cache/jit/"), (name, env[name])
    assert env["HF_HOME"] == "/root/.cache/huggingface"  # the mounted Hugging Face cache
    svc = yaml.safe_load((kit.dir / "docker-compose.yml").read_text())["services"][kit.settings.service_name]
    assert f"{kit.settings.hf_cache_dir}:/root/.cache/huggingface" in [
        v.replace("${HF_CACHE_DIR}", kit.settings.hf_cache_dir) for v in svc["volumes"]]
    assert "API_KEY" not in env and "VLLM_API_KEY" not in env  # no key set for this kit
    argv = boot["argv"]
    assert argv[:2] == ["serve", "/model"]
    assert json.loads(flag_value(argv, "--default-chat-template-kwargs")) == {"reasoning_effort": "high"}
    assert flag_value(argv, "--reasoning-parser") == "glm45"


def test_a_start_without_a_login_shell_fails(make_kit):
    kit = make_kit()
    compose = kit.dir / "docker-compose.yml"
    compose.write_text(compose.read_text().replace('"/bin/bash", "-lc"', '"/bin/bash", "-c"'))
    res = kit.run("./launch.sh", env=kit.env(READY_TIMEOUT="10"))
    assert res.returncode == 1 and "READY —" not in res.stdout
    assert "profile scripts did not run" in res.stderr  # the log tail says why


def test_a_hand_edited_pattern_of_the_wrong_length_stops_the_start(make_kit):
    kit = make_kit()
    with open(kit.dir / ".env", "a") as f:
        f.write(f"INDEX_TOPK_PATTERN={kit.pattern}S\n")
    res = kit.run("./launch.sh", env=kit.env(READY_TIMEOUT="10"))
    assert res.returncode == 1
    assert "INDEX_TOPK_PATTERN has 79 letters but the model has 78 layers" in res.stderr
    assert not kit.records("boot")  # vLLM was never started with it


# --- item 1: reasoning effort as a default chat-template variable ---------------------------

@pytest.mark.parametrize("thinking, effort, defaults, line", [
    (True, "high", {"reasoning_effort": "high"}, "Reasoning Effort: High"),
    (True, None, {}, "Reasoning Effort: Max"),  # the checkpoint template's own default
    (False, "high", {"enable_thinking": False, "reasoning_effort": "high"}, None),
    (False, None, {"enable_thinking": False}, None),
], ids=["think-high", "think-template-default", "no-think-high", "no-think-template-default"])
def test_template_variables_received_for_thinking_and_effort(make_kit, thinking, effort, defaults, line):
    kit = make_kit(enable_thinking=thinking, reasoning_effort=effort)
    up(kit)
    got = chat(kit)
    assert got["template_kwargs"] == defaults and got["effort_line"] == line
    # A client's own value wins over the default.
    got = chat(kit, chat_template_kwargs={"reasoning_effort": "low"})
    assert got["template_kwargs"] == {**defaults, "reasoning_effort": "low"}
    assert got["effort_line"] == ("Reasoning Effort: Low" if thinking else None)
    if not thinking:  # a client turning thinking back on still gets the configured effort
        got = chat(kit, chat_template_kwargs={"enable_thinking": True})
        assert got["effort_line"] == f"Reasoning Effort: {(effort or 'max').capitalize()}"


# --- item 2: sampling, chat.sh's stdin and thinking display ---------------------------------

def test_chat_samples_at_0_6_and_reads_the_prompt_from_stdin(served_kit):
    before = len(served_kit.records("chat"))
    res = served_kit.run("./chat.sh", input="What is 48 * 27?\n")
    assert res.returncode == 0, res.stderr
    assert "1296" in res.stdout and "[thinking]" in res.stdout
    (rec,) = served_kit.records("chat")[before:]
    assert rec["temperature"] == 0.6 and rec["stream"] is True and "max_tokens" not in rec


@pytest.mark.parametrize("how", ["option", "env"])
def test_chat_can_hide_the_thinking(served_kit, how):
    argv = ["./chat.sh", "--hide-thinking", "What is 48 * 27?"] if how == "option" else \
        ["./chat.sh", "What is 48 * 27?"]
    env = served_kit.env(SHOW_THINKING="0") if how == "env" else None
    res = served_kit.run(*argv, env=env)
    assert res.returncode == 0, res.stderr
    assert "1296" in res.stdout
    assert "[thinking]" not in res.stdout and "step by step" not in res.stdout
    assert "thinking hidden" in res.stderr


def test_chat_refuses_an_empty_prompt(served_kit):
    res = served_kit.run("./chat.sh", input="")
    assert res.returncode == 2 and "empty" in res.stderr


@pytest.mark.parametrize("argv, temperature", [
    (["test/coherence_test.py", "core"], 0.6),
    (["test/coherence_test.py", "long", "--ctx-tokens", "4000"], 0.0),
    (["test/longctx_multiturn_test.py", "--ctx-tokens", "6000"], 0.2),
], ids=["core", "needle", "multiturn"])
def test_harnesses_sample_as_the_recipe(served_kit, argv, temperature):
    before = len(served_kit.records("chat"))
    res = served_kit.run("python3", *argv, "--json", "-")
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(res.stdout)
    sent = served_kit.records("chat")[before:]
    assert len(sent) == len(summary["cases"]) and summary["temperature"] == temperature
    assert {r["temperature"] for r in sent} == {temperature}
    assert not [r for r in sent if "max_tokens" in r]  # no max_tokens: thinking has room


def test_multiturn_has_the_six_turn_kinds(served_kit):
    res = served_kit.run("python3", "test/longctx_multiturn_test.py", "--ctx-tokens", "6000", "--json", "-")
    assert res.returncode == 0, res.stdout + res.stderr
    cases = json.loads(res.stdout)["cases"]
    assert [c["name"] for c in cases] == ["retrieval", "arithmetic", "temporal", "dependent", "synthesis",
                                          "not-in-log"]
    assert all(c["ok"] for c in cases)
