"""Canned "skills" of the fake vLLM server (part of the serving TEST DOUBLE; not a model).

Just enough to give the box kit's smoke test and harnesses the answers their checks look for,
computed from the conversation rather than looked up by exact prompt: echo a requested
all-caps word (READY), recall "the/my X is Y" facts (needles, multi-turn memory, the latest
statement winning as with a correction) and say so when a fact asked for was never given,
add up or subtract such facts, answer "who was the X on day N" from "From day D, the X is Y"
entries (and summarise them in order), resolve "... in your previous answer" to that answer,
order "A is older than B" chains, do one arithmetic operation, and a few fixed shapes (a
Python function, an ASCII triangle, a short explanation). Anything else gets a deterministic
short answer.
"""

from __future__ import annotations

import re

_FACT = re.compile(r"\b(?:the|my) ((?:[\w']+ ){0,5}?[\w']+) is ([\w-]+)", re.I)
_QUESTION = re.compile(r"\bwhat is (?:the|my) ([\w' ]+?)\?", re.I)
_TWO_FACTS = re.compile(r"\b(sum|difference) (?:of|between) (?:the |my )?([\w' ]+?) and (?:the |my )?([\w' ]+?)\?",
                        re.I)
_ECHO_WORD = re.compile(r"\b(?i:reply|answer|respond)\b[^.?!]*?\b([A-Z][A-Z0-9_]+)\b")
_ORDER = re.compile(r"\b(\w+) is (older|taller|faster) than (\w+)", re.I)
_ARITH = re.compile(r"(-?\d+)\s*([*x×+/-])\s*(-?\d+)")
_FUNCTION = re.compile(r"\bfunction (?:named |called )?(\w+)", re.I)
_EXPLAIN = re.compile(r"\bexplain (?:the |a |an )?(.+?)[.?!]?$", re.I)
_TOTAL = re.compile(r"\b(?:sum|total) of (.+?)\?", re.I)
_DATED = re.compile(r"\bfrom day (\d+), the ((?:[\w'-]+ ){0,4}?[\w'-]+) is ([\w-]+)", re.I)
_ON_DAY = re.compile(r"\b(?:who|what) (?:was|is) the ((?:[\w'-]+ ){0,4}?[\w'-]+) on day (\d+)\b", re.I)
_PREVIOUS = re.compile(r"\bthe (?:person|name|number|value) (?:you (?:named|gave) )?in your previous answer", re.I)
_LOWEST = {"older": "youngest", "taller": "shortest", "faster": "slowest"}
_HIGHEST = {"older": "oldest", "taller": "tallest", "faster": "fastest"}


def _text(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # OpenAI content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _facts(messages: list[dict]) -> dict[str, str]:
    facts: dict[str, str] = {}
    for m in messages:
        if m.get("role") in ("user", "system"):
            for key, value in _FACT.findall(_text(m)):
                facts[key.lower()] = value  # later statements win
    return facts


def _dated(messages: list[dict]) -> dict[str, list[tuple[int, str]]]:
    """{key: [(from day, value), ...] sorted by day} of "From day D, the X is Y" entries."""
    out: dict[str, list[tuple[int, str]]] = {}
    for m in messages:
        if m.get("role") in ("user", "system"):
            for day, key, value in _DATED.findall(_text(m)):
                out.setdefault(key.lower(), []).append((int(day), value))
    return {k: sorted(v) for k, v in out.items()}


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and re.fullmatch(r"-?\d+", value) else None


def answer(messages: list[dict]) -> str:
    """The fake's reply to a conversation (deterministic)."""
    users = [m for m in messages if m.get("role") == "user"]
    last = _text(users[-1]) if users else ""
    if m := _ECHO_WORD.search(last):
        return m.group(1)
    if _PREVIOUS.search(last):
        at = max(i for i, m in enumerate(messages) if m.get("role") == "user")
        before = [m for m in messages[:at] if m.get("role") == "assistant"]
        if before:
            last = _PREVIOUS.sub(_text(before[-1]).strip().rstrip("."), last)
    facts = _facts(messages)
    dated = _dated(messages)
    if m := _ON_DAY.search(last):
        entries = [v for day, v in dated.get(m.group(1).lower(), []) if day <= int(m.group(2))]
        if entries:
            return entries[-1]
    for key, entries in dated.items():
        if key in last.lower() and ("summar" in last.lower() or " each " in last.lower()):
            return "The " + key + " was " + ", then ".join(f"{v} from day {d}" for d, v in entries) + "."
    if m := _TOTAL.search(last):
        keys = [re.sub(r"^(?:the|my) ", "", k.strip(), flags=re.I).lower()
                for k in re.split(r",\s*(?:and\s+)?|\s+and\s+", m.group(1))]
        values = [_number(facts.get(k)) for k in keys]
        if len(values) >= 2 and None not in values:
            return str(sum(values))
    if m := _TWO_FACTS.search(last):
        a, b = _number(facts.get(m.group(2).lower())), _number(facts.get(m.group(3).lower()))
        if a is not None and b is not None:
            return str(a + b if m.group(1).lower() == "sum" else abs(a - b))
    if m := _QUESTION.search(last):
        key = m.group(1).lower()
        if key in facts:
            return facts[key]
        return f"The conversation does not state the {key}."
    if pairs := _ORDER.findall(last):
        bigger = {a for a, _, _ in pairs}
        smaller = {b for _, _, b in pairs}
        relation = pairs[0][1].lower()
        if _LOWEST[relation] in last.lower() and (low := smaller - bigger):
            return sorted(low)[0]
        if _HIGHEST[relation] in last.lower() and (high := bigger - smaller):
            return sorted(high)[0]
    if m := _ARITH.search(last):
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        result = {"+": a + b, "-": a - b, "*": a * b, "x": a * b, "×": a * b,
                  "/": a // b if b else 0}[op]
        return str(result)
    if m := _FUNCTION.search(last):
        return _function(m.group(1))
    if "ascii" in last.lower():
        rows = "\n".join(" " * (4 - i) + "*" * (2 * i + 1) for i in range(5))
        return f"```\n{rows}\n```"
    if m := _EXPLAIN.search(last.strip()):
        topic = m.group(1)
        return (f"The {topic} asks a question that has no quick answer. Thinking it through means "
                "comparing what changes with what stays the same, and deciding which of the two "
                "matters more for the thing we care about.")
    return f"This is the fake vLLM test double answering: {' '.join(last.split()[:8])}"


def reasoning_for(messages: list[dict]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    question = " ".join(_text(users[-1]).split()[-24:]) if users else ""
    return (f"The request ends with: {question} I will work out the answer step by step, "
            "check it once, and then reply.")


def _function(name: str) -> str:
    if name.lower() == "fizzbuzz":
        body = ("def fizzbuzz(n):\n    out = []\n    for i in range(1, n + 1):\n"
                "        if i % 15 == 0:\n            out.append(\"FizzBuzz\")\n"
                "        elif i % 3 == 0:\n            out.append(\"Fizz\")\n"
                "        elif i % 5 == 0:\n            out.append(\"Buzz\")\n"
                "        else:\n            out.append(str(i))\n    return out")
    else:
        body = f"def {name}(*args):\n    raise NotImplementedError"
    return f"```python\n{body}\n```"
