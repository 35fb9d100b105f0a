#!/usr/bin/env python3
"""The kit's one .env reader (stdlib only): kitlib.sh (launch.sh, monitor.sh, chat.sh), the
kit's Python tools and the deploy's restart decision (glmfleet.kit.render) all read .env here.

It reads what the renderer writes, which compose v2 and docker-compose 1.29 read alike:
KEY=value, KEY='value', KEY="value", an optional leading `export `, blank lines, whole-line
`#` comments, and a ` #` comment after an unquoted value. The last assignment of a key wins.

  python3 tools/kitenv.py get KEY [FILE]   print KEY's value; exit status 1 when it is absent
  python3 tools/kitenv.py keys [FILE]      every key assigned, one a line
FILE defaults to the kit's .env.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

KIT_DIR = Path(__file__).resolve().parent.parent
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not _KEY.fullmatch(key):
            continue  # blank, comment, or not an assignment
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.split(r"\s#", value, maxsplit=1)[0].strip()
        out[key] = value
    return out


def read(path: str | Path | None = None) -> dict[str, str]:
    """The variables of ``path`` (default: the kit's .env); {} when it cannot be read."""
    try:
        return parse(Path(path or KIT_DIR / ".env").read_text())
    except OSError:
        return {}


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "get":
        values = read(argv[2] if len(argv) > 2 else None)
        if argv[1] not in values:
            return 1
        sys.stdout.write(values[argv[1]])
        return 0
    if argv and argv[0] == "keys":
        for key in read(argv[1] if len(argv) > 1 else None):
            print(key)
        return 0
    print("usage: kitenv.py get KEY [FILE] | kitenv.py keys [FILE]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
