"""The rollout's drain against a scripted runtime API (the real one: tests/fleet/test_gateway.py)."""

from __future__ import annotations

from types import SimpleNamespace

from pyinfra.connectors.util import CommandOutput, OutputLine

from glmfleet.gateway import ops
from glmfleet.gateway import plan as gw

HEADER = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status"


class FakeGateway:
    """Answers `set server` with nothing (success) and `show stat` from a script of scur."""

    def __init__(self, scur_script, fail_set=False):
        self.name, self.connected, self.sent = "lb", True, []
        self.scur = list(scur_script)
        self.fail_set = fail_set
        self.server_state = "UP"
        self.state = SimpleNamespace(print_input=False, print_output=False)  # pyinfra's run state
        # what glmfleet.remote reads of a pyinfra Host: no --sudo in this run
        self.current_op_global_arguments = {}
        self.data = SimpleNamespace()

    @staticmethod
    def _out(stream, lines):
        return CommandOutput([OutputLine(stream, x) for x in lines])

    def run_shell_command(self, command, **kwargs):
        text = str(command.bare_command if hasattr(command, "bare_command") else command)
        self.sent.append(text)
        if "set server" in text:
            if self.fail_set:
                return False, self._out("stderr", ["socat: No such file or directory"])
            self.server_state = {"drain": "DRAIN", "ready": "UP", "maint": "MAINT"}[text.split("state ")[1].split("'")[0]]
            return True, self._out("stdout", [])
        scur = self.scur.pop(0) if len(self.scur) > 1 else self.scur[0]
        lines = [HEADER, f"vllm,gpu-1,0,0,{scur},2,2,10,{self.server_state}"]
        return True, self._out("stdout", lines)


def drainer(gateway):
    d = ops.Drainer.__new__(ops.Drainer)
    d.state, d.gateways = None, [gateway]
    return d


def test_drain_waits_for_sessions_to_end(monkeypatch):
    monkeypatch.setattr(ops, "DRAIN_POLL_S", 0)
    g, said = FakeGateway([2, 1, 0]), []
    assert drainer(g).drain("gpu-1", 60, said.append) is True
    assert gw.set_state_command("gpu-1", "drain") in g.sent[0]
    assert sum(gw.SHOW_STAT in s for s in g.sent) == 3  # polled until zero
    drainer(g).ready("gpu-1", said.append)
    assert g.server_state == "UP" and "back in the backend (UP)" in said[-1]


def test_drain_gives_up_at_the_timeout(monkeypatch):
    monkeypatch.setattr(ops, "DRAIN_POLL_S", 0)
    said = []
    assert drainer(FakeGateway([1])).drain("gpu-1", 0, said.append) is True
    assert "gateway_drain_timeout_s" in said[-1]


def test_no_haproxy_yet_means_restart_as_without_a_gateway():
    said = []
    assert drainer(FakeGateway([0], fail_set=True)).drain("gpu-1", 60, said.append) is False
    assert "restarting without a drain" in said[-1]


def test_a_failed_host_is_held_out():
    g, said = FakeGateway([0]), []
    drainer(g).hold_out("gpu-1", said.append)
    assert g.server_state == "MAINT" and "held out" in said[-1]
