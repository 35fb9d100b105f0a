"""A TEST DOUBLE of the real vLLM serving image: an OpenAI-compatible stand-in, not a model.

It takes the argv of `vllm serve` exactly as the box kit's serve.sh builds it, and checks it
the way vLLM's parser would: an unknown flag or a malformed JSON value (--hf-overrides,
--speculative-config, --default-chat-template-kwargs) is an error, exit 2. Then it boots like
vLLM as far as the kit and the deploy can observe:
  - the boot log has one "Using index_topk_pattern/index_topk_freq to skip sparse MLA indexer"
    line per S in --hf-overrides' index_topk_pattern, and a line naming the fp8 KV cache;
  - GET /health, GET /v1/models (the served names), POST /v1/chat/completions, streamed (SSE)
    or not; with --reasoning-parser the chain of thought goes to `reasoning` (unless the
    request or --default-chat-template-kwargs turns enable_thinking off), else only content;
    usage counts; max_tokens cuts reasoning first (finish_reason "length"), as with the real one;
  - the API key from --api-key or VLLM_API_KEY is enforced on /v1 paths (401);
  - GET /metrics: Prometheus text with real vLLM's names and types (metrics_text);
  - while requests run, "Avg prompt throughput: X tokens/s, Avg generation throughput: Y
    tokens/s" lines every FAKE_VLLM_STATS_INTERVAL seconds.
  - the first-boot compile, honestly modelled (the slow part of a real first start): a boot
    computes a compile key from what a real compile depends on (the compile-relevant flags,
    CUTE_DSL_ARCH, the GPU model FAKE_VLLM_GPU_NAME and this double's own source, standing for
    the image's build), then looks in each cache location the environment names
    (VLLM_CACHE_ROOT, TRITON_CACHE_DIR, FLASHINFER_WORKSPACE_BASE, CUTE_DSL_CACHE_DIR) for an
    entry of that key (a file named after it that holds it). Each location without one is "compiled" (its share of
    FAKE_VLLM_COMPILE_S) and its entry written; a boot finding every entry loads them and
    skips the compile: a cold boot is slower than a warm one because of the cache's content,
    not a timer or a flag. A location whose parent directory is missing (no volume mounted)
    keeps nothing. As with 2026 vLLM at several GPU ranks, FlashInfer's autotune results are
    not kept: every boot at tensor parallelism > 1 spends FAKE_VLLM_AUTOTUNE_S on them, warm
    or cold. The boot log says "compile cache: miss ..." or "compile cache: hit ..." with the
    key, and FAKE_VLLM_RECORD gets a "compile" event;
Answers come from fake_answers.py (READY on request, needle recall, small arithmetic, ...).
Chat-template variables are merged as vLLM merges them: --default-chat-template-kwargs under
the request's chat_template_kwargs; the checkpoint's template defaults (enable_thinking true,
reasoning_effort "max") apply to what neither sets.

Run as the image (FAKE_VLLM_IMAGE=1, set by the image's /opt/venv/bin/python), it boots only
when the image's login profile ran (image-profile.sh marks it): a start without a login shell
fails, as the real image's profile would be missing.

Fault switches (environment):
  FAKE_VLLM_FAIL=boot         log an engine error during boot and exit 1
  FAKE_VLLM_FAIL=garbage      answer with looping nonsense (coherence checks must fail)
  FAKE_VLLM_BOOT_DELAY=S      "compile" for S seconds before listening, with progress lines
  FAKE_VLLM_WRONG_SKIPS=N     log N indexer-skip lines instead of one per S
  FAKE_VLLM_STATS_INTERVAL=S  seconds between throughput lines (default 2; vLLM's is 10)
  FAKE_VLLM_TOKEN_DELAY=S     pause between streamed tokens (default 0.002)
  FAKE_VLLM_PREFILL_TPS=N     simulated prefill speed, tokens/s (default 200000)
  FAKE_VLLM_COMPILE_S=S       a cold boot's whole compile, shared by the cache locations (default 2)
  FAKE_VLLM_AUTOTUNE_S=S      autotune spent on every boot at TP > 1, never cached (default 0.5)
  FAKE_VLLM_GPU_NAME=NAME     the GPU model in the compile key (default: RTX PRO 6000 Blackwell)
Observation (for tests):
  FAKE_VLLM_RECORD=PATH       append one JSON line per event: at boot its argv and environment
                              (the API key masked), per chat request the sampling parameters
                              and the chat-template variables the template received

Run: `python3 -m testbed.doubles.serving serve /model --port 8000 ...` from the repo root,
`python3 testbed/doubles/serving serve ...`, or in an image as vllm.entrypoints.cli.main (pkg/).
Stdlib only (python3.11+).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

if __package__:
    from .fake_answers import answer, reasoning_for
else:  # run as a plain script or through the pkg/ shim
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fake_answers import answer, reasoning_for  # type: ignore[no-redef]

SKIP_LINE = "Using index_topk_pattern/index_topk_freq to skip sparse MLA indexer"
VALUE_FLAGS = {  # flag -> type, for every valued flag serve.sh passes
    "--host": str, "--port": int, "--tensor-parallel-size": int, "--pipeline-parallel-size": int,
    "--decode-context-parallel-size": int, "--load-format": str, "--gpu-memory-utilization": float,
    "--max-num-batched-tokens": int, "--max-num-seqs": int, "--max-cudagraph-capture-size": int,
    "--max-model-len": int, "--quantization": str, "--attention-backend": str, "--moe-backend": str,
    "--kv-cache-dtype": str, "--tool-call-parser": str, "--reasoning-parser": str,
    "--hf-overrides": str, "--speculative-config": str, "--default-chat-template-kwargs": str,
    "--chat-template": str,
}
SWITCH_FLAGS = ("--trust-remote-code", "--enable-chunked-prefill", "--enable-prefix-caching",
                "--async-scheduling", "--enable-auto-tool-choice")
JSON_FLAGS = ("hf_overrides", "speculative_config", "default_chat_template_kwargs")


# The checkpoint's chat template: its own values for what no one sets.
TEMPLATE_DEFAULTS = {"enable_thinking": True, "reasoning_effort": "max"}
PROFILE_MARK = "FAKE_VLLM_PROFILE"  # exported by image-profile.sh


def record(event: str, **fields) -> None:
    """One JSON line in $FAKE_VLLM_RECORD (nothing when unset)."""
    path = os.environ.get("FAKE_VLLM_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"event": event, **fields}) + "\n")


def log(level: str, message: str, process: str | None = None) -> None:
    """One line as vLLM prints it: prefixed with the process, "(APIServer pid=N)" or, for
    what each tensor-parallel worker logs, "(Worker_TP<rank> pid=N)"."""
    process = process or f"APIServer pid={os.getpid()}"
    print(f"({process}) {level} {time.strftime('%m-%d %H:%M:%S')} [fake_vllm.py] {message}", flush=True)


# --- command line --------------------------------------------------------------------------

def _dotted_value(text: str):
    if text in ("True", "true", "False", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_args(argv: list[str]) -> argparse.Namespace:
    # vLLM expands `-cc.a.b=v` / `--compilation-config.a.b=v` into a nested compilation config.
    compilation: dict = {}
    rest = []
    for arg in argv:
        m = re.fullmatch(r"(?:-cc|--compilation-config)\.([\w.]+)=(.*)", arg)
        if not m:
            rest.append(arg)
            continue
        node = compilation
        *parents, leaf = m.group(1).split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = _dotted_value(m.group(2))

    p = argparse.ArgumentParser(prog="vllm", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", allow_abbrev=False)
    s.add_argument("model_tag")
    s.add_argument("--served-model-name", nargs="+")
    s.add_argument("--api-key", nargs="+")
    for flag, kind in VALUE_FLAGS.items():
        s.add_argument(flag, type=kind)
    for flag in SWITCH_FLAGS:
        s.add_argument(flag, action="store_true")
    args = p.parse_args(rest)
    args.raw_argv = list(argv)
    args.compilation_config = compilation
    for name in JSON_FLAGS:
        raw = getattr(args, name)
        if raw is None:
            continue
        try:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            s.error(f"argument --{name.replace('_', '-')}: invalid JSON object {raw!r}: {e}")
        setattr(args, name, value)
    pattern = (args.hf_overrides or {}).get("index_topk_pattern")
    if pattern is not None and not re.fullmatch(r"[FS]+", str(pattern)):
        s.error(f"index_topk_pattern must be F/S letters, got {pattern!r}")
    if args.speculative_config and not isinstance(args.speculative_config.get("num_speculative_tokens"), int):
        s.error("--speculative-config needs an integer num_speculative_tokens")
    args.served_model_name = args.served_model_name or [args.model_tag]
    env_key = os.environ.get("VLLM_API_KEY")
    args.api_keys = [k for k in (args.api_key or [env_key]) if k]
    return args


# --- engine statistics -----------------------------------------------------------------------

class Stats:
    """Token counters behind the periodic throughput line."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.prompt = self.generated = self.running = 0
        self.since = time.monotonic()
        self.was_busy = False
        self.prompt_total = self.generated_total = 0  # for /metrics: never reset
        self.ttft = TtftHistogram()

    def add(self, prompt: int = 0, generated: int = 0, running: int = 0) -> None:
        with self.lock:
            self.prompt += prompt
            self.generated += generated
            self.running += running
            self.prompt_total += prompt
            self.generated_total += generated

    def report(self) -> None:
        with self.lock:
            now = time.monotonic()
            span = max(now - self.since, 1e-6)
            prompt, generated, running = self.prompt, self.generated, self.running
            self.prompt = self.generated = 0
            self.since = now
        busy = bool(prompt or generated or running)
        if busy or self.was_busy:  # like vLLM: quiet when idle, one last line after work
            log("INFO", f"Engine 000: Avg prompt throughput: {prompt / span:.1f} tokens/s, "
                        f"Avg generation throughput: {generated / span:.1f} tokens/s, "
                        f"Running: {running} reqs, Waiting: 0 reqs, "
                        f"GPU KV cache usage: {min(running * 1.7, 100):.1f}%, Prefix cache hit rate: 0.0%")
        self.was_busy = busy


# --- Prometheus /metrics ------------------------------------------------------------------------

# vLLM's buckets for vllm:time_to_first_token_seconds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)


class TtftHistogram:
    def __init__(self) -> None:
        self.counts = [0] * len(TTFT_BUCKETS)
        self.count, self.sum = 0, 0.0

    def observe(self, seconds: float) -> None:
        for i, le in enumerate(TTFT_BUCKETS):
            if seconds <= le:
                self.counts[i] += 1
        self.count += 1
        self.sum += seconds


def metrics_text(stats: "Stats", model: str) -> str:
    """What vLLM's /metrics gives for these series (prometheus_client's text format: a counter
    `x` is TYPE'd as `x` and sampled as `x_total`); the fake has no queue and a KV use that
    follows the running requests, as its throughput line does."""
    labels = f'engine="0",model_name="{model}"'
    with stats.lock:
        running, prompt, generated = stats.running, stats.prompt_total, stats.generated_total
        h = stats.ttft
        buckets, count, total = list(h.counts), h.count, h.sum
    out = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{suffix}{{{labels}{extra}}} {float(v)}" for suffix, extra, v in samples)

    metric("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
           [("", "", running)])
    metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
           [("", "", 0)])
    metric("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.",
           [("", "", min(running * 0.017, 1.0))])
    metric("vllm:prompt_tokens", "counter", "Number of prefill tokens processed.",
           [("_total", "", prompt)])
    metric("vllm:generation_tokens", "counter", "Number of generation tokens processed.",
           [("_total", "", generated)])
    metric("vllm:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.",
           [("_bucket", f',le="{le}"', n) for le, n in zip(TTFT_BUCKETS, buckets)]
           + [("_bucket", ',le="+Inf"', count), ("_count", "", count), ("_sum", "", total)])
    return "\n".join(out) + "\n"


# --- HTTP --------------------------------------------------------------------------------------

def _tokens(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text)


def _prompt_tokens(messages: list[dict]) -> int:
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // 4 + 4 * len(messages) + 2


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-vllm/0"
    cfg: argparse.Namespace  # set by serve()
    stats: Stats
    counter = 0

    def log_message(self, fmt: str, *args) -> None:  # uvicorn-style access log on stdout
        print(f"(APIServer pid={os.getpid()}) INFO:     {self.client_address[0]}:{self.client_address[1]} "
              f"- \"{self.requestline}\" {args[1] if len(args) > 1 else ''}", flush=True)

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str) -> None:
        self._json(status, {"error": {"message": message, "type": kind, "code": status}})

    def _authorized(self) -> bool:
        if not self.cfg.api_keys or not self.path.startswith("/v1"):
            return True
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer ") and header[7:] in self.cfg.api_keys:
            return True
        self._json(401, {"error": "Unauthorized"})
        return False

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif not self._authorized():
            return
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "vllm", "root": self.cfg.model_tag,
                 "max_model_len": self.cfg.max_model_len} for name in self.cfg.served_model_name]})
        elif path == "/metrics":
            data = metrics_text(self.stats, self.cfg.served_model_name[0]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == "/version":
            self._json(200, {"version": "0.0.0+fake"})
        else:
            self._error(404, f"no route {path}", "NotFoundError")

    def do_POST(self) -> None:
        if not self._authorized():
            return
        if self.path.split("?")[0] != "/v1/chat/completions":
            self._error(404, f"no route {self.path}", "NotFoundError")
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            messages = body["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
        except (ValueError, KeyError, TypeError) as e:
            self._error(400, f"bad request: {e}", "BadRequestError")
            return
        model = body.get("model") or self.cfg.served_model_name[0]
        if model not in self.cfg.served_model_name:
            self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
            return
        prompt_tokens = _prompt_tokens(messages)
        if self.cfg.max_model_len and prompt_tokens > self.cfg.max_model_len:
            self._error(400, f"This model's maximum context length is {self.cfg.max_model_len} tokens. "
                             f"However, your request has {prompt_tokens} input tokens.", "BadRequestError")
            return
        self._complete(body, model, messages, prompt_tokens)

    def _complete(self, body: dict, model: str, messages: list[dict], prompt_tokens: int) -> None:
        kwargs = {**(self.cfg.default_chat_template_kwargs or {}), **(body.get("chat_template_kwargs") or {})}
        template = {**TEMPLATE_DEFAULTS, **kwargs}
        # The template prints the effort (capitalized) into the system turn only when thinking.
        effort_line = (f"Reasoning Effort: {str(template['reasoning_effort']).capitalize()}"
                       if template["enable_thinking"] is not False else None)
        record("chat", template_kwargs=kwargs, effort_line=effort_line,
               **{k: body[k] for k in ("temperature", "top_p", "max_tokens", "stream") if k in body})
        thinking = bool(self.cfg.reasoning_parser) and template["enable_thinking"] is not False
        if os.environ.get("FAKE_VLLM_FAIL") == "garbage":
            content = "lorem " * 60
        else:
            content = answer(messages)
        r_toks = _tokens(reasoning_for(messages)) if thinking else []
        c_toks = _tokens(content)
        finish = "stop"
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(limit, int) and limit < len(r_toks) + len(c_toks):
            r_toks, c_toks, finish = r_toks[:limit], c_toks[:max(0, limit - len(r_toks))], "length"
        Handler.counter += 1
        rid = f"chatcmpl-fake-{Handler.counter}"
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(r_toks) + len(c_toks),
                 "total_tokens": prompt_tokens + len(r_toks) + len(c_toks)}
        delay = float(os.environ.get("FAKE_VLLM_TOKEN_DELAY", "0.002"))
        self.stats.add(prompt=prompt_tokens, running=1)
        try:
            prefill = prompt_tokens / float(os.environ.get("FAKE_VLLM_PREFILL_TPS", "200000"))
            time.sleep(prefill)
            with self.stats.lock:
                self.stats.ttft.observe(prefill + delay)
            if body.get("stream"):
                self._stream(rid, model, r_toks, c_toks, finish, usage, delay, body)
            else:
                for _ in range(len(r_toks) + len(c_toks)):
                    time.sleep(delay)
                self.stats.add(generated=len(r_toks) + len(c_toks))
                message = {"role": "assistant", "content": "".join(c_toks).strip() or None, "tool_calls": []}
                if thinking:
                    message["reasoning"] = "".join(r_toks).strip() or None
                self._json(200, {"id": rid, "object": "chat.completion", "created": int(time.time()),
                                 "model": model, "usage": usage, "choices": [
                                     {"index": 0, "message": message, "finish_reason": finish}]})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        finally:
            self.stats.add(running=-1)

    def _stream(self, rid, model, r_toks, c_toks, finish, usage, delay, body) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

        def send(choices: list, **extra) -> None:
            chunk = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": model, "choices": choices, **extra}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for field, toks in (("reasoning", r_toks), ("content", c_toks)):
            for tok in toks:
                time.sleep(delay)
                self.stats.add(generated=1)
                send([{"index": 0, "delta": {field: tok}, "finish_reason": None}])
        send([{"index": 0, "delta": {}, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            send([], usage=usage)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


# --- boot ---------------------------------------------------------------------------------------

def boot_log(cfg: argparse.Namespace) -> None:
    shown = ["****" if a in (cfg.api_key or []) else a for a in cfg.raw_argv]
    log("INFO", "fake vLLM (a test double, not a model) args: " + " ".join(shown))
    log("INFO", f"served model names: {cfg.served_model_name}; api key: "
                f"{'required' if cfg.api_keys else 'none'}")
    if os.environ.get("FAKE_VLLM_FAIL") == "boot":
        log("ERROR", "EngineCore failed to start (fake fault FAKE_VLLM_FAIL=boot)")
        print("RuntimeError: Engine core initialization failed. See root cause above.", flush=True)
        sys.exit(1)
    if cfg.kv_cache_dtype == "fp8":
        log("INFO", "kv_cache_dtype=fp8: MLA KV cache stored as fp8 (fp8_ds_mla); "
                    "no k/v scales in the checkpoint, using scale 1.0")
    else:
        log("WARNING", f"kv_cache_dtype={cfg.kv_cache_dtype}: on SM120 only fp8 gives coherent output")
    pattern = (cfg.hf_overrides or {}).get("index_topk_pattern") or ""
    if not pattern:
        log("WARNING", "no index_topk_pattern: every layer builds a full sparse MLA indexer")
    skips = [i for i, c in enumerate(pattern) if c == "S"]
    wrong = os.environ.get("FAKE_VLLM_WRONG_SKIPS")
    if wrong is not None:
        skips = list(range(int(wrong)))
    # Every worker builds its shard of the model and logs its own skip lines, as real vLLM
    # does at tensor parallelism > 1 (one process per GPU; the double runs one process).
    tp = cfg.tensor_parallel_size or 1
    for rank in range(tp):
        worker = f"Worker_TP{rank} pid={os.getpid() + 1 + rank}" if tp > 1 else None
        for layer in skips:
            log("INFO", f"{SKIP_LINE} for layer {layer} "
                        f"(pattern {pattern[layer] if layer < len(pattern) else '?'})", worker)
    if cfg.speculative_config:
        log("INFO", f"speculative decoding: {json.dumps(cfg.speculative_config)}")
    log("INFO", f"compilation config: {json.dumps(cfg.compilation_config)}; "
                f"cudagraph capture sizes up to {cfg.max_cudagraph_capture_size}")
    delay = float(os.environ.get("FAKE_VLLM_BOOT_DELAY", "0"))
    end = time.monotonic() + delay
    while time.monotonic() < end:
        log("INFO", f"Compiling and capturing CUDA graphs (fake), {end - time.monotonic():.0f}s left")
        time.sleep(min(1.0, max(end - time.monotonic(), 0)))


# --- the compile and its caches -----------------------------------------------------------------

# What a real compile does not depend on: where it listens, who may call it, API-level parsing.
NOT_IN_COMPILE_KEY = {"--host", "--port", "--api-key", "--served-model-name", "--chat-template",
                      "--default-chat-template-kwargs", "--reasoning-parser", "--tool-call-parser",
                      "--enable-auto-tool-choice"}
CACHE_LOCATIONS = ("VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE", "CUTE_DSL_CACHE_DIR")
ENTRY = "fake-vllm-compiled-{key}.json"  # one per key and location, holding {"key": key}


def compile_key(cfg: argparse.Namespace) -> str:
    import hashlib

    kept, skipping = [], False
    for arg in cfg.raw_argv[2:]:  # past "serve <model>": where the weights sit is not in it
        if arg.startswith("-"):
            skipping = arg.split("=", 1)[0] in NOT_IN_COMPILE_KEY
        if not skipping:  # a left-out flag goes with its value(s)
            kept.append(arg)
    parts = {"flags": kept, "arch": os.environ.get("CUTE_DSL_ARCH", ""),
             "gpu": os.environ.get("FAKE_VLLM_GPU_NAME", "NVIDIA RTX PRO 6000 Blackwell"),
             "build": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def compile_with_cache(cfg: argparse.Namespace) -> dict:
    """Load what the cache locations hold for this boot's key, compile (sleep) the rest."""
    key = compile_key(cfg)
    hit, miss = [], []
    for var in CACHE_LOCATIONS:
        d = os.environ.get(var)
        try:
            found = d and json.loads((Path(d) / ENTRY.format(key=key)).read_text()).get("key") == key
        except (OSError, ValueError, AttributeError):
            found = False
        (hit if found else miss).append(var)
    total = float(os.environ.get("FAKE_VLLM_COMPILE_S", "2"))
    if miss:
        log("INFO", f"compile cache: miss for {', '.join(miss)} (key {key}): compiling kernels "
                    f"and capturing CUDA graphs (fake, {total * len(miss) / len(CACHE_LOCATIONS):.1f}s)")
        time.sleep(total * len(miss) / len(CACHE_LOCATIONS))
    else:
        log("INFO", f"compile cache: hit (key {key}): loaded compiled kernels from {', '.join(hit)}")
    kept = []
    for var in miss:
        d = os.environ.get(var)
        if not d or not Path(d).parent.is_dir():  # no volume there: nothing survives this boot
            continue
        Path(d).mkdir(exist_ok=True)
        (Path(d) / ENTRY.format(key=key)).write_text(json.dumps({"key": key}) + "\n")
        kept.append(var)
    if kept:
        log("INFO", f"compile cache: wrote {', '.join(kept)} (key {key})")
    tp = cfg.tensor_parallel_size or 1
    if tp > 1:
        tune = float(os.environ.get("FAKE_VLLM_AUTOTUNE_S", "0.5"))
        log("INFO", f"FlashInfer autotune at {tp} ranks (fake, {tune:.1f}s): results are not "
                    "persisted with more than one rank")
        time.sleep(tune)
    result = {"key": key, "hit": hit, "miss": miss, "kept": kept}
    record("compile", **result)
    return result


def serve(cfg: argparse.Namespace) -> int:
    host = cfg.host or "0.0.0.0"
    server_cls = type("Server", (ThreadingHTTPServer,), {
        "daemon_threads": True, "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    handler = type("BoundHandler", (Handler,), {"cfg": cfg, "stats": Stats()})
    try:
        httpd = server_cls((host, cfg.port or 8000), handler)
    except OSError as e:
        log("ERROR", f"cannot listen on {host}:{cfg.port}: {e}")
        return 1
    interval = float(os.environ.get("FAKE_VLLM_STATS_INTERVAL", "2"))

    def stats_loop() -> None:
        while True:
            time.sleep(interval)
            handler.stats.report()

    threading.Thread(target=stats_loop, daemon=True).start()
    log("INFO", f"Starting vLLM API server on http://{host}:{httpd.server_address[1]}")
    log("INFO", "Application startup complete.")
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        log("INFO", "Shutting down")
        httpd.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    env = {k: ("****" if k == "VLLM_API_KEY" else v) for k, v in os.environ.items()}
    record("boot", argv=cfg.raw_argv, env=env)
    if os.environ.get("FAKE_VLLM_IMAGE") == "1" and os.environ.get(PROFILE_MARK) != "loaded":
        log("ERROR", "the image's profile scripts did not run (no login shell?): start the "
                     "container with `/bin/bash -lc`, as the recipe does")
        return 1
    boot_log(cfg)
    compile_with_cache(cfg)
    return serve(cfg)


if __name__ == "__main__":
    sys.exit(main())
