"""How a run ends when no host is left: the project's one line, no source path."""

import pytest
from pyinfra.api import Config, Inventory, State

from glmfleet import runctx


def _state(*names):
    state = State(Inventory((list(names), {})), Config())
    runctx.install_callbacks(state)
    for host in state.inventory:
        state.activate_host(host)  # as connecting does
    return state


@pytest.mark.parametrize("executing,said", [(False, "nothing was changed"), (True, "fleet summary above")])
def test_every_host_failed_ends_with_our_one_line_message(executing, said):
    state = _state("gpu-01", "gpu-02")
    state.is_executing = executing
    with pytest.raises(SystemExit) as e:  # its text is printed on stderr, the status is 1
        state.fail_hosts({state.inventory.get_host("gpu-01"), state.inventory.get_host("gpu-02")})
    text = e.value.code
    assert text.startswith(f"--> glmfleet: {runctx.ALL_FAILED}") and said in text and "exit status 1" in text
    assert "No hosts remaining" not in text and ".py" not in text and "\n" not in text


def test_one_host_failing_of_two_goes_on():
    state = _state("gpu-01", "gpu-02")
    state.fail_hosts({state.inventory.get_host("gpu-01")})
    assert {h.name for h in state.active_hosts} == {"gpu-02"}


def test_one_failing_command_for_every_stage(tmp_path):
    import re
    import subprocess
    from pathlib import Path

    cmd = runctx.fail_command("it's broken; see `x`")
    r = subprocess.run(["sh", "-c", str(cmd)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr == "glmfleet: it's broken; see `x`\n" and r.stdout == ""
    pkg = Path(runctx.__file__).parent
    copies = [str(p) for p in pkg.rglob("ops.py") if re.search(r">&2; exit 1\"\)", p.read_text())]
    assert copies == [], copies


def _own_state(data):
    """A run of an operator's own deploy: no config.py, so nothing validated the inventory."""
    return State(Inventory((["gpu-01"], data)), Config())


def test_a_stage_given_a_mapping_lays_it_over_the_inventory_over_the_packaged_defaults():
    from glmfleet.settings import load_defaults

    state = _own_state({"docker_packages": "distro", "port": 8100})
    host = state.inventory.get_host("gpu-01")
    s = runctx.stage_settings({"port": 8200}, state, host)
    assert (s.port, s.docker_packages) == (8200, "distro")
    assert s.image == load_defaults()["image"] and s.model_revision is None  # none needed here
    assert runctx.settings(state, host) is s  # the stage's operations read the same back


def test_a_stage_with_bad_settings_ends_the_run_naming_host_setting_and_what_is_allowed():
    state = _own_state({})
    host = state.inventory.get_host("gpu-01")
    with pytest.raises(SystemExit) as e:
        runctx.stage_settings({"docker_packages": "podman", "sevice_dir": "/x"}, state, host)
    text = str(e.value.code)
    assert "nothing was changed" in text and "gpu-01: setting 'docker_packages' = 'podman'" in text
    assert "unknown setting 'sevice_dir' (did you mean 'service_dir'?)" in text and "Traceback" not in text


def test_in_this_projects_runs_a_stage_gets_the_validated_settings():
    from glmfleet.settings import load_defaults

    state = _own_state({**load_defaults(), "model_revision": "0" * 40})  # group_data/all.py's
    host = state.inventory.get_host("gpu-01")
    validated = runctx.validate_inventory(state)["gpu-01"]
    assert runctx.stage_settings(None, state, host) is validated
