"""The GPU probe run exactly as the GpuProbe fact runs it (sh + `python3 -` fed on stdin),
against the fake libnvidia-ml.so.1 with the real nvidia-ml-py; and its pure parser."""

from __future__ import annotations

import ctypes.util
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from glmfleet.preflight import checks
from glmfleet.preflight import gpu as gpu_fact
from glmfleet.preflight.gpu import parse_probe_output, probe_command, probe_stdin
from glmfleet.settings import load_defaults, validate
from testbed.doubles import nvml as fake

DATA = Path(__file__).parent.parent / "data"
PROBE = Path(gpu_fact.__file__).resolve().parent / "gpu_probe.py"


@pytest.fixture(scope="module")
def settings():
    return validate("test", {**load_defaults(), "preflight_only": True})


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fake-nvml")
    fake.build_fake_nvml(out)
    return out


def run_fact_command(stdin: str, env: dict, command: str | None = None, path: str | None = None):
    """What the host does for the fact: sh -c <command> with the probe on stdin."""
    env = {**os.environ, **env}
    if path is not None:
        env["PATH"] = path
    proc = subprocess.run(["/bin/sh", "-c", command or probe_command()], input=stdin.encode(),
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


@pytest.fixture(scope="module")
def probe(lib_dir):
    """probe(profile) -> parsed facts, with the probe run as the fact runs it."""
    results: dict[str, tuple[dict, str]] = {}

    def run(profile: str) -> dict:
        if profile not in results:
            conf, version = lib_dir / f"{profile}.conf", lib_dir / f"{profile}.version"
            fake.write_config(profile, conf)
            version.write_text(fake.kernel_module_text(profile))
            text = run_fact_command(probe_stdin(), {"LD_LIBRARY_PATH": str(lib_dir),
                                                    "FAKE_NVML_CONFIG": str(conf),
                                                    "GLMFLEET_NVIDIA_VERSION_FILE": str(version)})
            results[profile] = (parse_probe_output(text), text)
        return results[profile][0]

    run.raw = lambda profile: results[profile][1]
    return run


def by_name(found):
    return {c.name: c for c in found}


# --- each profile through the fact's path -------------------------------------------------

def test_rtx6000x4_every_field(probe, settings):
    facts = probe("rtx6000x4")
    assert facts["ok"] and facts["error"] is None
    assert (facts["driver"], facts["cuda_driver"], facts["nvml_version"]) == \
        ("595.45.04", 13020, "13.595.45.04")
    assert facts["open_kernel_module"] is True and "Open Kernel Module" in facts["kernel_module"]
    assert facts["count"] == 4 and len(facts["gpus"]) == 4
    for i, g in enumerate(facts["gpus"]):
        assert g["index"] == i
        assert g["name"] == "NVIDIA RTX PRO 6000 Blackwell Server Edition"
        assert g["uuid"].startswith("GPU-")
        assert g["cc"] == [12, 0]
        assert g["mem_total"] == 102641430528
        assert g["mem_free"] + g["mem_used"] == g["mem_total"]
        assert g["persistence"] is True and g["ecc"] == [False, False]
        assert (g["pcie_gen"], g["pcie_gen_max"], g["pcie_width"], g["pcie_width_max"]) == (5, 5, 16, 16)
        assert g["pci_bus"].startswith("00000000:")
        assert g["procs"] == [] and g["errors"] == {}
    assert set(facts["p2p"]) == {"0-1", "0-2", "0-3", "1-2", "1-3", "2-3"}
    gpu_checks = checks.run_checks(facts, {}, settings)
    for name in ("gpu_probe", "gpu_count", "gpu_compute_capability", "gpu_memory", "driver",
                 "open_kernel_module", "gpu_processes", "persistence_mode", "pcie_link"):
        assert by_name(gpu_checks)[name].status == "PASS", by_name(gpu_checks)[name]


def test_p2p_read_is_asked_with_the_integer_index(probe):
    """nvidia-ml-py's READ constant is the tuple (0,); the probe passes 0 and gets an answer."""
    pair = probe("rtx6000x4")["p2p"]["0-1"]
    assert pair["read"] == 0 and pair["write"] == 0 and pair["errors"] == {}
    assert probe("h100x2")["p2p"]["0-1"]["nvlink"] == 0


def test_h100x2_is_refused_for_count_cc_memory_and_driver(probe, settings):
    facts = probe("h100x2")
    assert facts["ok"] and facts["count"] == 2
    assert [g["name"] for g in facts["gpus"]] == ["NVIDIA H100 80GB HBM3"] * 2
    found = by_name(checks.run_checks(facts, {}, settings))
    assert found["gpu_count"].status == "FAIL" and "4 GPUs required, 2 visible" in found["gpu_count"].reason
    assert found["gpu_compute_capability"].status == "FAIL"
    assert "GPU 0 (NVIDIA H100 80GB HBM3) is 9.0" in found["gpu_compute_capability"].reason
    assert found["gpu_memory"].status == "FAIL" and "79.6 GiB" in found["gpu_memory"].reason
    assert found["driver"].status == "FAIL" and "595.45.04" in found["driver"].remedy
    assert checks.first_failure(checks.run_checks(facts, {}, settings)).name == "gpu_count"


def test_h100x2_profile_mirrors_the_converted_real_reading(probe):
    real = parse_probe_output((DATA / "probe-2xh100.json").read_text().replace("\n", " "))
    ours = probe("h100x2")
    for key in ("driver", "cuda_driver", "nvml_version", "count"):
        assert ours[key] == real[key], key
    for mine, theirs in zip(ours["gpus"], real["gpus"]):
        for key in ("index", "name", "uuid", "cc", "mem_total", "mem_free", "persistence", "ecc",
                    "pcie_gen", "pcie_gen_max", "pcie_width", "pcie_width_max", "pci_bus"):
            assert mine[key] == theirs[key], key


def test_one48gb_names_gpu_2(probe, settings):
    found = by_name(checks.run_checks(probe("one48gb"), {}, settings))
    memory = found["gpu_memory"]
    assert memory.status == "FAIL"
    assert "GPU 2 (NVIDIA RTX PRO 5000 Blackwell) has 48.0 GiB" in memory.reason
    assert "GPU 0" not in memory.reason and "GPU 3" not in memory.reason
    assert found["gpu_count"].status == found["gpu_compute_capability"].status == "PASS"


def test_olddriver_fails_the_driver_check(probe, settings):
    facts = probe("olddriver")
    assert (facts["driver"], facts["cuda_driver"]) == ("570.124.06", 12080)
    driver = by_name(checks.run_checks(facts, {}, settings))["driver"]
    assert driver.status == "FAIL"
    assert "supports CUDA 12.8" in driver.reason and "needs CUDA 13.2" in driver.reason
    assert "595.45.04" in driver.remedy and "open kernel modules" in driver.remedy


def test_foreignproc_fails_naming_pid_and_gpu(probe, settings):
    facts = probe("foreignproc")
    assert facts["gpus"][1]["procs"][0]["pid"] == 4242
    found = by_name(checks.run_checks(facts, {}, settings))["gpu_processes"]
    assert found.status == "FAIL" and "pid 4242 holds 20.0 GiB on GPU 1" in found.reason


def test_not_supported_calls_are_recorded_as_unknown(probe, settings):
    facts = probe("notsupported")
    assert facts["ok"]
    g = facts["gpus"][0]
    assert g["persistence"] is None and g["ecc"] is None and g["pcie_width"] is None
    assert g["errors"]["persistence"] == "NVMLError_NotSupported: Not Supported"
    assert set(g["errors"]) == {"persistence", "ecc", "pcie_width"}
    assert g["name"] and g["mem_total"] == 102641430528  # the other calls still answered
    found = by_name(checks.run_checks(facts, {}, settings))
    assert found["persistence_mode"].status == "WARN" and "unknown" in found["persistence_mode"].reason
    assert found["pcie_link"].status == "WARN" and "unknown" in found["pcie_link"].reason


def test_driver_not_loaded(probe, settings):
    facts = probe("driverdown")
    assert not facts["ok"] and facts["error"]["kind"] == "driver_not_loaded"
    assert facts["gpus"] == []
    gpu_probe = checks.run_checks(facts, {}, settings)[0]
    assert gpu_probe.name == "gpu_probe" and gpu_probe.status == "FAIL"
    assert "modprobe" in gpu_probe.remedy and "595.45.04" in gpu_probe.remedy


def test_proprietary_kernel_module_fails(probe, settings):
    facts = probe("proprietary")
    assert facts["open_kernel_module"] is False
    found = by_name(checks.run_checks(facts, {}, settings))["open_kernel_module"]
    assert found.status == "FAIL" and "nvidia-open" in found.remedy


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None,
                    reason="a real NVIDIA driver library is installed here")
def test_no_library_is_no_driver_not_a_traceback(tmp_path, settings):
    text = run_fact_command(probe_stdin(), {"LD_LIBRARY_PATH": str(tmp_path)})
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1
    facts = parse_probe_output(text)
    assert facts["error"]["kind"] == "no_driver"
    assert "LibraryNotFound" in facts["error"]["message"]
    assert "open kernel modules" in facts["error"]["remedy"]
    found = checks.run_checks(facts, {}, settings)
    assert checks.first_failure(found).name == "gpu_probe"
    assert "595.45.04" in found[0].remedy and "CUDA 13.2" in found[0].remedy


def test_no_python3_on_the_host(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cat", "timeout", "env"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    text = run_fact_command(probe_stdin(), {}, path=str(bin_dir))
    facts = parse_probe_output(text)
    assert facts["error"]["kind"] == "no_python" and "apt-get install" in facts["error"]["remedy"]


def test_crash_is_reported_with_its_traceback():
    text = run_fact_command("import sys\nprint('boom: bad things', file=sys.stderr)\nsys.exit(3)\n", {})
    facts = parse_probe_output(text)
    assert facts["error"]["kind"] == "probe_failed"
    assert "status 3" in facts["error"]["message"] and "boom: bad things" in facts["error"]["message"]


def test_a_hung_probe_times_out():
    text = run_fact_command("import time\ntime.sleep(30)\n", {}, command=probe_command(timeout_s=1))
    assert parse_probe_output(text)["error"]["kind"] == "probe_timeout"


def test_embedded_pynvml_that_fails_to_load_is_no_nvml(lib_dir):
    script = gpu_fact._LOADER.replace("@BLOB@", repr("bm90IHpsaWI=")) + PROBE.read_text()
    facts = parse_probe_output(run_fact_command(script, {"LD_LIBRARY_PATH": str(lib_dir)}))
    assert facts["error"]["kind"] == "no_nvml" and "embedded" in facts["error"]["message"]


# --- running the probe by hand --------------------------------------------------------------

def test_direct_run_with_importable_pynvml(lib_dir):
    fake.write_config("rtx6000x4", lib_dir / "direct.conf")
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib_dir), "FAKE_NVML_CONFIG": str(lib_dir / "direct.conf")}
    proc = subprocess.run([sys.executable, str(PROBE)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    out = json.loads(proc.stdout)
    assert out["ok"] and out["count"] == 4 and out["probe_version"] == 1


def test_direct_run_without_pynvml():
    code = ("import sys, runpy; sys.modules['pynvml'] = None; "
            f"runpy.run_path({str(PROBE)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["error"]["kind"] == "no_nvml"
    assert "pip install nvidia-ml-py" in out["error"]["remedy"]


# --- what goes over the wire ----------------------------------------------------------------

def test_stdin_prints_short_but_sends_everything():
    stdin = probe_stdin()
    assert len(str(stdin)) < 80 and repr(stdin) == str(stdin)
    assert stdin.endswith("\n") and len(stdin) > 50_000
    assert "GLMFLEET_PYNVML_ERROR" in stdin and "def probe(nvml)" in stdin
    # pyinfra's own writer, as the SSH connector uses it.
    from pyinfra.connectors.util import write_stdin

    class Buffer(io.BytesIO):
        def close(self):
            self.sent = self.getvalue()

    buf = Buffer()
    write_stdin(stdin, buf)
    assert buf.sent == stdin.encode()


def test_the_whole_script_compiles():
    """Loader + probe form one script: e.g. a __future__ import in the probe would be a
    SyntaxError there (and only there)."""
    compile(probe_stdin(), "<stdin>", "exec")


# --- the parser on recorded outputs ---------------------------------------------------------

def test_parse_the_real_h100_reading(settings):
    """The raw reading from a real 2x H100 host, in its own older format."""
    facts = parse_probe_output((DATA / "nvml-reading-2x-h100.raw.json").read_text().replace("\n", " "))
    assert facts["ok"] and facts["nvml_version"] == "13.580.159.04"
    assert facts["count"] == 2 and facts["gpus"][0]["cc"] == [9, 0]
    assert facts["gpus"][0]["persistence"] is True and facts["gpus"][0]["ecc"] == [True, True]
    assert facts["gpus"][1]["procs"] == []
    pair = facts["p2p"]["0-1"]
    assert pair["read"] is None and pair["errors"]["read"].startswith("ArgumentError")
    assert pair["write"] == 0 and pair["nvlink"] == 0
    found = by_name(checks.run_checks(facts, {}, settings))
    assert {n for n, c in found.items() if c.status == "FAIL"} >= {
        "gpu_count", "gpu_compute_capability", "gpu_memory", "driver"}


def test_parse_the_converted_h100_reading(settings):
    facts = parse_probe_output((DATA / "probe-2xh100.json").read_text().replace("\n", " "))
    assert facts["ok"] and facts["gpus"][1]["uuid"] == "GPU-b5506ca1-ac76-26bf-6d00-426e0c7a7f61"
    assert checks.verdict(checks.run_checks(facts, {}, settings)) == "FAIL"


def test_parse_recorded_rtx_output_with_a_login_banner():
    body = json.dumps(json.loads((DATA / "probe-rtx6000x4.json").read_text()))
    facts = parse_probe_output("Welcome to Ubuntu 24.04.2 LTS\n{not json\n" + body + "\n")
    assert facts["ok"] and facts["count"] == 4


@pytest.mark.parametrize("text", ["", "   \n", "Traceback (most recent call last):\n  x\n",
                                  "[1, 2]", '{"gpus": "nope", "p2p": [1], "cc": 3}',
                                  '{"gpus": [{"cc": [12], "procs": 3, "ecc": 1}, 7]}',
                                  '{"error": "weird"}', "\x00\xff{"])
def test_parse_never_raises(text):
    facts = parse_probe_output(text)
    assert set(gpu_fact.TOP_DEFAULTS) <= set(facts)
    assert isinstance(facts["gpus"], list) and isinstance(facts["p2p"], dict)
    for g in facts["gpus"]:
        assert set(gpu_fact.GPU_DEFAULTS) <= set(g)


def test_parse_without_json_is_bad_output():
    facts = parse_probe_output("sh: 1: python3: Permission denied\n")
    assert not facts["ok"] and facts["error"]["kind"] == "bad_output"
    assert "Permission denied" in facts["error"]["message"]


def test_fact_default_and_process():
    fact = gpu_fact.GpuProbe()
    assert fact.default()["error"]["kind"] == "probe_failed"
    line = json.dumps({"ok": True, "error": None, "count": 0, "gpus": []})
    assert fact.process(["noise", line])["ok"] is True
    command = fact.command()
    assert "python3 -S -" in command and "GLMFLEET_NVIDIA_VERSION_FILE" not in command


def test_requirements_come_from_settings(probe, settings):
    """Targeting the H100 box is a data change, not a code change."""
    h100 = dataclasses.replace(settings, gpu_count=2, gpu_compute_capability=(9, 0),
                               gpu_min_memory_gib=79.0, image_cuda_version="13.0",
                               tensor_parallel_size=2, decode_context_parallel_size=2)
    found = by_name(checks.run_checks(probe("h100x2"), {}, h100))
    for name in ("gpu_count", "gpu_compute_capability", "gpu_memory", "driver"):
        assert found[name].status == "PASS", found[name]
