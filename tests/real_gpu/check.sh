#!/usr/bin/env bash
# Real-GPU check (not part of ./test.sh: CI has no GPU). Run on a host with an NVIDIA driver,
# from the repo root, with the controller's Python packages importable (a venv, or wheels
# installed into PYTHONPATH). Prints, in order:
#   1. nvidia-smi's own description of the GPUs (the reference),
#   2. the raw NVML probe JSON (what the deploy's GpuProbe fact sees),
#   3. the preflight with this project's requirements (must refuse non-RTX-PRO-6000 hosts),
#   4. the preflight with the GPU requirements overridden to match this host through --data.
# Extra arguments for step 4 are appended (e.g. --data weights_dir=/big/disk/glm).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
py=${PYTHON:-python3}

echo "=== 1. nvidia-smi"
nvidia-smi --query-gpu=index,name,uuid,compute_cap,memory.total,driver_version,persistence_mode,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max,pci.bus_id --format=csv
nvidia-smi | sed -n 1,4p
head -1 /proc/driver/nvidia/version

echo "=== 2. NVML probe, as the deploy runs it (python3 - with pynvml on stdin)"
"$py" -c 'import sys; from glmfleet.preflight.gpu import build_probe_script as b; sys.stdout.write(b())' \
    | "$py" - | "$py" -m json.tool

echo "=== 3. preflight with this project's requirements (4x RTX PRO 6000, CUDA 13.2)"
"$py" -m pyinfra @local deploy.py --data preflight_only=true --data preflight_report=/tmp/preflight-strict.json -y
echo "exit status: $?"

count=$(nvidia-smi -L | wc -l)
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
mem_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | sort -n | head -1 | tr -d ' ')
cuda=$(nvidia-smi | grep -o 'CUDA Version: [0-9.]*' | awk '{print $3}')
echo "=== 4. preflight with requirements matching this host: $count GPU(s), cc $cc, >= $((mem_mib * 95 / 100)) MiB, CUDA $cuda"
"$py" -m pyinfra @local deploy.py --data preflight_only=true --data preflight_report=/tmp/preflight-matched.json \
    --data gpu_count="$count" --data tensor_parallel_size="$count" --data decode_context_parallel_size=1 \
    --data max_model_len=131072 --data gpu_compute_capability="\"$cc\"" \
    --data gpu_min_memory_gib="$("$py" -c "print(round($mem_mib * 0.95 / 1024, 1))")" \
    --data image_cuda_version="\"$cuda\"" -y "$@"
echo "exit status: $?"
