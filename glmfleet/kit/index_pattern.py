"""The DSA indexer pattern vLLM needs (pure).

vLLM reads `index_topk_pattern` (one F=full / S=shared-skip char per decoder layer), not the
checkpoint's `indexer_types`; without it every layer builds a full indexer and long-context
output turns to garbage. We derive the string from config.json when we can, else use the
recipe's validated value.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

NUM_LAYERS = 78  # GLM-5.2 decoder layers (3 dense + 75 MoE); the MTP layer is not counted
# The recipe's validated value: FFF, SSS, then FSSS x 18 (21 F, 57 S).
DEFAULT_PATTERN = "FFF" + "SSS" + "FSSS" * 18
assert len(DEFAULT_PATTERN) == NUM_LAYERS and DEFAULT_PATTERN.count("S") == 57

# How indexer_types entries map to the pattern's letters.
_FULL = {"full", "f", "dense", "compute"}
_SKIP = {"shared", "share", "skip", "s", "reuse", "none"}


def check_pattern(pattern: str, num_layers: int = NUM_LAYERS) -> str | None:
    """None if the pattern is well formed, else what is wrong with it."""
    if not re.fullmatch(r"[FS]+", pattern or ""):
        return f"a string of only F and S characters ({num_layers} of them, one per layer)"
    if len(pattern) != num_layers:
        return f"{num_layers} F/S characters, one per layer (got {len(pattern)})"
    if pattern[0] != "F":
        return "a pattern starting with F (layer 0 must compute its own indexer)"
    return None


def from_indexer_types(types: list[Any]) -> str:
    """Map config.json's indexer_types list to the F/S string; ValueError on unknown entries."""
    out = []
    for i, t in enumerate(types):
        key = str(t).strip().lower()
        if key in _FULL:
            out.append("F")
        elif key in _SKIP:
            out.append("S")
        else:
            raise ValueError(f"indexer_types[{i}] = {t!r}: expected one of {sorted(_FULL | _SKIP)}")
    return "".join(out)


def derive(config: Mapping[str, Any] | None, override: str | None = None) -> tuple[str, str]:
    """Return (pattern, where it came from). An override wins; a bad override is an error."""
    layers = int((config or {}).get("num_hidden_layers") or NUM_LAYERS)
    if override is not None:
        problem = check_pattern(override, layers)
        if problem:
            raise ValueError(f"index_topk_pattern override is malformed: expected {problem}")
        return override, "override"
    types = (config or {}).get("indexer_types")
    if types:
        pattern = from_indexer_types(list(types))
        problem = check_pattern(pattern, layers)
        if problem:
            raise ValueError(f"config.json indexer_types gives a bad pattern: expected {problem}")
        return pattern, "config.json indexer_types"
    return DEFAULT_PATTERN, "recipe default"


def skip_count(pattern: str) -> int:
    """Boot-log lines vLLM prints ('... skip sparse MLA indexer'): one per S layer."""
    return pattern.count("S")
