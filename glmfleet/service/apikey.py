"""The API key each host serves with (pure: no pyinfra import).

One rule (`for_host`): api_key unset keeps the key a host already has; a host with none is
refused, naming the two choices: "generate" (one fleet key) or "open" (no key, said on
purpose: the only way to an open API). Every change of the API's exposure is named.


`api_key = "generate"`: the controller creates a random key once (secrets.token_urlsafe),
stores it in `api_key_file` (mode 0600, its directory 0700; relative paths are taken from the
current directory, i.e. the repo you run pyinfra from; `/.secrets/` is gitignored) and reuses
it on every later run, so every host of the fleet gets the same key and a re-run changes
nothing. The key is never printed: only the file that holds it is named.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shlex
from typing import Iterable

from glmfleet.settings import API_KEY_GENERATE, API_KEY_OPEN, API_KEY_PATTERN, Settings


class ApiKeyError(ValueError):
    """The key file cannot be read, created, or holds no usable key (the message says why)."""


def load_or_create(path: str) -> tuple[str, bool]:
    """(key, created): the key stored in ``path``, created there (0600) when absent."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        with open(path) as f:
            key = f.read().strip()
    except FileNotFoundError:
        key = None
    except OSError as e:
        raise ApiKeyError(f"api_key_file {path!r} cannot be read ({e.strerror})") from None
    if key is not None:
        if not re.fullmatch(API_KEY_PATTERN, key):
            raise ApiKeyError(f"api_key_file {path!r} does not hold a usable key (at least 8 "
                              "printable characters without spaces, quotes or backslashes): fix "
                              "or delete it (a new key is then generated)")
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)  # keep it private even if someone loosened it
        return key, False
    key = secrets.token_urlsafe(32)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another run created it meanwhile: use that one
        return load_or_create(path)
    except OSError as e:
        raise ApiKeyError(f"api_key_file {path!r} cannot be created ({e.strerror})") from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True


def resolve(settings: dict[str, Settings]) -> tuple[dict[str, Settings], list[str]]:
    """Replace api_key="generate" by the fleet's stored key (one file may serve several
    hosts: read once). Returns the settings and notes to show (paths only, never a key)."""
    keys: dict[str, str] = {}
    notes: list[str] = []
    out = {}
    for name, s in settings.items():
        if s.api_key != API_KEY_GENERATE:
            out[name] = s
            continue
        path = os.path.abspath(os.path.expanduser(s.api_key_file))
        if path not in keys:
            keys[path], created = load_or_create(path)
            notes.append(f"api_key: {'generated a new' if created else 'using the'} fleet key stored "
                         f"in {path} (mode 0600; not shown)")
        out[name] = dataclasses.replace(s, api_key=keys[path])
    return out, notes


class NoKeyChosen(ValueError):
    """api_key is unset and the host has no key to keep: the operator must choose."""


def no_key_message(api_key_file: str, port: int) -> str:
    return ("api_key is not set and this host has no API key yet: choose one in the settings: "
            f'api_key = "generate" (one random key for the fleet, kept in {api_key_file}) or '
            f'api_key = "open" (no key: anyone who reaches port {port} can use the API)')


def for_host(setting: str | None, host_key: str | None, api_key_file: str = ".secrets/api-key",
             port: int = 8000) -> tuple[str, str | None]:
    """The key to write into the host's .env ("" = none) and the change of the API's exposure
    to name (None: unchanged). ``setting``: api_key after resolve() (None, "open" or a key);
    ``host_key``: the key in the host's .env ("" = open now, None = no kit there yet).
    Never puts a key in a message."""
    if setting is None:
        if not host_key:
            raise NoKeyChosen(no_key_message(api_key_file, port))
        return host_key, None
    if setting == API_KEY_OPEN:
        if host_key:
            return "", ('API exposure: key REMOVED (api_key = "open"): the API now answers '
                        "anyone who reaches it")
        return "", None if host_key == "" else 'API exposure: open, no key (api_key = "open")'
    if host_key is None:
        return setting, "API exposure: key required (api_key set)"
    if host_key == "":
        return setting, "API exposure: was open, now a key is required (api_key set)"
    if host_key != setting:
        return setting, "API exposure: key replaced (api_key changed): clients need the new key"
    return setting, None


def parse_dotenv_key(lines: Iterable[str]) -> str | None:
    """The API_KEY value of the kit's .env as read by ``dotenv_key_command`` (None: no .env)."""
    lines = list(lines)
    if not lines or lines[0].strip() != "env=1":
        return None
    value = next((line.strip()[len("API_KEY="):] for line in lines[1:]
                  if line.strip().startswith("API_KEY=")), "")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value


def dotenv_key_command(service_dir: str) -> str:
    """Read-only; its output holds the key: run it unprinted, never as a fact."""
    env = shlex.quote(f"{service_dir}/.env")
    return f"if [ -f {env} ]; then echo env=1; grep -m1 '^API_KEY=' {env} || true; fi"
