"""Stage 'gateway': HAProxy in front of the fleet, on the hosts of the `gateway` group.

Runs after the GPU stages (deploy.py includes it last), so the admin states reflect this
run's results. The config is rendered from the inventory (every GPU host, its address and
sizing), so --dry shows whether it would change; see glmfleet/gateway/plan.py for the
choices in it (leastconn, maxconn from max_num_seqs, /health checks, timeouts, retries).
"""

from pyinfra import host

from glmfleet import runctx
from glmfleet.gateway import ops


def run() -> None:
    s = runctx.settings()
    scheme = "https" if s.gateway_tls_cert else "http"
    endpoint = f"{scheme}://{host.data.get('ssh_hostname') or host.name}:{s.gateway_port}/v1"
    ops.packages(name="Gateway: haproxy and socat (distribution packages)")
    ops.config(ops.render(host.state, s), endpoint,
               name="Gateway: haproxy.cfg from the fleet (validated, reloaded on change)")
    ops.admin_states(name="Gateway: failed hosts held out, passed hosts ready")
    runctx.record_info(host.name, endpoint=endpoint)


run()
