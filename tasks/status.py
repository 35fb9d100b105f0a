"""Read-only service status of the fleet: `pyinfra inventory/gpu.py tasks/status.py`.

One SSH command per host, no operation: each host's service state, API readiness (probed on
the host through the kit's own client, with the kit's API key), revision, image, uptime,
peaks from logs/peak.json and whether the kit on disk matches the settings. Needs no
model_revision (it reports what runs; a pin that differs is shown), never prompts (-y or
not, no terminal needed) and exits 1 only when a host is not serving (unreachable hosts
included, with the SSH reason). Nothing on the hosts changes.
"""

from pyinfra import host

from glmfleet.service.ops import record_status

# The real State and Host objects (pyinfra's module-level names are context proxies).
record_status(host.state, host.state.inventory.get_host(host.name))
