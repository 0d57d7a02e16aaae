"""The tasks part of the platform core: a task's life from creation to its end, its members and rounds.

A mixin of :class:`~werkbund.platform.service.PlatformService` (it uses the core's ``db`` and
``ledger``: every lifecycle change and its ledger entry commit in one transaction).
"""
from __future__ import annotations

import hashlib
import logging

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from werkbund.ledger.canonical import canonical_json
from werkbund.platform import access
from werkbund.platform.definition import check_name, validate_definition
from werkbund.platform.errors import (
    AlreadyJoined,
    InvalidInput,
    InvalidState,
    PermissionDenied,
    TaskExists,
    TaskFull,
)
from werkbund.platform.join_schema import check_join_schema, merged_schema
from werkbund.platform.tables import Membership, RoundRecord, StoredModel, Task, User, utcnow

log = logging.getLogger("werkbund.platform")

STATUSES = ("CREATED", "STARTED", "COMPLETE", "FAILED")


def canonical_sha256(obj) -> str:
    """sha256 of the RFC 8785 form of a JSON object."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()


class Tasks:
    """Create, list, join, leave, start, record rounds of, finish, fail and delete tasks."""

    def create_task(self, caller: str, task: str, definition: dict) -> dict:
        check_name("task", task)
        definition = validate_definition(definition)
        try:
            with self.ledger.writing() as s:  # the task and its task_created entry, together
                user = access.user_row(s, caller)
                if s.scalar(select(Task.id).where(Task.name == task)) is not None:
                    raise TaskExists(f"task {task!r} already exists")
                row = Task(name=task, creator=user, definition=definition)
                s.add(row)
                s.flush()
                info = self._task_dict(row, caller)
                self.ledger.platform_append_in(s, task, "task_created", {
                    "creator": caller, "public_key": self.ledger.key_of(s, caller),
                    "definition_sha256": canonical_sha256(definition)})
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
            return self._task_dict(access.task_row(s, task), caller)

    def delete_task(self, caller: str, task: str) -> dict:
        with self.ledger.writing() as s:
            row = access.task_row(s, task)
            access.require_creator(row, caller, "delete")
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
                user = access.user_row(s, caller)
                row = access.task_row(s, task, lock=True)
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
                    "user": caller, "public_key": self.ledger.key_of(s, caller),
                    "schema_sha256": canonical_sha256(schema) if schema else None})
        except IntegrityError:
            raise AlreadyJoined(f"you have already joined task {task!r}") from None
        log.info("%s joined task %s", caller, task)
        return info

    def leave_task(self, caller: str, task: str) -> dict:
        with self.ledger.writing() as s:
            row = access.task_row(s, task, lock=True)
            membership = access.membership(row, caller)
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
            row = access.task_row(s, task)
            access.require_member_or_creator(row, caller)
            return [self._member_dict(m, caller) for m in row.memberships]

    # ------------------------------------------------------- task lifecycle
    def start_task(self, caller: str, task: str) -> dict:
        with self.db.session() as s:
            row = access.task_row(s, task, lock=True)
            access.require_creator(row, caller, "start")
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
            row = access.task_row(s, task)
            access.require_creator(row, caller, "record rounds of")
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

    def relay_round(self, caller: str, task: str, record: dict | None = None, **relay) -> dict:
        """``ledger_relay``: the round's statements (``ledger.relay``) and, with ``record``, the round's
        record (as :meth:`record_round`), in one transaction: a round's bookkeeping is one request."""
        with self.ledger.writing() as s, self.db.sharing(s):
            recorded = None if record is None else self.record_round(caller, task, **record)
            answer = self.ledger.relay(caller, task, **relay)
        return answer if recorded is None else {**answer, "record": recorded}

    def rounds(self, caller: str, task: str) -> list[dict]:
        with self.db.session() as s:
            row = access.task_row(s, task)
            access.require_member_or_creator(row, caller)
            return [self._round_dict(r) for r in row.rounds]

    def finish_task(self, caller: str, task: str, reason: str | None = None) -> dict:
        """Complete a task; ``reason`` says why it ended before its planned rounds (early stopping, budget)."""
        with self.ledger.writing() as s:
            row = access.task_row(s, task, lock=True)
            access.require_creator(row, caller, "finish")
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
            row = access.task_row(s, task, lock=True)
            access.require_creator(row, caller, "fail")
            if row.status in ("COMPLETE", "FAILED"):
                raise InvalidState(f"task {task!r} is already {row.status}")
            row.status, row.finished_at, row.reason = "FAILED", utcnow(), str(reason)[:2000]
            info = self._task_dict(row, caller)
            self.ledger.platform_append_in(s, task, "task_failed", {"reason": str(reason)[:2000]})
        log.warning("task %s failed: %s", task, reason)
        return info

    def _member_dict(self, m: Membership, caller: str | None = None) -> dict:
        """A member as the creator (and the member itself) sees it; other members see only who joined
        and when, not each other's organisation, row count or classes."""
        if caller is not None and caller != m.user.name and caller != m.task.creator.name:
            return {"user": m.user.name, "joined_at": access.iso(m.joined_at)}
        return {"user": m.user.name, "org": m.user.org, "joined_at": access.iso(m.joined_at), "schema": m.schema}

    def _task_dict(self, row: Task, caller: str | None) -> dict:
        insider = caller == row.creator.name or access.membership(row, caller) is not None
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
            "created_at": access.iso(row.created_at),
            "updated_at": access.iso(row.updated_at),
            "started_at": access.iso(row.started_at),
            "finished_at": access.iso(row.finished_at),
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
            "recorded_at": access.iso(r.created_at),
        }
