"""The service stage as a pyinfra deploy: called by tasks/service.py or a deploy file of one's
own (README: "Use a stage in your own deploy")."""

from pyinfra import host
from pyinfra.api import deploy

from glmfleet import runctx
from glmfleet.service import ops


@deploy("service.rollout")
def rollout(settings=None, drainer=None) -> None:
    """The kit placed and the service healthy, rolled out a canary first, then in batches;
    monitor.sh supervised. settings: a Settings, a mapping over the host's data and the
    defaults, or None. drainer: takes a host out of a gateway before its restart (the
    gateway stage's Drainer, handed in by tasks/service.py), or None."""
    runctx.stage_settings(settings)  # validated before anything; the operations read it back
    batch = ops.batch_size(host.state)
    ops.check(name="Service: Docker, compose and verified weights in place")
    ops.pull_image(name="Service: image on the host (pulled only when missing)")
    ops.rollout(drainer, name=f"Service: kit placed and service healthy (canary, then {batch} at a time)")
    ops.monitor(name="Service: monitor.sh supervised (systemd unit, else started when not running)")
