"""Settings validation: each bad input is refused with the host, the key and what is allowed."""

import re

import pytest

from glmfleet.settings import PARSERS, Settings, SettingsError, load_defaults, validate, validate_many

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def data():
    return dict(load_defaults(), model_revision=REV)


def problems(data, host="gpu-07"):
    with pytest.raises(SettingsError) as e:
        validate(host, data)
    return e.value.problems


def test_defaults_are_valid_and_match_the_recipe(data):
    s = validate("gpu-01", data)
    assert isinstance(s, Settings)
    assert (s.tensor_parallel_size, s.decode_context_parallel_size, s.max_model_len) == (4, 4, 250000)
    assert s.max_num_seqs == 2 and s.num_speculative_tokens == 3
    assert s.cudagraph_capture_size == 8  # 2 x (3 + 1), as the recipe derives it
    assert s.gpu_compute_capability == (12, 0)
    assert s.served_names == ("glm-5.2", "GLM-5.2-NVFP4-REAP-469B", "GLM-5.2")


def test_every_default_is_declared_once_with_a_comment():
    text = open("group_data/all.py").read()
    for key in PARSERS:
        lines = [ln for ln in text.splitlines() if re.match(rf"{key}\s*=", ln)]
        assert len(lines) == 1, key
        assert "#" in lines[0], f"{key} has no comment"


@pytest.mark.parametrize("key,value,allowed", [
    ("decode_context_parallel_size", 3, "one of 1, 2, 4"),
    ("port", 0, "1 to 65535"),
    ("port", 70000, "1 to 65535"),
    ("port", "http", "1 to 65535"),
    ("weights_dir", "models/glm", "absolute path"),
    ("service_dir", "/", "absolute path"),
    ("model_revision", "main", "40-hex"),
    ("model_revision", REV.upper(), "40-hex"),
    ("model_revision", REV[:39], "40-hex"),
    ("gpu_memory_utilization", 1.5, "at most 0.99"),
    ("gpu_memory_utilization", 0, "above 0.0"),
    ("max_num_seqs", 0, "1 to 256"),
    ("enable_thinking", "maybe", "true or false"),
    ("index_topk_pattern", "FFFX", "only F and S"),
    ("index_topk_pattern", "F" * 77, "78 F/S characters"),
    ("gpu_compute_capability", "twelve", "major.minor"),
    ("image", "Bad Image!", "image reference"),
])
def test_bad_value_names_host_key_value_and_allowed(data, key, value, allowed):
    data[key] = value
    (msg,) = problems(data)
    assert msg.startswith(f"gpu-07: setting '{key}' = {value!r}")
    assert allowed in msg


def test_dcp_must_divide_tp(data):
    data.update(tensor_parallel_size=2, decode_context_parallel_size=4, gpu_count=4)
    (msg,) = problems(data)
    assert "'decode_context_parallel_size'" in msg and "divisor of tensor_parallel_size (2)" in msg


def test_dcp1_above_ceiling_gets_the_recipes_advice(data):
    data["decode_context_parallel_size"] = 1
    (msg,) = problems(data)
    assert "'max_model_len' = 250000" in msg and "decode_context_parallel_size=4" in msg
    data["max_model_len"] = 131072
    assert validate("h", data).decode_context_parallel_size == 1


def test_unknown_key_is_reported_with_a_suggestion(data):
    data["gpu_memory_utilisation"] = 0.9
    (msg,) = problems(data)
    assert "unknown setting 'gpu_memory_utilisation'" in msg and "gpu_memory_utilization" in msg


def test_connector_keys_are_not_settings(data):
    data.update(ssh_hostname="10.0.0.1", ssh_user="root", _sudo=True)
    validate("h", data)


def test_operators_own_keys_live_under_site_and_nowhere_else(data):
    data.update(site_rack="r7", site_owner="ml-infra")
    validate("h", data)
    data["testbed_gateway"] = "10.0.0.1"  # no test-only namespace in production validation
    (msg,) = problems(data)
    assert "unknown setting 'testbed_gateway'" in msg and "keys of your own must start with 'site_'" in msg


def test_cli_strings_are_coerced(data):
    # `--data key=value` may hand over strings.
    data.update(port="8080", enable_thinking="false", gpu_memory_utilization="0.9",
                served_model_aliases="a,b", gpu_compute_capability="9.0")
    s = validate("h", data)
    assert (s.port, s.enable_thinking, s.gpu_memory_utilization) == (8080, False, 0.9)
    assert s.served_model_aliases == ("a", "b") and s.gpu_compute_capability == (9, 0)


def test_all_problems_of_all_hosts_reported_together(data):
    bad1 = dict(data, port=0, dcp=4)
    bad2 = dict(data, weights_dir="x")
    with pytest.raises(SettingsError) as e:
        validate_many({"a": bad1, "b": data, "c": bad2})
    text = str(e.value)
    assert "a: setting 'port'" in text and "a: unknown setting 'dcp'" in text
    assert "c: setting 'weights_dir'" in text and "b:" not in text


def test_full_deploy_needs_a_pinned_revision(data):
    data["model_revision"] = None
    (msg,) = problems(data)
    assert "'model_revision' = None" in msg and "40-hex commit" in msg
    data["preflight_only"] = True
    assert validate("h", data).model_revision is None


def test_readme_settings_table_is_current():
    from glmfleet.settings_doc import refreshed

    readme = open("README.md").read()
    assert refreshed(readme) == readme, "run: python -m glmfleet.settings_doc --write"
    for key in PARSERS:
        assert f"| `{key}` |" in readme
    # Defaults are shown whole (an operator copies the image tag from here).
    assert f"| `image` | `{load_defaults()['image']!r}` |".replace("'", '"') in readme


@pytest.mark.parametrize("key,value", [
    ("weights_dir", "/mnt/my models"), ("weights_dir", "/mnt/a:b"),
    ("service_dir", "/opt/glm%h"), ("service_dir", "/opt/$HOME"), ("service_dir", "/opt/a'b"),
    ("api_key", "it's-a-secret"), ("api_key", 'quo"ted-key'), ("api_key", "back\\slash-key"),
    ("api_key", "short"), ("served_model_aliases", ["fine", "not fine"]),
])
def test_values_the_kit_cannot_carry_are_refused(data, key, value):
    data[key] = value
    (msg,) = problems(data)
    assert f"setting '{key}'" in msg


APT_HOOK = 'http://x";APT::Update::Pre-Invoke{"id";};//'


@pytest.mark.parametrize("key", ["apt_proxy", "docker_repo_url", "docker_key_url", "nvidia_repo_url",
                                 "nvidia_key_url", "hf_endpoint"])
@pytest.mark.parametrize("value", [APT_HOOK, "http://proxy:3142;x", "http://proxy:3142/{a}",
                                   "http://proxy:3142/a b", "http://proxy'x", "ftp://proxy",
                                   "http://proxy/?q=1", "http://proxy:3142\nAcquire::x"])
def test_url_settings_refuse_what_could_end_the_string_they_land_in(data, key, value):
    data[key] = value
    (msg,) = problems(data)
    assert f"setting '{key}'" in msg and "no quotes, ';', braces, spaces or query" in msg


@pytest.mark.parametrize("value", ["http://proxy.example:3142", "https://user:pw@10.0.0.1:3142/apt/",
                                   "http://[fd00::1]:3142"])
def test_url_settings_accept_plain_urls(data, value):
    data["apt_proxy"] = value
    assert validate("h", data).apt_proxy == value


def test_settings_repr_never_shows_the_api_key(data):
    key = "sk-very-secret-key-0123456789"
    s = validate("h", dict(data, api_key=key))
    assert key not in repr(s) and key not in str(s)
    assert "api_key=<set>" in repr(s)
    assert "api_key=None" in repr(validate("h", data))


def test_operation_arguments_never_show_the_api_key(data):
    """What pyinfra prints for the function commands that carry settings or the kit."""
    from pyinfra.api import FunctionCommand

    from glmfleet.kit.index_pattern import DEFAULT_PATTERN
    from glmfleet.kit.render import render_kit
    from glmfleet.service import ops as service_ops
    from glmfleet.weights import ops as weights_ops

    key = "sk-very-secret-key-0123456789"
    s = validate("h", dict(data, api_key=key))
    files = render_kit(s, DEFAULT_PATTERN)
    assert any(key.encode() in (c if isinstance(c, bytes) else str(c).encode()) for c in files.values())
    job = service_ops.Job(s, files, DEFAULT_PATTERN, "default", {}, None, None, None, None, "h:8000")
    for command in (FunctionCommand(service_ops._apply, (job,), {}),
                    FunctionCommand(weights_ops._download, (s, {"files": []}, False), {})):
        assert key not in repr(command) and key not in str(command)


@pytest.mark.parametrize("value", ["http://10.214.0.10:5000", "https://mirror.example/", "http://[fd00::1]:5000"])
def test_registry_mirror_accepts_what_dockerd_accepts(data, value):
    assert validate("h", dict(data, registry_mirror=value)).registry_mirror == value


@pytest.mark.parametrize("value", ["mirror.example:5000", "http://mirror.example/v2/", "https://u:p@mirror",
                                   'http://x";', "http://m:5000?x=1"])
def test_registry_mirror_refuses_paths_credentials_and_quotes(data, value):
    (msg,) = problems(dict(data, registry_mirror=value))
    assert "setting 'registry_mirror'" in msg and "http(s)://host[:port]" in msg


@pytest.mark.parametrize("value", ["https://docker.io", "docker.io/library", "reg istry", "host:port"])
def test_image_cache_upstream_is_a_registry_host(data, value):
    (msg,) = problems(dict(data, image_cache_upstream=value))
    assert "setting 'image_cache_upstream'" in msg and "host[:port] without scheme or path" in msg
    assert validate("h", dict(data, image_cache_upstream="10.0.0.1:5000")).image_cache_upstream == "10.0.0.1:5000"
