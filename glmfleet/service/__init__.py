"""Stage 'service': the box kit placed, the service started, smoke-tested and rolled out.

plan.py (pure decisions), ops.py (kit placement and the gated rollout), status.py (the
read-only status mode), monitor.py (supervision of the kit's monitor.sh), apikey.py (the
fleet's API key), kit_by_hand.py (render the kit without pyinfra).
glmfleet.service.rollout(settings): the stage as a pyinfra deploy; glmfleet.service.pull_early
(settings): the image pull started in the background before the weights.
"""


def __getattr__(name: str):
    # The deploy functions, imported on first use (they import pyinfra; plan.py stays pure).
    if name in ("rollout", "pull_early"):
        from glmfleet.service import deploys
        return getattr(deploys, name)
    raise AttributeError(f"module 'glmfleet.service' has no attribute {name!r}")
