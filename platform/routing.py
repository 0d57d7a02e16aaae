"""The routing part of the platform core: who may send to whom in a task, and who may move its large data.

A mixin of :class:`~werkbund.platform.service.PlatformService`; every front asks these rules before it
delivers a message or lets a blob through.
"""
from __future__ import annotations

from datetime import timedelta

from werkbund.platform import access, passwords
from werkbund.platform.errors import InvalidInput, InvalidState, PermissionDenied
from werkbund.platform.tables import SessionToken, utcnow

AGGREGATOR_INBOX = "@aggregator"
TRANSFER_TOKEN_LIFETIME = timedelta(minutes=30)


class Routing:
    """Message routes, inboxes and short-lived tokens for the blob store."""

    def transfer_token(self, caller: str, task: str) -> dict:
        """A short-lived token for the platform's blob store (large task messages, models) of this task
        only, for a caller whom a front already authenticated (the broker, on the cloud platform); it is
        no session token: the control commands refuse it."""
        self.check_blob_access(caller, task, "upload")
        token, expires = passwords.new_token(), utcnow() + TRANSFER_TOKEN_LIFETIME
        with self.db.session() as s:
            s.add(SessionToken(token_sha256=passwords.token_digest(token, f"blob:{task}"),
                               user_id=access.user_row(s, caller).id, expires_at=expires))
        return {"task": task, "token": token, "expires_at": access.iso(expires)}

    def check_blob_access(self, caller: str, task: str, action: str, uploader: str | None = None) -> None:
        """Large task data in the blob store: the task's creator and participants upload; the creator
        reads and deletes all of it, a participant only its own and what the creator uploaded
        (broadcasts, messages to it, the final model), just as with the task's queues."""
        with self.db.session() as s:
            row = access.task_row(s, task)
            access.require_member_or_creator(row, caller, "move data of")
            if action != "upload" and caller != row.creator.name and uploader not in (caller, row.creator.name):
                raise PermissionDenied(f"participants of task {task!r} may not {action} another participant's data")

    # ------------------------------------------------------ message routing
    def route_message(self, caller: str, task: str, to: str) -> list[str]:
        """The inboxes a message from ``caller`` to ``to`` ('aggregator', 'all' or a participant) goes to."""
        with self.db.reading() as s:
            role = access.task_role(s, task, caller)
            if role.status != "STARTED":
                raise InvalidState(f"task {task!r} is {role.status}; messages flow only while it runs")
            if role.creator == caller:  # (only a broadcast reads every member)
                if to == "all":
                    return access.member_names(s, task)
                if isinstance(to, str) and access.task_role(s, task, to).member:
                    return [to]
                raise InvalidInput(f"{to!r} is not a participant of task {task!r}")
            if not role.member:
                raise PermissionDenied(f"you are not a participant of task {task!r}")
            if to != "aggregator":
                raise PermissionDenied("participants send only to the task's aggregator")
            return [AGGREGATOR_INBOX]

    def inbox_of(self, caller: str, task: str) -> str:
        """The inbox that ``caller`` reads in ``task``."""
        with self.db.reading() as s:
            role = access.task_role(s, task, caller)
            if role.creator == caller:
                return AGGREGATOR_INBOX
            if not role.member:
                raise PermissionDenied(f"you are not a participant of task {task!r}")
            return caller
