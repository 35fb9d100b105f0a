"""Glue between one pyinfra run and our stages (imports pyinfra; logic lives elsewhere).

- Settings are validated for every host before the first connection (a state callback).
- Each stage records its result per host here; the readiness table is printed once every
  host has been preflighted, and the fleet summary once the run ends (pyinfra disconnects).
- Output goes to stderr, like pyinfra's own log, so `--json` keeps stdout pure.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from pyinfra import host as current_host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.state import BaseStateCallback
from pyinfra_cli.exceptions import CliError

from glmfleet import report
from glmfleet.settings import Settings, SettingsError, validate_many

STAGES = ("preflight", "docker", "nvidia_toolkit", "weights", "service")


class _Run:
    """Per-run registry: one per pyinfra State (tests may run several in one process)."""

    def __init__(self, state):
        self.state = state
        self.settings: dict[str, Settings] = {}
        self.preflight: dict[str, dict] = {}  # host -> {"checks": [...], "verdict", "facts"}
        self.stages: dict[str, dict[str, tuple[str, str]]] = {}  # host -> stage -> (status, detail)
        self.info: dict[str, dict[str, object]] = {}  # host -> endpoint, revision, image, peak
        self.stage_state: dict[str, object] = {}  # a stage's own run-wide state (per_run)
        self.preflight_done = False
        self.summary_printed = False


_RUNS: dict[int, _Run] = {}
# settings -> (settings, notes), run once per run after validation; raise ValueError to refuse.
_SETTINGS_HOOKS: list = []


def run_for(state) -> _Run:
    run = _RUNS.get(id(state))
    if run is None or run.state is not state:
        run = _RUNS[id(state)] = _Run(state)
    return run


def per_run(state, key: str, factory):
    """A stage's own run-wide object (made by factory(state) on first use), kept with this
    run's registry so every stage shares one per-State lifetime."""
    run = run_for(state)
    if key not in run.stage_state:
        run.stage_state[key] = factory(state)
    return run.stage_state[key]


def validate_inventory(state) -> dict[str, Settings]:
    """Validate every host's data once; a CliError lists every problem of every host."""
    run = run_for(state)
    if not run.settings:
        try:
            # Every host this run targets (--limit respected), all problems at once.
            settings = validate_many({h.name: h.data.dict() for h in state.inventory
                                      if state.is_host_in_limit(h)})
        except SettingsError as e:
            raise CliError("invalid settings (nothing was changed, no host was contacted):\n"
                           + str(e)) from None
        # Hooks handed in by config.py (e.g. api_key = "generate": the fleet's one stored key,
        # resolved here only, so the kit, the smoke test and the harnesses all see the real key).
        for hook in _SETTINGS_HOOKS:
            try:
                settings, notes = hook(settings)
            except ValueError as e:
                raise CliError(f"{e} (nothing was changed, no host was contacted)") from None
            for note in notes:
                echo(note)
        run.settings = settings
    return run.settings


class RunCallbacks(BaseStateCallback):
    """Registered from config.py: the fleet summary at the end of the run."""

    @staticmethod
    def host_disconnect(state, host):
        run = run_for(state)
        if run.summary_printed or not run.stages:
            return
        run.summary_printed = True
        for h in state.failed_hosts:
            if h.name not in run.stages:
                record(h.name, "preflight", "FAIL", "unreachable or failed during the run", state)
        for h in state.failed_hosts:
            stages = run.stages.get(h.name, {})
            if not any(s == "FAIL" for s, _ in stages.values()):
                record(h.name, "run", "FAIL", "an operation failed (see pyinfra's output above)", state)
        echo(report.summary_table(run.stages, STAGES, run.info))


def install_callbacks(state, settings_hooks=()) -> None:
    """Register RunCallbacks on the state once it is initialised; settings_hooks run once on
    the validated settings of the run (runctx imports no stage: stages hand theirs in).

    config.py runs before State.init(), which resets the callback list, so we hook init
    itself; init is also the last step before pyinfra connects, so settings are validated
    there, for every host the run targets (--limit applies), before any connection."""
    _SETTINGS_HOOKS[:] = list(settings_hooks)
    original_init = state.init

    def init(*args, **kwargs):
        original_init(*args, **kwargs)
        state.add_callback_handler(RunCallbacks())
        validate_inventory(state)  # here, outside any greenlet: a clean error, no traceback

    state.init = init


def echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def settings(state=None, host=None) -> Settings:
    state = state or current_host.state
    host = host or current_host
    return validate_inventory(state)[host.name]


def record(host_name: str, stage: str, status: str, detail: str = "", state=None) -> None:
    """Record one stage's outcome for the fleet summary."""
    run = run_for(state or current_host.state)
    run.stages.setdefault(host_name, {})[stage] = (status, detail)


def record_info(host_name: str, state=None, **info) -> None:
    """Facts about a host's service for the summary's last columns (endpoint, revision,
    image, peak_decode)."""
    run_for(state or current_host.state).info.setdefault(host_name, {}).update(info)


def record_preflight(state, host, checks, facts: dict, verdict: str, first_reason: str) -> None:
    """Store one host's checks and verdict (decided by the preflight stage); once all active
    hosts are in, print the report and drop the failing hosts (before any operation is
    executed anywhere)."""
    run = run_for(state)
    run.preflight[host.name] = {"verdict": verdict, "checks": checks, "facts": facts}
    record(host.name, "preflight", verdict, first_reason)
    expected = {h.name for h in state.inventory.get_active_hosts()}
    if run.preflight_done or not expected <= set(run.preflight):
        return
    run.preflight_done = True
    echo(report.readiness_table(run.preflight))
    echo(report.details(run.preflight))
    s = run.settings.get(host.name)
    if s and s.preflight_report:
        write_json_atomic(s.preflight_report, report.as_json(run.preflight))
        echo(f"Preflight report written to {s.preflight_report}")
    failed = {h for h in state.inventory.get_active_hosts()
              if run.preflight[h.name]["verdict"] == "FAIL"}
    if failed:
        echo(f"Dropping {len(failed)} host(s) that failed preflight: "
             + ", ".join(sorted(h.name for h in failed)))
        try:
            state.fail_hosts(failed)
        except PyinfraError as e:  # "No hosts remaining!" / over FAIL_PERCENT
            raise PyinfraError(f"{e} Every host to deploy failed preflight or was dropped; nothing "
                           "was changed. The reasons and fixes are listed above.") from None


def passed_preflight(state, host) -> bool:
    p = run_for(state).preflight.get(host.name)
    return bool(p) and p["verdict"] != "FAIL"


def write_json_atomic(path: str, data) -> None:
    """Write to a temp file beside the target, then rename: never a half-written report."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
