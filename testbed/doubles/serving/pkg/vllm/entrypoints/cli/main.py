"""TEST DOUBLE shim: `python -m vllm.entrypoints.cli.main serve ...` runs the fake vLLM server.

Expects the serving double's folder (the one holding fake_vllm.py) four levels up, i.e. the
whole testbed/doubles/serving/ copied together, with its pkg/ on PYTHONPATH.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from fake_vllm import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
