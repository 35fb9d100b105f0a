"""Stage 'preflight': gather facts (NVML probe + host facts), check, report. Changes nothing.

Three read-only SSH commands per host (host facts, the NVML probe, and the docker stage's
package facts, so the packages that stage would refuse are reported here first), plus one Hub
manifest read per run on the controller (it sizes the disk check). Once every host is in, runctx prints the readiness table and
drops the hosts that failed, before any operation of any stage runs.
"""

from pyinfra import host, state

from glmfleet import runctx
from glmfleet.docker import plan as docker_plan
from glmfleet.docker.facts import DockerHostFacts
from glmfleet.preflight import gather_preflight_facts
from glmfleet.preflight.checks import check_manifest, first_failure, run_checks, verdict
from glmfleet.weights.ops import manifest_for_run


def docker_conflicts(settings) -> list[str]:
    """What the docker stage would refuse on this host (the same pure decision it acts on)."""
    facts = host.get_fact(DockerHostFacts)
    try:
        host_os = docker_plan.HostOs.from_facts(facts)
    except docker_plan.PlanError:
        host_os = None  # the os check reports an unsupported host
    return docker_plan.conflicting_packages(settings.docker_packages, host_os, facts["packages"])


settings = runctx.settings()
manifest, manifest_error = manifest_for_run(state, settings)
facts = gather_preflight_facts(host, settings, manifest)
checks = run_checks(facts["gpu"], facts["host"], settings,
                    weights_total_bytes=manifest["total_size"] if manifest else None,
                    docker_conflicts=docker_conflicts(settings))
checks.append(check_manifest(manifest, manifest_error, settings))
first = first_failure(checks)
runctx.record_preflight(state, host, checks, facts, verdict(checks), first.reason if first else "")
