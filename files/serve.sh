#!/usr/bin/env bash
# Container entrypoint (mounted read-only at /recipe, sourced by the login shell of the compose
# entrypoint): builds the vLLM command line from the environment that docker-compose.yml
# passes in from .env, checks it against the checkpoint, and execs vLLM.
#   SERVE_PRINT_ARGS=1  print the command, one argument per line, instead of running it
#   SERVE_PYTHON=...    interpreter to exec, only in a test kit (a .glmfleet-test-seams file
#                       beside this script); otherwise always the image's /opt/venv/bin/python
#   SERVE_MODEL_DIR=... where the weights are, only in a test kit too; otherwise /model
# The API key goes to vLLM as VLLM_API_KEY, never on the command line: argv shows in `ps` on
# the host and vLLM logs its non-default arguments at startup.
set -euo pipefail

die() { echo "serve.sh: $*" >&2; exit 64; }

# need NAME REGEX WHAT: NAME must be set and match REGEX entirely.
need() {
    local name=$1 re=$2 what=$3 value=${!1:-}
    [[ -n $value ]] || die "$name is empty: set it in .env (docker-compose.yml passes it in)"
    [[ $value =~ ^($re)$ ]] || die "$name='$value' is not $what"
}

# is_on NAME: true for 1/true/yes/on, false for 0/false/no/off, else stop.
is_on() {
    local value=${!1:-}
    case ${value,,} in
        1 | true | yes | on) return 0 ;;
        0 | false | no | off) return 1 ;;
        *) die "$1='$value' is not 0 or 1" ;;
    esac
}

INT='[0-9]+'
need BIND_HOST '[0-9A-Za-z.:_-]+' "an address such as 0.0.0.0"
need PORT "$INT" "a port number"
need SERVED_MODEL_NAMES '[A-Za-z0-9._/-]+(,[A-Za-z0-9._/-]+)*' "a comma-separated list of names"
need TP "$INT" "a GPU count"
need DCP_SIZE '1|2|4' "1, 2 or 4"
need MAX_MODEL_LEN "$INT" "a token count"
need MAX_NUM_SEQS "$INT" "a number"
need MAX_NUM_BATCHED_TOKENS "$INT" "a token count"
need GPU_MEMORY_UTILIZATION '0?\.[0-9]+' "a fraction such as 0.95"
need INDEX_TOPK_PATTERN 'F[FS]*' "an F/S string starting with F (one letter per layer)"
effort=${REASONING_EFFORT:-}
[[ -z $effort || $effort =~ ^[a-z]{1,16}$ ]] ||
    die "REASONING_EFFORT='$effort' is not a short lowercase word such as high (empty = the template's own)"
thinking=0 mtp=0
if is_on ENABLE_THINKING; then thinking=1; fi
if is_on ENABLE_MTP; then mtp=1; fi

spec=0
if ((mtp)); then
    need NUM_SPECULATIVE_TOKENS "$INT" "a number"
    spec=$((10#$NUM_SPECULATIVE_TOKENS))
fi
# Every decode step of a sequence verifies spec+1 tokens: graphs must cover that many rows.
capture=$((10#$MAX_NUM_SEQS * (spec + 1)))
IFS=, read -ra names <<<"$SERVED_MODEL_NAMES"

# One pattern letter per decoder layer of this checkpoint: vLLM would not notice a hand edit
# that drops or adds one, and the indexer map would shift for every layer after it.
model_dir=/model
if [[ -f "$(dirname "${BASH_SOURCE[0]}")/.glmfleet-test-seams" && -n ${SERVE_MODEL_DIR:-} ]]; then
    model_dir=$SERVE_MODEL_DIR  # test seam, as SERVE_PYTHON below
fi
config=$(cat "$model_dir/config.json" 2>/dev/null) || config=
[[ $config =~ \"num_hidden_layers\"[[:space:]]*:[[:space:]]*([0-9]+) ]] ||
    die "cannot read num_hidden_layers from /model/config.json: are the weights at MODEL_PATH (.env) complete?"
layers=${BASH_REMATCH[1]}
((${#INDEX_TOPK_PATTERN} == 10#$layers)) ||
    die "INDEX_TOPK_PATTERN has ${#INDEX_TOPK_PATTERN} letters but the model has $layers layers" \
        "(num_hidden_layers in config.json): one F/S per layer; restore the deployed value or redeploy"

# Chat-template variables by default; a request's own chat_template_kwargs win over these.
template_vars=()
((thinking)) || template_vars+=('"enable_thinking": false')
[[ -z $effort ]] || template_vars+=("\"reasoning_effort\": \"$effort\"")

args=(
    serve /model
    --served-model-name "${names[@]}"
    --trust-remote-code
    --host "$BIND_HOST" --port "$PORT"
    --tensor-parallel-size "$TP" --pipeline-parallel-size 1
    --decode-context-parallel-size "$DCP_SIZE"
    --enable-chunked-prefill --enable-prefix-caching
    --load-format fastsafetensors --async-scheduling
    -cc.pass_config.fuse_allreduce_rms=True
    --gpu-memory-utilization "$GPU_MEMORY_UTILIZATION"
    --max-num-batched-tokens "$MAX_NUM_BATCHED_TOKENS"
    --max-num-seqs "$MAX_NUM_SEQS"
    --max-cudagraph-capture-size "$capture"
    --max-model-len "$MAX_MODEL_LEN"
    --quantization modelopt_fp4
    --attention-backend B12X_MLA_SPARSE
    --moe-backend b12x
    --kv-cache-dtype fp8
    --tool-call-parser glm47 --enable-auto-tool-choice
    --hf-overrides "{\"index_topk_pattern\": \"$INDEX_TOPK_PATTERN\"}"
)
# Thinking off: no parser, and the chat template told not to think (answers go to content).
((thinking)) && args+=(--reasoning-parser glm45)
if ((${#template_vars[@]})); then
    joined=$(printf ', %s' "${template_vars[@]}")
    args+=(--default-chat-template-kwargs "{${joined:2}}")
fi
if ((mtp)); then
    args+=(--speculative-config "{\"model\": \"/model\", \"method\": \"mtp\", \"num_speculative_tokens\": $spec, \"moe_backend\": \"b12x\", \"draft_sample_method\": \"probabilistic\"}")
fi

# By absolute path: the login shell's profile may have reset PATH.
python=/opt/venv/bin/python
if [[ -f "$(dirname "${BASH_SOURCE[0]}")/.glmfleet-test-seams" && -n ${SERVE_PYTHON:-} ]]; then
    python=$SERVE_PYTHON  # test seam: inert on a production box (no flag file there)
fi
cmd=("$python" -m vllm.entrypoints.cli.main "${args[@]}")

if [[ -n ${API_KEY:-} ]]; then
    export VLLM_API_KEY=$API_KEY
    key_note="set (VLLM_API_KEY)"
else
    key_note="none (open API)"
fi
unset API_KEY

skips=${INDEX_TOPK_PATTERN//F/}
echo "serve.sh: TP=$TP DCP=$DCP_SIZE max_model_len=$MAX_MODEL_LEN max_num_seqs=$MAX_NUM_SEQS" \
    "cudagraph_capture=$capture thinking=$thinking effort=${effort:-template default} mtp=$mtp(spec $spec)" \
    "index pattern: ${#skips} S of ${#INDEX_TOPK_PATTERN} layers; api key: $key_note" >&2
if [[ $DCP_SIZE == 1 ]] && ((10#$MAX_MODEL_LEN > 131072)); then
    echo "serve.sh: WARNING: DCP_SIZE=1 replicates the KV cache per GPU; above ~131k" \
        "(OOM near 177k) use DCP_SIZE=4 or MAX_MODEL_LEN=131072" >&2
fi

if [[ -n ${SERVE_PRINT_ARGS:-} && ${SERVE_PRINT_ARGS} != 0 ]]; then
    printf '%s\n' "${cmd[@]}"
    exit 0
fi

# The image presets these; the validated recipe runs with them unset.
unset NCCL_GRAPH_FILE NCCL_GRAPH_DUMP_FILE VLLM_B12X_MLA_EXTEND_MAX_CHUNKS
cd /
exec "${cmd[@]}"
