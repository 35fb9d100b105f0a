"""pyinfra facts and operations of the image cache stage (decisions: glmfleet.imagecache.plan).

On each host of the `image_cache` group, in this order:
  config     the registry's config (files.put); placed before the package, so the package's
             first start already serves read-only at the site address;
  packages   docker-registry and skopeo from the distribution (apt), only when missing;
  service    the package's systemd unit running and enabled, restarted when the config changed;
  copy       `skopeo copy` of the image from image_cache_upstream, detached, when the cache
             does not hold it yet (plan.start_command).

For the GPU hosts: ``default_mirror`` (a settings hook handed in by config.py) makes the
cache the registry_mirror of every GPU host deploying its image with none of its own, and
``copy_wait`` (handed to the image pull by tasks/image_pull.py) lets their background pulls
start once the copy is done, so each layer comes down from upstream once for the whole site.
"""

from __future__ import annotations

import dataclasses
import io

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation
from pyinfra.operations import apt, files, systemd

from glmfleet import roles, runctx
from glmfleet.imagecache import plan
from glmfleet.settings import Settings

STAGE = "image_cache"


class CacheFacts(FactBase):
    """init system, both packages installed, and the copy's state for the image."""

    def command(self, image: str) -> str:
        return ("if [ -d /run/systemd/system ]; then echo init=systemd; else echo init=none; fi; "
                "echo \"registry=$(dpkg-query -W -f='${db:Status-Abbrev}' docker-registry 2>/dev/null)\"; "
                "echo \"skopeo=$(dpkg-query -W -f='${db:Status-Abbrev}' skopeo 2>/dev/null)\"; "
                + plan.state_command(image))

    def process(self, output):
        kv = dict(str(line).strip().partition("=")[::2] for line in output)
        return {"init": kv.get("init", "none"), "registry": kv.get("registry", "").startswith("ii"),
                "skopeo": kv.get("skopeo", "").startswith("ii"), **plan.parse_state(output)}


def _record(status: str, detail: str) -> None:
    runctx.record(host.name, STAGE, status, detail)
    runctx.echo(f"[{host.name}] image cache: {status}: {detail}")


def usable(s: Settings) -> bool:
    """The stage's own refusals (recorded, nothing changed): an image Docker would not ask a
    mirror for, or a host without systemd (the package's unit keeps the registry up)."""
    try:
        plan.hub_reference(s.image)
    except plan.CacheError as e:
        _record("FAIL", f"{e}; fix: name the image as on Docker Hub, or take this host out of "
                        "the image_cache group")
        return False
    if host.get_fact(CacheFacts, image=s.image)["init"] != "systemd":
        _record("FAIL", "the image cache runs under systemd and this host has none; fix: put a "
                        "host with systemd in the image_cache group")
        return False
    return True


def config(s: Settings, **op_kwargs):
    text = plan.served_config(s.site_address, s.image_cache_port)
    return files.put(src=io.StringIO(text), dest=plan.CONFIG_PATH, mode="644", **op_kwargs)


def packages(s: Settings, **op_kwargs) -> None:
    facts = host.get_fact(CacheFacts, image=s.image)
    apt.packages(packages=list(plan.PACKAGES), update=not (facts["registry"] and facts["skopeo"]),
                 no_recommends=True, **op_kwargs)


def service(put, **op_kwargs) -> None:
    systemd.service(service=plan.SERVICE, running=True, enabled=True, **op_kwargs)
    systemd.service(service=plan.SERVICE, restarted=True, _if=put.did_change,
                    name="Image cache: registry restarted on its new config")


@operation()
def copy():
    """The copy started detached (it runs while the other stages go on); nothing when the
    cache holds the image or a copy of it is running."""
    s = runctx.settings()
    due, why = plan.copy_due(host.get_fact(CacheFacts, image=s.image), s.image)
    url = url_of(host, s)
    if not due:
        host.noop(why)
        if host.state.is_executing:
            _record("PASS", f"{why}, served at {url}")
        return
    yield StringCommand(plan.start_command(s.image, s.image_cache_upstream))
    if host.state.is_executing:
        _record("PASS", f"copying {s.image} from {s.image_cache_upstream} in the background "
                        f"(log: {plan.LOG}), served at {url}")


# --- for the GPU hosts ----------------------------------------------------------------------

def url_of(h, s: Settings) -> str:
    return plan.mirror_url(runctx.site_address(h, s), s.image_cache_port)


def cache_host(state, validated: dict | None = None):
    """(the inventory's first image_cache host, its settings), or None."""
    for h in state.inventory:
        if roles.is_image_cache(h.groups):
            s = runctx.host_settings(state, h, validated)
            if s is not None:
                return h, s
    return None


def default_mirror(state, settings: dict[str, Settings]):
    """Settings hook (config.py): GPU hosts pull through the inventory's image cache
    (plan.default_mirrors says which)."""
    found = cache_host(state, settings)  # called while the run's settings are made
    cache = (url_of(*found), found[1].image) if found else None
    mirrors = plan.default_mirrors(cache, [(n, roles.is_gpu_host(state.inventory.get_host(n).groups),
                                            s.registry_mirror, s.image) for n, s in settings.items()])
    return {n: dataclasses.replace(s, registry_mirror=mirrors[n]) if n in mirrors else s
            for n, s in settings.items()}, []


def copy_wait(state, h, s: Settings):
    """What this GPU host's background pull waits for (handed to the image pull by
    tasks/image_pull.py): (cache host, state command, done(lines), note(lines)) while the
    cache copies the image in this run; () to pull at once; None when not behind the cache."""
    found = cache_host(state)
    if found is None:
        return None
    ch, cs = found
    how = plan.pull_wait(ch in state.active_hosts, (url_of(ch, cs), cs.image), s.registry_mirror, s.image)
    if how != "copy":
        return None if how is None else ()
    return (ch.name, plan.state_command(s.image),
            lambda lines: plan.copy_done(plan.parse_state(lines), s.image),
            lambda lines: plan.copy_outcome(plan.parse_state(lines), s.image))
