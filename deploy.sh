#!/usr/bin/env bash
# The main job. The first run creates .venv/ from requirements.txt (every version pinned).
#   ./deploy.sh                                  preflight of THIS machine; changes nothing
#   ./deploy.sh inventory/gpu.py deploy.py ...   any pyinfra command line, run from .venv
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/pyinfra" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    echo "--> Creating $venv with the pinned controller dependencies (first use only)..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt
    echo "$want" >"$venv/.requirements.sha256"
fi

if [ $# -eq 0 ]; then
    # The embedded default: a preflight of the local machine, which changes nothing.
    set -- @local deploy.py --data preflight_only=true -y
fi
exec "$venv/bin/pyinfra" "$@"
