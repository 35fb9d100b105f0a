"""monitor.sh supervised: the systemd unit's text and the decision per host."""

from __future__ import annotations

import subprocess

from glmfleet.service import monitor as mon

SD, NAME = "/opt/glm52", "glm52-vllm"
UNIT = mon.render_unit(SD, NAME)


def facts(**over):
    return {**mon.parse_facts([]), "kit": True, **over}


def test_unit_file_rendering():
    assert mon.unit_name(NAME) == "glm52-vllm-monitor.service"
    assert mon.unit_path(NAME) == "/etc/systemd/system/glm52-vllm-monitor.service"
    lines = UNIT.splitlines()
    for line in ("[Service]", "Restart=always", f"WorkingDirectory={SD}", f"ExecStart={SD}/monitor.sh",
                 "Environment=GLMFLEET_MONITOR_UNIT=1", "[Install]", "WantedBy=multi-user.target"):
        assert line in lines, line
    assert mon.render_unit(SD, NAME) == UNIT  # stable: no re-write on an unchanged re-run


def test_decision_on_systemd_hosts():
    sha = mon.unit_sha(UNIT)
    assert mon.plan(facts(systemd=True), UNIT).action == "install"
    p = mon.plan(facts(systemd=True, unit_sha="0" * 64, enabled=True, active=True), UNIT)
    assert p.action == "install" and "changed" in p.reason
    assert mon.plan(facts(systemd=True, unit_sha=sha, active=True), UNIT).action == "enable"
    assert mon.plan(facts(systemd=True, unit_sha=sha, enabled=True), UNIT).action == "enable"
    p = mon.plan(facts(systemd=True, unit_sha=sha, enabled=True, active=True), UNIT)
    assert not p.changes
    cmds = mon.commands(mon.plan(facts(systemd=True), UNIT), SD, NAME, UNIT)
    assert cmds[1] == "systemctl daemon-reload" and "systemctl restart glm52-vllm-monitor.service" in cmds[2]


def test_decision_without_systemd():
    assert not mon.plan(facts(alive=True), UNIT).changes
    p = mon.plan(facts(), UNIT)
    assert p.action == "start"
    assert "setsid -f ./monitor.sh" in mon.commands(p, SD, NAME, UNIT)[0]
    assert not mon.plan(facts(kit=False), UNIT).changes  # nothing placed: nothing to supervise


def test_facts_command_parses_on_this_machine(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "monitor.sh").write_text("#!/bin/sh\n")
    (tmp_path / "monitor.sh").chmod(0o755)
    run = lambda: mon.parse_facts(subprocess.run(["sh", "-c", mon.facts_command(str(tmp_path), NAME)],
                                                 capture_output=True, text=True, check=True).stdout.splitlines())
    got = run()
    assert got["kit"] and not got["alive"]
    (tmp_path / "logs" / "monitor.pid").write_text(f"{__import__('os').getpid()}\n")
    assert run()["alive"]
