"""The gateway's view of the inventory: servers, out-of-limit hosts, the Prometheus targets."""

from __future__ import annotations

import json
from types import SimpleNamespace

from glmfleet import runctx
from glmfleet.gateway import ops
from glmfleet.settings import load_defaults, validate

DEFAULTS = {**load_defaults(), "model_revision": "a" * 40}


class Data(dict):
    def dict(self):
        return dict(self)


def fake_host(name, groups, **data):
    return SimpleNamespace(name=name, groups=groups, data=Data({**DEFAULTS, **data}))


def fleet(tmp_path, limit=None):
    hosts = [fake_host("g1", ["gpu"], ssh_hostname="10.0.0.1", site_address="10.9.0.1",
                       prometheus_targets=str(tmp_path / "targets.json")),
             fake_host("g2", ["gpu"], ssh_hostname="10.0.0.2", max_num_seqs=4),
             fake_host("lb", ["gateway"], ssh_hostname="10.0.0.5")]
    state = SimpleNamespace(inventory=hosts)
    limit = limit or [h.name for h in hosts]
    runctx.run_for(state).settings = {h.name: validate(h.name, h.data) for h in hosts if h.name in limit}
    return state


def test_every_gpu_host_is_a_server_even_outside_the_limit(tmp_path):
    state = fleet(tmp_path, limit=["g1", "lb"])  # --limit g1,lb: g2 stays in the backend
    assert [(s.name, s.address, s.port, s.maxconn) for s in ops.servers(state)] == [
        ("g1", "10.9.0.1", 8000, 2), ("g2", "10.0.0.2", 8000, 4)]
    text = ops.render(state, runctx.run_for(state).settings["lb"])
    assert "server g2 10.0.0.2:8000 maxconn 4" in text


def test_prometheus_targets_written_once_per_run(tmp_path):
    state = fleet(tmp_path)
    path = ops.write_prometheus_targets(state)
    assert path == str(tmp_path / "targets.json")
    targets = json.loads((tmp_path / "targets.json").read_text())
    assert [t["targets"][0] for t in targets] == ["10.9.0.1:8000", "10.0.0.2:8000", "10.0.0.5:8404"]
    assert ops.write_prometheus_targets(state) is None  # the next host of the run: already done
