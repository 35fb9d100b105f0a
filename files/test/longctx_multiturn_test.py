#!/usr/bin/env python3
"""Long-context, multi-turn reasoning battery for this GLM-5.2 box (python3 stdlib only).

One ~100k-token document with facts planted at several depths (one of them corrected near
the end), then six turns in one conversation: recall at different depths, a correction that
overrides an earlier statement, arithmetic across two facts, and recall of something the user
said in an earlier turn. Every turn re-sends the whole conversation, so the prefix cache and
long prefills both show in the per-turn TTFT / prefill / decode figures. Exit status 0 when
every turn passes.

  python3 test/longctx_multiturn_test.py [--ctx-tokens 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys

from harnesslib import Runner, add_common_args, has_any, has_number, haystack

FACTS = [
    (0.08, "The harbour gate code is 4821."),
    (0.35, "The archive room number is 317."),
    (0.60, "The courier's password is BLUEFINCH."),
    (0.85, "The vault depth in metres is 96."),
    (0.93, "Correction: the harbour gate code is 5930."),
]

TURNS = [
    ("recall-35%", "Note for later: my locker number is 58. Now, according to the document, what "
                   "is the archive room number? Answer with just the number.", has_number(317)),
    ("recall-60%", "What is the courier's password? Answer with the single word.", has_any("bluefinch")),
    ("correction", "What is the harbour gate code? The document corrects it at some point: give the "
                   "final, corrected value. Answer with just the number.", has_number(5930)),
    ("sum", "What is the sum of the archive room number and the vault depth in metres? "
            "Answer with just the number.", has_number(317 + 96)),
    ("difference", "What is the difference between the harbour gate code and the archive room number? "
                   "Use the corrected gate code. Answer with just the number.", has_number(5930 - 317)),
    ("memory", "Earlier in this conversation I gave you a number of my own. What is my locker number? "
               "Answer with just the number.", has_number(58)),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Long-context multi-turn battery for the GLM-5.2 box.")
    p.add_argument("--ctx-tokens", type=int, default=100000, help="document size (default 100000)")
    add_common_args(p)
    args = p.parse_args(argv)
    run = Runner(args, "longctx multiturn")
    run.say(f"longctx multiturn (~{args.ctx_tokens} tokens, {len(TURNS)} turns) against "
            f"{run.target.base_url} (model {run.target.model or 'auto'})")
    doc = haystack(args.ctx_tokens, FACTS, seed=11)
    history = [{"role": "system", "content": "Answer questions about the document the user gives you."},
               {"role": "user", "content": f"Here is a document.\n\n<document>\n{doc}\n</document>\n\n"
                                           "I will ask you questions about it. Reply with READY."},
               {"role": "assistant", "content": "READY"}]
    for name, question, check in TURNS:
        history.append({"role": "user", "content": question})
        res = run.case(name, history, check)
        history.append({"role": "assistant", "content": res.content if res else ""})
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
