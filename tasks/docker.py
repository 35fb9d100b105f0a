"""Stage 'docker': Docker Engine + compose, from Docker's apt repository or the distribution.

docker_packages="docker-ce" (default): Docker's repository as a deb822 source whose key is
fetched, checked against docker_key_fingerprint and only then trusted; then docker-ce,
docker-ce-cli, containerd.io and the buildx/compose plugins. "distro": the distribution's
docker.io and its compose (Debian 12: docker-compose 1.29; Ubuntu: docker-compose-v2).

Order matters: conflicting packages are decided before any change (a refused host is left
as it was); nothing is installed or removed before the key has been accepted, and
daemon.json is merged before the packages go in, so a systemd host's first dockerd start
(by the package itself) already reads it. The summary gets PASS or FAIL with the reason.
"""

from pyinfra import host

from glmfleet.docker import plan
from glmfleet import runctx
from glmfleet.docker.facts import DockerHostFacts
from glmfleet.docker import ops

STAGE = "docker"


def run() -> None:
    s = runctx.settings()
    facts = host.get_fact(DockerHostFacts)
    try:
        host_os = plan.HostOs.from_facts(facts)
    except plan.PlanError as e:
        ops.plan_fail(STAGE, str(e), name="Docker: host check")
        return

    # Conflicts are decided before any change, so "Nothing was changed" holds.
    conflicts = plan.conflicting_packages(s.docker_packages, host_os, facts["packages"])
    if conflicts and not s.docker_remove_conflicts:
        ops.plan_fail(STAGE, (
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
        ops.trusted_key(repo, STAGE, name="Docker: signing key (fingerprint checked)")
        ops.file_absent(repo.legacy_list_path, name="Docker: no one-line docker.list beside docker.sources")
        ops.file_content(repo.sources_path, repo.deb822(), name="Docker: apt source")

    if conflicts:
        ops.apt_remove(conflicts, name="Docker: remove conflicting packages (docker_remove_conflicts)")

    ops.daemon_json(s.docker_log_max_size, s.docker_log_max_file, STAGE, s.registry_mirror,
                    name="Docker: merge daemon.json (log rotation"
                         + (", registry_mirror)" if s.registry_mirror else ")"))
    ops.apt_install(plan.docker_packages(host_os, s), name=f"Docker: install ({s.docker_packages})")
    if facts["init"] != "systemd":
        ops.file_content(ops.INITLESS_HELPER, ops.INITLESS_SCRIPT, mode="755",
                         name="Docker: init-less start/stop helper")
    ops.docker_service(name="Docker: dockerd running the current config")
    ops.verify_docker(s.docker_packages, STAGE, name="Docker: verify")


run()
