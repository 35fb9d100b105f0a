"""Benchmark: preflight over 1 and over 12 simulated hosts, in one run.

    sudo .venv/bin/python bench/preflight_fleet.py [--hosts 12] [--repeat 3]

Prints the median wall time of each, their ratio (goal: 12 hosts cost at most 2x one host,
since pyinfra works on hosts in parallel), and the SSH commands sent per host (counted from
pyinfra's --debug log, so nothing is guessed). Baseline = the 1-host run of the same
benchmark run. Needs root (the simulated fleet); the GPUs and the Hub are test doubles.
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testbed.doubles import nvml  # noqa: E402
from testbed.doubles.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, HubDouble, make_checkpoint  # noqa: E402
from testbed.fleet import Fleet  # noqa: E402

COMMAND_LINE = re.compile(r"Running command on (\S+?):")


def preflight(inventory: Path, report: Path) -> tuple[float, float, dict[str, int]]:
    """One preflight-only run: (wall seconds, controller CPU seconds, SSH commands per host).

    The controller's CPU is pyinfra's own (a waited-for child); the hosts' sshd and probe
    processes are not our waited-for children, so they are not in it."""
    pyinfra = Path(sys.executable).parent / "pyinfra"
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([str(pyinfra), str(inventory), "deploy.py", "-y", "--debug",
                           "--data", "preflight_only=true", "--data", f"preflight_report={report}"],
                          cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"preflight failed:\n{proc.stderr[-3000:]}")
    counts: dict[str, int] = {}
    for host in COMMAND_LINE.findall(proc.stderr):
        counts[host] = counts.get(host, 0) + 1
    return elapsed, cpu, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-preflight-"))
    make_checkpoint(work / "hub", shards=2, shard_bytes=2**20)
    print(f"SIMULATED fleet of {a.hosts} hosts (NVML and Hub are test doubles); "
          f"median of {a.repeat} runs each", flush=True)
    with Fleet() as fleet, HubDouble(work / "hub", repo_id=DEFAULT_REPO_ID,
                                     revision=DEFAULT_REVISION) as hub:
        names = [f"b{i:02d}" for i in range(1, a.hosts + 1)]
        for n in names:
            fleet.add_host(n, files=nvml.host_files("rtx6000x4"), shm_size="32g")
        fleet.start()
        data = {n: {"hf_endpoint": hub.url, "model_revision": DEFAULT_REVISION} for n in names}
        one = fleet.write_inventory(work / "one.py", hosts=names[:1], host_data=data)
        many = fleet.write_inventory(work / "many.py", hosts=names, host_data=data)
        preflight(one, work / "warm.json")  # warm-up: page cache, pyc files
        t_one, t_many, c_one, c_many, per_host = [], [], [], [], {}
        for _ in range(a.repeat):
            t, c, _ = preflight(one, work / "r1.json")
            t_one.append(t)
            c_one.append(c)
            t, c, per_host = preflight(many, work / "r12.json")
            t_many.append(t)
            c_many.append(c)
    m1, m12 = statistics.median(t_one), statistics.median(t_many)
    cmds = sorted(set(per_host.values()))
    print(f"preflight, 1 host:          median {m1:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in t_one)})")
    print(f"preflight, {a.hosts} hosts:        median {m12:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in t_many)})")
    print(f"SSH commands per host:      {cmds[0] if len(cmds) == 1 else cmds}  "
          f"(over {len(per_host)} hosts)")
    print(f"controller CPU (pyinfra):   1 host {statistics.median(c_one):.2f} s, {a.hosts} hosts "
          f"{statistics.median(c_many):.2f} s  ({statistics.median(c_many) / statistics.median(c_one):.2f}x)")
    print("note: the simulated hosts share this machine's cores, so their sshd and NVML probe "
          "CPU adds to the wall time here; real hosts run them on their own CPUs")
    print(f"ratio {a.hosts} hosts / 1 host:   {m12 / m1:.2f}x wall  (goal: at most 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
