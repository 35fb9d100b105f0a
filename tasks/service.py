"""Stage 'service': the box kit placed, the service brought up and verified, fleet rollout.

Per host: refuse (FAIL, nothing changed) without Docker + compose or without weights verified
for the pinned revision; pull the image when it is not there (first waiting for the
background pull tasks/image_pull.py started); then, in rollout order (a
canary, then batches of rollout_batch_size; the first failure stops the rest), place the kit
under service_dir and run its own launch.sh (start, wait with progress, smoke test READY),
then check the boot log (one indexer-skip line per S, fp8 KV cache). A host after the canary
first gets the canary's kernel/JIT cache volume when its compile key is the same
(jit_cache_seed; glmfleet/service/jitseed.py). The service restarts
only when what it runs changed (compose file, .env values, serve.sh, image, weights
revision). A host failing its health check goes back to its last known good kit. Last,
monitor.sh is supervised: a systemd unit on systemd hosts, else started when not running
(supervision on deploy only there; see glmfleet/service/monitor.py).
How the rollout is gated inside pyinfra's execution: glmfleet/ops/service.py.
"""

from pyinfra import host

from glmfleet import runctx
from glmfleet.gateway.ops import Drainer
from glmfleet.service import ops


def run() -> None:
    runctx.settings()  # validated before anything (raises a clean error otherwise)
    batch = ops.batch_size(host.state)
    ops.check(name="Service: Docker, compose and verified weights in place")
    ops.pull_image(name="Service: image on the host (pulled only when missing)")
    drainer = Drainer(host.state) or None  # hosts of the `gateway` group: drain before a restart
    ops.rollout(drainer, name=f"Service: kit placed and service healthy (canary, then {batch} at a time)")
    ops.monitor(name="Service: monitor.sh supervised (systemd unit, else started when not running)")


run()
