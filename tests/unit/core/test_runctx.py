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
