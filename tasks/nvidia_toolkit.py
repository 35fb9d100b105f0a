"""Stage 'nvidia_toolkit': NVIDIA Container Toolkit wired into Docker.

NVIDIA's flat apt repository (suite "/"), its key checked against nvidia_key_fingerprint
before it is trusted; the four toolkit packages (all pinned together when
nvidia_toolkit_version is set); `nvidia-ctk runtime configure --runtime=docker`; a CDI spec
where cdi_decision wants one; dockerd restarted once if any of that changed what it runs
(its GPU support is registered at start). Then, only when dockerd or the toolkit changed
since the last pass (or with gpu_check_always), a throwaway `docker run --gpus all` (its
image pulled first when missing, said so) must list the GPUs preflight found; where that
cannot run (no driver, no image) the summary says WARN with the reason.
"""

from pyinfra import host

from glmfleet.docker import plan
from glmfleet import runctx
from glmfleet.docker.facts import DockerHostFacts
from glmfleet.docker import ops

STAGE = "nvidia_toolkit"


def run() -> None:
    s = runctx.settings()
    docker_result = runctx.run_for(host.state).stages.get(host.name, {}).get("docker")
    if docker_result and docker_result[0] == "FAIL":
        runctx.record(host.name, STAGE, "FAIL", "not attempted: the docker stage failed on this host")
        return
    try:
        host_os = plan.HostOs.from_facts(host.get_fact(DockerHostFacts))
    except plan.PlanError as e:
        ops.plan_fail(STAGE, str(e), name="Toolkit: host check")
        return

    repo = plan.nvidia_repo(host_os, s)
    # already there after a docker-ce docker stage; the distro flavour did not need them yet
    ops.apt_install(list(plan.PREREQUISITE_PACKAGES), name="apt: gpg and CA certificates")
    ops.trusted_key(repo, STAGE, name="Toolkit: signing key (fingerprint checked)")
    ops.file_absent(repo.legacy_list_path, name="Toolkit: no one-line .list beside the .sources")
    ops.file_content(repo.sources_path, repo.deb822(), name="Toolkit: apt source")
    ops.apt_install(plan.toolkit_packages(s), name="Toolkit: install")
    ops.nvidia_runtime(STAGE, name="Toolkit: nvidia-ctk runtime configure --runtime=docker")
    ops.cdi_spec(s.nvidia_cdi, STAGE, name="Toolkit: CDI spec")
    ops.docker_service(name="Toolkit: dockerd running the current config")
    ops.gpu_container_check(s.gpu_check_image, s.gpu_check_always,
                            name=f"Toolkit: GPU container check (docker run --rm --gpus all "
                                 f"{s.gpu_check_image or '-'} nvidia-smi -L; pulls the image if missing; "
                                 "only after a dockerd or toolkit change, or gpu_check_always)")
    ops.verify_toolkit(s.gpu_check_image, s.nvidia_cdi, STAGE, name="Toolkit: verify")


run()
