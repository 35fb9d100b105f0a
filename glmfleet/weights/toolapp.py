"""The host-side weights tool (glmfleet/weights/hostside/) as one file: a zip application.

The package is several modules on the controller, yet a host gets one file and needs only
python3: `python3 weights.pyz ...`. It is built with the standard library's zipapp at deploy
time, deterministically (sorted names, fixed timestamps and modes, stored uncompressed), so
the same sources always give the same bytes and the same sha256: the upload is idempotent
by digest. Inside the archive the package is named APP_PACKAGE; its modules import each
other relatively, so the same files work here and there.

Controller-side cache: beside the host bundle's (glmfleet/weights/hostbundle.py), folder
weights-tool/<key>.pyz, where the key covers the format and every source file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tempfile
import zipapp
import zipfile
from pathlib import Path

from glmfleet.weights import hostbundle

APP_FORMAT = 1
APP_PACKAGE = "glmfleet_weights"
SOURCE = Path(__file__).resolve().parent / "hostside"
INTERPRETER = "/usr/bin/env python3"
# sys.path[0] is the archive; made absolute so a detached job (it changes to /) still finds it.
MAIN = (f"import os, sys\n"
        f"sys.path[0] = os.path.abspath(sys.path[0])\n"
        f"from {APP_PACKAGE}.cli import run\n"
        f"run()\n")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


@dataclasses.dataclass(frozen=True)
class Tool:
    path: Path | None     # the .pyz in the controller's cache (None when it could not be written)
    data: bytes           # its bytes: what is uploaded
    sha256: str           # of data: what the host's copy is compared with


def sources(source: Path = SOURCE) -> list[tuple[str, bytes]]:
    """(archive name, bytes) of every module of the package, sorted by name."""
    files = [(f"{APP_PACKAGE}/{p.name}", p.read_bytes()) for p in sorted(source.glob("*.py"))]
    return files + [("__main__.py", MAIN.encode())]


def app_bytes(files: list[tuple[str, bytes]]) -> bytes:
    """The zip application's bytes: a deterministic zip, then zipapp adds the interpreter line."""
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as z:
        for name, data in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.create_system = 3  # unix, whatever the controller's OS
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    raw.seek(0)
    out = io.BytesIO()
    zipapp.create_archive(raw, out, interpreter=INTERPRETER)
    return out.getvalue()


def cache_dir() -> Path:
    return hostbundle.cache_dir().parent / "weights-tool"


_MEMO: dict[tuple, Tool] = {}


def build(directory: Path | None = None, source: Path = SOURCE) -> Tool:
    """The tool for the current sources: read from the cache when built before, else built
    and cached. A cache that cannot be written costs nothing but the cache."""
    files = sources(source)
    h = hashlib.sha256(f"glmfleet-weights-tool/{APP_FORMAT}".encode())
    for name, data in files:
        h.update(b"\0%s\0%d\0" % (name.encode(), len(data)) + data)
    key = h.hexdigest()[:24]
    memo_key = (key, str(directory))
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    directory = directory or cache_dir()
    path = directory / f"{key}.pyz"
    try:
        data = path.read_bytes()
    except OSError:
        data = app_bytes(files)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".build-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # never a half-written tool under the final name
        except OSError:
            path = None
    tool = Tool(path, data, hashlib.sha256(data).hexdigest())
    _MEMO[memo_key] = tool
    return tool
