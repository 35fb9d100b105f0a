"""Preflight of a gateway host: OS, disk, its port and its certificate; never a GPU check."""

from __future__ import annotations

from glmfleet.preflight.checks import FAIL, PASS, run_gateway_checks, verdict
from glmfleet.settings import load_defaults, validate

GIB = 2**30
HOST = {"complete": True, "os": "debian 12", "os_pretty_name": "Debian GNU/Linux 12 (bookworm)",
        "weights_fs_free_bytes": 20 * GIB, "weights_fs_mount": "/", "port_listeners": []}


def settings(**kw):
    return validate("gw", {**load_defaults(), "model_revision": "a" * 40, **kw})


def by_name(checks):
    return {c.name: c for c in checks}


def test_a_bare_debian_gateway_passes_without_gpu_checks():
    checks = run_gateway_checks(HOST, settings(), None)
    assert verdict(checks) == PASS
    assert set(by_name(checks)) == {"host_facts", "os", "disk", "gateway_port", "tls"}


def test_port_taken_by_another_program_fails_naming_the_setting():
    host = {**HOST, "port_listeners": [{"address": "0.0.0.0:8080", "pid": 77, "process": "nginx"}]}
    c = by_name(run_gateway_checks(host, settings(), None))["gateway_port"]
    assert c.status == FAIL and "pid 77 (nginx)" in c.reason and "gateway_port" in c.remedy
    host = {**HOST, "port_listeners": [{"address": "0.0.0.0:8080", "pid": 5, "process": "haproxy"}]}
    assert by_name(run_gateway_checks(host, settings(), None))["gateway_port"].status == PASS


def test_missing_certificate_and_small_disk_fail():
    checks = by_name(run_gateway_checks({**HOST, "weights_fs_free_bytes": GIB // 2},
                                        settings(gateway_tls_cert="/etc/haproxy/fleet.pem"), False))
    assert checks["tls"].status == FAIL and "/etc/haproxy/fleet.pem" in checks["tls"].reason
    assert checks["disk"].status == FAIL
    ok = by_name(run_gateway_checks(HOST, settings(gateway_tls_cert="/etc/haproxy/fleet.pem"), True))
    assert ok["tls"].status == PASS


def test_unsupported_os_fails():
    checks = by_name(run_gateway_checks({**HOST, "os": "alpine 3.20", "os_pretty_name": "Alpine"},
                                        settings(), None))
    assert checks["os"].status == FAIL
