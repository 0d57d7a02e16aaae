"""The blob store's HTTP endpoint (``PUT``/``POST``/``GET``/``DELETE /blobs/<task>/<id>``), in a thread
of `werkbund platform serve`; the files are ``platform/storage/blobs.py``'s. Every request is checked by the
core's rule (``PlatformService.check_blob_access``) with a transfer token of the task; this front only
translates.

Why the standard library's HTTP server and not waitress: waitress reads a whole request body (to
a temporary file) before the application sees it, which would write every upload to disk twice.
"""
from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from werkbund.platform.errors import InvalidInput, NotFound, Unavailable, WerkbundError
from werkbund.platform.storage import blobs
from werkbund.platform.storage.blobs import BlobStore
from werkbund.platform.tls import server_context

log = logging.getLogger("werkbund.platform.blobs")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "werkbund-blobs"
    server: "BlobServer"

    def log_message(self, fmt, *args):  # noqa: D401 - quiet; the platform logs what matters
        log.debug("%s %s", self.address_string(), fmt % args)

    def _route(self) -> tuple[str, str, str]:
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 3 or parts[0] != "blobs":
            raise NotFound("use /blobs/<task>/<blob id>")
        token = self.headers.get("Authorization", "")
        user = self.server.service.authenticate(token[7:] if token.startswith("Bearer ") else "",
                                                scope=f"blob:{parts[1]}")  # the task's transfer token only
        return user, parts[1], parts[2]

    def _upload(self, size_header: str, refusal: str) -> tuple[str, str, str, int]:
        """(user, task, blob id, size) of an upload the caller may make; ``refusal`` when the header
        that gives its size is missing or not a number."""
        user, task, blob_id = self._route()
        self.server.service.check_blob_access(user, task, "upload")
        try:
            return user, task, blob_id, int(self.headers.get(size_header, ""))
        except ValueError:
            raise InvalidInput(refusal) from None

    def _reply(self, status: int, body: dict, extra=None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _guarded(self, work) -> None:
        try:
            work()
        except WerkbundError as exc:
            self.close_connection = True  # a refused upload's body is not read
            self._reply(exc.http_status, {"error": exc.to_dict()})
        except (ConnectionError, TimeoutError) as exc:
            log.info("blob transfer broken off: %r", exc)
            self.close_connection = True

    def do_PUT(self):
        def work():
            user, task, blob_id, size = self._upload("Content-Length", "an upload needs a Content-Length")
            meta = self.server.store.put(task, blob_id, self.rfile, size, user)
            log.info("%s stored blob %s of task %s (%d bytes)", user, blob_id, task, size)
            self._reply(201, meta)
            if self.server.sweep_due():
                self.server.store.sweep()
        self._guarded(work)

    def do_POST(self):
        """Announce an upload (size in X-Werkbund-Size), so readers can stream it while it arrives."""
        def work():
            user, task, blob_id, size = self._upload("X-Werkbund-Size",
                                                     "announcing a blob needs its size in X-Werkbund-Size")
            self.server.store.open(task, blob_id, size, user)
            self._reply(201, {"id": blob_id, "size": size})
        self._guarded(work)

    def do_GET(self):
        """The blob, streamed (while it arrives, if its upload is under way); ``?meta``: its metadata
        once complete, with the sha256 the platform computed."""
        def work():
            user, task, blob_id = self._route()
            store = self.server.store
            if self.path.endswith("?meta"):
                meta = store.finished_meta(task, blob_id)
                self.server.service.check_blob_access(user, task, "download", meta["uploader"])
                self._reply(200, meta)
                return
            upload = store.upload_of(task, blob_id)
            handle = upload.open_reader() if upload is not None else None
            if handle is None:
                upload, meta = None, store.meta(task, blob_id)
                handle = open(store.path(task, blob_id), "rb")
            else:
                meta = {"size": upload.size, "uploader": upload.uploader}
                log.info("%s streams blob %s of task %s while it is uploaded", user, blob_id, task)
            with handle:
                self.server.service.check_blob_access(user, task, "download", meta["uploader"])
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(meta["size"]))
                if "sha256" in meta:
                    self.send_header("X-Werkbund-Sha256", meta["sha256"])
                self.send_header("X-Werkbund-Uploader", meta["uploader"])
                self.end_headers()
                self.wfile.flush()
                self._send_file(handle, meta["size"], upload)
        self._guarded(work)

    def _send_file(self, handle, size: int, upload) -> None:
        sent = 0
        while sent < size:
            try:
                available = size if upload is None else upload.wait_beyond(sent, blobs.STALL_SECONDS)
            except Unavailable as exc:  # the upload failed or stalled: the reader sees a short body
                log.info("blob transfer broken off: %s", exc)
                self.close_connection = True
                return
            if isinstance(self.connection, ssl.SSLSocket):
                handle.seek(sent)
                while sent < available:
                    piece = handle.read(min(blobs.PIECE, available - sent))
                    self.wfile.write(piece)
                    sent += len(piece)
            else:  # zero-copy from the page cache
                sent += self.connection.sendfile(handle, offset=sent, count=available - sent)

    def do_DELETE(self):
        def work():
            user, task, blob_id = self._route()
            meta = self.server.store.meta(task, blob_id)
            self.server.service.check_blob_access(user, task, "delete", meta["uploader"])
            self.server.store.delete(task, blob_id)
            self._reply(200, {"deleted": blob_id})
        self._guarded(work)


class BlobServer(ThreadingHTTPServer):
    """The blob store's HTTP endpoint, in a thread of `werkbund platform serve`."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, service, store: BlobStore, host: str = "127.0.0.1", port: int = 0,
                 public_url: str | None = None, certificate: str | None = None, key: str | None = None):
        super().__init__((host, port), _Handler)
        self.service, self.store = service, store
        scheme = "http"
        if certificate:
            self.socket = server_context(certificate, key).wrap_socket(self.socket, server_side=True)
            scheme = "https"
        self.url = public_url or f"{scheme}://{host}:{self.server_address[1]}"
        self._last_sweep = 0.0
        self._thread: threading.Thread | None = None

    def sweep_due(self) -> bool:
        if time.monotonic() - self._last_sweep < 600:
            return False
        self._last_sweep = time.monotonic()
        return True

    def start(self) -> "BlobServer":
        self._thread = threading.Thread(target=self.serve_forever, name="werkbund-blobs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
