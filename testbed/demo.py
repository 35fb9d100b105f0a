"""Local demo: the real deploy.py against a 3-host SIMULATED fleet, end to end, then teardown.

    sudo .venv/bin/python -m testbed demo [--keep]

What is real: SSH (sshd on each host, paramiko through pyinfra), pyinfra, apt and dpkg, each
host's own filesystem and network address. What is simulated, each by a named test double:
the GPUs (a fake libnvidia-ml.so.1 behind the real nvidia-ml-py), the Hugging Face Hub
(a local endpoint serving a small synthetic checkpoint), Docker's and NVIDIA's apt
repositories (a local signed repository) and the serving image.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from glmfleet.settings import load_defaults

from testbed.doubles import nvml
from testbed.doubles.aptrepo import AptRepoDouble
from testbed.doubles.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, HubDouble, make_checkpoint
from testbed.doubles.registry import Registry
from testbed.doubles.serving import image as serving_image
from testbed.fleet import Fleet

REPO = Path(__file__).resolve().parent.parent
# Two hosts that can serve the model and one that cannot (2x H100): preflight drops it.
DEMO_HOSTS = {"gpu-a": "rtx6000x4", "gpu-b": "rtx6000x4", "gpu-h100": "h100x2"}
DAEMON_JSON = {"storage-driver": "vfs", "iptables": False, "bridge": "none"}

BANNER = """\
============================================================================================
 LOCAL DEMO on a SIMULATED fleet. Real: SSH, pyinfra, apt, each host's filesystem/address.
 SIMULATED (test doubles): the GPUs (fake NVML driver library), the Hugging Face Hub (local
 endpoint, tiny synthetic checkpoint), Docker's and NVIDIA's apt repositories (local signed
 repository) and the serving image. Nothing here touches a real GPU, the real Hub or a
 real model.
============================================================================================"""


class Site:
    """A simulated site: hosts with the given NVML profiles, every double they need, and a
    ready inventory for the real deploy.py. Used by the demo and the end-to-end fleet test.

        with Site({"gpu-a": "rtx6000x4"}) as site:
            subprocess.run([pyinfra, site.inventory, "deploy.py", "-y"], cwd=REPO)
    """

    def __init__(self, hosts: dict[str, str], fleet: Fleet | None = None, keep: bool = False,
                 work: Path | None = None):
        self.profiles, self.keep = hosts, keep
        self.own_fleet = fleet is None
        self.fleet = fleet or Fleet(cleanup_at_exit=not keep)
        # The checkpoint, the inventory, the API key file; a temporary one is removed on close.
        self.own_work = work is None
        self.work = Path(work) if work else Path(tempfile.mkdtemp(prefix="glmfleet-site-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.hubs: list[HubDouble] = []
        self.apt_repo: AptRepoDouble | None = None
        self.registry: Registry | None = None
        self.inventory: Path | None = None

    def __enter__(self) -> "Site":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        defaults = load_defaults()
        override = serving_image.site_override(defaults["service_name"])
        for name, profile in self.profiles.items():
            files = nvml.host_files(profile)
            if override:  # this machine cannot start privileged containers (see image.py)
                files[f"{defaults['service_dir']}/docker-compose.override.yml"] = override
            # The GPU side of the container runtime is simulated too: a no-op hook ahead of the
            # toolkit's on dockerd's PATH (the real one needs real GPUs to start a container).
            files["/usr/local/bin/nvidia-container-runtime-hook"] = (serving_image.HOOK_STANDIN, 0o755)
            # What dockerd needs inside a simulated host (no netfilter of its own, an overlay
            # root): the operator's own daemon.json, which the deploy keeps.
            files["/etc/docker/daemon.json"] = json.dumps(DAEMON_JSON)
            # systemd as PID 1 and a sudo login (the testbed's defaults), as on real servers:
            # the deploy installs Docker and pulls the image itself.
            self.fleet.add_host(name, files=files, shm_size="32g")
        self.fleet.start(*self.profiles, timeout=90)
        # A host reaches the controller only at its own gateway: the Hub double, the apt
        # repository double (Docker's and NVIDIA's repositories) and the registry holding the
        # serving-image double listen on each gateway.
        checkpoint = self.work / "hub"
        make_checkpoint(checkpoint, shards=3, shard_bytes=2 * 2**20)
        self.apt_repo = AptRepoDouble()
        self.registry = Registry(self.work / "registry")
        data, pushed = {}, False
        for name in self.profiles:
            h = self.fleet[name]
            addr = self.registry.listen_on(h.gateway)
            self.registry.trust(h, addr)
            if not pushed:  # one storage behind every address
                self.registry.push(addr, "glmfleet/serving", "1", serving_image.tarball())
                pushed = True
            self.hubs.append(HubDouble(checkpoint, repo_id=DEFAULT_REPO_ID,
                                       revision=DEFAULT_REVISION, host=h.gateway, port=0).start())
            data[name] = {**self.apt_repo.settings(h.gateway), "docker_packages": "distro",
                          "image": f"{addr}/glmfleet/serving:1",
                          "model_revision": DEFAULT_REVISION, "hf_endpoint": self.hubs[-1].url,
                          # one key for the site's API, kept beside its inventory
                          "api_key": "generate", "api_key_file": str(self.work / "api-key"),
                          "weights_dir": "/srv/glm/weights",
                          "preflight_report": str(self.work / "preflight-report.json")}
        self.inventory = self.fleet.write_inventory(self.work / "inventory.py",
                                                    hosts=list(self.profiles), host_data=data)

    def close(self) -> None:
        for hub in self.hubs:
            hub.stop()
        if self.apt_repo:
            self.apt_repo.stop()
        if self.registry:
            self.registry.stop()
        if self.keep:
            return
        if self.own_work:
            shutil.rmtree(self.work, ignore_errors=True)
        if self.own_fleet:
            self.fleet.teardown()
        else:
            for name in self.profiles:
                if name in self.fleet.hosts:
                    self.fleet.remove(name)


def run_demo(keep: bool = False, extra_args: list[str] | None = None) -> int:
    print(BANNER, flush=True)
    with Site(DEMO_HOSTS, keep=keep) as site:
        print("\nSimulated hosts: " + ", ".join(f"{n} ({p}, {site.fleet[n].address})"
                                                 for n, p in DEMO_HOSTS.items()))
        print(f"Running: pyinfra {site.inventory} deploy.py -y\n", flush=True)
        pyinfra = Path(sys.executable).parent / "pyinfra"
        rc = subprocess.call([str(pyinfra), str(site.inventory), "deploy.py", "-y",
                              *(extra_args or [])], cwd=REPO)
        print(f"\npyinfra exited with {rc} (non-zero is expected: gpu-h100 fails preflight)."
              "\nSIMULATED fleet: the GPUs, the Hub, the apt repositories and the serving image "
              "above were test doubles.")
        if keep:
            print(f"--keep: hosts left up (the Hub and apt doubles stop with the demo; for a site "
                  f"that keeps them: python -m testbed site up); tear down with: "
                  f"python -m testbed down --workdir {site.fleet.workdir}")
    if not keep:
        print("Simulated fleet torn down.")
    return rc
