"""Stage 'preflight': gather facts (NVML probe + host facts), check, report. Changes nothing.

Two read-only SSH commands per host, plus one Hub manifest read per run on the controller
(it sizes the disk check). Once every host is in, runctx prints the readiness table and
drops the hosts that failed, before any operation of any stage runs.
"""

from pyinfra import host, state

from glmfleet import runctx
from glmfleet.preflight import gather_preflight_facts
from glmfleet.preflight.checks import check_manifest, first_failure, run_checks, verdict
from glmfleet.weights.ops import manifest_for_run

settings = runctx.settings()
manifest, manifest_error = manifest_for_run(state, settings)
facts = gather_preflight_facts(host, settings)
checks = run_checks(facts["gpu"], facts["host"], settings,
                    weights_total_bytes=manifest["total_size"] if manifest else None)
checks.append(check_manifest(manifest, manifest_error, settings))
first = first_failure(checks)
runctx.record_preflight(state, host, checks, facts, verdict(checks), first.reason if first else "")
