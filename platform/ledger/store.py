"""SQLAlchemy tables of the ledger, and the platform's checkpoint-signing key.

Separate tables (not columns on ``users``/``tasks``) so the ledger survives
schema work elsewhere: ``ledger_entries`` (task, seq, canonical entry JSON,
author's signature, leaf hash), ``ledger_checkpoints`` (every signed tree head),
``ledger_cosignatures`` (members' signatures over a checkpoint) and
``identity_keys`` (each user's Ed25519 public key in force, base64 of the raw 32 bytes;
none after a revocation) and ``identity_key_events`` (the history of those keys).
The tables join the platform's metadata, so ``Database`` creates them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Mapped, mapped_column

from werkbund.platform.tables import Base, utcnow

log = logging.getLogger("werkbund.ledger")

KEY_ENV = "WERKBUND_LEDGER_KEY"


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    # (task, signature): an append looks for its statement sent before (a retry whose answer was lost)
    # without reading the task's whole log (revision 0005)
    __table_args__ = (UniqueConstraint("task", "seq"), Index("ix_ledger_entries_task_signature", "task", "signature"))

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    author: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    entry: Mapped[str] = mapped_column(Text)        # RFC 8785 canonical JSON
    signature: Mapped[str] = mapped_column(String(88))  # base64 Ed25519
    leaf_hash: Mapped[str] = mapped_column(String(64))  # hex
    entry_hash: Mapped[str] = mapped_column(String(64))  # hex sha256 (the next prev)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerCheckpoint(Base):
    __tablename__ = "ledger_checkpoints"
    __table_args__ = (UniqueConstraint("task", "size"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(Integer)
    checkpoint: Mapped[str] = mapped_column(Text)   # canonical JSON
    signature: Mapped[str] = mapped_column(String(88))


class LedgerCosignature(Base):
    __tablename__ = "ledger_cosignatures"
    __table_args__ = (UniqueConstraint("task", "size", "member"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(Integer)
    member: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(88))


class IdentityKey(Base):
    __tablename__ = "identity_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    public_key: Mapped[str] = mapped_column(String(44))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdentityKeyEvent(Base):
    """Each user's key history: registered, rotated (to ``public_key``) or revoked."""
    __tablename__ = "identity_key_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[str] = mapped_column(String(44))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- the platform's signing key -----------------------------------------------------


def loads_stored(text: str):
    """A stored entry or checkpoint (JSON text) as an object; text that does not parse says so."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"unreadable": text[:200]}


def default_key_path(db_url: str) -> Path | None:
    """Where the platform keeps its ledger key: $WERKBUND_LEDGER_KEY, beside a SQLite file,
    or (other databases) under WERKBUND_HOME named after the database URL; None for an
    in-memory database (an ephemeral key, as ephemeral as the data)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            return None
        return Path(url.database).expanduser().with_name(Path(url.database).name + ".ledger-key.pem")
    home = Path(os.environ.get("WERKBUND_HOME", "~/.werkbund")).expanduser()
    tag = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return home / "platform" / f"ledger-key-{tag}.pem"


def load_or_create_key(path: Path | None) -> Ed25519PrivateKey:
    """The platform key at ``path`` (made at first start, mode 0600); ephemeral when None."""
    if path is None:
        return Ed25519PrivateKey.generate()
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        # written whole to a private temporary file, then linked into place: a replica that starts
        # at the same moment either finds no key or a whole one, never a half-written file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
        except FileExistsError:  # another process made it first: use that one
            return load_or_create_key(path)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("made the platform's ledger key %s", path)
        return key
    mode = path.stat().st_mode & 0o077
    if os.name == "posix" and mode:
        raise PermissionError(f"{path} is readable by group or others; run: chmod 600 {path}")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 key")
    return key
