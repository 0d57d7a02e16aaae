"""Database engine and session factory for the platform core (SQLAlchemy 2.x)."""
from __future__ import annotations

import hashlib
import os
import threading
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from werkbund.platform import schema
from werkbund.platform.errors import InvalidInput, Unavailable


# (database, session) of a unit of work that the calls inside it join instead of opening their own:
# a control command and the record of its reply commit together (request_replies.py)
SHARED_SESSION: ContextVar = ContextVar("werkbund_shared_session", default=None)


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve()}"


class Database:
    """One engine and session factory; creates the schema on first use.

    An existing database must be at this code's schema revision (``schema.prepare``); an older one
    is refused with the line that says to run ``werkbund platform upgrade``, or brought up to date
    first with ``upgrade=True``."""

    def __init__(self, url: str, upgrade: bool = False):
        self.url = url
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise InvalidInput(f"{url!r} is not a database URL; use sqlite:///PATH or "
                               "postgresql+psycopg://USER@HOST/DATABASE") from None
        kwargs: dict = {"future": True}
        # an in-memory SQLite database is one connection shared by every thread: units of work on it
        # must take turns, or one thread's commit lands in the middle of another's transaction
        self._serial = nullcontext()
        if parsed.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if parsed.database in (None, "", ":memory:"):
                kwargs["poolclass"] = StaticPool
                self._serial = threading.RLock()
            else:
                _private_file(Path(parsed.database))
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = create_engine(url, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:  # a new database is made at the newest schema; an older one is refused or upgraded
            with advisory_lock(self.engine, SCHEMA_LOCK):
                self.schema_action = schema.prepare(self.engine, upgrade=upgrade)
        except OperationalError as exc:
            shown = parsed.render_as_string(hide_password=True)
            reason = str(exc.orig).strip().splitlines()[-1] if exc.orig else str(exc)
            raise Unavailable(f"cannot open the database {shown}: {reason} (for PostgreSQL, create the database "
                              "and role first: see docs/cloud-platform.md)") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self):
        """A unit of work: committed when the block ends, rolled back on an exception (inside a
        ``SHARED_SESSION`` of this database: that one, committed or rolled back by its opener)."""
        shared = SHARED_SESSION.get()
        if shared is not None and shared[0] is self:
            yield shared[1]
            return
        with self._serial, self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def reading(self):
        """A connection for Core read statements (``select`` of columns): no ORM session is set up, a third
        of the cost, for the checks every request makes (its session, its route). Inside a ``SHARED_SESSION``
        of this database, that session, which sees the unit of work's own writes."""
        shared = SHARED_SESSION.get()
        if shared is not None and shared[0] is self:
            yield shared[1]
            return
        with self._serial, self.engine.connect() as connection:
            yield connection

    @contextmanager
    def sharing(self, session):
        """Within the block every ``session()`` of this database is ``session`` (one transaction, its
        opener's to commit), unless one is shared already."""
        if SHARED_SESSION.get() is not None:
            yield
            return
        token = SHARED_SESSION.set((self, session))
        try:
            yield
        finally:
            SHARED_SESSION.reset(token)

    def dispose(self) -> None:
        self.engine.dispose()


def lock_key(*parts: str) -> int:
    """The PostgreSQL advisory lock (a signed 64-bit number) named by ``parts``."""
    digest = hashlib.sha256("\0".join(("werkbund", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# the lock one platform process at a time holds while it makes or upgrades the schema
SCHEMA_LOCK = lock_key("schema")


@contextmanager
def advisory_lock(engine, key: int):
    """One holder of ``key`` at a time among the processes on this PostgreSQL database (replicas of the
    platform: the second to make the schema finds it made, instead of failing on a half-made one). A
    session-level advisory lock on a connection of its own, so it spans the caller's transactions; the
    end of a killed process's connection frees it. Nothing on SQLite, which has one writer at a time."""
    if engine.dialect.name != "postgresql":
        yield
        return
    from sqlalchemy import text

    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


def _private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only (password hashes, tokens, messages): SQLite
    gives its -wal and -shm files the database file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
