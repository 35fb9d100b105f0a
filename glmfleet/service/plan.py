"""The service stage's decisions (pure: no pyinfra import).

- what the host runs now vs what the settings want -> `plan_change` (restart only when the
  runtime changed: compose file, the .env values the container reads, serve.sh, the image,
  the weights revision);
- whether the weights on the host are the verified, pinned ones -> `weights_problem`;
- whether a fresh boot is healthy -> `evaluate_boot_log` (one indexer-skip line per S of the
  index pattern, fp8 KV cache);
- in which order hosts change -> `Rollout` (a canary, then batches; stop at the first failure).

Host-side layout under service_dir (the kit files themselves sit directly in service_dir, so
`cd service_dir && ./launch.sh` works by hand):
    .glmfleet/applied.json      what the running container was started from (see Applied)
    .glmfleet/last-good/        the last kit that passed the health check, with its applied.json
    .glmfleet/staging/          new files are uploaded here (mode 0700), then renamed into place
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
from typing import Any, Iterable, Mapping

from glmfleet.kit.index_pattern import skip_count
from glmfleet.kit.render import ENV_SETTINGS, FILES_DIR, runtime_fingerprint, runtime_values
from glmfleet.report import clip, fit_table, image_cells

STATE_DIR = ".glmfleet"
APPLIED = f"{STATE_DIR}/applied.json"
LAST_GOOD = f"{STATE_DIR}/last-good"
STAGING = f"{STATE_DIR}/staging"
# Written by the weights stage (glmfleet/weights/hostside/verify.py, publish_result) only when
# every file matched the manifest of the pinned revision; its content is that revision.
WEIGHTS_MARKER = ".glmfleet/VERIFIED"
# A site's own compose override, merged by `docker compose` / `docker-compose` when present.
# Not ours: never written, never restarted for; reported so nobody is surprised by it.
SITE_OVERRIDE = "docker-compose.override.yml"
# The kit's own compose probe: the host facts run it too, so fleet and box always agree.
COMPOSE_PROBE = FILES_DIR / "tools" / "compose_probe.sh"

SKIP_MARK = "skip sparse MLA indexer"
# vLLM prints the engine config ("... kv_cache_dtype=fp8 ...") and its non-default args
# ("'kv_cache_dtype': 'fp8'"); either form shows which KV cache dtype is in use.
_KV_DTYPE = re.compile(r"""kv_cache_dtype['"]?\s*[=:]\s*['"]?([A-Za-z0-9_]+)""")
BOOT_LOG_GREP = f"{SKIP_MARK}|kv_cache_dtype"  # what to fetch from the boot log (grep -E)


def file_digest(content: str | bytes, mode: int) -> tuple[str, str]:
    data = content.encode() if isinstance(content, str) else content
    return hashlib.sha256(data).hexdigest(), f"{mode:o}"


@dataclasses.dataclass(frozen=True)
class Applied:
    """What a running container was started from; stored as .glmfleet/applied.json."""

    runtime: str             # recipe.runtime_fingerprint of the kit
    image: str               # image reference (repo:tag)
    image_id: str | None     # the local image id behind the reference when it started
    revision: str | None     # weights revision (the VERIFIED marker's content)
    values: dict | None = None  # kit.render.runtime_values: to name what changed (no secret)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | None) -> "Applied | None":
        try:
            d = json.loads(text or "")
            return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)})
        except (ValueError, TypeError, AttributeError):
            return None  # unreadable: treated as "never applied" (a restart puts it right)

    @property
    def short(self) -> str:
        return self.runtime[:12]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the host needs: "none", "files" (kit files only, no restart), "start" (the
    container is not running; nothing it runs changed) or "restart"."""

    action: str
    files: tuple[str, ...] = ()    # kit files to (re)write
    reasons: tuple[str, ...] = ()  # why a restart is due

    @property
    def changes(self) -> bool:
        return self.action != "none"

    def describe(self) -> str:
        parts = []
        if self.action == "restart":
            parts.append("restart: " + ", ".join(self.reasons))
        elif self.action == "start":
            parts.append("start: the container is not running")
        if self.files:
            parts.append("kit files: " + ", ".join(self.files))
        return "; ".join(parts) or "nothing to do"


def desired_applied(files: Mapping[str, tuple[str, int]], image: str, image_id: str | None,
                    revision: str | None) -> Applied:
    return Applied(runtime_fingerprint(files), image, image_id, revision, runtime_values(files))


def runtime_change(old: Mapping[str, str] | None, new: Mapping[str, str] | None) -> str:
    """Why the runtime fingerprint changed, naming the settings where it can."""
    if not old or not new:
        return "compose file / .env / serve.sh changed"
    named = []
    for key in sorted(set(old) | set(new), key=lambda k: (k not in ENV_SETTINGS, k)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "API_KEY":
            named.append(f"api_key ({a} -> {b})")
        elif key in ENV_SETTINGS:
            named.append(f"{ENV_SETTINGS[key]} ({clip(str(a), 20)} -> {clip(str(b), 20)})")
        else:
            named.append(f"{key} (the kit's own file changed)")
    return "settings changed: " + ", ".join(named) if named else "api_key (the API key changed)"


def plan_change(files: Mapping[str, tuple[str, int]], current: Mapping[str, tuple[str, str]],
                applied: Applied | None, want: Applied, container_running: bool) -> Plan:
    """Decide what to do. ``current``: {kit path: (sha256, octal mode)} of what is on the host;
    ``applied``: what the running container was started from (None: never by this tool).
    ``want.image_id`` None means the image is not on the host yet (it will be pulled)."""
    changed = tuple(p for p, (content, mode) in sorted(files.items())
                    if current.get(p) != file_digest(content, mode))
    reasons: list[str] = []
    if applied is None:
        reasons.append("first start by glmfleet")
    else:
        if applied.runtime != want.runtime:
            reasons.append(runtime_change(applied.values, want.values))
        if applied.image != want.image:
            reasons.append(f"image {applied.image} -> {want.image}")
        elif want.image_id is None or applied.image_id != want.image_id:
            reasons.append("new image build under the same tag")
        if applied.revision != want.revision:
            reasons.append(f"weights revision {applied.revision} -> {want.revision}")
    if reasons:
        return Plan("restart", changed, tuple(reasons))
    if not container_running:
        return Plan("start", changed)
    return Plan("files" if changed else "none", changed)


def weights_problem(marker: str | None, revision: str | None, weights_dir: str) -> str | None:
    """None when the weights stage verified exactly the pinned revision, else why not."""
    where = posixpath.join(weights_dir, WEIGHTS_MARKER)
    if revision is None:
        return "model_revision is not set: nothing to check the weights against"
    if not marker:
        return (f"the weights in {weights_dir} are not verified ({where} is missing): run the "
                "weights stage (download + hash check) first; the service was not started")
    if marker.strip() != revision:
        return (f"the weights in {weights_dir} were verified for revision {marker.strip()}, not "
                f"the pinned {revision}: run the weights stage for the pinned revision first; "
                "the service was not started")
    return None


@dataclasses.dataclass(frozen=True)
class BootCheck:
    ok: bool
    skip_lines: int
    expected_skips: int
    kv_dtype: str | None
    problems: tuple[str, ...]
    workers: int = 0  # worker processes whose lines carry a prefix (0: none did)

    def describe(self) -> str:
        if self.ok:
            each = f"; the same from each of {self.workers} workers" if self.workers else ""
            return f"boot log: {self.expected_skips} indexer-skip lines (= S count), fp8 KV cache{each}"
        return "; ".join(self.problems)


# A worker process's line prefix: "(Worker_TP0 pid=1356725)", older builds "(VllmWorker rank=0 pid=...)".
_WORKER = re.compile(r"\((?:Worker_TP(\d+)|VllmWorker rank=(\d+)) pid=\d+\)")


def evaluate_boot_log(lines: Iterable[str], pattern: str, workers: int | None = None) -> BootCheck:
    """Check the lines of one boot (grep'ed for BOOT_LOG_GREP) against the index pattern.

    With tensor parallelism every worker builds the model and logs its own skip lines, each
    prefixed with the worker's name: then each worker must log one per S (and, given
    ``workers``, that many workers must). Lines with no worker prefix (one process, or a
    build that does not prefix) are counted together."""
    skips, dtypes = 0, []
    per_worker: dict[int, int] = {}
    for line in lines:
        if SKIP_MARK in line:
            m = _WORKER.search(line)
            if m:
                rank = int(m.group(1) or m.group(2))
                per_worker[rank] = per_worker.get(rank, 0) + 1
            else:
                skips += 1
        dtypes += _KV_DTYPE.findall(line)
    expected = skip_count(pattern)
    problems = []
    if per_worker:
        total = sum(per_worker.values())
        wrong = {r: n for r, n in sorted(per_worker.items()) if n != expected}
        missing = [r for r in range(workers or 0) if r not in per_worker]
        if wrong or missing:
            said = ", ".join([f"worker TP{r}: {n}" for r, n in wrong.items()]
                             + [f"worker TP{r}: none" for r in missing])
            problems.append(f"boot log has the wrong number of '{SKIP_MARK}' lines ({said}), "
                            f"expected {expected} from each worker (one per S of "
                            "index_topk_pattern): the indexer pattern did not take effect, long "
                            "prompts would come out as garbage")
    else:
        total = skips
        if skips != expected:
            problems.append(f"boot log has {skips} '{SKIP_MARK}' lines, expected {expected} (one per S "
                            "of index_topk_pattern): the indexer pattern did not take effect, long "
                            "prompts would come out as garbage")
    kv = dtypes[-1] if dtypes else None
    if kv is None:
        problems.append("boot log does not say which KV cache dtype is in use (expected fp8)")
    elif not kv.startswith("fp8"):
        problems.append(f"KV cache dtype is {kv}, not fp8: output would be garbage on SM120")
    return BootCheck(not problems, total, expected, kv, tuple(problems), len(per_worker))


def endpoint(bind_address: str, port: int, hostname: str) -> str:
    """Where clients reach the API (the OpenAI base URL)."""
    if bind_address in ("0.0.0.0", "::"):
        host = hostname
    elif bind_address.startswith("127.") or bind_address == "::1":
        return f"http://{'[::1]' if ':' in bind_address else bind_address}:{port}/v1 (loopback, on the host)"
    else:
        host = bind_address
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


# --- host facts ------------------------------------------------------------------------------

def facts_command(service_dir: str, weights_dir: str, image: str, service_name: str,
                  kit_paths: Iterable[str]) -> str:
    """One read-only POSIX sh command printing key=value lines (parse_service_facts): the
    weights marker and config.json, each kit file's sha256 and mode (hashes only: .env may
    hold the API key), what the container was started from, the last good kit, Docker,
    compose, the image id, the container, the peak throughput."""
    import shlex

    q = shlex.quote
    files = " ".join(q(p) for p in sorted(kit_paths))
    return f"""
sd={q(service_dir)}; wd={q(weights_dir)}; img={q(image)}; name={q(service_name)}
b64() {{ base64 -w0 < "$1" 2>/dev/null; echo; }}
printf 'verified=%s\\n' "$(head -c 256 "$wd/{WEIGHTS_MARKER}" 2>/dev/null | tr -d '\\n')"
if [ -f "$wd/config.json" ] && [ "$(wc -c < "$wd/config.json")" -le 4194304 ]; then
  printf 'config_json='; b64 "$wd/config.json"; fi
for f in {files}; do
  if [ -f "$sd/$f" ]; then
    printf 'file=%s|%s|%s\\n' "$f" "$(sha256sum < "$sd/$f" | cut -c1-64)" "$(stat -c %a "$sd/$f")"
  fi
done
if [ -f "$sd/{APPLIED}" ]; then printf 'applied='; b64 "$sd/{APPLIED}"; fi
if [ -f "$sd/{LAST_GOOD}/applied.json" ]; then printf 'last_good='; b64 "$sd/{LAST_GOOD}/applied.json"; fi
if [ -f "$sd/logs/peak.json" ]; then printf 'peak='; b64 "$sd/logs/peak.json"; fi
if [ -f "$sd/{SITE_OVERRIDE}" ]; then echo override=1; fi
if command -v docker >/dev/null 2>&1; then
  v=$(docker version -f '{{{{.Server.Version}}}}' 2>/dev/null) || v=
  echo "docker=${{v:-down}}"
  if [ -n "$v" ]; then
    echo "image_id=$(docker image inspect -f '{{{{.Id}}}}' "$img" 2>/dev/null)"
    c=$(docker container inspect -f '{{{{.Id}}}}|{{{{.State.Running}}}}|{{{{.State.StartedAt}}}}|{{{{.Image}}}}|{{{{.RestartCount}}}}' "$name" 2>/dev/null) \\
      && echo "container=$c"
  fi
else
  echo docker=absent
fi
c=$(sh -c {q(COMPOSE_PROBE.read_text())}) && echo "compose=$c"
true
"""


def parse_service_facts(lines: Iterable[str]) -> dict[str, Any]:
    """Parse the key=value output of the ServiceFacts command (glmfleet/ops/service.py)."""
    import base64

    out: dict[str, Any] = {"files": {}, "verified": None, "config_json": None, "applied": None,
                           "last_good": None, "docker": None, "compose": None, "image_id": None,
                           "container": None, "peak": None, "override": False}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "file":
            path, _, rest = value.partition("|")
            sha, _, mode = rest.partition("|")
            out["files"][path] = (sha, mode)
        elif key in ("config_json", "applied", "last_good", "peak"):
            try:
                out[key] = base64.b64decode(value).decode()
            except ValueError:
                out[key] = None
        elif key == "container":
            parts = value.split("|")
            if len(parts) >= 5:
                out["container"] = {"id": parts[0], "running": parts[1] == "true",
                                    "started_at": parts[2], "image_id": parts[3],
                                    "restarts": parts[4]}
        elif key == "override":
            out["override"] = value == "1"
        elif key in out:
            out[key] = value or None
    return out


def peak_decode(peak_json: str | None) -> float | None:
    try:
        value = json.loads(peak_json or "").get("peak_decode_tps")
        return float(value) if value is not None else None
    except (ValueError, TypeError, AttributeError):
        return None


# --- rollout ---------------------------------------------------------------------------------

class Rollout:
    """A canary, then batches of ``batch_size``; the first failure stops it.

    Pure bookkeeping, shared by every host of one run on the controller. Each host *arrives*
    once it knows whether it needs a change. Hosts needing one get a place in the sequence:
    those that arrive together are *sealed* in inventory order (``position``), a later
    arrival goes after them. The first in the sequence is the canary; then consecutive
    groups of batch_size. A host may go when every host of the earlier batches finished OK;
    once any finished badly, every host that has not started is told to stop."""

    def __init__(self, batch_size: int):
        self.batch_size = max(1, batch_size)
        self.sequence: list[str] = []
        self.position: dict[str, int] = {}
        self.state: dict[str, str] = {}  # arrived|running|ok|failed|skipped|unchanged|dropped
        self.failed: list[str] = []

    def arrive(self, name: str, position: int, changes: bool) -> None:
        if name in self.state:
            return
        self.position[name] = position
        self.state[name] = "arrived" if changes else "unchanged"

    def unsealed(self) -> list[str]:
        return [n for n, s in self.state.items() if s == "arrived" and n not in self.sequence]

    def seal(self) -> None:
        """Give every arrived, unplaced host its place (inventory order among them)."""
        self.sequence += sorted(self.unsealed(), key=lambda n: self.position[n])

    def batches(self) -> list[list[str]]:
        seq = self.sequence
        if not seq:
            return []
        return [seq[:1]] + [seq[i:i + self.batch_size] for i in range(1, len(seq), self.batch_size)]

    def batch_of(self, name: str) -> int | None:
        for i, batch in enumerate(self.batches()):
            if name in batch:
                return i
        return None

    def turn(self, name: str) -> str:
        """"go", "wait" or "stop" for a host that needs a change."""
        if self.state.get(name) == "running":
            return "go"
        if self.failed:
            return "stop"
        if name not in self.sequence:
            return "wait"
        for batch in self.batches():
            if name in batch:
                return "go"
            if any(self.state[h] not in ("ok", "dropped") for h in batch):
                return "wait"
        return "wait"

    def start(self, name: str) -> None:
        self.state[name] = "running"

    def finish(self, name: str, ok: bool) -> None:
        self.state[name] = "ok" if ok else "failed"
        if not ok:
            self.failed.append(name)

    def skip(self, name: str) -> None:
        self.state[name] = "skipped"

    def drop(self, name: str) -> None:
        """A host that left the run before its turn (failed elsewhere): not waited for."""
        if self.state.get(name) in (None, "arrived"):
            self.state[name] = "dropped"

    def blockers(self, name: str) -> list[str]:
        """Hosts of earlier batches that have not finished yet."""
        out = []
        for batch in self.batches():
            if name in batch:
                break
            out += [h for h in batch if self.state[h] in ("arrived", "running")]
        return out

    def role(self, name: str) -> str:
        i = self.batch_of(name)
        if i is None:
            return "-"
        return "canary" if i == 0 else f"batch {i} of {len(self.batches()) - 1}"


def rollout_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """The service stage's closing table: one row per host."""
    images = image_cells(r.get("image") for r in rows.values())
    body = []
    for host in sorted(rows):
        r = rows[host]
        peak = r.get("peak_decode")
        body.append([host, r.get("action", "-"), r.get("status", "-"), r.get("endpoint", "-"),
                     (r.get("revision") or "-")[:12], images[r.get("image")],
                     f"{peak:.1f}" if isinstance(peak, (int, float)) else "-", r.get("detail", "")])
    return "\nService rollout\n" + fit_table(body, [
        "host", "action", "result", "endpoint", "revision", "image", "peak decode tok/s", "detail"],
        detail=7)
