"""The Docker / NVIDIA Container Toolkit decisions (glmfleet.docker.plan), on recorded facts.

Fact outputs below are what glmfleet/facts/docker.py's commands printed:
- UBUNTU_2404: recorded on a real Ubuntu 24.04.3 GPU host (1x H100, no Docker yet).
- DEBIAN_12_*: recorded on a simulated Debian 12 host, bare and after `apt-get install
  docker.io docker-compose`.
- UBUNTU_2204: no 22.04 host was at hand; this is Ubuntu 22.04's /etc/os-release as
  published, run through the same script by hand (the package lines as on a fresh server).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from glmfleet.docker import plan
from glmfleet.docker.facts import parse_docker_host_facts, parse_docker_service, parse_keyring_file
from glmfleet.settings import SettingsError, load_defaults, validate

REPO = Path(__file__).resolve().parents[3]
NVIDIA_CTK_STANDIN = REPO / "testbed/doubles/aptrepo/standins/nvidia-ctk"

UBUNTU_2404 = """\
os.PRETTY_NAME="Ubuntu 24.04.3 LTS"
os.VERSION_ID="24.04"
os.VERSION_CODENAME=noble
os.ID=ubuntu
os.UBUNTU_CODENAME=noble
arch=amd64
init=none
pkg=ca-certificates|ii |20260601~24.04.1
pkg=gpg|ii |2.4.4-2ubuntu17.3
gpg=1
nvidia_smi=1
apt_helper=1
end=1
"""

UBUNTU_2204 = """\
os.PRETTY_NAME="Ubuntu 22.04.5 LTS"
os.VERSION_ID="22.04"
os.VERSION_CODENAME=jammy
os.ID=ubuntu
os.UBUNTU_CODENAME=jammy
arch=amd64
init=systemd
pkg=ca-certificates|ii |20240203~22.04.1
pkg=gpg|ii |2.2.27-3ubuntu2.1
pkg=docker-compose-v2|ii |2.24.6-0ubuntu1~22.04.1
pkg=docker.io|ii |24.0.7-0ubuntu2~22.04.1
pkg=containerd|ii |1.7.12-0ubuntu2~22.04.1
pkg=runc|ii |1.1.12-0ubuntu2~22.04.1
pkg=podman-docker|rc |3.4.4+ds1-1ubuntu1
gpg=1
apt_helper=1
end=1
"""

DEBIAN_12_BARE = """\
os.PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
os.VERSION_ID="12"
os.VERSION_CODENAME=bookworm
os.ID=debian
arch=amd64
init=none
pkg=ca-certificates|ii |20230311+deb12u1
pkg=gpg|ii |2.2.40-1.1+deb12u2
gpg=1
apt_helper=1
end=1
"""

DEBIAN_12_DOCKER_IO = """\
os.PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
os.VERSION_ID="12"
os.VERSION_CODENAME=bookworm
os.ID=debian
arch=amd64
init=none
pkg=ca-certificates|ii |20230311+deb12u1
pkg=containerd|ii |1.6.20~ds1-1+deb12u3
pkg=docker-ce|un |
pkg=docker-ce-cli|un |
pkg=docker-ce-rootless-extras|un |
pkg=docker-compose|ii |1.29.2-3
pkg=docker-doc|un |
pkg=docker.io|ii |20.10.24+dfsg1-1+deb12u1+b6
pkg=gpg|ii |2.2.40-1.1+deb12u2
pkg=runc|ii |1.1.5+ds1-1+deb12u1
gpg=1
apt_helper=1
end=1
"""

# `gpg --show-keys --with-colons` of the repository double's NVIDIA key (recorded on the
# Ubuntu host) and of Debian's archive keyring (two of its keys, recorded on Debian 12).
DOUBLE_KEY_FPR = "4F33D0A0B85F632D84C3EE04ED8914B77929BCDE"
DOUBLE_KEY = """\
exists=1
mode=644
armored=1
gpg=pub:-:255:22:ED8914B77929BCDE:1795751759:::-:::scSC:::::ed25519:::0:
gpg=fpr:::::::::4F33D0A0B85F632D84C3EE04ED8914B77929BCDE:
gpg=uid:-::::1795751759::32F6F2E9C20E15785DD56131664FF7BF555EE1C3::NVIDIA toolkit TEST DOUBLE <nvidia-double@glmfleet.invalid>::::::::::0:
end=1
"""
DEBIAN_KEYRING_COLONS = """\
pub:-:4096:1:73A4F27B8DD47936:1610882316:1863170316::-:::scSC::::::23::0:
rvk:::1::::::80E976F14A508A48E9CA3FE9BC372252CA1CF964:80:
fpr:::::::::1F89983E0081FDE018F3CC9673A4F27B8DD47936:
uid:-::::1610882316::8B217479F2360A6FE9CCD4574D19D199D4784D0B::Debian Archive Automatic Signing Key (11/bullseye) <ftpmaster@debian.org>::::::::::0:
sub:-:4096:1:0E98404D386FA1D9:1610882316:1863170316:::::s::::::23:
fpr:::::::::A7236886F3CCCAAD148A27F80E98404D386FA1D9:
pub:-:4096:1:A48449044AAD5C5D:1610882224:1863170224::-:::scSC::::::23::0:
fpr:::::::::AC530D520F2F3269F5E98313A48449044AAD5C5D:
uid:-::::1610882224::969BE9530E416FBDD6EB61C147BE472B658AC010::Debian Security Archive Automatic Signing Key (11/bullseye) <ftpmaster@debian.org>::::::::::0:
sub:-:4096:1:54404762BBB6E853:1610882224:1863170224:::::s::::::23:
fpr:::::::::ED541312A33F1128F10B1C6C54404762BBB6E853:
"""
H100_LIST = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-36c4514a-374f-ce6b-5fe2-0bacb4ae0ae1)\n"


def settings(**over):
    """The defaults of group_data/all.py (validated), with overrides."""
    data = dict(load_defaults(), model_revision="0" * 40)
    data.update(over)
    return validate("h", data)


def host_os(text):
    return plan.HostOs.from_facts(parse_docker_host_facts(text))


# --- facts parsing ---------------------------------------------------------------------------

def test_recorded_host_facts_parse():
    u24, u22, deb = (parse_docker_host_facts(t) for t in (UBUNTU_2404, UBUNTU_2204, DEBIAN_12_DOCKER_IO))
    assert (u24["os_id"], u24["os_version_id"], u24["os_codename"], u24["arch"]) == ("ubuntu", "24.04", "noble", "amd64")
    assert u24["complete"] and u24["init"] == "none" and u24["nvidia_smi"] and u24["gpg"]
    assert u24["packages"] == {"ca-certificates": "20260601~24.04.1", "gpg": "2.4.4-2ubuntu17.3"}
    assert (u22["os_codename"], u22["init"]) == ("jammy", "systemd")
    assert "podman-docker" not in u22["packages"]  # "rc": removed, only its config is left
    # "un" lines are names dpkg knows (here from docker.io's Conflicts), not installed packages
    assert set(deb["packages"]) == {"ca-certificates", "containerd", "docker-compose", "docker.io", "gpg", "runc"}
    assert not parse_docker_host_facts("")["complete"]


def test_ubuntu_codename_wins_over_a_derivatives_version_codename():
    text = UBUNTU_2204.replace("os.VERSION_CODENAME=jammy", "os.VERSION_CODENAME=vanessa")
    assert parse_docker_host_facts(text)["os_codename"] == "jammy"


@pytest.mark.parametrize("text,why", [
    (UBUNTU_2404.replace("os.ID=ubuntu", "os.ID=fedora"), "supports Ubuntu and Debian"),
    (UBUNTU_2404.replace("os.VERSION_CODENAME=noble\n", "").replace("os.UBUNTU_CODENAME=noble\n", ""),
     "codename"),
    (UBUNTU_2404.replace("arch=amd64", "arch="), "architecture"),
])
def test_hosts_the_stage_cannot_plan_for_are_refused_with_the_reason(text, why):
    with pytest.raises(plan.PlanError, match=why):
        host_os(text)


# --- repositories ----------------------------------------------------------------------------

@pytest.mark.parametrize("facts,os_path,suite", [
    (UBUNTU_2204, "ubuntu", "jammy"), (UBUNTU_2404, "ubuntu", "noble"), (DEBIAN_12_BARE, "debian", "bookworm")])
def test_docker_repository_per_release(facts, os_path, suite):
    repo = plan.docker_repo(host_os(facts), settings())
    assert repo.uri == f"https://download.docker.com/linux/{os_path}"
    assert repo.key_url == f"https://download.docker.com/linux/{os_path}/gpg"
    assert (repo.suite, repo.components, repo.arch) == (suite, ("stable",), "amd64")
    assert repo.keyring == "/etc/apt/keyrings/docker.asc"
    assert repo.sources_path == "/etc/apt/sources.list.d/docker.sources"
    assert repo.legacy_list_path == "/etc/apt/sources.list.d/docker.list"


def test_docker_deb822_source_for_ubuntu_2404():
    text = plan.docker_repo(host_os(UBUNTU_2404), settings()).deb822()
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert body == [
        "Types: deb",
        "URIs: https://download.docker.com/linux/ubuntu",
        "Suites: noble",
        "Components: stable",
        "Architectures: amd64",
        "Signed-By: /etc/apt/keyrings/docker.asc 9DC858229FC7DD38854AE2D88D81803C0EBFCD88",
    ]
    assert "docker_key_fingerprint" in text  # the comment says where to change it


def test_mirror_urls_and_keys_replace_dockers_and_nvidias():
    s = settings(docker_repo_url="http://mirror.lan/docker/linux/ubuntu/",
                 docker_key_fingerprint="AAAA BBBB CCCC DDDD EEEE FFFF 0000 1111 2222 3333",
                 nvidia_repo_url="http://mirror.lan/nvidia/stable/deb/$(ARCH)",
                 nvidia_key_url="http://mirror.lan/nvidia/gpgkey",
                 nvidia_key_fingerprint="1" * 40)
    docker = plan.docker_repo(host_os(UBUNTU_2204), s)
    assert (docker.uri, docker.key_url) == ("http://mirror.lan/docker/linux/ubuntu",
                                            "http://mirror.lan/docker/linux/ubuntu/gpg")
    assert docker.fingerprint == "AAAABBBBCCCCDDDDEEEEFFFF0000111122223333"
    s2 = settings(docker_repo_url="http://mirror.lan/docker", docker_key_url="http://keys.lan/docker.asc")
    assert plan.docker_repo(host_os(UBUNTU_2204), s2).key_url == "http://keys.lan/docker.asc"
    nv = plan.nvidia_repo(host_os(UBUNTU_2204), s)
    assert nv.uri == "http://mirror.lan/nvidia/stable/deb/amd64"
    assert (nv.key_url, nv.fingerprint) == ("http://mirror.lan/nvidia/gpgkey", "1" * 40)


@pytest.mark.parametrize("facts", [UBUNTU_2204, UBUNTU_2404, DEBIAN_12_BARE])
def test_nvidia_flat_repository_is_the_same_for_every_release(facts):
    repo = plan.nvidia_repo(host_os(facts), settings())
    body = [ln for ln in repo.deb822().splitlines() if not ln.startswith("#")]
    assert body == [
        "Types: deb",
        "URIs: https://nvidia.github.io/libnvidia-container/stable/deb/amd64",  # $(ARCH) filled in
        "Suites: /",  # flat repository: no Components line
        "Architectures: amd64",
        "Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc C95B321B61E88C1809C4F759DDCAE044F796ECB0",
    ]
    assert repo.key_url == "https://nvidia.github.io/libnvidia-container/gpgkey"


def test_arm64_host_gets_its_architecture():
    os_ = host_os(UBUNTU_2404.replace("arch=amd64", "arch=arm64"))
    assert "Architectures: arm64" in plan.docker_repo(os_, settings()).deb822()
    assert plan.nvidia_repo(os_, settings()).uri.endswith("/stable/deb/arm64")


# --- packages --------------------------------------------------------------------------------

@pytest.mark.parametrize("facts", [UBUNTU_2204, UBUNTU_2404, DEBIAN_12_BARE])
def test_docker_ce_packages_with_and_without_a_pin(facts):
    os_ = host_os(facts)
    assert plan.docker_packages(os_, settings()) == [
        "docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin"]
    v = "5:28.5.2-1~ubuntu.24.04~noble"
    assert plan.docker_packages(os_, settings(docker_version=v)) == [
        f"docker-ce={v}", f"docker-ce-cli={v}", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin"]


@pytest.mark.parametrize("facts,compose", [
    (UBUNTU_2204, "docker-compose-v2"), (UBUNTU_2404, "docker-compose-v2"), (DEBIAN_12_BARE, "docker-compose")])
def test_distribution_packages_and_their_compose(facts, compose):
    os_ = host_os(facts)
    assert plan.docker_packages(os_, settings(docker_packages="distro")) == ["docker.io", compose]
    pinned = plan.docker_packages(os_, settings(docker_packages="distro", docker_version="24.0.7-0ubuntu4"))
    assert pinned == ["docker.io=24.0.7-0ubuntu4", compose]


def test_debian_13_distribution_packages_name_the_cli_too():
    """Debian 13's docker.io carries no `docker` CLI (docker-cli does); its docker-compose is
    the v2 plugin."""
    os_ = host_os(DEBIAN_12_BARE.replace('VERSION_ID="12"', 'VERSION_ID="13"')
                  .replace("bookworm", "trixie"))
    assert os_.version_id == "13"
    assert plan.docker_packages(os_, settings(docker_packages="distro")) == [
        "docker.io", "docker-cli", "docker-compose"]


def test_toolkit_pin_applies_to_all_four_packages():
    assert plan.toolkit_packages(settings()) == list(plan.TOOLKIT_PACKAGES)
    assert plan.toolkit_packages(settings(nvidia_toolkit_version="1.17.8-1")) == [
        "nvidia-container-toolkit=1.17.8-1", "nvidia-container-toolkit-base=1.17.8-1",
        "libnvidia-container-tools=1.17.8-1", "libnvidia-container1=1.17.8-1"]


def test_conflicts_per_flavour_on_recorded_hosts():
    deb = parse_docker_host_facts(DEBIAN_12_DOCKER_IO)
    assert plan.conflicting_packages("docker-ce", host_os(DEBIAN_12_DOCKER_IO), deb["packages"]) == [
        "docker.io", "docker-compose", "containerd", "runc"]
    assert plan.conflicting_packages("distro", host_os(DEBIAN_12_DOCKER_IO), deb["packages"]) == []
    u22 = parse_docker_host_facts(UBUNTU_2204)
    assert plan.conflicting_packages("docker-ce", host_os(UBUNTU_2204), u22["packages"]) == [
        "docker.io", "docker-compose-v2", "containerd", "runc"]
    ce_host = {"docker-ce": "5:28.5.2-1~ubuntu.24.04~noble", "containerd.io": "1.7.28-1",
               "docker-compose-plugin": "2.40.0-1", "podman-docker": "4.9.3"}
    assert plan.conflicting_packages("distro", host_os(UBUNTU_2404), ce_host) == [
        "docker-ce", "containerd.io", "podman-docker"]
    assert plan.conflicting_packages("docker-ce", host_os(UBUNTU_2404), ce_host) == ["podman-docker"]
    assert plan.conflicting_packages("docker-ce", host_os(DEBIAN_12_BARE), {}) == []


def test_packages_to_install_never_upgrades_an_unpinned_package():
    installed = {"docker-ce": "5:27.0.0-1", "containerd.io": "1.7.0-1"}
    wanted = ["docker-ce", "containerd.io", "docker-compose-plugin"]
    assert plan.packages_to_install(wanted, installed) == ["docker-compose-plugin"]
    assert plan.packages_to_install(["docker-ce=5:28.0.0-1", "containerd.io"], installed) == ["docker-ce=5:28.0.0-1"]
    assert plan.packages_to_install(["docker-ce=5:27.0.0-1"], installed) == []


def test_version_tuple():
    assert plan.version_tuple("1.18.0-1") == (1, 18, 0)
    assert plan.version_tuple("5:20.10.24-1~debian.12~bookworm") == (20, 10, 24)
    assert plan.version_tuple(None) == ()


# --- keys ------------------------------------------------------------------------------------

def test_recorded_key_is_accepted_only_under_its_own_fingerprint():
    key = parse_keyring_file(DOUBLE_KEY)
    assert [k.fingerprint for k in key["keys"]] == [DOUBLE_KEY_FPR]
    assert key["keys"][0].uids == ("NVIDIA toolkit TEST DOUBLE <nvidia-double@glmfleet.invalid>",)
    assert plan.key_problem(key["keys"], DOUBLE_KEY_FPR) is None
    assert plan.key_problem(key["keys"], " ".join(DOUBLE_KEY_FPR[i:i + 4] for i in range(0, 40, 4)).lower()) is None
    assert plan.installed_key_ok(key, DOUBLE_KEY_FPR)
    assert not plan.installed_key_ok({**key, "mode": "600"}, DOUBLE_KEY_FPR)  # _apt could not read it
    problem = plan.key_problem(key["keys"], "9DC858229FC7DD38854AE2D88D81803C0EBFCD88")
    assert problem == (f"its fingerprint is {DOUBLE_KEY_FPR} (NVIDIA toolkit TEST DOUBLE "
                       "<nvidia-double@glmfleet.invalid>), not the pinned 9DC858229FC7DD38854AE2D88D81803C0EBFCD88")
    assert not plan.installed_key_ok(key, "9DC858229FC7DD38854AE2D88D81803C0EBFCD88")


def test_a_keyring_with_more_than_the_pinned_key_is_refused():
    keys = plan.parse_gpg_colons(DEBIAN_KEYRING_COLONS)
    assert [k.fingerprint for k in keys] == ["1F89983E0081FDE018F3CC9673A4F27B8DD47936",
                                             "AC530D520F2F3269F5E98313A48449044AAD5C5D"]
    assert keys[0].subkeys == ("A7236886F3CCCAAD148A27F80E98404D386FA1D9",)
    assert "holds 2 keys" in plan.key_problem(keys, keys[0].fingerprint)
    # pinning a signing subkey's fingerprint names the same key (apt accepts that too)
    assert plan.key_problem(keys[:1], "A7236886F3CCCAAD148A27F80E98404D386FA1D9") is None


@pytest.mark.parametrize("validity,word", [("r", "revoked"), ("e", "expired")])
def test_revoked_or_expired_pinned_key_is_refused(validity, word):
    keys = plan.parse_gpg_colons(DOUBLE_KEY.replace("gpg=", "").replace("pub:-:", f"pub:{validity}:"))
    assert word in plan.key_problem(keys, DOUBLE_KEY_FPR)


def test_unreadable_or_binary_key_is_refused():
    assert "no OpenPGP public key" in plan.key_problem([], DOUBLE_KEY_FPR)
    keys = parse_keyring_file(DOUBLE_KEY)["keys"]
    assert "ASCII-armoured" in plan.key_problem(keys, DOUBLE_KEY_FPR, armored=False)


def test_refusal_message_tells_the_operator_what_to_do():
    repo = plan.docker_repo(host_os(UBUNTU_2404), settings())
    msg = plan.key_refusal(repo, "its fingerprint is X, not the pinned Y")
    assert "https://download.docker.com/linux/ubuntu/gpg" in msg
    assert "NOT trusted and nothing was installed" in msg
    assert "docker_key_fingerprint" in msg and "docker_key_url" in msg and "docker_repo_url" in msg


# --- daemon.json -----------------------------------------------------------------------------

def test_merge_keeps_operator_keys_and_adds_log_rotation():
    operator = {"data-root": "/srv/docker", "log-opts": {"max-size": "10m", "labels": "app"},
                "runtimes": {"crun": {"path": "/usr/bin/crun"}}, "default-runtime": "runc"}
    merged = plan.merge_daemon_config(operator, log_max_size="100m", log_max_file=3)
    assert merged == {**operator, "log-driver": "json-file",
                      "log-opts": {"max-size": "10m", "labels": "app", "max-file": "3"}}
    assert operator["log-opts"] == {"max-size": "10m", "labels": "app"}  # input untouched
    assert plan.merge_daemon_config(merged, log_max_size="100m", log_max_file=3) == merged  # idempotent
    assert plan.merge_daemon_config({}, log_max_size="50m", log_max_file=5) == {
        "log-driver": "json-file", "log-opts": {"max-size": "50m", "max-file": "5"}}


def test_merge_leaves_drivers_without_rotation_options_alone():
    # max-size on journald would stop dockerd from starting
    assert plan.merge_daemon_config({"log-driver": "journald"}, log_max_size="100m", log_max_file=3) == {
        "log-driver": "journald"}
    assert plan.merge_daemon_config({"log-driver": "local"}, log_max_size="100m", log_max_file=3)[
        "log-opts"] == {"max-size": "100m", "max-file": "3"}


def test_registry_mirror_goes_first_and_keeps_the_operators_mirrors():
    base = {"log-driver": "json-file", "log-opts": {"max-size": "100m", "max-file": "3"}}
    merged = plan.merge_daemon_config({**base, "registry-mirrors": ["https://theirs.example"]},
                                      log_max_size="100m", log_max_file=3,
                                      registry_mirror="http://10.0.0.5:5000/")
    assert merged["registry-mirrors"] == ["http://10.0.0.5:5000", "https://theirs.example"]
    # idempotent, also when dockerd's own normalised form (trailing slash) is already there
    again = {**merged, "registry-mirrors": ["http://10.0.0.5:5000/", "https://theirs.example"]}
    assert plan.merge_daemon_config(again, log_max_size="100m", log_max_file=3,
                                    registry_mirror="http://10.0.0.5:5000") == again
    # no setting: the operator's list is left exactly as it is
    assert plan.merge_daemon_config({**base, "registry-mirrors": ["https://theirs.example"]},
                                    log_max_size="100m", log_max_file=3)["registry-mirrors"] == \
        ["https://theirs.example"]


@pytest.mark.parametrize("text,expected", [(None, {}), ("", {}), ("  \n", {}), ('{"a": 1}', {"a": 1})])
def test_parse_daemon_json(text, expected):
    assert plan.parse_daemon_json(text) == expected


@pytest.mark.parametrize("text,why", [('{"a": 1,}', "not valid JSON"), ("[1]", "JSON list, not an object")])
def test_a_daemon_json_we_cannot_read_is_never_overwritten(text, why):
    with pytest.raises(plan.PlanError, match=why) as e:
        plan.parse_daemon_json(text)
    assert "never overwrites" in str(e.value) or "fix it" in str(e.value)


def test_nvidia_runtime_configured():
    assert not plan.nvidia_runtime_configured({})
    assert not plan.nvidia_runtime_configured({"runtimes": {"crun": {"path": "crun"}}})
    assert plan.nvidia_runtime_configured({"runtimes": {"nvidia": dict(plan.NVIDIA_RUNTIME)}})
    # an operator's absolute path to the same runtime is theirs to keep
    assert plan.nvidia_runtime_configured(
        {"runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime", "runtimeArgs": []}}})


def test_merged_file_then_nvidia_ctk_keeps_everything(tmp_path):
    """Our merge, then the stand-in nvidia-ctk (which edits like the real one): every key
    survives, the runtime is added, and the formats agree (sorted keys, 4-space indent)."""
    operator = {"storage-driver": "overlay2", "labels": ["a<b&c>"], "log-opts": {"max-size": "10m"}}
    merged = plan.merge_daemon_config(operator, log_max_size="100m", log_max_file=3)
    path = tmp_path / "daemon.json"
    path.write_text(plan.render_daemon_json(merged))
    r = subprocess.run([sys.executable, str(NVIDIA_CTK_STANDIN), "runtime", "configure",
                        "--runtime=docker", f"--config={path}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "It is recommended that docker daemon be restarted" in r.stderr
    after = json.loads(path.read_text())
    assert after == {**merged, "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}
    assert plan.nvidia_runtime_configured(after)
    # like Go's encoder: no trailing newline, <>& escaped; otherwise our rendering exactly
    text = path.read_text()
    assert not text.endswith("\n") and "a\\u003cb\\u0026c\\u003e" in text
    assert json.loads(plan.render_daemon_json(after)) == after
    assert plan.render_daemon_json(after).rstrip("\n") == text.replace("\\u003c", "<").replace(
        "\\u0026", "&").replace("\\u003e", ">")


def test_stand_in_nvidia_ctk_refuses_an_empty_file_like_the_real_one(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text("")
    r = subprocess.run([sys.executable, str(NVIDIA_CTK_STANDIN), "runtime", "configure",
                        "--runtime=docker", f"--config={path}"], capture_output=True, text=True)
    assert r.returncode == 1 and "EOF" in r.stderr


# --- CDI, the GPU check, the service ---------------------------------------------------------

@pytest.mark.parametrize("setting,version,driver,wanted,note", [
    ("auto", "1.18.0-1", True, True, ""),
    ("auto", "1.20.1-1", True, True, ""),
    ("auto", "1.17.8-1", True, False, "< 1.18"),
    ("auto", "1.18.0-1", False, False, "nvidia-smi not found on this host"),
    ("on", "1.17.8-1", False, True, ""),
    ("off", "1.20.1-1", True, False, "nvidia_cdi=off"),
])
def test_cdi_decision(setting, version, driver, wanted, note):
    got, why = plan.cdi_decision(setting, version, driver)
    assert got is wanted and note in why


def test_container_gpus_compared_with_preflight_by_uuid():
    seen = plan.parse_nvidia_smi_list(H100_LIST)
    assert seen == ["GPU-36c4514a-374f-ce6b-5fe2-0bacb4ae0ae1"]
    assert plan.compare_gpus(seen, seen)[0] == "PASS"
    assert plan.compare_gpus(list(reversed(seen + ["GPU-b"])), seen + ["GPU-b"])[0] == "PASS"
    status, detail = plan.compare_gpus(seen, seen + ["GPU-other"])
    assert status == "FAIL" and "missing GPU-other" in detail
    assert plan.compare_gpus([], seen)[0] == "FAIL"
    assert plan.compare_gpus(seen, None) == ("PASS", "a container sees 1 GPU(s) (GPU-36c4514a-374f-ce6b-"
                                             "5fe2-0bacb4ae0ae1); no preflight list to compare with")
    # MIG devices are not GPUs of their own
    mig = H100_LIST + "  MIG 1g.10gb     Device  0: (UUID: MIG-6f9c0b5e-0000-0000-0000-000000000000)\n"
    assert plan.parse_nvidia_smi_list(mig) == seen


def test_service_facts_recorded_and_systemd():
    debian = parse_docker_service("fingerprint=e7ad\nmanager=none\nserver=\ncompose_v2=\ncompose_v1=1.29.2\nend=1\n")
    assert (debian["manager"], debian["running"], debian["enabled"], debian["applied"]) == ("none", False, None, None)
    assert debian["compose_v1"] == "1.29.2" and debian["server_version"] is None
    running = parse_docker_service("fingerprint=ab\napplied=ab\nmanager=none\npid=852\nserver=20.10.24+dfsg1\nend=1")
    assert running["running"] and running["pid"] == 852 and running["applied"] == running["fingerprint"]
    sd = parse_docker_service("fingerprint=ab\nmanager=systemd\nactive=active\nenabled=disabled\nend=1")
    assert sd["running"] and sd["enabled"] is False


def test_apt_proxy_conf():
    conf = plan.apt_proxy_conf("http://proxy.lan:3142")
    assert 'Acquire::http::Proxy "http://proxy.lan:3142";' in conf
    assert 'Acquire::https::Proxy "http://proxy.lan:3142";' in conf
    with pytest.raises(plan.PlanError, match="not a plain URL"):
        plan.apt_proxy_conf('http://x";APT::Update::Pre-Invoke{"id";};//')


# --- settings of this stage ------------------------------------------------------------------

def test_stage_settings_defaults_and_validation():
    s = settings()
    assert (s.docker_packages, s.nvidia_cdi, s.docker_remove_conflicts) == ("docker-ce", "auto", False)
    assert s.docker_key_fingerprint == "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
    assert settings(nvidia_key_fingerprint="c95b 321b 61e8 8c18 09c4  f759 ddca e044 f796 ecb0"
                    ).nvidia_key_fingerprint == "C95B321B61E88C1809C4F759DDCAE044F796ECB0"
    data = dict(load_defaults(), model_revision="0" * 40, docker_packages="docker.io",
                docker_key_fingerprint="0EBFCD88", nvidia_cdi="yes", docker_pakages="distro",
                docker_identifier="pyinfra-connector-key")
    with pytest.raises(SettingsError) as e:
        validate("gpu-03", data)
    text = str(e.value)
    assert "gpu-03: setting 'docker_packages' = 'docker.io' is not allowed: expected one of 'docker-ce', 'distro'" in text
    assert "'docker_key_fingerprint' = '0EBFCD88'" in text and "40-hex-digit" in text
    assert "'nvidia_cdi' = 'yes'" in text
    # a typo in a docker_* setting is caught; pyinfra's own docker_* connector keys are not ours
    assert "unknown setting 'docker_pakages' (did you mean 'docker_packages'?)" in text
    assert "docker_identifier" not in text



# --- dockerd: restart only on a real change; the GPU container check ---------------------------

def _svc(**over):
    base = {"running": True, "fingerprint": "f1", "applied": None, "started": 2000, "inputs_changed": 1000}
    return {**base, **over}


def test_a_running_dockerd_without_stamp_is_adopted_when_nothing_changed_since_it_started():
    """A host that ran Docker before glmfleet: its containers must not be stopped for nothing."""
    assert plan.dockerd_action(_svc())[0] == "adopt"
    # something it depends on changed after it started (or in the same second): restart
    assert plan.dockerd_action(_svc(inputs_changed=2000))[0] == "restart"
    assert plan.dockerd_action(_svc(inputs_changed=2500))[0] == "restart"
    # what cannot be told is a restart, never an adoption
    assert plan.dockerd_action(_svc(started=None))[0] == "restart"
    assert plan.dockerd_action(_svc(inputs_changed=None))[0] == "restart"


def test_dockerd_with_a_stamp_restarts_only_when_the_fingerprint_moved():
    assert plan.dockerd_action(_svc(applied="f1"))[0] is None
    assert plan.dockerd_action(_svc(applied="f0"))[0] == "restart"
    assert plan.dockerd_action(_svc(applied="f0", inputs_changed=1))[0] == "restart"  # the stamp decides
    assert plan.dockerd_action(_svc(running=False, applied="f1"))[0] == "start"


def test_service_fact_reads_dockerds_start_and_its_inputs_change():
    svc = parse_docker_service("fingerprint=ab\ninputs_changed=1700000000\nmanager=none\npid=852\n"
                               "started=1700000100\nend=1")
    assert (svc["started"], svc["inputs_changed"], svc["pid"]) == (1700000100, 1700000000, 852)
    assert plan.dockerd_action(svc)[0] == "adopt"


def test_gpu_check_runs_only_after_a_change_or_when_asked():
    key = plan.gpu_check_key("f1", "ubuntu:24.04")
    due = lambda **kw: plan.gpu_check_due(**{"image": "ubuntu:24.04", "has_driver": True,  # noqa: E731
                                              "checked": None, "key": key, "always": False, **kw})
    assert due() == (True, "")                                    # never checked here
    run, why = due(checked=key)                                   # checked with this dockerd and image
    assert not run and "gpu_check_always=true" in why
    assert due(checked=plan.gpu_check_key("f0", "ubuntu:24.04"))[0]  # dockerd/toolkit changed
    assert due(checked=plan.gpu_check_key("f1", "ubuntu:22.04"))[0]  # another image
    assert due(checked=key, always=True)[0]
    assert not due(has_driver=False)[0] and "nvidia-smi not found on this host" in due(has_driver=False)[1]
    assert due(image=None) == (False, "GPU container check off (gpu_check_image=None)")


def test_gpu_check_command_says_when_it_pulls(tmp_path):
    from glmfleet.docker.facts import gpu_check_command

    pulling = gpu_check_command("ubuntu:24.04", "f1 ubuntu:24.04", pull=True)
    present = gpu_check_command("ubuntu:24.04", "f1 ubuntu:24.04", pull=False)
    assert "docker pull -q ubuntu:24.04" in pulling and "[ 1 = 1 ]" in pulling
    assert "[ 0 = 1 ]" in present
    for text in (pulling, present):
        assert "docker run --rm --gpus all ubuntu:24.04 nvidia-smi -L" in text
        assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0


def test_gpu_check_state_parses_the_last_result():
    from glmfleet.docker.facts import parse_gpu_check_state

    st = parse_gpu_check_state(["fingerprint=f1", "driver=1", "checked.key=f0 ubuntu:24.04",
                                "checked.status=WARN", "checked.detail=GPU container check skipped: no image",
                                "result.key=f1 ubuntu:24.04", "result.host=GPU 0: X (UUID: GPU-aa)",
                                "result.rc=0", "result.out=GPU 0: X (UUID: GPU-aa)", "end=1"])
    assert st["driver"] and not st["image_present"]
    assert st["checked"] == {"key": "f0 ubuntu:24.04", "status": "WARN",
                             "detail": "GPU container check skipped: no image"}
    assert st["result"]["key"] == "f1 ubuntu:24.04" and st["result"]["uuids"] == ["GPU-aa"]
    assert st["result"]["host_uuids"] == ["GPU-aa"] and st["result"]["rc"] == 0
    assert parse_gpu_check_state(["fingerprint=f1", "end=1"])["result"] is None


def test_the_gpu_check_is_an_operation_not_a_fact():
    from glmfleet.docker import facts

    assert not hasattr(facts, "GpuContainerCheck")
    text = Path("glmfleet/docker/deploys.py").read_text()  # the stage tasks/nvidia_toolkit.py calls
    assert "ops.gpu_container_check(s.gpu_check_image, s.gpu_check_always" in text
