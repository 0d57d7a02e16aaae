"""Browser sessions, kept on the server: a random id in an HttpOnly, SameSite=Strict cookie.

One dashboard process may serve several people at once, each logged in as their own werkbund
user. The cookie holds only a random id (32 bytes from :mod:`secrets`); everything else (the
logged-in :class:`werkbund.Session`, the CSRF token, the last ledger reports) stays in this
process's memory and is forgotten after ``idle_seconds`` without a request, at logout, or when the
dashboard stops. A new id is issued at login and logout, so an id seen before login is worthless
after it (no session fixation).
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("werkbund.dashboard")

DEFAULT_IDLE_SECONDS = 8 * 3600


@dataclass
class BrowserSession:
    """What the dashboard keeps for one browser: its CSRF token and, once logged in, the werkbund session."""

    id: str
    csrf_token: str
    werkbund: Any = None  # a werkbund.Session once logged in
    last_seen: float = field(default_factory=time.monotonic)
    ledger_reports: dict = field(default_factory=dict)  # task -> the last verification shown
    flash: list = field(default_factory=list)  # (kind, text) shown once on the next page

    @property
    def user(self) -> str | None:
        return self.werkbund.name if self.werkbund is not None else None

    def check_csrf(self, token: str | None) -> bool:
        return bool(token) and secrets.compare_digest(token.encode(), self.csrf_token.encode())

    def say(self, text: str, kind: str = "info") -> None:
        self.flash.append((kind, text))

    def take_flash(self) -> list:
        messages, self.flash = self.flash, []
        return messages


class SessionStore:
    """The browser sessions of one dashboard, by id; thread-safe, with an idle timeout."""

    def __init__(self, idle_seconds: float = DEFAULT_IDLE_SECONDS, on_drop=None):
        self.idle_seconds = idle_seconds
        self.on_drop = on_drop  # called with a dropped session's werkbund.Session (to close it)
        self._sessions: dict[str, BrowserSession] = {}
        self._lock = threading.Lock()

    def new(self) -> BrowserSession:
        session = BrowserSession(id=secrets.token_urlsafe(32), csrf_token=secrets.token_urlsafe(32))
        with self._lock:
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> BrowserSession | None:
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            expired = [self._sessions.pop(k) for k, s in list(self._sessions.items())
                       if now - s.last_seen > self.idle_seconds]
            session = self._sessions.get(session_id)
            if session is not None:
                session.last_seen = now
        for old in expired:
            self._drop(old)
        return session

    def renew(self, old: BrowserSession) -> BrowserSession:
        """A fresh id and CSRF token for the same browser (at login and logout); the old id is dropped."""
        with self._lock:
            self._sessions.pop(old.id, None)
            fresh = BrowserSession(id=secrets.token_urlsafe(32), csrf_token=secrets.token_urlsafe(32),
                                   werkbund=old.werkbund, ledger_reports=old.ledger_reports, flash=old.flash)
            self._sessions[fresh.id] = fresh
        return fresh

    def sessions_of(self, werkbund_session) -> int:
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.werkbund is werkbund_session)

    def close_all(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            self._drop(session)

    def _drop(self, session: BrowserSession) -> None:
        werkbund, session.werkbund = session.werkbund, None
        if werkbund is not None and self.on_drop is not None:
            self.on_drop(werkbund)


def close_quietly(werkbund_session) -> None:
    try:
        werkbund_session.close()
    except Exception as exc:  # a connection that is already gone
        log.debug("closing %s: %s", werkbund_session, exc)
