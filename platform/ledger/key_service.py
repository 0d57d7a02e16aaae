"""Identity keys on the platform: registration, rotation, revocation and operator reset, each
on the ledger.

Mixed into :class:`~werkbund.platform.ledger.service.LedgerService`. A user's key history
goes on the log of every task the user is in (as creator or participant), in the same
transaction that changes the key the platform checks signatures against. Only the holder of
the key in force changes it; a password alone never does:

* ``key_rotated`` — authored by the user and signed with the OLD key, naming the new one
  (payload ``subject``, ``public_key``, ``previous_key``). The client signs one entry per
  task log at its head (``ledger_key_logs`` lists them) and sends them together; the
  platform takes all or none, then checks later entries against the new key only.
* ``key_revoked`` — authored by the user and signed with the key it revokes (payload
  ``subject``, ``public_key``, ``reason``), one per task log like a rotation. Entries by that
  key are refused from then on, and the user has no key until the operator resets one.
* ``key_registered`` — authored by the platform when a user who never had a key registers
  one (payload ``subject``, ``public_key``).
* ``key_reset`` — authored by the platform at its operator's command (``werkbund platform
  reset-key``), for a user who lost the key: payload ``subject``, ``public_key`` (the new key,
  handed to the operator out of band), ``previous_key`` (or None) and ``reason``. Every member
  sees it in ``werkbund ledger verify`` as an operator reset.

A user in no task has no log to sign on; the old key then signs a statement
(:func:`~werkbund.ledger.entries.key_statement`) instead. Joined and task_created
entries name the member's key at that point, so the log holds the whole history a verifier
needs (see :mod:`.verify`). A key once used by anyone is never accepted again.
"""
from __future__ import annotations

from sqlalchemy import select

from werkbund.platform import access
from werkbund.platform.errors import Conflict, InvalidInput, InvalidState, PermissionDenied
from werkbund.ledger import entries as E
from werkbund.platform.ledger.store import IdentityKey, IdentityKeyEvent
from werkbund.platform.tables import Membership, Task, User

MAX_REASON = 500


class IdentityKeys:
    """Key methods of the ledger service (needs ``writing``, ``platform_append_in``,
    ``_insert``, ``_check_head``, ``_check_clock``, ``_head``, ``core``)."""

    # ------------------------------------------------------------------ reads
    @staticmethod
    def check_public_key(public_key) -> None:
        try:
            E.decode_public_key(public_key)
        except (E.EntryError, ValueError, TypeError):
            raise InvalidInput("public_key must be the base64 of a raw 32-byte Ed25519 key") from None

    def identity_key(self, caller: str, user: str) -> dict:
        with self.core.db.session() as s:
            key = self.key_of(s, user)
        return {"user": user, "public_key": key}

    @staticmethod
    def key_of(s, user: str) -> str | None:
        """The identity key ``user`` has registered now (None: none, or revoked), read in the session ``s``
        of the caller (the core's tasks part names it in the ``task_created`` and ``joined`` entries)."""
        return s.scalar(select(IdentityKey.public_key).where(IdentityKey.user == user))

    def key_history(self, caller: str, user: str | None = None) -> list[dict]:
        """The registrations, rotations and revocations of ``user``'s key (default: yours)."""
        user = user or caller
        with self.core.db.session() as s:
            rows = s.scalars(select(IdentityKeyEvent).where(IdentityKeyEvent.user == user)
                             .order_by(IdentityKeyEvent.id)).all()
            return [{"kind": r.kind, "public_key": r.public_key, "reason": r.reason,
                     "at": r.created_at.isoformat(timespec="seconds") + "Z"} for r in rows]

    @staticmethod
    def _key_logs(s, user: str) -> list[str]:
        """The tasks whose logs carry ``user``'s key history: created or joined, any status."""
        created = s.scalars(select(Task.name).join(User, Task.creator_id == User.id)
                            .where(User.name == user))
        joined = s.scalars(select(Task.name).join(Membership, Membership.task_id == Task.id)
                           .join(User, Membership.user_id == User.id).where(User.name == user))
        return sorted(set(created) | set(joined))

    def key_logs(self, caller: str) -> list[dict]:
        """The head of every log a rotation of the caller's key must go on."""
        with self.core.db.session() as s:
            result = []
            for task in self._key_logs(s, caller):
                size, prev = self._head(s, task)
                result.append({"task": task, "size": size, "prev": prev})
            return result

    @staticmethod
    def _check_unused(s, public_key: str) -> None:
        used = (s.scalar(select(IdentityKey.id).where(IdentityKey.public_key == public_key))
                or s.scalar(select(IdentityKeyEvent.id).where(IdentityKeyEvent.public_key == public_key)))
        if used is not None:
            raise InvalidInput("this public key is or was already in use; make a new key pair")

    # ----------------------------------------------------------------- writes
    def set_identity_key(self, caller: str, public_key: str) -> dict:
        """Register the caller's first key. After a key was in force once (even if revoked),
        only the old key (``rotate_identity_key``) or the operator (``reset_identity_key``)
        sets another: a password alone never replaces a key."""
        self.check_public_key(public_key)
        with self.writing() as s:
            row = s.scalar(select(IdentityKey).where(IdentityKey.user == caller))
            if row is not None:
                if row.public_key != public_key:
                    raise Conflict(f"{caller} already has an identity key; rotate it with "
                                   "`werkbund ledger rotate-key`")
                return {"user": caller, "public_key": public_key}
            if s.scalar(select(IdentityKeyEvent.id).where(IdentityKeyEvent.user == caller)) is not None:
                raise PermissionDenied(
                    f"{caller} had an identity key before; a new one after a revoked or lost key needs "
                    "the platform operator: give them your new public key (`werkbund ledger new-key`) "
                    "out of band, they run `werkbund platform reset-key`")
            self._check_unused(s, public_key)
            s.add(IdentityKey(user=caller, public_key=public_key))
            s.add(IdentityKeyEvent(user=caller, kind="registered", public_key=public_key))
            s.flush()
            tasks = self._key_logs(s, caller)
            for task in tasks:
                self.platform_append_in(s, task, "key_registered",
                                        {"subject": caller, "public_key": public_key})
        return {"user": caller, "public_key": public_key, "tasks": tasks}

    def _signed_entries(self, caller: str, kind: str, entries, check_payload) -> dict:
        """``entries`` ({"entry", "signature"}) as task -> (entry, signature, bytes): each of
        ``kind``, authored by the caller about themself, one per task, passing ``check_payload``."""
        if not isinstance(entries, list):
            raise InvalidInput("entries must be a list of {entry, signature}")
        given = {}
        for item in entries:
            entry, signature, data = self._parse(item)
            payload = entry["payload"]
            if (entry["type"] != kind or entry["author"] != caller
                    or payload.get("subject", caller) != caller or not check_payload(payload)):
                what = "naming the new public_key" if kind == "key_rotated" else "with the reason given"
                raise InvalidInput(f"the entry for task {entry['task']!r} must be a {kind} entry "
                                   f"authored by you {what}")
            if entry["task"] in given:
                raise InvalidInput(f"two {kind} entries for task {entry['task']!r}")
            self._check_clock(entry)
            given[entry["task"]] = (entry, signature, data)
        return given

    def _append_signed(self, s, caller: str, kind: str, given: dict, held: str, statement,
                       statement_signature) -> list[str]:
        """Check that the key ``held`` signed the change (on every log of the caller, or, in no
        task, the ``statement``) and append the entries; all or none."""
        tasks = self._key_logs(s, caller)
        if tasks and not given:  # a password alone: no signature of the key at all
            raise PermissionDenied(f"a {kind.replace('key_', '')} key must be signed by your current identity "
                                   f"key: send the {kind} entries for every task you are in")
        extra = sorted(set(given) - set(tasks))
        if extra:
            raise PermissionDenied(f"you are not in task(s) {', '.join(extra)}")
        missing = [t for t in tasks if t not in given]
        if missing:  # the client fetches the logs again and signs anew
            raise Conflict(f"the {kind} entries must go on the log of every task you are in; "
                           f"missing: {', '.join(missing)}")
        if not tasks and (statement_signature is None
                          or not E.verify_key_statement(statement, statement_signature, held)):
            raise PermissionDenied(f"a {kind.replace('key_', '')} key must be signed by your current identity "
                                   "key (you are in no task: sign the key statement)")
        for task in tasks:
            entry, signature, data = given[task]
            field = "previous_key" if kind == "key_rotated" else "public_key"
            if entry["payload"].get(field, held) != held:
                raise InvalidInput(f"the entry for task {task!r} names another {field} than your key in force")
            if not E.verify_entry_signature(entry, signature, held):
                raise PermissionDenied(f"the {kind} entry for task {task!r} is not signed by "
                                       "your current identity key")
            access.task_row(s, task, lock=True)  # appends to a log take turns (service._append_statement)
            self._check_head(s, task, entry)
            self._insert(s, task, entry, signature, data)
        return tasks

    def rotate_identity_key(self, caller: str, public_key: str, entries: list,
                            statement_signature: str | None = None) -> dict:
        """Replace the caller's key by ``public_key``; ``entries`` are the ``key_rotated``
        entries (``{"entry", "signature"}``), one at the head of each log of ``key_logs``,
        signed with the key in force (in no task: ``statement_signature``, the old key's
        signature of the ``key_statement``)."""
        self.check_public_key(public_key)
        given = self._signed_entries(caller, "key_rotated", entries,
                                     lambda p: p.get("public_key") == public_key)
        with self.writing() as s:
            row = s.scalar(select(IdentityKey).where(IdentityKey.user == caller))
            if row is None:
                raise InvalidState("you have no identity key in force to rotate; after a revoked or "
                                   "lost key the platform operator resets it (`werkbund platform reset-key`)")
            if public_key == row.public_key:
                raise InvalidInput("the new key is the key already in force")
            self._check_unused(s, public_key)
            statement = E.key_statement("key_rotated", caller, row.public_key, public_key)
            tasks = self._append_signed(s, caller, "key_rotated", given, row.public_key, statement,
                                        statement_signature)
            row.public_key = public_key
            s.add(IdentityKeyEvent(user=caller, kind="rotated", public_key=public_key))
        return {"user": caller, "public_key": public_key, "tasks": tasks}

    def revoke_identity_key(self, caller: str, reason: str = "", entries: list | None = None,
                            statement_signature: str | None = None) -> dict:
        """Revoke the caller's key (compromised; later entries by it are refused). Signed with
        that key, as a rotation is: ``key_revoked`` entries on every log, or in no task the
        ``statement_signature``. A lost key is the operator's ``reset_identity_key``."""
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise InvalidInput(f"the reason must be a text of at most {MAX_REASON} characters")
        given = self._signed_entries(caller, "key_revoked", entries or [],
                                     lambda p: p.get("reason", "") == reason)
        with self.writing() as s:
            row = s.scalar(select(IdentityKey).where(IdentityKey.user == caller))
            if row is None:
                raise InvalidState("you have no identity key in force to revoke")
            revoked = row.public_key
            statement = E.key_statement("key_revoked", caller, revoked, None, reason)
            tasks = self._append_signed(s, caller, "key_revoked", given, revoked, statement,
                                        statement_signature)
            s.add(IdentityKeyEvent(user=caller, kind="revoked", public_key=revoked, reason=reason or None))
            s.delete(row)
        return {"user": caller, "revoked": revoked, "tasks": tasks}

    def reset_identity_key(self, user: str, public_key: str, reason: str) -> dict:
        """The operator's out-of-band reset, for a user who lost the key: ``public_key`` (handed
        over out of band) replaces the key in force, or follows a revoked one. Not a command any
        member can send: ``werkbund platform reset-key`` calls it on the platform's database.
        Every log of the user gets a platform-signed ``key_reset`` entry."""
        self.check_public_key(public_key)
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise InvalidInput(f"an operator reset needs a reason (how the user was identified), "
                               f"at most {MAX_REASON} characters")
        with self.writing() as s:
            if s.scalar(select(User.id).where(User.name == user)) is None:
                raise InvalidInput(f"no user {user!r} on this platform")
            self._check_unused(s, public_key)
            row = s.scalar(select(IdentityKey).where(IdentityKey.user == user))
            previous = row.public_key if row is not None else None
            tasks = self._key_logs(s, user)
            for task in tasks:
                self.platform_append_in(s, task, "key_reset", {
                    "subject": user, "public_key": public_key, "previous_key": previous, "reason": reason})
            if row is None:
                s.add(IdentityKey(user=user, public_key=public_key))
            else:
                row.public_key = public_key
            s.add(IdentityKeyEvent(user=user, kind="reset", public_key=public_key, reason=reason))
        return {"user": user, "public_key": public_key, "previous_key": previous, "tasks": tasks}

    @staticmethod
    def _parse(item) -> tuple[dict, str, bytes]:
        if not isinstance(item, dict) or not isinstance(item.get("entry"), dict):
            raise InvalidInput("each item must be {\"entry\": {...}, \"signature\": \"base64\"}")
        try:
            data = E.canonical_bytes(item["entry"])
            signature = E.encode_signature(E.decode_signature(item.get("signature")))
        except E.EntryError as exc:
            raise InvalidInput(f"malformed ledger entry: {exc}") from None
        return item["entry"], signature, data
