"""The gateway stage as a pyinfra deploy: called by tasks/gateway.py or a deploy file of one's
own (README: "Use a stage in your own deploy")."""

from pyinfra import host
from pyinfra.api import deploy

from glmfleet import runctx
from glmfleet.gateway import ops


@deploy("gateway.haproxy")
def haproxy(settings=None) -> None:
    """HAProxy in front of every GPU host of the inventory (validated config, reloaded on
    change; failed hosts held out). settings: a Settings, a mapping over the host's data and
    the defaults, or None."""
    s = runctx.stage_settings(settings)
    scheme = "https" if s.gateway_tls_cert else "http"
    endpoint = f"{scheme}://{host.data.get('ssh_hostname') or host.name}:{s.gateway_port}/v1"
    ops.packages(name="Gateway: haproxy and socat (distribution packages)")
    ops.config(ops.render(host.state, s), endpoint,
               name="Gateway: haproxy.cfg from the fleet (validated, reloaded on change)")
    ops.admin_states(name="Gateway: failed hosts held out, passed hosts ready")
    runctx.record_info(host.name, endpoint=endpoint)
