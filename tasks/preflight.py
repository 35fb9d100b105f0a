"""Stage 'preflight': gather facts (NVML probe + host facts), check, report. Changes nothing.

Two read-only SSH commands per host, plus one Hub manifest read per run on the controller
(it sizes the disk check; when the Hub cannot be reached, a host whose weights are verified
for the pinned revision goes on with the manifest it holds, with a WARN). Once every host is in, runctx prints the readiness table and
drops the hosts that failed, before any operation of any stage runs.
"""

from pyinfra import host, state

from glmfleet import runctx
from glmfleet.preflight import gather_preflight_facts
from glmfleet.preflight.checks import first_failure, preflight_checks, verdict
from glmfleet.weights.manifest import held_manifest
from glmfleet.weights.ops import keep_held_manifest, manifest_for_run

settings = runctx.settings()
manifest, manifest_error = manifest_for_run(state, settings)
facts = gather_preflight_facts(host, settings)
# The manifest a verified host holds: used only when the Hub cannot be reached (not in the report).
held = held_manifest(facts["host"].get("weights_verified"), facts["host"].pop("weights_held_manifest", None),
                     settings.model_repo, settings.model_revision)
if manifest is None and manifest_error is not None and held is not None:
    keep_held_manifest(state, host.name, held)
checks = preflight_checks(facts["gpu"], facts["host"], settings, manifest, manifest_error, held)
first = first_failure(checks)
runctx.record_preflight(state, host, checks, facts, verdict(checks), first.reason if first else "")
