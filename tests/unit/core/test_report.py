"""The readiness table and the fleet summary (pure)."""

from glmfleet.preflight.checks import Check
from glmfleet.report import as_json, details, readiness_table, summary_table

STAGES = ["preflight", "docker", "nvidia_toolkit", "weights", "service"]


def test_summary_has_stages_result_and_service_columns():
    stages = {"gpu-a": {s: ("PASS", "") for s in STAGES},
              "gpu-b": {"preflight": ("FAIL", "4 GPUs required, 2 visible to NVML")},
              "gpu-c": {"preflight": ("WARN", ""), "docker": ("PASS", "")}}
    info = {"gpu-a": {"endpoint": "http://10.0.0.11:8000/v1", "image": "repo/vllm:tag",
                      "revision": "13b78e74ba3652cfbbcdc59ae70dbb2687403126", "peak_decode": 60.04}}
    text = summary_table(stages, STAGES, info)
    header = next(line for line in text.splitlines() if line.startswith("host"))
    for col in (*STAGES, "result", "endpoint", "revision", "image", "peak decode tok/s"):
        assert col in header
    row_a = next(line for line in text.splitlines() if line.startswith("gpu-a"))
    assert "ok" in row_a and "http://10.0.0.11:8000/v1" in row_a and "13b78e74ba36 " in row_a
    assert "60.0" in row_a and "vllm:tag" in row_a
    assert "FAILED in preflight: 4 GPUs required" in text
    row_c = next(line for line in text.splitlines() if line.startswith("gpu-c"))
    assert "ok" in row_c and "not implemented" not in text


def test_readiness_table_details_and_json():
    checks = [Check("gpu_count", "FAIL", "4 GPUs required, 2 visible", "use a 4-GPU host"),
              Check("shm", "WARN", "/dev/shm is small", "remount it"), Check("os", "PASS", "debian 12")]
    pre = {"h": {"verdict": "FAIL", "checks": checks,
                 "facts": {"gpu": {"driver": "580.159.04", "cuda_driver": 13000,
                                   "gpus": [{"name": "NVIDIA H100 80GB HBM3", "cc": [9, 0],
                                             "mem_total": 85520809984}] * 2},
                           "host": {"weights_fs_free_bytes": 100 * 2**30}}}}
    table = readiness_table(pre)
    assert "2x NVIDIA H100 80GB HBM3 (cc 9.0, 79.6 GiB)" in table
    assert "580.159.04 (CUDA 13.0)" in table and "100 GiB free" in table
    assert "4 GPUs required, 2 visible" in table
    text = details(pre)
    assert "[FAIL] gpu_count" in text and "fix: use a 4-GPU host" in text and "[WARN] shm" in text
    assert "[PASS]" not in text
    assert as_json(pre)["hosts"]["h"]["checks"][0]["status"] == "FAIL"


def test_tables_fit_the_terminal_by_cutting_the_detail_only():
    from glmfleet.report import fit_table

    rows = [["gpu-01", "PASS", "y" * 300], ["gpu-02", "FAIL", "short"]]
    wide = fit_table(rows, ["host", "verdict", "detail"], detail=2, width=0)
    assert "y" * 300 in wide
    fitted = fit_table(rows, ["host", "verdict", "detail"], detail=2, width=80)
    assert max(len(line) for line in fitted.splitlines()) <= 80
    assert "gpu-01" in fitted and "PASS" in fitted and "short" in fitted and "yyy..." in fitted


def test_image_column_shows_the_part_of_the_tag_that_differs():
    from glmfleet.report import image_cells

    old = "voipmonitor/vllm:black-benediction-b12xpr11-vllmbb6c5b7-cu132-20260608"
    new = "voipmonitor/vllm:black-benediction-b12xpr11-vllmbb6c5b7-cu132-20260701"
    cells = image_cells([old, new, None])
    assert cells[old] == "vllm:...20260608" and cells[new] == "vllm:...20260701"
    assert cells[None] == "-"
    mid = image_cells(["r/vllm:a-b-111-z", "r/vllm:a-b-222-z"])
    assert mid["r/vllm:a-b-111-z"] == "vllm:...111..." and mid["r/vllm:a-b-222-z"] == "vllm:...222..."
    one = image_cells([old, old])
    assert one[old].startswith("vllm:black-benediction")
