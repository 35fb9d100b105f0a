"""Build the fake libnvidia-ml.so.1 (TEST DOUBLE) and optionally write a profile's files.

    python -m testbed.doubles.nvml.build OUT_DIR [--profile rtx6000x4]

prints the library path; with --profile also writes OUT_DIR/<profile>.conf and
OUT_DIR/<profile>.version. Then, for example:

    LD_LIBRARY_PATH=OUT_DIR FAKE_NVML_CONFIG=OUT_DIR/rtx6000x4.conf \
        GLMFLEET_NVIDIA_VERSION_FILE=OUT_DIR/rtx6000x4.version python3 glmfleet/preflight/gpu_probe.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from testbed.doubles import nvml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--profile", choices=sorted(nvml.PROFILES))
    args = parser.parse_args(argv)
    print(nvml.build_fake_nvml(args.out_dir))
    if args.profile:
        nvml.write_config(args.profile, args.out_dir / f"{args.profile}.conf")
        (args.out_dir / f"{args.profile}.version").write_text(nvml.kernel_module_text(args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
