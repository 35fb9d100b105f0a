"""Three bare hosts to serving with the image from "Docker Hub" through the site's image cache.

Docker Hub is stood in for by a registry (Debian's docker-registry, TLS from a test CA) behind
a throttled link (the site's uplink, Uplink) that only the cache host can reach. The
inventory's `image_cache` group holds tts-m, a host of its own (no GPU stage runs there): the
deploy installs the registry and skopeo there from the distribution, copies the image into it
from the upstream, and every GPU host pulls through it (registry_mirror defaults to it). The image is named as on Docker Hub
("glmfleet/serving:1"), which is the only kind of name Docker sends to a mirror.

What the hosts' own logs show (timestamps and lines, never elapsed-time assertions):
  - the cache's copy from upstream started before any weights download, while the hosts
    installed Docker; each host's pull started once the copy was done and overlapped its
    weights download (/var/log/glmfleet/image-pull.log against
    <weights_dir>/.glmfleet/weights.log);
  - only the canary compiled (the serving double's "compile cache: miss"); the hosts after it
    booted from the canary's seeded JIT cache ("compile cache: hit");
  - the layers came through the cache (the GPU hosts cannot reach the upstream), and the
    upstream served each blob once for the whole site.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from glmfleet.settings import load_defaults
from testbed.doubles import nvml
from testbed.doubles.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, HubDouble, make_checkpoint
from testbed.doubles.registry import Registry, Uplink
from testbed.doubles.serving import image as serving_image

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("tts-a", "tts-b", "tts-c")  # inventory order: tts-a is the canary
MIRROR_HOST = "tts-m"  # in the image_cache group: no GPU stage
IMAGE = "glmfleet/serving:1"  # a Docker Hub name: docker.io/glmfleet/serving:1
WEIGHTS_DIR = "/srv/glm/weights"
DAEMON_JSON = {"storage-driver": "vfs", "iptables": False, "bridge": "none"}
STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)"


def _when(text: str, pattern: str) -> datetime:
    m = re.search(STAMP + r"[^\n]*" + pattern, text)
    assert m, (pattern, text[-2000:])
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")


@pytest.fixture(scope="module")
def site(fleet, pyinfra_cli, tmp_path_factory):
    from testbed.doubles.aptrepo import AptRepoDouble

    work = tmp_path_factory.mktemp("time-to-serving")
    defaults = load_defaults()
    checkpoint = work / "hub"
    make_checkpoint(checkpoint, shards=3, shard_bytes=2 * 2**20)
    repo, upstream, hubs, uplink = AptRepoDouble(), Registry(work / "upstream", access_log=True), [], None
    try:
        override = serving_image.site_override(defaults["service_name"])
        for name in HOSTS:
            files = nvml.host_files("rtx6000x4")
            files["/etc/docker/daemon.json"] = json.dumps(DAEMON_JSON)
            files["/usr/local/bin/nvidia-container-runtime-hook"] = (serving_image.HOOK_STANDIN, 0o755)
            if override:
                files[f"{defaults['service_dir']}/docker-compose.override.yml"] = override
            fleet.add_host(name, suite="bookworm", files=files, shm_size="32g", site=True)
        fleet.add_host(MIRROR_HOST, suite="bookworm", site=True)
        fleet.start(*HOSTS, MIRROR_HOST, timeout=90)
        m = fleet[MIRROR_HOST]
        hub_addr = upstream.listen_on(m.gateway)
        digest = upstream.push(hub_addr, "glmfleet/serving", "1", serving_image.tarball())
        uplink = Uplink(m.gateway, hub_addr, 8 * 2**20)  # the site's link to "Docker Hub"
        upstream.trust(m, uplink.addr)  # skopeo reads /etc/docker/certs.d as Docker does
        # The cache's site link at 48 Mbit/s, shared by the three pulls (~65 MB each): a pull
        # takes a while, as a real image's does, so it can be seen running with the weights.
        subprocess.run(["ip", "netns", "exec", m.netns, "tc", "qdisc", "add", "dev", "eth1", "root",
                        "tbf", "rate", "48mbit", "burst", "64kb", "latency", "2s"], check=True)
        data = {}
        for name in HOSTS:
            h = fleet[name]
            hubs.append(HubDouble(checkpoint, repo_id=DEFAULT_REPO_ID, revision=DEFAULT_REVISION,
                                  host=h.gateway, port=0).start())
            hubs[-1].set_faults(slow_bytes_per_s=250_000)  # ~8 s per shard: a download to overlap
            data[name] = {**repo.settings(h.gateway), "docker_packages": "distro", "image": IMAGE,
                          "image_cache_upstream": uplink.addr, "site_address": h.site_address,
                          "model_revision": DEFAULT_REVISION, "api_key": "open",
                          "hf_endpoint": hubs[-1].url, "weights_dir": WEIGHTS_DIR,
                          "rollout_batch_size": 2, "preflight_report": str(work / "preflight.json"),
                          "prometheus_targets": str(work / "prometheus-targets.json")}
        inventory = fleet.write_inventory(work / "inventory.py", hosts=list(HOSTS), host_data=data)
        cache = {**fleet.ssh_data(m), "image": IMAGE, "model_revision": DEFAULT_REVISION,
                 "image_cache_upstream": uplink.addr, "site_address": m.site_address,
                 "preflight_report": str(work / "preflight.json")}
        with inventory.open("a") as f:
            f.write(f"image_cache = [({MIRROR_HOST!r}, {cache!r})]\n")
        r = subprocess.run([pyinfra_cli, "-y", str(inventory), "deploy.py"], cwd=REPO,
                           capture_output=True, text=True, timeout=1500)
        (work / "deploy.log").write_text(r.stdout + r.stderr)
        yield {"rc": r.returncode, "log": r.stdout + r.stderr, "upstream": upstream, "manifest": digest,
               "mirror_host": m, "work": work, "uplink": uplink.addr}
    finally:
        for hub in hubs:
            hub.stop()
        if uplink:
            uplink.stop()
        upstream.stop()
        repo.stop()
        for name in (*HOSTS, MIRROR_HOST):
            if name in fleet.hosts:
                fleet.remove(name)


def test_bare_hosts_serve_with_the_image_from_the_cache(fleet, site):
    assert site["rc"] == 0, site["log"][-8000:]
    m = site["mirror_host"]
    url = f"http://{m.site_address}:{load_defaults()['image_cache_port']}"
    for name in HOSTS:
        assert f"[{name}] service: PASS" in site["log"], site["log"][-6000:]
        daemon = json.loads((fleet[name].root / "etc/docker/daemon.json").read_text())
        assert daemon["registry-mirrors"][0] == url  # the default: the inventory's image cache
        assert daemon["storage-driver"] == "vfs"  # the operator's own keys kept
        info = fleet[name].exec("docker info -f '{{json .RegistryConfig.Mirrors}}'").stdout
        assert url in info
    assert f"[{m.name}] image cache: PASS: copying {IMAGE} from {site['uplink']}" in site["log"]
    # a host of the image_cache group runs the cache and nothing of a GPU host
    assert not re.search(rf"\[{m.name}\] (docker|weights|service): ", site["log"]), site["log"][-4000:]
    assert m.exec("command -v dockerd || echo none").stdout.strip() == "none"
    fetches = site["upstream"].blob_fetches(m.gateway)
    # The cache's own access log (journald): which site addresses fetched the image's blobs.
    journal = m.exec("journalctl -u docker-registry --no-pager -o cat").stdout
    served = {ln.split()[0] for ln in journal.splitlines() if re.search(r'"GET /v2/glmfleet/serving/blobs/sha256:\S+ HTTP/[0-9.]+" 200 ', ln)}
    print(f"upstream blob fetches {fetches}; the cache served blobs to {sorted(served)}")
    assert len(fetches) == 2  # the serving double's config blob and its one layer
    assert all(n == 1 for n in fetches.values()), fetches  # each from upstream once for the site
    assert served == {fleet[h].site_address for h in HOSTS}, served  # every GPU host pulled from the cache
    # the served registry refuses a push: only the deploy's copy writes to it
    push = m.exec("python3 -c 'import urllib.request as u, urllib.error as e\ntry: u.urlopen(u.Request("
                  f"\"{url}/v2/glmfleet/serving/blobs/uploads/\", method=\"POST\"))\n"
                  "except e.HTTPError as x: print(x.code)'").stdout
    assert push.strip() == "405", push


def _times(h) -> dict[str, datetime]:
    pull = (h.root / "var/log/glmfleet/image-pull.log").read_text()
    weights = (h.root / WEIGHTS_DIR.lstrip("/") / ".glmfleet/weights.log").read_text()
    return {"pull_start": _when(pull, "pull started"), "pull_end": _when(pull, "pull finished: exit 0"),
            "dl_start": _when(weights, r"download of .* started"),
            "dl_end": _when(weights, "download finished with exit code 0")}


def test_the_pull_ran_while_the_weights_downloaded(fleet, site):
    """The transfer over the site's uplink (the cache's copy) started right after preflight,
    while the hosts installed Docker; each host's pull started once the copy was done and ran
    while its weights downloaded (neither waited for the other)."""
    assert site["rc"] == 0, site["log"][-8000:]
    m = site["mirror_host"]
    copy = (m.root / "var/log/glmfleet/image-cache.log").read_text()
    copy_start, copy_end = _when(copy, "copy started"), _when(copy, "copy finished: exit 0")
    times = {name: _times(fleet[name]) for name in HOSTS}
    print(f"copy into the cache {copy_start:%T}-{copy_end:%T}")
    for name, t in times.items():
        print(f"{name}: pull {t['pull_start']:%T}-{t['pull_end']:%T}, "
              f"weights {t['dl_start']:%T}-{t['dl_end']:%T}")
    for name, t in times.items():
        assert copy_start <= t["dl_start"], (name, copy_start, t)
        assert t["pull_start"] >= copy_end, (name, copy_end, t)
        assert t["pull_start"] < t["dl_end"] and t["dl_start"] < t["pull_end"], (name, t)  # they overlapped
        assert f"[{name}] {m.name}'s copy into the image cache is done: pulling {IMAGE} in the background" in site["log"]


def test_only_the_canary_compiled(fleet, site):
    assert site["rc"] == 0, site["log"][-8000:]
    name = load_defaults()["service_name"]
    boots = {h: fleet[h].exec(f"docker logs {name} 2>&1").stdout for h in HOSTS}
    canary, *later = HOSTS
    assert "compile cache: miss" in boots[canary] and "compile cache: wrote" in boots[canary]
    for h in later:
        assert "compile cache: hit" in boots[h] and "compile cache: miss" not in boots[h], boots[h][-3000:]
        assert f"[{h}] service: PASS" in site["log"]
        line = next(ln for ln in site["log"].splitlines() if ln.startswith(f"[{h}] service: PASS"))
        assert f"JIT cache seeded from {canary}" in line and "host to host, sha256 checked" in line, line
    # the canary served its archive during the rollout only: server gone, archive removed
    gone = fleet[canary].exec("ls /var/lib/glmfleet/jit-seed/served 2>&1; pgrep -f '[h]ttp[.]server' || echo none")
    assert "No such file" in gone.stdout and gone.stdout.strip().endswith("none"), gone.stdout
    # seeding saves the compile, not the tuning that is never cached at several ranks
    assert all("FlashInfer autotune at 4 ranks" in b for b in boots.values())


def test_a_second_run_changes_nothing(site, pyinfra_cli):
    """--dry plans nothing, then a run with -y changes nothing: image present (in the cache
    and on the hosts), caches seeded, nothing restarted."""
    assert site["rc"] == 0, site["log"][-8000:]
    r = subprocess.run([pyinfra_cli, "-y", "--dry", "--json", str(site["work"] / "inventory.py"), "deploy.py"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-6000:]
    assert [op["name"] for op in json.loads(r.stdout)["plan"] if op["hosts_with_change"]] == [], r.stderr[-6000:]
    r = subprocess.run([pyinfra_cli, "-y", "--json", str(site["work"] / "inventory.py"), "deploy.py"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    (site["work"] / "deploy2.log").write_text(r.stderr)
    assert r.returncode == 0, r.stderr[-6000:]
    report = json.loads(r.stdout)
    every = (*HOSTS, MIRROR_HOST)
    changed = {h: [op["name"] for op in report["results"]["operations"] if h in op["success"]] for h in every}
    assert changed == {h: [] for h in every}, changed
