"""The platform side of the ledger: append, read, prove, cosign; members only.

:class:`LedgerService` hangs off :class:`PlatformService` as ``service.ledger``;
``commands.py`` reaches its methods as ``ledger.<method>`` so every front offers
them. Lifecycle entries (task created, joined, left, finished, failed) are
authored and signed by the platform itself, which enforces those transitions;
statements only a member can make (its update's hash, the global model's hash,
a maintenance record) are signed by that member's own key and checked here
against the key it registered, with ``seq`` and ``prev`` against the log head.
After every append the platform signs the new tree head (a checkpoint).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from werkbund.platform.errors import Conflict, InvalidInput, PermissionDenied
from werkbund.platform.ledger import entries as E
from werkbund.platform.ledger import merkle
from werkbund.platform.ledger.store import (IdentityKey, LedgerCheckpoint, LedgerCosignature,
                                            LedgerEntry, default_key_path, load_or_create_key)

log = logging.getLogger("werkbund.ledger")

PLATFORM_TYPES = frozenset({"task_created", "joined", "left", "task_finished", "task_failed"})
CREATOR_TYPES = frozenset({"round_started", "aggregate_published", "maintenance"})
PARTICIPANT_TYPES = frozenset({"update_submitted", "maintenance"})
MAX_CLOCK_SKEW = timedelta(minutes=10)
APPEND_RETRIES = 20


class LedgerService:
    def __init__(self, core, key_path=None):
        self.core = core
        path = key_path if key_path is not None else default_key_path(core.db.url)
        self.key = load_or_create_key(path)
        self.public_key = E.encode_public_key(self.key)
        # one writer at a time in this process (SQLite, and one shared connection in memory);
        # across processes the (task, seq) and (task, size) unique constraints decide
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------ identity keys
    def set_identity_key(self, caller: str, public_key: str) -> dict:
        """Register the caller's Ed25519 public key (once; rotation goes through the log)."""
        self.check_public_key(public_key)
        with self.core.db.session() as s:
            row = s.scalar(select(IdentityKey).where(IdentityKey.user == caller))
            if row is not None and row.public_key != public_key:
                raise Conflict(f"{caller} already has an identity key; rotate it with a key_rotated entry")
            if row is None:
                s.add(IdentityKey(user=caller, public_key=public_key))
        return {"user": caller, "public_key": public_key}

    @staticmethod
    def check_public_key(public_key) -> None:
        try:
            E.decode_public_key(public_key)
        except (E.EntryError, ValueError, TypeError):
            raise InvalidInput("public_key must be the base64 of a raw 32-byte Ed25519 key") from None

    def identity_key(self, caller: str, user: str) -> dict:
        with self.core.db.session() as s:
            key = self._key_of(s, user)
        return {"user": user, "public_key": key}

    @staticmethod
    def _key_of(s, user: str) -> str | None:
        return s.scalar(select(IdentityKey.public_key).where(IdentityKey.user == user))

    # ------------------------------------------------------------------ access
    def _member(self, s, caller: str, task: str):
        row = self.core._task(s, task)
        self.core._require_member_or_creator(row, caller, "read or write the ledger of")
        return row

    # ------------------------------------------------------------------ append
    def append(self, caller: str, task: str, entry: dict, signature: str) -> dict:
        """Append a member's signed entry; refuse a bad signature, seq, prev, author or type."""
        try:
            data = E.canonical_bytes(entry)
        except E.EntryError as exc:
            raise InvalidInput(f"malformed ledger entry: {exc}") from None
        if entry["task"] != task or entry["author"] != caller:
            raise PermissionDenied("an entry must name this task and be authored by you")
        when = datetime.fromisoformat(entry["timestamp"][:-1] + "+00:00")
        if abs(datetime.now(timezone.utc) - when) > MAX_CLOCK_SKEW:
            raise InvalidInput(f"entry timestamp {entry['timestamp']} is more than 10 minutes off")
        with self._write_lock, self.core.db.session() as s:
            row = self._member(s, caller, task)
            creator = row.creator.name == caller
            allowed = CREATOR_TYPES if creator else PARTICIPANT_TYPES
            if entry["type"] not in allowed:
                role = "the creator" if creator else "a participant"
                raise PermissionDenied(f"{role} may not author {entry['type']} entries")
            key = self._key_of(s, caller)
            if key is None:
                raise PermissionDenied(f"{caller} has no registered identity key")
            if not E.verify_entry_signature(entry, signature, key):
                raise PermissionDenied("the entry's signature does not verify with your registered key")
            self._check_head(s, task, entry)
            return self._insert(s, task, entry, E.encode_signature(E.decode_signature(signature)), data)

    def platform_append(self, task: str, type: str, payload: dict) -> dict:
        """Append an entry authored and signed by the platform (retrying a moved head)."""
        for _ in range(APPEND_RETRIES):
            try:
                with self._write_lock, self.core.db.session() as s:
                    size, prev = self._head(s, task)
                    entry = E.make_entry(task, type, E.PLATFORM_AUTHOR, size, prev, payload)
                    sig = E.encode_signature(E.sign_entry(entry, self.key))
                    return self._insert(s, task, entry, sig, E.canonical_bytes(entry))
            except Conflict:
                continue
        raise Conflict(f"the ledger of {task!r} is too busy; try again")

    def _head(self, s, task: str) -> tuple[int, str]:
        last = s.scalar(select(LedgerEntry).where(LedgerEntry.task == task)
                        .order_by(LedgerEntry.seq.desc()).limit(1))
        return (0, E.GENESIS_PREV) if last is None else (last.seq + 1, last.entry_hash)

    def _check_head(self, s, task: str, entry: dict) -> None:
        size, prev = self._head(s, task)
        if entry["seq"] != size or entry["prev"] != prev:
            raise Conflict(f"the ledger head moved: the next entry is {size} with prev {prev}")

    def _insert(self, s, task: str, entry: dict, sig: str, data: bytes) -> dict:
        leaf = merkle.leaf_hash(data)
        s.add(LedgerEntry(task=task, seq=entry["seq"], author=entry["author"], type=entry["type"],
                          entry=data.decode("utf-8"), signature=sig, leaf_hash=leaf.hex(),
                          entry_hash=hashlib.sha256(data).hexdigest()))
        try:
            s.flush()
        except IntegrityError:
            raise Conflict("the ledger head moved; fetch it and sign again") from None
        tree = self._tree(s, task)
        checkpoint = E.make_checkpoint(task, tree.size, tree.root())
        cp_sig = E.encode_signature(E.sign_checkpoint(checkpoint, self.key))
        s.add(LedgerCheckpoint(task=task, size=tree.size, checkpoint=E.checkpoint_bytes(checkpoint).decode(),
                               signature=cp_sig))
        try:
            s.flush()
        except IntegrityError:
            raise Conflict("the ledger head moved; fetch it and sign again") from None
        return {"seq": entry["seq"], "leaf_hash": leaf.hex(), "checkpoint": checkpoint,
                "checkpoint_signature": cp_sig}

    @staticmethod
    def _tree(s, task: str, size: int | None = None) -> merkle.MerkleTree:
        query = select(LedgerEntry.leaf_hash).where(LedgerEntry.task == task).order_by(LedgerEntry.seq)
        if size is not None:
            query = query.limit(size)
        return merkle.MerkleTree(bytes.fromhex(h) for h in s.scalars(query))

    # ------------------------------------------------------------------- reads
    def head(self, caller: str, task: str) -> dict:
        with self.core.db.session() as s:
            self._member(s, caller, task)
            size, prev = self._head(s, task)
        return {"task": task, "size": size, "prev": prev}

    def entries(self, caller: str, task: str, start: int = 0, end: int | None = None) -> list[dict]:
        with self.core.db.session() as s:
            self._member(s, caller, task)
            query = select(LedgerEntry).where(LedgerEntry.task == task, LedgerEntry.seq >= int(start))
            if end is not None:
                query = query.where(LedgerEntry.seq < int(end))
            rows = s.scalars(query.order_by(LedgerEntry.seq)).all()
            return [{"entry": _loads(r.entry), "signature": r.signature} for r in rows]

    def checkpoint(self, caller: str, task: str, size: int | None = None) -> dict:
        with self.core.db.session() as s:
            self._member(s, caller, task)
            query = select(LedgerCheckpoint).where(LedgerCheckpoint.task == task)
            query = (query.where(LedgerCheckpoint.size == size) if size is not None
                     else query.order_by(LedgerCheckpoint.size.desc()).limit(1))
            row = s.scalar(query)
            if row is None:
                raise InvalidInput(f"no checkpoint of size {size} for task {task!r}" if size
                                   else f"task {task!r} has no ledger entries yet")
            cosigs = s.scalars(select(LedgerCosignature).where(LedgerCosignature.task == task,
                                                               LedgerCosignature.size == row.size)).all()
            return {"checkpoint": _loads(row.checkpoint), "signature": row.signature,
                    "platform_key": self.public_key,
                    "cosignatures": {c.member: c.signature for c in cosigs}}

    def inclusion_proof(self, caller: str, task: str, seq: int, size: int | None = None) -> dict:
        with self.core.db.session() as s:
            self._member(s, caller, task)
            tree = self._tree(s, task)
        try:
            proof = tree.inclusion_proof(int(seq), size)
        except merkle.ProofError as exc:
            raise InvalidInput(f"no inclusion proof: {exc}") from None
        return {"seq": int(seq), "size": size if size is not None else tree.size,
                "leaf_hash": tree.leaf_hashes[int(seq)].hex(), "proof": [p.hex() for p in proof]}

    def consistency_proof(self, caller: str, task: str, old_size: int, new_size: int | None = None) -> dict:
        with self.core.db.session() as s:
            self._member(s, caller, task)
            tree = self._tree(s, task)
        try:
            proof = tree.consistency_proof(int(old_size), new_size)
        except merkle.ProofError as exc:
            raise InvalidInput(f"no consistency proof: {exc}") from None
        return {"old_size": int(old_size), "new_size": new_size if new_size is not None else tree.size,
                "proof": [p.hex() for p in proof]}

    def cosign(self, caller: str, task: str, size: int, signature: str) -> dict:
        """Store a member's cosignature of the checkpoint of ``size`` after checking it."""
        with self.core.db.session() as s:
            self._member(s, caller, task)
            row = s.scalar(select(LedgerCheckpoint).where(LedgerCheckpoint.task == task,
                                                          LedgerCheckpoint.size == size))
            key = self._key_of(s, caller)
            if row is None:
                raise InvalidInput(f"task {task!r} has no checkpoint of size {size}")
            if key is None or not E.verify_cosignature(_loads(row.checkpoint), signature, key):
                raise PermissionDenied("the cosignature does not verify with your registered key")
            if s.scalar(select(LedgerCosignature.id).where(
                    LedgerCosignature.task == task, LedgerCosignature.size == size,
                    LedgerCosignature.member == caller)) is None:
                s.add(LedgerCosignature(task=task, size=size, member=caller, signature=signature))
        return {"task": task, "size": size, "member": caller}

    def keys(self, caller: str, task: str) -> dict:
        """Public keys of every author in the log, and the platform's."""
        with self.core.db.session() as s:
            self._member(s, caller, task)
            authors = set(s.scalars(select(LedgerEntry.author).where(LedgerEntry.task == task)))
            keys = {u: k for u, k in s.execute(select(IdentityKey.user, IdentityKey.public_key)
                                                .where(IdentityKey.user.in_(authors)))}
        keys[E.PLATFORM_AUTHOR] = self.public_key
        return {"platform_key": self.public_key, "keys": keys}

    def bundle(self, caller: str, task: str) -> dict:
        """Everything needed to verify the log offline."""
        return {"task": task, "entries": self.entries(caller, task), **self.keys(caller, task),
                "latest": self.checkpoint(caller, task)}

    def drop(self, task: str) -> None:
        """Forget a deleted task's log (its name may be reused)."""
        with self.core.db.session() as s:
            for table in (LedgerEntry, LedgerCheckpoint, LedgerCosignature):
                s.execute(delete(table).where(table.task == task))


def _loads(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"unreadable": text[:200]}
