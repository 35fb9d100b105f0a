"""Read-only service status of the fleet: `pyinfra inventory/gpu.py tasks/status.py`.

One SSH command per host, no operation: each host's service state, API readiness (probed on
the host through the kit's own client, with the kit's API key), revision, image, uptime,
peaks from logs/peak.json and whether the kit on disk matches the settings. The run exits
non-zero when a host is not serving the pinned revision. Nothing on the hosts changes.
"""

from pyinfra import host

from glmfleet.service.ops import record_status

# The real State and Host objects (pyinfra's module-level names are context proxies).
record_status(host.state, host.state.inventory.get_host(host.name))
