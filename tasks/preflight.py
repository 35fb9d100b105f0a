"""Stage 'preflight': gather facts (NVML probe + host facts), check, report. Changes nothing.

Three read-only SSH commands per host (host facts, the NVML probe, and the docker stage's
package facts, so the packages that stage would refuse are reported here first), plus one Hub
manifest read per run on the controller (it sizes the disk check; when the Hub cannot be
reached, a host whose weights are verified for the pinned revision goes on with the manifest
it holds, with a WARN). Once every host is in, runctx prints the readiness table and
drops the hosts that failed, before any operation of any stage runs. Hosts of the
`gateway` group get the gateway's checks instead (OS, disk, port, certificate; no GPU), a
host of the `image_cache` group the image cache's (OS, disk, port).
The stage itself: glmfleet.preflight.check; this file hands it the other stages' knowledge.
"""

from pyinfra import host, state

from glmfleet import preflight, runctx
from glmfleet.docker import plan as docker_plan
from glmfleet.docker.facts import DockerHostFacts
from glmfleet.roles import is_gateway, is_gpu_host, is_image_cache
from glmfleet.weights.manifest import held_manifest
from glmfleet.weights.ops import keep_held_manifest, manifest_for_run


def docker_conflicts(settings) -> list[str]:
    """What the docker stage would refuse on this host (the same pure decision it acts on)."""
    facts = host.get_fact(DockerHostFacts)
    try:
        host_os = docker_plan.HostOs.from_facts(facts)
    except docker_plan.PlanError:
        host_os = None  # the os check reports an unsupported host
    return docker_plan.conflicting_packages(settings.docker_packages, host_os, facts["packages"])


settings = runctx.settings()
if not is_gpu_host(host.groups):
    # a gateway (also when it runs the image cache), or an image cache host
    preflight.check(gateway=is_gateway(host.groups), image_cache=is_image_cache(host.groups))
else:
    manifest, manifest_error = manifest_for_run(state, settings)

    def held(verified, raw):
        """The manifest a verified host holds: used only when the Hub cannot be reached."""
        found = held_manifest(verified, raw, settings.model_repo, settings.model_revision)
        if manifest is None and manifest_error is not None and found is not None:
            keep_held_manifest(state, host.name, found)
        return found

    preflight.check(manifest=manifest, manifest_error=manifest_error,
                    docker_conflicts=docker_conflicts(settings), held_manifest=held)
