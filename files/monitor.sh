#!/usr/bin/env bash
# Host-side log forwarder: copies the container's log to logs/serve.log (rotated at 100 MB,
# a few old files kept) and keeps the peak prefill/decode throughput in logs/peak.json.
# Runs until stopped; re-attaches whenever the log stream ends (container restart or
# re-creation). One instance per kit (logs/monitor.lock); launch.sh starts it, and the
# service stage supervises it (a systemd unit where there is systemd: glmfleet/service/monitor.py).
#   ./monitor.sh &                   start by hand (after `docker compose up -d`)
#   kill "$(cat logs/monitor.pid)"   stop it
# Environment: LOG_CMD (a shell command whose output replaces the container log; only in a
#   test kit, see kit_seam in tools/kitlib.sh), LOG_MAX_BYTES (rotation size, default 100 MB), LOG_KEEP (old files kept, default 4).
set -euo pipefail
umask 027  # kit logs hold requests and errors: not for every local user
KIT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$KIT_DIR"
# shellcheck source-path=SCRIPTDIR source=tools/kitlib.sh
. "$KIT_DIR/tools/kitlib.sh"

mkdir -p logs
exec 9>logs/monitor.lock
if [[ -n ${GLMFLEET_MONITOR_UNIT:-} ]]; then
    # Under systemd (glmfleet's <service>-monitor.service): wait for an instance started by
    # hand (launch.sh) to end, then take over, instead of exiting and being restarted.
    flock 9
elif ! flock -n 9; then
    echo "monitor.sh: already running (pid $(cat logs/monitor.pid 2>/dev/null || echo '?'))"
    exit 0
fi
echo $$ >logs/monitor.pid

since_file=logs/.monitor-since  # where the last attach stopped, so a re-attach adds no duplicates
job=""
stop() {
    trap - EXIT INT TERM
    set +m  # no job-status notice for the attach we are about to end
    if [[ -n $job ]]; then kill -TERM -- "-$job" 2>/dev/null || true; fi
    date +%s >"$since_file"
    rm -f logs/monitor.pid
    exit 0
}
trap stop EXIT INT TERM

# log_source: the container's log, followed until the container stops.
log_source() {
    local id since=() log_cmd
    log_cmd=$(kit_seam LOG_CMD)
    if [[ -n $log_cmd ]]; then
        exec bash -c "$log_cmd"
    fi
    kit_compose >/dev/null 2>&1 || return 0
    id=$("${COMPOSE[@]}" ps -q 2>/dev/null | head -n 1) || return 0
    [[ -n $id ]] || return 0
    [[ -s $since_file ]] && since=(--since "$(cat "$since_file")")
    exec docker logs -f "${since[@]}" "$id"
}

tap() {
    exec python3 "$KIT_DIR/tools/logtap.py" --log logs/serve.log --peak logs/peak.json \
        --max-bytes "${LOG_MAX_BYTES:-104857600}" --keep "${LOG_KEEP:-4}"
}

set -m  # each attach runs in its own process group, so stop() can end all of it
while :; do
    { log_source 2>&1 | tap; } 9>&- &
    job=$!
    wait "$job" || true
    job=""
    date +%s >"$since_file"
    sleep 2
done
