"""The image cache stage as a pyinfra deploy: called by tasks/image_cache.py or a deploy file
of one's own (README: "Use a stage in your own deploy")."""

from pyinfra.api import deploy

from glmfleet import runctx
from glmfleet.imagecache import ops


@deploy("image_cache.registry")
def registry(settings=None) -> None:
    """The registry (read-only, its own systemd unit) and the image copied into it from
    upstream in the background. settings: a Settings, a mapping over the host's data and the
    defaults, or None."""
    s = runctx.stage_settings(settings)
    if not ops.usable(s):
        return
    put = ops.config(s, name="Image cache: registry config (read-only, at the site address)")
    ops.packages(s, name="Image cache: docker-registry and skopeo (distribution packages)")
    ops.service(put, name="Image cache: registry running (systemd, restarted on a new config)")
    ops.copy(name="Image cache: image copied from upstream in the background (each layer once)")
