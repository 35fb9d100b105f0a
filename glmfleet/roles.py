"""What a host of the inventory runs, from its groups (pure; the one place these rules live).

    gateway       HAProxy in front of the fleet (glmfleet/gateway/).
    image_cache   the site's image cache (glmfleet/imagecache/): a registry holding the
                  serving image, copied from upstream once, that every GPU host pulls through.
    anything else a GPU host.

Both roles are for hosts without the GPU stages, and one host may hold both. Membership is
what counts: pyinfra also puts every host of an inventory file in a group named after the
file, so "in no other group" could not be told apart.
"""

from __future__ import annotations

GATEWAY_GROUP = "gateway"
IMAGE_CACHE_GROUP = "image_cache"


def is_gateway(groups) -> bool:
    return GATEWAY_GROUP in (groups or ())


def is_image_cache(groups) -> bool:
    return IMAGE_CACHE_GROUP in (groups or ())


def is_gpu_host(groups) -> bool:
    return not is_gateway(groups) and not is_image_cache(groups)
