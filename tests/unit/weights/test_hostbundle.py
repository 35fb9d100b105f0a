"""The Python packages shipped to hosts for the download (glmfleet/weights/hostbundle.py),
resolved for each host's own Python and platform with pip and PyPI (real: this machine and
CI reach PyPI). Downloaded wheels are kept under $GLMFLEET_TEST_CACHE (default
/tmp/glmfleet-test-cache), so a second run asks no index.

Every expectation is read from the chosen wheels themselves (Requires-Python, Requires-Dist
with markers evaluated here for the target, platform tags from the file names), with the
tag and marker logic of `packaging` used directly, not through the code under test."""

from __future__ import annotations

import email.parser
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging import tags as ptags
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from glmfleet.weights import hostbundle as hb  # noqa: E402

CACHE = Path(os.environ.get("GLMFLEET_TEST_CACHE", "/tmp/glmfleet-test-cache")) / "hostbundle"
# (python3 version, glibc) of real distributions: Ubuntu 22.04, Debian 12, Debian 13.
PYTHONS = [("3.10.12", "2.35"), ("3.11.2", "2.36"), ("3.13.5", "2.41")]
MACHINES = ["x86_64", "aarch64"]


def wheel_metadata(path: Path):
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return email.parser.BytesParser().parsebytes(z.read(name), headersonly=True)


def host_env(python: str, machine: str) -> dict:
    """Markers as python3 on a Linux CPython host of that version and machine reports them."""
    return {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python,
            "platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux",
            "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "implementation_version": python,
            "extra": ""}


def glibc_of(tag) -> tuple[int, int] | None:
    """manylinux_2_17_x86_64 / manylinux2014_x86_64 -> (2, 17)."""
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    for prefix, version in legacy.items():
        if tag.platform.startswith(prefix + "_"):
            return version
    if tag.platform.startswith("manylinux_"):
        major, minor = tag.platform.split("_")[1:3]
        return int(major), int(minor)
    return None


def runs_on(tag, python: str, machine: str, glibc: str) -> bool:
    """Would CPython `python` on `machine` with `glibc` install a wheel with this tag?"""
    major, minor = (int(x) for x in python.split(".")[:2])
    if tag.platform != "any":
        need = glibc_of(tag)
        if not tag.platform.endswith("_" + machine) or need is None:
            return False
        if need > tuple(int(x) for x in glibc.split(".")):
            return False
    if tag.abi == "none":
        return tag.interpreter in (f"py{major}", f"py{major}{minor}", f"cp{major}{minor}")
    if tag.abi == "abi3":
        return tag.interpreter.startswith("cp3") and int(tag.interpreter[3:]) <= minor
    return tag.interpreter == tag.abi == f"cp{major}{minor}"


@pytest.fixture(scope="module", params=[(p, g, m) for p, g in PYTHONS for m in MACHINES],
                ids=lambda v: f"py{v[0]}-{v[2]}")
def resolved(request):
    python, glibc, machine = request.param
    target = hb.Target(python, machine, glibc)
    return target, hb.resolve(target, cache=CACHE)


def test_every_wheel_fits_the_host(resolved):
    target, res = resolved
    for wheel in res.wheels:
        meta = wheel_metadata(wheel)
        requires = meta.get("Requires-Python") or ""
        assert SpecifierSet(requires).contains(target.python), (wheel.name, requires)
        wtags = parse_wheel_filename(wheel.name)[3]
        assert any(runs_on(t, target.python, target.machine, target.glibc) for t in wtags), wheel.name


def test_every_dependency_for_the_host_is_there(resolved):
    """From huggingface_hub down, every Requires-Dist whose marker holds on the host is met
    by a shipped wheel; nothing shipped is left unused."""
    target, res = resolved
    env = host_env(target.python, target.machine)
    by_name = {}
    for wheel in res.wheels:
        name, version, _b, _t = parse_wheel_filename(wheel.name)
        by_name[canonicalize_name(name)] = (version, wheel_metadata(wheel))
    reached, todo, gated = set(), ["huggingface-hub"], set()
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        for text in by_name[name][1].get_all("Requires-Dist") or []:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            assert dep in by_name, f"{name} needs {text!r} on {target.describe()}"
            assert req.specifier.contains(by_name[dep][0], prereleases=True), (name, text)
            if req.marker and "python_version" in str(req.marker):
                gated.add(dep)
            todo.append(dep)
    assert reached == set(by_name)
    assert res.packages == {n: str(v) for n, (v, _m) in by_name.items()}
    # what pip, evaluating markers for the controller's Python, would have left out
    if target.version < (3, 11):
        assert {"tomli", "exceptiongroup"} <= gated
    # hf_xet goes wherever huggingface_hub asks for it and a wheel exists: here, always
    assert res.xet and "hf-xet" in by_name and res.note == ""


def test_python_310_gets_releases_that_still_support_it():
    """The controller (3.11+) has httpx2/httpcore2/filelock releases needing >= 3.11; the
    3.10 host gets older ones, as pip's resolver picks for that Python."""
    res = hb.resolve(hb.Target("3.10.12", "x86_64", "2.35"), cache=CACHE)
    from importlib import metadata
    for name in ("httpx2", "filelock"):
        here = metadata.metadata(name).get("Requires-Python") or ""
        if not SpecifierSet(here).contains("3.10.12"):
            assert res.packages[name] != metadata.version(name)


def test_no_hf_xet_wheel_for_the_host_means_plain_http_and_says_why():
    """aarch64 hf_xet wheels need glibc 2.28; an older glibc gets none (the rest fits)."""
    target = hb.Target("3.11.4", "aarch64", "2.26")
    res = hb.resolve(target, cache=CACHE)
    assert not res.xet and "hf-xet" not in res.packages
    assert "no hf_xet" in res.note and "glibc 2.26" in res.note
    assert "huggingface-hub" in res.packages


def test_second_resolve_reads_the_cache_without_pip(monkeypatch):
    target = hb.Target("3.13.5", "x86_64", "2.41")
    first = hb.resolve(target, cache=CACHE)
    monkeypatch.setattr(hb, "_pip", lambda argv: pytest.fail("pip ran again"))
    assert hb.resolve(target, cache=CACHE) == first


# ---- the bundle, imported for real by this controller's Python (a host of its kind) --------

def this_machine() -> hb.Target:
    return hb.Target(platform.python_version(), platform.machine(), platform.libc_ver()[1])


def test_bundle_is_deterministic_and_imports_alone_with_xet(tmp_path, monkeypatch):
    monkeypatch.setattr(hb, "_MEMO", {})
    b = hb.build(this_machine(), directory=CACHE / "bundles")
    # The same wheels (their resolution copied, so no index is asked: a release on the index
    # since the cache was filled would change the wheels, not the packing) give the same bytes.
    shutil.copytree(CACHE / "bundles" / "wheels", tmp_path / "fresh" / "wheels")
    again = hb.build(this_machine(), directory=tmp_path / "fresh")
    assert again.sha256 == b.sha256 and again.path != b.path and b.source == "index"
    with tarfile.open(b.path) as t:
        meta = json.load(t.extractfile(hb.META_NAME))
        t.extractall(tmp_path / "lib", filter="data")
    assert meta["xet"] is True and meta["packages"]["huggingface-hub"] == "2.4.0"
    assert b.import_check.endswith("import hf_xet")
    # -S: no site-packages, only the bundle, as on a host
    code = (f"import sys; sys.path.insert(0, {str(tmp_path / 'lib')!r}); {b.import_check}; "
            "import huggingface_hub as h, hf_xet; print(h.__version__, h.__file__, hf_xet.__file__)")
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr
    version, hub, xet = r.stdout.split()
    assert version == "2.4.0" and hub.startswith(str(tmp_path / "lib"))
    assert xet.startswith(str(tmp_path / "lib"))


def test_air_gapped_wheel_dir_gives_the_same_wheels(tmp_path, monkeypatch):
    """`python -m glmfleet.weights.hostbundle download` fills a directory on a connected
    machine; weights_wheel_dir then resolves from it alone (pip --no-index)."""
    target = hb.Target("3.13.5", "aarch64", "2.41")
    monkeypatch.setenv("GLMFLEET_CACHE", str(CACHE.parent))  # reuse the downloaded wheels
    wheels = tmp_path / "wheels"
    assert hb.main(["download", "--python", target.python, "--machine", target.machine,
                    "--glibc", target.glibc, str(wheels)]) == 0
    offline = hb.resolve(target, wheel_dir=str(wheels), cache=tmp_path / "cache")
    online = hb.resolve(target, cache=CACHE)
    assert [w.name for w in offline.wheels] == [w.name for w in online.wheels]
    assert "--no-index" in hb.pip_command(target, ["x"], tmp_path, str(wheels))


def test_without_an_index_the_controller_packages_serve_a_host_like_it(tmp_path, monkeypatch):
    """An empty weights_wheel_dir stands for an index out of reach: a host with the
    controller's Python and platform gets the controller's own packages (hf_xet included);
    any other is refused, naming both reasons and what to do."""
    monkeypatch.setattr(hb, "_MEMO", {})
    empty = tmp_path / "empty"
    empty.mkdir()
    b = hb.build(this_machine(), wheel_dir=str(empty), directory=tmp_path / "c")
    assert b.source == "controller environment" and b.xet
    assert "huggingface-hub" in b.packages
    with pytest.raises(hb.BundleError) as e:
        hb.build(hb.Target("3.10.12", "x86_64", "2.35"), wheel_dir=str(empty),
                 directory=tmp_path / "c")
    msg = str(e.value)
    assert "CPython 3.10.12 on x86_64 (glibc 2.35)" in msg and "weights_wheel_dir" in msg
    assert "the host runs 3.10" in msg and "No matching distribution" in msg
    other = hb.Target(platform.python_version(), "aarch64", "2.36")
    with pytest.raises(hb.BundleError, match="hf_xet|pyyaml|built for"):
        hb.build(other, wheel_dir=str(empty), directory=tmp_path / "c")


# ---- pure parts --------------------------------------------------------------------------

def test_target_from_the_look_and_its_platforms():
    t = hb.Target.from_facts({"python": "3.12.3", "machine": "aarch64", "glibc": "2.39",
                              "implementation": "cpython"})
    assert t.key() == "cp312-aarch64-glibc2.39" and t.minor == "3.12"
    plats = t.platforms()
    assert plats[0] == "manylinux_2_39_aarch64" and "manylinux2014_aarch64" in plats
    assert plats[-1] == "linux_aarch64" and "manylinux_2_16_aarch64" in plats
    assert ptags.Tag("cp38", "abi3", "manylinux_2_28_aarch64") in t.tags()
    assert ptags.Tag("cp312", "cp312", "manylinux_2_40_aarch64") not in t.tags()
    assert ptags.Tag("py3", "none", "any") in t.tags()
    musl = hb.Target.from_facts({"python": "3.12.3", "machine": "x86_64", "glibc": None})
    assert musl.platforms() == ["linux_x86_64"]
    with pytest.raises(hb.BundleError, match="did not report"):
        hb.Target.from_facts({"python": None})
    with pytest.raises(hb.ResolveError, match="only CPython"):
        hb.resolve(hb.Target("3.10.14", "x86_64", "2.36", "pypy"), cache=CACHE)


def test_closure_evaluates_markers_for_the_host_not_the_controller():
    def dist(name, version, *requires):
        return hb.Dist(name, version, "", requires, None, "test")

    dists = {"a": dist("a", "1", 'b>=2; python_version < "3.11"', 'c; platform_machine == "aarch64"',
                       "d", "e; extra == 'x'"),
             "b": dist("b", "2"), "d": dist("d", "0.9", "b<2; python_version < '3.11'")}
    old = hb.Target("3.10.1", "x86_64", "2.36")
    needed, missing, problems = hb.closure(dists, ["a"], old)
    assert needed == ["a", "b", "d"] and missing == [] and problems == ["d needs b<2, got 2"]
    needed, missing, _ = hb.closure(dists, ["a"], hb.Target("3.12.1", "aarch64", "2.36"))
    assert needed == ["a", "d"] and [m.name for m in missing] == ["c"]


@pytest.mark.parametrize("path, keep", [
    ("huggingface_hub/file_download.py", True),
    ("huggingface_hub-2.4.0.dist-info/METADATA", True),
    ("yaml/_yaml.cpython-311-x86_64-linux-gnu.so", True),  # chosen for the host: it fits
    ("huggingface_hub/__pycache__/x.cpython-311.pyc", False),
    ("../../../bin/hf", False),
])
def test_wanted_files(path, keep):
    assert hb.wanted(path) is keep


def test_wheel_members_merge_purelib_and_drop_scripts(tmp_path):
    wheel = tmp_path / "x-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("x/__init__.py", "")
        z.writestr("x-1.0.data/purelib/xx/__init__.py", "")
        z.writestr("x-1.0.data/scripts/x", "#!/bin/sh\n")
        z.writestr("x/__pycache__/a.pyc", "")
    assert sorted(n for n, _ in hb.wheel_members(wheel)) == ["x/__init__.py", "xx/__init__.py"]
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(hb.BundleError, match="cannot be read"):
        hb.wheel_members(tmp_path / "bad.whl")
