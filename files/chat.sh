#!/usr/bin/env bash
# Stream one chat completion from this box: the reasoning (dimmed) above the answer.
#   ./chat.sh "explain quicksort in 3 bullet points"
# Environment: MODEL (default: the first name in SERVED_MODEL_NAMES), MAX_TOKENS (default:
#   none), BASE_URL and API_KEY (default: from .env), NO_COLOR / FORCE_COLOR.
set -euo pipefail
KIT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if (($# == 0)); then
    echo "usage: ./chat.sh \"your prompt\"" >&2
    exit 2
fi
exec python3 "$KIT_DIR/tools/oai_client.py" chat -- "$*"
