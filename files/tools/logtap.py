#!/usr/bin/env python3
"""Copy a log stream (stdin) to a size-rotated file and track peak throughput (stdlib only).

vLLM logs a line every few seconds while it works, e.g.
  Engine 000: Avg prompt throughput: 5120.4 tokens/s, Avg generation throughput: 58.9 tokens/s, ...
The highest prompt (prefill) and generation (decode) values seen are kept in a JSON file
{"peak_prefill_tps", "peak_decode_tps", "updated"}, read back at start so peaks survive
restarts of the container and of this tap, and rewritten atomically (temp file + rename).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

# Tolerant of the engine prefix, spacing, thousands separators and "tok/s" vs "tokens/s".
_NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"
PREFILL_RE = re.compile(r"Avg prompt throughput:\s*" + _NUMBER + r"\s*tok(?:en)?s?/s", re.I)
DECODE_RE = re.compile(r"Avg generation throughput:\s*" + _NUMBER + r"\s*tok(?:en)?s?/s", re.I)
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
LOG_MODE = 0o640  # serve.log (prompts, errors) and peak.json: owner and group only


def parse_throughput(line: str) -> tuple[float | None, float | None]:
    """(prefill tok/s, decode tok/s) found in one log line; None where absent."""
    line = ANSI_RE.sub("", line)
    found = []
    for regex in (PREFILL_RE, DECODE_RE):
        m = regex.search(line)
        found.append(float(m.group(1).replace(",", "")) if m else None)
    return found[0], found[1]


class Peaks:
    def __init__(self, path: Path):
        self.path = path
        self.prefill = self.decode = 0.0
        self.updated: str | None = None
        try:
            data = json.loads(path.read_text())
            self.prefill = float(data.get("peak_prefill_tps") or 0)
            self.decode = float(data.get("peak_decode_tps") or 0)
            self.updated = data.get("updated")
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as e:
            print(f"logtap: ignoring unreadable {path}: {e}", file=sys.stderr)

    def offer(self, prefill: float | None, decode: float | None) -> bool:
        """Take new values; True (and the file rewritten) when a peak rose."""
        rose = False
        if prefill is not None and prefill > self.prefill:
            self.prefill, rose = prefill, True
        if decode is not None and decode > self.decode:
            self.decode, rose = decode, True
        if rose:
            self.updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._save()
        return rose

    def _save(self) -> None:
        data = {"peak_prefill_tps": self.prefill, "peak_decode_tps": self.decode,
                "updated": self.updated}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".peak.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
            os.chmod(tmp, LOG_MODE)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class RotatingFile:
    """Append lines; when the file would pass max_bytes, shift log -> log.1 -> ... -> log.keep."""

    def __init__(self, path: Path, max_bytes: int, keep: int):
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self.f = _open_log(path)

    def write(self, data: bytes) -> None:
        if self.f.tell() and self.f.tell() + len(data) > self.max_bytes:
            self._rotate()
        self.f.write(data)
        self.f.flush()

    def _rotate(self) -> None:
        self.f.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.keep > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self.f = _open_log(self.path)


def _open_log(path: Path):
    """Append to ``path``, created (or tightened) to LOG_MODE: requests and errors in the
    log are for the host's operators, not every local user."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
    os.fchmod(fd, LOG_MODE)
    return os.fdopen(fd, "ab")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--peak", type=Path, required=True)
    p.add_argument("--max-bytes", type=int, default=100 * 1024 * 1024)
    p.add_argument("--keep", type=int, default=4)
    args = p.parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    peaks = Peaks(args.peak)
    out = RotatingFile(args.log, args.max_bytes, args.keep)
    for raw in sys.stdin.buffer:
        out.write(raw)
        if b"throughput" in raw:
            peaks.offer(*parse_throughput(raw.decode("utf-8", errors="replace")))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
