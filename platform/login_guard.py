"""Password guessing, slowed down: failed logins are counted per account and per address, and logged.

After ``ACCOUNT_FREE_FAILURES`` failed logins of one account within ``WINDOW`` (or
``ADDRESS_FREE_FAILURES`` from one address), every further attempt must wait: 1 s after the next
failure, then 2, 4, ... up to ``MAX_DELAY``. An attempt that comes too early is refused at once,
without a password check, so a guesser gets a handful of tries per hour instead of hundreds per
second, and the owner of the account (with the right password) gets in once the delay has passed.
A success clears the account's count.

Checking a password costs argon2id's 64 MiB: at most ``CONCURRENT_CHECKS`` run at once, and a login
that cannot start one within ``QUEUE_SECONDS`` is answered "busy" (Unavailable), so a flood of
logins bounds memory and queues instead of exhausting the server.

The front that knows the caller's address (the HTTP front) sets ``CLIENT_ADDRESS`` for the request.
"""
from __future__ import annotations

import contextvars
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from werkbund.platform.errors import AuthenticationFailed, Unavailable

log = logging.getLogger("werkbund.platform.logins")

CLIENT_ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar("werkbund_client_address", default=None)

WINDOW = 15 * 60.0
ACCOUNT_FREE_FAILURES = 5
ADDRESS_FREE_FAILURES = 20
MAX_DELAY = 15 * 60.0
CONCURRENT_CHECKS = 2
QUEUE_SECONDS = 10.0
MAX_TRACKED = 100_000  # keys remembered at most (the oldest are forgotten first)


@dataclass
class _Failures:
    count: int = 0
    first: float = 0.0
    not_before: float = 0.0


class LoginGuard:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], _Failures] = {}
        self._checks = threading.BoundedSemaphore(CONCURRENT_CHECKS)

    def _keys(self, user, address) -> list[tuple[str, str, int]]:
        keys = [("user", str(user), ACCOUNT_FREE_FAILURES)]
        if address:
            keys.append(("address", str(address), ADDRESS_FREE_FAILURES))
        return keys

    def before(self, user) -> None:
        """Refuse an attempt that comes before its delay has passed."""
        now, address = self._clock(), CLIENT_ADDRESS.get()
        with self._lock:
            for kind, key, _ in self._keys(user, address):
                entry = self._failures.get((kind, key))
                if entry is not None and now < entry.not_before:
                    wait = int(entry.not_before - now) + 1
                    log.warning("login of %r from %s refused: %d failed logins for this %s; next try in %d s",
                                user, address or "an unknown address", entry.count, "account" if kind == "user"
                                else "address", wait)
                    raise AuthenticationFailed(f"too many failed logins; try again in {wait} s")

    def failed(self, user) -> None:
        now, address = self._clock(), CLIENT_ADDRESS.get()
        log.warning("failed login for %r from %s", user, address or "an unknown address")
        with self._lock:
            if len(self._failures) >= MAX_TRACKED:
                oldest = min(self._failures, key=lambda k: self._failures[k].first)
                del self._failures[oldest]
            for kind, key, free in self._keys(user, address):
                entry = self._failures.get((kind, key))
                if entry is None or now - entry.first > WINDOW and now >= entry.not_before:
                    entry = self._failures[(kind, key)] = _Failures(first=now)
                entry.count += 1
                if entry.count > free:
                    entry.not_before = now + min(MAX_DELAY, 2.0 ** (entry.count - free - 1))

    def succeeded(self, user) -> None:
        with self._lock:
            self._failures.pop(("user", str(user)), None)

    @contextmanager
    def checking(self):
        """Room for one password check (argon2's memory), or Unavailable when the server is flooded."""
        if not self._checks.acquire(timeout=QUEUE_SECONDS):
            raise Unavailable("the platform is busy checking logins; try again in a moment")
        try:
            yield
        finally:
            self._checks.release()
