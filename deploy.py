"""Entry point: pyinfra inventory/gpu.py deploy.py

Runs the stages in order, each in its own file under tasks/. Preflight runs first on every
host; a host that fails it is dropped before any operation touches it. With
`--data preflight_only=true` nothing after preflight runs and nothing changes. Hosts of the
`gateway` group get HAProxy (tasks/gateway.py, after the GPU stages) and no GPU stage.
"""

from pyinfra import host, local, state

from glmfleet import runctx
from glmfleet.gateway.ops import write_prometheus_targets
from glmfleet.gateway.plan import is_gateway

settings = runctx.settings()

local.include("tasks/preflight.py")

if not settings.preflight_only and runctx.passed_preflight(state, host):
    gateway = is_gateway(host.groups)
    for stage in () if gateway else ("docker", "nvidia_toolkit", "image_pull", "weights", "service"):
        local.include(f"tasks/{stage}.py")
    if gateway:
        local.include("tasks/gateway.py")
    path = write_prometheus_targets(host.state)
    if path:
        runctx.echo(f"Prometheus targets (file_sd) written to {path}")
