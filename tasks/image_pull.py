"""Stage 'image_pull': the serving image starts downloading as soon as Docker is up.

A detached `docker pull` (timestamped log: /var/log/glmfleet/image-pull.log on the host), so
the tens of GB of the image come down while the weights download; the service stage waits for
it. Nothing happens when the image is there or a background pull of it already ran
(glmfleet/service/imagepull.py). Behind a registry_mirror the first host pulling the image
through it starts at once, the others when its pull is done: every layer is then in the
site's cache and comes from upstream for that one pull only.
"""

from pyinfra import host

from glmfleet import runctx
from glmfleet.service import ops


def run() -> None:
    stages = runctx.run_for(host.state).stages.get(host.name, {})
    if any(stages.get(stage, ("",))[0] == "FAIL" for stage in ("docker", "nvidia_toolkit")):
        return  # no usable Docker: the service stage refuses this host with the reason
    ops.pull_start(name="Image: pull started in the background (runs while the weights download)")


run()
