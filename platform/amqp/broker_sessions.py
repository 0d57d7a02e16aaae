"""Broker accounts per login session, so that the broker never holds (or checks) a user's password.

``login`` comes in through the public registration account: the core checks the password (argon2,
with the login guard that throttles guessing per account) and issues a session token with its
expiry; the platform then opens broker account ``<user>~<session id>@<vhost>`` whose password is
that token (a random 256-bit secret) and writes the user's permissions on it. The session id is the
start of the sha256 the platform keeps of the token, so the platform finds the session of an
account without knowing its secret. The client keeps the token, never the password, and connects
and reconnects with it.

A client in use renews its session (``renew_session``, about hourly): another 12 hours, up to
``MAX_SESSION_AGE`` after the login, so a task that runs for days keeps its connections.
An account lives as long as its session: ``logout`` revokes the session and deletes the account
(the broker closes its connections), and a sweep (at platform start, at every login and every few
minutes) deletes the accounts of expired or revoked sessions, and every account of the old form
``<user>@<vhost>``, which carried the user's password. Control requests from an account whose
session is gone are refused even before the sweep.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, select

from werkbund.platform.amqp import names
from werkbund.platform.amqp.broker_admin import TAG, BrokerAdmin
from werkbund.platform.commands import dispatch_public
from werkbund.platform.errors import AuthenticationFailed
from werkbund.platform.tables import SessionToken, User, utcnow
from werkbund.platform.accounts import SESSION_LIFETIME
from werkbund.platform.service import PlatformService

log = logging.getLogger("werkbund.platform.broker")
MAX_SESSION_AGE = timedelta(days=7)  # renewals end here: then the user logs in again


class BrokerSessions:
    def __init__(self, service: PlatformService, admin: BrokerAdmin, own_account: str | None = None):
        self.service, self.admin = service, admin
        self.own_account = own_account  # the platform's own broker account: never touched

    def login(self, params) -> tuple[dict, str]:
        """Check the password (login guard included), issue a session and its broker account.
        Returns the reply and the account (the caller writes its permissions)."""
        data = dispatch_public(self.service, "login", params)
        sid = names.session_id(data["token"])
        account = names.session_account(data["user"], sid, self.admin.vhost)
        self.admin.add_session_account(account, data["token"])
        log.info("login of %s: broker session account %s until %s", data["user"], account, data["expires_at"])
        return {**data, "account": names.session_name(data["user"], sid)}, account

    def check(self, user: str, sid: str) -> None:
        """Refuse a request from the account of an expired or revoked session."""
        with self.service.db.session() as s:
            found = s.scalar(select(SessionToken.id).join(User, SessionToken.user_id == User.id).where(
                User.name == user, SessionToken.token_sha256.startswith(sid, autoescape=True),
                SessionToken.expires_at >= utcnow()).limit(1))
        if found is None:
            raise AuthenticationFailed("this session has expired or was logged out; log in again")

    def renew(self, user: str, sid: str) -> dict:
        """Another ``SESSION_LIFETIME`` for a live session, up to ``MAX_SESSION_AGE`` after its login."""
        now = utcnow()
        with self.service.db.session() as s:
            rows = s.scalars(select(SessionToken).join(User, SessionToken.user_id == User.id).where(
                User.name == user, SessionToken.token_sha256.startswith(sid, autoescape=True),
                SessionToken.expires_at >= now)).all()
            if not rows:
                raise AuthenticationFailed("this session has expired or was logged out; log in again")
            for row in rows:
                row.expires_at = max(row.expires_at, min(now + SESSION_LIFETIME, row.created_at + MAX_SESSION_AGE))
            expires = max(row.expires_at for row in rows)
        return {"user": user, "expires_at": expires.isoformat(timespec="seconds") + "Z"}

    def revoke(self, user: str, sid: str) -> None:
        """End the session in the database (its account is deleted by the caller, after the reply)."""
        with self.service.db.session() as s:
            ids = select(User.id).where(User.name == user).scalar_subquery()
            s.execute(delete(SessionToken).where(SessionToken.user_id == ids,
                                                 SessionToken.token_sha256.startswith(sid, autoescape=True)))
        log.info("logout of %s: session %s revoked", user, sid)

    def _live(self) -> set[tuple[str, str]]:
        with self.service.db.session() as s:
            rows = s.execute(select(User.name, SessionToken.token_sha256).join(
                User, SessionToken.user_id == User.id).where(SessionToken.expires_at >= utcnow()))
            return {(name, digest[:names.SESSION_ID_LENGTH]) for name, digest in rows}

    def sweep(self) -> list[str]:
        """Delete the broker accounts of sessions that expired or were revoked, and the accounts of
        the old form that carried a user's password. Returns the users whose session accounts remain.

        The accounts are listed before the live sessions are read: a login commits its session before
        it makes the account, so an account listed here has its session in ``live`` if it is live, also
        when the login ran meanwhile in another thread or another replica of the platform."""
        accounts = self.admin.accounts()
        live, remaining = self._live(), set()
        for account in accounts:
            name, parsed = account["name"], names.parse_account(account["name"], self.admin.vhost)
            if name == self.own_account or TAG not in account["tags"] or parsed is None:
                continue
            user, sid = parsed
            if sid is None and user == names.REGISTRATION_NAME:
                continue
            if sid is not None and (user, sid) in live:
                remaining.add(user)
                continue
            self.admin.delete_broker_user(name)
            if sid is None:
                log.warning("deleted broker account %s: it took the user's password; clients now log in "
                            "for a session account of their own", name)
            else:
                log.info("deleted broker account %s: its session expired or was revoked", name)
        return sorted(remaining)
