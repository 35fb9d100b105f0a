"""Stage 'preflight': gather facts (NVML probe + host facts), check, report. Changes nothing.

Two read-only SSH commands per host, plus one Hub manifest read per run on the controller
(it sizes the disk check). Once every host is in, runctx prints the readiness table and
drops the hosts that failed, before any operation of any stage runs. Hosts of the
`gateway` group get the gateway's checks instead (OS, disk, port, certificate; no GPU).
"""

from pyinfra import host, state
from pyinfra.facts.files import File

from glmfleet import runctx
from glmfleet.gateway.plan import is_gateway
from glmfleet.preflight import HostFacts, gather_preflight_facts
from glmfleet.preflight.checks import (check_manifest, first_failure, run_checks,
                                       run_gateway_checks, verdict)
from glmfleet.weights.ops import manifest_for_run

settings = runctx.settings()
if is_gateway(host.groups):
    # HostFacts' disk figures are for the filesystem of the path given: /var (HAProxy's).
    facts = {"gpu": {"gpus": []},
             "host": host.get_fact(HostFacts, weights_dir="/var/lib", port=settings.gateway_port)}
    cert = host.get_fact(File, path=settings.gateway_tls_cert) if settings.gateway_tls_cert else None
    checks = run_gateway_checks(facts["host"], settings, bool(cert))
else:
    manifest, manifest_error = manifest_for_run(state, settings)
    facts = gather_preflight_facts(host, settings)
    checks = run_checks(facts["gpu"], facts["host"], settings,
                        weights_total_bytes=manifest["total_size"] if manifest else None)
    checks.append(check_manifest(manifest, manifest_error, settings))
first = first_failure(checks)
runctx.record_preflight(state, host, checks, facts, verdict(checks), first.reason if first else "")
