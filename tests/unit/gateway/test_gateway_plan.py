"""The gateway's decisions: haproxy.cfg from the fleet, the runtime API's answers, targets."""

from __future__ import annotations

import pytest

from glmfleet.gateway import plan as gw
from glmfleet.settings import SettingsError, load_defaults, validate

SERVERS = [gw.Server("sv-b", "10.214.0.11", 8000, 2), gw.Server("sv-a", "10.214.0.10", 8000, 2)]


def config(**kw):
    args = {"port": 8080, "stats_port": 8404, "timeout_s": 900, "tls_cert": None, **kw}
    return gw.render_config(SERVERS, **args)


def section(text: str, header: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" ")),
               len(lines))
    return [line.strip() for line in lines[start + 1:end] if line.strip()]


def test_one_frontend_one_leastconn_backend_with_every_server():
    text = config()
    front = section(text, "frontend fleet")
    assert "bind :8080" in front and "default_backend vllm" in front
    back = section(text, "backend vllm")
    assert "balance leastconn" in back
    assert "option httpchk GET /health" in back and "http-check expect status 200" in back
    # sorted by name, each capped at its host's max_num_seqs
    assert [line for line in back if line.startswith("server ")] == [
        "server sv-a 10.214.0.10:8000 maxconn 2", "server sv-b 10.214.0.11:8000 maxconn 2"]
    assert "load-server-state-from-file global" in back
    assert f"server-state-file {gw.STATE_FILE}" in section(text, "global")
    assert f"stats socket {gw.ADMIN_SOCKET} mode 600 level admin" in section(text, "global")


def test_streams_timeouts_and_no_compression():
    text = config(timeout_s=1200)
    defaults = section(text, "defaults")
    assert "timeout server 1200s" in defaults and "timeout client 1200s" in defaults
    assert "timeout queue 1200s" in defaults
    assert "compression" not in text  # SSE must reach clients unaltered, token by token


def test_tls_from_the_certificate_setting():
    assert "bind :8443 ssl crt /etc/haproxy/fleet.pem" in section(
        config(port=8443, tls_cert="/etc/haproxy/fleet.pem"), "frontend fleet")


def test_stats_and_prometheus_on_their_own_port():
    stats = section(config(), "frontend stats")
    assert stats[0] == "bind :8404"
    assert "http-request use-service prometheus-exporter if { path /metrics }" in stats


def test_same_fleet_same_text():
    assert config() == gw.render_config(list(reversed(SERVERS)), port=8080, stats_port=8404,
                                        timeout_s=900, tls_cert=None)


def test_server_names_are_haproxy_safe():
    assert gw.server_name("gpu-1.example.com") == "gpu-1.example.com"
    assert gw.server_name("gpu 1/a") == "gpu_1_a"


SHOW_STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight
fleet,FRONTEND,,,3,5,262117,40,,,,,,,,,,OPEN,
vllm,sv-a,0,0,2,2,2,17,,,,,,,,,,UP,1
vllm,sv-b,1,1,0,2,2,9,,,,,,,,,,DRAIN,0
vllm,sv-c,0,0,0,1,2,4,,,,,,,,,,DOWN 1/2,1
vllm,sv-d,0,0,0,0,2,0,,,,,,,,,,MAINT,1
vllm,BACKEND,1,1,2,4,200,30,,,,,,,,,,UP,1
stats,FRONTEND,,,1,1,262117,3,,,,,,,,,,OPEN,
"""


def test_show_stat_parsed_for_our_backend_only():
    rows = gw.parse_show_stat(SHOW_STAT)
    assert set(rows) == {"sv-a", "sv-b", "sv-c", "sv-d"}
    assert rows["sv-a"] == {"status": "UP", "scur": 2, "stot": 17, "qcur": 0}
    assert rows["sv-b"]["qcur"] == 1
    assert {n: gw.gateway_state(r["status"]) for n, r in rows.items()} == {
        "sv-a": "UP", "sv-b": "DRAIN", "sv-c": "DOWN", "sv-d": "MAINT"}
    assert gw.parse_show_stat("Unknown command\n") == {}


def test_admin_states_follow_this_runs_results_only():
    current = gw.parse_show_stat(SHOW_STAT)
    changes = gw.admin_changes({"sv-a": "FAIL", "sv-b": "PASS", "sv-d": "PASS", "sv-x": "FAIL"}, current)
    assert changes == [("sv-a", "maint"), ("sv-b", "ready"), ("sv-d", "ready")]
    assert gw.admin_changes({"sv-a": "PASS", "sv-d": "FAIL"}, current) == []  # already so


def test_runtime_commands_go_through_socat():
    assert gw.set_state_command("sv-a", "drain") == \
        f"echo 'set server vllm/sv-a state drain' | socat stdio {gw.ADMIN_SOCKET}"
    with pytest.raises(AssertionError):
        gw.set_state_command("sv-a", "up")


def test_prometheus_targets_label_every_endpoint():
    targets = gw.prometheus_targets({"sv-a": "10.0.0.1:8000"}, {"gw": "10.0.0.9:8404"})
    assert targets == [{"targets": ["10.0.0.1:8000"], "labels": {"job": "glmfleet-vllm", "host": "sv-a"}},
                       {"targets": ["10.0.0.9:8404"], "labels": {"job": "glmfleet-haproxy", "host": "gw"}}]


def test_gateway_settings_validated():
    data = {**load_defaults(), "model_revision": "a" * 40}
    s = validate("gw", data)
    assert (s.gateway_port, s.gateway_tls_cert, s.site_address) == (8080, None, None)
    with pytest.raises(SettingsError) as e:
        validate("gw", {**data, "gateway_stats_port": 8080, "gateway_tls_cert": "cert.pem",
                        "gateway_drain_timeout_s": -1})
    text = str(e.value)
    assert "gw: setting 'gateway_tls_cert' = 'cert.pem'" in text
    assert "gw: setting 'gateway_drain_timeout_s' = -1" in text


def test_stats_port_must_differ():
    data = {**load_defaults(), "model_revision": "a" * 40, "gateway_stats_port": 8080}
    with pytest.raises(SettingsError, match="gateway_stats_port.*a port other than gateway_port"):
        validate("gw", data)

