"""Stage 'nvidia_toolkit': NVIDIA Container Toolkit wired into Docker.

NVIDIA's flat apt repository (suite "/"), its key checked against nvidia_key_fingerprint
before it is trusted; the four toolkit packages (all pinned together when
nvidia_toolkit_version is set); `nvidia-ctk runtime configure --runtime=docker`; a CDI spec
where cdi_decision wants one; dockerd restarted once if any of that changed what it runs
(its GPU support is registered at start). Then, only when dockerd or the toolkit changed
since the last pass (or with gpu_check_always), a throwaway `docker run --gpus all` (its
image pulled first when missing, said so) must list the GPUs preflight found; where that
cannot run (no driver, no image) the summary says WARN with the reason.
The stage itself: glmfleet.docker.nvidia_toolkit (a pyinfra deploy; this file only calls it).
"""

from glmfleet import docker

docker.nvidia_toolkit()
