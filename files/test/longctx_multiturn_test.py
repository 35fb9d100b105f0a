#!/usr/bin/env python3
"""Long-context, multi-turn reasoning battery for this GLM-5.2 box (python3 stdlib only).

One ~100k-token depot log with facts planted at several depths, then six turns in one
conversation, one of each kind: retrieval of a buried fact, arithmetic over three facts, a
date question over a rota that changes twice, a turn that builds on the previous answer, a
synthesis of several entries, and a question the log cannot answer (the pass is saying so).
Every turn re-sends the whole conversation, so the prefix cache and long prefills both show in
the per-turn TTFT / prefill / decode figures. Sampled at temperature 0.2, as the recipe's
battery is. Exit status 0 when every turn passes.

  python3 test/longctx_multiturn_test.py [--ctx-tokens 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import re
import sys

from harnesslib import Runner, add_common_args, all_of, has_any, has_number, haystack

TEMPERATURE = 0.2

FACTS = [
    (0.06, "The north depot pallet count is 140."),
    (0.14, "From day 4, the duty officer is Okafor."),
    (0.27, "The archive room number is 317."),
    (0.38, "The badge number of Okafor is 6120."),
    (0.47, "From day 19, the duty officer is Brandt."),
    (0.55, "The south depot pallet count is 95."),
    (0.66, "The badge number of Brandt is 7731."),
    (0.74, "From day 27, the duty officer is Lindqvist."),
    (0.83, "The east depot pallet count is 62."),
    (0.91, "The badge number of Lindqvist is 8054."),
]


def in_order(*words: str):
    def check(content: str):
        low = content.lower()
        at = [low.find(w.lower()) for w in words]
        return None if -1 not in at and at == sorted(at) else f"expected {', '.join(words)} in that order"
    return check


_NOT_STATED = ("not stated", "not mentioned", "does not", "doesn't", "no mention", "not specified",
               "not given", "not provided", "not included", "no information", "not in the", "cannot find",
               "can't find", "not found", "is not", "isn't")


def says_not_stated(content: str):
    if not any(p in content.lower() for p in _NOT_STATED):
        return "expected the answer to say the log does not state it"
    if re.search(r"\d{3,}", content):
        return "a number was given for something the log does not contain"
    return None


TURNS = [
    ("retrieval", "According to the log, what is the archive room number? Answer with just the number.",
     has_number(317)),
    ("arithmetic", "What is the total of the north depot pallet count, the south depot pallet count and the "
                   "east depot pallet count? Answer with just the number.", has_number(140 + 95 + 62)),
    ("temporal", "The duty officer changes over the days the log covers. Who was the duty officer on day 23? "
                 "Answer with just the surname.", has_any("brandt")),
    ("dependent", "What is the badge number of the person you named in your previous answer? "
                  "Answer with just the number.", has_number(7731)),
    ("synthesis", "In one sentence, summarise who served as the duty officer and from which day each of them "
                  "took over, in order.", all_of(in_order("Okafor", "Brandt", "Lindqvist"),
                                                 has_number(4), has_number(19), has_number(27))),
    ("not-in-log", "What is the serial number of the backup generator? If the log does not say, tell me so "
                   "instead of guessing.", says_not_stated),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Long-context multi-turn battery for the GLM-5.2 box.")
    p.add_argument("--ctx-tokens", type=int, default=100000, help="log size (default 100000)")
    add_common_args(p)
    args = p.parse_args(argv)
    run = Runner(args, "longctx multiturn", temperature=TEMPERATURE)
    run.say(f"longctx multiturn (~{args.ctx_tokens} tokens, {len(TURNS)} turns, temperature {TEMPERATURE}) "
            f"against {run.target.base_url} (model {run.target.model or 'auto'})")
    log = haystack(args.ctx_tokens, FACTS, seed=11)
    history = [{"role": "system", "content": "Answer questions about the depot log the user gives you. "
                                             "Use only what the log says."},
               {"role": "user", "content": f"Here is the depot log.\n\n<log>\n{log}\n</log>\n\n"
                                           "I will ask you questions about it. Reply with READY."},
               {"role": "assistant", "content": "READY"}]
    for name, question, check in TURNS:
        history.append({"role": "user", "content": question})
        res = run.case(name, history, check)
        history.append({"role": "assistant", "content": res.content if res else ""})
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
