"""The image cache's pure parts: which names it can serve, its config, the copy job's state,
the GPU hosts' default mirror, the roles from inventory groups, its preflight."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest

from glmfleet import roles
from glmfleet.imagecache import plan
from glmfleet.imagecache.ops import default_mirror
from glmfleet.preflight.checks import FAIL, PASS, WARN, run_image_cache_checks
from glmfleet.settings import load_defaults, validate

GIB = 2**30


def settings(name="h", **kw):
    return validate(name, {**load_defaults(), "model_revision": "a" * 40, **kw})


@pytest.mark.parametrize("image,want", [
    ("glmfleet/serving:1", ("glmfleet/serving", "1")),
    ("ubuntu", ("library/ubuntu", "latest")),
    ("docker.io/vllm/vllm-openai:v0.11.0", ("vllm/vllm-openai", "v0.11.0")),
    ("index.docker.io/library/ubuntu:24.04", ("library/ubuntu", "24.04")),
    ("vllm/vllm-openai@sha256:" + "ab" * 32, ("vllm/vllm-openai", "sha256:" + "ab" * 32)),
])
def test_docker_hub_names(image, want):
    assert plan.hub_reference(image) == want


@pytest.mark.parametrize("image,says", [
    ("nvcr.io/nvidia/pytorch:25.01", "on the registry nvcr.io, not Docker Hub"),
    ("10.0.0.1:5000/glm/serving:1", "on the registry 10.0.0.1:5000"),
    ("localhost/x:1", "on the registry localhost"),
    ("Upper/Case:1", "not a valid repository name"),
    ("a/b@sha1:00", "sha256:<64 hex digits>"),
])
def test_other_names_are_refused_with_the_reason(image, says):
    with pytest.raises(plan.CacheError) as e:
        plan.hub_reference(image)
    assert says in str(e.value)


def test_the_served_registry_is_read_only_at_the_site_address():
    cfg = json.loads(plan.served_config("10.9.0.3", 5000))
    assert cfg["http"]["addr"] == "10.9.0.3:5000"
    assert cfg["storage"]["maintenance"]["readonly"] == {"enabled": True}
    assert cfg["storage"]["filesystem"]["rootdirectory"] == plan.STORAGE
    assert "proxy" not in cfg and "auth" not in cfg
    assert json.loads(plan.served_config(None, 5001))["http"]["addr"] == ":5001"
    assert plan.mirror_url("fd00::3", 5000) == "http://[fd00::3]:5000"


def test_copy_state_and_when_it_is_due():
    image = "glmfleet/serving:1"
    st = plan.parse_state(["stored=0", f"job_image={image}", "job_running=1", "job_rc="])
    assert plan.copy_due(st, image) == (False, f"the copy of {image} into the cache is running (log: {plan.LOG})")
    assert not plan.copy_done(st, image)
    st = plan.parse_state(["stored=0", f"job_image={image}", "job_running=0", "job_rc=1"])
    assert plan.copy_due(st, image)[0] and plan.copy_done(st, image)  # failed: again next run
    st = plan.parse_state(["stored=1", "job_image=", "job_running=0", "job_rc="])
    assert plan.copy_due(st, image) == (False, f"{image} is in the cache") and plan.copy_done(st, image)


def test_state_command_reads_the_storage_marker(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "STORAGE", str(tmp_path))
    monkeypatch.setattr(plan, "STATE", str(tmp_path / "state"))
    out = subprocess.run(["sh", "-c", plan.state_command("ubuntu:24.04")], capture_output=True, text=True)
    assert plan.parse_state(out.stdout.splitlines())["stored"] is False
    marker = tmp_path / "docker/registry/v2/repositories/library/ubuntu/_manifests/tags/24.04/current/link"
    marker.parent.mkdir(parents=True)
    marker.write_text("sha256:" + "0" * 64)
    out = subprocess.run(["sh", "-c", plan.state_command("ubuntu:24.04")], capture_output=True, text=True)
    assert plan.parse_state(out.stdout.splitlines())["stored"] is True


def test_start_command_copies_with_digests_kept():
    cmd = plan.start_command("vllm/vllm-openai@sha256:" + "cd" * 32, "docker.io")
    assert f"timeout {plan.COPY_MAX_S} skopeo copy --retry-times 3 --all --dest-tls-verify=false" in cmd
    assert "docker://docker.io/vllm/vllm-openai@sha256:" + "cd" * 32 in cmd
    assert "/vllm/vllm-openai:sha256-" + "cd" * 32 in cmd  # a digest is kept under a tag
    assert "--all" not in plan.start_command("vllm/vllm-openai:v1", "docker.io")  # a tag: this platform
    assert "setpriv --reuid=docker-registry" in cmd and "setsid bash -c" in cmd


def test_which_hosts_pull_through_the_cache_and_when():
    cache = ("http://10.9.0.9:5000", "glmfleet/serving:1")
    hosts = [("a", True, None, "glmfleet/serving:1"), ("b", True, "https://own", "glmfleet/serving:1"),
             ("c", False, None, "glmfleet/serving:1"), ("d", True, None, "glmfleet/other:1")]
    assert plan.default_mirrors(cache, hosts) == {"a": "http://10.9.0.9:5000"}
    assert plan.default_mirrors(None, hosts) == {}
    assert plan.default_mirrors(("http://x:5000", "nvcr.io/a/b:1"), [("a", True, None, "nvcr.io/a/b:1")]) == {}
    assert plan.pull_wait(True, cache, cache[0], cache[1]) == "copy"
    assert plan.pull_wait(False, cache, cache[0], cache[1]) == "now"  # cache outside this run
    assert plan.pull_wait(True, cache, "https://own", cache[1]) is None  # the operator's own mirror
    assert plan.pull_wait(True, cache, cache[0], "glmfleet/other:1") is None
    failed = plan.parse_state(["stored=0", "job_image=glmfleet/serving:1", "job_running=0", "job_rc=1"])
    assert "failed (exit 1" in plan.copy_outcome(failed, cache[1])
    assert plan.copy_outcome(plan.parse_state(["stored=1"]), cache[1]) is None


def test_roles_from_groups():
    assert roles.is_gpu_host(("gpu",)) and roles.is_gpu_host(()) and roles.is_gpu_host(None)
    # pyinfra puts every host of inventory.py in a group "inventory" too: membership counts
    assert not roles.is_gpu_host(("image_cache", "inventory")) and not roles.is_gpu_host(("gateway",))
    assert not roles.is_gpu_host(("gateway", "image_cache")) and roles.is_image_cache(("gateway", "image_cache"))
    assert roles.is_gateway(["gateway", "all"]) and not roles.is_gateway(["gpu"]) and not roles.is_gateway(None)


class _Inventory:
    def __init__(self, hosts):
        self.hosts = hosts

    def __iter__(self):
        return iter(self.hosts)

    def get_host(self, name):
        return next(h for h in self.hosts if h.name == name)


def _host(name, groups, **data):
    return SimpleNamespace(name=name, groups=groups, data=SimpleNamespace(dict=lambda: {**load_defaults(), **data}))


def test_gpu_hosts_default_to_the_inventory_cache():
    cache = _host("c", ("image_cache",), site_address="10.9.0.9", image_cache_port=5001)
    state = SimpleNamespace(inventory=_Inventory([_host("a", ("gpu",)), _host("b", ("gpu",)), cache]))
    given = {"a": settings("a"), "b": settings("b", registry_mirror="https://own.mirror"),
             "c": settings("c", site_address="10.9.0.9", image_cache_port=5001)}
    out, notes = default_mirror(state, given)
    assert out["a"].registry_mirror == "http://10.9.0.9:5001"
    assert out["b"].registry_mirror == "https://own.mirror"  # the operator's own wins
    assert out["c"].registry_mirror is None  # the cache host runs no GPU stage
    other = {"a": settings("a", image="glmfleet/other:2"), "c": given["c"]}
    assert default_mirror(state, other)[0]["a"].registry_mirror is None  # the cache holds another image
    alone = SimpleNamespace(inventory=_Inventory([_host("a", ("gpu",))]))
    assert default_mirror(alone, {"a": settings("a")})[0]["a"].registry_mirror is None


def test_preflight_of_a_host_running_only_the_cache():
    host = {"complete": True, "os": "debian 12", "os_pretty_name": "Debian GNU/Linux 12 (bookworm)",
            "weights_fs_free_bytes": 200 * GIB, "weights_fs_mount": "/", "port_listeners": []}
    checks = {c.name: c for c in run_image_cache_checks(host, settings())}
    assert set(checks) == {"host_facts", "os", "disk", "image_cache_port"}
    assert all(c.status == PASS for c in checks.values())
    small = {c.name: c for c in run_image_cache_checks({**host, "weights_fs_free_bytes": 10 * GIB}, settings())}
    assert small["disk"].status == WARN
    taken = {**host, "port_listeners": [{"pid": 42, "process": "nginx"}]}
    c = {c.name: c for c in run_image_cache_checks(taken, settings())}["image_cache_port"]
    assert c.status == FAIL and "port 5000 is taken by pid 42 (nginx)" in c.reason
    own = {**host, "port_listeners": [{"pid": 7, "process": "docker-registry"}]}
    assert {c.name: c for c in run_image_cache_checks(own, settings())}["image_cache_port"].status == PASS
