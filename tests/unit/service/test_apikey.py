"""api_key = "generate": one random key per fleet, stored 0600 on the controller, reused."""

from __future__ import annotations

import os
import stat

import pytest

from glmfleet.service import apikey
from glmfleet.settings import SettingsError, load_defaults, validate

REV = "0123456789abcdef0123456789abcdef01234567"


def settings(host="h1", **over):
    return validate(host, {**load_defaults(), "model_revision": REV, **over})


def test_generate_is_a_valid_setting_and_bad_keys_still_are_not():
    assert settings(api_key="generate").api_key == "generate"
    assert settings().api_key_file == ".secrets/api-key"
    assert settings(api_key="open").api_key == "open"
    with pytest.raises(SettingsError, match='"generate" or "open"'):
        settings(api_key="short")


def test_new_file_same_key_twice_mode_0600_and_never_shown(tmp_path):
    path = tmp_path / ".secrets" / "api-key"
    fleet = {h: settings(h, api_key="generate", api_key_file=str(path)) for h in ("a", "b", "c")}
    resolved, notes = apikey.resolve(fleet)
    key = resolved["a"].api_key
    assert key != "generate" and len(key) >= 32
    assert {s.api_key for s in resolved.values()} == {key}  # every host: the same key
    assert path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(notes) == 1 and "generated a new" in notes[0] and str(path) in notes[0]
    assert key not in "".join(notes)
    # a later run reuses it: nothing changes on the hosts
    again, notes = apikey.resolve(fleet)
    assert again["b"].api_key == key
    assert "using the" in notes[0] and key not in notes[0]


def test_relative_path_is_from_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved, _ = apikey.resolve({"a": settings(api_key="generate")})
    assert (tmp_path / ".secrets" / "api-key").read_text().strip() == resolved["a"].api_key


def test_explicit_or_no_key_is_left_alone_and_no_file_made(tmp_path):
    path = tmp_path / "k"
    fleet = {"a": settings("a", api_key="my-own-key-123", api_key_file=str(path)),
             "b": settings("b", api_key_file=str(path))}
    resolved, notes = apikey.resolve(fleet)
    assert resolved == fleet and notes == [] and not path.exists()


def test_loose_mode_is_tightened_and_a_bad_file_is_an_error(tmp_path):
    path = tmp_path / "k"
    path.write_text("reused-key-0123456789\n")
    os.chmod(path, 0o644)
    assert apikey.load_or_create(str(path)) == ("reused-key-0123456789", False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("bad key\n")
    with pytest.raises(apikey.ApiKeyError, match="does not hold a usable key"):
        apikey.load_or_create(str(path))


def test_kit_gets_the_resolved_key(tmp_path):
    from glmfleet.kit.index_pattern import DEFAULT_PATTERN
    from glmfleet.kit.render import render_kit

    path = tmp_path / "k"
    resolved, _ = apikey.resolve({"a": settings(api_key="generate", api_key_file=str(path))})
    env = render_kit(resolved["a"], DEFAULT_PATTERN)[".env"][0]
    assert f"API_KEY={path.read_text().strip()}" in env and "API_KEY=generate" not in env


def test_run_settings_hold_the_resolved_key_and_name_only_the_file(tmp_path):
    """runctx.validate_inventory (what every stage reads) resolves it, once per run, with
    the resolver handed in as config.py does. In a
    subprocess: importing runctx imports pyinfra_cli, which monkey-patches with gevent."""
    import subprocess
    import sys

    from glmfleet.settings import REPO_ROOT

    path = tmp_path / "k"
    code = f"""
from types import SimpleNamespace
from glmfleet import runctx
from glmfleet.service.apikey import resolve
from glmfleet.settings import load_defaults
data = {{**load_defaults(), "model_revision": {REV!r}, "api_key": "generate", "api_key_file": {str(path)!r}}}
hosts = [SimpleNamespace(name=n, data=SimpleNamespace(dict=lambda: data, get=data.get)) for n in ("a", "b")]
state = SimpleNamespace(inventory=hosts, is_host_in_limit=lambda h: True, init=lambda: None, cwd=None,
                        add_callback_handler=lambda handler: None, fail_hosts=lambda hosts, count=None: None)
runctx.install_callbacks(state, settings_hooks=[resolve])  # as config.py does
state.init()
got = runctx.validate_inventory(state)
print(got["a"].api_key == got["b"].api_key == open({str(path)!r}).read().strip())
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=60)
    key = path.read_text().strip()
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr[-2000:]
    assert str(path) in r.stderr and key not in r.stderr + r.stdout


KEY = "fleet-key-0123456789"


def test_unset_keeps_the_hosts_key_and_refuses_a_host_without_one():
    assert apikey.for_host(None, KEY) == (KEY, None)
    for host_key in (None, ""):  # no kit yet, or a kit serving with no key
        with pytest.raises(apikey.NoKeyChosen) as e:
            apikey.for_host(None, host_key, "/etc/fleet/key", 8000)
        assert 'api_key = "generate"' in str(e.value) and 'api_key = "open"' in str(e.value)
        assert "/etc/fleet/key" in str(e.value) and "port 8000" in str(e.value)


def test_open_is_the_only_way_to_no_key_and_every_exposure_change_is_named():
    key, note = apikey.for_host("open", KEY)
    assert key == "" and "REMOVED" in note and "anyone" in note
    assert apikey.for_host("open", "") == ("", None)  # already open: nothing to say
    assert apikey.for_host("open", None)[1].startswith("API exposure: open")
    assert apikey.for_host(KEY, KEY) == (KEY, None)
    assert "now a key is required" in apikey.for_host(KEY, "")[1]
    assert "key replaced" in apikey.for_host("another-key-9876", KEY)[1]
    assert "key required" in apikey.for_host(KEY, None)[1]
    for setting, host_key in (("open", KEY), (KEY, ""), ("another-key-9876", KEY)):
        assert KEY not in apikey.for_host(setting, host_key)[1]  # never a key in a message


def test_the_hosts_key_is_read_from_its_dotenv_output():
    assert apikey.parse_dotenv_key([]) is None  # no .env: no kit there
    assert apikey.parse_dotenv_key(["env=1"]) == ""
    assert apikey.parse_dotenv_key(["env=1", "API_KEY="]) == ""
    assert apikey.parse_dotenv_key(["env=1", f"API_KEY={KEY}"]) == KEY
    assert apikey.parse_dotenv_key(["env=1", "API_KEY='k$y#with-quotes'"]) == "k$y#with-quotes"
