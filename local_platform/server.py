"""Run the local platform: the Flask app served by waitress over a SQLite file."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from waitress.server import create_server

from werkbund.local_platform.app import create_app
from werkbund.platform.db import sqlite_url
from werkbund.platform.service import PlatformService

log = logging.getLogger("werkbund.local_platform")


def default_db_url(home: Path) -> str:
    return sqlite_url(home / "local-platform.sqlite")


class LocalPlatformServer:
    """A waitress server around the Flask app; ``serve_forever`` or ``start`` in a thread."""

    def __init__(self, db_url: str, host: str = "127.0.0.1", port: int = 0, threads: int = 32):
        self.service = PlatformService(db_url)
        self.app = create_app(self.service)
        self._server = create_server(self.app, host=host, port=port, threads=threads,
                                     channel_timeout=300, ident="werkbund")
        self.host = host
        self.port = self._server.effective_port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        self._server.run()

    def start(self) -> "LocalPlatformServer":
        self._thread = threading.Thread(target=self.serve_forever, name="werkbund-local-platform", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection from inside the serving loop, then wait for it."""
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

