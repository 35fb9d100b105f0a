"""Glue between one pyinfra run and our stages (imports pyinfra; logic lives elsewhere).

- Settings are validated for every host before the first connection (a state callback).
- Each stage records its result per host here; the readiness table is printed once every
  host has been preflighted, and the fleet summary once the run ends (pyinfra disconnects).
- Output goes to stderr, like pyinfra's own log, so `--json` keeps stdout pure.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile

from pyinfra import host as current_host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.state import BaseStateCallback
from pyinfra_cli.exceptions import CliError

from glmfleet import report
from glmfleet.settings import Settings, SettingsError, load_defaults, run_kind, validate, validate_many

STAGES = ("preflight", "docker", "nvidia_toolkit", "weights", "service")


class _Run:
    """Per-run registry: one per pyinfra State (tests may run several in one process)."""

    def __init__(self, state):
        self.state = state
        self.settings: dict[str, Settings] = {}
        self.given: dict[str, Settings] = {}  # handed to a stage's deploy function (stage_settings)
        self.preflight: dict[str, dict] = {}  # host -> {"checks": [...], "verdict", "facts"}
        self.stages: dict[str, dict[str, tuple[str, str]]] = {}  # host -> stage -> (status, detail)
        self.info: dict[str, dict[str, object]] = {}  # host -> endpoint, revision, image, peak
        self.stage_state: dict[str, object] = {}  # a stage's own run-wide state (per_run)
        self.preflight_done = False
        self.summary_printed = False
        self.kind: str | None = "deploy"  # or "status", or None (pyinfra's exec, fact, ...)
        self.unreachable: dict[str, tuple[str, str]] = {}  # host -> (reason, remedy)


_RUNS: dict[int, _Run] = {}
# settings -> (settings, notes), run once per run after validation; raise ValueError to refuse.
_SETTINGS_HOOKS: list = []
# {host: raw data} -> lines added to a settings error (e.g. the Hub's head commit when
# model_revision is missing); handed in by config.py, as runctx imports no stage.
_ERROR_HINTS: list = []


def run_for(state) -> _Run:
    # pyinfra's module-level `state` is a context proxy: key the run by the State behind it.
    get = getattr(type(state), "_get_module", None)
    state = (get(state) or state) if get else state
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
                                      if state.is_host_in_limit(h)},
                                     require_revision=run.kind != "status")
        except SettingsError as e:
            hints = [line for hint in _ERROR_HINTS for line in hint(
                {h.name: h.data.dict() for h in state.inventory if state.is_host_in_limit(h)})] \
                if any("'model_revision' = None" in p for p in e.problems) else []
            raise CliError("invalid settings (nothing was changed, no host was contacted):\n"
                           + "\n".join([str(e), *hints])) from None
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


def host_settings(state, h, validated: dict | None = None) -> Settings | None:
    """Any inventory host's settings, in or out of this run's --limit (outside it: validated
    here, for its address, ports and sizes; None when they are invalid). validated: the
    run's settings when they are still being made (a settings hook), else None."""
    s = (validate_inventory(state) if validated is None else validated).get(h.name)
    if s is None:
        try:
            return validate(h.name, h.data.dict(), require_revision=False)
        except SettingsError:
            return None
    return s


def site_address(h, s: Settings) -> str:
    """Where the other hosts of the site (and the gateway) reach host h: its site_address,
    else its SSH hostname."""
    return s.site_address or str(h.data.get("ssh_hostname") or h.name)


def check_ssh_keys(state) -> None:
    """A missing or unreadable ssh_key is a settings error naming the host and the path,
    before any connection (pyinfra itself would fail inside the connection, with a traceback)."""
    problems = []
    for h in state.inventory:
        key = h.data.get("ssh_key")
        if not key or not state.is_host_in_limit(h):
            continue
        problem = report.ssh_key_problem(str(key), state.cwd or os.getcwd())
        if problem:
            problems.append(f"{h.name}: setting 'ssh_key' = {str(key)!r}: {problem}")
    if problems:
        raise CliError("invalid settings (nothing was changed, no host was contacted):\n"
                       + "\n".join(problems))


class RunCallbacks(BaseStateCallback):
    """Registered from config.py: unreachable hosts recorded with their SSH reason, the fleet
    summary at the end of the run."""

    @staticmethod
    def host_connect_error(state, host, error):
        run = run_for(state)
        reason, remedy = report.ssh_failure(str(error.args[0] if error.args else error))
        run.unreachable[host.name] = (reason, remedy)
        targeted = {h.name for h in state.inventory if state.is_host_in_limit(h)}
        if run.kind == "status" and targeted <= set(run.unreachable):
            # No host to ask: pyinfra stops now ("No hosts remaining!"); say why for each.
            echo("\nService status (0 of %d hosts serving)\n" % len(targeted) + report.fit_table(
                [[n, r] for n, (r, _) in sorted(run.unreachable.items())], ["host", "detail"], detail=1))
        if run.kind == "deploy":
            run.preflight[host.name] = {"verdict": "FAIL", "facts": {},
                                        "checks": [report.Finding("ssh", "FAIL", reason, remedy)]}
            record(host.name, "preflight", "FAIL", reason, state)
            if targeted <= set(run.unreachable) and not run.preflight_done:
                # No host can be reached: pyinfra stops now ("No hosts remaining!"); the
                # table and the report still say why, host by host.
                _print_readiness(run, run.settings.get(host.name))

    @staticmethod
    def host_disconnect(state, host):
        run = run_for(state)
        if run.summary_printed or not run.stages or run.kind != "deploy":
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


def install_callbacks(state, settings_hooks=(), error_hints=()) -> None:
    """Register RunCallbacks on the state once it is initialised; settings_hooks run once on
    the validated settings of the run (runctx imports no stage: stages hand theirs in).

    config.py runs before State.init(), which resets the callback list, so we hook init
    itself; init is also the last step before pyinfra connects, so settings are validated
    there, for every host the run targets (--limit applies), before any connection."""
    _SETTINGS_HOOKS[:] = list(settings_hooks)
    _ERROR_HINTS[:] = list(error_hints)
    original_init = state.init
    real = getattr(original_init, "__self__", state)  # the State behind pyinfra's proxy

    def init(*args, **kwargs):
        original_init(*args, **kwargs)
        real.add_callback_handler(RunCallbacks())
        check_ssh_keys(real)
        kind = run_for(real).kind = run_kind(sys.argv[1:], getattr(real, "cwd", None))
        if kind is None:
            return  # not a deploy: pyinfra's own `exec`, `fact`, ...: no settings, no tables
        if kind == "status":
            # Read-only and scriptable (cron, CI): no prompt on a failed host (pyinfra asks
            # without -y); the status table names every host, the exit status sums it up.
            vars(real).pop("should_raise_failed_hosts", None)
            real.config.FAIL_PERCENT = None
        validate_inventory(real)  # here, outside any greenlet: a clean error, no traceback

    state.init = init
    state.fail_hosts = _own_message_when_none_remain(state, state.fail_hosts)


# How a run ends when no host is left: one line of ours and exit status 1, instead of
# pyinfra's "No hosts remaining!" with a source path and line number. SystemExit, because
# pyinfra wraps any other exception raised while a deploy file runs (preflight) in a traceback.
ALL_FAILED = "every host of this run failed"


def _own_message_when_none_remain(state, fail_hosts):
    def wrapped(hosts_to_fail, activated_count=None):
        try:
            return fail_hosts(hosts_to_fail, activated_count)
        except PyinfraError:
            if state.active_hosts:  # another limit (FAIL_PERCENT): pyinfra's own message
                raise
            if state.is_executing:
                raise SystemExit(f"--> glmfleet: {ALL_FAILED}; the fleet summary above says where "
                                 "and why (exit status 1)") from None
            raise SystemExit(f"--> glmfleet: {ALL_FAILED} or was dropped before any change, so "
                             "nothing was changed; the reasons and fixes are listed above "
                             "(exit status 1)") from None
    return wrapped


def fail_command(message: str):
    """The command that ends a host's run with ``message`` on stderr (pyinfra prints a failed
    command's stderr): the one way every stage fails a host from inside an operation."""
    from pyinfra.api import StringCommand

    return StringCommand(f"echo {shlex.quote('glmfleet: ' + message)} >&2; exit 1")


def echo(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def settings(state=None, host=None) -> Settings:
    state = state or current_host.state
    host = host or current_host
    given = run_for(state).given.get(host.name)
    return given if given is not None else validate_inventory(state)[host.name]


def stage_settings(given=None, state=None, host=None) -> Settings:
    """The settings a stage's deploy function runs with on this host, kept for its operations.

    None: in this project's runs (config.py validated the inventory) the host's validated
    settings; in a deploy of one's own, the host's inventory data over the packaged defaults.
    A mapping: those settings over that. A Settings: as it is. Bad settings end the run with
    the problems listed (a clean message, no traceback)."""
    state = state or current_host.state
    host = host or current_host
    run = run_for(state)
    if given is None and host.name in run.settings:
        return run.settings[host.name]
    if not isinstance(given, Settings):
        try:
            given = validate(host.name, {**load_defaults(), **host.data.dict(), **(given or {})},
                             require_revision=False)
        except SettingsError as e:
            raise SystemExit(f"--> glmfleet: invalid settings (nothing was changed):\n{e}") from None
    run.given[host.name] = given
    return given


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
    _print_readiness(run, run.settings.get(host.name))
    failed = {h for h in state.inventory.get_active_hosts()
              if run.preflight[h.name]["verdict"] == "FAIL"}
    if failed:
        echo(f"Dropping {len(failed)} host(s) that failed preflight: "
             + ", ".join(sorted(h.name for h in failed)))
        state.fail_hosts(failed)  # none left: our own message (install_callbacks)


def _print_readiness(run: _Run, s: Settings | None) -> None:
    """The readiness table, every non-PASS check, the JSON report: once per run."""
    run.preflight_done = True
    echo(report.readiness_table(run.preflight))
    echo(report.details(run.preflight))
    if s and s.preflight_report:
        write_json_atomic(s.preflight_report, report.as_json(run.preflight))
        echo(f"Preflight report written to {s.preflight_report}")


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
