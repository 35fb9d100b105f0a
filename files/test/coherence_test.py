#!/usr/bin/env python3
"""Coherence checks for this GLM-5.2 box (python3 stdlib only).

  python3 test/coherence_test.py core    logic, math, code, philosophy, ascii, multi-turn
  python3 test/coherence_test.py long    needle-in-a-haystack recall in a ~64k-token prompt

A broken setup (no index pattern, wrong KV cache dtype) answers with garbage and fails these.
Requests stream with no max_tokens, sampled as the recipe's harness does (temperature 0.6 for
the chat cases, 0.0 for the needle); each case reports TTFT, prefill and decode tok/s.
Exit status 0 when every case passes.
"""

from __future__ import annotations

import argparse
import sys

from harnesslib import Runner, add_common_args, all_of, has_any, has_number, haystack

TEMPERATURE = {"core": 0.6, "long": 0.0}


def core(run: Runner) -> None:
    def ask(name, prompt, check):
        run.case(name, [{"role": "user", "content": prompt}], check)

    ask("logic", "Tom is older than Ann. Ann is older than Raj. Who is the youngest of the three? "
        "Answer with just the name.", has_any("raj"))
    ask("math", "What is 48 * 27? Answer with just the number.", has_number(1296))
    ask("code", "Write a Python function named fizzbuzz(n) that returns a list of strings for 1..n "
        "with the usual Fizz, Buzz and FizzBuzz rules. Reply with only the code.",
        all_of(has_any("def fizzbuzz"), has_any("FizzBuzz")))
    ask("philosophy", "In two or three sentences, explain the ship of Theseus thought experiment.",
        all_of(has_any("ship"), _min_words(15)))
    ask("ascii", "Draw a 5-line ASCII-art triangle made of '*' characters. Reply with only the drawing.",
        _star_lines(3))

    # Two turns: the second answer depends on the first exchange.
    history = [{"role": "user", "content": "Remember this: my favourite colour is teal. Reply with OK."}]
    first = run.case("multiturn-1", history, has_any("ok"))
    history += [{"role": "assistant", "content": first.content if first else "OK"},
                {"role": "user", "content": "What is my favourite colour? Answer with one word."}]
    run.case("multiturn-2", history, has_any("teal"))


def long(run: Runner, ctx_tokens: int) -> None:
    secret = "MAGENTA-OTTER-42"
    doc = haystack(ctx_tokens, [(0.6, f"The secret passphrase is {secret}.")])
    prompt = (f"Read the following document carefully.\n\n<document>\n{doc}\n</document>\n\n"
              "What is the secret passphrase? Answer with the passphrase only.")
    run.case(f"needle-{ctx_tokens // 1000}k", [{"role": "user", "content": prompt}], has_any(secret))


def _min_words(n: int):
    def check(content: str):
        return None if len(content.split()) >= n else f"expected at least {n} words"
    return check


def _star_lines(n: int):
    def check(content: str):
        lines = [ln for ln in content.splitlines() if "*" in ln]
        return None if len(lines) >= n else f"expected at least {n} lines of '*'"
    return check


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Coherence checks for the GLM-5.2 box.")
    p.add_argument("suite", choices=("core", "long"))
    p.add_argument("--ctx-tokens", type=int, default=64000, help="prompt size for 'long' (default 64000)")
    add_common_args(p)
    args = p.parse_args(argv)
    run = Runner(args, f"coherence {args.suite}", temperature=TEMPERATURE[args.suite])
    run.say(f"coherence {args.suite} against {run.target.base_url} (model {run.target.model or 'auto'}, "
            f"temperature {run.temperature})")
    if args.suite == "core":
        core(run)
    else:
        long(run, args.ctx_tokens)
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
