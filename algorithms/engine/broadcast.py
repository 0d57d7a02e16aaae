"""What one exchange of the round engine sends and brings back: a round's broadcast payload, held
only while it may be asked for again, and the updates collected for it."""
from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, field

from werkbund.algorithms.engine.errors import TaskFailure

__all__ = ["Broadcast", "Collected", "sha256_hex"]

log = logging.getLogger("werkbund.aggregator")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


@dataclass
class Collected:
    """What one exchange with the participants brought back."""

    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    headers: dict[str, dict] = field(default_factory=dict)


class Broadcast:
    """A round's broadcast payload, kept while the round's updates come in for a participant that asks
    for it again (a restarted one). Once sent, a large payload is not held in memory: at a GiB, the
    model would otherwise sit there twice (arrays and bytes) beside every update that arrives.

    - ``remake``: the aggregator can make it again (the same arrays encoded the same way); made again,
      its sha256 must be the one published for the round.
    - ``spool``: the aggregator cannot (its algorithm reuses the arrays' memory while the updates come
      in, ``RoundAggregator.reuses_global_arrays``): the bytes go to a temporary file, read back and
      checked against their sha256 if asked for. Where the file cannot be written, they stay in memory.
    """

    RELEASE_FROM = 16 * 1024 * 1024  # bytes

    def __init__(self, payload: bytes, remake=None, spool: bool = False):
        self._payload, self._remake, self._spool = payload, remake, spool
        self._file = None
        self.size = len(payload)
        # what a payload made again or read back must match
        self._sha256 = sha256_hex(payload) if remake is not None or spool else None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_hex(self._payload)
        return self._sha256

    @property
    def known_sha256(self) -> dict:
        """``payload_sha256=`` for the channel where the digest was computed already (the frame is not hashed again)."""
        return {"payload_sha256": self._sha256} if self._sha256 else {}

    def payload(self) -> bytes:
        if self._payload is not None:
            return self._payload
        if self._file is not None:
            self._file.seek(0)
            payload = self._file.read()
            if len(payload) != self.size or sha256_hex(payload) != self._sha256:
                raise TaskFailure("the round's broadcast, kept in a temporary file, changed on disk; "
                                  "it cannot be sent again")
            return payload
        payload = self._remake()
        if sha256_hex(payload) != self._sha256:
            raise TaskFailure("the round's global model changed while its updates came in (an algorithm's "
                              "global_weights must not change before aggregate); its broadcast cannot be sent again")
        return payload

    def sent(self) -> None:
        """The payload went out to everyone: let go of a large one that can be made again or kept on disk."""
        if self.size < self.RELEASE_FROM or self._payload is None:
            return
        if self._spool:
            spool = tempfile.TemporaryFile(prefix="werkbund-broadcast-")
            try:
                spool.write(self._payload)
                spool.flush()
            except OSError as exc:
                spool.close()
                log.warning("the round's broadcast (%d bytes) stays in memory: it cannot be kept on disk: %s",
                            self.size, exc)
                return
            self._file = spool
            self._payload = None
        elif self._remake is not None:
            self._payload = None

    def close(self) -> None:
        """The exchange is over: the temporary file goes."""
        if self._file is not None:
            self._file.close()
            self._file = None
