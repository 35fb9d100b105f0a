"""Commands and uploads a stage issues by itself, run as the deploy's own operations run.

A stage's long steps (a FunctionCommand: the weights job's start and polling, the fan-out,
the service rollout, the image pull) call ``host.run_shell_command`` / ``host.put_file``
directly. pyinfra applies the run's connector arguments (``--sudo``, ``_sudo_user``,
``_su_user``, ``_sudo_password``, ``_use_sudo_login``, ``_shell_executable``, ...) only to
the commands an operation yields, so every such call goes through here: it passes the same
arguments the current operation runs with (or, on another host of the run, the arguments
pyinfra would give that host: its data, then the run's config). A host reached as a
non-root user with sudo then behaves exactly like one reached as root.
"""

from __future__ import annotations

import io
import os
import shlex
from typing import NamedTuple

from paramiko import SSHException
from pyinfra.api import StringCommand
from pyinfra.api.arguments import pop_global_arguments

# How a command runs (privilege escalation, shell): taken from the run. The per-command
# arguments (_timeout, _stdin, _success_exit_codes, _env, _chdir) are the caller's to set.
PASSED = ("_sudo", "_sudo_user", "_use_sudo_login", "_sudo_password", "_preserve_sudo_env",
          "_su_user", "_use_su_login", "_preserve_su_env", "_su_shell", "_su_password",
          "_doas", "_doas_user", "_dzdo", "_dzdo_user", "_shell_executable")
ESCALATE = ("_sudo", "_su_user", "_doas", "_dzdo")


def connector_args(h) -> dict:
    """The connector arguments host ``h`` runs its operations with in this run."""
    args = h.current_op_global_arguments
    if args is None:  # not inside one of h's operations (e.g. a fan-out receiver)
        args, _ = pop_global_arguments(h.state, h, {})
    return {k: v for k, v in args.items() if k in PASSED and v not in (None, False, "")}


def escalates(h) -> bool:
    args = connector_args(h)
    return any(args.get(k) for k in ESCALATE)


class Ran(NamedTuple):
    ok: bool
    out: list[str]   # stdout lines
    err: str         # stderr text (or why the connection failed)
    lines: list[str]  # stdout and stderr lines as they came


def sh(h, command: str, *, stdin: str | None = None, timeout: float | None = None,
       show: bool | None = None) -> Ran:
    """Run one command on host ``h`` as the run's operations would. Never put a secret in
    ``command`` (pass it on ``stdin``). ``show``: print the output (default: as pyinfra's
    -v flags say). SSH trouble or a timeout is a failed result, not an exception."""
    kwargs = connector_args(h)
    if stdin is not None:
        kwargs["_stdin"] = stdin
    if timeout:
        kwargs["_timeout"] = timeout
    if show is None:
        show = h.state.print_output
    try:
        ok, out = h.run_shell_command(StringCommand(command), print_input=h.state.print_input,
                                      print_output=show, **kwargs)
    except (OSError, TimeoutError, SSHException) as e:
        msg = f"lost contact with the host ({type(e).__name__}: {e})"
        return Ran(False, [], msg, [msg])
    return Ran(ok, out.stdout_lines, out.stderr, [line.line for line in out])


def put(h, src: bytes | str | os.PathLike, dest: str) -> bool:
    """Upload ``src`` (bytes, or a local file's path) to ``dest`` on ``h`` over SFTP, as the
    run's user (under sudo/su: to a temp file, then copied into place by the escalated user,
    so root-owned places work). That temp file is created 0600 first, so even a secret is
    never readable by others on the host, not even briefly."""
    args = connector_args(h)
    data = io.BytesIO(src) if isinstance(src, bytes) else str(src)
    try:
        if any(args.get(k) for k in ESCALATE):
            tmp = h.get_temp_filename(dest)
            ok, _ = h.run_shell_command(StringCommand(f"(umask 077 && : > {shlex.quote(tmp)})"))
            if not ok:
                return False
            return bool(h.put_file(data, dest, remote_temp_filename=tmp,
                                   print_input=h.state.print_input, **args))
        return bool(h.put_file(data, dest, print_input=h.state.print_input, **args))
    except (OSError, SSHException):
        return False


def get(h, src: str, dest: str | os.PathLike) -> bool:
    """Fetch ``src`` from ``h`` into the local file ``dest`` over SFTP, as the run's user
    (under sudo/su pyinfra copies it to a temp file the login user can read first)."""
    try:
        return bool(h.get_file(src, str(dest), print_input=h.state.print_input, **connector_args(h)))
    except (OSError, SSHException):
        return False


def login_user(h) -> str:
    """The user the SSH connection logged in as (owner of what SFTP writes)."""
    client = getattr(h.connector, "client", None)
    transport = client.get_transport() if client else None
    return (transport.get_username() if transport else None) or str(h.data.get("ssh_user") or "root")
