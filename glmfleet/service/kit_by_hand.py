"""Render the box kit by hand, without pyinfra, for a person at one box:

    python -m glmfleet.service.kit_by_hand OUT_DIR [key=value ...]

renders the kit from group_data/all.py (plus overrides) into OUT_DIR, with api_key =
"generate" resolved to the stored fleet key and the deploy's rule for an unset api_key (keep
the key OUT_DIR/.env already has; none there: choose "generate" or "open").
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from glmfleet.kit.index_pattern import derive
from glmfleet.kit.render import KitError, render_kit, write_kit
from glmfleet.service.apikey import for_host, parse_dotenv_key, resolve
from glmfleet.settings import API_KEY_OPEN, SettingsError, load_defaults, validate


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: python -m glmfleet.service.kit_by_hand OUT_DIR [key=value ...]", file=sys.stderr)
        return 2
    data = load_defaults()
    for item in argv[1:]:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"not key=value: {item!r}", file=sys.stderr)
            return 2
        data[key] = value
    # The kit never uses the pinned revision (weights are the deploy's job); settings want one.
    if data.get("model_revision") is None and not data.get("preflight_only"):
        data["model_revision"] = "0" * 40
    try:
        settings = validate("local", data)
        resolved, notes = resolve({"local": settings})  # api_key=generate: the stored key
        settings = resolved["local"]
        for note in notes:
            print(note, file=sys.stderr)
        env = Path(argv[0]) / ".env"
        current = parse_dotenv_key(["env=1", *env.read_text().splitlines()]) if env.is_file() else None
        key, exposure = for_host(settings.api_key, current, settings.api_key_file, settings.port)
        settings = dataclasses.replace(settings, api_key=key or API_KEY_OPEN)
        if exposure:
            print(exposure, file=sys.stderr)
        config_path = Path(settings.weights_dir) / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else None
        pattern, _ = derive(config, settings.index_topk_pattern)
        write_kit(argv[0], render_kit(settings, pattern))
    except (SettingsError, KitError, ValueError) as e:  # ApiKeyError, NoKeyChosen too
        print(e, file=sys.stderr)
        return 1
    print(f"kit written to {argv[0]} (then: cd {argv[0]} && ./launch.sh)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
