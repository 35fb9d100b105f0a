#!/usr/bin/env bash
# Stream one chat completion from this box: the reasoning (dimmed) above the answer.
#   ./chat.sh "explain quicksort in 3 bullet points"
#   ./chat.sh < prompt.txt               no prompt given: it is read from stdin
#   ./chat.sh --hide-thinking "..."      the answer only (SHOW_THINKING=0 does the same)
# Environment: MODEL (default: the first name in SERVED_MODEL_NAMES), MAX_TOKENS (default:
#   none), TEMPERATURE (default 0.6, the recipe's), SHOW_THINKING (1 or 0), BASE_URL and
#   API_KEY (default: from .env), NO_COLOR / FORCE_COLOR.
set -euo pipefail
KIT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    echo "usage: ./chat.sh [--show-thinking | --hide-thinking] [\"your prompt\"]  (no prompt: read from stdin)"
}

case ${SHOW_THINKING:-1} in
    1 | true | yes | on) show=1 ;;
    0 | false | no | off) show=0 ;;
    *) echo "SHOW_THINKING='$SHOW_THINKING' is not 0 or 1" >&2; exit 2 ;;
esac
while (($#)); do
    case $1 in
        --show-thinking) show=1 ;;
        --hide-thinking) show=0 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -) break ;;
        -*) usage >&2; exit 2 ;;
        *) break ;;
    esac
    shift
done

opts=()
((show)) || opts+=(--hide-thinking)
[[ -z ${TEMPERATURE:-} ]] || opts+=(--temperature "$TEMPERATURE")
if (($# == 0)); then
    # A long prompt goes through stdin, not argv (one argument is limited to 128 KiB).
    [[ ! -t 0 ]] || echo "Type the prompt, then Ctrl-D on a line of its own:" >&2
    exec python3 "$KIT_DIR/tools/oai_client.py" chat "${opts[@]}" -- -
fi
exec python3 "$KIT_DIR/tools/oai_client.py" chat "${opts[@]}" -- "$*"
