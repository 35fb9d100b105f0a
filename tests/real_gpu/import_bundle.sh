#!/usr/bin/env bash
# A real import of the Python packages the weights stage ships to a host, on a machine whose
# Python is not the controller's (e.g. the lent GPU box: Ubuntu 24.04, Python 3.12, no
# network). Not part of ./test.sh. Needs only python3 there: no pip, no network.
#
# Before, on a controller that reaches PyPI (values of the machine it will run on):
#   .venv/bin/python -m glmfleet.weights.hostbundle download --python 3.12.3 --machine x86_64 \
#       --glibc 2.39 .device/wheels
# There, from the repo root, with .device/wheels carried:
#   tests/real_gpu/import_bundle.sh [WHEEL_DIR]
#
# 1. packs the wheels as the controller does (hostbundle.wheel_members, write_tarball);
# 2. installs the pack as the deploy does on a host (plan.bundle_install_command: unpack into a
#    private dir, import check with this python3, move into place);
# 3. imports huggingface_hub and hf_xet from there alone and checks Xet is on.
set -euo pipefail
cd "$(dirname "$0")/../.."
wheels=$(cd "${1:-.device/wheels}" && pwd)
py=${PYTHON:-python3}
echo "=== host: $("$py" -V 2>&1), $(uname -m), $(getconf GNU_LIBC_VERSION 2>/dev/null || echo 'no glibc')"
ls "$wheels"/*.whl | sed 's|.*/|  |'
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# hostbundle needs `packaging`: taken from the wheel set itself (a pure wheel imports as a zip)
pkg=$(ls "$wheels"/packaging-*.whl | head -n 1)

echo "=== 1. pack"
PYTHONPATH="$PWD:$pkg" "$py" -S - "$wheels" "$work" <<'EOF'
import json, sys
from pathlib import Path
from glmfleet.weights import hostbundle as hb, plan
wheels, work = Path(sys.argv[1]), Path(sys.argv[2])
files = [m for w in sorted(wheels.glob("*.whl")) for m in hb.wheel_members(w)]
xet = any(name.startswith("hf_xet/") for name, _ in files)
files.append((hb.META_NAME, json.dumps({"xet": xet, "source": "import_bundle.sh"}).encode()))
with open(work / "upload.tar.gz", "wb") as f:
    hb.write_tarball(f, files)
check = hb.Bundle(work / "upload.tar.gz", "0" * 64, {}, xet, "", "wheels").import_check
paths = plan.HostPaths(str(work / "tool"), str(work / "weights"))
(work / "tool" / "pylib").mkdir(parents=True)
(work / "upload.tar.gz").rename(work / "tool" / "pylib" / ".device.tar.gz")
(work / "install.sh").write_text(plan.bundle_install_command(
    paths, "device", str(work / "tool" / "pylib" / ".device.tar.gz"), check, xet, prune=True))
print(f"{len(files)} files, hf_xet {'in' if xet else 'NOT in'} the set; import check: {check}")
EOF

echo "=== 2. install as on a host"
PATH="$(dirname "$(command -v "$py")"):$PATH" sh "$work/install.sh"
lib="$work/tool/pylib/device"
ls "$lib" | sed 's/^/  /' | head -n 40

echo "=== 3. import from the shipped set alone"
env -i PATH="$PATH" PYTHONPATH="$lib" "$py" - "$lib" <<'EOF'
import sys
from importlib import metadata
lib = sys.argv[1]
import hf_xet, huggingface_hub, yaml
from huggingface_hub import constants
from huggingface_hub.utils._runtime import is_xet_available
for mod in (huggingface_hub, hf_xet):
    assert mod.__file__.startswith(lib + "/"), mod.__file__
for d in sorted(metadata.distributions(path=[lib]), key=lambda d: d.metadata["Name"].lower()):
    print(f"  {d.metadata['Name']} {d.version}")
print(f"huggingface_hub {huggingface_hub.__version__}; hf_xet from {hf_xet.__file__}")
print(f"PyYAML with its C part (libyaml): {yaml.__with_libyaml__}")
print(f"Xet available: {is_xet_available()}; HF_HUB_DISABLE_XET: {constants.HF_HUB_DISABLE_XET}")
assert is_xet_available() and not constants.HF_HUB_DISABLE_XET
print("OK: the shipped set imports with", sys.version.split()[0])
EOF
