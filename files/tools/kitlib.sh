# shellcheck shell=bash
# Helpers shared by launch.sh and monitor.sh (sourced, with KIT_DIR set to the kit folder).

# The compose command as an array, set by kit_compose and used by the sourcing scripts.
# shellcheck disable=SC2034
COMPOSE=()

# Test seams (COMPOSE_CMD, LOG_CMD, SERVE_PYTHON) act only in a kit folder holding this file,
# which the kit's tests create and the deploy never writes: on a production box they are inert.
KIT_TEST_FLAG=.glmfleet-test-seams

# kit_seam VAR: print VAR's value when the test flag file is present, nothing otherwise.
kit_seam() {
    [[ -f $KIT_DIR/$KIT_TEST_FLAG ]] && printf '%s' "${!1:-}"
    return 0
}

# kit_dotenv KEY: print KEY's value from .env (the last assignment wins); status 1 if absent.
# kit_dotenv_keys: every variable name assigned in .env. Both through the kit's one reader.
kit_dotenv() {
    python3 "$KIT_DIR/tools/kitenv.py" get "$1" "$KIT_DIR/.env"
}

kit_dotenv_keys() {
    python3 "$KIT_DIR/tools/kitenv.py" keys "$KIT_DIR/.env"
}

# kit_compose: set the COMPOSE array to the compose command of this host (tools/compose_probe.sh,
# the probe the deploy uses too). COMPOSE_CMD overrides it in a test kit (kit_seam).
kit_compose() {
    local out
    out=$(kit_seam COMPOSE_CMD)
    if [[ -n $out ]]; then
        read -ra COMPOSE <<<"$out"
        return 0
    fi
    if ! out=$(sh "$KIT_DIR/tools/compose_probe.sh"); then
        echo "neither 'docker compose' (v2 plugin) nor 'docker-compose' is installed" >&2
        return 1
    fi
    read -ra COMPOSE <<<"$out"
}

# kit_mask: copy stdin to stdout with the API key (if any) replaced by ****.
kit_mask() {
    local key line
    key=$(kit_dotenv API_KEY || true)
    while IFS= read -r line || [[ -n $line ]]; do
        [[ -n $key ]] && line=${line//"$key"/****}
        printf '%s\n' "$line"
    done
}

# kit_py ARGS...: run the kit's stdlib HTTP client (tools/oai_client.py).
kit_py() {
    python3 "$KIT_DIR/tools/oai_client.py" "$@"
}
