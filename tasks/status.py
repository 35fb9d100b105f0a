"""Read-only service status of the fleet: `pyinfra inventory/gpu.py tasks/status.py`.

Two read-only SSH commands per host, no operation: each host's service state, API readiness (probed on
the host through the kit's own client, with the kit's API key), revision, image, uptime,
peaks from logs/peak.json and whether the kit on disk matches the settings. Then the load:
running and waiting requests and KV-cache use from each host's vLLM /metrics and, when the
inventory has a `gateway` group, each host's state and sessions in HAProxy (runtime API).
Needs no model_revision (it reports what runs; a pin that differs is shown), never prompts
(-y or not, no terminal needed) and exits 1 only when a host is not serving (unreachable
hosts included, with the SSH reason). Nothing on the hosts changes.
"""

from pyinfra import host

from glmfleet.gateway.ops import gateway_view, gpu_hosts
from glmfleet.roles import is_gpu_host
from glmfleet.service.ops import record_status

# The real State and Host objects (pyinfra's module-level names are context proxies).
if is_gpu_host(host.groups):  # gateway hosts are read through the runtime API instead
    record_status(host.state, host.state.inventory.get_host(host.name),
                  hosts={h.name for h in gpu_hosts(host.state)}, gateway_view=gateway_view)
