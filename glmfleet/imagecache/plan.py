"""The site's image cache (pure: references, the registry's config, the copy job's text).

Docker sends pulls of Docker Hub names to `registry-mirrors` first, so one registry on the
site holding the serving image lets every GPU host pull it over the site's network. The
registry is Debian's `docker-registry` (the distribution registry), run read-only by its own
systemd unit. It is filled by a copy, not run as a pull-through cache, because distribution
2.8's proxy mode fetches a blob from upstream twice on its first pull (once to store it, once
to stream it to that client) and again for every client asking while it is being stored; a
`skopeo copy` (packaged by the distributions) fetches each blob once and keeps its digest, so
upstream sees each layer once for the whole site, and a digest pin still matches.

On the cache host:
    /etc/docker/registry/config.yml       the package's config path, ours: read-only, at
                                          site_address (else every address):image_cache_port
    /var/lib/docker-registry/             the package's storage
    /var/log/glmfleet/image-cache.log     the copy's lines, timestamped (as image-pull.log)
    /var/lib/glmfleet/image-cache/        image (the reference copied), pid, rc
The copy writes through a second, private registry process on a free loopback port, running
as the package's user over the same storage, for the copy's duration only: the served one
never accepts a push.
"""

from __future__ import annotations

import json
import re
import shlex

from glmfleet import detached

q = shlex.quote
CONFIG_PATH = "/etc/docker/registry/config.yml"
STORAGE = "/var/lib/docker-registry"
USER = "docker-registry"
PACKAGES = ("docker-registry", "skopeo")
SERVICE = "docker-registry"
LOG = "/var/log/glmfleet/image-cache.log"
STATE = "/var/lib/glmfleet/image-cache"
COPY_MAX_S = 6 * 3600  # a copy still running after this is stopped (and fails)
HUB_REGISTRIES = ("docker.io", "index.docker.io", "registry-1.docker.io")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"


class CacheError(ValueError):
    pass


def hub_reference(image: str) -> tuple[str, str]:
    """(repository path on Docker Hub, tag or digest) of a Docker Hub image name; CacheError
    for a name on another registry (Docker asks a mirror for Docker Hub names only)."""
    name, digest = image.split("@", 1) if "@" in image else (image, "")
    parts = name.split("/")
    if len(parts) > 1 and (parts[0] in HUB_REGISTRIES or "." in parts[0] or ":" in parts[0]
                           or parts[0] == "localhost"):
        if parts[0] not in HUB_REGISTRIES:
            raise CacheError(f"image {image!r} is on the registry {parts[0]}, not Docker Hub: Docker "
                             "sends only Docker Hub names to a mirror, so the cache would not be used")
        parts = parts[1:]
    last, _, tag = parts[-1].partition(":")
    parts[-1] = last
    if len(parts) == 1:
        parts.insert(0, "library")  # Docker Hub's official images
    path = "/".join(parts)
    if not all(re.fullmatch(_COMPONENT, p) for p in parts):
        raise CacheError(f"image {image!r} is not a valid repository name")
    if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise CacheError(f"image {image!r}: the digest is not sha256:<64 hex digits>")
    return path, digest or tag or "latest"


def mirror_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def listen_address(site_address: str | None, port: int) -> str:
    if not site_address:
        return f":{port}"
    return f"[{site_address}]:{port}" if ":" in site_address else f"{site_address}:{port}"


def default_mirrors(cache: tuple[str, str] | None, hosts) -> dict[str, str]:
    """{GPU host: the cache's URL} for each GPU host that pulls through the inventory's image
    cache: no registry_mirror of its own and the image the cache holds (a Docker Hub name:
    Docker asks a mirror for no other). cache: (its URL, its image) or None; hosts:
    (name, is a GPU host, registry_mirror, image)."""
    if cache is None:
        return {}
    url, image = cache
    try:
        hub_reference(image)
    except CacheError:
        return {}
    return {n: url for n, gpu, mirror, img in hosts if gpu and mirror is None and img == image}


def pull_wait(cache_in_run: bool, cache: tuple[str, str], mirror: str | None, image: str) -> str | None:
    """How a GPU host's background pull relates to the image cache: "copy" (wait for the
    cache's copy in this run), "now" (behind the cache, which copies nothing in this run:
    pull at once; Docker goes upstream if the cache lacks the image), or None (not behind
    the cache: the registry_mirror rules apply)."""
    url, cached = cache
    if mirror != url or image != cached:
        return None
    return "copy" if cache_in_run else "now"


def served_config(site_address: str | None, port: int) -> str:
    """The registry the GPU hosts pull from: read-only (a push is refused), access log on."""
    return json.dumps({  # YAML is a superset of JSON
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}, "fields": {"service": "registry"}},
        "storage": {"filesystem": {"rootdirectory": STORAGE},
                    "maintenance": {"readonly": {"enabled": True}, "uploadpurging": {"enabled": False}}},
        "http": {"addr": listen_address(site_address, port),
                 "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }, indent=1, sort_keys=True) + "\n"


def stored_marker(path: str, ref: str) -> str:
    """The storage file that exists once the reference is in the cache."""
    base = f"{STORAGE}/docker/registry/v2/repositories/{path}/_manifests"
    if ref.startswith("sha256:"):
        return f"{base}/revisions/sha256/{ref[7:]}/link"
    return f"{base}/tags/{ref}/current/link"


def state_command(image: str) -> str:
    """Print stored= and the copy job's state (one read-only command)."""
    path, ref = hub_reference(image)
    return (f"if [ -f {q(stored_marker(path, ref))} ]; then echo stored=1; else echo stored=0; fi; "
            + detached.state_command(STATE))


def parse_state(lines) -> dict:
    job = detached.parse_state(lines)
    stored = any(str(ln).strip() == "stored=1" for ln in lines or [])
    return {"stored": stored, "job_image": job["image"], "job_running": job["running"], "job_rc": job["rc"]}


def copy_due(state: dict, image: str) -> tuple[bool, str]:
    """(start the copy now?, why not). A copy that failed is started again by the next run."""
    if state["stored"]:
        return False, f"{image} is in the cache"
    if state["job_image"] == image and state["job_running"]:
        return False, f"the copy of {image} into the cache is running (log: {LOG})"
    return True, ""


def copy_done(state: dict, image: str) -> bool:
    """For the GPU hosts waiting on the copy: nothing more will come (stored, or no copy running)."""
    return state["stored"] or not (state["job_image"] == image and state["job_running"])


def copy_outcome(state: dict, image: str) -> str | None:
    """A line for the output once the copy is over, when it did not store the image."""
    if state["stored"]:
        return None
    rc = state["job_rc"] if state["job_image"] == image else None
    return (f"the copy of {image} into the image cache failed (exit {rc}; log: {LOG} there): "
            "the hosts pull from upstream (Docker falls back when the mirror lacks it)")


def source(image: str, upstream: str) -> str:
    path, ref = hub_reference(image)
    return f"docker://{upstream}/{path}{'@' if ref.startswith('sha256:') else ':'}{ref}"


_PUSH_CONFIG = {"version": 0.1, "log": {"level": "warn"}, "storage": {"filesystem": {"rootdirectory": STORAGE}},
                "http": {"addr": "127.0.0.1:%s"}}  # printf fills in the port
# The private writable registry for the copy: a free loopback port found and waited on with
# bash's /dev/tcp (no other tool needed on the host).
_PUSH_SETUP = (
    "port=; for i in $(seq 1 50); do p=$((20000 + RANDOM % 30000)); "
    "if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then port=$p; break; fi; done; "
    f"printf {q(json.dumps(_PUSH_CONFIG) + chr(10))} \"$port\" > $d/push.yml; "
    f"setpriv --reuid={USER} --regid={USER} --clear-groups docker-registry serve $d/push.yml "
    ">> $d/push.log 2>&1 & rp=$!; "
    "for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done; ")


def start_command(image: str, upstream: str) -> str:
    """Start the copy detached (glmfleet/detached.py): a private writable registry on a free
    loopback port, `skopeo copy` from upstream into it, the private registry stopped.
    skopeo copies the manifest and blobs unchanged (same format, no recompression), so every
    digest stays the upstream's. A digest reference is copied with --all (an index is kept
    whole, so Docker finds it by that digest) and stored under a tag named after it (a
    registry keeps a manifest only under a tag); a tag copies this platform's image only.
    COPY_MAX_S bounds a copy that hangs."""
    path, ref = hub_reference(image)
    digest = ref.startswith("sha256:")
    dest = f"docker://127.0.0.1:$port/{path}:{'sha256-' + ref[7:] if digest else ref}"
    command = (f"timeout {COPY_MAX_S} skopeo copy --retry-times 3 {'--all ' if digest else ''}"
               f"--dest-tls-verify=false {q(source(image, upstream))} \"{dest}\"")
    return detached.start_command(STATE, LOG, image, "copy", f"{source(image, upstream)} into the cache",
                                  command, setup=_PUSH_SETUP,
                                  teardown="kill $rp 2>/dev/null; wait $rp 2>/dev/null; ")


def log_tail_command(lines: int = 3) -> str:
    return detached.log_tail_command(LOG, lines)
