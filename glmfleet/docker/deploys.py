"""The docker and nvidia_toolkit stages as pyinfra deploys: call them from deploy.py's tasks or
from a deploy file of one's own (README: "Use a stage in your own deploy")."""

from pyinfra import host
from pyinfra.api import deploy

from glmfleet import runctx
from glmfleet.docker import ops, plan
from glmfleet.docker.facts import DockerHostFacts


@deploy("docker.install")
def install(settings=None) -> None:
    """Docker Engine + compose (docker_packages), daemon.json's log rotation, dockerd running.
    settings: a Settings, a mapping over the host's data and the defaults, or None."""
    stage = "docker"
    s = runctx.stage_settings(settings)
    facts = host.get_fact(DockerHostFacts)
    try:
        host_os = plan.HostOs.from_facts(facts)
    except plan.PlanError as e:
        ops.plan_fail(stage, str(e), name="Docker: host check")
        return

    # Conflicts are decided before any change, so "Nothing was changed" holds.
    conflicts = plan.conflicting_packages(s.docker_packages, host_os, facts["packages"])
    if conflicts and not s.docker_remove_conflicts:
        ops.plan_fail(stage, (
            f"installed packages conflict with docker_packages={s.docker_packages!r}: "
            f"{', '.join(conflicts)}. Nothing was changed. Remove them yourself, set "
            "docker_remove_conflicts=true to let the deploy remove them (apt-get remove; "
            "running containers of that engine stop), or choose the other docker_packages"),
            name="Docker: conflicting packages")
        return

    # Proxied sites: one apt-wide proxy (the key download uses apt's downloader, so it too).
    if s.apt_proxy:
        ops.file_content(plan.APT_PROXY_CONF, plan.apt_proxy_conf(s.apt_proxy),
                         name="apt: proxy (apt_proxy)")
    else:
        ops.file_absent(plan.APT_PROXY_CONF, name="apt: no glmfleet proxy setting")

    if s.docker_packages == "docker-ce":
        repo = plan.docker_repo(host_os, s)
        ops.apt_install(list(plan.PREREQUISITE_PACKAGES), name="apt: gpg and CA certificates")
        ops.trusted_key(repo, stage, name="Docker: signing key (fingerprint checked)")
        ops.file_absent(repo.legacy_list_path, name="Docker: no one-line docker.list beside docker.sources")
        ops.file_content(repo.sources_path, repo.deb822(), name="Docker: apt source")

    if conflicts:
        ops.apt_remove(conflicts, name="Docker: remove conflicting packages (docker_remove_conflicts)")

    ops.daemon_json(s.docker_log_max_size, s.docker_log_max_file, stage, s.registry_mirror,
                    name="Docker: merge daemon.json (log rotation"
                         + (", registry_mirror)" if s.registry_mirror else ")"))
    ops.apt_install(plan.docker_packages(host_os, s), name=f"Docker: install ({s.docker_packages})")
    if facts["init"] != "systemd":
        ops.file_content(ops.INITLESS_HELPER, ops.INITLESS_SCRIPT, mode="755",
                         name="Docker: init-less start/stop helper")
    ops.docker_service(name="Docker: dockerd running the current config")
    ops.verify_docker(s.docker_packages, stage, name="Docker: verify")


@deploy("docker.nvidia_toolkit")
def nvidia_toolkit(settings=None) -> None:
    """The NVIDIA Container Toolkit wired into Docker, then a GPU container check.
    settings: as for install()."""
    stage = "nvidia_toolkit"
    s = runctx.stage_settings(settings)
    docker_result = runctx.run_for(host.state).stages.get(host.name, {}).get("docker")
    if docker_result and docker_result[0] == "FAIL":
        runctx.record(host.name, stage, "FAIL", "not attempted: the docker stage failed on this host")
        return
    try:
        host_os = plan.HostOs.from_facts(host.get_fact(DockerHostFacts))
    except plan.PlanError as e:
        ops.plan_fail(stage, str(e), name="Toolkit: host check")
        return

    repo = plan.nvidia_repo(host_os, s)
    # already there after a docker-ce docker stage; the distro flavour did not need them yet
    ops.apt_install(list(plan.PREREQUISITE_PACKAGES), name="apt: gpg and CA certificates")
    ops.trusted_key(repo, stage, name="Toolkit: signing key (fingerprint checked)")
    ops.file_absent(repo.legacy_list_path, name="Toolkit: no one-line .list beside the .sources")
    ops.file_content(repo.sources_path, repo.deb822(), name="Toolkit: apt source")
    ops.apt_install(plan.toolkit_packages(s), name="Toolkit: install")
    ops.nvidia_runtime(stage, name="Toolkit: nvidia-ctk runtime configure --runtime=docker")
    ops.cdi_spec(s.nvidia_cdi, stage, name="Toolkit: CDI spec")
    ops.docker_service(name="Toolkit: dockerd running the current config")
    ops.gpu_container_check(s.gpu_check_image, s.gpu_check_always,
                            name=f"Toolkit: GPU container check (docker run --rm --gpus all "
                                 f"{s.gpu_check_image or '-'} nvidia-smi -L; pulls the image if missing; "
                                 "only after a dockerd or toolkit change, or gpu_check_always)")
    ops.verify_toolkit(s.gpu_check_image, s.nvidia_cdi, stage, name="Toolkit: verify")
