"""A site network for the simulated fleet: test hosts that reach each other.

Each fleet host has only its own /30 link to the controller, so hosts cannot talk to one
another. A site network is a Linux bridge inside a network namespace of its own
(``<prefix>-site``); a host that opts in gets a second interface, ``eth1``, on it (a veth
pair: one end in the host's namespace, the other on the bridge) with an address from
``SITE_NET``. Nothing of it lives in the controller's own namespace: the machine's routes,
interfaces and firewall are untouched, and the controller itself has no address there
(tests reach hosts through their ``address`` as before). Deleting a host's namespace
removes its veth pair; deleting the site namespace removes the bridge.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess

# Only inside the site namespace and the hosts' namespaces: it cannot collide with the
# machine's networks, and must not overlap the hosts' own links (10.213.0.0/16).
SITE_NET = ipaddress.ip_network("10.214.0.0/24")
BRIDGE = "br0"


class SiteNetError(RuntimeError):
    pass


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if check and p.returncode:
        raise SiteNetError(f"ip {' '.join(argv)}: {p.stderr.strip()}")
    return p


class SiteNet:
    """One bridge for one fleet; ``attach`` puts a host's namespace on it."""

    def __init__(self, prefix: str, state: dict | None = None):
        state = state or {}
        self.netns: str = state.get("netns", f"{prefix}-site")
        self.addresses: dict[str, str] = dict(state.get("addresses", {}))  # host netns -> address
        self.created: bool = state.get("created", False)

    def to_state(self) -> dict:
        return {"netns": self.netns, "addresses": self.addresses, "created": self.created}

    def _ensure(self) -> None:
        if self.created:
            return
        self.created = True  # recorded first, so a half-made namespace is still torn down
        _ip("netns", "add", self.netns)
        _ip("-n", self.netns, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", self.netns, "link", "set", BRIDGE, "up")
        _ip("-n", self.netns, "link", "set", "lo", "up")

    def attach(self, host_netns: str) -> str:
        """Give the host namespace ``eth1`` on the bridge; return its site address."""
        self._ensure()
        used = set(self.addresses.values())
        address = next(str(a) for a in list(SITE_NET.hosts())[9:] if str(a) not in used)
        port = "sp" + hashlib.sha1(host_netns.encode()).hexdigest()[:10]
        # Made in the site namespace, the peer moved straight into the host's: never in ours.
        _ip("-n", self.netns, "link", "add", port, "type", "veth", "peer", "name", "eth1",
            "netns", host_netns)
        _ip("-n", self.netns, "link", "set", port, "master", BRIDGE, "up")
        _ip("-n", host_netns, "addr", "add", f"{address}/{SITE_NET.prefixlen}", "dev", "eth1")
        _ip("-n", host_netns, "link", "set", "eth1", "up")
        self.addresses[host_netns] = address
        return address

    def detach(self, host_netns: str) -> None:
        """Forget a host (its veth pair goes with its namespace)."""
        self.addresses.pop(host_netns, None)

    def destroy(self) -> None:
        if self.created:
            _ip("netns", "del", self.netns, check=False)
        self.created = False
        self.addresses.clear()
