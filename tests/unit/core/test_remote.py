"""glmfleet.remote: a stage's own commands and uploads carry the run's connector arguments."""

from __future__ import annotations

from types import SimpleNamespace

from pyinfra.api.command import StringCommand

from glmfleet import remote


class FakeHost:
    """Records what the stage asked the connector to do."""

    def __init__(self, args):
        self.current_op_global_arguments = args
        self.state = SimpleNamespace(print_input=False, print_output=False)
        self.calls = []

    def run_shell_command(self, command, **kwargs):
        self.calls.append(("run", str(command) if isinstance(command, StringCommand) else command, kwargs))
        return True, _Output([SimpleNamespace(line="ok")])

    def put_file(self, src, dest, **kwargs):
        self.calls.append(("put", dest, kwargs))
        return True

    def get_temp_filename(self, key):
        return "/tmp/pyinfra-tmp"


class _Output(list):
    stdout_lines = ["ok"]
    stderr = ""


SUDO = {"_sudo": True, "_sudo_user": None, "_su_user": None, "_timeout": 30, "_chdir": "/x",
        "_shell_executable": "sh", "_use_sudo_login": False}


def test_commands_run_with_the_runs_escalation_only():
    h = FakeHost(SUDO)
    r = remote.sh(h, "mkdir -p /opt/glmfleet/pylib", stdin="secret", timeout=5)
    assert r.ok and r.out == ["ok"]
    _, command, kwargs = h.calls[0]
    assert command == "mkdir -p /opt/glmfleet/pylib"
    # escalation and shell from the run; timeout/stdin are this command's; nothing else leaks in
    assert kwargs["_sudo"] is True and kwargs["_shell_executable"] == "sh"
    assert kwargs["_timeout"] == 5 and kwargs["_stdin"] == "secret"
    assert "_chdir" not in kwargs and "_sudo_user" not in kwargs and "_use_sudo_login" not in kwargs


def test_upload_under_sudo_goes_through_a_0600_temp_file():
    h = FakeHost(SUDO)
    assert remote.put(h, b"data", "/opt/glm52/.env")
    (kind, command, kwargs), (kind2, dest, put_kwargs) = h.calls
    assert kind == "run" and "umask 077" in command and "/tmp/pyinfra-tmp" in command
    assert "_sudo" not in kwargs  # the temp file belongs to the login user
    assert kind2 == "put" and dest == "/opt/glm52/.env"
    assert put_kwargs["_sudo"] is True and put_kwargs["remote_temp_filename"] == "/tmp/pyinfra-tmp"


def test_root_login_uploads_directly():
    h = FakeHost({"_sudo": False})
    assert remote.put(h, b"data", "/opt/glm52/.env")
    assert [c[0] for c in h.calls] == ["put"] and "remote_temp_filename" not in h.calls[0][2]


def test_ssh_trouble_is_a_failed_result_not_an_exception():
    h = FakeHost({})

    def broken(*a, **k):
        raise OSError("Socket is closed")
    h.run_shell_command = broken
    r = remote.sh(h, "true")
    assert not r.ok and "lost contact with the host" in r.err and "Socket is closed" in r.err
