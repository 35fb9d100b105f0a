"""Stages 'docker' and 'nvidia_toolkit': Docker Engine and the NVIDIA Container Toolkit.

facts.py gathers (read-only commands), plan.py decides (pure), ops.py changes the host.
glmfleet.docker.install(settings) and .nvidia_toolkit(settings): the stages as pyinfra deploys.
"""


def __getattr__(name: str):
    # The deploy functions, imported on first use (they import pyinfra; plan.py stays pure).
    if name in ("install", "nvidia_toolkit"):
        from glmfleet.docker import deploys
        return getattr(deploys, name)
    raise AttributeError(f"module 'glmfleet.docker' has no attribute {name!r}")
