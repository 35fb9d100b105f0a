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
How the rollout is gated inside pyinfra's execution: glmfleet/service/ops.py.
The stage itself: glmfleet.service.rollout; this file hands it the gateway's drainer.
"""

from pyinfra import host

from glmfleet import service
from glmfleet.gateway.ops import Drainer

# hosts of the `gateway` group: each host is drained there before its restart
service.rollout(drainer=Drainer(host.state) or None)
