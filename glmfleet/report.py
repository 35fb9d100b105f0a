"""Readiness report and fleet summary as text and JSON (pure: no pyinfra import)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from typing import Any, Iterable, Mapping

from tabulate import tabulate

GIB = 2**30
REASON_WIDTH = 90  # table cells stay on one line; the details below carry the full text


def clip(text: str, width: int = REASON_WIDTH) -> str:
    """Keep a table cell on one line: cut at width with an ellipsis."""
    return text if len(text) <= width else text[: width - 3] + "..."


def short_image(image: str | None) -> str:
    """'registry/org/vllm:long-tag' -> 'vllm:long-ta...' for table cells."""
    if not image:
        return "-"
    repo, _, tag = image.rpartition(":")
    if not repo or "/" in tag:
        return clip(image, 40)
    return f"{repo.rsplit('/', 1)[-1]}:{clip(tag, 24)}"


def image_cells(images: Iterable[str | None]) -> dict[str | None, str]:
    """Table cells for the images of a table's rows. One image: its short form. Several: the
    part of each tag that differs ("vllm:...-20260608"), so a half-rolled fleet shows which
    host runs which build (long tags differ only near the end)."""
    images = {i for i in images if i}
    cells: dict[str | None, str] = {None: "-", "": "-", "-": "-"}
    split = {i: i.rpartition(":") for i in images if i != "-"}
    tags = [t for repo, _, t in split.values() if repo and "/" not in t]
    if len(tags) < 2 or len(tags) != len(split):
        cells.update({i: short_image(i) for i in images})
        return cells
    prefix = os.path.commonprefix(tags)
    prefix = prefix[: prefix.rfind("-") + 1] if len(prefix) < min(map(len, tags)) else prefix
    suffix = os.path.commonprefix([t[::-1] for t in tags])[::-1]
    for image, (repo, _, tag) in split.items():
        middle = tag[len(prefix): len(tag) - len(suffix) if suffix else None] or tag
        cells[image] = (f"{repo.rsplit('/', 1)[-1]}:{'...' if prefix else ''}{clip(middle, 28)}"
                        f"{'...' if suffix and middle != tag else ''}")
    return cells


def table_width() -> int | None:
    """Columns to fit tables into: the terminal's (stderr, where reports go), or None for
    wide tables when stderr is not a terminal (logs, CI) or GLMFLEET_WIDE_TABLES=1."""
    if os.environ.get("GLMFLEET_WIDE_TABLES", "") not in ("", "0") or not sys.stderr.isatty():
        return None
    return shutil.get_terminal_size().columns


def fit_table(rows: list[list[Any]], headers: list[str], detail: int, width: int | None = None,
              **kwargs) -> str:
    """tabulate, with the ``detail`` column cut (with an ellipsis) so each line fits
    ``width`` (default: table_width()); the full text is printed elsewhere or in the log."""
    width = table_width() if width is None else width
    text = tabulate(rows, headers=headers, disable_numparse=True, **kwargs)
    if not width or max(map(len, text.splitlines() or [""])) <= width:
        return text
    others = tabulate([r[:detail] + r[detail + 1:] for r in rows],
                      headers=headers[:detail] + headers[detail + 1:], disable_numparse=True, **kwargs)
    room = max(width - max(map(len, others.splitlines())) - 2, len(headers[detail]), 12)
    rows = [r[:detail] + [clip(str(r[detail]), room)] + r[detail + 1:] for r in rows]
    return tabulate(rows, headers=headers, disable_numparse=True, **kwargs)


@dataclasses.dataclass(frozen=True)
class Finding:
    """A readiness-table entry made outside the preflight checks (an unreachable host)."""

    name: str
    status: str
    reason: str
    remedy: str = ""


# pyinfra's SSH connector says "<what> (<error>)"; the operator needs which of these it was.
_SSH_KINDS = (
    (("Authentication error",), "SSH authentication failed",
     "check ssh_user and ssh_key (the key must be in the user's authorized_keys)"),
    (("Could not resolve hostname",), "SSH: the host name does not resolve (DNS)",
     "check ssh_hostname (or DNS / /etc/hosts on this machine)"),
    (("Connection refused", "Unable to connect to port"), "SSH connection refused",
     "is sshd running on the host, and is ssh_port right?"),
    (("timed out", "Timeout"), "SSH connection timed out",
     "is the host up and reachable from here (network, firewall, ssh_hostname)?"),
    (("host key",), "SSH host key mismatch",
     "the host's key changed: check it, then update known_hosts"),
    (("No route to host", "Network is unreachable"), "SSH: no route to the host",
     "check the address and the network between this machine and the host"),
)


def ssh_failure(message: str) -> tuple[str, str]:
    """(reason, remedy) for pyinfra's connection error message."""
    for needles, what, remedy in _SSH_KINDS:
        if any(n.lower() in message.lower() for n in needles):
            return f"unreachable: {what}: {message}", remedy
    return f"unreachable: {message}", "check ssh_hostname, ssh_port, ssh_user and ssh_key"


def ssh_key_problem(key: str, cwd: str) -> str | None:
    """Why pyinfra could not use this private key file (it tries the path, then from cwd)."""
    import os

    candidates = [os.path.expanduser(key), os.path.join(cwd, os.path.expanduser(key))]
    path = next((c for c in candidates if os.path.exists(c)), None)
    if path is None:
        return "no such file (the private key pyinfra connects with)"
    if not os.path.isfile(path):
        return f"{path} is not a file"
    try:
        with open(path, "rb"):
            return None
    except OSError as e:
        return f"cannot be read ({e.strerror})"


def gpu_summary(gpu: Mapping[str, Any] | None) -> str:
    """'4x NVIDIA RTX PRO 6000 ... (cc 12.0, 95.6 GiB)'; mixed fleets list each kind."""
    if not gpu or gpu.get("error") and not gpu.get("gpus"):
        err = (gpu or {}).get("error") or {}
        return f"none ({err.get('kind', 'unknown')})"
    kinds: dict[tuple, int] = {}
    for g in gpu.get("gpus") or []:
        cc = g.get("cc") or ["?", "?"]
        mem = g.get("mem_total")
        key = (g.get("name") or "?", f"{cc[0]}.{cc[1]}",
               f"{mem / GIB:.1f} GiB" if isinstance(mem, (int, float)) else "? GiB")
        kinds[key] = kinds.get(key, 0) + 1
    if not kinds:
        return "none"
    return "; ".join(f"{n}x {name} (cc {cc}, {mem})" for (name, cc, mem), n in kinds.items())


def _disk(facts: Mapping[str, Any]) -> str:
    free = (facts.get("host") or {}).get("weights_fs_free_bytes")
    return f"{free / GIB:,.0f} GiB free" if isinstance(free, (int, float)) else "?"


def _driver(facts: Mapping[str, Any]) -> str:
    gpu = facts.get("gpu") or {}
    drv, cuda = gpu.get("driver"), gpu.get("cuda_driver")
    if not drv:
        return "none"
    if isinstance(cuda, int):
        return f"{drv} (CUDA {cuda // 1000}.{cuda % 1000 // 10})"
    return str(drv)


def readiness_table(preflight: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for host in sorted(preflight):
        p = preflight[host]
        first = next((c for c in p["checks"] if c.status == "FAIL"), None) or next(
            (c for c in p["checks"] if c.status == "WARN"), None)
        rows.append([host, gpu_summary(p["facts"].get("gpu")), _driver(p["facts"]),
                     _disk(p["facts"]), p["verdict"], first.reason if first else ""])
    return "\nPreflight readiness\n" + fit_table(
        rows, ["host", "GPUs", "driver", "disk", "verdict", "first failing reason"], detail=5)


def details(preflight: Mapping[str, Mapping[str, Any]]) -> str:
    """Every non-PASS check of every host, with its remedy."""
    out = []
    for host in sorted(preflight):
        bad = [c for c in preflight[host]["checks"] if c.status != "PASS"]
        if not bad:
            continue
        out.append(f"\n{host}: {preflight[host]['verdict']}")
        for c in bad:
            out.append(f"  [{c.status}] {c.name}: {c.reason}")
            if c.remedy:
                out.append(f"         fix: {c.remedy}")
    return "\n".join(out) if out else "\nEvery host passed every check."


def as_json(preflight: Mapping[str, Mapping[str, Any]]) -> dict:
    return {
        "hosts": {
            host: {
                "verdict": p["verdict"],
                "checks": [dataclasses.asdict(c) for c in p["checks"]],
                "facts": p["facts"],
            }
            for host, p in sorted(preflight.items())
        }
    }


INFO_COLUMNS = (("endpoint", "endpoint"), ("revision", "revision"), ("image", "image"),
                ("peak_decode", "peak decode tok/s"))


def _info_cell(key: str, value: Any, images: Mapping[Any, str]) -> str:
    if value in (None, "", "-"):
        return "-"
    if key == "revision":
        return str(value)[:12]
    if key == "image":
        return images.get(value) or short_image(str(value))
    if key == "peak_decode" and isinstance(value, (int, float)):
        return f"{value:.1f}"
    return str(value)


def summary_table(stages: Mapping[str, Mapping[str, tuple[str, str]]],
                  order: Iterable[str], info: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """Fleet summary: one row per host, one column per stage, the result, then what the
    service stage found (endpoint, model revision, image, peak decode) when it ran."""
    order = list(order)
    extra = sorted({s for per in stages.values() for s in per} - set(order))
    cols = order + extra
    info = info or {}
    info_cols = INFO_COLUMNS if info else ()
    images = image_cells(i.get("image") for i in info.values())
    rows = []
    for host in sorted(stages):
        per = stages[host]
        cells = [per[s][0] if s in per else "-" for s in cols]
        failed = [(s, per[s][1]) for s in cols if s in per and per[s][0] == "FAIL"]
        missing = [s for s in cols if s in per and per[s][0] == "NOT IMPLEMENTED"]
        if failed:
            result = f"FAILED in {failed[0][0]}: {failed[0][1]}"
        elif missing:
            result = "incomplete: " + ", ".join(missing) + " not implemented yet"
        else:
            result = "ok"
        rows.append([host, *cells, result,
                     *[_info_cell(k, info.get(host, {}).get(k), images) for k, _ in info_cols]])
    return "\nFleet summary\n" + fit_table(
        rows, ["host", *cols, "result", *[h for _, h in info_cols]], detail=1 + len(cols))
