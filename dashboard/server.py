"""Serve the dashboard: on 127.0.0.1 by default; on any other address only over TLS.

The server is werkzeug's threaded WSGI server (the standard library's ``ThreadingHTTPServer``
underneath, as the platform's blob store uses it), because it speaks TLS with an ``ssl`` context
and waitress does not. A dashboard serves the few people of one site from their own machine; the
pages poll a small JSON document once a second, nothing streams.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading

from werkzeug.serving import make_server

from werkbund.dashboard.app import DashboardSettings, create_app
from werkbund.platform.errors import InvalidInput
from werkbund.platform.tls import server_context

log = logging.getLogger("werkbund.dashboard")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class DashboardServer:
    """The dashboard app behind a threaded HTTP(S) server; ``serve_forever`` or ``start`` in a thread."""

    def __init__(self, settings: DashboardSettings, host: str = "127.0.0.1", port: int = 0,
                 tls_certificate: str | None = None, tls_key: str | None = None):
        if bool(tls_certificate) != bool(tls_key):
            raise InvalidInput("TLS needs both --tls-cert and --tls-key")
        if not is_loopback(host) and not tls_certificate:
            raise InvalidInput(f"the dashboard serves {host} only over TLS: give --tls-cert and --tls-key, or "
                               "keep it on 127.0.0.1 (the default)")
        settings.tls = bool(tls_certificate)
        if not is_loopback(host):
            names = {host}
            if host in ("0.0.0.0", "::"):
                names |= {socket.gethostname(), socket.getfqdn()}
            settings.hosts = tuple(sorted(set(settings.hosts) | names))
        self.settings = settings
        self.app = create_app(settings)
        context = server_context(tls_certificate, tls_key) if tls_certificate else None
        try:
            self._server = make_server(host, port, self.app, threaded=True, ssl_context=context)
        except OSError as exc:
            raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self.host = host
        self.port = self._server.server_port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> "DashboardServer":
        self._thread = threading.Thread(target=self.serve_forever, name="werkbund-dashboard", daemon=True)
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C interrupts it)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        """Stop serving, stop the runs it started (aggregators keep their checkpoints) and log everyone out."""
        state = self.app.extensions["werkbund_dashboard"]
        if self._thread is not None and self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()
        state["runs"].stop_all()
        state["sessions"].close_all()
