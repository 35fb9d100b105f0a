#!/usr/bin/env bash
# The whole test suite: ./test.sh [pytest args]
# Needs root on Debian 12 (test hosts are network namespaces with their own filesystems).
# Installs what the tests need (Debian packages, pinned Python packages, the cached test
# rootfs) on first use; later runs reuse them.
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/pytest" ] || [ "$(cat "$venv/.dev-requirements.sha256" 2>/dev/null)" != "$want" ]; then
    echo "--> Creating $venv with the pinned test dependencies..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt
    echo "$want" >"$venv/.dev-requirements.sha256"
    # requirements.txt changed too: let deploy.sh see the venv as current.
    sha256sum requirements.txt | cut -d' ' -f1 >"$venv/.requirements.sha256"
fi

bash testbed/setup.sh

exec "$venv/bin/python" -m pytest "$@"
