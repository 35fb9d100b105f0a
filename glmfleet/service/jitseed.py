"""Seeding the kernel/JIT cache volume from the canary (pure: keys, reasons, command text).

The kit keeps every compile cache on the compose volume `jit-cache` (mounted at /cache/jit:
vLLM, Triton, FlashInfer, CUDA, CuTe DSL, torch inductor/extensions). A first boot fills it
(~6 min on the real hardware); a boot that finds entries for its own key loads them. In a
rollout the canary boots first; its volume then seeds every later host whose compile would
have the same key: the same image (local image id), GPU model, NVIDIA driver and the flags
the compile sees (the kit's runtime values less what only the API uses). A host that differs
in any of them is not seeded, and the output names what differs.

What it saves: the compile and graph-capture caches. Not everything: FlashInfer's autotune
results are not kept with several GPU ranks in 2026 vLLM, so a seeded host still tunes
(see ../shared/reference/fleet-serving-facts.md).

The path the bytes take, host to host (the controller carries none): the canary packs its
volume into one tar.gz and serves it on the site network (its site_address,
jit_cache_seed_port; every address when site_address is unset) with Python's own
http.server, run as `nobody` (setpriv), for the rollout's duration (stopped after it, and by
`timeout` after SERVE_MAX_S whatever happens). Each seeded host fetches it, checks its
sha256 against the one the canary reported to the controller over SSH (so a copy altered on
the way is refused), and unpacks it into its volume without replacing files it has. No token
guards the download: the archive holds compiled kernels of a public image and model, nothing
secret, and its integrity comes from that sha256 (so not the weights' server, weights.pyz
serve, which serves a manifest's verified files behind the run's token).
"""

from __future__ import annotations

import shlex
from typing import Any, Mapping

q = shlex.quote
VOLUME = "jit-cache"  # the compose volume's name in files/docker-compose.yml.j2
WORK = "/var/lib/glmfleet/jit-seed"  # root's (never a world-writable dir: root acts on it)
SERVE_DIR = f"{WORK}/served"  # on the canary: only the archive, served read-only
PIDFILE = f"{WORK}/server.pid"
ARCHIVE = f"{WORK}/incoming.tar.gz"  # on a seeded host, while it is unpacked
SERVE_MAX_S = 6 * 3600  # the server's hard stop should the deploy never stop it (it does, after the rollout)
STAMP = ".glmfleet/jit-seed"  # under service_dir: the key it was last seeded with
# Runtime values a compile does not depend on (who may call, where it listens, the chat
# template's defaults, where things sit on this host).
NOT_COMPILE = ("API_KEY", "BIND_HOST", "PORT", "SERVED_MODEL_NAMES", "ENABLE_THINKING",
               "REASONING_EFFORT", "MODEL_PATH", "HF_CACHE_DIR")


def seed_key(image_id: str | None, gpu: Mapping[str, Any] | None,
             values: Mapping[str, str] | None) -> tuple[dict | None, str]:
    """(the key a compile on this host would have, or None with the reason it is unknown)."""
    if not image_id:
        return None, "the image id is unknown"
    gpus = [g for g in (gpu or {}).get("gpus") or [] if isinstance(g, dict)]
    models = sorted({str(g.get("name")) for g in gpus if g.get("name")})
    if not models or not (gpu or {}).get("driver"):
        return None, "the GPU model or driver is unknown (no preflight facts in this run)"
    flags = {k: v for k, v in sorted((values or {}).items()) if k not in NOT_COMPILE}
    return {"image": image_id, "gpu": f"{len(gpus)}x {'/'.join(models)}",
            "driver": str(gpu["driver"]), "flags": flags}, ""


def difference(source: Mapping[str, Any], target: Mapping[str, Any]) -> str | None:
    """What differs between two keys (None: the same), for the output."""
    out = []
    for part in ("image", "gpu", "driver"):
        if source.get(part) != target.get(part):
            out.append(f"{part} {str(target.get(part))[:24]} vs {str(source.get(part))[:24]}")
    a, b = source.get("flags") or {}, target.get("flags") or {}
    names = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if names:
        out.append("flags " + ", ".join(names))
    return "; ".join(out) or None


def digest(key: Mapping[str, Any]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def volume_name(values: Mapping[str, str]) -> str:
    """compose (v1 and v2) names a volume <project>_<volume>."""
    return f"{values.get('COMPOSE_PROJECT_NAME', '')}_{VOLUME}"


def serve_command(volume: str, address: str | None, port: int) -> str:
    """On the canary: its volume packed into SERVE_DIR/jit-seed.tar.gz and served at
    address:port (every address when None) until stopped; prints the archive's size and
    sha256 on its last line."""
    archive = f"{SERVE_DIR}/jit-seed.tar.gz"
    bind = f"--bind {q(address)} " if address else ""
    server = (f"timeout --foreground {SERVE_MAX_S} setpriv --reuid=nobody --regid=nogroup --clear-groups "
              f"python3 -m http.server {bind}--directory {SERVE_DIR} {int(port)}; rm -rf {SERVE_DIR}")
    probe = f"import socket; socket.create_connection(({address or '127.0.0.1'!r}, {int(port)}), 1)"
    return (f"set -e; {stop_command()}; mkdir -p -m 755 {WORK}; mkdir -m 755 {SERVE_DIR}; "
            f"mp=$(docker volume inspect -f '{{{{.Mountpoint}}}}' {q(volume)}); "
            f"tar -C \"$mp\" -czf {archive} . && chmod 644 {archive}; "
            f"setsid sh -c {q(server)} </dev/null >/dev/null 2>&1 & echo $! > {PIDFILE}; "
            f"up=0; for i in $(seq 1 50); do python3 -c {q(probe)} 2>/dev/null && {{ up=1; break; }}; sleep 0.1; done; "
            f"[ $up = 1 ] || {{ echo 'the server did not start on port {int(port)} "
            "(taken? set jit_cache_seed_port)' >&2; exit 1; }; "
            f"echo \"$(stat -c %s {archive}) $(sha256sum {archive} | cut -c1-64)\"")


def stop_command() -> str:
    """On the canary: the server stopped (its whole session: sh, timeout, python) and the
    archive gone. The pid is taken only as a number above 1 (never `kill -- -1`)."""
    return (f"p=$(cat {PIDFILE} 2>/dev/null || true); case \"$p\" in ''|*[!0-9]*|0|1) ;; *) "
            "kill -- -$p 2>/dev/null || true; "
            "i=0; while [ $i -lt 50 ] && kill -0 -- -$p 2>/dev/null; do i=$((i+1)); sleep 0.1; done ;; esac; "
            f"rm -rf {SERVE_DIR} {PIDFILE}")


def url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{int(port)}/jit-seed.tar.gz"


FETCH = """import hashlib, os, sys, urllib.request
url, want, out = sys.argv[1:4]
h = hashlib.sha256()
with urllib.request.urlopen(url, timeout=60) as r, open(out + ".part", "wb") as f:
    for block in iter(lambda: r.read(1 << 20), b""):
        h.update(block)
        f.write(block)
if h.hexdigest() != want:
    os.unlink(out + ".part")
    sys.exit(f"the archive from {url} does not match the sha256 its host reported: refused")
os.replace(out + ".part", out)
"""


def fetch_command(source_url: str, sha256: str) -> str:
    """On a seeded host: the canary's archive fetched into ARCHIVE, its sha256 checked."""
    return (f"set -e; umask 077; mkdir -p -m 755 {WORK}; "
            f"python3 -c {q(FETCH)} {q(source_url)} {q(sha256)} {ARCHIVE}")


def unpack_command(volume: str, service_dir: str, key_digest: str) -> str:
    """On a seeded host, after compose created the volume: add the canary's files (its own
    are kept), record the key, remove the archive."""
    return (f"set -e; mp=$(docker volume inspect -f '{{{{.Mountpoint}}}}' {q(volume)}); "
            f"tar -C \"$mp\" --skip-old-files -xzf {ARCHIVE}; rm -f {ARCHIVE}; "
            f"printf '%s\\n' {q(key_digest)} > {q(service_dir)}/{STAMP}")


def stamp_command(service_dir: str) -> str:
    return f"cat {q(service_dir)}/{STAMP} 2>/dev/null || true"
