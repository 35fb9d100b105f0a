"""The Python packages `weights.py download` needs on a host, shipped from the controller.

Hosts may have no route to PyPI, and a deploy must not depend on one anyway. The download
needs huggingface_hub and its dependencies; the controller already has exactly the pinned
versions (it reads the manifest with them), so we take them from the controller's own
environment: every file each distribution's RECORD lists under site-packages, dist-info
included (huggingface_hub asks importlib.metadata for versions), compiled parts left out.
They are packed into one deterministic tar.gz (same packages -> same bytes -> same digest,
so the upload is idempotent by digest) which the host unpacks into a private directory
used through PYTHONPATH only for weights.py: the host's own site-packages are untouched.

Left out, because they are compiled for one platform and Python:
- hf_xet (Xet transfers). The Hub client then downloads over plain HTTP(S); the deploy also
  sets HF_HUB_DISABLE_XET=1. To ship it, give a wheel built for the hosts (platform, libc,
  Python ABI) in the setting weights_xet_wheel: its files are added as they are.
- PyYAML's optional C accelerator (yaml/_yaml*.so): PyYAML falls back to pure Python.
A host's Python that cannot import the result (too old for a package, say) fails the
install step with the import error; nothing is half-installed.

Controller-side cache: $GLMFLEET_CACHE or $XDG_CACHE_HOME/glmfleet or ~/.cache/glmfleet,
file hostbundle/<key>.tar.gz, where the key covers the bundle format, the distribution
versions and the xet wheel's digest: a version change builds a new bundle.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Iterable

BUNDLE_FORMAT = 1
ROOTS = ("huggingface_hub",)
# Compiled distributions that cannot be taken from the controller's environment (see above).
SKIP = frozenset({"hf-xet"})
BINARY_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")
META_NAME = "glmfleet-bundle.json"
# Import test run on the host after unpacking: the names the download path loads.
IMPORT_CHECK = "import huggingface_hub, httpx2; huggingface_hub.hf_hub_download; huggingface_hub.HfApi"


class BundleError(Exception):
    """The bundle cannot be built on this controller; str() says what to fix."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    path: Path            # the tar.gz on the controller
    sha256: str           # of the tar.gz: names the install dir on the host
    packages: dict        # distribution name -> version
    xet: bool             # hf_xet included (from weights_xet_wheel)

    @property
    def digest(self) -> str:
        """Short id used in host paths (enough to tell bundles apart)."""
        return self.sha256[:16]


def normalize(name: str) -> str:
    """PEP 503 name: 'Typing_Extensions' -> 'typing-extensions'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: Iterable[str] = ROOTS, skip: Iterable[str] = SKIP) -> list[metadata.Distribution]:
    """The installed distributions `roots` need at run time (no extras), per their metadata
    and this Python's markers, minus `skip`. Raises BundleError for a missing requirement:
    the controller's environment is incomplete, so a bundle made from it would be too."""
    from packaging.requirements import Requirement

    skip = {normalize(s) for s in skip}
    todo, seen, out = [normalize(r) for r in roots], set(), []
    while todo:
        name = todo.pop()
        if name in seen or name in skip:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise BundleError(f"the controller's Python environment lacks {name!r}, needed by "
                              f"{', '.join(ROOTS)} on the hosts: reinstall requirements.txt "
                              "(./deploy.sh does it)") from None
        out.append(dist)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(normalize(req.name))
    return sorted(out, key=lambda d: normalize(d.metadata["Name"]))


def wanted(relpath: str) -> bool:
    """Files of an installed distribution that belong in the bundle."""
    parts = relpath.split("/")
    if relpath.startswith("/") or ".." in parts:  # console scripts in bin/, data outside
        return False
    if "__pycache__" in parts or relpath.endswith((".pyc", ".pyo")):
        return False  # the host compiles its own
    return not relpath.endswith(BINARY_SUFFIXES)


def dist_files(dist: metadata.Distribution) -> list[tuple[str, Path]]:
    """(path inside the bundle, file on the controller) for one distribution."""
    out = []
    for p in dist.files or []:
        rel = str(p).replace(os.sep, "/")
        if not wanted(rel):
            continue
        full = Path(dist.locate_file(p))
        if full.is_file():
            out.append((rel, full))
    if not out:
        raise BundleError(f"{dist.metadata['Name']} has no files listed in its RECORD: "
                          "reinstall it with pip")
    return out


def check_wheel_name(wheel: Path) -> None:
    if not wheel.name.startswith("hf_xet-") or wheel.suffix != ".whl":
        raise BundleError(f"weights_xet_wheel {str(wheel)!r} is not an hf_xet wheel "
                          "(hf_xet-<version>-<tags>.whl)")


def wheel_members(wheel: Path) -> list[tuple[str, bytes]]:
    """(path, content) of every file in a wheel; a wheel is unpacked into site-packages as is."""
    check_wheel_name(wheel)
    try:
        with zipfile.ZipFile(wheel) as z:
            out = []
            for info in z.infolist():
                name = info.filename
                if info.is_dir():
                    continue
                if name.startswith("/") or ".." in name.split("/"):
                    raise BundleError(f"weights_xet_wheel {wheel} has an unsafe path {name!r}")
                out.append((name, z.read(info)))
            return out
    except (OSError, zipfile.BadZipFile) as e:
        raise BundleError(f"weights_xet_wheel {str(wheel)!r} cannot be read: {e}") from None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("GLMFLEET_CACHE")
    if base:
        return Path(base) / "hostbundle"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "glmfleet" / "hostbundle"


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_tarball(out, files: list[tuple[str, bytes | Path]]) -> None:
    """A deterministic tar.gz: sorted names, fixed owner/mtime, gzip header without a date."""
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, src in sorted(files, key=lambda f: f[0]):
                data = src.read_bytes() if isinstance(src, Path) else src
                _add(tar, name, data)


_MEMO: dict[tuple, Bundle] = {}


def build(xet_wheel: str | None = None, directory: Path | None = None) -> Bundle:
    """The bundle for this controller's environment (built once, then read from the cache)."""
    dists = closure()
    packages = {d.metadata["Name"]: d.version for d in dists}
    wheel = Path(os.path.expanduser(xet_wheel)) if xet_wheel else None
    if wheel is not None:
        check_wheel_name(wheel)
        if not wheel.is_file():
            raise BundleError(f"weights_xet_wheel {xet_wheel!r} does not exist on the controller")
    wheel_sha = _file_digest(wheel) if wheel else None
    key_src = json.dumps({"format": BUNDLE_FORMAT, "packages": packages, "xet_wheel": wheel_sha},
                         sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    memo_key = (key, str(directory))
    if memo_key in _MEMO and _MEMO[memo_key].path.is_file():
        return _MEMO[memo_key]
    directory = directory or cache_dir()
    path = directory / f"{key}.tar.gz"
    if not path.is_file():
        files: list[tuple[str, bytes | Path]] = []
        for d in dists:
            files.extend(dist_files(d))
        if wheel is not None:
            files.extend(wheel_members(wheel))
        meta = {"format": BUNDLE_FORMAT, "packages": packages, "xet": wheel is not None,
                "xet_wheel": wheel.name if wheel else None}
        files.append((META_NAME, json.dumps(meta, indent=1, sort_keys=True).encode()))
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".build-")
        try:
            with os.fdopen(fd, "wb") as f:
                write_tarball(f, files)
            os.replace(tmp, path)  # never a half-written bundle under the final name
        except BaseException:
            os.unlink(tmp)
            raise
    bundle = Bundle(path, _file_digest(path), packages, wheel is not None)
    _MEMO[memo_key] = bundle
    return bundle
