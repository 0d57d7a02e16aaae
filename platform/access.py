"""How every part of the core reaches users and tasks and checks who may act on a task.

The accounts, tasks, routing and models parts of :class:`~werkbund.platform.service.PlatformService`
and the ledger's service (``platform/ledger/``) all read rows and check roles through these functions,
inside the caller's database session ``s``, so one rule is written once and none reaches into another
part's private methods.
"""
from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import bindparam, inspect, select
from sqlalchemy.orm import aliased, object_session

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


class TaskRole(NamedTuple):
    """What a message's route needs of a task: its status, its creator's name, whether the user is a member."""
    status: str
    creator: str
    member: bool


_creator, _member = aliased(User), aliased(User)
# one statement, built once (its cache key too): every message and every long poll of every participant asks it
_ROLE = (select(Task.status, _creator.name,
                select(Membership.id).join(_member, Membership.user_id == _member.id)
                .where(Membership.task_id == Task.id, _member.name == bindparam("user")).exists())
         .join(_creator, Task.creator_id == _creator.id).where(Task.name == bindparam("task")))


_MEMBERS = (select(_member.name).join(Membership, Membership.user_id == _member.id).join(Task, Membership.task_id == Task.id)
            .where(Task.name == bindparam("task")).order_by(Membership.id))


def member_names(s, name: str) -> list[str]:
    """The names of the task's participants in the order they joined (a broadcast's inboxes), in one query
    (``s``: a session, or a connection of ``Database.reading``, as for ``task_role``)."""
    return list(s.scalars(_MEMBERS, {"task": name}))


def task_role(s, name: str, user: str) -> TaskRole:
    """The status and creator of the task called ``name`` and whether ``user`` is a member of it, in one
    query that reads neither the definition nor any schema (the rows ``task_row`` and ``membership``
    load): the check of every message and long poll."""
    if not isinstance(name, str):
        raise InvalidInput("a task name must be a string")
    row = s.execute(_ROLE, {"task": name, "user": user}).first()
    if row is None:
        raise TaskNotFound(f"unknown task {name!r}")
    return TaskRole(row[0], row[1], bool(row[2]))


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
