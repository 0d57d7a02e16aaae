"""Run the local platform: the Flask app served by waitress over a SQLite file.

Given a certificate and its key, it serves HTTPS instead: waitress speaks no TLS, so then the
app runs behind werkzeug's threaded server with an ``ssl`` context (as the dashboard does).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from sqlalchemy.engine import make_url
from waitress.server import create_server
from werkzeug.serving import make_server

from werkbund.local_platform.app import DEFAULT_MAX_MESSAGE_BYTES, create_app
from werkbund.platform.db import sqlite_url
from werkbund.platform.errors import InvalidInput
from werkbund.platform.mailboxes import MAX_PENDING_BYTES, DiskMailboxes, Mailboxes
from werkbund.platform.model_store import MAX_MODEL_BYTES
from werkbund.platform.service import PlatformService
from werkbund.platform.tls import server_context

log = logging.getLogger("werkbund.local_platform")


def default_db_url(home: Path) -> str:
    return sqlite_url(home / "local-platform.sqlite")


def default_mailbox_dir(db_url: str) -> str | None:
    """Where the task messages wait: beside a SQLite file (``<file>.mailboxes``), so that a restart on the
    same database delivers them; None (in memory) for any other database."""
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return f"{url.database}.mailboxes"


class LocalPlatformServer:
    """A waitress server around the Flask app; ``serve_forever`` or ``start`` in a thread."""

    def __init__(self, db_url: str, host: str = "127.0.0.1", port: int = 0, threads: int = 32,
                 tls_certificate: str | None = None, tls_key: str | None = None, mailbox_dir: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_model_bytes: int = MAX_MODEL_BYTES,
                 max_pending_bytes: int = MAX_PENDING_BYTES):
        if bool(tls_certificate) != bool(tls_key):
            raise InvalidInput("HTTPS needs both --tls-cert and --tls-key")
        context = server_context(tls_certificate, tls_key) if tls_certificate else None
        self.service = PlatformService(db_url)
        self.mailbox_dir = mailbox_dir or default_mailbox_dir(db_url)
        boxes = (DiskMailboxes(self.mailbox_dir, max_pending_bytes=max_pending_bytes) if self.mailbox_dir
                 else Mailboxes(max_pending_bytes=max_pending_bytes))
        self.app = create_app(self.service, mailboxes=boxes, max_message_bytes=max_message_bytes,
                              max_model_bytes=max_model_bytes)
        self.tls = context is not None
        if self.tls:
            self._server = make_server(host, port, self.app, threaded=True, ssl_context=context)
            self.port = self._server.server_port
        else:
            # waitress reads a request body into a temporary file (past 512 KiB) before the app streams it
            # from there; it may be as large as a model may be (the routes check their own bounds)
            self._server = create_server(self.app, host=host, port=port, threads=threads,
                                         channel_timeout=300, ident="werkbund",
                                         max_request_body_size=max(max_message_bytes, max_model_bytes) + (1 << 20))
            self.port = self._server.effective_port
        self.host = host
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        if self.tls:
            self._server.serve_forever()
        else:
            self._server.run()

    def start(self) -> "LocalPlatformServer":
        self._thread = threading.Thread(target=self.serve_forever, name="werkbund-local-platform", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection from inside the serving loop, then wait for it."""
        if self.tls:
            if self._thread is not None and self._thread.is_alive():
                self._server.shutdown()
                self._thread.join(timeout=10)
            self._server.server_close()
            self.service.db.dispose()
            return
        if self._thread is not None and self._thread.is_alive():
            def close_all():
                for channel in list(self._server._map.values()):
                    if channel is not self._server.trigger:
                        channel.close()
                self._server.trigger.close()

            try:
                self._server.trigger.pull_trigger(close_all)
            except OSError:  # the loop is already closing its trigger: close what is left from here
                self._server.close()
            self._thread.join(timeout=10)
        else:
            self._server.close()
        self._server.task_dispatcher.shutdown(timeout=5)
        self.service.db.dispose()

