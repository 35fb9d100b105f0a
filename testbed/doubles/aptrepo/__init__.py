"""TEST DOUBLE of Docker's and NVIDIA's apt repositories, for the simulated fleet.

Not the real repositories: signed with throwaway keys made at build time, holding stand-in
packages under the real names (see build.py for what is real inside them and README.md).

    from testbed.doubles.aptrepo import AptRepoDouble
    repo = AptRepoDouble()                   # builds (or reuses) the cached tree
    repo.listen_on(host.gateway)             # serve it where that host can reach it
    data = repo.settings(host.gateway)       # deploy settings pointing at the double
    repo.requests_from(host.address)         # what that host fetched
    repo.stop()
"""

from __future__ import annotations

from pathlib import Path

from .build import (ARCH, DOCKER_ROOT, DOCKER_VERSION, NVIDIA_FLAT, NVIDIA_ROOT, TOOLKIT_VERSIONS,
                    BuiltRepo, build)
from .server import AptRepoServer

__all__ = ["AptRepoDouble", "BuiltRepo", "build", "DOCKER_VERSION", "TOOLKIT_VERSIONS"]


class AptRepoDouble(AptRepoServer):
    """The built tree plus its HTTP server."""

    def __init__(self, cache_root: Path | None = None):
        self.built = build(cache_root)
        super().__init__(self.built.www)

    @property
    def docker_fingerprint(self) -> str:
        return self.built.docker_fingerprint

    @property
    def nvidia_fingerprint(self) -> str:
        return self.built.nvidia_fingerprint

    def settings(self, address: str) -> dict:
        """Deploy settings that point one host (reaching us at ``address``) at the double."""
        self.listen_on(address)
        return {
            "docker_repo_url": self.url(address, DOCKER_ROOT),
            "docker_key_fingerprint": self.docker_fingerprint,
            # $(ARCH) like NVIDIA's own list file; the deploy fills in the host's architecture
            "nvidia_repo_url": self.url(address, NVIDIA_FLAT).replace(f"/{ARCH}", "/$(ARCH)"),
            "nvidia_key_url": self.url(address, f"{NVIDIA_ROOT}/gpgkey"),
            "nvidia_key_fingerprint": self.nvidia_fingerprint,
        }

    def deb_requests_from(self, client: str) -> list[str]:
        return [r["path"] for r in self.requests_from(client) if r["path"].endswith(".deb")]
