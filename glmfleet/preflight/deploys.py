"""The preflight stage as a pyinfra deploy: called by tasks/preflight.py or a deploy file of
one's own (README: "Use a stage in your own deploy"). Changes nothing on the hosts."""

from pyinfra import host, state
from pyinfra.api import deploy
from pyinfra.facts.files import File

from glmfleet import runctx
from glmfleet.preflight import HostFacts, gather_preflight_facts
from glmfleet.preflight.checks import (first_failure, preflight_checks, run_gateway_checks,
                                      run_image_cache_checks, verdict)


@deploy("preflight.check")
def check(settings=None, gateway: bool = False, image_cache: bool = False,
          manifest: dict | None = None, manifest_error=None, docker_conflicts=(),
          held_manifest=None) -> None:
    """Gather the host's facts, check them, record the verdict; once every host is in, the
    readiness table is printed and the failed hosts are dropped. settings: a Settings, a
    mapping over the host's data and the defaults, or None.

    Handed in by tasks/preflight.py (other stages' knowledge; all optional): gateway (the host
    gets the gateway's checks; with image_cache too, those), image_cache (the image cache's
    checks), manifest / manifest_error (the pinned revision's file list, for the disk
    check), docker_conflicts (packages the docker stage would refuse) and
    held_manifest(verified, held) -> the manifest a verified host holds, or None."""
    s = runctx.stage_settings(settings)
    if gateway:
        # HostFacts' disk figures are for the filesystem of the path given: /var (HAProxy's).
        facts = {"gpu": {"gpus": []},
                 "host": host.get_fact(HostFacts, weights_dir="/var/lib", port=s.gateway_port)}
        cert = host.get_fact(File, path=s.gateway_tls_cert) if s.gateway_tls_cert else None
        checks = run_gateway_checks(facts["host"], s, bool(cert))
        if image_cache:  # the same host runs the image cache: its port too
            cache = host.get_fact(HostFacts, weights_dir="/var/lib", port=s.image_cache_port)
            checks += [c for c in run_image_cache_checks(cache, s) if c.name == "image_cache_port"]
    elif image_cache:
        facts = {"gpu": {"gpus": []},
                 "host": host.get_fact(HostFacts, weights_dir="/var/lib", port=s.image_cache_port)}
        checks = run_image_cache_checks(facts["host"], s)
    else:
        facts = gather_preflight_facts(host, s, manifest)
        raw = facts["host"].pop("weights_held_manifest", None)  # not in the report
        held = held_manifest(facts["host"].get("weights_verified"), raw) if held_manifest else None
        checks = preflight_checks(facts["gpu"], facts["host"], s, manifest, manifest_error, held,
                                  docker_conflicts=list(docker_conflicts))
    first = first_failure(checks)
    runctx.record_preflight(state, host, checks, facts, verdict(checks), first.reason if first else "")
