"""The simulated fleet itself: isolation, pyinfra over real SSH, apt through the
proxy, stop/restart, clean teardown, and the CLI."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from testbed import Fleet, rootfs
from testbed.fleet import CGROUP_DIR, cgroup_hierarchies
from testbed.rootfs import alive

REPO = Path(__file__).resolve().parents[2]

DEPLOY = '''\
import io
from pyinfra import host
from pyinfra.operations import apt, files

apt.packages(name="Install jq", packages=["jq"], update=True)
files.put(name="Marker", src=io.StringIO(host.data.marker + "\\n"), dest="/etc/testbed-marker")
'''


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)


def pyinfra(cli, *args, cwd):
    """Run the real pyinfra CLI; returns (exit code, combined output: it logs to stderr)."""
    r = subprocess.run([cli, "-y", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    return r.returncode, r.stdout


def test_host_basics(make_host):
    h = make_host(files={"/etc/glmfleet/hello.txt": "hello", "/usr/local/bin/hi": ("#!/bin/sh\necho hi\n", 0o755)},
                  shm_size="64m", hostfs_size="4m")
    assert h.exec("hostname").stdout.strip() == h.name
    # systemd is PID 1 of the host's own PID namespace (the default profile); sshd is its unit
    assert h.exec("cat /proc/1/comm").stdout.strip() == "systemd"
    assert h.exec("systemctl is-active ssh").stdout.strip() == "active"
    assert h.exec("cat /etc/glmfleet/hello.txt").stdout == "hello"
    assert h.exec("hi").stdout == "hi\n"
    assert (h.root / "etc/glmfleet/hello.txt").read_text() == "hello"
    assert not Path("/etc/glmfleet/hello.txt").exists()
    # only its own link, no route out
    assert h.address in h.exec("ip -4 -o addr show dev eth0").stdout
    assert "default" not in h.exec("ip route").stdout
    assert "64M" in h.exec("df -h /dev/shm").stdout
    # its own cgroup subtree, writable, seen as the root of its cgroup namespace
    assert h.exec("ls /sys/fs/cgroup").stdout.strip()
    assert ":/init.scope" in h.exec("cat /proc/1/cgroup").stdout
    # the size-limited /mnt fills up like a full disk
    full = h.exec("dd if=/dev/zero of=/mnt/fill bs=1M count=8", check=False)
    assert full.returncode != 0 and "No space left" in full.stderr
    # the login user (no root rights but passwordless sudo), and root for tests about root
    r = run(h.ssh_argv("id -un; sudo -n id -un", user=rootfs.LOGIN_USER))
    assert r.returncode == 0 and r.stdout.split() == [rootfs.LOGIN_USER, "root"], r.stderr
    r = run(h.ssh_argv("id -un"))
    assert r.returncode == 0 and r.stdout.strip() == "root", r.stderr


def test_systemd_hosts_debian_12_and_13_side_by_side(make_host):
    """Several systemd hosts at once, both releases: each boots to a running system with
    its own cgroups (no host sees another's units), and powers off cleanly."""
    hosts = [make_host(suite=s) for s in ("bookworm", "trixie", "trixie")]
    for h, version in zip(hosts, ("12", "13", "13")):
        assert f'VERSION_ID="{version}"' in h.exec("cat /etc/os-release").stdout
        state = h.exec("systemctl is-system-running --wait", check=False, timeout=120).stdout.strip()
        assert state == "running", (h.name, state, h.exec("systemctl --failed", check=False).stdout)
        pids = h.exec("cat /sys/fs/cgroup/systemd/system.slice/ssh.service/cgroup.procs").stdout.split()
        assert len(pids) == 1  # its own sshd only: the other hosts' are not in its tree
        assert h.exec(f"cat /proc/{pids[0]}/comm").stdout.strip() == "sshd"


def test_initless_profile(make_host):
    h = make_host(init="none")
    assert h.exec("cat /proc/1/comm").stdout.strip() == "sshd"
    assert not (h.root / "run/systemd/system").exists()
    r = run(h.ssh_argv("sudo -n true", user=rootfs.LOGIN_USER))
    assert r.returncode == 0, r.stderr


def test_pyinfra_apt_and_files_on_three_hosts(fleet, make_host, pyinfra_cli, tmp_path):
    hosts = [make_host() for _ in range(3)]
    markers = {h.name: f"{h.name}-{secrets.token_hex(4)}" for h in hosts}
    inv = fleet.write_inventory(tmp_path / "inventory.py", hosts=[h.name for h in hosts],
                                host_data={n: {"marker": m} for n, m in markers.items()})
    (tmp_path / "deploy.py").write_text(DEPLOY)

    rc, out = pyinfra(pyinfra_cli, inv, "deploy.py", cwd=tmp_path)
    assert rc == 0, out

    for h in hosts:
        assert "Status: install ok installed" in h.exec("dpkg -s jq").stdout
        assert h.exec("echo '{\"a\": 1}' | jq .a").stdout.strip() == "1"
        # each host has its own file, in its own filesystem only
        assert h.exec("cat /etc/testbed-marker").stdout.strip() == markers[h.name]
        assert (h.root / "etc/testbed-marker").read_text().strip() == markers[h.name]
        # downloaded .debs are not kept on the host
        assert not list((h.root / "var/cache/apt/archives").glob("*.deb"))
    assert not Path("/etc/testbed-marker").exists()
    # the packages came through the fleet's apt proxy
    acng_log = (fleet.proxy.dir / "log" / "apt-cacher.log").read_text()
    assert "/jq_" in acng_log


def test_stop_and_restart(fleet, make_host, pyinfra_cli, tmp_path):
    h = make_host()
    inv = fleet.write_inventory(tmp_path / "inv.py", hosts=[h.name])
    (h.root / "root/kept").write_text("survives a restart")
    first = (h.pid, h.pid_start)

    fleet.stop(h.name)
    assert not h.running and not alive(*first)
    assert run(h.ssh_argv("true")).returncode == 255
    rc, out = pyinfra(pyinfra_cli, inv, "exec", "--", "true", cwd=tmp_path)
    assert rc != 0 and "Could not connect" in out, out

    fleet.start(h.name)
    assert h.running
    rc, out = pyinfra(pyinfra_cli, inv, "exec", "--", "cat", "/root/kept", cwd=tmp_path)
    assert rc == 0 and f"[{h.name}] survives a restart" in out, out

    fleet.restart(h.name)
    assert run(h.ssh_argv("hostname")).stdout.strip() == h.name


def _leftovers(prefix: str, workdir: Path, veths, pids) -> list[str]:
    left = []
    netns = run(["ip", "netns", "list"]).stdout
    left += [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith(prefix)]
    links = run(["ip", "-o", "link"]).stdout
    left += [f"veth {v}" for v in veths if f" {v}@" in links or f" {v}:" in links]
    mounts = Path("/proc/mounts").read_text()
    left += [f"mount {line}" for line in mounts.splitlines() if str(workdir) in line]
    left += [f"pid {pid}" for pid, start in pids if alive(pid, start)]
    if workdir.exists():
        left.append(f"dir {workdir}")
    for _, mount, own in cgroup_hierarchies():  # each host's cgroup subtree
        d = Path(f"{mount}{own.rstrip('/')}/{CGROUP_DIR}")
        left += [f"cgroup {p}" for p in d.glob(f"{prefix}-*")]
    return left


def test_teardown_leaves_nothing(tmp_path):
    f = Fleet(tmp_path / "fleet", cleanup_at_exit=False)
    try:
        for n in ("a", "b"):
            f.add_host(n, hostfs_size="8m")
        f.start()
        hosts = list(f.hosts.values())
        pids = [(h.pid, h.pid_start) for h in hosts] + [(h.launcher_pid, h.launcher_start) for h in hosts]
        pids.append((f.proxy.pid, f.proxy.pid_start))
        veths = [h.veth for h in hosts]
        hosts[0].exec("sleep 300 >/dev/null 2>&1 &")  # a stray process inside a host
        assert all(alive(p, s) for p, s in pids)
        assert _leftovers(f.prefix, f.workdir, veths, []) != []
    finally:
        f.teardown()
    assert _leftovers(f.prefix, f.workdir, veths, pids) == []
    f.teardown()  # idempotent


def test_cli_up_down(tmp_path, fleet, pyinfra_cli):
    # `fleet` only for its skip checks; the CLI makes its own fleet
    wd, inv = tmp_path / "clifleet", tmp_path / "inventory.py"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "testbed"]
    r = run(cli + ["up", "-n", "2", "--inventory", str(inv), "--workdir", str(wd)], env=env)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SIMULATED FLEET" in r.stdout
        rc, out = pyinfra(pyinfra_cli, inv, "exec", "--", "hostname", cwd=tmp_path)
        assert rc == 0, out
        for n in ("node1", "node2"):
            assert f"[{n}] {n}" in out  # each host answers with its own hostname
        r = run(cli + ["status", "--workdir", str(wd)], env=env)
        assert r.stdout.count("running pid") == 3  # two hosts and the apt proxy
        state = Fleet.load(wd)
    finally:
        down = run(cli + ["down", "--workdir", str(wd)], env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    hosts = list(state.hosts.values())
    pids = [(h.pid, h.pid_start) for h in hosts] + [(state.proxy.pid, state.proxy.pid_start)]
    assert _leftovers(state.prefix, wd, [h.veth for h in hosts], pids) == []


def test_site_network_joins_opted_in_hosts_only(fleet, make_host):
    """Hosts added with site=True reach each other on the site bridge (its own namespace);
    other hosts and the machine's own namespace are unchanged."""
    a, b = make_host(site=True), make_host(site=True)
    plain = make_host()
    assert a.site_address and b.site_address and a.site_address != b.site_address
    assert a.site_address in a.exec("ip -4 -o addr show dev eth1").stdout
    # b listens on its site address; a connects to it over the bridge
    b.exec("python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
           f"s.bind((\"{b.site_address}\", 9099)); s.listen(); c,_=s.accept(); c.sendall(b\"site-ok\")' "
           ">/dev/null 2>&1 &")
    got = a.exec("python3 -c 'import socket,time\n"
                 "for _ in range(50):\n"
                 "    try:\n"
                 f"        s=socket.create_connection((\"{b.site_address}\", 9099), 2); print(s.recv(16).decode()); break\n"
                 "    except OSError: time.sleep(0.1)'").stdout
    assert got.strip() == "site-ok"
    assert plain.site_address is None
    assert "eth1" not in plain.exec("ip -o link").stdout
    # the machine's own namespace holds no end of the site network
    assert ": sp" not in run(["ip", "-o", "link"]).stdout
