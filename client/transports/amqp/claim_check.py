"""The receiving and bookkeeping side of the AMQP transport's claim-check path (``blobs.py`` is the HTTP
client of the blob store itself).

``BlobGrants`` holds, per task, a client of the platform's blob store made from a transfer token the
platform granted (reused for ``BLOB_GRANT_SECONDS``; None while the platform serves no blob store),
fetches the message a blob reference in the broker stands for (asking again, with a new grant, while
the blob store cannot be reached: a replica may have gone away), and deletes a read-once blob when the
transport's caller has handled its message.
"""
from __future__ import annotations

import logging
import time

from werkbund.client.messages import CheckedFrame, MalformedMessage
from werkbund.client.transports.amqp.blobs import BlobClient
from werkbund.platform.errors import Unavailable, WerkbundError

BLOB_GRANT_SECONDS = 20 * 60  # reuse a transfer token this long (the platform's last 30 minutes)
BLOB_ATTEMPTS = 30  # downloads tried, 2 s apart, while the blob store cannot be reached

log = logging.getLogger("werkbund.client.amqp")


class BlobGrants:
    def __init__(self, ask_grant, ca_certificate: str | None = None):
        """``ask_grant(task)``: the platform's transfer token for ``task`` ({"url", "token"}), or
        Unavailable when it serves no blob store."""
        self._ask_grant, self.ca_certificate = ask_grant, ca_certificate
        self._grants: dict[str, tuple] = {}  # task -> (BlobClient or None, valid until)
        self._pending: dict[str, tuple] = {}  # task -> (client, blob id) to delete once handled

    def client(self, task: str) -> BlobClient | None:
        """A client of the platform's blob store for ``task``, or None when the platform has none."""
        client, until = self._grants.get(task, (None, 0.0))
        if until > time.monotonic():
            return client
        try:
            grant = self._ask_grant(task)
            client = BlobClient(grant["url"], grant["token"], self.ca_certificate)
        except Unavailable as exc:
            log.info("no blob store (%s); large messages travel through the broker in chunks", exc)
            client = None
        self._grants[task] = (client, time.monotonic() + BLOB_GRANT_SECONDS)
        return client

    def forget(self, task: str) -> None:
        """The grant of ``task`` is asked for again next time (another replica may answer)."""
        self._grants.pop(task, None)

    def renewed(self, task: str) -> BlobClient | None:
        """Forget the grant of ``task`` and ask the platform for a new one: the blob store that gave it
        may be a replica that went away, and the platform names one that answers."""
        self.forget(task)
        try:
            return self.client(task)
        except WerkbundError as exc:
            log.info("no new blob grant (%s)", exc)
            return None

    def fetch(self, task: str, sender: str, headers: dict) -> CheckedFrame:
        """The message a blob reference stands for, read and checked on the way (``read_message``)."""
        try:
            blob_id, size = str(headers["wb-blob"]), int(headers["wb-size"])
        except (KeyError, TypeError, ValueError):
            raise MalformedMessage("a blob reference without valid headers") from None
        blobs = self.client(task)
        if blobs is None:
            raise MalformedMessage("a blob reference, but the platform serves no blob store")
        for attempt in range(BLOB_ATTEMPTS):  # the platform may be restarting: the message stays unacked
            try:
                whole = blobs.download_message(task, blob_id, size, sender)
                break
            except Unavailable as exc:
                if attempt == BLOB_ATTEMPTS - 1:
                    raise
                log.warning("%s; trying again", exc)
                time.sleep(2.0)
                blobs = self.renewed(task) or blobs
        if headers.get("wb-blob-readers") == "one":  # read once: deleted when the message is handled
            self._pending[task] = (blobs, blob_id)
        return whole

    def delete_handled(self, task: str | None = None) -> None:
        """The read-once blob of ``task``'s last message (of every task: None) is handled: delete it."""
        for name in [task] if task is not None else list(self._pending):
            pending = self._pending.pop(name, None)
            if pending is not None:
                quietly(pending[0].delete, name, pending[1])


def quietly(action, *args) -> None:
    """Tidying up the blob store: a failure only leaves a blob for the platform's sweep."""
    try:
        action(*args)
    except WerkbundError as exc:
        log.info("could not delete a blob: %s", exc)
