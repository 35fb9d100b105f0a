"""What a host of the inventory runs, from its groups (pure; the one place these rules live).

    gateway       HAProxy in front of the fleet; never a GPU stage.
    image_cache   the site's image cache (glmfleet/imagecache/): a registry holding the
                  serving image, copied from upstream once, that every GPU host pulls through.
                  Additive: a host also in another group (e.g. gpu) runs that group's stages
                  too; a host only in image_cache runs the cache alone.
    anything else a GPU host.
"""

from __future__ import annotations

GATEWAY_GROUP = "gateway"
IMAGE_CACHE_GROUP = "image_cache"


def is_gateway(groups) -> bool:
    return GATEWAY_GROUP in (groups or ())


def is_image_cache(groups) -> bool:
    return IMAGE_CACHE_GROUP in (groups or ())


def is_gpu_host(groups) -> bool:
    """Not a gateway and in some group other than image_cache (pyinfra's own 'all' aside)."""
    groups = [g for g in groups or () if g != "all"]
    return not is_gateway(groups) and (not groups or any(g != IMAGE_CACHE_GROUP for g in groups))
