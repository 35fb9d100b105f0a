"""pyinfra facts and operations of the service stage (decisions: glmfleet.service).

Three operations per host, in this order:
  check      refuse (FAIL the host, change nothing) when Docker or compose is missing, an
             earlier stage failed, the kit cannot be rendered, or the weights are not the
             verified pinned revision;
  pull       `docker pull` the image when it is not on the host (skipped when present);
  rollout    place the kit and (re)start the service where needed, gated by the rollout.

How the rollout works with pyinfra's execution model
----------------------------------------------------
pyinfra runs one operation at a time across all hosts, each host in its own greenlet, and
waits for all of them before the next operation (unless --serial: host by host in the main
greenlet; --no-wait: every host runs all its operations on its own). Our `rollout`
operation's body runs again at execution time, per host, and is where the rollout is gated:

  1. the host reads its live state (one SSH command) and decides whether it needs a change
     (glmfleet.service.plan_change); it *arrives* at the shared Rollout (controller memory,
     one per run) saying so. Hosts with nothing to do report "No changes" and are done.
  2. a host needing a change waits (gevent.sleep, cooperative) until every host that is
     executing this same operation right now has arrived; the arrivals are then placed in
     inventory order: the first is the canary, then batches of rollout_batch_size.
  3. it waits until every host of the earlier batches finished healthy, then yields ONE
     python command (`_apply`) that does the work and the health check and, on failure,
     the rollback. Once any host failed, every host still waiting stops: it records "not
     rolled out" and changes nothing (pyinfra shows "No changes" for it; it keeps serving
     its previous version).

A host only ever waits for hosts that are running the same operation at that moment, so
there is no deadlock when pyinfra's pool is smaller than the fleet (--parallel N: later
hosts arrive later and go after the ones before them), with --serial (nothing else is
running: each host goes in turn and a failure stops the rest), or with --no-wait (no
batching across hosts that are not in this operation together; a failure still stops the
hosts that have not started). --limit simply leaves the other hosts out.

Secrets: .env (it may hold the API key) is uploaded over SFTP into a 0700 staging dir,
never passed in a command line, never diffed or printed; the smoke test reads the key
from .env on the host.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time

import gevent
import gevent.lock
from pyinfra import host, logger
from pyinfra.api import FactBase, FunctionCommand, StringCommand, operation

from glmfleet.service import apikey, imagepull, jitseed
from glmfleet.service import monitor as mon
from glmfleet import remote, runctx
from glmfleet.service import plan as svc
from glmfleet.kit.index_pattern import derive
from glmfleet.kit.render import SECRET_MODE, KitError, render_kit
from glmfleet.settings import API_KEY_OPEN, Settings

STAGE = "service"
EARLIER_STAGES = ("docker", "nvidia_toolkit", "weights")
q = shlex.quote
WAIT_NOTE_EVERY_S = 30


# --- facts ---------------------------------------------------------------------------------

class ServiceFacts(FactBase):
    """Everything the stage decides on, in one read-only command: the weights marker and
    config.json, the kit files' sha256 and modes, what the container was started from, the
    last good kit, Docker, compose, the image id, the container, the peak throughput."""

    def command(self, service_dir: str, weights_dir: str, image: str, service_name: str,
                kit_paths: tuple) -> str:
        return svc.facts_command(service_dir, weights_dir, image, service_name, kit_paths)

    @staticmethod
    def default():  # pyinfra gives default() when a fact prints nothing (a bare host)
        return svc.parse_service_facts([])

    def process(self, output):
        return svc.parse_service_facts(output)


def _facts(s: Settings, kit_paths) -> dict:
    return host.get_fact(ServiceFacts, service_dir=s.service_dir, weights_dir=s.weights_dir,
                         image=s.image, service_name=s.service_name, kit_paths=tuple(sorted(kit_paths)))


# --- per-run registry ------------------------------------------------------------------------

class _ServiceRun:
    """Controller-side state of one pyinfra run: the rollout and the closing table's rows."""

    def __init__(self, state):
        self.state = state
        sizes = [s.rollout_batch_size for s in runctx.validate_inventory(state).values()]
        # A fleet-wide property: the most cautious value any host asks for.
        self.rollout = svc.Rollout(min(sizes) if sizes else 1)
        self.rows: dict[str, dict] = {}
        self.table_printed = False
        self.status_rows: dict[str, dict] = {}  # tasks/status.py
        self.status_keys: dict[str, str] = {}  # the key each host serves with (never printed)
        self.status_metrics: dict[str, dict] = {}  # tasks/status.py: vLLM's /metrics per host
        self.status_printed = False
        # JIT cache seeding (glmfleet.service.jitseed): the canary's key and volume once it
        # booted, and its archive served there (url, sha256, bytes) for every seeded host.
        self.seed_keys: dict[str, dict] = {}
        self.seed_volumes: dict[str, str] = {}
        self.seed_lock = gevent.lock.Semaphore()
        self.seed_served: tuple[str, str, int] | None = None
        self.seed_tried = False  # a serve was started on the canary: stop it after the rollout
        self.seed_error: str | None = None


def service_run(state) -> _ServiceRun:
    return runctx.per_run(state, "service", _ServiceRun)


def batch_size(state) -> int:
    return service_run(state).rollout.batch_size


# --- the host's job --------------------------------------------------------------------------

class Refusal(Exception):
    """The host must not be started: the message says why and what to do."""


@dataclasses.dataclass
class Job:
    settings: Settings
    files: dict
    pattern: str
    pattern_source: str
    facts: dict
    want: svc.Applied
    applied: svc.Applied | None
    last_good: svc.Applied | None
    plan: svc.Plan
    endpoint: str
    exposure: str | None = None  # a change of the API's exposure, named in the output

    def __repr__(self) -> str:
        # A job is a function-command argument, which pyinfra prints in some modes; its files
        # hold .env (the API key), so only their names are shown.
        return f"Job({self.endpoint}, kit files: {', '.join(sorted(self.files))})"


def _host_api_key(s: Settings) -> str | None:
    """The key in the host's .env ("" = none, None = no kit): read unprinted (a secret)."""
    ok, lines = _sh(apikey.dotenv_key_command(s.service_dir), show=False)  # holds the key
    if not ok:
        raise Refusal(f"cannot read {s.service_dir}/.env to keep its API key: " + " ".join(lines)[-200:])
    return apikey.parse_dotenv_key(lines)


def _earlier_failure() -> str | None:
    stages = runctx.run_for(host.state).stages.get(host.name, {})
    for stage in EARLIER_STAGES:
        status, _ = stages.get(stage, ("", ""))
        if status == "FAIL":
            return f"not attempted: the {stage} stage failed on this host"
    return None


def build_job(s: Settings, strict: bool) -> Job:
    """Read the host, render its kit, decide. ``strict`` (execution time): raise Refusal for
    a host that must not be started; while planning, earlier stages may still fix it."""
    if strict and (why := _earlier_failure()):
        raise Refusal(why)
    try:
        key, exposure = apikey.for_host(s.api_key, _host_api_key(s), s.api_key_file, s.port)
    except apikey.NoKeyChosen as e:
        raise Refusal(str(e)) from None
    s = dataclasses.replace(s, api_key=key or API_KEY_OPEN)
    probe = render_kit(s, derive(None, s.index_topk_pattern)[0])  # the paths only
    facts = _facts(s, probe.keys())
    if strict:
        if facts["docker"] in (None, "absent"):
            raise Refusal("Docker is not installed: the docker stage must pass first")
        if facts["docker"] == "down":
            raise Refusal("dockerd is not answering (`docker version` failed): start it, or re-run "
                          "the docker stage")
        if not facts["compose"]:
            raise Refusal("neither `docker compose` nor `docker-compose` works on this host")
        problem = svc.weights_problem(facts["verified"], s.model_revision, s.weights_dir)
        if problem:
            raise Refusal(problem)
    try:
        config = json.loads(facts["config_json"]) if facts["config_json"] else None
    except ValueError:
        config = None
    try:
        pattern, source = derive(config, s.index_topk_pattern)
        files = render_kit(s, pattern)
    except (KitError, ValueError) as e:
        raise Refusal(f"the kit cannot be rendered: {e}") from None
    container = facts["container"] or {}
    want = svc.desired_applied(files, s.image, facts["image_id"],
                               facts["verified"] if strict else s.model_revision)
    applied = svc.Applied.from_json(facts["applied"])
    plan = svc.plan_change(files, facts["files"], applied, want, bool(container.get("running")))
    return Job(s, files, pattern, source, facts, want, applied,
               svc.Applied.from_json(facts["last_good"]), plan,
               svc.endpoint(s.bind_address, s.port, str(host.data.get("ssh_hostname") or host.name)),
               exposure)


# --- helpers run inside _apply (the host's greenlet, at execution) ---------------------------

def _say(message: str) -> None:
    logger.info(f"{host.print_prefix}{message}")


def _sh(command: str, *, show: bool | None = None, timeout: int | None = None) -> tuple[bool, list[str]]:
    """(ok, output lines) of a command on the current host (no secrets in it, ever)."""
    r = remote.sh(host, command, show=show, timeout=timeout)
    return r.ok, r.lines


def _place(job: Job, paths: list[str], extra: dict[str, bytes] | None = None) -> tuple[bool, str]:
    """Upload ``paths`` of the kit (and ``extra`` files: {path: bytes}) to the 0700 staging
    dir with their final modes, then rename each into place: every file is whole, old or new."""
    sd = job.settings.service_dir
    staging = f"{sd}/{svc.STAGING}"
    ok, out = _sh(f"mkdir -p {q(sd)} && umask 077 && mkdir -p {q(sd)}/{svc.STATE_DIR} "
                  f"&& chmod 700 {q(sd)}/{svc.STATE_DIR} && rm -rf {q(staging)} && mkdir -p {q(staging)}")
    if not ok:
        return False, "cannot create the staging dir: " + " ".join(out)[-300:]
    items = [(p, job.files[p][0].encode(), job.files[p][1]) for p in paths]
    items += [(p, data, 0o600) for p, data in (extra or {}).items()]
    moves = []
    for i, (path, data, mode) in enumerate(items):
        tmp = f"{staging}/{i}"
        if not remote.put(host, data, tmp):
            return False, f"upload of {path} failed"
        moves.append(f"chmod {mode:o} {q(tmp)} && mkdir -p \"$(dirname {q(sd + '/' + path)})\" "
                     f"&& mv -f {q(tmp)} {q(sd + '/' + path)}")
    ok, out = _sh("set -e; " + " && ".join(moves) + f" && rm -rf {q(staging)}")
    return ok, "" if ok else "placing the kit failed: " + " ".join(out)[-300:]


def _compose(sd: str, args: str) -> str:
    """A compose command run with the kit's own compose probe (tools/kitlib.sh, bash), so the
    box and the fleet always agree on `docker compose` vs `docker-compose`."""
    script = f'cd {q(sd)} && KIT_DIR=$PWD && . tools/kitlib.sh && kit_compose && "${{COMPOSE[@]}}" {args}'
    return f"bash -c {q(script)}"


def _launch(job: Job, restart: bool, before_start=None) -> tuple[bool, str]:
    """(Re)start through the kit's own launch.sh: start, wait with progress, smoke test.
    ``before_start``: called once the old container is gone, before the new one starts."""
    s = job.settings
    if restart:
        ok, out = _sh(_compose(s.service_dir, "rm -s -f"))
        if not ok:
            return False, "could not remove the old container: " + " ".join(out)[-300:]
    if before_start:
        before_start()
    ok, out = _sh(f"cd {q(s.service_dir)} && ./launch.sh", show=True,
                  timeout=s.ready_timeout_s + s.smoke_timeout_s + 300)
    if not ok:
        reason = next((line.strip("! ") for line in out if line.startswith("!!")), "launch.sh failed")
        return False, reason
    return True, ""


def _boot_check(job: Job) -> svc.BootCheck:
    s = job.settings
    name = q(s.service_name)
    _, lines = _sh(f"t=$(docker container inspect -f '{{{{.State.StartedAt}}}}' {name}) && "
                   f"docker logs --since \"$t\" {name} 2>&1 | grep -E {q(svc.BOOT_LOG_GREP)} || true")
    return svc.evaluate_boot_log(lines, job.pattern, s.tensor_parallel_size)


def _mark_good(job: Job, applied: svc.Applied) -> tuple[bool, str]:
    """Record what runs now and keep this kit as the last known good one."""
    sd = job.settings.service_dir
    ok, why = _place(job, [], {svc.APPLIED: applied.to_json().encode()})
    if not ok:
        return ok, why
    lg, tmp = f"{svc.LAST_GOOD}", f"{svc.LAST_GOOD}.tmp"
    files = " ".join(q(p) for p in sorted(job.files))
    ok, out = _sh(f"set -e; cd {q(sd)}; rm -rf {tmp} {lg}.old; mkdir -p {tmp}; chmod 700 {tmp}; "
                  f"cp -p --parents {files} {tmp}/; cp -p {svc.APPLIED} {tmp}/applied.json; "
                  f"if [ -d {lg} ]; then mv {lg} {lg}.old; fi; mv {tmp} {lg}; rm -rf {lg}.old")
    return ok, "" if ok else "could not save the last known good kit: " + " ".join(out)[-300:]


def _restore_last_good(job: Job) -> tuple[bool, str]:
    sd, lg, st = job.settings.service_dir, svc.LAST_GOOD, svc.STAGING
    ok, out = _sh(
        f"set -e; cd {q(sd)}; rm -rf {st}; mkdir -p {st}; chmod 700 {st}; cp -a {lg}/. {st}/; "
        f"(cd {st} && find . -type f ! -path ./applied.json) | while IFS= read -r f; do "
        f"mkdir -p \"$(dirname \"$f\")\"; mv -f \"{st}/$f\" \"$f\"; done; "
        f"mv -f {st}/applied.json {svc.APPLIED}; rm -rf {st}")
    if ok and job.last_good and job.last_good.image_id:
        # Same tag, new build: point the tag back at the build that was healthy, if still here.
        _sh(f"docker image inspect {q(job.last_good.image_id)} >/dev/null 2>&1 && "
            f"docker tag {q(job.last_good.image_id)} {q(job.last_good.image)} || true")
    return ok, "" if ok else " ".join(out)[-300:]


def _rollback(job: Job, why: str) -> tuple[str, bool]:
    """After a failed health check: back to the last known good kit, restarted. Returns the
    detail for the summary and whether the host serves its last known good kit again."""
    s = job.settings
    changed_something = bool(job.plan.files) or job.plan.action == "restart"
    if not changed_something:
        return f"{why} (the kit was not changed: nothing to roll back; see ./launch.sh on the host)", False
    if job.last_good is None:
        _sh(_compose(s.service_dir, "stop"))
        return (f"{why}; no last known good kit to roll back to (first deploy): container stopped, "
                f"kit left in {s.service_dir} for inspection (./launch.sh shows the log)"), False
    _say(f"rolling back to the last known good kit ({job.last_good.short}) ...")
    ok, err = _restore_last_good(job)
    if not ok:
        return f"{why}; ROLLBACK FAILED while restoring {svc.LAST_GOOD}: {err}", False
    ok, err = _launch(job, restart=True)
    if not ok:
        return f"{why}; rolled back to the last known good kit, but it did not come up either: {err}", False
    return f"{why}; rolled back to the last known good kit ({job.last_good.short}), READY again", True


def _apply(state, host, job: Job, drainer=None) -> bool:  # noqa: ARG001 (pyinfra passes state and host)
    """The change on one host, then its health check; on failure the rollback."""
    run = service_run(state)
    ok, detail, action = False, "unexpected error", job.plan.action
    try:
        ok, detail = _apply_inner(job, drainer)
        if not ok:
            detail, back = _rollback(job, detail)
            action += " -> rolled back" if back else ""
            if drainer:  # a failed host stays out of the gateway's backend
                drainer.hold_out(host.name, _say)
    except Exception as e:  # anything unexpected still ends in a recorded result
        detail = f"unexpected error: {type(e).__name__}: {e}"
        raise
    finally:
        run.rollout.finish(host.name, ok)
        if ok and job.exposure:
            detail += f"; {job.exposure}"
        _result(job, "PASS" if ok else "FAIL", action, detail)
    return ok


def _apply_inner(job: Job, drainer=None) -> tuple[bool, str]:
    s, plan = job.settings, job.plan
    _say(f"service: {plan.describe()} [{service_run(host.state).rollout.role(host.name)}]")
    if job.exposure:
        _say(f"service: {job.exposure}")
    if job.applied is not None and job.last_good is None:
        # Running a kit of ours with no saved copy (e.g. an interrupted first run): keep it
        # as the fallback before changing anything.
        if _mark_good(job, job.applied)[0]:
            job.last_good = job.applied
    if plan.files:
        ok, why = _place(job, list(plan.files))
        if not ok:
            return False, why
    if plan.action == "files":
        ok, out = _sh(f"cd {q(s.service_dir)} && python3 tools/oai_client.py probe --timeout 10")
        if not ok:
            return False, "kit files updated (no restart needed), but the API does not answer"
        ok, why = _mark_good(job, job.want)
        return ok, why or f"kit files updated ({', '.join(plan.files)}); no restart needed"
    # Behind a gateway: no new requests for this host, in-flight ones finish, then restart.
    serving = plan.action == "restart" and (job.facts["container"] or {}).get("running")
    drained = drainer.drain(host.name, s.gateway_drain_timeout_s, _say) if drainer and serving else False
    seeded: list[str] = []
    ok, why = _launch(job, restart=plan.action == "restart",
                      before_start=lambda: seeded.append(_seed_or_say_why(job)))
    if not ok:
        return False, f"health check failed: {why}"
    boot = _boot_check(job)
    if not boot.ok:
        return False, f"health check failed: {boot.describe()}"
    ok, why = _mark_good(job, job.want)
    if not ok:
        return False, why
    _record_seed_source(job)
    if drained:
        drainer.ready(host.name, _say)
    verb = "started" if plan.action == "start" or job.applied is None else "restarted"
    note = f" (site {svc.SITE_OVERRIDE} in use)" if job.facts["override"] else ""
    seed = f"; {seeded[0]}" if seeded and seeded[0] else ""
    return True, (f"{verb} ({'; '.join(plan.reasons) or 'container was not running'}): READY at "
                  f"{job.endpoint}; {boot.describe()}; thinking {'on' if s.enable_thinking else 'off'}"
                  f"{seed}{note}")


# --- JIT cache seeding (glmfleet.service.jitseed) ---------------------------------------------

def _seed_key(job: Job) -> tuple[dict | None, str]:
    s = job.settings
    ok, out = _sh(f"docker image inspect -f '{{{{.Id}}}}' {q(s.image)}", show=False)
    entry = runctx.run_for(host.state).preflight.get(host.name) or {}
    return jitseed.seed_key(out[0].strip() if ok and out else None,
                            (entry.get("facts") or {}).get("gpu"), job.want.values)


def _record_seed_source(job: Job) -> None:
    """The canary, once healthy: its key and volume, for the hosts after it."""
    run = service_run(host.state)
    batches = run.rollout.batches()
    if not job.settings.jit_cache_seed or not batches or batches[0][0] != host.name:
        return
    key, _ = _seed_key(job)
    if key:
        run.seed_keys[host.name] = key
        run.seed_volumes[host.name] = jitseed.volume_name(job.want.values or {})


def _seed_source(run: _ServiceRun, canary: str) -> tuple[str, str, int] | None:
    """The canary's volume, packed and served there once per run: (url, sha256, bytes)."""
    with run.seed_lock:
        if run.seed_served or run.seed_error:
            return run.seed_served
        source = host.state.inventory.get_host(canary)
        cs = runctx.settings(host.state, source)
        address = runctx.site_address(source, cs)
        run.seed_tried = True
        r = remote.sh(source, jitseed.serve_command(run.seed_volumes[canary], cs.site_address,
                                                    cs.jit_cache_seed_port), show=False)
        size, _, sha = (r.out[-1].strip() if r.ok and r.out else "").partition(" ")
        if not r.ok or not size.isdigit() or len(sha) != 64:
            run.seed_error = f"serving {canary}'s volume failed: {(r.err or ' '.join(r.out)).strip()[-200:]}"
            return None
        run.seed_served = (jitseed.url(address, cs.jit_cache_seed_port), sha, int(size))
        return run.seed_served


def _seed_or_say_why(job: Job) -> str | None:
    """Seeding is an optimisation: whatever goes wrong in it, the host boots (cold)."""
    try:
        return _seed_jit_cache(job)
    except Exception as e:  # noqa: BLE001
        return f"JIT cache not seeded: {type(e).__name__}: {e}"


def _seed_jit_cache(job: Job) -> str | None:
    """Before a later host's first boot of this rollout: the canary's caches, when its
    compile key is this host's. Returns what happened, for the result line."""
    s, run = job.settings, service_run(host.state)
    batches = run.rollout.batches()
    if not s.jit_cache_seed or not batches or batches[0][0] == host.name:
        return None
    canary = batches[0][0]
    source = run.seed_keys.get(canary)
    if source is None:
        return f"JIT cache not seeded: the canary {canary} gave no cache key"
    key, why = _seed_key(job)
    if key is None:
        return f"JIT cache not seeded from {canary}: {why}"
    diff = jitseed.difference(source, key)
    if diff:
        return f"JIT cache not seeded from {canary}: {diff} differ"
    digest = jitseed.digest(key)
    ok, out = _sh(jitseed.stamp_command(s.service_dir), show=False)
    if ok and out and out[0].strip() == digest:
        return None  # seeded before with this key: its volume has it
    served = _seed_source(run, canary)
    if served is None:
        return f"JIT cache not seeded from {canary}: {run.seed_error}"
    volume = jitseed.volume_name(job.want.values or {})
    ok, out = _sh(_compose(s.service_dir, "up --no-start"))  # compose makes the volume, labelled
    if ok:
        ok, out = _sh(jitseed.fetch_command(served[0], served[1]), show=False)
    if ok:
        ok, out = _sh(jitseed.unpack_command(volume, s.service_dir, digest))
    if not ok:
        return f"JIT cache not seeded from {canary}: {' '.join(out)[-200:]}"
    size = f"{served[2] / 2**20:.1f} MiB" if served[2] >= 2**20 else f"{served[2] / 1024:.1f} KiB"
    note = (f"JIT cache seeded from {canary} ({size} host to host, sha256 checked; "
            "same image, GPU, driver and flags)")
    _say(note)
    return note


# --- results ---------------------------------------------------------------------------------

def _result(job: Job | None, status: str, action: str, detail: str, s: Settings | None = None) -> None:
    s = s or (job.settings if job else runctx.settings())
    runctx.record(host.name, STAGE, status, detail)
    runctx.echo(f"[{host.name}] service: {status}: {detail}")
    run = service_run(host.state)
    facts = job.facts if job else {}
    run.rows[host.name] = {
        "action": action, "status": status, "detail": detail,
        "endpoint": job.endpoint if job else "-",
        "revision": (job.want.revision if job and status == "PASS" else
                     (job.applied.revision if job and job.applied else None)),
        "image": (s.image if status == "PASS" else (job.applied.image if job and job.applied else None)),
        "peak_decode": svc.peak_decode(facts.get("peak")),
    }
    row = run.rows[host.name]
    runctx.record_info(host.name, **{k: row[k] for k in ("endpoint", "revision", "image", "peak_decode")})
    _maybe_print_table(host.state)


def _maybe_print_table(state) -> None:
    """Once every host of this stage has a result: the rollout table."""
    run = service_run(state)
    if run.table_printed:
        return
    expected = {h.name for h in state.inventory
                if (h in state.active_hosts or h.name in run.rows) and _has_service_ops(state, h)}
    if expected and expected <= set(run.rows):
        run.table_printed = True
        runctx.echo(svc.rollout_table(run.rows))


def _has_service_ops(state, h) -> bool:
    ops = state.ops.get(h, {})
    return any(any("Service: " in n for n in state.get_op_meta(o).names) for o in ops)


# --- operations ------------------------------------------------------------------------------

@operation()
def check():
    """A gate, not a change (no pyinfra equivalent): refuse to go on (FAIL the host, nothing
    changed) when the host cannot serve yet."""
    if not host.state.is_executing:
        return  # planning: the earlier stages of this run may still install/verify things
    s = runctx.settings()
    try:
        build_job(s, strict=True)
    except Refusal as e:
        service_run(host.state).rollout.drop(host.name)
        _result(None, "FAIL", "refused", str(e), s)
        yield runctx.fail_command(f"service not started: {e}")
        return
    host.noop("Docker, compose and verified weights in place")


class ImagePullState(FactBase):
    """The image id (if present) and the background pull's state (glmfleet.service.imagepull)."""

    def command(self, image: str) -> str:
        return imagepull.state_command(image)

    @staticmethod
    def default():
        return imagepull.parse_state([])

    def process(self, output):
        return imagepull.parse_state(output)


@operation()
def pull_start(wait_for=None):
    """Detached image pull (pyinfra's docker.image pulls in the foreground, blocking the stage).

    Started as soon as Docker is up (tasks/image_pull.py), so it runs while the weights
    download; the service stage's pull_image waits for it."""
    s = runctx.settings()
    due, why = imagepull.background_due(host.get_fact(ImagePullState, image=s.image), s.image)
    if not due:
        host.noop(why)
        return
    wait = wait_for(host.state, host, s) if wait_for else None
    if wait is None:  # not behind the inventory's image cache: the registry_mirror rules
        lead = _pull_lead(host.state, host, s)
    else:  # behind it: wait for its copy, or () when it copies nothing in this run
        lead = wait[0] if wait else None
    if lead is None:
        if host.state.is_executing:
            runctx.echo(f"[{host.name}] pulling {s.image} in the background (log: {imagepull.LOG})")
        yield StringCommand(imagepull.start_command(s.image))
        return
    what = f"{lead}'s copy into the image cache" if wait else f"{lead}'s pull through {s.registry_mirror}"
    if not host.state.is_executing:
        yield StringCommand(f"# after {what}: " + imagepull.start_command(s.image))
        return
    runctx.echo(f"[{host.name}] pulling {s.image} in the background once {what} is done "
                "(each layer from upstream once)")
    command, done, note = wait[1:] if wait else (imagepull.state_command(s.image), _lead_pulled(s.image), None)
    yield FunctionCommand(_follow, (lead, s.image, command, done, note, what), {})


# Behind a pull-through cache, the first pull of a layer goes upstream; so do pulls of it that
# start before the cache stored it (distribution 2.8 fetches once for its storage plus once per
# client then). So among the hosts pulling one image through one mirror, the first in inventory
# order (the lead) pulls first, and the others start once it is done: each layer then comes
# from upstream for the lead only, and to the others from the site's cache.

def _pull_lead(state, h, s: Settings) -> str | None:
    """The host whose pull this host's waits for; None: this host pulls at once."""
    if not s.registry_mirror:
        return None
    active = [x for x in state.inventory if x in state.active_hosts]
    return imagepull.pull_lead(h.name, [(x.name, (o := runctx.settings(state, x)).registry_mirror, o.image)
                                        for x in active])


def _lead_pulled(image: str):
    def done(lines) -> bool:
        st = imagepull.parse_state(lines)
        return bool(st["image_id"]) or (st["bg_image"] == image and not st["bg_running"])
    return done


class _Follow:
    """One controller greenlet per lead: waits until done(lines of command on the lead) (its
    pull, or the image cache's copy), says note(lines) if there is one to say, then starts
    the followers' pulls."""

    def __init__(self, state, lead: str, image: str, command: str, done, note, what: str):
        self.state, self.lead, self.image = state, lead, image
        self.command, self.done, self.note, self.what = command, done, note, what
        self.followers: list[str] = []
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        lead = self.state.inventory.get_host(self.lead)
        misses = 0
        while misses < 5:
            if lead in self.state.failed_hosts:
                break
            r = remote.sh(lead, self.command, show=False)
            misses = 0 if r.ok else misses + 1
            if r.ok and self.done(r.out):
                said = self.note(r.out) if self.note else None
                if said:
                    runctx.echo(f"[{self.lead}] {said}")
                break
            gevent.sleep(2)
        gevent.sleep(0)  # followers that joined while the last poll ran are in the list now
        for h in map(self.state.inventory.get_host, self.followers):
            r = remote.sh(h, imagepull.state_command(self.image), show=False)
            if r.ok and imagepull.background_due(imagepull.parse_state(r.out), self.image)[0]:
                remote.sh(h, imagepull.start_command(self.image), show=False)
                runctx.echo(f"[{h.name}] {self.what} is done: pulling {self.image} in the "
                            f"background (log: {imagepull.LOG})")


def _follow(state, host, lead: str, image: str, command: str, done, note, what: str) -> bool:
    """Register this host with its lead's greenlet (started by the first follower)."""
    follows = runctx.per_run(state, "image_follow", lambda _: {})
    if (lead, image) not in follows or follows[(lead, image)].greenlet.dead:
        follows[(lead, image)] = _Follow(state, lead, image, command, done, note, what)
    follows[(lead, image)].followers.append(host.name)
    return True


def _wait_for_lead(state, image: str) -> None:
    """A follower, in the service stage: wait until its background pull has been started."""
    for (lead, img), follow in runctx.per_run(state, "image_follow", lambda _: {}).items():
        if img == image and host.name in follow.followers and not follow.greenlet.dead:
            _say(f"waiting for {follow.what} ({image})")
            follow.greenlet.join()


@operation()
def pull_image():
    """`docker pull` with progress, only when the image is missing (docker.image: no progress).

    A present tag is trusted: pin tags that never move, such as the dated b12x tags."""
    s = runctx.settings()
    facts = _facts(s, ())
    if facts["image_id"]:
        host.noop(f"image {s.image} is present locally ({facts['image_id'][:19]}): not pulled")
        return
    if not host.state.is_executing:
        yield StringCommand(f"docker pull {q(s.image)}")
        return
    yield FunctionCommand(_pull, (s.image,), {})


def _wait_for_background_pull(image: str) -> bool:
    """Wait for the background pull of ``image`` when one runs; True when it left the image
    on the host."""
    last_note = 0.0
    while True:
        ok, lines = _sh(imagepull.state_command(image), show=False)
        st = imagepull.parse_state(lines if ok else [])
        if st["image_id"] or st["bg_image"] != image or not st["bg_running"]:
            break
        if time.monotonic() - last_note >= WAIT_NOTE_EVERY_S:
            last_note = time.monotonic()
            _, tail = _sh(imagepull.log_tail_command(), show=False)
            _say(f"waiting for the background pull of {image}: {' '.join(tail)[-160:]}")
        gevent.sleep(2)
    if st["image_id"]:
        _, tail = _sh(imagepull.log_tail_command(), show=False)
        _say(f"image {image} pulled in the background ({' '.join(tail)[-120:]}; log: {imagepull.LOG})")
        return True
    if st["bg_image"] == image:
        _say(f"the background pull of {image} ended with exit {st['bg_rc']} (log: {imagepull.LOG}); "
             "pulling in the foreground")
    return False


def _pull(state, host, image: str) -> bool:  # noqa: ARG001
    _wait_for_lead(state, image)
    if _wait_for_background_pull(image):
        return True
    _say(f"pulling {image} (progress below) ...")
    ok, out = _sh(f"docker pull {q(image)}", show=True, timeout=6 * 3600)
    if not ok:
        service_run(state).rollout.drop(host.name)
        detail = f"docker pull {image} failed: {' '.join(out)[-300:]}"
        _result(None, "FAIL", "refused", detail, runctx.settings())
    return ok


def _show_diff(job: Job) -> None:
    """--diff: each kit file to be written, as pyinfra's files.put shows one (a colour diff
    against the host's copy); a file that may hold the API key (.env) by its name only."""
    from pyinfra.facts.files import FileContents
    from pyinfra.operations.util.files import generate_color_diff

    for path in job.plan.files:
        text, mode = job.files[path]
        dest = f"{job.settings.service_dir}/{path}"
        if mode == SECRET_MODE:
            host.log(f"Will write {dest} (may hold the API key: never diffed)", logger.info)
            continue
        current = host.get_fact(FileContents, path=dest)
        host.log(f"Will {'modify' if current is not None else 'create'} {dest}", logger.info)
        for line in generate_color_diff([f"{line}\n" for line in current or []], text.splitlines(True)):
            logger.info("  %s", line)
        logger.info("")


@operation()
def rollout(drainer=None):
    """The gated rollout: canary, batches, health check, rollback (no pyinfra equivalent).

    Place the kit and start/restart the service where needed, in rollout order.
    ``drainer`` (tasks/service.py hands in the gateway's, or None): drain before a restart."""
    s = runctx.settings()
    executing = host.state.is_executing
    try:
        job = build_job(s, strict=executing)
    except Refusal as e:
        if executing:
            service_run(host.state).rollout.drop(host.name)
            _result(None, "FAIL", "refused", str(e), s)
            yield runctx.fail_command(str(e))
        else:
            runctx.echo(f"[{host.name}] service would be refused: {e}")
        return
    if not executing:
        if job.plan.changes:  # what --dry shows: the file names and reasons, never content
            exposure = f"; {job.exposure}" if job.exposure else ""
            runctx.echo(f"[{host.name}] service would {job.plan.describe()}{exposure}")
            if host.state.config.DIFF:
                _show_diff(job)
            yield FunctionCommand(_apply, (job,), {})
        return

    run = service_run(host.state)
    position = [h.name for h in host.state.inventory].index(host.name)
    run.rollout.arrive(host.name, position, job.plan.changes)
    if not job.plan.changes:
        container = job.facts["container"] or {}
        host.noop("service unchanged and running")
        _result(job, "PASS", "unchanged",
                f"unchanged, running since {container.get('started_at', '?')[:19]} at {job.endpoint}")
        return

    turn = _wait_for_turn(run, host.current_op_hash)
    if turn == "stop":
        run.rollout.skip(host.name)
        failed = ", ".join(run.rollout.failed)
        host.noop("rollout stopped before this host")
        _result(job, "FAIL", "not rolled out",
                f"not rolled out: the rollout stopped after {failed} failed its health check; "
                "this host was not touched and still runs its previous kit")
        return
    run.rollout.start(host.name)
    yield FunctionCommand(_apply, (job, drainer), {})


class MonitorFacts(FactBase):
    """systemd or not, the monitor unit's sha256 and state, whether monitor.sh is alive."""

    def command(self, service_dir: str, service_name: str) -> str:
        return mon.facts_command(service_dir, service_name)

    @staticmethod
    def default():  # a bare host prints nothing: no kit, no systemd, no monitor
        return mon.parse_facts([])

    def process(self, output):
        return mon.parse_facts(output)


@operation()
def seed_server_stop():
    """After the rollout (every host's rollout is done when this runs): the canary stops
    serving its JIT cache archive. Nothing on other hosts or when it served nothing."""
    run = service_run(host.state)
    batches = run.rollout.batches()
    if not run.seed_tried or not batches or batches[0][0] != host.name:
        host.noop("no JIT cache archive served from this host")
        return
    yield StringCommand(jitseed.stop_command())


@operation()
def monitor():
    """monitor.sh supervised on systemd and init-less hosts alike (systemd.service needs systemd).

    A systemd unit where there is systemd (rewritten only when its
    content changed), else started detached when not running (supervision on deploy only)."""
    s = runctx.settings()
    unit = mon.render_unit(s.service_dir, s.service_name)
    facts = host.get_fact(MonitorFacts, service_dir=s.service_dir, service_name=s.service_name)
    p = mon.plan(facts, unit)
    if not p.changes:
        host.noop(f"monitor: {p.reason}")
        return
    if host.state.is_executing:
        _say(f"monitor: {p.reason}")
    for command in mon.commands(p, s.service_dir, s.service_name, unit):
        yield StringCommand(command)


def _wait_for_turn(run: _ServiceRun, op_hash: str) -> str:
    state, ro, me = host.state, run.rollout, host.name
    last_note = time.monotonic()
    while True:
        for h in state.inventory:  # hosts that left the run before their turn are not waited for
            if h in state.failed_hosts:
                ro.drop(h.name)
        together = [h for h in state.inventory if h.executing_op_hash == op_hash
                    and h not in state.failed_hosts and h.name not in ro.state]
        if not together:
            ro.seal()
        turn = ro.turn(me)
        if turn != "wait":
            return turn
        if time.monotonic() - last_note >= WAIT_NOTE_EVERY_S:
            last_note = time.monotonic()
            waiting_for = ", ".join(ro.blockers(me)) or ", ".join(h.name for h in together)
            _say(f"service: {ro.role(me)}, waiting for {waiting_for}")
        gevent.sleep(0.2)


# --- read-only status (tasks/status.py) ------------------------------------------------------

class ServiceStatusFacts(FactBase):
    """ServiceFacts plus the container's uptime and a loopback probe of the API."""

    def command(self, service_dir: str, weights_dir: str, image: str, service_name: str,
                kit_paths: tuple) -> str:
        from glmfleet.service.status import status_command

        return status_command(service_dir, weights_dir, image, service_name, kit_paths)

    @staticmethod
    def default():
        from glmfleet.service.status import parse_status

        return parse_status([])

    def process(self, output):
        from glmfleet.service.status import parse_status

        return parse_status(output)


class VllmMetricsFacts(FactBase):
    """Running and waiting requests and KV-cache use from vLLM's /metrics, read on the host."""

    def command(self, bind_address: str, port: int) -> str:
        from glmfleet.service.status import metrics_command

        return metrics_command(bind_address, port)

    def process(self, output):
        from glmfleet.service.status import parse_metrics

        return parse_metrics(output)


def record_status(state, h, hosts=None, gateway_view=None) -> None:
    """Gather one host's status (at planning time: nothing is changed); once every host has
    reported (or could not be reached), print the tables and end the run: exit status 1 when
    a host is not serving, else 0. Ending here, before pyinfra's confirmation prompt, keeps
    status scriptable (cron, CI: no terminal needed, -y or not). ``hosts``: the names that
    report (default: every active host); ``gateway_view``: state -> {host: {state, scur,
    stot}} or None (handed in by tasks/status.py)."""
    import sys

    from glmfleet.service.status import load_table, status_row, status_table, unreachable_row

    s = runctx.settings(state, h)
    probe = render_kit(s, derive(None, s.index_topk_pattern)[0])
    facts = h.get_fact(ServiceStatusFacts, service_dir=s.service_dir, weights_dir=s.weights_dir,
                       image=s.image, service_name=s.service_name, kit_paths=tuple(sorted(probe)))
    try:
        r = remote.sh(h, apikey.dotenv_key_command(s.service_dir), show=False)  # the key: never printed
        key = apikey.parse_dotenv_key(r.lines) if r.ok else None
        key, _ = apikey.for_host(s.api_key, key, s.api_key_file, s.port)
        s = dataclasses.replace(s, api_key=key or API_KEY_OPEN)
        config = json.loads(facts["config_json"]) if facts["config_json"] else None
        files = render_kit(s, derive(config, s.index_topk_pattern)[0])
    except (KitError, ValueError):  # NoKeyChosen too: no kit to compare with
        files = None
    ep = svc.endpoint(s.bind_address, s.port, str(h.data.get("ssh_hostname") or h.name))
    run = service_run(state)
    # Before the row: hosts plan concurrently, and a host's row means its facts are all in.
    run.status_metrics[h.name] = h.get_fact(VllmMetricsFacts, bind_address=s.bind_address, port=s.port)
    run.status_rows[h.name] = status_row(facts, files, s.model_revision, ep)
    run.status_keys[h.name] = "" if s.api_key in (None, API_KEY_OPEN) else s.api_key
    active = [x for x in state.inventory.get_active_hosts() if hosts is None or x.name in hosts]
    expected = {x.name for x in active}
    if not expected <= set(run.status_rows) or run.status_printed:
        return
    run.status_printed = True
    for name, (reason, _) in runctx.run_for(state).unreachable.items():
        if hosts is None or name in hosts:
            run.status_rows[name] = unreachable_row(reason)
    runctx.echo(status_table(run.status_rows))
    runctx.echo(load_table(run.status_rows, run.status_metrics,
                           gateway_view(state) if gateway_view else None))
    down = {name for name, row in run.status_rows.items() if not row["healthy"]}
    suite = s.status_harness
    if suite:
        down |= _fleet_harness(state, suite, run.status_rows, active)
    if down:
        runctx.echo(f"Not serving: {', '.join(sorted(down))} (see the table above); nothing was changed")
    sys.exit(1 if down else 0)


def _fleet_harness(state, suite: str, rows: dict, hosts: list) -> set[str]:
    """Run the kit's coherence harness from the controller against every serving host's
    endpoint, all hosts at once; print one table; return the hosts that failed it."""
    import os
    import subprocess
    import sys

    from gevent.pool import Pool

    from glmfleet.kit.render import FILES_DIR
    from glmfleet.service.status import base_url, harness_argv, harness_row, harness_table

    def one(h):
        s = runctx.settings(state, h)
        url = base_url(rows[h.name]["endpoint"])
        if not rows[h.name]["healthy"]:
            return h.name, harness_row(None, "not serving (see the status table)")
        if url is None:
            return h.name, harness_row(None, "API bound to loopback: not reachable from here")
        env = {**os.environ, "API_KEY": service_run(state).status_keys.get(h.name, ""),
               "MODEL": s.served_model_name}
        try:
            p = subprocess.run(harness_argv(sys.executable, str(FILES_DIR.parent), suite, url), env=env,
                               capture_output=True, text=True, timeout=3 * 3600)
            return h.name, harness_row(json.loads(p.stdout))
        except (ValueError, OSError, subprocess.TimeoutExpired) as e:
            return h.name, harness_row(None, f"harness did not finish: {type(e).__name__}")

    results = dict(Pool(max(1, len(hosts))).map(one, hosts))
    runctx.echo(harness_table(suite, results))
    return {name for name, r in results.items() if r["result"] != "PASS"}
