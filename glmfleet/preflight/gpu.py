"""GPU facts: run the NVML probe on the host with the controller's own nvidia-ml-py.

The host needs only python3 and the NVIDIA driver: the probe (glmfleet/preflight/gpu_probe.py)
and the pure-python pynvml module travel on the command's stdin, so nothing is installed and
nothing is written on the host. One SSH command per host.

    from glmfleet.preflight.gpu import GpuProbe, probe_stdin
    gpu = host.get_fact(GpuProbe, _stdin=probe_stdin())

The parsing is pure (`parse_probe_output`) and tested on recorded outputs.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
import shlex
import zlib
from pathlib import Path
from typing import Any

from pyinfra.api import FactBase

PROBE_FILE = Path(__file__).resolve().parent / "gpu_probe.py"
PROBE_TIMEOUT_S = 120  # NVML can hang on a GPU that fell off the bus; never hang the deploy

REMEDY_PYTHON = ("install python3 on the host (apt-get install -y python3): the GPU probe runs "
                 "NVML through it")
REMEDY_PROBE = "run `nvidia-smi` on the host; the output above says what the probe printed"

# Keys every parsed result has, with their defaults.
TOP_DEFAULTS: dict[str, Any] = {
    "probe_version": None, "ok": False, "error": None, "driver": None, "cuda_driver": None,
    "nvml_version": None, "open_kernel_module": None, "kernel_module": None, "count": None,
    "gpus": [], "p2p": {}, "errors": {},
}
GPU_DEFAULTS: dict[str, Any] = {
    "index": None, "name": None, "uuid": None, "cc": None, "mem_total": None, "mem_free": None,
    "mem_used": None, "persistence": None, "ecc": None, "pcie_gen": None, "pcie_gen_max": None,
    "pcie_width": None, "pcie_width_max": None, "pci_bus": None, "procs": None, "errors": {},
}
PAIR_DEFAULTS: dict[str, Any] = {"read": None, "write": None, "nvlink": None, "topology": None,
                                 "errors": {}}


# --- what goes over the wire -------------------------------------------------------------

def pynvml_source() -> bytes:
    """The controller's nvidia-ml-py module (pinned in requirements.txt), as bytes."""
    spec = importlib.util.find_spec("pynvml")
    if spec is None or not spec.origin:
        raise RuntimeError("nvidia-ml-py is not installed on the controller (pip install nvidia-ml-py)")
    return Path(spec.origin).read_bytes()


# The loader registers the embedded module as `pynvml`; a failure is left in
# GLMFLEET_PYNVML_ERROR for the probe to report (the probe follows in the same script).
_LOADER = '''\
import base64 as _b64, sys as _sys, types as _types, zlib as _zlib
GLMFLEET_PYNVML_ERROR = None
def _glmfleet_load_pynvml(blob):
    module = _types.ModuleType("pynvml")
    module.__file__ = "<nvidia-ml-py embedded by glmfleet>"
    _sys.modules["pynvml"] = module
    try:
        exec(compile(_zlib.decompress(_b64.b64decode(blob)), "pynvml.py", "exec"), module.__dict__)
    except Exception as exc:
        del _sys.modules["pynvml"]
        return "%s: %s" % (type(exc).__name__, exc)
    return None
GLMFLEET_PYNVML_ERROR = _glmfleet_load_pynvml(@BLOB@)
'''


@functools.lru_cache(maxsize=1)
def build_probe_script() -> str:
    """Loader with the compressed pynvml source, then the probe: what `python3 -` reads."""
    blob = base64.b64encode(zlib.compress(pynvml_source(), 9)).decode("ascii")
    script = _LOADER.replace("@BLOB@", repr(blob)) + "\n" + PROBE_FILE.read_text()
    return script if script.endswith("\n") else script + "\n"


class ProbeStdin(str):
    """The probe script as a str that prints as a short label.

    pyinfra logs a fact's keyword arguments (with -v), `_stdin` included; this keeps ~80 KB
    of embedded source out of the log. pyinfra writes it with str.encode(), so the real
    text is sent. It must end with a newline: pyinfra would otherwise append one with an
    f-string, which would use the label.
    """

    def __str__(self) -> str:
        return f"<glmfleet gpu probe, {len(self)} bytes>"

    __repr__ = __str__


def probe_stdin() -> ProbeStdin:
    return ProbeStdin(build_probe_script())


# --- the fact ---------------------------------------------------------------------------

def _failure_json(kind: str, message: str, remedy: str) -> str:
    return json.dumps({"ok": False, "error": {"kind": kind, "message": message, "remedy": remedy}})


def probe_command(timeout_s: int = PROBE_TIMEOUT_S) -> str:
    """Shell run on the host; its stdin must be probe_stdin(). Always exits 0 and prints one
    JSON line last (a failure of its own when python3 is missing, crashes or hangs)."""
    no_python = _failure_json("no_python", "python3 is not installed on the host", REMEDY_PYTHON)
    timed_out = _failure_json(
        "probe_timeout", f"the GPU probe did not finish in {timeout_s} s (an NVML call hung)",
        "check `nvidia-smi` and `dmesg | grep -i xid`: a GPU may have fallen off the bus")
    # '{..."message": "python3 exited with status ' + rc + '", ...}' without a JSON tool.
    crashed = _failure_json("probe_failed", "python3 exited with status @RC@", None).split("@RC@")
    q = shlex.quote
    return "\n".join([
        "if ! command -v python3 >/dev/null 2>&1; then",
        "  cat >/dev/null",  # drain stdin so the controller's write never meets a closed channel
        f"  echo {q(no_python)}",
        "  exit 0",
        "fi",
        f"t=; command -v timeout >/dev/null 2>&1 && t='timeout -k 5 {timeout_s}'",
        "$t python3 -S - 2>&1",  # -S: stdlib only, no site scan; stderr joins stdout for the parser
        "rc=$?",
        'if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then',
        f"  echo {q(timed_out)}",
        'elif [ "$rc" != 0 ]; then',
        f'  printf "%s%s%s\\n" {q(crashed[0])} "$rc" {q(crashed[1])}',
        "fi",
        "exit 0",
    ])


class GpuProbe(FactBase):
    """NVML description of the host's driver and GPUs (see parse_probe_output for the shape).

    Call with `_stdin=probe_stdin()`.
    """

    def command(self) -> str:
        return probe_command()

    @staticmethod
    def default() -> dict:
        return failure("probe_failed", "the GPU probe command failed or printed nothing",
                       REMEDY_PROBE)

    def process(self, output: list[str]) -> dict:
        return parse_probe_output("\n".join(output))


# --- parsing (pure) ---------------------------------------------------------------------

def failure(kind: str, message: str, remedy: str | None) -> dict:
    """A parsed result for a probe that could not describe the GPUs."""
    return normalize({"ok": False, "error": {"kind": kind, "message": message, "remedy": remedy}})


def parse_probe_output(text: str) -> dict:
    """The probe's printed output -> a normalised dict; never raises.

    Takes the last line that is a JSON object (a login banner or a traceback may surround
    it). Output without one becomes error kind "bad_output" carrying the text's tail.
    """
    lines = text.splitlines()
    found, found_at = None, -1
    for at in range(len(lines) - 1, -1, -1):
        line = lines[at].strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                found, found_at = value, at
                break
    if found is None:
        tail = text.strip()[-600:] or "(nothing)"
        return failure("bad_output", "the GPU probe printed no JSON: " + tail, REMEDY_PROBE)
    result = normalize(found)
    noise = "\n".join(ln for i, ln in enumerate(lines) if i != found_at and ln.strip())
    if result["error"] and result["error"]["kind"] == "probe_failed" and noise:
        # A crash: the traceback (stderr is merged into stdout) is the useful part.
        result["error"]["message"] += ": " + noise[-600:]
    return result


def _take_errors(entry: dict, keys) -> dict:
    """Move 'ERR ...' string values (the raw reading's convention) into entry['errors']."""
    errors = dict(entry.get("errors") or {})
    for key in keys:
        value = entry.get(key)
        if isinstance(value, str) and value.startswith("ERR "):
            errors[key] = value[4:]
            entry[key] = None
    entry["errors"] = errors
    return entry


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bool_or_none(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    return bool(value) if isinstance(value, int) else None


def _normalize_gpu(raw: Any, position: int) -> dict:
    g = {**GPU_DEFAULTS, **(raw if isinstance(raw, dict) else {})}
    g = _take_errors(g, GPU_DEFAULTS)
    if _int_or_none(g["index"]) is None:
        g["index"] = position
    cc = g["cc"]
    g["cc"] = [int(cc[0]), int(cc[1])] if isinstance(cc, (list, tuple)) and len(cc) == 2 \
        and all(_int_or_none(x) is not None for x in cc) else None
    for key in ("mem_total", "mem_free", "mem_used", "pcie_gen", "pcie_gen_max", "pcie_width",
                "pcie_width_max"):
        g[key] = _int_or_none(g[key])
    g["persistence"] = _bool_or_none(g["persistence"])
    ecc = g["ecc"]
    g["ecc"] = [bool(ecc[0]), bool(ecc[1])] if isinstance(ecc, (list, tuple)) and len(ecc) == 2 \
        else None
    procs = g["procs"]
    if procs == 0:  # the raw reading counted processes instead of listing them
        g["procs"] = []
    elif isinstance(procs, list):
        g["procs"] = [{"pid": p.get("pid"), "used_memory": _int_or_none(p.get("used_memory")),
                       "name": p.get("name"), "container_id": p.get("container_id")}
                      for p in procs if isinstance(p, dict)]
    else:
        g["procs"] = None
    return g


def normalize(raw: dict) -> dict:
    """Fill defaults and coerce types, so checks can rely on every key being present.

    Also accepts the older raw reading format of reference/nvml-reading-2x-h100.json
    ("nvml" for nvml_version, "ERR ..." strings for failed calls, a process count).
    """
    out = {**TOP_DEFAULTS, **raw}
    if out["nvml_version"] is None and isinstance(raw.get("nvml"), str):
        out["nvml_version"] = raw["nvml"]
    out.pop("nvml", None)
    out = _take_errors(out, ("driver", "cuda_driver", "nvml_version"))
    error = out["error"]
    if isinstance(error, dict):
        out["error"] = {"kind": str(error.get("kind") or "unknown"),
                        "message": str(error.get("message") or ""),
                        "remedy": error.get("remedy")}
    else:
        out["error"] = None
    out["cuda_driver"] = _int_or_none(out["cuda_driver"])
    out["open_kernel_module"] = out["open_kernel_module"] if isinstance(
        out["open_kernel_module"], bool) else None
    gpus = out["gpus"] if isinstance(out["gpus"], list) else []
    out["gpus"] = [_normalize_gpu(g, i) for i, g in enumerate(gpus)]
    if _int_or_none(out["count"]) is None:
        out["count"] = len(out["gpus"]) if out["error"] is None else None
    p2p = out["p2p"] if isinstance(out["p2p"], dict) else {}
    out["p2p"] = {str(k): _take_errors({**PAIR_DEFAULTS, **v}, PAIR_DEFAULTS)
                  for k, v in p2p.items() if isinstance(v, dict)}
    # The raw reading has no "ok"; it succeeded when it carries no error.
    out["ok"] = bool(raw.get("ok", out["error"] is None)) and out["error"] is None
    if not isinstance(out["errors"], dict):
        out["errors"] = {}
    return out
