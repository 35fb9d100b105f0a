"""pyproject.toml: the wheel built from the repository gives an importable glmfleet that
finds its kit (files/) and its setting defaults (group_data/all.py) inside itself, with no
second copy of either in the repository. Built by the real pip with the pinned backend."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.packaging import build_wheel, install_wheel

REPO = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_in_the_wheel_list():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "glmfleet").rglob("__init__.py")}
    assert on_disk <= listed, sorted(on_disk - listed)
    mapped = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert mapped == {"glmfleet.files": "files", "glmfleet.group_data": "group_data"}
    # no second copy: the mapped names do not exist inside the package folder of the checkout
    assert not (REPO / "glmfleet" / "files").exists() and not (REPO / "glmfleet" / "group_data").exists()


def test_backend_is_pinned():
    (req,) = PYPROJECT["build-system"]["requires"]
    assert req.startswith("setuptools==")


def test_installed_wheel_renders_the_kit_and_loads_the_defaults(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"glmfleet/files/docker-compose.yml.j2", "glmfleet/files/env.j2", "glmfleet/files/tools/kitenv.py",
            "glmfleet/files/test/coherence_test.py", "glmfleet/group_data/all.py",
            "glmfleet/weights/hostside/cli.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    site = install_wheel(wheel, tmp_path / "site")

    # A fresh interpreter, outside the checkout: glmfleet comes from the install only (the
    # venv gives the dependencies); it renders the kit with the packaged defaults.
    out = tmp_path / "kit"
    code = (
        "import sys, glmfleet, glmfleet.settings as st, glmfleet.kit.render as r\n"
        f"assert glmfleet.__file__.startswith({str(site)!r}), glmfleet.__file__\n"
        f"assert str(st.DEFAULTS_FILE).startswith({str(site)!r}) and str(r.FILES_DIR).startswith({str(site)!r})\n"
        "d = st.load_defaults(); assert d['port'] == 8000 and d['model_revision'] is None\n"
        "from glmfleet.service.kit_by_hand import main\n"
        f"sys.exit(main([{str(out)!r}, 'api_key=open']))\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    r = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n" + code],
                       cwd=work, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kit written to" in r.stdout
    compose = (out / "docker-compose.yml").read_text()
    assert "vllm" in compose
    assert (out / ".env").is_file() and (out / "launch.sh").is_file() and (out / "tools" / "kitenv.py").is_file()
