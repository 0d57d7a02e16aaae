"""In-memory inboxes for task messages on the local platform and in one process.

Who may send to whom is decided by the core (``PlatformService.route_message``);
this only stores opaque message bodies and wakes waiting readers. A broadcast
stores one body object in every inbox, never a copy per participant.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    sender: str
    body: bytes


class Mailboxes:
    def __init__(self):
        self._boxes: dict[tuple[str, str], deque[Message]] = {}
        self._cond = threading.Condition()

    def put(self, task: str, inboxes: list[str], sender: str, body: bytes) -> None:
        message = Message(sender, body)
        with self._cond:
            for inbox in inboxes:
                self._boxes.setdefault((task, inbox), deque()).append(message)
            self._cond.notify_all()

    def get(self, task: str, inbox: str, timeout: float) -> Message | None:
        """The oldest message in the inbox, waiting up to ``timeout`` seconds for one."""
        deadline = time.monotonic() + max(0.0, timeout)
        key = (task, inbox)
        with self._cond:
            while True:
                box = self._boxes.get(key)
                if box:
                    return box.popleft()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def drop_task(self, task: str) -> None:
        with self._cond:
            for key in [k for k in self._boxes if k[0] == task]:
                del self._boxes[key]
            self._cond.notify_all()
