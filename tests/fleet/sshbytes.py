"""Run pyinfra's command line with the bytes on its SSH connections counted, per host.

    python tests/fleet/sshbytes.py OUT.json pyinfra-arguments...

Every byte paramiko's packet layer writes to or reads from a connection's socket (the
encrypted stream: commands, outputs, SFTP uploads, all channels) is added to that
connection's peer address; OUT.json gets {address: {"sent": n, "received": n}} when pyinfra
exits. This is what crosses the controller's link on pyinfra's behalf, so a weight byte
relayed through the controller cannot escape it.
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import signal
import sys

from pyinfra_cli.main import main  # first: importing pyinfra_cli patches the stdlib for gevent
from paramiko import packet

counts: dict[str, dict[str, int]] = {}
_write_all, _read_all = packet.Packetizer.write_all, packet.Packetizer.read_all


def _peer(pk) -> dict[str, int]:
    name = getattr(pk, "_counted_peer", None)
    if name is None:
        try:
            name = pk._Packetizer__socket.getpeername()[0]
        except (OSError, AttributeError):
            name = "?"
        pk._counted_peer = name
    return counts.setdefault(name, {"sent": 0, "received": 0})


def write_all(self, out):
    _peer(self)["sent"] += len(out)
    return _write_all(self, out)


def read_all(self, n, check_rekey=False):
    data = _read_all(self, n, check_rekey)
    _peer(self)["received"] += len(data)
    return data


def _stacks(_signum, _frame) -> None:
    """SIGUSR1: every thread's and greenlet's stack to stderr (a test that gives up on a run
    sends it first, so a hang says where it is)."""
    import gevent.util
    faulthandler.dump_traceback(all_threads=True)
    sys.stderr.write("\n".join(gevent.util.format_run_info()) + "\n")
    sys.stderr.flush()


def _dump(path: str) -> None:
    with open(path, "w") as f:
        json.dump(counts, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    out_path = sys.argv[1]
    packet.Packetizer.write_all, packet.Packetizer.read_all = write_all, read_all
    atexit.register(_dump, out_path)
    signal.signal(signal.SIGUSR1, _stacks)
    sys.argv = ["pyinfra", *sys.argv[2:]]
    sys.exit(main())
