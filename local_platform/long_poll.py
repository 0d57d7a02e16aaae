"""One long poll (GET of an inbox's next message) as the ASGI front (``front.py``) waits it out.

The front gives each request a ``LongPoll`` in its ASGI scope (``SCOPE_KEY``; the Flask route finds it as
``environ["asgi.scope"]``). The route, instead of blocking a server thread in ``Mailboxes.get``, calls
``LongPoll.take``: it looks once and, finding nothing, leaves a wake with the mailbox and answers 204. The
front holds that 204 back, awaits the wake on its event loop and runs the route again, so a waiting
participant costs an asyncio task, not a thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import time

from werkbund.platform.storage.mailboxes import Mailboxes, Message

SCOPE_KEY = "werkbund.long_poll"


class LongPoll:
    """The state of one long poll across the runs of its route: its deadline and the inbox it watches."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._event = asyncio.Event()
        self.deadline: float | None = None  # set by the route's first run, from the request's timeout
        self._watched: tuple[Mailboxes, str, str] | None = None
        self.inbox: str | None = None  # the inbox the route let this request read (set at its first look)

    @property
    def watching(self) -> bool:
        """The route found the inbox empty and left a wake: its 204 is to be held back and waited out."""
        return self._watched is not None

    def take(self, boxes: Mailboxes, task: str, inbox: str, timeout: float) -> Message | None:
        """The inbox's next message now, or None; then, while time is left, watch the inbox (the route's thread)."""
        now = time.monotonic()
        if self.deadline is None:
            self.deadline, self.inbox = now + timeout, inbox
        wake = self.wake if self.deadline > now else None
        message = boxes.take(task, inbox, wake)
        self._watched = (boxes, task, inbox) if message is None and wake is not None else None
        return message

    def wake(self) -> None:
        """Called by a sender's thread (a message came), or by the front when the server stops."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server stopped, nobody waits
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, client_gone: asyncio.Future) -> bool:
        """Until woken (True: run the route again) or the deadline passed or the client left (False)."""
        woken = asyncio.ensure_future(self._event.wait())
        try:
            done, _ = await asyncio.wait({woken, client_gone}, timeout=max(0.0, self.deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            self.stop_watching()
            self._event.clear()
        return woken in done and client_gone not in done

    def stop_watching(self) -> None:
        if self._watched is not None:
            boxes, task, inbox = self._watched
            boxes.unwatch(task, inbox, self.wake)
            self._watched = None
