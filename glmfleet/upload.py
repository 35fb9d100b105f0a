"""Atomic file placement on a host, shared by the stages' operations."""

from __future__ import annotations

import io
import posixpath
import shlex

from pyinfra.api import FileUploadCommand, StringCommand


def atomic_upload(path: str, data: bytes, mode: str):
    """Commands that upload ``data`` beside ``path`` and rename it into place with ``mode``:
    a reader never sees a half-written file, and a failed upload leaves the old one intact.
    The content travels over SFTP, so it never shows in a printed command or a diff."""
    directory, base = posixpath.split(path)
    tmp = f"{directory}/.{base}.glmfleet-tmp"
    q = shlex.quote
    yield StringCommand(f"mkdir -p {q(directory)}")
    yield FileUploadCommand(io.BytesIO(data), tmp)
    yield StringCommand(f"chmod {mode} {q(tmp)} && mv -f {q(tmp)} {q(path)}")
