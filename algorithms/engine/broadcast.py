"""What one exchange of the round engine sends and brings back: a round's broadcast payload, held
only while it may be asked for again, and the updates collected for it."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from werkbund.algorithms.engine.errors import TaskFailure

__all__ = ["Broadcast", "Collected", "sha256_hex"]


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
    for it again (a restarted one). Once sent, a large payload that the aggregator can make again
    (``remake``: the same arrays encoded the same way) is not held: at a GiB, the model would otherwise
    sit in memory twice (arrays and bytes) beside every update that arrives. Made again, its sha256
    must be the one published for the round."""

    RELEASE_FROM = 16 * 1024 * 1024  # bytes

    def __init__(self, payload: bytes, remake=None):
        self._payload, self._remake = payload, remake
        self.size = len(payload)
        self._sha256 = None if remake is None else sha256_hex(payload)  # what a payload made again must match

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_hex(self._payload)
        return self._sha256

    def payload(self) -> bytes:
        if self._payload is not None:
            return self._payload
        payload = self._remake()
        if sha256_hex(payload) != self._sha256:
            raise TaskFailure("the round's global model changed while its updates came in (an algorithm's "
                              "global_weights must not change before aggregate); its broadcast cannot be sent again")
        return payload

    def sent(self) -> None:
        """The payload went out to everyone: let go of a large one that can be made again."""
        if self._remake is not None and self.size >= self.RELEASE_FROM:
            self._payload = None
