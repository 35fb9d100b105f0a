#!/usr/bin/env python3
"""A TEST DOUBLE for `docker compose` / `docker-compose`: the kit tests run without a Docker daemon.

Only what launch.sh and monitor.sh call, run in the kit folder (the compose project):
  version [--short]                 prints a version
  up -d                             starts the service's "container": the compose file's own
                                    entrypoint (a login shell sourcing the kit's serve.sh), run
                                    here with the environment docker-compose.yml gives it
                                    (${VAR} from the caller's environment first, then .env, as
                                    compose interpolates), its bind mounts' container paths
                                    mapped to their host paths (/recipe, /model), and the
                                    serving double standing in for the image: its login profile
                                    (image-profile.sh as $HOME/.bash_profile), its vLLM
                                    (SERVE_PYTHON + PYTHONPATH, FAKE_VLLM_IMAGE=1).
                                    Running with the same environment: left alone, as compose does.
  logs [--no-color] [--tail N] [-f] the container's output
  ps [-q]                           the container "id" (its pid) while it runs
  down                              stops it
No restart policy, volumes or GPUs: the tests check those on the rendered compose file itself.
FAKE_VLLM_* fault switches in the caller's environment reach the fake vLLM. State: .fake-compose/.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SERVING_PKG = REPO / "testbed" / "doubles" / "serving" / "pkg"
IMAGE_PROFILE = REPO / "testbed" / "doubles" / "serving" / "image-profile.sh"
STATE = ".fake-compose"
_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def read_dotenv(path: Path) -> dict[str, str]:
    """A compose-style .env: KEY=value, quoted values unquoted, comments and blanks skipped."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0]
        out[key.strip()] = value
    return out


def interpolate(text: str, variables: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        value = variables.get(name)
        if op in (":-", "-") and (value is None or (op == ":-" and value == "")):
            return arg
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise SystemExit(f"required variable {name} is missing a value: {arg}")
        return value or ""
    return _VAR.sub(sub, text)


def load_service(project: Path) -> tuple[str, dict]:
    doc = yaml.safe_load((project / "docker-compose.yml").read_text())
    (name, service), = doc["services"].items()
    return name, service


def container_env(project: Path, environ: dict[str, str]) -> dict[str, str]:
    """The environment the service's container gets: shell variables win over .env."""
    variables = {**read_dotenv(project / ".env"), **environ}
    _, service = load_service(project)
    return {k: interpolate(str(v), variables) for k, v in (service.get("environment") or {}).items()}


def bind_mounts(project: Path, environ: dict[str, str]) -> dict[str, Path]:
    """{container path: host path} of the service's bind mounts (named volumes left out)."""
    variables = {**read_dotenv(project / ".env"), **environ}
    _, service = load_service(project)
    out = {}
    for spec in service.get("volumes") or []:
        source, target = interpolate(str(spec), variables).split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (project / source).resolve()
    return out


def entrypoint(project: Path, environ: dict[str, str]) -> list[str]:
    """The service's entrypoint + command, with bind-mounted container paths made host paths."""
    _, service = load_service(project)
    argv = [str(a) for a in (service.get("entrypoint") or []) + (service.get("command") or [])]
    for target, source in sorted(bind_mounts(project, environ).items(), key=lambda m: -len(m[0])):
        argv = [re.sub(rf"(?<![\w/]){re.escape(target)}(?=/|\b)", str(source), a) for a in argv]
    return argv


# --- the commands --------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _running(state: Path) -> int | None:
    try:
        pid = int((state / "pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _stop(state: Path) -> None:
    pid = _running(state)
    if pid:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.05)
        else:
            os.killpg(pid, signal.SIGKILL)
    (state / "pid").unlink(missing_ok=True)


def up(project: Path, state: Path) -> int:
    name, _ = load_service(project)
    env = container_env(project, dict(os.environ))
    digest = hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()
    if _running(state) and (state / "config").exists() and (state / "config").read_text() == digest:
        print(f"{name} is up-to-date")
        return 0
    _stop(state)
    state.mkdir(exist_ok=True)
    home = state / "home"  # the image's home: a login shell reads its profile from here
    home.mkdir(exist_ok=True)
    (home / ".bash_profile").write_text(IMAGE_PROFILE.read_text())
    mounts = bind_mounts(project, dict(os.environ))
    run_env = {**env, "PATH": os.environ["PATH"], "HOME": str(home), "SERVE_PYTHON": sys.executable,
               "SERVE_MODEL_DIR": str(mounts.get("/model", "/model")),
               "PYTHONPATH": str(SERVING_PKG), "FAKE_VLLM_IMAGE": "1",
               **{k: v for k, v in os.environ.items() if k.startswith("FAKE_VLLM_")}}
    with open(state / "container.log", "ab") as log:
        proc = subprocess.Popen(entrypoint(project, dict(os.environ)), env=run_env, cwd=project,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    (state / "pid").write_text(str(proc.pid))
    (state / "config").write_text(digest)
    print(f"Starting {name} ... done")
    return 0


def logs(state: Path, args: list[str]) -> int:
    path = state / "container.log"
    tail = int(args[args.index("--tail") + 1]) if "--tail" in args else None
    lines = path.read_bytes().splitlines(keepends=True) if path.exists() else []
    sys.stdout.buffer.write(b"".join(lines[-tail:] if tail else lines))
    sys.stdout.flush()
    if "-f" in args or "--follow" in args:
        offset = path.stat().st_size if path.exists() else 0
        while _running(state):
            time.sleep(0.2)
            if path.exists() and path.stat().st_size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
                offset += len(data)
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
    return 0


def main(argv: list[str]) -> int:
    project = Path.cwd()
    state = project / STATE
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "version":
        print("2.99.0-fake" if "--short" in args else "Docker Compose version v2.99.0-fake (test double)")
        return 0
    if cmd == "up" and "-d" in args:
        return up(project, state)
    if cmd == "logs":
        return logs(state, args)
    if cmd == "ps":
        pid = _running(state)
        if pid:
            print(pid)
        return 0
    if cmd == "down":
        _stop(state)
        return 0
    print(f"fake compose: unsupported command {argv}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
