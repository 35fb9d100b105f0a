"""Serve the built apt repository double over plain HTTP to the simulated hosts.

It listens only on the addresses it is given (the hosts' gateway addresses: the only
controller addresses a host can reach), one socket per address, all on the same port, and
records every request so tests can tell what a host fetched (e.g. that a refused key led
to no package download).
"""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):  # keep test output quiet; requests go to the log list
        pass

    def log_request(self, code="-", size="-"):
        self.server.double._record(self.client_address[0], self.command, self.path, code)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class AptRepoServer:
    """HTTP server for one directory tree on one port, bound to chosen addresses."""

    def __init__(self, www: Path):
        self.www = Path(www)
        self.port: int | None = None
        self._servers: dict[str, _Server] = {}
        self._lock = threading.Lock()
        self.requests: list[dict] = []  # {"client", "method", "path", "status"}

    def _record(self, client, method, path, status) -> None:
        with self._lock:
            self.requests.append({"client": client, "method": method, "path": path,
                                  "status": int(getattr(status, "value", status) or 0)})

    def listen_on(self, address: str) -> None:
        """Also serve on ``address`` (idempotent). The first address picks a free port."""
        if address in self._servers:
            return
        handler = partial(_Handler, directory=str(self.www))
        srv = _Server((address, self.port or 0), handler)
        srv.double = self
        self.port = srv.server_address[1]
        self._servers[address] = srv
        threading.Thread(target=srv.serve_forever, name=f"aptrepo-{address}", daemon=True).start()

    def url(self, address: str, path: str = "") -> str:
        if address not in self._servers:
            raise ValueError(f"not listening on {address}: call listen_on({address!r}) first")
        return f"http://{address}:{self.port}/{path.lstrip('/')}"

    def requests_from(self, client: str) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["client"] == client]

    def stop(self) -> None:
        for srv in self._servers.values():
            srv.shutdown()
            srv.server_close()
        self._servers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

