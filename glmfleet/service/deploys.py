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
    ops.seed_server_stop(name="Service: the canary's JIT cache no longer served")
    ops.monitor(name="Service: monitor.sh supervised (systemd unit, else started when not running)")


@deploy("service.pull_early")
def pull_early(settings=None, wait_for=None) -> None:
    """The serving image starts downloading in the background as soon as Docker is up, so
    it comes down while the weights do (glmfleet/service/imagepull.py); rollout waits for it.
    Skipped on a host whose docker or nvidia_toolkit stage failed in this run. wait_for
    (handed in by tasks/image_pull.py: the image cache's copy_wait), or None: (state, host,
    settings) -> None (not behind the cache), () (behind it, pull at once) or (cache host,
    state command, done(lines), note(lines)) (wait for its copy first)."""
    runctx.stage_settings(settings)
    stages = runctx.run_for(host.state).stages.get(host.name, {})
    if any(stages.get(stage, ("",))[0] == "FAIL" for stage in ("docker", "nvidia_toolkit")):
        return  # no usable Docker: the service stage refuses this host with the reason
    ops.pull_start(wait_for, name="Image: pull started in the background (runs while the weights download)")
