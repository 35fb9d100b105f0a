"""Stage 'weights': the checkpoint on each host, downloaded and hash-checked.

manifest.py (the Hub's listing at the pinned commit), plan.py (pure decisions and the host
commands), ops.py (pyinfra operations), hostbundle.py (the Python packages shipped for the
download), hostside/ (the tool that runs ON the host, shipped as one zip application).
glmfleet.weights.sync(settings): the stage as a pyinfra deploy.
"""


def __getattr__(name: str):
    # The deploy functions, imported on first use (they import pyinfra; plan.py stays pure).
    if name == "sync":
        from glmfleet.weights import deploys
        return getattr(deploys, name)
    raise AttributeError(f"module 'glmfleet.weights' has no attribute {name!r}")
