"""The platform core: every rule about users, tasks, memberships, rounds and models.

The fronts (Flask, AMQP, in-process) translate requests into calls of
:class:`PlatformService` and its errors into their own replies; none of them
decides anything on its own. Every method returns plain JSON-able data.
"""
from __future__ import annotations

import hashlib
import logging
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from werkbund.platform import passwords
from werkbund.platform.db import Database
from werkbund.platform.definition import check_name, check_organisation, validate_definition
from werkbund.platform.errors import (
    AlreadyJoined,
    AuthenticationFailed,
    InvalidInput,
    InvalidState,
    PermissionDenied,
    TaskExists,
    TaskFull,
    TaskNotFound,
    UserExists,
)
from werkbund.platform.join_schema import check_join_schema, merged_schema
from werkbund.platform.ledger.service import LedgerService
from werkbund.platform.login_guard import LoginGuard
from werkbund.platform.model_store import ModelStore
from werkbund.platform.models import Membership, RoundRecord, SessionToken, StoredModel, Task, User, utcnow

log = logging.getLogger("werkbund.platform")

STATUSES = ("CREATED", "STARTED", "COMPLETE", "FAILED")
AGGREGATOR_INBOX = "@aggregator"
SESSION_LIFETIME = timedelta(hours=12)
TRANSFER_TOKEN_LIFETIME = timedelta(minutes=30)
# schema fields that every participant of a task must report identically


def _sha(obj) -> str:
    """sha256 of the RFC 8785 form of a JSON object."""
    import rfc8785

    return hashlib.sha256(rfc8785.dumps(obj)).hexdigest()


def _iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


class PlatformService(ModelStore):
    """Users, tasks, memberships, round records and final models (``model_store.py``) over one database."""

    def __init__(self, db: Database | str, ledger_key=None, model_dir=None):
        self.db = db if isinstance(db, Database) else Database(db)
        self.ledger = LedgerService(self, ledger_key)  # ledger_key: path of the signing key
        self.logins = LoginGuard()
        self._open_model_store(model_dir)

    # ----------------------------------------------------------------- users
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
        return {"user": name, "org": row.org, "token": token, "expires_at": _iso(expires)}

    def authenticate(self, token: str, scope: str | None = None) -> str:
        """Return the user a session token belongs to (``scope``: a token issued for that use only,
        e.g. ``blob:<task>`` for the blob store's transfer token)."""
        if not token or not isinstance(token, str):
            raise AuthenticationFailed("not logged in: no session token")
        with self.db.session() as s:
            row = s.scalar(select(SessionToken).where(
                SessionToken.token_sha256 == passwords.token_digest(token, scope)))
            if row is None or row.expires_at < utcnow():
                raise AuthenticationFailed("the session has expired or is unknown; log in again")
            return row.user.name

    def logout(self, caller: str, token: str) -> dict:
        """Revoke the session token (the front passes the one the caller authenticated with)."""
        with self.db.session() as s:
            row = s.scalar(select(SessionToken).where(SessionToken.token_sha256 == passwords.token_digest(token)))
            if row is not None:
                s.delete(row)
        return {"user": caller}

    def whoami(self, caller: str) -> dict:
        with self.db.session() as s:
            row = self._user(s, caller)
            return {"user": row.name, "org": row.org, "created_at": _iso(row.created_at)}

    # ----------------------------------------------------------------- tasks
    def create_task(self, caller: str, task: str, definition: dict) -> dict:
        check_name("task", task)
        definition = validate_definition(definition)
        try:
            with self.ledger.writing() as s:  # the task and its task_created entry, together
                user = self._user(s, caller)
                if s.scalar(select(Task.id).where(Task.name == task)) is not None:
                    raise TaskExists(f"task {task!r} already exists")
                row = Task(name=task, creator=user, definition=definition)
                s.add(row)
                s.flush()
                info = self._task_dict(row, caller)
                self.ledger.platform_append_in(s, task, "task_created", {
                    "creator": caller, "public_key": self.ledger._key_of(s, caller),
                    "definition_sha256": _sha(definition)})
        except IntegrityError:
            raise TaskExists(f"task {task!r} already exists") from None
        log.info("%s created task %s (%s)", caller, task, definition["algorithm"])
        return info

    def list_tasks(self, caller: str, status=None, creator=None, algorithm=None, search=None) -> list[dict]:
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        with self.db.session() as s:
            query = select(Task).join(Task.creator).order_by(Task.created_at, Task.id)
            if status:
                query = query.where(Task.status == status)
            if creator:
                query = query.where(User.name == creator)
            rows = s.scalars(query).all()
            result = []
            for row in rows:
                if algorithm and row.definition.get("algorithm") != algorithm:
                    continue
                if search:
                    haystack = " ".join(
                        [row.name, row.creator.name, row.creator.org, str(row.definition.get("description", ""))]
                    ).lower()
                    if search.lower() not in haystack:
                        continue
                result.append(self._task_dict(row, caller))
            return result

    def task_info(self, caller: str, task: str) -> dict:
        with self.db.session() as s:
            return self._task_dict(self._task(s, task), caller)

    def delete_task(self, caller: str, task: str) -> dict:
        with self.ledger.writing() as s:
            row = self._task(s, task)
            self._require_creator(row, caller, "delete")
            if row.status == "STARTED":
                raise InvalidState(f"task {task!r} is running; stop its aggregator before deleting it")
            model_sha = s.scalar(select(StoredModel.sha256).where(StoredModel.task_id == row.id))
            s.execute(delete(StoredModel).where(StoredModel.task_id == row.id))
            s.delete(row)
            self.ledger.drop(task, s)
        if model_sha:
            self._drop_model_file_if_unused(model_sha)
        log.info("%s deleted task %s", caller, task)
        return {"task": task, "deleted": True}

    # ----------------------------------------------------------- memberships
    def join_task(self, caller: str, task: str, schema: dict | None = None) -> dict:
        if schema is not None and not isinstance(schema, dict):
            raise InvalidInput("a data schema must be a JSON object")
        try:
            with self.ledger.writing() as s:  # the membership and its joined entry, together
                user = self._user(s, caller)
                row = self._task(s, task, lock=True)
                if row.creator_id == user.id:
                    raise PermissionDenied(f"you created task {task!r}; the creator aggregates and does not join")
                if row.status != "CREATED":
                    raise InvalidState(f"task {task!r} is {row.status}; only CREATED tasks can be joined")
                if any(m.user_id == user.id for m in row.memberships):
                    raise AlreadyJoined(f"you have already joined task {task!r}")
                limit = row.definition["max_participants"]
                if len(row.memberships) >= limit:
                    raise TaskFull(f"task {task!r} is full ({limit} participants)")
                if schema is not None:
                    check_join_schema(row, schema)
                row.memberships.append(Membership(user=user, schema=schema))
                s.flush()
                info = self._task_dict(row, caller)
                self.ledger.platform_append_in(s, task, "joined", {
                    "user": caller, "public_key": self.ledger._key_of(s, caller),
                    "schema_sha256": _sha(schema) if schema else None})
        except IntegrityError:
            raise AlreadyJoined(f"you have already joined task {task!r}") from None
        log.info("%s joined task %s", caller, task)
        return info

    def leave_task(self, caller: str, task: str) -> dict:
        with self.ledger.writing() as s:
            row = self._task(s, task, lock=True)
            membership = self._membership(row, caller)
            if membership is None:
                raise InvalidInput(f"you are not a participant of task {task!r}")
            if row.status != "CREATED":
                raise InvalidState(f"task {task!r} is {row.status}; participants can leave only before it starts")
            row.memberships.remove(membership)
            s.flush()
            self.ledger.platform_append_in(s, task, "left", {"user": caller})
        log.info("%s left task %s", caller, task)
        return {"task": task, "left": True}

    def participants(self, caller: str, task: str) -> list[dict]:
        with self.db.session() as s:
            row = self._task(s, task)
            self._require_member_or_creator(row, caller)
            return [self._member_dict(m, caller) for m in row.memberships]

    # ------------------------------------------------------- task lifecycle
    def start_task(self, caller: str, task: str) -> dict:
        with self.db.session() as s:
            row = self._task(s, task, lock=True)
            self._require_creator(row, caller, "start")
            if row.status != "CREATED":
                raise InvalidState(f"task {task!r} is {row.status}; only a CREATED task can start")
            joined, quorum = len(row.memberships), row.definition["quorum"]
            if joined < quorum:
                raise InvalidState(f"task {task!r} has {joined} of {quorum} participants; the quorum is not met")
            row.status, row.started_at = "STARTED", utcnow()
            info = self._task_dict(row, caller)
        log.info("%s started task %s", caller, task)
        return info

    def record_round(self, caller, task, number, reported=(), rejected=None, missing=(), metrics=None) -> dict:
        if not isinstance(number, int) or number < 0:
            raise InvalidInput("a round number must be a non-negative integer")
        with self.db.session() as s:
            row = self._task(s, task)
            self._require_creator(row, caller, "record rounds of")
            if row.status != "STARTED":
                raise InvalidState(f"task {task!r} is {row.status}; rounds are recorded only while it runs")
            existing = s.scalar(select(RoundRecord).where(RoundRecord.task_id == row.id, RoundRecord.number == number))
            record = existing or RoundRecord(task_id=row.id, number=number)
            record.reported = list(reported or [])
            record.rejected = dict(rejected or {})
            record.missing = list(missing or [])
            record.metrics = dict(metrics or {})
            s.add(record)
            s.flush()
            return self._round_dict(record)

    def rounds(self, caller: str, task: str) -> list[dict]:
        with self.db.session() as s:
            row = self._task(s, task)
            self._require_member_or_creator(row, caller)
            return [self._round_dict(r) for r in row.rounds]

    def finish_task(self, caller: str, task: str, reason: str | None = None) -> dict:
        """Complete a task; ``reason`` says why it ended before its planned rounds (early stopping, budget)."""
        with self.ledger.writing() as s:
            row = self._task(s, task, lock=True)
            self._require_creator(row, caller, "finish")
            if row.status != "STARTED":
                raise InvalidState(f"task {task!r} is {row.status}; only a STARTED task can complete")
            if s.scalar(select(StoredModel.id).where(StoredModel.task_id == row.id)) is None:
                raise InvalidState(f"task {task!r} has no final model; upload it before finishing")
            row.status, row.finished_at = "COMPLETE", utcnow()
            if reason:
                row.reason = str(reason)[:2000]
            info = self._task_dict(row, caller)
            model_sha = s.scalar(select(StoredModel.sha256).where(StoredModel.task_id == row.id))
            self.ledger.platform_append_in(s, task, "task_finished", {"model_sha256": model_sha})
        log.info("%s finished task %s", caller, task)
        return info

    def fail_task(self, caller: str, task: str, reason: str) -> dict:
        with self.ledger.writing() as s:
            row = self._task(s, task, lock=True)
            self._require_creator(row, caller, "fail")
            if row.status in ("COMPLETE", "FAILED"):
                raise InvalidState(f"task {task!r} is already {row.status}")
            row.status, row.finished_at, row.reason = "FAILED", utcnow(), str(reason)[:2000]
            info = self._task_dict(row, caller)
            self.ledger.platform_append_in(s, task, "task_failed", {"reason": str(reason)[:2000]})
        log.warning("task %s failed: %s", task, reason)
        return info

    # ------------------------------------------------- large data transfers
    def transfer_token(self, caller: str, task: str) -> dict:
        """A short-lived token for the platform's blob store (large task messages, models) of this task
        only, for a caller whom a front already authenticated (the broker, on the cloud platform); it is
        no session token: the control commands refuse it."""
        self.check_blob_access(caller, task, "upload")
        token, expires = passwords.new_token(), utcnow() + TRANSFER_TOKEN_LIFETIME
        with self.db.session() as s:
            s.add(SessionToken(token_sha256=passwords.token_digest(token, f"blob:{task}"),
                               user_id=self._user(s, caller).id, expires_at=expires))
        return {"task": task, "token": token, "expires_at": _iso(expires)}

    def check_blob_access(self, caller: str, task: str, action: str, uploader: str | None = None) -> None:
        """Large task data in the blob store: the task's creator and participants upload; the creator
        reads and deletes all of it, a participant only its own and what the creator uploaded
        (broadcasts, messages to it, the final model), just as with the task's queues."""
        with self.db.session() as s:
            row = self._task(s, task)
            self._require_member_or_creator(row, caller, "move data of")
            if action != "upload" and caller != row.creator.name and uploader not in (caller, row.creator.name):
                raise PermissionDenied(f"participants of task {task!r} may not {action} another participant's data")

    # ------------------------------------------------------ message routing
    def route_message(self, caller: str, task: str, to: str) -> list[str]:
        """The inboxes a message from ``caller`` to ``to`` ('aggregator', 'all' or a participant) goes to."""
        with self.db.session() as s:
            row = self._task(s, task)
            if row.status != "STARTED":
                raise InvalidState(f"task {task!r} is {row.status}; messages flow only while it runs")
            members = [m.user.name for m in row.memberships]
            if row.creator.name == caller:
                if to == "all":
                    return list(members)
                if to in members:
                    return [to]
                raise InvalidInput(f"{to!r} is not a participant of task {task!r}")
            if caller not in members:
                raise PermissionDenied(f"you are not a participant of task {task!r}")
            if to != "aggregator":
                raise PermissionDenied("participants send only to the task's aggregator")
            return [AGGREGATOR_INBOX]

    def inbox_of(self, caller: str, task: str) -> str:
        """The inbox that ``caller`` reads in ``task``."""
        with self.db.session() as s:
            row = self._task(s, task)
            if row.creator.name == caller:
                return AGGREGATOR_INBOX
            if self._membership(row, caller) is None:
                raise PermissionDenied(f"you are not a participant of task {task!r}")
            return caller

    # --------------------------------------------------------------- helpers
    def _user(self, s, name: str) -> User:
        row = s.scalar(select(User).where(User.name == name))
        if row is None:
            raise AuthenticationFailed(f"unknown user {name!r}")
        return row

    def _task(self, s, name: str, lock: bool = False) -> Task:
        if not isinstance(name, str):
            raise InvalidInput("a task name must be a string")
        query = select(Task).where(Task.name == name)
        if lock and s.bind.dialect.name != "sqlite":
            query = query.with_for_update()
        row = s.scalar(query)
        if row is None:
            raise TaskNotFound(f"unknown task {name!r}")
        return row

    @staticmethod
    def _membership(row: Task, user: str) -> Membership | None:
        return next((m for m in row.memberships if m.user.name == user), None)

    def _require_creator(self, row: Task, caller: str, action: str) -> None:
        if row.creator.name != caller:
            raise PermissionDenied(f"only the creator of task {row.name!r} ({row.creator.name}) may {action} it")

    def _require_member_or_creator(self, row: Task, caller: str, action: str = "see the details of") -> None:
        if row.creator.name != caller and self._membership(row, caller) is None:
            raise PermissionDenied(f"only the creator and participants of task {row.name!r} may {action} it")

    def _member_dict(self, m: Membership, caller: str | None = None) -> dict:
        """A member as the creator (and the member itself) sees it; other members see only who joined
        and when, not each other's organisation, row count or classes."""
        if caller is not None and caller != m.user.name and caller != m.task.creator.name:
            return {"user": m.user.name, "joined_at": _iso(m.joined_at)}
        return {"user": m.user.name, "org": m.user.org, "joined_at": _iso(m.joined_at), "schema": m.schema}

    def _task_dict(self, row: Task, caller: str | None) -> dict:
        insider = caller == row.creator.name or self._membership(row, caller) is not None
        info = {
            "name": row.name,
            "creator": row.creator.name,
            "org": row.creator.org,
            "status": row.status,
            "reason": row.reason,
            "algorithm": row.definition.get("algorithm"),
            "pom": row.definition.get("pom", 1),
            "quorum": row.definition.get("quorum"),
            "max_participants": row.definition.get("max_participants"),
            "joined": len(row.memberships),
            "definition": row.definition,
            "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at),
            "started_at": _iso(row.started_at),
            "finished_at": _iso(row.finished_at),
            "role": "creator" if caller == row.creator.name else ("participant" if insider else None),
        }
        if insider:
            info["participants"] = [m.user.name for m in row.memberships]
            info["schema"] = merged_schema(row)
        return info

    @staticmethod
    def _round_dict(r: RoundRecord) -> dict:
        return {
            "round": r.number,
            "reported": r.reported,
            "rejected": r.rejected,
            "missing": r.missing,
            "metrics": r.metrics,
            "recorded_at": _iso(r.created_at),
        }
