"""Render the README's settings table from group_data/all.py (the one source of truth).

    python -m glmfleet.settings_doc          print the table
    python -m glmfleet.settings_doc --write  refresh it in README.md between the markers
"""

from __future__ import annotations

import ast
import sys

from glmfleet.settings import DEFAULTS_FILE, REPO_ROOT

BEGIN, END = "<!-- settings-table:begin -->", "<!-- settings-table:end -->"


def rows() -> list[tuple[str, str, str]]:
    """(name, default as written, comment) for each assignment in group_data/all.py."""
    source = DEFAULTS_FILE.read_text()
    lines = source.splitlines()
    out = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = node.targets[0].id
            default = ast.get_source_segment(source, node.value)
            line = lines[node.end_lineno - 1]
            comment = line.split("#", 1)[1].strip() if "#" in line else ""
            comment = comment.removeprefix("noqa: E501").strip()
            out.append((name, default, comment))
    return out


def table() -> str:
    body = ["| setting | default | meaning |", "|---|---|---|"]
    for name, default, comment in rows():
        # Whole, never cut: an operator copies defaults from here (an image tag, a key fingerprint).
        body.append(f"| `{name}` | `{default.replace('|', '&#124;')}` | {comment} |")
    return "\n".join(body)


def refreshed(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        path = REPO_ROOT / "README.md"
        path.write_text(refreshed(path.read_text()))
    else:
        print(table())
