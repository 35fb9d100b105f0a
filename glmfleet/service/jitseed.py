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

The path the bytes take: the canary packs its volume into one tar.gz, which the controller
fetches over SFTP and uploads to each seeded host (so it crosses the controller once down and
once up per host); the host unpacks it into its volume without replacing files it has.
"""

from __future__ import annotations

import shlex
from typing import Any, Mapping

q = shlex.quote
VOLUME = "jit-cache"  # the compose volume's name in files/docker-compose.yml.j2
ARCHIVE = "/var/tmp/glmfleet-jit-seed.tar.gz"
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


def pack_command(volume: str) -> str:
    """On the canary: its volume as one archive; prints the archive's size in bytes."""
    return (f"set -e; mp=$(docker volume inspect -f '{{{{.Mountpoint}}}}' {q(volume)}); "
            f"tar -C \"$mp\" -czf {ARCHIVE}.tmp . && mv -f {ARCHIVE}.tmp {ARCHIVE} && "
            f"chmod 600 {ARCHIVE} && stat -c %s {ARCHIVE}")


def unpack_command(volume: str, service_dir: str, key_digest: str) -> str:
    """On a seeded host, after compose created the volume: add the canary's files (its own
    are kept), record the key, remove the archive."""
    return (f"set -e; mp=$(docker volume inspect -f '{{{{.Mountpoint}}}}' {q(volume)}); "
            f"tar -C \"$mp\" --skip-old-files -xzf {ARCHIVE}; rm -f {ARCHIVE}; "
            f"printf '%s\\n' {q(key_digest)} > {q(service_dir)}/{STAMP}")


def stamp_command(service_dir: str) -> str:
    return f"cat {q(service_dir)}/{STAMP} 2>/dev/null || true"
