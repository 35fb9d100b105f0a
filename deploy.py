"""Entry point: pyinfra inventory/gpu.py deploy.py

Runs the stages in order, each in its own file under tasks/. Preflight runs first on every
host; a host that fails it is dropped before any operation touches it. With
`--data preflight_only=true` nothing after preflight runs and nothing changes.
"""

from pyinfra import host, local, state

from glmfleet import runctx

settings = runctx.settings()

local.include("tasks/preflight.py")

if not settings.preflight_only and runctx.passed_preflight(state, host):
    for stage in ("docker", "nvidia_toolkit", "weights", "service"):
        local.include(f"tasks/{stage}.py")
