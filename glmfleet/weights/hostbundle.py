"""The Python packages `weights.pyz download` needs on a host, chosen for THAT host's Python.

Hosts may have no route to PyPI, and a deploy must not depend on one anyway: the controller
picks wheels of the pinned huggingface_hub and hf-xet (the versions in requirements.txt,
read from the controller's own environment) and their dependencies for each distinct host
(CPython version, machine, glibc), packs them unpacked into one deterministic tar.gz (same
wheels -> same bytes -> same digest, so the upload is idempotent by digest) and the host
unpacks it into a private directory used through PYTHONPATH only for weights.pyz: the
host's own site-packages are untouched.

How the wheels are chosen (resolve()):
1. `pip download --no-deps` of huggingface_hub for the host's tags (--python-version,
   --platform manylinux_2_N_<machine> for every N the host's glibc covers, --abi).
2. Its Requires-Dist with the markers evaluated for the HOST (pip would evaluate them for
   the controller's Python: e.g. `tomli; python_version < "3.11"` would be left out for a
   3.10 host) are handed to `pip download` with dependencies, pip's resolver choosing.
3. Every chosen wheel's Requires-Dist is evaluated for the host again; whatever is missing
   (anyio's `exceptiongroup` below 3.11, say) is added to step 2's list and pip runs again,
   until nothing is missing. Then every wheel is checked against the host: Requires-Python,
   platform tags, and each requirement's version. Wheels pip took only for the controller's
   markers are not shipped.
hf_xet (Xet transfers) is shipped wherever a wheel fits the host, so Xet is on by default;
where none does, the bundle goes without it, downloads use plain HTTP(S)
(HF_HUB_DISABLE_XET=1) and the stage says why.

Where the wheels come from: the package index pip is configured for (pip.conf, PIP_INDEX_URL
...), or, with the setting weights_wheel_dir, only that local directory (air-gapped sites:
`python -m glmfleet.weights.hostbundle download` fills it on a connected machine). When
that fails, the controller's own installed packages are copied instead, but only when every
one of them fits the host (same Python minor version, compiled parts built for the host's
machine and glibc); otherwise the deploy refuses the host with both reasons.

Controller-side cache: $GLMFLEET_CACHE or $XDG_CACHE_HOME/glmfleet or ~/.cache/glmfleet:
hostbundle/wheels/<host key>/ (the resolved wheels and resolution.json; a second deploy
asks no index) and hostbundle/<key>.tar.gz (the bundle, keyed by its contents).
"""

from __future__ import annotations

import dataclasses
import email.parser
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Iterable, Mapping

from packaging import tags as ptags
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename

BUNDLE_FORMAT = 2
HUB, XET = "huggingface-hub", "hf-xet"
META_NAME = "glmfleet-bundle.json"
RESOLUTION_NAME = "resolution.json"
# Import test run on the host after unpacking: the names the download path loads.
IMPORT_CHECK = "import huggingface_hub, httpx2; huggingface_hub.hf_hub_download; huggingface_hub.HfApi"
# Oldest glibc a manylinux tag names (manylinux1); legacy aliases pip and PyPI still use.
_MIN_GLIBC_MINOR = 5
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


class BundleError(Exception):
    """No package set fits the host; str() says why and what to do."""


class ResolveError(Exception):
    """The wheels for a host could not be fetched or do not fit; str() says why."""


def normalize(name: str) -> str:
    """PEP 503 name: 'Typing_Extensions' -> 'typing-extensions'."""
    return str(canonicalize_name(name))


def pins() -> dict[str, str]:
    """The pinned versions of the two roots: the controller's own (requirements.txt)."""
    try:
        return {HUB: metadata.version(HUB), XET: metadata.version(XET)}
    except metadata.PackageNotFoundError as e:
        raise BundleError(f"the controller's Python environment lacks {e.name or e}: reinstall "
                          "requirements.txt (./deploy.sh does it)") from None


def hub_requires_python() -> str:
    """Requires-Python of the pinned huggingface_hub, as installed on the controller."""
    return metadata.metadata(HUB).get("Requires-Python") or ""


# ---- the host ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    """What decides which wheels a host can use."""
    python: str                  # full version of the host's python3, e.g. "3.11.2"
    machine: str                 # uname -m, e.g. "x86_64", "aarch64"
    glibc: str | None            # e.g. "2.36"; None: no glibc (musl) or unknown
    implementation: str = "cpython"

    @classmethod
    def from_facts(cls, facts: Mapping) -> "Target":
        """From the weights stage's look at the host (python, machine, glibc, implementation,
        as its python3 reports them)."""
        py = facts.get("python")
        if not py:
            raise BundleError("the host's python3 did not report its version")
        return cls(str(py), str(facts.get("machine") or "unknown"), facts.get("glibc") or None,
                   str(facts.get("implementation") or "cpython"))

    @property
    def version(self) -> tuple[int, int]:
        major, minor = self.python.split(".")[:2]
        return int(major), int(minor)

    @property
    def minor(self) -> str:
        return "%d.%d" % self.version

    @property
    def cp(self) -> str:
        return "cp%d%d" % self.version

    def describe(self) -> str:
        libc = f"glibc {self.glibc}" if self.glibc else "no glibc"
        impl = "CPython" if self.implementation == "cpython" else self.implementation
        return f"{impl} {self.python} on {self.machine} ({libc})"

    def key(self) -> str:
        """Cache key: everything that picks wheels (not the patch level of Python)."""
        return f"{self.cp}-{self.machine}-glibc{self.glibc or 'none'}"

    def platforms(self) -> list[str]:
        """Platform tags the host accepts, best first (as packaging.tags does on the host)."""
        arch = re.sub(r"[^\w]", "_", self.machine)
        out = []
        if self.glibc and re.fullmatch(r"2\.\d+", self.glibc):
            for minor in range(int(self.glibc.split(".")[1]), _MIN_GLIBC_MINOR - 1, -1):
                out.append(f"manylinux_2_{minor}_{arch}")
                if minor in _LEGACY_MANYLINUX and arch in ("x86_64", "i686"):
                    out.append(f"{_LEGACY_MANYLINUX[minor]}_{arch}")
                elif minor == 17 and arch in ("aarch64", "ppc64le", "s390x", "armv7l"):
                    out.append(f"manylinux2014_{arch}")
        return out + [f"linux_{arch}"]

    def tags(self) -> frozenset:
        py, plats = self.version, self.platforms()
        return frozenset([*ptags.cpython_tags(py, abis=[self.cp], platforms=plats),
                          *ptags.compatible_tags(py, interpreter=self.cp, platforms=plats)])

    def markers(self) -> dict[str, str]:
        """The environment markers as python3 on the host would report them."""
        return {"implementation_name": self.implementation, "implementation_version": self.python,
                "os_name": "posix", "platform_machine": self.machine, "platform_release": "",
                "platform_system": "Linux", "platform_version": "",
                "platform_python_implementation": "CPython" if self.implementation == "cpython"
                else self.implementation, "python_full_version": self.python,
                "python_version": self.minor, "sys_platform": "linux", "extra": ""}


# ---- one distribution: a wheel file or an installed distribution --------------------------------

@dataclasses.dataclass(frozen=True)
class Dist:
    name: str                    # normalized
    version: str
    requires_python: str
    requires: tuple[str, ...]    # Requires-Dist lines
    tags: frozenset | None       # None: unknown (an installed dist without a WHEEL file)
    source: str                  # wheel file name or "installed"

    def fit(self, target: Target) -> str | None:
        """Why this distribution cannot run on the host, or None when it can."""
        if self.requires_python and not SpecifierSet(self.requires_python).contains(
                target.python, prereleases=True):
            return f"{self.name} {self.version} requires Python {self.requires_python}"
        if self.tags is not None and not (self.tags & target.tags()):
            shown = ", ".join(sorted(str(t) for t in self.tags)[:3])
            return f"{self.name} {self.version} is built for {shown}"
        return None


def read_wheel(path: Path) -> Dist:
    """Name, version, Requires-Python, Requires-Dist (from METADATA) and tags (from the name)."""
    try:
        name, version, _build, wtags = parse_wheel_filename(path.name)
        with zipfile.ZipFile(path) as z:
            meta = next(n for n in z.namelist()
                        if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            msg = email.parser.BytesParser().parsebytes(z.read(meta), headersonly=True)
    except (OSError, ValueError, StopIteration, zipfile.BadZipFile) as e:
        raise ResolveError(f"{path.name} is not a readable wheel ({type(e).__name__}: {e})") from None
    return Dist(normalize(name), str(version), msg.get("Requires-Python") or "",
                tuple(msg.get_all("Requires-Dist") or ()), frozenset(wtags), path.name)


def read_installed(dist: metadata.Distribution) -> Dist:
    wheel = dist.read_text("WHEEL") or ""
    wtags = frozenset(t for line in wheel.splitlines() if line.startswith("Tag:")
                      for t in ptags.parse_tag(line.split(":", 1)[1].strip()))
    return Dist(normalize(dist.metadata["Name"]), dist.version,
                dist.metadata.get("Requires-Python") or "", tuple(dist.requires or ()),
                wtags or None, "installed")


def closure(dists: Mapping[str, Dist], roots: Iterable[str], target: Target,
            optional: Iterable[str] = ()) -> tuple[list[str], list[Requirement], list[str]]:
    """Walk Requires-Dist from `roots` with the markers evaluated for the host (no extras).

    Returns (names needed and present, requirements not present, problems: a present
    version that a requirement excludes). `optional` names are skipped when absent."""
    env, optional = target.markers(), {normalize(o) for o in optional}
    todo, seen, needed, missing, problems = [normalize(r) for r in roots], set(), [], [], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        needed.append(name)
        for text in dists[name].requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = normalize(req.name)
            if dep not in dists:
                if dep not in optional and all(normalize(m.name) != dep for m in missing):
                    missing.append(req)
                continue
            if not req.specifier.contains(dists[dep].version, prereleases=True):
                problems.append(f"{name} needs {req.name}{req.specifier}, got {dists[dep].version}")
            todo.append(dep)
    return sorted(needed), missing, problems


# ---- resolving with pip --------------------------------------------------------------------------

def pip_command(target: Target, requirements: Iterable[str], dest: Path,
                wheel_dir: str | None = None, deps: bool = True) -> list[str]:
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input",
            "-q", "--only-binary=:all:", "--python-version", target.minor,
            "--implementation", "cp", "--abi", target.cp, "--abi", "abi3", "--abi", "none",
            "--retries", "2", "--timeout", "20", "-d", str(dest)]
    for plat in target.platforms():
        argv += ["--platform", plat]
    if wheel_dir:  # only that directory: no index, no pip.conf or PIP_* settings
        argv += ["--isolated", "--no-index", "--find-links", wheel_dir]
    if not deps:
        argv.append("--no-deps")
    return argv + list(requirements)


def _pip(argv: list[str]) -> None:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=900)
    except subprocess.TimeoutExpired:
        raise ResolveError("pip download did not finish in 15 minutes") from None
    if p.returncode:
        errors = [ln[len("ERROR: "):] for ln in p.stderr.splitlines() if ln.startswith("ERROR: ")]
        raise ResolveError(errors[-1] if errors else (p.stderr.strip().splitlines() or
                                                      [f"pip exited with status {p.returncode}"])[-1])


def _wheels(d: Path) -> dict[str, tuple[Dist, Path]]:
    return {w.name: (w, p) for p in sorted(d.glob("*.whl")) for w in [read_wheel(p)]}


def _pip_resolve(target: Target, pinned: Mapping[str, str], wheel_dir: str | None,
                 work: Path) -> tuple[dict[str, tuple[Dist, Path]], str | None]:
    """(name -> (Dist, wheel path), why hf_xet is left out or None) for the host."""
    hub_dir = work / "root"
    _pip(pip_command(target, [f"{HUB}=={pinned[HUB]}"], hub_dir, wheel_dir, deps=False))
    hub = _wheels(hub_dir)[HUB]
    reqs = [f"{XET}=={pinned[XET]}" if normalize(r.name) == XET else str(r)
              for r in direct(hub[0], target)]
    no_xet = None
    if not any(normalize(Requirement(w).name) == XET for w in reqs):
        no_xet = f"huggingface_hub does not use hf_xet on {target.machine}"
    for attempt in range(6):
        deps_dir = work / f"deps{attempt}"
        try:
            _pip(pip_command(target, reqs, deps_dir, wheel_dir))
        except ResolveError as e:
            xet = [w for w in reqs if normalize(Requirement(w).name) == XET]
            if not xet:
                raise
            try:  # is it only hf_xet that has no wheel for the host?
                _pip(pip_command(target, xet, work / f"xet{attempt}", wheel_dir, deps=False))
            except ResolveError as xe:
                reqs = [w for w in reqs if w not in xet]
                no_xet = f"no hf_xet {pinned[XET]} wheel fits {target.describe()} ({xe})"
                continue
            raise e from None
        found = {**_wheels(deps_dir), HUB: hub}
        dists = {n: d for n, (d, _p) in found.items()}
        needed, missing, problems = closure(dists, [HUB], target, optional=[XET] if no_xet else [])
        if problems:
            raise ResolveError("; ".join(problems))
        if not missing:
            return {n: found[n] for n in needed}, no_xet
        reqs += [_markerless(m) for m in missing]
    raise ResolveError("the dependencies did not settle after 6 rounds of pip download")


def _markerless(req: Requirement) -> str:
    req = Requirement(str(req))
    req.marker = None
    return str(req)


def direct(dist: Dist, target: Target) -> list[Requirement]:
    """A distribution's requirements on the host (markers evaluated there, then dropped)."""
    env, out = target.markers(), []
    for text in dist.requires:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            out.append(req)
    return out


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Resolution:
    wheels: tuple[Path, ...]     # in the controller cache
    packages: dict               # name -> version
    xet: bool
    note: str                    # why hf_xet is left out ("" when it is in)


def resolve(target: Target, wheel_dir: str | None = None, cache: Path | None = None) -> Resolution:
    """The wheels for the host, from the cache or with pip (see the module docstring).
    Raises ResolveError when pip cannot fetch them or they do not fit."""
    if target.implementation != "cpython":
        raise ResolveError(f"only CPython hosts are supported, this one runs {target.describe()}")
    pinned = pins()
    source = f"dir:{os.path.abspath(os.path.expanduser(wheel_dir))}" if wheel_dir else "index"
    tag = hashlib.sha256(json.dumps([pinned, source], sort_keys=True).encode()).hexdigest()[:12]
    where = (cache or cache_dir()) / "wheels" / f"{target.key()}-{tag}"
    record = where / RESOLUTION_NAME
    try:
        doc = json.loads(record.read_text())
        paths = tuple(where / w for w in doc["wheels"])
        if all(_digest(p) == doc["sha256"][p.name] for p in paths):
            return Resolution(paths, doc["packages"], doc["xet"], doc["note"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if wheel_dir and not os.path.isdir(os.path.expanduser(wheel_dir)):
        raise ResolveError(f"weights_wheel_dir {wheel_dir!r} is not a directory on the controller")
    where.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=where.parent, prefix=".resolve-"))
    try:
        chosen, no_xet = _pip_resolve(target, pinned,
                                      os.path.expanduser(wheel_dir) if wheel_dir else None, work)
        unfit = [why for d, _p in chosen.values() for why in [d.fit(target)] if why]
        if unfit:
            raise ResolveError("; ".join(unfit))
        final = work / "final"
        final.mkdir()
        for _d, p in chosen.values():
            shutil.copy2(p, final / p.name)
        doc = {"target": dataclasses.asdict(target), "pins": pinned, "source": source,
               "packages": {d.name: d.version for d, _p in chosen.values()},
               "wheels": sorted(p.name for _d, p in chosen.values()),
               "sha256": {p.name: _digest(p) for _d, p in chosen.values()},
               "xet": no_xet is None, "note": no_xet or ""}
        (final / RESOLUTION_NAME).write_text(json.dumps(doc, indent=1, sort_keys=True))
        shutil.rmtree(where, ignore_errors=True)  # a stale or broken entry
        try:
            os.replace(final, where)  # complete or absent: never half a cache entry
        except OSError:
            if not record.is_file():  # else another deploy placed the same entry meanwhile
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Resolution(tuple(where / w for w in doc["wheels"]), doc["packages"], doc["xet"],
                      doc["note"])


# ---- the controller's own environment (no index reachable) ------------------------------------

def installed_for(target: Target) -> tuple[list[metadata.Distribution], str]:
    """The controller's installed distributions huggingface_hub needs on the host (markers
    evaluated for the host) and why hf_xet is left out ("" when it is in). Raises
    ResolveError when they do not fit the host."""
    dists: dict[str, Dist] = {}
    by_name: dict[str, metadata.Distribution] = {}
    for d in metadata.distributions():
        name = normalize(d.metadata["Name"] or "")
        if name and name not in by_name:  # the first on sys.path wins, as at import time
            by_name[name] = d
            dists[name] = read_installed(d)
    if target.minor != "%d.%d" % sys.version_info[:2]:
        raise ResolveError(f"they were installed for Python {sys.version_info[0]}."
                           f"{sys.version_info[1]}, the host runs {target.minor}")
    needed, missing, problems = closure(dists, [HUB], target, optional=[XET])
    note = ""
    if XET not in {normalize(r.name) for r in direct(dists[HUB], target)}:
        note = f"huggingface_hub does not use hf_xet on {target.machine}"
    elif XET not in needed:
        note = "the controller's environment has no hf_xet"
    elif dists[XET].fit(target):
        note = f"the controller's hf_xet does not fit: {dists[XET].fit(target)}"
        needed.remove(XET)
    unfit = [why for n in needed for why in [dists[n].fit(target)] if why]
    unfit += [f"{m} is not installed" for m in missing] + problems
    if unfit:
        raise ResolveError("; ".join(unfit))
    return [by_name[n] for n in needed], note


def wanted(relpath: str) -> bool:
    """Files of an installed distribution that belong in the bundle."""
    parts = relpath.split("/")
    if relpath.startswith("/") or ".." in parts:  # console scripts in bin/, data outside
        return False
    return "__pycache__" not in parts and not relpath.endswith((".pyc", ".pyo"))


def dist_files(dist: metadata.Distribution) -> list[tuple[str, Path]]:
    """(path inside the bundle, file on the controller) for one installed distribution."""
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


def wheel_members(wheel: Path) -> list[tuple[str, bytes]]:
    """(path, content) of a wheel's files as installed into site-packages: the root as is,
    <name>.data/purelib and platlib merged into it, other .data (scripts, headers) left out."""
    try:
        with zipfile.ZipFile(wheel) as z:
            out = []
            for info in z.infolist():
                name = info.filename
                if info.is_dir():
                    continue
                if name.startswith("/") or ".." in name.split("/"):
                    raise BundleError(f"wheel {wheel.name} has an unsafe path {name!r}")
                parts = name.split("/")
                if parts[0].endswith(".data"):
                    if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                        continue
                    name = "/".join(parts[2:])
                if wanted(name):
                    out.append((name, z.read(info)))
            return out
    except (OSError, zipfile.BadZipFile) as e:
        raise BundleError(f"wheel {str(wheel)!r} cannot be read: {e}") from None


# ---- the bundle -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Bundle:
    path: Path            # the tar.gz on the controller
    sha256: str           # of the tar.gz: names the install dir on the host
    packages: dict        # distribution name -> version
    xet: bool             # hf_xet included
    note: str             # why hf_xet is left out ("" when it is in)
    source: str           # "index", "weights_wheel_dir" or "controller environment"

    @property
    def digest(self) -> str:
        """Short id used in host paths (enough to tell bundles apart)."""
        return self.sha256[:16]

    @property
    def import_check(self) -> str:
        return IMPORT_CHECK + ("; import hf_xet" if self.xet else "")


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


def build(target: Target, wheel_dir: str | None = None, directory: Path | None = None) -> Bundle:
    """The bundle for one host (built once per host kind, then read from the cache)."""
    memo_key = (target, wheel_dir, str(directory))
    if memo_key in _MEMO and _MEMO[memo_key].path.is_file():
        return _MEMO[memo_key]
    directory = directory or cache_dir()
    files: list[tuple[str, bytes | Path]] = []
    try:
        res = resolve(target, wheel_dir, directory)
        packages, xet, note = res.packages, res.xet, res.note
        source = "weights_wheel_dir" if wheel_dir else "index"
        for w in res.wheels:
            files.extend(wheel_members(w))
    except ResolveError as e:
        where = f"weights_wheel_dir {wheel_dir}" if wheel_dir else "the package index"
        try:
            dists, note = installed_for(target)
        except ResolveError as own:
            raise BundleError(
                f"no Python packages for the download fit this host's {target.describe()}: "
                f"from {where}: {e}; the controller's own packages do not fit either: {own}. "
                "Let the controller reach a package index, or set weights_wheel_dir to a "
                "directory holding the wheels for this host (README: air-gapped sites)") from None
        packages = {normalize(d.metadata["Name"]): d.version for d in dists}
        xet, source = not note, "controller environment"
        for d in dists:
            files.extend(dist_files(d))
    meta = {"format": BUNDLE_FORMAT, "packages": packages, "xet": xet, "note": note,
            "target": target.key()}
    files.append((META_NAME, json.dumps(meta, indent=1, sort_keys=True).encode()))
    key = hashlib.sha256(json.dumps(
        sorted((n, hashlib.sha256(src.read_bytes() if isinstance(src, Path) else src).hexdigest())
               for n, src in files)).encode()).hexdigest()[:24]
    path = directory / f"{key}.tar.gz"
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".build-")
        try:
            with os.fdopen(fd, "wb") as f:
                write_tarball(f, files)
            os.replace(tmp, path)  # never a half-written bundle under the final name
        except BaseException:
            os.unlink(tmp)
            raise
    bundle = Bundle(path, _digest(path), packages, xet, note, source)
    _MEMO[memo_key] = bundle
    return bundle


# ---- air-gapped sites: fill a wheel directory on a connected machine --------------------------

def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m glmfleet.weights.hostbundle",
        description="Download the wheels the weights stage ships to hosts of one kind into a "
                    "directory (for weights_wheel_dir on an air-gapped controller). Run it on a "
                    "machine that reaches a package index, once per host kind.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="resolve for one host kind and copy the wheels to DEST")
    d.add_argument("--python", required=True, help="the hosts' python3 version, e.g. 3.12.3")
    d.add_argument("--machine", default="x86_64", help="uname -m of the hosts (default x86_64)")
    d.add_argument("--glibc", required=True, help="the hosts' glibc, e.g. 2.39 (getconf GNU_LIBC_VERSION)")
    d.add_argument("dest", help="directory to copy the wheels into (created)")
    a = p.parse_args(argv)
    target = Target(a.python, a.machine, a.glibc)
    try:
        res = resolve(target)
        os.makedirs(a.dest, exist_ok=True)
        for w in res.wheels:
            shutil.copy2(w, os.path.join(a.dest, w.name))
    except (ResolveError, BundleError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for w in res.wheels:
        print(w.name)
    if res.note:
        print(f"note: {res.note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
