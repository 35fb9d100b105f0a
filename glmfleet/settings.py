"""Turn a host's data into one typed, validated Settings object (pure: no pyinfra import).

Defaults live only in group_data/all.py; this module holds the rules. Every error names the
host, the key, the bad value and what is allowed, and all errors of a host are reported
together so an operator fixes them in one go.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def data_path(name: str) -> Path:
    """files/ (the kit) or group_data/ (the defaults): an installed package carries them inside
    itself (pyproject.toml maps them there), a checkout has them at the repository root."""
    bundled = PACKAGE_DIR / name
    return bundled if bundled.exists() else REPO_ROOT / name


DEFAULTS_FILE = data_path("group_data") / "all.py"

# The recipe's DCP-1 ceiling: above ~131k a single 250k request OOMs with the KV replicated.
DCP1_MAX_MODEL_LEN = 131072
# Operators' own inventory keys (rack, owner, notes for their own tasks) start with this;
# pyinfra reads no such key and neither do we. Any other key that is neither a setting nor
# pyinfra's is reported as unknown, so a typo never passes.
SITE_PREFIX = "site_"
# Data keys that belong to pyinfra or its connectors ("_": its operation arguments, _sudo ...).
FOREIGN_KEY_PREFIXES = ("ssh_", "_", "local_", "docker_", "dockerssh_", "chroot_", "winrm_",
                        "vagrant_", "terraform_", "podman_", SITE_PREFIX)


class SettingsError(ValueError):
    """Bad settings for one or more hosts; str() lists every problem, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclasses.dataclass(frozen=True)
class Settings:
    preflight_only: bool
    preflight_report: str
    prometheus_targets: str
    model_repo: str
    model_revision: str | None
    weights_dir: str
    hf_cache_dir: str
    hf_endpoint: str | None
    hf_token_file: str | None
    image: str
    image_cuda_version: str
    service_dir: str
    service_name: str
    port: int
    bind_address: str
    api_key: str | None
    api_key_file: str
    served_model_name: str
    served_model_aliases: tuple[str, ...]
    enable_thinking: bool
    reasoning_effort: str | None
    shm_size: str
    omp_num_threads: int
    tensor_parallel_size: int
    decode_context_parallel_size: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    mtp_enabled: bool
    num_speculative_tokens: int
    index_topk_pattern: str | None
    gpu_count: int
    gpu_compute_capability: tuple[int, int]
    gpu_min_memory_gib: float
    gpu_require_open_kernel_module: bool
    disk_margin_gib: float
    min_shm_gib: float
    supported_os: tuple[str, ...]
    rollout_batch_size: int
    ready_timeout_s: int
    smoke_timeout_s: int
    # Docker and NVIDIA Container Toolkit
    docker_packages: str
    docker_version: str | None
    docker_remove_conflicts: bool
    docker_repo_url: str | None
    docker_key_url: str | None
    docker_key_fingerprint: str
    nvidia_repo_url: str
    nvidia_key_url: str
    nvidia_key_fingerprint: str
    nvidia_toolkit_version: str | None
    nvidia_cdi: str
    apt_proxy: str | None
    docker_log_max_size: str
    docker_log_max_file: int
    gpu_check_image: str | None
    gpu_check_always: bool
    registry_mirror: str | None
    # Weights
    weights_tool_dir: str
    weights_parallel_downloads: int
    weights_rehash: bool
    weights_fanout: bool
    weights_fanout_via: str
    weights_peer_port: int
    weights_wheel_dir: str | None
    weights_progress_interval_s: int
    weights_wait_timeout_s: int

    # Service
    jit_cache_seed: bool
    jit_cache_seed_port: int
    status_harness: str | None
    # Gateway
    gateway_port: int
    gateway_tls_cert: str | None
    gateway_stats_port: int
    gateway_timeout_s: int
    gateway_drain_timeout_s: int
    site_address: str | None
    # Image cache
    image_cache_port: int
    image_cache_upstream: str

    def __repr__(self) -> str:
        # Settings travel as operation and function-command arguments, which pyinfra prints
        # in some modes: the API key is never part of the text.
        fields = ", ".join(f"{f.name}={'<set>' if f.name == 'api_key' and self.api_key else repr(getattr(self, f.name))}"
                           for f in dataclasses.fields(self))
        return f"Settings({fields})"

    @property
    def cudagraph_capture_size(self) -> int:
        """The recipe's rule: max-num-seqs x (speculative tokens + 1)."""
        return self.max_num_seqs * ((self.num_speculative_tokens if self.mtp_enabled else 0) + 1)

    @property
    def served_names(self) -> tuple[str, ...]:
        return (self.served_model_name, *[a for a in self.served_model_aliases
                                          if a != self.served_model_name])


# --- value parsers: each returns the typed value or raises ValueError(<what is allowed>) ---

def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return v.strip().lower() in ("1", "true", "yes", "on")
    raise ValueError("true or false")


def _int(lo: int, hi: int):
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(f"an integer from {lo} to {hi}")
        try:
            n = int(str(v).replace("_", "")) if not isinstance(v, int) else v
        except ValueError:
            raise ValueError(f"an integer from {lo} to {hi}") from None
        if not lo <= n <= hi:
            raise ValueError(f"an integer from {lo} to {hi}")
        return n
    return parse


def _float(lo: float, hi: float, lo_open: bool = False):
    desc = f"a number {'above' if lo_open else 'from'} {lo} {'and at most' if lo_open else 'to'} {hi}"

    def parse(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError(desc)
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(desc) from None
        if x > hi or x < lo or (lo_open and x == lo):
            raise ValueError(desc)
        return x
    return parse


def _choice(*allowed: Any):
    def parse(v: Any):
        for a in allowed:
            if v == a or (isinstance(v, str) and str(a) == v):
                return a
        raise ValueError("one of " + ", ".join(repr(a) for a in allowed))
    return parse


def _str(pattern: str | None = None, desc: str = "a non-empty string"):
    def parse(v: Any) -> str:
        if not isinstance(v, str) or not v.strip():
            raise ValueError(desc)
        if pattern and not re.fullmatch(pattern, v):
            raise ValueError(desc)
        return v
    return parse


def _optional(inner):
    def parse(v: Any):
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null")):
            return None
        return inner(v)
    return parse


def _abs_path(v: Any) -> str:
    # Letters, digits and . _ - + @ only: the path lands in a compose volume line (src:dst:ro,
    # so no ':'), in a systemd unit (where '%' is a specifier and '$' expands), in .env and
    # in shell commands. Refused rather than escaped for each of them.
    if (not isinstance(v, str) or not re.fullmatch(r"/[A-Za-z0-9._+@/-]*", v) or v.rstrip("/") == ""):
        raise ValueError("an absolute path of letters, digits and . _ - + @ (no spaces, ':', '%', '$' "
                         "or quotes), such as /mnt/llm_models/GLM (not /)")
    return v.rstrip("/")


def _wheel_dir(v: Any) -> str:
    if not isinstance(v, str) or not os.path.isdir(os.path.expanduser(v)):
        raise ValueError("a directory on the controller holding the wheels for the hosts "
                         "(python -m glmfleet.weights.hostbundle download fills one)")
    return v


def _str_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [p.strip() for p in v.split(",") if p.strip()]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
        raise ValueError("a list of strings (or a comma-separated string)")
    return tuple(v)


def _compute_capability(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        v = f"{v[0]}.{v[1]}"
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(v))
    if not m:
        raise ValueError('"major.minor", e.g. "12.0"')
    return int(m.group(1)), int(m.group(2))


def _pattern(v: Any) -> str:
    from glmfleet.kit.index_pattern import check_pattern

    if not isinstance(v, str):
        raise ValueError("a string of F and S characters")
    problem = check_pattern(v)
    if problem:
        raise ValueError(problem)
    return v


# A URL a setting writes into apt's configuration, a deb822 source, an environment file or a
# command: scheme, optional user:password@, host (name, IPv4 or [IPv6]), optional port and
# path, and nothing else. Quotes, semicolons, braces, whitespace or a query cannot get
# through, so no value can end the string it is written into (apt's `Proxy "...";`).
_URL_START = (r"https?://([A-Za-z0-9._~%-]+(:[A-Za-z0-9._~%-]*)?@)?"
              r"([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")
_URL_PATH_CHAR = r"[A-Za-z0-9._~%/+@=-]"
_URL = _URL_START + rf"(/{_URL_PATH_CHAR}*)?"
# NVIDIA's repository path carries the literal $(ARCH) (filled in by glmfleet.docker.plan).
_URL_ARCH = _URL_START + rf"(/({_URL_PATH_CHAR}|\$\(ARCH\))*)?"
_URL_DESC = "an http(s):// URL: scheme, host, optional port and path (no quotes, ';', braces, spaces or query)"
_APT_VERSION = r"[0-9][0-9A-Za-z.+~:-]*"


def _fingerprint(v: Any) -> str:
    """An OpenPGP fingerprint: 40 hex digits, spaces allowed (as gpg prints them)."""
    fpr = re.sub(r"\s+", "", v).upper() if isinstance(v, str) else ""
    if not re.fullmatch(r"[0-9A-F]{40}", fpr):
        raise ValueError("a 40-hex-digit OpenPGP key fingerprint (spaces allowed)")
    return fpr


_HOSTNAME = r"[A-Za-z0-9.:-]+"
_API_KEY = r"[!#-&(-\[\]-~]{8,}"  # printable ASCII less space, quotes and backslash
API_KEY_PATTERN = _API_KEY
# api_key = "generate": one random key per fleet, kept in api_key_file (glmfleet/service/apikey.py).
API_KEY_GENERATE = "generate"
# api_key = "open": serve with no key, said on purpose (the only way to an open API).
API_KEY_OPEN = "open"
PARSERS = {
    "preflight_only": _bool,
    "preflight_report": lambda v: "" if v in (None, "") else _str()(v),
    "model_repo": _str(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", "an owner/name Hub repo id"),
    "model_revision": _optional(_str(r"[0-9a-f]{40}", "a 40-hex lowercase commit sha (never a branch such as main)")),
    "weights_dir": _abs_path,
    "hf_cache_dir": _abs_path,
    "hf_endpoint": _optional(_str(_URL, _URL_DESC)),
    "hf_token_file": _optional(_str(desc="a path on the controller")),
    "image": _str(r"[a-z0-9][a-z0-9._/:@-]*", "a docker image reference (repo:tag)"),
    "image_cuda_version": _str(r"\d+\.\d+", 'a CUDA version "major.minor", e.g. "13.2"'),
    "service_dir": _abs_path,
    "service_name": _str(r"[a-z0-9][a-z0-9_-]*", "lowercase letters, digits, - and _"),
    "port": _int(1, 65535),
    "bind_address": _str(r"(\d{1,3}\.){3}\d{1,3}|::|::1|" + _HOSTNAME, "an IP address such as 0.0.0.0 or 127.0.0.1"),
    # No quotes or backslashes: .env must read the same under compose v1 and v2.
    "api_key": _optional(lambda v: v if v in (API_KEY_GENERATE, API_KEY_OPEN) else _str(
        _API_KEY, 'at least 8 printable characters without spaces, quotes or backslashes, '
        '"generate" or "open"')(v)),
    "api_key_file": _str(desc="a path on the controller"),
    "served_model_name": _str(r"[A-Za-z0-9._/-]+", "letters, digits, . _ / -"),
    "served_model_aliases": lambda v: tuple(_str(r"[A-Za-z0-9._/-]+", "letters, digits, . _ / -")(x)
                                            for x in _str_list(v)),
    "enable_thinking": _bool,
    # Lands in a JSON template variable: a plain word keeps quoting out of it (the template
    # capitalizes it: "high" -> "Reasoning Effort: High").
    "reasoning_effort": _optional(_str(r"[a-z]{1,16}", 'a short lowercase word such as "high", or None')),
    "shm_size": _str(r"\d+[kmg]?b?", 'a size such as "32gb"'),
    "omp_num_threads": _int(1, 1024),
    "tensor_parallel_size": _int(1, 16),
    "decode_context_parallel_size": _choice(1, 2, 4),
    "max_model_len": _int(1024, 1_048_576),
    "max_num_seqs": _int(1, 256),
    "max_num_batched_tokens": _int(256, 1_048_576),
    "gpu_memory_utilization": _float(0.0, 0.99, lo_open=True),
    "mtp_enabled": _bool,
    "num_speculative_tokens": _int(1, 8),
    "index_topk_pattern": _optional(_pattern),
    "gpu_count": _int(1, 16),
    "gpu_compute_capability": _compute_capability,
    "gpu_min_memory_gib": _float(0.0, 4096.0, lo_open=True),
    "gpu_require_open_kernel_module": _bool,
    "disk_margin_gib": _float(0.0, 100_000.0),
    "min_shm_gib": _float(0.0, 4096.0),
    "supported_os": _str_list,
    "rollout_batch_size": _int(1, 1000),
    "ready_timeout_s": _int(10, 86_400),
    "smoke_timeout_s": _int(5, 3600),
    "docker_packages": _choice("docker-ce", "distro"),
    "docker_version": _optional(_str(_APT_VERSION, "an apt version string, e.g. 5:28.5.2-1~ubuntu.24.04~noble")),
    "docker_remove_conflicts": _bool,
    "docker_repo_url": _optional(_str(_URL, _URL_DESC)),
    "docker_key_url": _optional(_str(_URL, _URL_DESC)),
    "docker_key_fingerprint": _fingerprint,
    "nvidia_repo_url": _str(_URL_ARCH, _URL_DESC + "; may contain $(ARCH)"),
    "nvidia_key_url": _str(_URL, _URL_DESC),
    "nvidia_key_fingerprint": _fingerprint,
    "nvidia_toolkit_version": _optional(_str(_APT_VERSION, "an apt version string, e.g. 1.17.8-1")),
    "nvidia_cdi": _choice("auto", "on", "off"),
    "apt_proxy": _optional(_str(_URL, _URL_DESC + ", e.g. http://proxy.example:3142")),
    "docker_log_max_size": _str(r"[1-9]\d*[kmg]", 'a size such as "100m" (k, m or g)'),
    "docker_log_max_file": _int(1, 100),
    "gpu_check_image": _optional(_str(r"[a-z0-9][a-z0-9._/:@-]*", "a docker image reference (repo:tag)")),
    "gpu_check_always": _bool,
    # dockerd accepts a mirror as scheme://host[:port] (a path or credentials are refused there)
    "registry_mirror": _optional(_str(r"https?://([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?",
                                      "an http(s)://host[:port] URL of a Docker Hub mirror (no path, no credentials)")),
    "weights_tool_dir": _abs_path,
    "weights_parallel_downloads": _int(1, 64),
    "weights_rehash": _bool,
    "weights_fanout": _bool,
    "weights_fanout_via": _choice("peers", "controller"),
    "weights_peer_port": _int(1, 65535),
    "weights_wheel_dir": _optional(_wheel_dir),
    "weights_progress_interval_s": _int(1, 3600),
    "weights_wait_timeout_s": _int(0, 30 * 86_400),
    "jit_cache_seed": _bool,
    "jit_cache_seed_port": _int(1, 65535),
    "status_harness": _optional(_choice("core", "long")),
    "prometheus_targets": lambda v: "" if v in (None, "") else _str()(v),
    "gateway_port": _int(1, 65535),
    "gateway_tls_cert": _optional(_abs_path),
    "gateway_stats_port": _int(1, 65535),
    "gateway_timeout_s": _int(30, 86_400),
    "gateway_drain_timeout_s": _int(0, 86_400),
    "site_address": _optional(_str(_HOSTNAME, "an IP address or host name the other hosts and the gateway can reach")),
    "image_cache_port": _int(1, 65535),
    "image_cache_upstream": _str(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?",
                                 'a registry host[:port] without scheme or path, e.g. "docker.io"'),
}
assert set(PARSERS) == {f.name for f in dataclasses.fields(Settings)}


def load_defaults(path: Path = DEFAULTS_FILE) -> dict[str, Any]:
    """The defaults as group_data/all.py declares them (for tests and tools outside pyinfra)."""
    scope: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), scope)
    return {k: v for k, v in scope.items() if not k.startswith("__")}


# The only docker_* host data keys pyinfra's docker/dockerssh connectors use; any other
# docker_* key is ours (the Docker settings), so a typo in one is still reported.
PYINFRA_DOCKER_KEYS = frozenset({"docker_identifier", "docker_platform", "docker_architecture",
                                 "docker_image", "docker_container_id"})


def _is_ours(key: str) -> bool:
    if key.startswith("docker_") and key not in PYINFRA_DOCKER_KEYS:
        return True
    return not key.startswith(FOREIGN_KEY_PREFIXES)


# This project's pyinfra files: deploy.py and the stage files run the deploy (every setting
# validated); tasks/status.py only reads (no model_revision needed, never prompts). Anything
# else (pyinfra's own `exec`, `fact`, another deploy) gets no settings validation.
STATUS_FILE = "tasks/status.py"


def run_kind(argv: list[str], cwd: str | None = None) -> str | None:
    """"status", "deploy" or None, from the pyinfra command line's arguments: deploy.py or a
    stage file of this project, or another deploy file beside the inventory (it may include
    our stages, as the tests' do), is a deploy; pyinfra's `exec`, `fact`, ... are None."""
    if any(a in ("exec", "fact") for a in argv):
        return None
    ops = [a for a in argv if a.endswith(".py") and not a.startswith("-")]
    for arg in ops:
        rel = os.path.relpath(os.path.realpath(os.path.join(cwd or os.getcwd(), arg)), REPO_ROOT)
        if rel == STATUS_FILE:
            return "status"
        if rel == "deploy.py" or (rel.startswith("tasks/") and rel.endswith(".py")):
            return "deploy"
    return "deploy" if len(ops) >= 2 else None  # an inventory file and a deploy file of one's own


def validate(host: str, data: Mapping[str, Any], require_revision: bool = True) -> Settings:
    """Validate one host's merged data; raise SettingsError listing every problem.
    require_revision=False: a read-only run (status) that reports what runs, pins nothing."""
    problems: list[str] = []
    values: dict[str, Any] = {}

    def bad(key: str, value: Any, allowed: str) -> None:
        problems.append(f"{host}: setting '{key}' = {value!r} is not allowed: expected {allowed}")

    for key in sorted(k for k in data if _is_ours(k) and k not in PARSERS):
        close = [k for k in PARSERS if _similar(k, key)]
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(f"{host}: unknown setting '{key}'{hint}; the settings are listed in group_data/all.py; "
                        f"keys of your own must start with {SITE_PREFIX!r}")
    for key, parse in PARSERS.items():
        if key not in data:
            problems.append(f"{host}: setting '{key}' is missing (its default lives in group_data/all.py)")
            continue
        try:
            values[key] = parse(data[key])
        except ValueError as e:
            bad(key, data[key], str(e))
    if problems:
        raise SettingsError(problems)

    # Rules across settings (the recipe's sizing constraints).
    tp, dcp = values["tensor_parallel_size"], values["decode_context_parallel_size"]
    if tp % dcp:
        bad("decode_context_parallel_size", dcp, f"a divisor of tensor_parallel_size ({tp})")
    if dcp == 1 and values["max_model_len"] > DCP1_MAX_MODEL_LEN:
        bad("max_model_len", values["max_model_len"],
            f"at most {DCP1_MAX_MODEL_LEN} with decode_context_parallel_size=1 (the KV cache is "
            "replicated per GPU and 250k OOMs above ~177k): set decode_context_parallel_size=4 "
            "for 250k, or max_model_len=131072 for the smaller, faster DCP-1 box")
    if values["model_revision"] is None and not values["preflight_only"] and require_revision:
        bad("model_revision", None, "the 40-hex commit of model_repo to deploy (pin it; the "
            "469B cut is retired upstream, so a branch may vanish): set it in group_data/all.py, "
            "the inventory or --data model_revision=<sha>; preflight_only=true needs none")
    if values["tensor_parallel_size"] > values["gpu_count"]:
        bad("tensor_parallel_size", tp, f"at most gpu_count ({values['gpu_count']})")
    if values["max_num_batched_tokens"] < values["max_num_seqs"]:
        bad("max_num_batched_tokens", values["max_num_batched_tokens"],
            f"at least max_num_seqs ({values['max_num_seqs']})")
    if values["gateway_stats_port"] == values["gateway_port"]:
        bad("gateway_stats_port", values["gateway_stats_port"], "a port other than gateway_port")
    if problems:
        raise SettingsError(problems)
    return Settings(**values)


def validate_many(hosts: Mapping[str, Mapping[str, Any]],
                  require_revision: bool = True) -> dict[str, Settings]:
    """Validate every host; one SettingsError with all hosts' problems."""
    out, problems = {}, []
    for name, data in hosts.items():
        try:
            out[name] = validate(name, data, require_revision)
        except SettingsError as e:
            problems.extend(e.problems)
    if problems:
        raise SettingsError(problems)
    return out


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() > 0.8
