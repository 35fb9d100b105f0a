"""Build this repository's wheel and install it apart from the checkout (the unit test of the
package and the fleet test of an operator's own deploy both use it)."""

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# What a build reads: the package, the two folders mapped into it, and the files pyproject names.
SOURCES = ("pyproject.toml", "README.md", "requirements.txt", "glmfleet", "files", "group_data")


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of this checkout, built by pip with the backend pyproject.toml pins."""
    src = tmp_path / "src"  # a copy: the build's build/ and egg-info stay out of the checkout
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    pinned = PYPROJECT["build-system"]["requires"][0].split("==")[1]
    try:
        here = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        here = None
    # With the pinned backend installed here, build with it; otherwise pip fetches exactly the
    # pinned one into an isolated build environment (from PyPI).
    no_iso = ["--no-build-isolation"] if here == pinned else []
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *no_iso,
                        "-q", "-w", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp_path / "dist").glob("glmfleet-*.whl")
    return wheel


def install_wheel(wheel: Path, target: Path) -> Path:
    """pip install --target: the package alone (the dependencies come from this venv)."""
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                        "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return target
