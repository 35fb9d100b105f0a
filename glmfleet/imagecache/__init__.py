"""Stage 'image_cache': the site's copy of the serving image, on the hosts of the
`image_cache` group (glmfleet/roles.py); every GPU host pulls it through this cache.

glmfleet.imagecache.registry(settings): the stage as a pyinfra deploy.
"""


def __getattr__(name: str):
    # The deploy function, imported on first use (it imports pyinfra; plan.py stays pure).
    if name == "registry":
        from glmfleet.imagecache import deploys
        return getattr(deploys, name)
    raise AttributeError(f"module 'glmfleet.imagecache' has no attribute {name!r}")
