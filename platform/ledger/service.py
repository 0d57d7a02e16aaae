"""The platform side of the ledger: append, read, prove, cosign; members only.

:class:`LedgerService` hangs off :class:`PlatformService` as ``service.ledger``;
``commands.py`` reaches its methods as ``ledger.<method>`` so every front offers
them. Lifecycle entries (task created, joined, left, finished, failed) are
authored and signed by the platform itself, which enforces those transitions;
statements only a member can make (its update's hash, the global model's hash,
a maintenance record) are signed by that member's own key and checked here
against the key it registered. A v2 statement (``entries.make_statement``) is
sequenced here: the platform gives it ``seq`` and ``prev`` at the head and answers
with a signed promise, so members appending at once never conflict; a v1 entry
(signed with its ``seq`` and ``prev``) must name the head.

Tree heads are signed lazily (batch integration): not per append but when a
checkpoint is asked for and the log grew since the last one, so the entries of a
round go into one signed tree head; a promise binds the platform meanwhile. One
``ledger_audit`` request gives a member the latest checkpoint, the inclusion proofs of
its new entries and the consistency proof from the checkpoint it saw last, and takes
its cosignature of that earlier checkpoint.

A lifecycle entry is written in the same transaction as the state change it records
(:meth:`LedgerService.writing` and :meth:`LedgerService.platform_append_in`), so neither
can exist without the other. Key registration, rotation and revocation are entries too
(:mod:`.key_service`). Tree heads and proofs come from the cached trees of
:mod:`.tree_cache` instead of re-hashing the whole log each time.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from werkbund.platform import access
from werkbund.platform.errors import (Conflict, InvalidInput, InvalidState, LedgerHeadMoved, PermissionDenied,
                                      TaskNotFound)
from werkbund.ledger import entries as E
from werkbund.ledger import merkle
from werkbund.platform.ledger.key_service import IdentityKeys
from werkbund.platform.ledger.relay import StatementRelay
from werkbund.platform.ledger.store import (IdentityKey, IdentityKeyEvent, LedgerCheckpoint,
                                            LedgerCosignature, LedgerEntry, default_key_path,
                                            load_or_create_key, loads_stored as _loads)
from werkbund.platform.ledger.tree_cache import TreeCache
from werkbund.platform.tables import Membership, Task, User

log = logging.getLogger("werkbund.ledger")

PLATFORM_TYPES = frozenset({"task_created", "joined", "left", "task_finished", "task_failed"})
CREATOR_TYPES = frozenset({"round_started", "sum_committed", "aggregate_published", "maintenance"})
PARTICIPANT_TYPES = frozenset({"update_submitted", "maintenance"})
MAX_CLOCK_SKEW = timedelta(minutes=10)
APPEND_RETRIES = 20


class LedgerService(IdentityKeys, StatementRelay):
    CREATOR_TYPES, PARTICIPANT_TYPES = CREATOR_TYPES, PARTICIPANT_TYPES  # (for the relay)

    def __init__(self, core, key_path=None):
        self.core = core
        path = key_path if key_path is not None else default_key_path(core.db.url)
        self.key = load_or_create_key(path)
        self.public_key = E.encode_public_key(self.key)
        # one writer at a time in this process (SQLite, and one shared connection in memory);
        # across processes the (task, seq) and (task, size) unique constraints decide; re-entrant: a
        # control command runs inside one writing() with the record of its reply (request_replies.py)
        self._write_lock = threading.RLock()
        self.trees = TreeCache()  # the task trees, so proofs and heads are not recomputed

    @contextmanager
    def writing(self):
        """One transaction that writes to the ledger (and, for a lifecycle change, the state it
        records): this process's ledger writer lock first, then the database session, so that
        the state change and its entry commit or roll back together."""
        with self._write_lock, self.core.db.session() as s:
            yield s

    # ------------------------------------------------------------------ access
    def _member(self, s, caller: str, task: str, lock: bool = False):
        row = access.task_row(s, task, lock=lock)
        access.require_member_or_creator(row, caller, "read or write the ledger of")
        return row

    @staticmethod
    def _reader(s, caller: str, task: str) -> None:
        """The rule of :meth:`_member` in two small queries (reads are frequent: every proof)."""
        if not isinstance(task, str):
            raise InvalidInput("a task name must be a string")
        creator = s.scalar(select(User.name).join(Task, Task.creator_id == User.id).where(Task.name == task))
        if creator is None:
            raise TaskNotFound(f"unknown task {task!r}")
        if creator != caller and s.scalar(
                select(Membership.id).join(Task, Membership.task_id == Task.id)
                .join(User, Membership.user_id == User.id)
                .where(Task.name == task, User.name == caller)) is None:
            raise PermissionDenied(f"only the creator and participants of task {task!r} may read "
                                   "or write the ledger of it")

    # ------------------------------------------------------------------ append
    def append(self, caller: str, task: str, entry: dict | None = None, signature: str = "",
               statement: dict | None = None) -> dict:
        """Append a member's signed ``statement`` (v2: the log sequences it and promises where it
        is) or ``entry`` (v1: it must name the head); refuse a bad signature, author or type."""
        if (entry is None) == (statement is None):
            raise InvalidInput("ledger_append takes a statement (or an entry of the old format), one of them")
        if statement is not None:
            return self._append_statement(caller, task, statement, signature)
        try:
            data = E.canonical_bytes(entry)
        except E.EntryError as exc:
            raise InvalidInput(f"malformed ledger entry: {exc}") from None
        if E.is_v2(entry):
            raise InvalidInput("a v2 entry is sequenced by the log: send its statement (without seq and prev)")
        self._check_author(entry, caller, task)
        with self.writing() as s:
            key = self._author_key(s, caller, task, entry["type"])
            if not E.verify_entry_signature(entry, signature, key):
                raise PermissionDenied("the entry's signature does not verify with your registered key")
            self._check_head(s, task, entry)
            return self._insert(s, task, entry, E.encode_signature(E.decode_signature(signature)), data)

    def _append_statement(self, caller: str, task: str, statement: dict, signature: str) -> dict:
        """Sequence a signed statement at the head. Every append locks the task row first, so
        appends to one log take turns, in this process and in the others on the same PostgreSQL;
        the head read under that lock is the head, and no member ever signs again or retries (on
        SQLite, one writer at a time: this process's lock). The same statement sent again (a retry
        whose answer was lost) gets the promise of where it already is, not a second entry."""
        try:
            E.validate_statement(statement)
        except E.EntryError as exc:
            raise InvalidInput(f"malformed ledger statement: {exc}") from None
        self._check_author(statement, caller, task)
        try:
            signature = E.encode_signature(E.decode_signature(signature))
        except E.EntryError as exc:
            raise InvalidInput(str(exc)) from None
        with self.writing() as s:
            key = self._author_key(s, caller, task, statement["type"])
            if not E.verify_statement_signature(statement, signature, key):
                raise PermissionDenied("the statement's signature does not verify with your registered key")
            done = s.scalar(select(LedgerEntry).where(LedgerEntry.task == task, LedgerEntry.author == caller,
                                                      LedgerEntry.signature == signature))
            if done is not None and E.statement_of(_loads(done.entry)) == statement:
                return self._promise(task, _loads(done.entry), done.leaf_hash)
            entry, data = E.sequenced(statement, *self._head(s, task))
            result = self._insert(s, task, entry, signature, data)
            return self._promise(task, entry, result["leaf_hash"])

    def _promise(self, task: str, entry: dict, leaf_hash: str) -> dict:
        promise = E.make_promise(task, entry["seq"], leaf_hash)
        return {"seq": entry["seq"], "leaf_hash": leaf_hash, "entry": entry, "promise": promise,
                "promise_signature": E.encode_signature(E.sign_promise(promise, self.key)),
                "platform_key": self.public_key}

    @classmethod
    def _check_author(cls, entry: dict, caller: str, task: str) -> None:
        if entry["task"] != task or entry["author"] != caller:
            raise PermissionDenied("an entry must name this task and be authored by you")
        cls._check_clock(entry)

    def _author_key(self, s, caller: str, task: str, type: str) -> str:
        """The caller's registered key, once the caller may author a ``type`` entry on ``task``
        (the task row is locked for the append)."""
        row = self._member(s, caller, task, lock=True)
        creator = row.creator.name == caller
        allowed = CREATOR_TYPES if creator else PARTICIPANT_TYPES
        if type not in allowed:
            role = "the creator" if creator else "a participant"
            raise PermissionDenied(f"{role} may not author {type} entries")
        key = self.key_of(s, caller)
        if key is None:
            revoked = s.scalar(select(IdentityKeyEvent.id).where(IdentityKeyEvent.user == caller,
                                                                 IdentityKeyEvent.kind == "revoked"))
            raise PermissionDenied(f"{caller}'s identity key was revoked; register a new one" if revoked
                                   else f"{caller} has no registered identity key")
        return key

    @staticmethod
    def _check_clock(entry: dict) -> None:
        when = datetime.fromisoformat(entry["timestamp"][:-1] + "+00:00")
        if abs(datetime.now(timezone.utc) - when) > MAX_CLOCK_SKEW:
            raise InvalidInput(f"entry timestamp {entry['timestamp']} is more than 10 minutes off")

    def platform_append(self, task: str, type: str, payload: dict) -> dict:
        """Append an entry authored and signed by the platform, on its own (retrying a moved head).
        A state change appends its entry with :meth:`platform_append_in` in its own transaction."""
        for _ in range(APPEND_RETRIES):
            try:
                with self.writing() as s:
                    return self.platform_append_in(s, task, type, payload)
            except Conflict:
                continue
        raise Conflict(f"the ledger of {task!r} is too busy; try again")

    def platform_append_in(self, s, task: str, type: str, payload: dict) -> dict:
        """Append a platform entry inside the caller's transaction (opened by :meth:`writing`);
        a failure raises and the caller's whole transaction rolls back. The task row is locked
        first, as for a member's append, so the two never take the same seq."""
        access.task_row(s, task, lock=True)
        size, prev = self._head(s, task)
        entry = E.make_entry(task, type, E.PLATFORM_AUTHOR, size, prev, payload)
        sig = E.encode_signature(E.sign_entry(entry, self.key))
        return self._insert(s, task, entry, sig, E.canonical_bytes(entry))

    def _head(self, s, task: str) -> tuple[int, str]:
        last = s.scalar(select(LedgerEntry).where(LedgerEntry.task == task)
                        .order_by(LedgerEntry.seq.desc()).limit(1))
        return (0, E.GENESIS_PREV) if last is None else (last.seq + 1, last.entry_hash)

    def _check_head(self, s, task: str, entry: dict) -> None:
        size, prev = self._head(s, task)
        if entry["seq"] != size or entry["prev"] != prev:
            raise LedgerHeadMoved(f"the ledger head moved: the next entry is {size} with prev {prev}",
                                  {"size": size, "prev": prev})

    def _insert(self, s, task: str, entry: dict, sig: str, data: bytes) -> dict:
        leaf = merkle.leaf_hash(data)
        s.add(LedgerEntry(task=task, seq=entry["seq"], author=entry["author"], type=entry["type"],
                          entry=data.decode("utf-8"), signature=sig, leaf_hash=leaf.hex(),
                          entry_hash=hashlib.sha256(data).hexdigest()))
        try:
            s.flush()
        except IntegrityError:
            raise Conflict("the ledger head moved; fetch it and sign again") from None
        tree, size = self.trees.tree(s, task)
        if size != entry["seq"] + 1:
            raise InvalidState(f"the stored ledger of {task!r} has gaps (it was tampered with); "
                               "it cannot be extended")
        if not E.is_v2(entry):  # (rare: platform entries, key changes, old clients) a head per append as before
            self._sign_head(s, task, tree, size)
        return {"seq": entry["seq"], "leaf_hash": leaf.hex()}

    # ------------------------------------------------------------------- reads
    def head(self, caller: str, task: str) -> dict:
        with self.core.db.session() as s:
            self._reader(s, caller, task)
            size, prev = self._head(s, task)
        return {"task": task, "size": size, "prev": prev}

    def entries(self, caller: str, task: str, start: int = 0, end: int | None = None) -> list[dict]:
        with self.core.db.session() as s:
            self._reader(s, caller, task)
            query = select(LedgerEntry).where(LedgerEntry.task == task, LedgerEntry.seq >= int(start))
            if end is not None:
                query = query.where(LedgerEntry.seq < int(end))
            rows = s.scalars(query.order_by(LedgerEntry.seq)).all()
            return [{"entry": _loads(r.entry), "signature": r.signature} for r in rows]

    def checkpoint(self, caller: str, task: str, size: int | None = None) -> dict:
        """The signed tree head of ``size`` entries (default: of the whole log), signed now if
        none of that size was signed before: heads are signed when asked for, not per append."""
        with self.core.db.session() as s:
            self._reader(s, caller, task)
            row, _, _ = self._signed_head(s, task, size)
            cosigs = s.scalars(select(LedgerCosignature).where(LedgerCosignature.task == task,
                                                               LedgerCosignature.size == row.size)).all()
            return {"checkpoint": _loads(row.checkpoint), "signature": row.signature,
                    "platform_key": self.public_key,
                    "cosignatures": {c.member: c.signature for c in cosigs}}

    def _signed_head(self, s, task: str, size: int | None = None) -> tuple[LedgerCheckpoint, merkle.MerkleTree, int]:
        """The checkpoint row of ``size`` (default: the log's size), signing it first when the log
        holds that many entries and no head of that size was signed yet (a row another process
        signed at the same moment is taken instead: the (task, size) constraint keeps one); the
        task's tree, and how many entries are stored.

        The head is read before the entries: each statement reads what was committed when it ran (SQLite
        outside a write, PostgreSQL's read committed), and the entries a head covers were committed before
        it. Read the other way round, a head signed between the two reads looked larger than the log, and a
        member's audit reported the platform's promise broken when nothing was."""
        query = select(LedgerCheckpoint).where(LedgerCheckpoint.task == task)
        if size is None:  # the latest head; one larger than the log (shrunk behind the platform's back) shows it
            row = s.scalar(query.order_by(LedgerCheckpoint.size.desc()).limit(1))
            tree, stored = self.trees.tree(s, task)
            if row is not None and row.size >= stored:
                return row, tree, stored
        else:
            row = s.scalar(query.where(LedgerCheckpoint.size == size))
            tree, stored = self.trees.tree(s, task)
            if row is not None:
                return row, tree, stored
        want = stored if size is None else size
        if not 0 < want <= stored:
            raise InvalidInput(f"no checkpoint of size {size} for task {task!r}" if size
                               else f"task {task!r} has no ledger entries yet")
        self._sign_head(s, task, tree, want)
        return s.scalar(query.where(LedgerCheckpoint.size == want)), tree, stored

    def _sign_head(self, s, task: str, tree, size: int) -> None:
        """Sign and store the tree head of ``size`` (in a savepoint: when another process stored
        that head first, the unique (task, size) constraint keeps its row and this one is dropped)."""
        checkpoint = E.make_checkpoint(task, size, tree.root(size))
        signature = E.encode_signature(E.sign_checkpoint(checkpoint, self.key))
        try:
            with s.begin_nested():
                s.add(LedgerCheckpoint(task=task, size=size, checkpoint=E.checkpoint_bytes(checkpoint).decode(),
                                       signature=signature))
        except IntegrityError:
            pass

    def inclusion_proof(self, caller: str, task: str, seq: int, size: int | None = None) -> dict:
        def prove(tree, stored):
            at, upto = int(seq), _tree_size(size, stored)
            proof = [p.hex() for p in tree.inclusion_proof(at, upto)]
            return {"seq": at, "size": upto, "leaf_hash": tree.leaf_hash_at(at).hex(), "proof": proof}
        return self._prove(caller, task, "inclusion", prove)

    def consistency_proof(self, caller: str, task: str, old_size: int, new_size: int | None = None) -> dict:
        def prove(tree, stored):
            old, new = int(old_size), _tree_size(new_size, stored)
            return {"old_size": old, "new_size": new, "proof": [p.hex() for p in tree.consistency_proof(old, new)]}
        return self._prove(caller, task, "consistency", prove)

    def _prove(self, caller: str, task: str, kind: str, prove) -> dict:
        """``prove(tree, stored size)`` on the task's Merkle tree, for a member; a proof that cannot be
        given (a size beyond the log, a seq outside it, a value that is not a number) is bad input."""
        with self.core.db.session() as s:
            self._reader(s, caller, task)
            tree, stored = self.trees.tree(s, task)
        try:
            return prove(tree, stored)
        except (merkle.ProofError, ValueError, TypeError) as exc:
            raise InvalidInput(f"no {kind} proof: {exc}") from None

    def audit(self, caller: str, task: str, seqs: list = (), old_size: int | None = None,
              cosign: dict | None = None) -> dict:
        """A member's round audit in one request: the latest signed checkpoint (signed now if the
        log grew), the inclusion proof of each of ``seqs`` in it (None where it cannot be
        included: the member then holds a broken promise) and the consistency proof from
        ``old_size`` (the checkpoint it verified last; None where the log shrank). ``cosign``
        ({"size", "signature"}) is its cosignature of that earlier checkpoint, stored first."""
        with self.core.db.session() as s:
            self._reader(s, caller, task)
            if cosign is not None:  # (of a head no longer stored: not kept; the member's own checks catch that)
                self._store_cosignature(s, caller, task, cosign["size"], cosign["signature"], missing_ok=True)
            row, tree, stored = self._signed_head(s, task)
        checkpoint = _loads(row.checkpoint)
        size = checkpoint["size"]
        provable = size <= stored  # (not for a head beyond a log shrunk behind the platform's back)
        inclusion = [[p.hex() for p in tree.inclusion_proof(seq, size)] if provable and seq < size else None
                     for seq in seqs]
        consistency = None
        if old_size is not None and provable and old_size <= size:
            consistency = [p.hex() for p in tree.consistency_proof(old_size, size)]
        return {"checkpoint": checkpoint, "signature": row.signature, "platform_key": self.public_key,
                "inclusion": inclusion, "consistency": consistency}

    def cosign(self, caller: str, task: str, size: int, signature: str) -> dict:
        """Store a member's cosignature of the checkpoint of ``size`` after checking it."""
        with self.core.db.session() as s:
            self._reader(s, caller, task)
            self._store_cosignature(s, caller, task, size, signature)
        return {"task": task, "size": size, "member": caller}

    def _store_cosignature(self, s, caller: str, task: str, size: int, signature: str,
                           missing_ok: bool = False) -> None:
        row = s.scalar(select(LedgerCheckpoint).where(LedgerCheckpoint.task == task,
                                                      LedgerCheckpoint.size == size))
        if row is None and missing_ok:
            return
        key = self.key_of(s, caller)
        if row is None:
            raise InvalidInput(f"task {task!r} has no checkpoint of size {size}")
        if key is None or not E.verify_cosignature(_loads(row.checkpoint), signature, key):
            raise PermissionDenied("the cosignature does not verify with your registered key")
        if s.scalar(select(LedgerCosignature.id).where(
                LedgerCosignature.task == task, LedgerCosignature.size == size,
                LedgerCosignature.member == caller)) is None:
            s.add(LedgerCosignature(task=task, size=size, member=caller, signature=signature))

    def keys(self, caller: str, task: str) -> dict:
        """Public keys of every author in the log, and the platform's."""
        with self.core.db.session() as s:
            self._reader(s, caller, task)
            authors = set(s.scalars(select(LedgerEntry.author).where(LedgerEntry.task == task)))
            keys = {u: k for u, k in s.execute(select(IdentityKey.user, IdentityKey.public_key)
                                                .where(IdentityKey.user.in_(authors)))}
        keys[E.PLATFORM_AUTHOR] = self.public_key
        return {"platform_key": self.public_key, "keys": keys}

    def bundle(self, caller: str, task: str) -> dict:
        """Everything needed to verify the log offline. The head first: every entry it covers was
        committed before it, so the entries read next hold them all (read the other way round, a head
        signed in between covered entries the bundle did not have, and verification failed)."""
        latest = self.checkpoint(caller, task)
        return {"task": task, "entries": self.entries(caller, task), **self.keys(caller, task), "latest": latest}

    def drop(self, task: str, s=None) -> None:
        """Forget a deleted task's log (its name may be reused), in the caller's transaction ``s``
        when given."""
        if s is None:
            with self.writing() as s:
                return self.drop(task, s)
        for table in (LedgerEntry, LedgerCheckpoint, LedgerCosignature):
            s.execute(delete(table).where(table.task == task))
        self.trees.forget(task)


def _tree_size(size, stored: int) -> int:
    """The tree size a proof is asked against: the whole log when none is named, never beyond it."""
    size = stored if size is None else int(size)
    if size > stored:
        raise merkle.ProofError(f"tree size {size} exceeds the {stored} entries of the log")
    return size
