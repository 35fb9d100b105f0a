"""pyinfra facts of a GPU host for preflight (gather here; glmfleet.preflight.checks decides).

Two SSH commands per host: HostFacts (one sh script) and GpuProbe (python3 reading the
NVML probe from stdin). Both always succeed and return dicts; failures are inside them.

    from glmfleet.preflight import gather_preflight_facts
    facts = gather_preflight_facts(host, settings)   # {"gpu": {...}, "host": {...}}
    checks = glmfleet.preflight.checks.run_checks(facts["gpu"], facts["host"], settings)

glmfleet.preflight.check(settings, ...): the stage as a pyinfra deploy (deploys.py).
"""

from __future__ import annotations

from glmfleet.preflight.gpu import GpuProbe, parse_probe_output, probe_stdin
from glmfleet.preflight.host import ApiKeyState, HostFacts, parse_host_facts

__all__ = ["GpuProbe", "HostFacts", "gather_preflight_facts", "parse_host_facts",
           "parse_probe_output", "probe_stdin"]


def gather_preflight_facts(host, settings, manifest: dict | None = None) -> dict:
    """Both fact dicts for one pyinfra host, as {"gpu": ..., "host": ...}. ``manifest``: the
    pinned revision's, whose files alone count as weights present (None: none counts)."""
    expected = tuple((f["path"], f["size"]) for f in (manifest or {}).get("files", ()))
    host_facts = host.get_fact(HostFacts, weights_dir=settings.weights_dir, port=settings.port,
                               expected=expected)
    gpu = host.get_fact(GpuProbe, _stdin=probe_stdin())
    if settings.api_key is None:  # the service stage keeps the host's key: is there one?
        host_facts = {**host_facts, "api_key_state": host.get_fact(ApiKeyState, service_dir=settings.service_dir)}
    return {"gpu": gpu, "host": host_facts}


def __getattr__(name: str):
    # The deploy functions, imported on first use (they import pyinfra; plan.py stays pure).
    if name == "check":
        from glmfleet.preflight import deploys
        return getattr(deploys, name)
    raise AttributeError(f"module 'glmfleet.preflight' has no attribute {name!r}")
