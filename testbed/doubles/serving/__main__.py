"""`python3 -m testbed.doubles.serving serve /model ...` (or `python3 testbed/doubles/serving ...`):
run the fake vLLM server, a TEST DOUBLE of the serving image."""

import sys

if __package__:
    from .fake_vllm import main
else:  # run as a directory: its own folder is on sys.path
    from fake_vllm import main  # type: ignore[no-redef]

sys.exit(main())
