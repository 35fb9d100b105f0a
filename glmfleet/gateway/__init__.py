"""Stage 'gateway': HAProxy in front of the fleet, on the hosts of the `gateway` group.

glmfleet.gateway.haproxy(settings): the stage as a pyinfra deploy.
"""


def __getattr__(name: str):
    # The deploy functions, imported on first use (they import pyinfra; plan.py stays pure).
    if name == "haproxy":
        from glmfleet.gateway import deploys
        return getattr(deploys, name)
    raise AttributeError(f"module 'glmfleet.gateway' has no attribute {name!r}")
