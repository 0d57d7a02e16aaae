"""How every part of the core reaches users and tasks and checks who may act on a task.

The accounts, tasks, routing and models parts of :class:`~werkbund.platform.service.PlatformService`
and the ledger's service (``platform/ledger/``) all read rows and check roles through these functions,
inside the caller's database session ``s``, so one rule is written once and none reaches into another
part's private methods.
"""
from __future__ import annotations

from sqlalchemy import inspect, select
from sqlalchemy.orm import object_session

from werkbund.platform.errors import AuthenticationFailed, InvalidInput, PermissionDenied, TaskNotFound
from werkbund.platform.tables import Membership, Task, User


def iso(value) -> str | None:
    """A stored time as the API shows it: ISO 8601 to the second, UTC, with a ``Z``."""
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


def user_row(s, name: str) -> User:
    row = s.scalar(select(User).where(User.name == name))
    if row is None:
        raise AuthenticationFailed(f"unknown user {name!r}")
    return row


def task_row(s, name: str, lock: bool = False) -> Task:
    """The task called ``name``; with ``lock``, its row locked until the transaction ends (PostgreSQL:
    the writers of one task, on any replica, take turns; SQLite has one writer at a time anyway)."""
    if not isinstance(name, str):
        raise InvalidInput("a task name must be a string")
    query = select(Task).where(Task.name == name)
    if lock and s.bind.dialect.name != "sqlite":
        query = query.with_for_update(of=Task)  # the task's row, not its creator's (loaded with it)
    row = s.scalar(query)
    if row is None:
        raise TaskNotFound(f"unknown task {name!r}")
    return row


def membership(row: Task, user: str) -> Membership | None:
    """``user``'s membership of the task ``row``, or None. One indexed query, not the task's whole member
    list: every request of every participant asks this, so reading all N members each time made a
    round cost O(N^2) (unless the list is loaded already, e.g. for the task's details)."""
    if "memberships" not in inspect(row).unloaded:  # loaded in this session: no query needed
        return next((m for m in row.memberships if m.user.name == user), None)
    return object_session(row).scalar(select(Membership).join(User, Membership.user_id == User.id)
                                      .where(Membership.task_id == row.id, User.name == user))


def require_creator(row: Task, caller: str, action: str) -> None:
    if row.creator.name != caller:
        raise PermissionDenied(f"only the creator of task {row.name!r} ({row.creator.name}) may {action} it")


def require_member_or_creator(row: Task, caller: str, action: str = "see the details of") -> None:
    if row.creator.name != caller and membership(row, caller) is None:
        raise PermissionDenied(f"only the creator and participants of task {row.name!r} may {action} it")
