"""Identity keys on the platform: registration, rotation and revocation, each on the ledger.

Mixed into :class:`~werkbund.platform.ledger.service.LedgerService`. A user's key history
goes on the log of every task the user is in (as creator or participant), in the same
transaction that changes the key the platform checks signatures against:

* ``key_rotated`` — authored by the user and signed with the OLD key, naming the new one
  (payload ``subject``, ``public_key``, ``previous_key``). The client signs one entry per
  task log at its head (``ledger_key_logs`` lists them) and sends them together; the
  platform takes all or none, then checks later entries against the new key only.
* ``key_revoked`` — authored by the platform at the user's (password-authenticated)
  request, e.g. for a lost key (payload ``subject``, ``public_key``, ``reason``). Entries
  by that key are refused from then on; the user has no key until registering a new one.
* ``key_registered`` — authored by the platform when a user with no key in force (never
  had one, or revoked it) registers one (payload ``subject``, ``public_key``).

Joined and task_created entries name the member's key at that point, so the log holds
the whole history a verifier needs (see :mod:`.verify`). A key once used by anyone is
never accepted again.
"""
from __future__ import annotations

from sqlalchemy import select

from werkbund.platform.errors import Conflict, InvalidInput, InvalidState, PermissionDenied
from werkbund.platform.ledger import entries as E
from werkbund.platform.ledger.store import IdentityKey, IdentityKeyEvent
from werkbund.platform.models import Membership, Task, User

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
            key = self._key_of(s, user)
        return {"user": user, "public_key": key}

    @staticmethod
    def _key_of(s, user: str) -> str | None:
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
        """Register the caller's key when none is in force (first time, or after a revocation)."""
        self.check_public_key(public_key)
        with self.writing() as s:
            row = s.scalar(select(IdentityKey).where(IdentityKey.user == caller))
            if row is not None:
                if row.public_key != public_key:
                    raise Conflict(f"{caller} already has an identity key; rotate it with "
                                   "`werkbund ledger rotate-key`")
                return {"user": caller, "public_key": public_key}
            self._check_unused(s, public_key)
            s.add(IdentityKey(user=caller, public_key=public_key))
            s.add(IdentityKeyEvent(user=caller, kind="registered", public_key=public_key))
            s.flush()
            tasks = self._key_logs(s, caller)
            for task in tasks:
                self.platform_append_in(s, task, "key_registered",
                                        {"subject": caller, "public_key": public_key})
        return {"user": caller, "public_key": public_key, "tasks": tasks}

    def rotate_identity_key(self, caller: str, public_key: str, entries: list) -> dict:
        """Replace the caller's key by ``public_key``; ``entries`` are the ``key_rotated``
        entries (``{"entry", "signature"}``), one at the head of each log of ``key_logs``,
        signed with the key in force."""
        self.check_public_key(public_key)
        if not isinstance(entries, list):
            raise InvalidInput("entries must be a list of {entry, signature}")
        given = {}
        for item in entries:
            entry, signature, data = self._parse(item)
            payload = entry["payload"]
            if (entry["type"] != "key_rotated" or entry["author"] != caller
                    or payload.get("subject", caller) != caller or payload.get("public_key") != public_key):
                raise InvalidInput(f"the entry for task {entry['task']!r} must be a key_rotated entry "
                                   "authored by you naming the new public_key")
            if entry["task"] in given:
                raise InvalidInput(f"two rotation entries for task {entry['task']!r}")
            self._check_clock(entry)
            given[entry["task"]] = (entry, signature, data)
        with self.writing() as s:
            row = s.scalar(select(IdentityKey).where(IdentityKey.user == caller))
            if row is None:
                raise InvalidState("you have no identity key in force to rotate; register one "
                                   "(after a revocation: `werkbund ledger revoke-key --new-key`)")
            if public_key == row.public_key:
                raise InvalidInput("the new key is the key already in force")
            self._check_unused(s, public_key)
            tasks = self._key_logs(s, caller)
            extra = sorted(set(given) - set(tasks))
            if extra:
                raise PermissionDenied(f"you are not in task(s) {', '.join(extra)}")
            missing = [t for t in tasks if t not in given]
            if missing:  # the client fetches the logs again and signs anew
                raise Conflict(f"the rotation must go on the log of every task you are in; "
                               f"missing: {', '.join(missing)}")
            for task in tasks:
                entry, signature, data = given[task]
                if entry["payload"].get("previous_key", row.public_key) != row.public_key:
                    raise InvalidInput(f"the entry for task {task!r} names another previous_key")
                if not E.verify_entry_signature(entry, signature, row.public_key):
                    raise PermissionDenied(f"the rotation entry for task {task!r} is not signed by "
                                           "your current identity key")
                self._check_head(s, task, entry)
                self._insert(s, task, entry, signature, data)
            row.public_key = public_key
            s.add(IdentityKeyEvent(user=caller, kind="rotated", public_key=public_key))
        return {"user": caller, "public_key": public_key, "tasks": tasks}

    def revoke_identity_key(self, caller: str, reason: str = "") -> dict:
        """Revoke the caller's key (lost or compromised); later entries by it are refused."""
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise InvalidInput(f"the reason must be a text of at most {MAX_REASON} characters")
        with self.writing() as s:
            row = s.scalar(select(IdentityKey).where(IdentityKey.user == caller))
            if row is None:
                raise InvalidState("you have no identity key in force to revoke")
            revoked = row.public_key
            tasks = self._key_logs(s, caller)
            for task in tasks:
                self.platform_append_in(s, task, "key_revoked",
                                        {"subject": caller, "public_key": revoked, "reason": reason})
            s.add(IdentityKeyEvent(user=caller, kind="revoked", public_key=revoked, reason=reason or None))
            s.delete(row)
        return {"user": caller, "revoked": revoked, "tasks": tasks}

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
