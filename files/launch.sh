#!/usr/bin/env bash
# Start GLM-5.2 on this box, wait until the API answers, smoke-test it, print READY.
#   ./launch.sh                      start (or keep running) the server configured in .env
#   ENABLE_THINKING=0 ./launch.sh    this run without reasoning (a plain run restores .env's)
# Every other setting comes from .env only (a stray PORT or TP in your shell is ignored).
# Environment knobs: READY_TIMEOUT, SMOKE_TIMEOUT (seconds; defaults in .env),
#   COMPOSE_CMD (compose command to use instead of probing for one; test kits only),
#   BASE_URL (where the API is reached; default from BIND_HOST/PORT in .env).
# Exit status: 0 ready and answering, 1 failed (the container's log tail is printed).
set -euo pipefail
umask 027  # kit logs hold requests and errors: not for every local user
KIT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$KIT_DIR"
# shellcheck source-path=SCRIPTDIR source=tools/kitlib.sh
. "$KIT_DIR/tools/kitlib.sh"

[[ -f .env ]] || { echo "no .env in $KIT_DIR: cp .env.example .env, then edit it" >&2; exit 1; }
command -v python3 >/dev/null || { echo "launch.sh needs python3 (for its HTTP checks)" >&2; exit 1; }

say() { printf '==> %s\n' "$*"; }

log_tail() {
    "${COMPOSE[@]}" logs --no-color --tail "${1:-60}" 2>&1 | kit_mask || true
}

fail() {
    printf '\n!! %s\n' "$*" >&2
    echo "!! Last lines of the server log:" >&2
    log_tail 60 >&2
    exit 1
}

# Values of this run: the environment may override only these; the rest is .env's.
ready_timeout=${READY_TIMEOUT:-$(kit_dotenv READY_TIMEOUT || echo 1800)}
smoke_timeout=${SMOKE_TIMEOUT:-$(kit_dotenv SMOKE_TIMEOUT || echo 300)}
thinking=${ENABLE_THINKING:-$(kit_dotenv ENABLE_THINKING || true)}
case ${thinking,,} in
    1 | true | yes | on) thinking=1 ;;
    0 | false | no | off) thinking=0 ;;
    *) echo "ENABLE_THINKING='$thinking' is not 0 or 1" >&2; exit 1 ;;
esac
while IFS= read -r key; do
    unset "$key"
done < <(kit_dotenv_keys)
# Compose substitutes ${ENABLE_THINKING} from the shell before .env: that is the one-run override.
export ENABLE_THINKING=$thinking

kit_compose
base_url=$(kit_py url)
model=$(kit_dotenv SERVED_MODEL_NAMES || true)
model=${model%%,*}

say "Starting GLM-5.2 with ${COMPOSE[*]}: TP=$(kit_dotenv TP) DCP=$(kit_dotenv DCP_SIZE)" \
    "max_model_len=$(kit_dotenv MAX_MODEL_LEN) thinking=$([[ $thinking == 1 ]] && echo on || echo off)"
"${COMPOSE[@]}" up -d || fail "compose could not start the service"

# The host-side log forwarder + peak tracker; it keeps a single instance by itself. Its own
# session, so it outlives this shell (and an SSH login that ran it).
mkdir -p logs
if command -v setsid >/dev/null; then
    setsid -f "$KIT_DIR/monitor.sh" >>logs/monitor.out 2>&1 </dev/null
else
    nohup "$KIT_DIR/monitor.sh" >>logs/monitor.out 2>&1 </dev/null &
fi

# restart_count: how often docker restarted the container (empty when docker can't tell).
restart_count() {
    local id
    id=$("${COMPOSE[@]}" ps -q 2>/dev/null | head -n 1) || return 0
    [[ -n $id ]] || return 0
    docker inspect -f '{{.RestartCount}}' "$id" 2>/dev/null || true
}

say "Waiting for $base_url/v1/models (first boot compiles kernels and captures CUDA graphs," \
    "~6 min; timeout ${ready_timeout}s)"
start=$(date +%s)
restarts0=$(restart_count)
next_note=0
while :; do
    rc=0
    kit_py probe --timeout 5 >/dev/null || rc=$?
    ((rc == 0)) && break
    ((rc == 2)) && fail "the server refused the API key from .env"
    now=$(date +%s)
    elapsed=$((now - start))
    ((elapsed >= ready_timeout)) && fail "the API did not answer within ${ready_timeout}s"
    restarts=$(restart_count)
    if [[ -n $restarts && -n $restarts0 ]] && ((restarts >= restarts0 + 2)); then
        fail "the container keeps restarting ($((restarts - restarts0)) restarts while booting)"
    fi
    if ((now >= next_note)); then
        last=$(log_tail 1 | tail -n 1)
        last=${last#*| }
        printf '    [%3dm%02ds] %s\n' $((elapsed / 60)) $((elapsed % 60)) "${last:0:150}"
        next_note=$((now + 15))
    fi
    sleep 2
done
say "The API answers after $(($(date +%s) - start))s; smoke test (thinking=$thinking)..."

answer=$(kit_py smoke --thinking "$thinking" --timeout "$smoke_timeout") ||
    fail "the smoke test did not get READY back"

cat <<EOF

  ✅ READY — GLM-5.2 is serving and answered: $answer
  Endpoint : ${base_url/127.0.0.1/localhost}/v1   (model: ${model:-see /v1/models})
  Try it   : ./chat.sh "write a haiku about GPUs"
  Thinking : $([[ $thinking == 1 ]] && echo "on (reasoning field; use max_tokens >= 2000 or none)" || echo "off (ENABLE_THINKING=0)")
  Logs     : tail -f logs/serve.log   ·   peaks: cat logs/peak.json
EOF
