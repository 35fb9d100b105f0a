"""The box kit: every file that lands on one GPU server, rendered from Settings (pure).

`render_kit(settings, pattern)` returns {relative path: (content, mode)} for the deploy to
place under `settings.service_dir` and for the tests to run. Templates and scripts live in
`files/`; only the compose file and the .env are rendered, the scripts are copied as they are
and read their values from the .env at run time, so an operator can edit the .env by hand
exactly as the recipe says (`DCP_SIZE=1`, `MAX_MODEL_LEN=131072`, `ENABLE_THINKING=0 ./launch.sh`).

By hand, without pyinfra: `python -m glmfleet.service.kit_by_hand OUT_DIR [key=value ...]`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Mapping

import jinja2

from glmfleet.kit.index_pattern import check_pattern
from glmfleet.settings import API_KEY_OPEN, Settings, data_path

FILES_DIR = data_path("files")

SECRET_MODE = 0o600  # files that may hold the API key
# Copied verbatim from files/ (kit path -> mode).
STATIC_FILES: dict[str, int] = {
    "serve.sh": 0o755,  # runs inside the container (mounted read-only at /recipe)
    "launch.sh": 0o755,
    "chat.sh": 0o755,
    "monitor.sh": 0o755,
    "README.md": 0o644,
    "tools/kitlib.sh": 0o644,
    "tools/kitenv.py": 0o644,
    "tools/compose_probe.sh": 0o644,  # run with sh by kitlib.sh and by the deploy's host facts
    "tools/oai_client.py": 0o644,
    "tools/logtap.py": 0o644,
    "test/harnesslib.py": 0o644,
    "test/coherence_test.py": 0o755,
    "test/longctx_multiturn_test.py": 0o755,
}
# The files the running container depends on. `compose up -d` recreates the container by itself
# when the compose file or the .env values it interpolates change, but not when serve.sh (a
# mounted file) does; runtime_fingerprint() says precisely when a restart is due.
RESTART_ON_CHANGE = ("docker-compose.yml", "serve.sh", ".env")  # .env: only the values compose uses

# .env values that need no quoting in any of: compose v2, docker-compose 1.29 (python-dotenv),
# the kit's own bash reader. Anything else is single-quoted (literal in all three) when it can be.
_DOTENV_PLAIN = re.compile(r"[A-Za-z0-9_./:@%+,=^~-]*")
_PATH_SAFE = re.compile(r"/[A-Za-z0-9_./+@%,=~-]*")  # a compose short-syntax volume source
_NAME_SAFE = re.compile(r"[A-Za-z0-9._/-]+")


class KitError(ValueError):
    """A setting the kit cannot carry safely (names the setting and what is allowed)."""


def _dotenv_value(key: str, value: str) -> str:
    if _DOTENV_PLAIN.fullmatch(value):
        return value
    if "'" in value or "\\" in value or "\n" in value:
        setting = " (setting api_key)" if key == "API_KEY" else ""
        raise KitError(f"{key}{setting}: a value with a single quote, backslash or newline cannot be "
                       "written to .env the same way for docker compose v2 and docker-compose 1.29")
    return f"'{value}'"


def _flag(on: bool) -> str:
    return "1" if on else "0"


def env_values(settings: Settings, pattern: str) -> dict[str, str]:
    """The .env variables (unquoted values, in file order): what the container and scripts read."""
    for key in ("weights_dir", "hf_cache_dir"):
        path = getattr(settings, key)
        if not _PATH_SAFE.fullmatch(path):
            raise KitError(f"{key} = {path!r}: the compose volume needs a path "
                           "of letters, digits and _ . / + @ % , = ~ - (no spaces or ':')")
    effort = settings.reasoning_effort or ""
    if not re.fullmatch(r"[a-z]*", effort):
        raise KitError(f"reasoning_effort = {effort!r}: a lowercase word (it goes into JSON as is)")
    for name in settings.served_names:
        if not _NAME_SAFE.fullmatch(name):
            raise KitError(f"served model name {name!r}: use letters, digits, . _ / - only")
    problem = check_pattern(pattern, len(pattern or ""))
    if problem:
        raise KitError(f"index_topk_pattern: expected {problem}")
    return {
        "COMPOSE_PROJECT_NAME": settings.service_name,
        "MODEL_PATH": settings.weights_dir,
        "HF_CACHE_DIR": settings.hf_cache_dir,
        "BIND_HOST": settings.bind_address,
        "PORT": str(settings.port),
        "API_KEY": "" if settings.api_key in (None, API_KEY_OPEN) else settings.api_key,
        "SERVED_MODEL_NAMES": ",".join(settings.served_names),
        "ENABLE_THINKING": _flag(settings.enable_thinking),
        "REASONING_EFFORT": effort,
        "TP": str(settings.tensor_parallel_size),
        "DCP_SIZE": str(settings.decode_context_parallel_size),
        "MAX_MODEL_LEN": str(settings.max_model_len),
        "MAX_NUM_SEQS": str(settings.max_num_seqs),
        "MAX_NUM_BATCHED_TOKENS": str(settings.max_num_batched_tokens),
        "GPU_MEMORY_UTILIZATION": f"{settings.gpu_memory_utilization:g}",
        "ENABLE_MTP": _flag(settings.mtp_enabled),
        "NUM_SPECULATIVE_TOKENS": str(settings.num_speculative_tokens),
        "INDEX_TOPK_PATTERN": pattern,
        "READY_TIMEOUT": str(settings.ready_timeout_s),
        "SMOKE_TIMEOUT": str(settings.smoke_timeout_s),
    }


def compose_values(settings: Settings) -> dict[str, str]:
    """What the compose template takes from Settings (the rest comes from .env at run time)."""
    return {
        "service_name": settings.service_name,
        "image": settings.image,
        "shm_size": settings.shm_size,
        "omp_num_threads": str(settings.omp_num_threads),
        "cuda_visible_devices": ",".join(str(i) for i in range(settings.gpu_count)),
        # Per-container options override daemon.json's, so the service's rotation is set
        # here from the same two settings: one source for every container's log rotation.
        "log_max_size": settings.docker_log_max_size,
        "log_max_file": str(settings.docker_log_max_file),
    }


def _jinja() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(FILES_DIR)), autoescape=False,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render_kit(settings: Settings, pattern: str) -> dict[str, tuple[str, int]]:
    """Every file of the box kit: {path relative to service_dir: (content, mode)}."""
    env = env_values(settings, pattern)
    quoted = {k: _dotenv_value(k, v) for k, v in env.items()}
    jenv = _jinja()
    dotenv = jenv.get_template("env.j2")
    files = {
        "docker-compose.yml": (jenv.get_template("docker-compose.yml.j2").render(**compose_values(settings)),
                               0o644),
        ".env": (dotenv.render(env=quoted, example=False), SECRET_MODE),
        # The same settings without the secret: `cp .env.example .env` gives this box's config.
        ".env.example": (dotenv.render(env={**quoted, "API_KEY": ""}, example=True), 0o644),
    }
    for path, mode in STATIC_FILES.items():
        files[path] = ((FILES_DIR / path).read_text(), mode)
    return files


def runtime_fingerprint(files: Mapping[str, tuple[str, int]]) -> str:
    """sha256 of what the running container depends on: the compose file, serve.sh and the .env
    values the compose file uses. A change here needs a restart; a change elsewhere in the kit
    (launch.sh's timeouts, comments, the harnesses) does not."""
    values = _used_env(files)
    digest = hashlib.sha256()
    for name in RESTART_ON_CHANGE:
        part = json.dumps(values, sort_keys=True) if name == ".env" else files[name][0]
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _used_env(files: Mapping[str, tuple[str, int]]) -> dict[str, str]:
    """The .env values the compose file uses, as the box reads them."""
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", files["docker-compose.yml"][0]))
    used.add("COMPOSE_PROJECT_NAME")
    return {k: v for k, v in _kitenv().parse(files[".env"][0]).items() if k in used}


def _kitenv():
    """The kit's own .env reader (files/tools/kitenv.py): one implementation for the box and
    the deploy's restart decision."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("glmfleet_kitenv", FILES_DIR / "tools" / "kitenv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The setting behind each .env value (what a restart message names).
ENV_SETTINGS = {
    "COMPOSE_PROJECT_NAME": "service_name", "MODEL_PATH": "weights_dir", "BIND_HOST": "bind_address",
    "PORT": "port", "API_KEY": "api_key", "SERVED_MODEL_NAMES": "served_model_name/aliases",
    "HF_CACHE_DIR": "hf_cache_dir", "ENABLE_THINKING": "enable_thinking",
    "REASONING_EFFORT": "reasoning_effort", "TP": "tensor_parallel_size",
    "DCP_SIZE": "decode_context_parallel_size", "MAX_MODEL_LEN": "max_model_len",
    "MAX_NUM_SEQS": "max_num_seqs", "MAX_NUM_BATCHED_TOKENS": "max_num_batched_tokens",
    "GPU_MEMORY_UTILIZATION": "gpu_memory_utilization", "ENABLE_MTP": "mtp_enabled",
    "NUM_SPECULATIVE_TOKENS": "num_speculative_tokens", "INDEX_TOPK_PATTERN": "index_topk_pattern",
    "READY_TIMEOUT": "ready_timeout_s", "SMOKE_TIMEOUT": "smoke_timeout_s",
}


def runtime_values(files: Mapping[str, tuple[str, int]]) -> dict[str, str]:
    """What runtime_fingerprint covers, readable, to name what changed: the .env values the
    compose file uses (never the API key: only whether one is set) and the sha256 (12 hex)
    of the compose file and serve.sh."""
    values = {name: hashlib.sha256(files[name][0].encode()).hexdigest()[:12]
              for name in ("docker-compose.yml", "serve.sh")}
    for key, value in _used_env(files).items():
        values[key] = ("set" if value else "none") if key == "API_KEY" else value
    return values


def write_kit(root: str | os.PathLike, files: Mapping[str, tuple[str, int]]) -> None:
    """Write a rendered kit under root: each file via a temp name + rename, mode set before."""
    root = Path(root)
    for rel, (content, mode) in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "w") as f:
                f.write(content)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
