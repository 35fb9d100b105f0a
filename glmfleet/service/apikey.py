"""The fleet's API key when settings ask for one to be generated (pure: no pyinfra import).

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

from glmfleet.settings import API_KEY_GENERATE, API_KEY_PATTERN, Settings


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
