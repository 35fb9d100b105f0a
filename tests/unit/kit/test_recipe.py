"""The rendered box kit carries every setting of the validated recipe.

The compose file is parsed and checked setting by setting against the recipe facts
(shared/reference/recipe-facts.md, copied here as the expectation), and serve.sh is run with
bash in print mode, with the environment compose would give the container (the rendered .env
interpolated into the compose file's environment), for thinking on/off, MTP on/off, DCP 1/2/4.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from glmfleet.kit.index_pattern import DEFAULT_PATTERN, derive
from glmfleet.service.kit_by_hand import main as recipe_main
from glmfleet.kit.render import (RESTART_ON_CHANGE, STATIC_FILES, KitError, env_values,
                             render_kit, runtime_fingerprint, write_kit)
from glmfleet.settings import SettingsError, load_defaults, validate

REPO = Path(__file__).resolve().parents[3]
IMAGE = ("voipmonitor/vllm:black-benediction-b12xpr11-vllmbb6c5b7-b12xd90d89c-fi3395b41aa8d-"
         "dg324aced12c-cu132-20260608")

# recipe-facts.md, "Environment" (values as the container must see them).
RECIPE_ENV = {
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "OMP_NUM_THREADS": "16",
    "CUTE_DSL_ARCH": "sm_120a", "CUDA_DEVICE_MAX_CONNECTIONS": "32", "NCCL_P2P_LEVEL": "SYS",
    "NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "0", "NCCL_PROTO": "LL,LL128,Simple",
    "NCCL_IB_DISABLE": "1", "USE_NCCL_XML": "0", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "SAFETENSORS_FAST_GPU": "1", "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
    "VLLM_USE_B12X_SPARSE_INDEXER": "1", "VLLM_USE_B12X_MOE": "1", "VLLM_USE_V2_MODEL_RUNNER": "1",
    "VLLM_USE_FLASHINFER_SAMPLER": "1", "VLLM_USE_B12X_FP8_GEMM": "1", "VLLM_ENABLE_PCIE_ALLREDUCE": "0",
    "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS": "0",
    "VLLM_DISABLED_KERNELS": "MarlinFP8ScaledMMLinearKernel", "USES_B12X": "True",
    "B12X_DENSE_SPLITK_TURBO": "1", "B12X_W4A16_TC_DECODE": "1", "B12X_MOE_FORCE_A16": "1",
    "XDG_CACHE_HOME": "/cache/jit", "VLLM_CACHE_DIR": "/cache/jit/vllm",
}
# recipe-facts.md, "Cache locations set by launch.sh": every one on the JIT volume here (the
# recipe leaves the last four under /root/.cache, lost with the container).
CACHE_VARS = ("XDG_CACHE_HOME", "CUDA_CACHE_PATH", "VLLM_CACHE_DIR", "TVM_FFI_CACHE_DIR",
              "FLASHINFER_WORKSPACE_BASE", "TORCH_EXTENSIONS_DIR", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR",
              "TORCHINDUCTOR_CACHE_DIR", "CUTE_DSL_CACHE_DIR")
SERVE_VARS = ("BIND_HOST", "PORT", "API_KEY", "SERVED_MODEL_NAMES", "ENABLE_THINKING", "REASONING_EFFORT", "TP",
              "DCP_SIZE",
              "MAX_MODEL_LEN", "MAX_NUM_SEQS", "MAX_NUM_BATCHED_TOKENS", "GPU_MEMORY_UTILIZATION",
              "ENABLE_MTP", "NUM_SPECULATIVE_TOKENS", "INDEX_TOPK_PATTERN")


def _fake_compose():
    # The compose test double's interpolation (tests/kit/fake_compose.py), loaded by path.
    spec = importlib.util.spec_from_file_location("fake_compose", REPO / "tests" / "kit" / "fake_compose.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fake_compose = _fake_compose()


def settings(**overrides):
    data = load_defaults()
    data.update(model_revision="0" * 40, **overrides)
    return validate("test", data)


def kit(**overrides):
    s = settings(**overrides)
    pattern, _ = derive(None, s.index_topk_pattern)
    return s, render_kit(s, pattern)


@pytest.fixture(scope="module")
def default_kit():
    return kit()


@pytest.fixture(scope="module")
def service(default_kit):
    doc = yaml.safe_load(default_kit[1]["docker-compose.yml"][0])
    return doc, doc["services"]["glm52-vllm"]


# --- files and modes ----------------------------------------------------------------------

def test_kit_has_every_file_with_its_mode(default_kit):
    _, files = default_kit
    assert set(files) == {"docker-compose.yml", ".env", ".env.example", *STATIC_FILES}
    assert files[".env"][1] == 0o600
    assert files[".env.example"][1] == 0o644
    assert files["docker-compose.yml"][1] == 0o644
    for name in ("serve.sh", "launch.sh", "chat.sh", "monitor.sh", "test/coherence_test.py",
                 "test/longctx_multiturn_test.py"):
        assert files[name][1] == 0o755
    assert set(RESTART_ON_CHANGE) <= set(files)


def test_runtime_fingerprint_changes_only_with_what_the_container_runs(default_kit):
    base = runtime_fingerprint(default_kit[1])
    assert runtime_fingerprint(kit()[1]) == base  # rendering is deterministic
    assert runtime_fingerprint(kit(ready_timeout_s=60, smoke_timeout_s=60)[1]) == base
    assert runtime_fingerprint(kit(decode_context_parallel_size=2)[1]) != base
    assert runtime_fingerprint(kit(api_key="new-key-12345")[1]) != base
    assert runtime_fingerprint(kit(reasoning_effort="medium")[1]) != base
    assert runtime_fingerprint(kit(hf_cache_dir="/srv/hf-cache")[1]) != base
    assert runtime_fingerprint(kit(image="example/other:1")[1]) != base
    files = dict(default_kit[1])
    files["serve.sh"] = (files["serve.sh"][0] + "\n# changed\n", 0o755)
    assert runtime_fingerprint(files) != base


def test_write_kit_sets_modes_and_leaves_no_temp_files(tmp_path, default_kit):
    write_kit(tmp_path, default_kit[1])
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "launch.sh").stat().st_mode & 0o777 == 0o755
    assert not [p for p in tmp_path.rglob(".*") if p.name not in (".env", ".env.example")]


# --- the compose file, setting by setting ---------------------------------------------------

def test_compose_top_level_works_for_v1_and_v2(service):
    doc, _ = service
    assert "name" not in doc and "version" not in doc  # 1.29 rejects `name:`; v2 warns on version
    assert list(doc["services"]) == ["glm52-vllm"]
    assert doc["volumes"] == {"jit-cache": None}


def test_compose_container_settings(service):
    _, svc = service
    assert svc["image"] == IMAGE
    assert svc["container_name"] == "glm52-vllm"
    assert svc["restart"] == "unless-stopped"
    assert svc["network_mode"] == "host"
    assert svc["ipc"] == "host"
    assert svc["shm_size"] == "32gb"
    assert svc["privileged"] is True
    assert svc["ulimits"] == {"memlock": -1, "stack": 67108864}
    assert svc["logging"] == {"driver": "json-file", "options": {"max-size": "100m", "max-file": "5"}}
    # A login shell, as the recipe starts it (the kit tests check its effect on the served process).
    assert svc["entrypoint"] == ["/bin/bash", "-lc", ". /recipe/serve.sh"]


def test_compose_reserves_all_gpus_through_nvidia(service):
    _, svc = service
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "count" not in device and "device_ids" not in device  # all GPUs


def test_compose_volumes(service):
    _, svc = service
    assert svc["volumes"] == ["${MODEL_PATH}:/model:ro", ".:/recipe:ro", "jit-cache:/cache/jit",
                              "${HF_CACHE_DIR}:/root/.cache/huggingface"]


@pytest.mark.parametrize("name", sorted(RECIPE_ENV))
def test_compose_sets_recipe_environment(service, name):
    _, svc = service
    assert str(svc["environment"][name]) == RECIPE_ENV[name]


def test_compose_caches_all_live_on_the_jit_volume(service):
    doc, svc = service
    assert "jit-cache:/cache/jit" in svc["volumes"] and "jit-cache" in doc["volumes"]  # a named volume
    for name in CACHE_VARS:
        value = svc["environment"][name]
        assert value == "/cache/jit" or value.startswith("/cache/jit/"), (name, value)
    # The Hugging Face cache is the mounted host folder, not XDG_CACHE_HOME's default under the volume.
    assert svc["environment"]["HF_HOME"] == "/root/.cache/huggingface"


def test_compose_passes_every_serve_setting_from_dotenv(service):
    _, svc = service
    for name in SERVE_VARS:
        assert svc["environment"][name] == "${%s}" % name


def test_compose_follows_settings():
    s, files = kit(service_name="glm-b", image="example/vllm:1", shm_size="16gb", omp_num_threads=8, gpu_count=2,
                   tensor_parallel_size=2, decode_context_parallel_size=2)
    doc = yaml.safe_load(files["docker-compose.yml"][0])
    svc = doc["services"]["glm-b"]
    assert (svc["image"], svc["container_name"], svc["shm_size"]) == ("example/vllm:1", "glm-b", "16gb")
    assert svc["environment"]["OMP_NUM_THREADS"] == "8"
    assert svc["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_service_log_rotation_follows_the_docker_log_settings():
    """One source: the settings that go into daemon.json also set the service container's
    own options (which would override daemon.json's)."""
    _, files = kit(docker_log_max_size="20m", docker_log_max_file=2)
    svc = yaml.safe_load(files["docker-compose.yml"][0])["services"]["glm52-vllm"]
    assert svc["logging"] == {"driver": "json-file", "options": {"max-size": "20m", "max-file": "2"}}
    defaults = load_defaults()
    assert (defaults["docker_log_max_size"], defaults["docker_log_max_file"]) == ("100m", 5)  # the recipe's


# --- the .env -------------------------------------------------------------------------------

def test_dotenv_holds_exactly_the_rendered_values(tmp_path):
    s, files = kit(api_key="k3y-with$and#")
    write_kit(tmp_path, files)
    expected = env_values(s, DEFAULT_PATTERN)
    assert fake_compose.read_dotenv(tmp_path / ".env") == expected
    example = fake_compose.read_dotenv(tmp_path / ".env.example")
    assert example == {**expected, "API_KEY": ""}
    assert "k3y" not in files[".env.example"][0]
    assert expected["MODEL_PATH"] == "/mnt/llm_models/GLM-5.2-NVFP4-REAP-469B"
    assert expected["SERVED_MODEL_NAMES"] == "glm-5.2,GLM-5.2-NVFP4-REAP-469B,GLM-5.2"
    assert expected["PORT"] == "8000" and expected["DCP_SIZE"] == "4" and expected["MAX_MODEL_LEN"] == "250000"
    assert expected["READY_TIMEOUT"] == "1800"


@pytest.mark.parametrize("overrides, problem", [
    ({"api_key": "it's-a-key"}, "API_KEY"),
    ({"api_key": "back\\slash-key"}, "API_KEY"),
    ({"weights_dir": "/mnt/with space"}, "weights_dir"),
    ({"weights_dir": "/mnt/a:b"}, "weights_dir"),
    ({"served_model_aliases": ["ok", "not ok"]}, "served model name"),
])
def test_values_the_kit_cannot_carry_are_refused(overrides, problem):
    # Settings validation refuses these first; the kit refuses them again for Settings
    # built any other way (defence in depth).
    with pytest.raises(SettingsError):
        settings(**overrides)
    if "served_model_aliases" in overrides:
        overrides = {"served_model_aliases": tuple(overrides["served_model_aliases"])}
    unchecked = dataclasses.replace(settings(), **overrides)
    with pytest.raises(KitError, match=problem):
        render_kit(unchecked, derive(None, None)[0])


def test_bad_pattern_is_refused():
    with pytest.raises(KitError):
        render_kit(settings(), "SFF")


# --- serve.sh in print mode -------------------------------------------------------------------

def serve(tmp_path, files, environ=None, dotenv_edits=None, layers=78):
    """Run serve.sh as the container would: (argv after `-m vllm.entrypoints.cli.main`, stderr, rc).
    The checkpoint's config.json says `layers` (None: no config.json at all)."""
    write_kit(tmp_path, files)
    (tmp_path / ".glmfleet-test-seams").write_text("test kit: SERVE_MODEL_DIR acts\n")
    if dotenv_edits:
        with open(tmp_path / ".env", "a") as f:  # a hand edit: the last assignment wins
            f.writelines(f"{k}={v}\n" for k, v in dotenv_edits.items())
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    if layers is not None:
        (model / "config.json").write_text(json.dumps({"num_hidden_layers": layers}))
    env = fake_compose.container_env(tmp_path, environ or {})
    res = subprocess.run(["bash", str(tmp_path / "serve.sh")], capture_output=True, text=True,
                         env={**env, "PATH": os.environ["PATH"], "SERVE_PRINT_ARGS": "1",
                              "SERVE_MODEL_DIR": str(model)})
    lines = res.stdout.splitlines()
    if res.returncode == 0:
        assert lines[:4] == ["/opt/venv/bin/python", "-m", "vllm.entrypoints.cli.main", "serve"]
        lines = lines[4:]
    return lines, res.stderr, res.returncode


def flags(argv: list[str]) -> dict[str, list[str]]:
    """{flag: values}; the model path is under ''."""
    out: dict[str, list[str]] = {"": []}
    current = ""
    for arg in argv:
        if arg.startswith("-"):
            assert arg not in out, f"{arg} given twice"
            current = arg
            out[current] = []
        else:
            out[current].append(arg)
    return out


ALWAYS = {
    "": ["/model"],
    "--served-model-name": ["glm-5.2", "GLM-5.2-NVFP4-REAP-469B", "GLM-5.2"],
    "--trust-remote-code": [], "--host": ["0.0.0.0"], "--port": ["8000"],
    "--tensor-parallel-size": ["4"], "--pipeline-parallel-size": ["1"],
    "--enable-chunked-prefill": [], "--enable-prefix-caching": [],
    "--load-format": ["fastsafetensors"], "--async-scheduling": [],
    "-cc.pass_config.fuse_allreduce_rms=True": [],
    "--gpu-memory-utilization": ["0.95"], "--max-num-batched-tokens": ["8192"], "--max-num-seqs": ["2"],
    "--quantization": ["modelopt_fp4"], "--attention-backend": ["B12X_MLA_SPARSE"],
    "--moe-backend": ["b12x"], "--kv-cache-dtype": ["fp8"],
    "--tool-call-parser": ["glm47"], "--enable-auto-tool-choice": [],
}


@pytest.mark.parametrize("dcp", [1, 2, 4])
@pytest.mark.parametrize("mtp", [True, False], ids=["mtp", "no-mtp"])
@pytest.mark.parametrize("thinking", [True, False], ids=["think", "no-think"])
def test_serve_builds_every_recipe_flag(tmp_path, thinking, mtp, dcp):
    max_len = 131072 if dcp == 1 else 250000
    s, files = kit(enable_thinking=thinking, mtp_enabled=mtp, decode_context_parallel_size=dcp,
                   max_model_len=max_len)
    argv, stderr, rc = serve(tmp_path, files)
    assert rc == 0, stderr
    got = flags(argv)
    expected = dict(ALWAYS)
    expected["--decode-context-parallel-size"] = [str(dcp)]
    expected["--max-model-len"] = [str(max_len)]
    expected["--max-cudagraph-capture-size"] = [str(s.cudagraph_capture_size)]
    expected["--hf-overrides"] = got.get("--hf-overrides", [])
    expected["--default-chat-template-kwargs"] = got.get("--default-chat-template-kwargs", [])
    if thinking:
        expected["--reasoning-parser"] = ["glm45"]
    if mtp:
        expected["--speculative-config"] = got.get("--speculative-config", [])
    assert got == expected
    assert json.loads(got["--hf-overrides"][0]) == {"index_topk_pattern": DEFAULT_PATTERN}
    assert got["--max-cudagraph-capture-size"] == [str(2 * (4 if mtp else 1))]
    if mtp:
        assert json.loads(got["--speculative-config"][0]) == {
            "model": "/model", "method": "mtp", "num_speculative_tokens": 3, "moe_backend": "b12x",
            "draft_sample_method": "probabilistic"}
    kwargs = json.loads(got["--default-chat-template-kwargs"][0])
    assert kwargs == ({"reasoning_effort": "high"} if thinking else
                      {"enable_thinking": False, "reasoning_effort": "high"})


# The recipe's `vllm serve` values (recipe-facts.md, "Server"), default shape: DCP 4, thinking on,
# MTP 3, plus the reasoning effort default of upstream's 2026-06 change as a template variable.
RECIPE_ARGV = {
    **ALWAYS,
    "--decode-context-parallel-size": ["4"], "--max-model-len": ["250000"],
    "--max-cudagraph-capture-size": ["8"],
    "--hf-overrides": {"index_topk_pattern": "FFF" + "SSS" + "FSSS" * 18},
    "--speculative-config": {"model": "/model", "method": "mtp", "num_speculative_tokens": 3,
                             "moe_backend": "b12x", "draft_sample_method": "probabilistic"},
    "--reasoning-parser": ["glm45"],
    "--default-chat-template-kwargs": {"reasoning_effort": "high"},
}
RECIPE_VARIANTS = {
    "default": ({}, {}),
    # ENABLE_THINKING=0: no parser, the template told not to think (the effort stays a default
    # for a client that turns thinking back on per request).
    "thinking-off": ({"enable_thinking": False},
                     {"--reasoning-parser": None,
                      "--default-chat-template-kwargs": {"enable_thinking": False, "reasoning_effort": "high"}}),
    "dcp1": ({"decode_context_parallel_size": 1, "max_model_len": 131072},
             {"--decode-context-parallel-size": ["1"], "--max-model-len": ["131072"]}),
    "dcp2": ({"decode_context_parallel_size": 2}, {"--decode-context-parallel-size": ["2"]}),
}
JSON_VALUED = ("--hf-overrides", "--speculative-config", "--default-chat-template-kwargs")


@pytest.mark.parametrize("variant", RECIPE_VARIANTS)
def test_rendered_argv_matches_the_recipe_field_by_field(tmp_path, variant):
    overrides, changes = RECIPE_VARIANTS[variant]
    argv, stderr, rc = serve(tmp_path, kit(**overrides)[1])
    assert rc == 0, stderr
    got = flags(argv)
    for flag in JSON_VALUED:
        if flag in got:
            (raw,) = got[flag]
            got[flag] = json.loads(raw)
    expected = {k: v for k, v in {**RECIPE_ARGV, **changes}.items() if v is not None}
    wrong = {flag: (got.get(flag), want) for flag, want in expected.items() if got.get(flag) != want}
    extra = sorted(set(got) - set(expected))
    assert not wrong and not extra, f"differs from the recipe: {wrong}; not in the recipe: {extra}"


@pytest.mark.parametrize("effort", ["high", "low", None])
@pytest.mark.parametrize("thinking", [True, False], ids=["think", "no-think"])
def test_reasoning_effort_is_a_default_template_variable(tmp_path, thinking, effort):
    _, files = kit(enable_thinking=thinking, reasoning_effort=effort)
    argv, stderr, rc = serve(tmp_path, files)
    assert rc == 0, stderr
    raw = flags(argv).get("--default-chat-template-kwargs")
    expected = {**({} if thinking else {"enable_thinking": False}),
                **({"reasoning_effort": effort} if effort else {})}
    assert (json.loads(raw[0]) if raw else {}) == expected
    assert f"effort={effort or 'template default'}" in stderr


@pytest.mark.parametrize("value", ["High", "max effort", 'x", "enable_thinking": true', "a" * 17])
def test_reasoning_effort_must_be_a_short_lowercase_word(value):
    with pytest.raises(SettingsError, match="reasoning_effort"):
        settings(reasoning_effort=value)


def test_default_pattern_reaches_vllm_with_57_skip_layers(tmp_path, default_kit):
    argv, _, _ = serve(tmp_path, default_kit[1])
    pattern = json.loads(flags(argv)["--hf-overrides"][0])["index_topk_pattern"]
    assert len(pattern) == 78 and pattern.count("S") == 57 and pattern.startswith("FFFSSS")


def test_capture_size_follows_a_hand_edit(tmp_path, default_kit):
    argv, _, _ = serve(tmp_path, default_kit[1], dotenv_edits={"MAX_NUM_SEQS": "4"})
    assert flags(argv)["--max-cudagraph-capture-size"] == ["16"]
    assert flags(argv)["--max-num-seqs"] == ["4"]


def test_recipe_hand_edit_for_a_dcp1_box(tmp_path, default_kit):
    argv, stderr, rc = serve(tmp_path, default_kit[1], dotenv_edits={"DCP_SIZE": "1", "MAX_MODEL_LEN": "131072"})
    assert rc == 0 and "WARNING" not in stderr
    got = flags(argv)
    assert got["--decode-context-parallel-size"] == ["1"] and got["--max-model-len"] == ["131072"]


def test_dcp1_at_250k_is_warned_about(tmp_path, default_kit):
    _, stderr, rc = serve(tmp_path, default_kit[1], dotenv_edits={"DCP_SIZE": "1"})
    assert rc == 0 and "WARNING" in stderr and "DCP_SIZE=1" in stderr


def test_shell_enable_thinking_overrides_dotenv_for_that_run(tmp_path, default_kit):
    argv, _, _ = serve(tmp_path, default_kit[1], environ={"ENABLE_THINKING": "0"})
    assert "--reasoning-parser" not in flags(argv)
    assert "--default-chat-template-kwargs" in flags(argv)


def test_api_key_reaches_vllm_by_environment_only(tmp_path):
    _, files = kit(api_key="top-secret-1234")
    argv, stderr, rc = serve(tmp_path, files)
    assert rc == 0
    assert "top-secret-1234" not in "\n".join(argv) + stderr
    assert "--api-key" not in argv and "api key: set (VLLM_API_KEY)" in stderr
    # The same script, asked to print the environment vLLM would get, exports the key.
    env = fake_compose.container_env(tmp_path, {})
    script = tmp_path / "serve-printenv.sh"
    script.write_text((tmp_path / "serve.sh").read_text().replace('exec "${cmd[@]}"', 'printenv VLLM_API_KEY'))
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                         env={**env, "PATH": os.environ["PATH"], "SERVE_MODEL_DIR": str(tmp_path / "model")})
    assert res.stdout.strip() == "top-secret-1234"


@pytest.mark.parametrize("pattern, layers", [
    (DEFAULT_PATTERN[:-1], 78),  # a hand edit that lost a letter
    (DEFAULT_PATTERN + "S", 78),  # or gained one
    (DEFAULT_PATTERN, 79),  # a checkpoint with another layer count
])
def test_serve_refuses_a_pattern_whose_length_is_not_the_layer_count(tmp_path, default_kit, pattern, layers):
    argv, stderr, rc = serve(tmp_path, default_kit[1], dotenv_edits={"INDEX_TOPK_PATTERN": pattern},
                             layers=layers)
    assert rc == 64 and argv == []
    assert f"INDEX_TOPK_PATTERN has {len(pattern)} letters but the model has {layers} layers" in stderr


def test_serve_refuses_to_start_without_the_checkpoint_config(tmp_path, default_kit):
    argv, stderr, rc = serve(tmp_path, default_kit[1], layers=None)
    assert rc == 64 and argv == [] and "/model/config.json" in stderr


@pytest.mark.parametrize("edit, name", [
    ({"REASONING_EFFORT": "High"}, "REASONING_EFFORT"),
    ({"INDEX_TOPK_PATTERN": ""}, "INDEX_TOPK_PATTERN"),
    ({"INDEX_TOPK_PATTERN": "FSX"}, "INDEX_TOPK_PATTERN"),
    ({"DCP_SIZE": "3"}, "DCP_SIZE"),
    ({"ENABLE_THINKING": "maybe"}, "ENABLE_THINKING"),
    ({"MAX_MODEL_LEN": "250k"}, "MAX_MODEL_LEN"),
    ({"SERVED_MODEL_NAMES": ""}, "SERVED_MODEL_NAMES"),
])
def test_serve_refuses_missing_or_bad_values(tmp_path, default_kit, edit, name):
    argv, stderr, rc = serve(tmp_path, default_kit[1], dotenv_edits=edit)
    assert rc == 64 and name in stderr and argv == []


# --- by hand: docker-compose 1.29 and the renderer's command line ---------------------------

@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose (v1) not installed")
def test_docker_compose_v1_accepts_and_interpolates_the_kit(tmp_path):
    key = "k3y-with$dollar#hash"
    _, files = kit(api_key=key)
    write_kit(tmp_path, files)
    env = {k: v for k, v in os.environ.items() if k not in SERVE_VARS}

    def config(**extra):
        res = subprocess.run(["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True,
                             env={**env, **extra}, timeout=60)
        assert res.returncode == 0, res.stderr
        return yaml.safe_load(res.stdout)["services"]["glm52-vllm"]

    svc = config()
    assert svc["environment"]["ENABLE_THINKING"] == "1"
    # Quoted in .env, literal after interpolation (`config` prints `$` escaped as `$$`).
    assert svc["environment"]["API_KEY"].replace("$$", "$") == key
    assert svc["volumes"][0] == "/mnt/llm_models/GLM-5.2-NVFP4-REAP-469B:/model:ro"
    assert svc["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert config(ENABLE_THINKING="0")["environment"]["ENABLE_THINKING"] == "0"


def test_launch_fallback_timeouts_match_the_defaults():
    text = (REPO / "files" / "launch.sh").read_text()
    defaults = load_defaults()
    assert re.search(r"READY_TIMEOUT \|\| echo (\d+)", text).group(1) == str(defaults["ready_timeout_s"])
    assert re.search(r"SMOKE_TIMEOUT \|\| echo (\d+)", text).group(1) == str(defaults["smoke_timeout_s"])


def test_serve_dcp1_ceiling_matches_the_settings_rule():
    from glmfleet.settings import DCP1_MAX_MODEL_LEN

    assert f"> {DCP1_MAX_MODEL_LEN}))" in (REPO / "files" / "serve.sh").read_text()


def test_renderer_command_line_writes_a_kit(tmp_path, capsys):
    out = tmp_path / "kit"
    # No api_key and no .env there yet: the two choices are named, nothing is written.
    assert recipe_main([str(out), "port=9001", f"weights_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert 'api_key = "generate"' in err and 'api_key = "open"' in err and not out.exists()
    assert recipe_main([str(out), "port=9001", f"weights_dir={tmp_path}", "api_key=by-hand-key-1"]) == 0
    assert recipe_main([str(out), "port=9001", f"weights_dir={tmp_path}"]) == 0  # key kept
    assert fake_compose.read_dotenv(out / ".env")["PORT"] == "9001"
    assert fake_compose.read_dotenv(out / ".env")["API_KEY"] == "by-hand-key-1"
    assert (out / ".env").stat().st_mode & 0o777 == 0o600
    assert recipe_main([str(out), "port=nope"]) == 1
    assert "port" in capsys.readouterr().err


def test_one_dotenv_reader_for_the_box_scripts_its_tools_and_the_deploy(tmp_path, default_kit):
    """kitlib.sh (bash), oai_client.py and runtime_fingerprint all read .env through
    files/tools/kitenv.py: the same comment and quoting rules everywhere."""
    from glmfleet.kit.render import FILES_DIR, runtime_fingerprint

    (tmp_path / "tools").mkdir()
    for name in ("kitlib.sh", "kitenv.py"):
        shutil.copy(FILES_DIR / "tools" / name, tmp_path / "tools" / name)
    (tmp_path / ".env").write_text("# comment\nexport A=1\nB='x #not a comment'\nC=\"q\"\n"
                                   "D=v # note\nD=w\nnot an assignment\n")
    script = 'KIT_DIR=$1; . "$KIT_DIR/tools/kitlib.sh"; for k in $(kit_dotenv_keys); do printf "%s=[%s]\\n" "$k" "$(kit_dotenv "$k")"; done'
    out = subprocess.run(["bash", "-c", script, "-", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["A=[1]", "B=[x #not a comment]", "C=[q]", "D=[w]"]
    # the deploy reads values, not their spelling: quoting a value is no reason to restart
    _, files = default_kit
    text, mode = files[".env"]
    line = next(ln for ln in text.splitlines() if ln.startswith("TP="))
    requoted = {**files, ".env": (text.replace(line, line.replace("=", "='", 1) + "'"), mode)}
    assert runtime_fingerprint(requoted) == runtime_fingerprint(files)

