"""Static checks over the whole tree: pyflakes for Python, bash -n and shellcheck for the
repository's own shell scripts (the box kit's scripts are checked in tests/kit)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PY_DIRS = ["glmfleet", "tasks", "testbed", "tests", "bench", "files", "deploy.py", "config.py",
           "inventory", "group_data"]
SCRIPTS = ["deploy.sh", "test.sh", ".ci/run", "testbed/setup.sh", "tests/real_gpu/check.sh"]


def test_pyflakes_clean():
    r = subprocess.run([sys.executable, "-m", "pyflakes", *PY_DIRS], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_scripts(script):
    shell = "sh" if script == "testbed/setup.sh" else "bash"
    assert subprocess.run([shell, "-n", script], cwd=REPO).returncode == 0
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed (testbed/setup.sh installs it)")
    r = subprocess.run(["shellcheck", script], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
