"""SQLAlchemy tables of the platform: users, sessions, tasks, memberships, rounds, models.

The schema is versioned (``schema.py``, ``migrations/``): a change here needs a new revision under
``migrations/versions/``; ``tests/e2e/test_migrations.py`` compares the two."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    org: Mapped[str] = mapped_column(String(128))
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SessionToken(Base):
    __tablename__ = "session_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)  # expired ones are deleted at each login

    user: Mapped[User] = relationship()


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    creator_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    definition: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="CREATED", index=True)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    # loaded with the task: nearly every use of a task checks who created it (one query, not two)
    creator: Mapped[User] = relationship(lazy="joined", innerjoin=True)
    memberships: Mapped[list["Membership"]] = relationship(
        back_populates="task", cascade="all, delete-orphan", order_by="Membership.id"
    )
    rounds: Mapped[list["RoundRecord"]] = relationship(
        cascade="all, delete-orphan", order_by="RoundRecord.number"
    )


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("task_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    joined_at: Mapped[datetime] = mapped_column(default=utcnow)
    schema: Mapped[dict | None] = mapped_column(JSON, default=None)

    task: Mapped[Task] = relationship(back_populates="memberships")
    # loaded with the membership: a broadcast reads every member's name (one query, not one per member)
    user: Mapped[User] = relationship(lazy="joined", innerjoin=True)


class RoundRecord(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("task_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    reported: Mapped[list] = mapped_column(JSON, default=list)
    rejected: Mapped[dict] = mapped_column(JSON, default=dict)
    missing: Mapped[list] = mapped_column(JSON, default=list)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StoredModel(Base):
    __tablename__ = "stored_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))  # the model's bytes: the file <model dir>/<sha256>
    size: Mapped[int] = mapped_column(BigInteger)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    # only rows from before revision 0004 hold the bytes here; the service moves them to files at start
    data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, default=None, deferred=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RequestReply(Base):
    """The reply to a state-changing control command, kept so that a retry with the same request id
    (the client's ``X-Werkbund-Request-Id``, the AMQP ``message_id``) answers it again instead of
    running the command twice; written in the command's own transaction (``request_replies.py``),
    pruned after a day."""

    __tablename__ = "request_replies"
    __table_args__ = (UniqueConstraint("user_name", "request_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64))
    command: Mapped[str] = mapped_column(String(64))
    reply: Mapped[dict] = mapped_column(JSON)  # {"data": ...}: successes only (a failure changed nothing)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
