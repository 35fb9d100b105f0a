"""Entry point: pyinfra inventory/gpu.py deploy.py

Runs the stages in order, each in its own file under tasks/. Preflight runs first on every
host; a host that fails it is dropped before any operation touches it. With
`--data preflight_only=true` nothing after preflight runs and nothing changes. Hosts of the
`gateway` group get HAProxy (tasks/gateway.py, after the GPU stages) and no GPU stage; hosts
of the `image_cache` group get the site's image cache (tasks/image_cache.py, first, so its
copy from upstream runs while the others install Docker) and no GPU stage; one host may be
in both (glmfleet/roles.py).
"""

from pyinfra import host, local, state

from glmfleet import runctx
from glmfleet.gateway.ops import write_prometheus_targets
from glmfleet.roles import is_gateway, is_gpu_host, is_image_cache

settings = runctx.settings()

local.include("tasks/preflight.py")

if not settings.preflight_only and runctx.passed_preflight(state, host):
    if is_image_cache(host.groups):
        local.include("tasks/image_cache.py")
    if is_gpu_host(host.groups):
        for stage in ("docker", "nvidia_toolkit", "image_pull", "weights", "service"):
            local.include(f"tasks/{stage}.py")
    if is_gateway(host.groups):
        local.include("tasks/gateway.py")
    path = write_prometheus_targets(host.state)
    if path:
        runctx.echo(f"Prometheus targets (file_sd) written to {path}")
