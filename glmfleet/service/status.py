"""Read-only fleet status: what each host serves, and is it answering (pure: no pyinfra).

`pyinfra inventory/gpu.py tasks/status.py` gathers one fact per host (the service stage's
facts plus a loopback API probe through the kit's own client) and prints one row per host:
service state, readiness, revision (and whether it is the pinned one), image, uptime, peak
prefill/decode from logs/peak.json, and whether the kit on disk still matches the settings.
Nothing on the hosts changes.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from glmfleet.service import plan as svc
from glmfleet.report import fit_table, image_cells


def status_command(service_dir: str, weights_dir: str, image: str, service_name: str,
                   kit_paths) -> str:
    """The service facts, plus the container's uptime and a probe of the API from the host."""
    import shlex

    q = shlex.quote
    return svc.facts_command(service_dir, weights_dir, image, service_name, kit_paths) + f"""
st=$(docker container inspect -f '{{{{.State.StartedAt}}}}' {q(service_name)} 2>/dev/null) \\
  && echo "uptime_s=$(( $(date +%s) - $(date -d "$st" +%s 2>/dev/null || date +%s) ))"
if [ -f {q(service_dir)}/tools/oai_client.py ]; then
  names=$(cd {q(service_dir)} && python3 tools/oai_client.py probe --timeout 5 2>/dev/null); rc=$?
  echo "probe_rc=$rc"; echo "probe_names=$names"
fi
true
"""


def parse_status(lines) -> dict[str, Any]:
    lines = list(lines)
    out = svc.parse_service_facts(lines)
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key in ("uptime_s", "probe_rc", "probe_names"):
            out[key] = value
    return out


def _uptime(seconds: str | None) -> str:
    try:
        s = int(seconds or "")
    except ValueError:
        return "-"
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    return f"{days}d{hours:02d}h" if days else f"{hours}h{s // 60:02d}m"


def status_row(facts: Mapping[str, Any], files: Mapping[str, tuple[str, int]] | None,
               pinned_revision: str | None, endpoint: str) -> dict[str, Any]:
    """One host's row; ``files`` is the kit the settings render (None: cannot render)."""
    container = facts.get("container") or {}
    applied = svc.Applied.from_json(facts.get("applied"))
    if facts.get("docker") in (None, "absent"):
        state = "no docker"
    elif facts.get("docker") == "down":
        state = "dockerd down"
    elif not container:
        state = "not deployed"
    else:
        state = "running" if container.get("running") else "stopped"
        if container.get("restarts") not in (None, "", "0"):
            state += f" ({container['restarts']} restarts)"
    rc = facts.get("probe_rc")
    ready = {"0": "answering", "2": "key refused", None: "-"}.get(rc, "not answering")
    revision = applied.revision if applied else None
    # No pin (status needs none): report what runs. A pin that differs is shown, not a failure.
    rev_note = "" if not revision or not pinned_revision or revision == pinned_revision \
        else " (not the pinned one)"
    drift = []
    if files is not None and applied is not None:
        drift = [p for p, (c, m) in sorted(files.items()) if facts["files"].get(p) != svc.file_digest(c, m)]
    try:
        peak = json.loads(facts.get("peak") or "{}")
    except ValueError:
        peak = {}
    healthy = state == "running" and ready == "answering"  # serving; the exit status says so
    return {
        "state": state, "ready": ready, "endpoint": endpoint,
        "revision": (revision[:12] + rev_note) if revision else "-",
        "image": applied.image if applied else "-",
        "uptime": _uptime(facts.get("uptime_s")) if container.get("running") else "-",
        "peak_prefill": peak.get("peak_prefill_tps"), "peak_decode": peak.get("peak_decode_tps"),
        "kit": ("matches settings" if not drift else "differs: " + ", ".join(drift)) if applied else "-",
        "healthy": healthy,
    }


def unreachable_row(reason: str) -> dict[str, Any]:
    """The row of a host the status run could not reach (reason: the SSH failure)."""
    return {"state": "unreachable", "ready": "-", "endpoint": "-", "revision": "-", "image": "-",
            "uptime": "-", "peak_prefill": None, "peak_decode": None, "kit": reason, "healthy": False}


def status_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    def num(v):
        return f"{v:.1f}" if isinstance(v, (int, float)) else "-"

    images = image_cells(r["image"] for r in rows.values())
    body = [[h, r["state"], r["ready"], r["endpoint"], r["revision"], images[r["image"]],
             r["uptime"], num(r["peak_prefill"]), num(r["peak_decode"]), r["kit"]]
            for h, r in sorted(rows.items())]
    healthy = sum(1 for r in rows.values() if r["healthy"])
    return (f"\nService status ({healthy} of {len(rows)} hosts serving)\n"
            + fit_table(body, ["host", "service", "API", "endpoint", "revision", "image",
                               "uptime", "peak prefill tok/s", "peak decode tok/s", "kit / detail"], detail=9))


# --- fleet coherence check from the controller (status_harness) -------------------------------

HARNESS = "files/test/coherence_test.py"  # the kit's own harness, run here on the controller


def harness_argv(python: str, root: str, suite: str, base_url: str) -> list[str]:
    """The harness against one endpoint (root: the folder holding files/, a checkout or the
    installed package); the API key goes in the environment, never argv."""
    return [python, f"{root}/{HARNESS}", suite, "--base-url", base_url, "--json", "-",
            "--timeout", "1800"]


def base_url(endpoint: str) -> str | None:
    """The server root of an endpoint, or None when only the host itself can reach it."""
    if "(loopback" in endpoint:
        return None
    return endpoint.split()[0].removesuffix("/v1")


def harness_row(summary: Mapping[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """Gather one host's harness summary (coherence_test.py --json) into a table row."""
    if summary is None:
        return {"result": "not run", "cases": "-", "ttft": None, "decode": None, "decode_min": None,
                "prefill": None, "detail": error or ""}
    cases = summary.get("cases") or []
    ttfts = sorted(c["ttft_s"] for c in cases if c.get("ttft_s") is not None)
    decodes = [c["decode_tps"] for c in cases if c.get("decode_tps")]
    prefills = [c["prefill_tps"] for c in cases if c.get("prefill_tps")]
    failed = [c["name"] for c in cases if not c.get("ok")]
    return {
        "result": "PASS" if summary.get("ok") else "FAIL",
        "cases": f"{summary.get('passed', 0)}/{len(cases)}",
        "ttft": ttfts[len(ttfts) // 2] if ttfts else None,
        "decode": sum(decodes) / len(decodes) if decodes else None,
        "decode_min": min(decodes) if decodes else None,
        "prefill": max(prefills) if prefills else None,
        "detail": ("failed: " + ", ".join(failed)) if failed else (error or ""),
    }


def harness_table(suite: str, rows: Mapping[str, Mapping[str, Any]]) -> str:
    from tabulate import tabulate

    def num(v, digits=1):
        return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "-"

    body = [[h, r["result"], r["cases"], num(r["ttft"], 2), num(r["prefill"], 0), num(r["decode"]),
             num(r["decode_min"]), r["detail"][:70]] for h, r in sorted(rows.items())]
    return (f"\nFleet coherence ({suite}, run from the controller against each endpoint)\n"
            + tabulate(body, headers=["host", "result", "cases", "median TTFT s", "peak prefill tok/s",
                                      "mean decode tok/s", "min decode tok/s", "detail"], disable_numparse=True))


# --- load: vLLM's /metrics on each host, and the gateway's view (tasks/status.py) -------------

METRICS = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
           "vllm:kv_cache_usage_perc": "kv"}


def metrics_command(bind_address: str, port: int) -> str:
    """Read vLLM's /metrics from the host itself; only the three gauges status shows."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind_address, bind_address)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"
    script = ("import sys, urllib.request\n"
              f"try: sys.stdout.write(urllib.request.urlopen({url!r}, timeout=5).read().decode())\n"
              "except Exception as e: print('metrics_error=' + type(e).__name__)\n")
    names = "|".join(n.split(":")[1] for n in METRICS)
    return (f"python3 -c {_q(script)} 2>/dev/null | grep -E '^(vllm:({names})[{{ ]|metrics_error=)' || true")


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


def parse_metrics(lines) -> dict[str, float | None]:
    """{running, waiting, kv}: each gauge summed over its samples (one per engine); None
    when /metrics did not answer."""
    out: dict[str, float | None] = {v: None for v in METRICS.values()}
    for line in lines:
        name = line.split("{")[0].split(" ")[0]
        if name in METRICS:
            try:
                value = float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            key = METRICS[name]
            out[key] = (out[key] or 0.0) + value
    return out


def load_table(rows: Mapping[str, Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]],
               gateway: Mapping[str, Mapping[str, Any]] | None) -> str:
    """One row per host: the gateway's state and sessions (when the fleet has a gateway),
    and the requests running and waiting and the KV-cache use vLLM reports."""
    from tabulate import tabulate

    def num(v, fmt="{:.0f}"):
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    body = []
    for h in sorted(rows):
        g = (gateway or {}).get(h) or {}
        m = metrics.get(h) or {}
        body.append([h, g.get("state", "-"), num(g.get("scur")), num(g.get("stot")),
                     num(m.get("running")), num(m.get("waiting")),
                     num(m["kv"] * 100, "{:.1f}%") if isinstance(m.get("kv"), float) else "-"])
    title = ("Through the gateway and vLLM's /metrics" if gateway is not None
             else "Load from vLLM's /metrics (no gateway in the inventory)")
    return f"\n{title}\n" + tabulate(body, headers=["host", "gateway", "sessions now", "sessions total",
                                                   "running", "waiting", "KV cache"],
                                     disable_numparse=True)
