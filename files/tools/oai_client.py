#!/usr/bin/env python3
"""A small OpenAI-compatible client for the box kit (python3 stdlib only).

Used by launch.sh (readiness probe, smoke test), chat.sh (streaming chat) and the test
harnesses. Where to connect comes from, in order: command-line options, the environment
(BASE_URL, API_KEY, MODEL), the kit's .env (BIND_HOST, PORT, API_KEY, SERVED_MODEL_NAMES).
The API key is read from the environment or .env, so it never has to appear in argv (`ps`).

  oai_client.py probe                one GET /v1/models: 0 answering, 2 key refused, 1 not yet
  oai_client.py smoke --thinking 1   ask for READY; 0 when the answer has it
  oai_client.py chat PROMPT          stream a chat completion, reasoning dimmed above the answer
                                     (PROMPT "-": read it from stdin; --hide-thinking: answer only)
  oai_client.py url                  print the base URL
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kitenv import read as read_dotenv  # noqa: E402  the kit's one .env reader

KIT_DIR = Path(__file__).resolve().parent.parent
SMOKE_PROMPT = "Reply with exactly one word: READY"
CHAT_TEMPERATURE = 0.6  # the recipe's chat sampling


@dataclass
class Target:
    base_url: str
    api_key: str | None
    model: str | None  # None: ask the server


def resolve_target(base_url: str | None = None, api_key: str | None = None,
                   model: str | None = None, kit_dir: Path = KIT_DIR) -> Target:
    dotenv = read_dotenv(kit_dir / ".env")
    if not base_url:
        base_url = os.environ.get("BASE_URL")
    if not base_url:
        host = dotenv.get("BIND_HOST", "")
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        base_url = f"http://{host}:{dotenv.get('PORT', '8000')}"
    base_url = base_url.rstrip("/")
    if base_url.endswith("/v1"):
        base_url = base_url[:-3]
    if api_key is None:
        api_key = os.environ.get("API_KEY", dotenv.get("API_KEY", ""))
    if not model:
        model = os.environ.get("MODEL") or dotenv.get("SERVED_MODEL_NAMES", "").split(",")[0] or None
    return Target(base_url, api_key or None, model)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _request(target: Target, path: str, body: dict | None, timeout: float):
    headers = {"Content-Type": "application/json"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(target.base_url + path, data=data, headers=headers,
                                 method="POST" if data is not None else "GET")
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:300]
        raise ApiError(e.code, detail) from None


def get_json(target: Target, path: str, timeout: float = 10) -> dict:
    with _request(target, path, None, timeout) as resp:
        return json.load(resp)


def post_json(target: Target, path: str, body: dict, timeout: float = 300) -> dict:
    with _request(target, path, body, timeout) as resp:
        return json.load(resp)


def model_of(target: Target, timeout: float = 10) -> str:
    if target.model:
        return target.model
    return get_json(target, "/v1/models", timeout)["data"][0]["id"]


@dataclass
class StreamResult:
    reasoning: str = ""
    content: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None  # request sent -> first reasoning or content text
    total_s: float = 0.0
    text_chunks: int = 0

    @property
    def prefill_tps(self) -> float | None:
        if self.prompt_tokens and self.ttft_s:
            return self.prompt_tokens / self.ttft_s
        return None

    @property
    def decode_tps(self) -> float | None:
        tokens = self.completion_tokens or self.text_chunks
        if self.ttft_s is None or tokens < 2 or self.total_s <= self.ttft_s:
            return None
        return (tokens - 1) / (self.total_s - self.ttft_s)


def _sse_data(resp) -> Iterator[dict]:
    for raw in resp:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def stream_chat(target: Target, messages: list[dict], timeout: float = 3600,
                on_text: Callable[[str, str], None] | None = None, **extra) -> StreamResult:
    """Stream one chat completion (no max_tokens unless given in extra).

    on_text(kind, text) sees each piece as it arrives; kind is "reasoning" or "content".
    """
    body = {"model": model_of(target), "messages": messages, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    result = StreamResult()
    start = time.monotonic()
    with _request(target, "/v1/chat/completions", body, timeout) as resp:
        for chunk in _sse_data(resp):
            usage = chunk.get("usage")
            if usage:
                result.prompt_tokens = usage.get("prompt_tokens")
                result.completion_tokens = usage.get("completion_tokens")
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                # vLLM names the field `reasoning` (newer) or `reasoning_content` (older).
                for kind, text in (("reasoning", delta.get("reasoning") or delta.get("reasoning_content")),
                                   ("content", delta.get("content"))):
                    if not text:
                        continue
                    if result.ttft_s is None:
                        result.ttft_s = time.monotonic() - start
                    result.text_chunks += 1
                    setattr(result, kind, getattr(result, kind) + text)
                    if on_text:
                        on_text(kind, text)
                if choice.get("finish_reason"):
                    result.finish_reason = choice["finish_reason"]
    result.total_s = time.monotonic() - start
    return result


# --- command line ----------------------------------------------------------------------------

def _cmd_probe(target: Target, args) -> int:
    try:
        names = [m["id"] for m in get_json(target, "/v1/models", timeout=args.timeout)["data"]]
    except ApiError as e:
        if e.status in (401, 403):
            print(f"the server refused the API key ({e.status}): check API_KEY in .env", file=sys.stderr)
            return 2
        return 1
    except (OSError, ValueError, KeyError):
        return 1
    print(" ".join(names))
    return 0 if names else 1


def _cmd_smoke(target: Target, args) -> int:
    body = {"model": model_of(target), "temperature": 0,
            "messages": [{"role": "user", "content": SMOKE_PROMPT}],
            # Thinking spends tokens before the answer: leave it room.
            "max_tokens": 4000 if args.thinking else 64}
    try:
        reply = post_json(target, "/v1/chat/completions", body, timeout=args.timeout)
        choice = reply["choices"][0]
        message = choice.get("message") or {}
    except (ApiError, OSError, ValueError, KeyError, IndexError) as e:
        print(f"smoke test request failed: {e}", file=sys.stderr)
        return 1
    content = (message.get("content") or "").strip()
    if "READY" in content:
        print(content)
        return 0
    reasoning = message.get("reasoning") or message.get("reasoning_content") or ""
    print(f"smoke test: expected READY in the answer, got content={content[:200]!r} "
          f"(finish_reason={choice.get('finish_reason')}, {len(reasoning)} chars of reasoning)",
          file=sys.stderr)
    return 1


def _cmd_chat(target: Target, args) -> int:
    prompt = sys.stdin.read() if args.prompt == ["-"] else " ".join(args.prompt)
    if not prompt.strip():
        print("chat: the prompt is empty", file=sys.stderr)
        return 2
    color = (sys.stdout.isatty() or os.environ.get("FORCE_COLOR")) and not os.environ.get("NO_COLOR")
    dim, reset = ("\033[2m", "\033[0m") if color else ("", "")
    state = {"kind": None}

    def show(kind: str, text: str) -> None:
        if kind == "reasoning" and args.hide_thinking:
            return
        if kind != state["kind"]:
            if kind == "reasoning":
                sys.stdout.write(f"{dim}[thinking]\n")
            elif state["kind"] == "reasoning":
                sys.stdout.write(f"{reset}\n\n")
            state["kind"] = kind
        sys.stdout.write(text)
        sys.stdout.flush()

    extra = {"temperature": args.temperature}
    if os.environ.get("MAX_TOKENS"):
        extra["max_tokens"] = int(os.environ["MAX_TOKENS"])
    try:
        result = stream_chat(target, [{"role": "user", "content": prompt}], on_text=show, **extra)
    except (ApiError, OSError) as e:
        print(f"{reset}\nchat failed: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(f"{reset}\n")
    stats = [f"ttft {result.ttft_s:.2f}s" if result.ttft_s is not None else "no output"]
    if result.decode_tps:
        stats.append(f"{result.decode_tps:.1f} tok/s")
    if args.hide_thinking and result.reasoning:
        stats.append(f"{len(result.reasoning)} chars of thinking hidden")
    if result.finish_reason == "length":
        stats.append("stopped at max_tokens (raise it: thinking spends tokens first)")
    print(f"{dim}({', '.join(stats)}){reset}", file=sys.stderr)
    return 0 if result.content or result.reasoning else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-url", help="server root, e.g. http://127.0.0.1:8000 (default: .env)")
    p.add_argument("--model", help="model name (default: first of SERVED_MODEL_NAMES)")
    sub = p.add_subparsers(dest="cmd", required=True)
    probe = sub.add_parser("probe")
    probe.add_argument("--timeout", type=float, default=5)
    smoke = sub.add_parser("smoke")
    smoke.add_argument("--thinking", type=int, choices=(0, 1), default=1)
    smoke.add_argument("--timeout", type=float, default=300)
    chat = sub.add_parser("chat")
    chat.add_argument("--hide-thinking", action="store_true", help="print the answer only")
    chat.add_argument("--temperature", type=float, default=CHAT_TEMPERATURE)
    chat.add_argument("prompt", nargs="+", help='the prompt ("-": read it from stdin)')
    sub.add_parser("url")
    args = p.parse_args(argv)
    target = resolve_target(args.base_url, None, args.model)
    if args.cmd == "url":
        print(target.base_url)
        return 0
    return {"probe": _cmd_probe, "smoke": _cmd_smoke, "chat": _cmd_chat}[args.cmd](target, args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
