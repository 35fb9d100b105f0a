"""Shared plumbing for the kit's test harnesses (python3 stdlib only).

Each case streams one chat completion with no max_tokens at the suite's temperature (the
recipe's: 0.6 chat, 0.0 needle recall, 0.2 long multi-turn), keeps reasoning and content apart,
checks the content, and records TTFT, prefill tok/s and decode tok/s. `--json PATH` writes a
summary a fleet controller can collect; the exit status is 0 only when every case passed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from oai_client import ApiError, StreamResult, resolve_target, stream_chat  # noqa: E402

Check = Callable[[str], "str | None"]  # content -> None when fine, else what is wrong


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", help="server root (default: $BASE_URL, else BIND_HOST/PORT from .env)")
    p.add_argument("--model", help="model name (default: $MODEL, else the first of SERVED_MODEL_NAMES)")
    p.add_argument("--api-key", help="API key (default: $API_KEY, else .env; prefer those: argv shows in ps)")
    p.add_argument("--json", metavar="PATH", help="also write a JSON summary to PATH ('-' = stdout)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per request (default 3600)")


@dataclass
class CaseResult:
    name: str
    ok: bool
    detail: str
    ttft_s: float | None = None
    prefill_tps: float | None = None
    decode_tps: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_chars: int = 0
    content_chars: int = 0
    finish_reason: str | None = None
    wall_s: float = 0.0


class Runner:
    def __init__(self, args: argparse.Namespace, suite: str, temperature: float):
        self.args, self.suite, self.temperature = args, suite, temperature
        self.target = resolve_target(args.base_url, args.api_key, args.model)
        self.results: list[CaseResult] = []
        self.out = sys.stderr if args.json == "-" else sys.stdout  # keep stdout pure JSON

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def case(self, name: str, messages: list[dict], check: Check) -> StreamResult | None:
        """Run one streamed request; record and print the outcome. None if the request failed."""
        start = time.monotonic()
        try:
            res = stream_chat(self.target, messages, timeout=self.args.timeout, temperature=self.temperature)
        except (ApiError, OSError, ValueError) as e:
            self._record(CaseResult(name, False, f"request failed: {e}", wall_s=time.monotonic() - start))
            return None
        problem = coherence_problem(res.content) or check(res.content)
        if not res.content and res.reasoning:
            problem = f"empty content after {len(res.reasoning)} chars of reasoning ({res.finish_reason})"
        self._record(CaseResult(
            name, problem is None, problem or _excerpt(res.content), res.ttft_s, res.prefill_tps,
            res.decode_tps, res.prompt_tokens, res.completion_tokens, len(res.reasoning),
            len(res.content), res.finish_reason, time.monotonic() - start))
        return res

    def _record(self, r: CaseResult) -> None:
        self.results.append(r)
        metrics = "  ".join([
            f"ttft {_fmt(r.ttft_s, 's', 2)}",
            f"prefill {_fmt(r.prefill_tps, ' tok/s', 0)}",
            f"decode {_fmt(r.decode_tps, ' tok/s', 1)}",
            f"tokens {r.prompt_tokens or '?'}/{r.completion_tokens or '?'}",
        ])
        self.say(f"[{'PASS' if r.ok else 'FAIL'}] {r.name:<14} {metrics}  {r.detail}")

    def finish(self) -> int:
        failed = [r.name for r in self.results if not r.ok]
        self.say(f"{self.suite}: {len(self.results) - len(failed)}/{len(self.results)} passed"
                 + (f"; failed: {', '.join(failed)}" if failed else ""))
        if self.args.json:
            summary = {"suite": self.suite, "base_url": self.target.base_url,
                       "model": self.target.model, "temperature": self.temperature, "passed": len(self.results) - len(failed),
                       "failed": len(failed), "ok": not failed and bool(self.results),
                       "cases": [asdict(r) for r in self.results]}
            text = json.dumps(summary, indent=1)
            if self.args.json == "-":
                print(text)
            else:
                Path(self.args.json).write_text(text + "\n")
        return 0 if self.results and not failed else 1


def _fmt(value: float | None, unit: str, digits: int) -> str:
    return "?" if value is None else f"{value:.{digits}f}{unit}"


def _excerpt(text: str, n: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= n else flat[:n] + "...")


# --- checks --------------------------------------------------------------------------------

def has_any(*words: str) -> Check:
    def check(content: str) -> str | None:
        low = content.lower()
        return None if any(w.lower() in low for w in words) else f"expected one of {list(words)}"
    return check


def has_number(n: int) -> Check:
    def check(content: str) -> str | None:
        flat = re.sub(r"(?<=\d)[,_ ](?=\d{3}\b)", "", content)
        return None if re.search(rf"(?<!\d){n}(?!\d)", flat) else f"expected the number {n}"
    return check


def all_of(*checks: Check) -> Check:
    def check(content: str) -> str | None:
        return next((p for p in (c(content) for c in checks) if p), None)
    return check


def coherence_problem(text: str) -> str | None:
    """The tell-tales of a broken setup: replacement characters, or a phrase looping."""
    if "\ufffd" in text or sum(not (c.isprintable() or c in "\n\t") for c in text) > len(text) // 20:
        return "unprintable characters in the answer"
    words = text.split()
    if len(words) >= 40:
        grams: dict[tuple[str, ...], int] = {}
        for i in range(len(words) - 3):
            g = tuple(words[i:i + 4])
            grams[g] = grams.get(g, 0) + 1
        if max(grams.values()) > max(5, len(words) // 15):
            return "the answer keeps repeating itself"
    return None


# --- long prompts --------------------------------------------------------------------------

_WORDS = ("amber harbor lantern meadow copper river quiet northern orchard signal valley "
          "granite window morning ferry ledger winter compass garden thread bridge canvas "
          "market pebble silver engine cedar mirror basket island tower velvet candle "
          "station willow anchor beacon saddle timber cobalt marble harvest ribbon").split()
_VERBS = "carries follows passes crosses watches gathers reaches circles holds guards".split()


def haystack(tokens: int, facts: list[tuple[float, str]], seed: int = 7) -> str:
    """About `tokens` tokens of neutral filler with each fact sentence placed at its depth (0..1).

    Sized at ~1.2 tokens a word plus one for each full stop, near enough for common English
    words; the server's usage count in the report gives the exact figure.
    """
    rng = random.Random(seed)
    sentences: list[str] = []
    estimate = 0.0
    while estimate < tokens:
        w = [rng.choice(_WORDS) for _ in range(rng.randint(6, 12))]
        sentences.append(f"The {w[0]} {w[1]} {rng.choice(_VERBS)} the {' '.join(w[2:])}.")
        estimate += 1.2 * (len(w) + 3) + 1
    for depth, fact in sorted(facts, reverse=True):
        sentences.insert(int(len(sentences) * min(max(depth, 0.0), 1.0)), fact)
    paragraphs = [" ".join(sentences[i:i + 12]) for i in range(0, len(sentences), 12)]
    return "\n\n".join(paragraphs)
