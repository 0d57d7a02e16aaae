"""The transport interface under the client API.

A transport moves control requests (register, login, commands) and task
messages (to the aggregator, to one participant, to all). The HTTP transport
talks to the local platform, the AMQP transport to the cloud platform, and the
in-process transport to a platform core in the same Python process.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from werkbund.client.messages import encode_message


class Transport(ABC):
    """What the client API needs from a platform connection."""

    user: str | None = None

    @abstractmethod
    def register(self, user: str, password: str, org: str) -> dict: ...

    @abstractmethod
    def login(self, user: str, password: str) -> dict:
        """Authenticate once; later calls act as this user."""

    @abstractmethod
    def call(self, command: str, **params): ...

    @abstractmethod
    def send(self, task: str, to: str, body: bytes) -> dict:
        """Deliver a message frame to 'aggregator', 'all' or one participant."""

    def send_message(self, task: str, to: str, kind: str, payload: bytes, header: dict,
                     payload_sha256: str | None = None) -> dict:
        """Frame a task message and send it; a transport may stream a large one without the frame.
        ``payload_sha256``: the payload's, where the caller has it (not hashed again)."""
        return self.send(task, to, encode_message(task, kind, payload, payload_sha256=payload_sha256, **header))

    @abstractmethod
    def receive(self, task: str, timeout: float) -> tuple[str, bytes] | None:
        """The caller's next (sender, frame) in ``task``, or None after ``timeout`` seconds. The frame is
        its bytes, or what ``decode_message`` takes in their place: a ``CheckedFrame`` read and checked
        on the way, a ``MalformedFrame`` that failed those checks."""

    def receive_batched(self, task: str, timeout: float, most: int) -> tuple[str, bytes] | None:
        """As ``receive``, for a reader that may lose messages it was given but has not handled yet (the
        aggregator: it asks a round again): a transport may take up to ``most`` waiting messages in one
        exchange and hand them out one by one. Here one at a time, as ``receive``."""
        return self.receive(task, timeout)

    @abstractmethod
    def put_model(self, task: str, data: bytes, meta: dict) -> dict: ...

    @abstractmethod
    def get_model(self, task: str) -> tuple[bytes, dict]: ...

    def close(self) -> None:
        pass
