"""Simulated test fleet: Debian hosts as Linux namespaces on the controller machine.

Nothing here is a real server. Each "host" is a network namespace reached over
its own veth link, with its own overlayfs root filesystem, hostname and PID
namespace, and a real ``sshd`` as its PID 1, so pyinfra, SSH, apt and dpkg run
for real against it. See ``testbed/README.md``.

Public API::

    from testbed import Fleet
    with Fleet() as fleet:
        fleet.add_host("node1")
        fleet.start()
        fleet.write_inventory("/tmp/inv.py")
"""

from testbed.fleet import Fleet, Host, FleetError

__all__ = ["Fleet", "Host", "FleetError"]
