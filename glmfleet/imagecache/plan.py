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

q = shlex.quote
CONFIG_PATH = "/etc/docker/registry/config.yml"
STORAGE = "/var/lib/docker-registry"
USER = "docker-registry"
PACKAGES = ("docker-registry", "skopeo")
SERVICE = "docker-registry"
LOG = "/var/log/glmfleet/image-cache.log"
STATE = "/var/lib/glmfleet/image-cache"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
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
    """Print stored=, job_image=, job_running=, job_rc= (one read-only command)."""
    path, ref = hub_reference(image)
    return (f"d={STATE}; "
            f"if [ -f {q(stored_marker(path, ref))} ]; then echo stored=1; else echo stored=0; fi; "
            "echo \"job_image=$(cat $d/image 2>/dev/null)\"; "
            "p=$(cat $d/pid 2>/dev/null); "
            "if [ -n \"$p\" ] && [ ! -f $d/rc ] && kill -0 \"$p\" 2>/dev/null; then echo job_running=1; "
            "else echo job_running=0; fi; "
            "echo \"job_rc=$(cat $d/rc 2>/dev/null)\"")


def parse_state(lines) -> dict:
    out = {"stored": False, "job_image": None, "job_running": False, "job_rc": None}
    for line in lines or []:
        key, sep, value = str(line).strip().partition("=")
        if not sep or key not in out:
            continue
        if key in ("stored", "job_running"):
            out[key] = value == "1"
        elif key == "job_rc":
            out[key] = int(value) if value.lstrip("-").isdigit() else None
        else:
            out[key] = value or None
    return out


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


def source(image: str, upstream: str) -> str:
    path, ref = hub_reference(image)
    return f"docker://{upstream}/{path}{'@' if ref.startswith('sha256:') else ':'}{ref}"


def start_command(image: str, upstream: str) -> str:
    """Start the copy detached: a private writable registry on a free loopback port, `skopeo
    copy` from upstream into it (digests kept: --preserve-digests refuses any change), the
    private registry stopped; every line timestamped into LOG, the exit status into STATE/rc.
    A digest reference is stored under a tag named after it (a registry keeps a manifest only
    under a tag); Docker then asks for it by digest and finds it."""
    path, ref = hub_reference(image)
    dest_ref = ref if not ref.startswith("sha256:") else "sha256-" + ref[7:]
    push_config = json.dumps({"version": 0.1, "log": {"level": "warn"},
                              "storage": {"filesystem": {"rootdirectory": STORAGE}},
                              "http": {"addr": "127.0.0.1:PORT"}})
    body = (f"d={STATE}; echo $$ > $d/pid; ts() {{ date '+{TIME_FORMAT}'; }}; "
            "port=$(python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\", 0)); "
            "print(s.getsockname()[1])'); "
            f"printf '%s\\n' {q(push_config)} | sed \"s/PORT/$port/\" > $d/push.yml; "
            f"echo \"$(ts) copy started: {source(image, upstream)} into the cache\" >> {LOG}; "
            f"setpriv --reuid={USER} --regid={USER} --clear-groups docker-registry serve $d/push.yml >> $d/push.log 2>&1 & rp=$!; "
            "( i=0; while [ $i -lt 100 ] && ! python3 -c \"import socket; socket.create_connection(('127.0.0.1', $port), 1)\" "
            "2>/dev/null; do i=$((i+1)); sleep 0.1; done; "
            f"skopeo copy --retry-times 3 --preserve-digests --dest-tls-verify=false "
            f"{q(source(image, upstream))} \"docker://127.0.0.1:$port/{path}:{dest_ref}\" 2>&1; "
            "echo \"glmfleet-copy-rc=$?\" ) | "
            "while IFS= read -r l; do case $l in glmfleet-copy-rc=*) echo \"${l#*=}\" > $d/rc.tmp ;; "
            f"*) echo \"$(ts) $l\" >> {LOG} ;; esac; done; "
            "kill $rp 2>/dev/null; wait $rp 2>/dev/null; "
            f"echo \"$(ts) copy finished: exit $(cat $d/rc.tmp 2>/dev/null)\" >> {LOG}; "
            "mv -f $d/rc.tmp $d/rc")
    return (f"set -e; mkdir -p {STATE} {q(LOG.rsplit('/', 1)[0])}; chmod 755 {STATE}; "
            f"rm -f {STATE}/rc {STATE}/pid; printf '%s\\n' {q(image)} > {STATE}/image; "
            f"setsid bash -c {q(body)} </dev/null >/dev/null 2>&1 &")


def log_tail_command(lines: int = 3) -> str:
    return f"tail -n {int(lines)} {LOG} 2>/dev/null || true"
