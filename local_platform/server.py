"""Run the local platform: the Flask app behind an ASGI front (``front.py``) served by uvicorn over a SQLite file.

uvicorn runs one asyncio loop: a participant waiting in a long poll holds no thread (the front awaits its
inbox), so a task with many more participants than route threads still gets every send answered.
Given a certificate and its key, the same server speaks HTTPS.
"""
from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import uvicorn
from sqlalchemy.engine import make_url

from werkbund.local_platform.app import DEFAULT_MAX_MESSAGE_BYTES, MAX_META_BYTES, create_app
from werkbund.local_platform.front import PlatformFront
from werkbund.local_platform.http_protocol import bounded_httptools
from werkbund.platform.db import sqlite_url
from werkbund.platform.errors import InvalidInput
from werkbund.platform.storage.mailboxes import MAX_PENDING_BYTES, DiskMailboxes, Mailboxes
from werkbund.platform.model_store import MAX_MODEL_BYTES
from werkbund.platform.service import PlatformService
from werkbund.platform.tls import server_context

log = logging.getLogger("werkbund.local_platform")

# what waitress, the server before uvicorn, took for a request's headers
MAX_HEADER_BYTES = 256 * 1024


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
    """The platform on ``host:port`` (listening once made, so ``url`` is known); ``serve_forever`` or ``start``
    in a thread. ``threads`` run the Flask routes; waiting long polls take none of them."""

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
        # a body larger than any route takes is refused at its headers; the routes check their own bounds
        self.front = PlatformFront(self.app, threads, max(max_message_bytes, max_model_bytes + MAX_META_BYTES) + (1 << 20))
        self._socket = _listening_socket(host, port)
        self.port = self._socket.getsockname()[1]
        self.host, self.tls = host, context is not None
        # no X-Forwarded-For trusted (the login guard counts failures per client address); an idle
        # keep-alive connection is kept 300 s (a participant polls again within its 25 s); requests are
        # parsed by httptools (C), their headers bounded at MAX_HEADER_BYTES (``http_protocol.py``: a final
        # model's X-Werkbund-Meta, its round history, outgrows 16 KiB at 50 participants and 10 rounds);
        # the loop is uvloop where it is installed (not on Windows), else asyncio's
        config = uvicorn.Config(self.front, http=bounded_httptools(MAX_HEADER_BYTES), loop="auto", ws="none",
                                lifespan="off", log_config=None, access_log=False, server_header=False,
                                proxy_headers=False, timeout_keep_alive=300, timeout_graceful_shutdown=5)
        config.load()
        config.ssl = context  # the platform's own TLS settings (platform/tls.py), not uvicorn's defaults
        self._server = _Server(config, self.front)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve until ``stop`` (or, in the main thread, SIGINT/SIGTERM: uvicorn stops, then raises it again)."""
        self._server.run(sockets=[self._socket])

    def start(self) -> "LocalPlatformServer":
        self._thread = threading.Thread(target=self.serve_forever, name="werkbund-local-platform", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, answer the waiting long polls, give the requests in flight up to 5 s, close every
        connection and wait for the serving thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._socket.close()
        self.front.shutdown()
        self.service.db.dispose()


def _listening_socket(host: str, port: int) -> socket.socket:
    """The listening socket, made with IPPROTO_TCP named: asyncio turns Nagle's algorithm off
    (TCP_NODELAY) only on sockets whose proto says TCP, and ``socket.create_server`` leaves it 0. With
    Nagle on, a reply's body waits for the client's delayed ACK of its headers: 40 ms per request."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server that answers the waiting long polls first when it shuts down (they would hold it up
    to their timeout: uvicorn waits for the replies in flight)."""

    def __init__(self, config: uvicorn.Config, front: PlatformFront):
        super().__init__(config)
        self._front = front

    async def shutdown(self, sockets=None) -> None:
        self._front.close()
        await super().shutdown(sockets)
