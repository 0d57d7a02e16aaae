"""The accounts part of the platform core: registration, passwords, login sessions.

A mixin of :class:`~werkbund.platform.service.PlatformService` (it uses the core's ``db`` and
``logins``, the login guard).
"""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError

from werkbund.platform import access, passwords
from werkbund.platform.definition import check_name, check_organisation
from werkbund.platform.errors import AuthenticationFailed, InvalidInput, UserExists
from werkbund.platform.tables import SessionToken, User, utcnow

log = logging.getLogger("werkbund.platform")

SESSION_LIFETIME = timedelta(hours=12)
# built once (its cache key too): every request of every user is authenticated with it
_SESSION_USER = (select(User.name, SessionToken.expires_at).join(SessionToken.user)
                 .where(SessionToken.token_sha256 == bindparam("digest")))


class Accounts:
    """Users: register, check a password, log in and out, authenticate a session token."""

    def register(self, user: str, password: str, org: str) -> dict:
        check_name("user", user)
        if not isinstance(password, str) or len(password) < passwords.MIN_PASSWORD_LENGTH:
            raise InvalidInput(f"the password must have at least {passwords.MIN_PASSWORD_LENGTH} characters")
        check_organisation(org)
        digest = passwords.hash_password(password)
        try:
            with self.db.session() as s:
                if s.scalar(select(User.id).where(User.name == user)) is not None:
                    raise UserExists(f"user {user!r} already exists")
                s.add(User(name=user, org=org.strip(), password_hash=digest))
        except IntegrityError:
            raise UserExists(f"user {user!r} already exists") from None
        log.info("registered user %s (%s)", user, org)
        return {"user": user, "org": org.strip()}

    def check_credentials(self, user: str, password: str) -> str:
        """Return the user's name when the password is right; raise AuthenticationFailed otherwise.
        Failed attempts are logged and slowed down per account and address (``login_guard.py``)."""
        self.logins.before(user)
        with self.db.session() as s:
            row = s.scalar(select(User).where(User.name == user)) if isinstance(user, str) else None
        with self.logins.checking():
            right = passwords.check_password(row.password_hash if row else None, password or "")
        if not right:
            self.logins.failed(user)
            raise AuthenticationFailed("wrong user name or password")
        self.logins.succeeded(user)
        return row.name

    def login(self, user: str, password: str) -> dict:
        name = self.check_credentials(user, password)
        token = passwords.new_token()
        expires = utcnow() + SESSION_LIFETIME
        with self.db.session() as s:
            row = s.scalar(select(User).where(User.name == name))
            s.execute(delete(SessionToken).where(SessionToken.expires_at < utcnow()))  # anyone's, expired
            s.add(SessionToken(token_sha256=passwords.token_digest(token), user_id=row.id, expires_at=expires))
        return {"user": name, "org": row.org, "token": token, "expires_at": access.iso(expires)}

    def authenticate(self, token: str, scope: str | None = None) -> str:
        """Return the user a session token belongs to (``scope``: a token issued for that use only,
        e.g. ``blob:<task>`` for the blob store's transfer token)."""
        if not token or not isinstance(token, str):
            raise AuthenticationFailed("not logged in: no session token")
        with self.db.reading() as c:  # every request comes here: one query, the user's name with the token
            row = c.execute(_SESSION_USER, {"digest": passwords.token_digest(token, scope)}).first()
            if row is None or row.expires_at < utcnow():
                raise AuthenticationFailed("the session has expired or is unknown; log in again")
            return row.name

    def logout(self, caller: str, token: str) -> dict:
        """Revoke the session token (the front passes the one the caller authenticated with)."""
        with self.db.session() as s:
            row = s.scalar(select(SessionToken).where(SessionToken.token_sha256 == passwords.token_digest(token)))
            if row is not None:
                s.delete(row)
        return {"user": caller}

    def whoami(self, caller: str) -> dict:
        with self.db.session() as s:
            row = access.user_row(s, caller)
            return {"user": row.name, "org": row.org, "created_at": access.iso(row.created_at)}
