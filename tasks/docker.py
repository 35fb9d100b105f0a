"""Stage 'docker': Docker Engine + compose, from Docker's apt repository or the distribution.

docker_packages="docker-ce" (default): Docker's repository as a deb822 source whose key is
fetched, checked against docker_key_fingerprint and only then trusted; then docker-ce,
docker-ce-cli, containerd.io and the buildx/compose plugins. "distro": the distribution's
docker.io and its compose (Debian 12: docker-compose 1.29; Ubuntu: docker-compose-v2).

Order matters: conflicting packages are decided before any change (a refused host is left
as it was); nothing is installed or removed before the key has been accepted, and
daemon.json is merged before the packages go in, so a systemd host's first dockerd start
(by the package itself) already reads it. The summary gets PASS or FAIL with the reason.
The stage itself: glmfleet.docker.install (a pyinfra deploy; this file only calls it).
"""

from glmfleet import docker

docker.install()
