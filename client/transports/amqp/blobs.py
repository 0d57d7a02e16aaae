"""The client side of the platform's blob store: large messages and models stored once, streamed.

The claim-check path of the AMQP transport: the sender announces a blob (``POST``), publishes only
a reference (id, size) through the broker and uploads the bytes once (``PUT``); a receiver that
is waiting streams the blob (``GET``) while it arrives, so upload and download overlap. A message
(``download_message``) is read by ``messages.read_message``: its payload straight into the final
bytes object while a second thread hashes what has arrived, checked against the sha256 its sender
put in the header. Other blobs (models, ``download``) go the same way into their bytes, hashed the
same way and compared with the sha256 the platform computed of the upload (``GET ...?meta``, or a
header once the blob is complete). http.client reads straight into the buffers and sends the
caller's bytes as they are, in one ``sendall``, no copies.
"""
from __future__ import annotations

import http.client
import json
import uuid
from urllib.parse import urlsplit

from werkbund.client.messages import CheckedFrame, MalformedMessage, read_hashed, read_message
from werkbund.platform.errors import Unavailable, WerkbundError, error_from_dict
from werkbund.platform.tls import client_context

TIMEOUT = 300.0


class BlobClient:
    def __init__(self, url: str, token: str, ca_certificate: str | None = None):
        self.url, self.token = url, token
        parts = urlsplit(url)
        self.https, self.host = parts.scheme == "https", parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.context = client_context(ca_certificate) if self.https else None

    def _connection(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=TIMEOUT, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)

    def _request(self, method: str, task: str, blob_id: str, body=None, headers=None, query: str = ""):
        connection = self._connection()
        headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        if body is not None:  # byte views, sent one after the other
            headers["Content-Length"] = str(sum(part.nbytes for part in body))
        try:
            connection.request(method, f"{self.prefix}/blobs/{task}/{blob_id}{query}", body=body, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise Unavailable(f"cannot reach the platform's blob store at {self.url}: {exc!r}") from None
        if response.status >= 400:
            try:
                error = json.loads(response.read()).get("error") or {}
            except ValueError:
                error = {"message": f"blob store answered {response.status}"}
            connection.close()
            raise error_from_dict(error)
        return connection, response

    def announce(self, task: str, size: int) -> str:
        """Reserve a blob id for an upload of ``size`` bytes; readers may stream it while it arrives."""
        blob_id = uuid.uuid4().hex
        connection, response = self._request("POST", task, blob_id, headers={"X-Werkbund-Size": str(size)})
        response.read()
        connection.close()
        return blob_id

    def upload(self, task: str, data, blob_id: str | None = None) -> dict:
        """Store ``data`` (bytes-like, or a list of them sent one after the other as one blob: a frame's
        header and its payload, never joined) once; returns {id, size, sha256} as the platform computed them."""
        blob_id = blob_id or uuid.uuid4().hex
        parts = [memoryview(part).cast("B") for part in (data if isinstance(data, list) else [data])]
        size = sum(part.nbytes for part in parts)
        connection, response = self._request("PUT", task, blob_id, parts)
        try:
            meta = json.loads(response.read())
        finally:
            connection.close()
        if meta.get("size") != size:
            raise WerkbundError(f"the blob store kept {meta.get('size')} of {size} bytes")
        return meta

    def _open_body(self, task: str, blob_id: str, size: int) -> tuple:
        """(connection, response, a _Body to read from) for a GET of a blob that must have ``size`` bytes."""
        connection, response = self._request("GET", task, blob_id)
        if int(response.getheader("Content-Length", -1)) != size:
            connection.close()
            raise MalformedMessage(f"blob {blob_id} has {response.getheader('Content-Length')} bytes, "
                                   f"the message says {size}")
        return connection, response, _Body(response, blob_id, size)

    def download(self, task: str, blob_id: str, size: int, sha256: str | None = None) -> tuple[bytes, str]:
        """(the blob read straight into a bytes object, who uploaded it); MalformedMessage if not ``sha256``.

        Without ``sha256`` (a blob streamed while it was uploaded) the platform's own sha256 of
        the upload is asked for once the transfer is done."""
        connection, response, body = self._open_body(task, blob_id, size)
        try:
            uploader = response.getheader("X-Werkbund-Uploader", "")
            sha256 = sha256 or response.getheader("X-Werkbund-Sha256")
            data, digest = body.read(read_hashed, size)
        finally:
            connection.close()
        if sha256 is None:
            connection, response = self._request("GET", task, blob_id, query="?meta")
            try:
                sha256 = json.loads(response.read()).get("sha256")
            finally:
                connection.close()
        if digest != sha256:
            raise MalformedMessage(f"blob {blob_id} does not match its sha256")
        return data, uploader

    def download_message(self, task: str, blob_id: str, size: int, sender: str) -> CheckedFrame:
        """A message frame stored as a blob by ``sender``, read and checked by ``read_message``.

        The uploader is checked before a byte of the body is read; the payload goes straight into
        its final bytes object and is compared with the sha256 its sender put in the header (end
        to end: what the platform computed is not needed), so nothing is copied or hashed twice."""
        connection, response, body = self._open_body(task, blob_id, size)
        try:
            uploader = response.getheader("X-Werkbund-Uploader", "")
            if uploader != sender:
                raise MalformedMessage(f"the message from {sender} refers to a blob {uploader} uploaded")
            return body.read(read_message, size)
        finally:
            connection.close()

    def delete(self, task: str, blob_id: str) -> None:
        connection, response = self._request("DELETE", task, blob_id)
        response.read()
        connection.close()


class _Body:
    """A blob's response body for ``read_hashed``/``read_message``: an early end or a broken
    connection is Unavailable (the message stays unacknowledged and is tried again)."""

    def __init__(self, response, blob_id: str, size: int):
        self.response, self.blob_id, self.size, self.done = response, blob_id, size, 0

    def readinto(self, buffer) -> int:
        got = self.response.readinto(buffer)
        if not got:
            raise Unavailable(f"the blob store stopped sending blob {self.blob_id} at {self.done} of {self.size} bytes")
        self.done += got
        return got

    def read(self, reader, size: int):
        try:
            return reader(self.readinto, size)
        except (OSError, http.client.HTTPException) as exc:
            raise Unavailable(f"blob {self.blob_id} broke off at {self.done} of {self.size} bytes: {exc!r}") from None
