"""The platform a simulation runs on: the real core (``PlatformService`` over SQLite) and its
mailboxes, in this process, with the three things a thousand virtual companies need.

1. **Accounts without argon2.** :meth:`SimPlatform.add_virtual_users` writes the virtual users in
   one transaction with a password hash that no password matches (``!simulated``: argon2 refuses
   it as malformed), so nobody can ever log in as one through ``login``; the simulation acts for
   them through a :class:`SimTransport` whose user it sets itself (an in-process session, no
   token). The real ``register`` and ``login`` are not touched and keep their 0.2 s argon2id.
2. **One enrolment for all.** :meth:`SimPlatform.enroll` joins every virtual participant in one
   transaction with the checks of ``join_task`` (task CREATED, not full, not the creator, not
   twice, the schema agreed) and the platform-signed ``joined`` ledger entry for each, instead of
   N transactions that each reload every membership (quadratic: 15 s for 1,000).
3. **Routes looked up once.** The core decides who may send to whom (``route_message``) and which
   inbox a user reads (``inbox_of``); both depend only on the task's status and members, which
   in a simulation change only through the calls below. The transports remember each answer
   until a command that changes status or members goes through, so a round costs one routing
   decision for the broadcast, not one database read of 1,000 memberships per update. A virtual
   participant's route to the aggregator is the core's rule applied to the members it enrolled.

Messages to virtual participants do not wait in inboxes for a thread to read them: the
:class:`DispatchingMailboxes` hands them to the backend (``pool.py`` or ``ray_backend.py``), which
runs the participant's handler on a worker. Messages to the aggregator go to the real mailboxes.
"""
from __future__ import annotations

import threading

from sqlalchemy import select

from werkbund.client.transports.inproc import InProcPlatform, InProcTransport
from werkbund.platform.commands import dispatch
from werkbund.platform.definition import check_name
from werkbund.platform.errors import (AlreadyJoined, InvalidInput, InvalidState, PermissionDenied, TaskFull,
                                      UserExists)
from werkbund.platform.join_schema import check_join_schema
from werkbund.platform.storage.mailboxes import Mailboxes
from werkbund.platform.tables import Membership, User
from werkbund.platform import access
from werkbund.platform.routing import AGGREGATOR_INBOX
from werkbund.platform.tasks import canonical_sha256

# argon2's verify raises InvalidHashError for this, so check_password is False for every password
NO_LOGIN_HASH = "!simulated: no password opens this account"
# commands after which the task's status or members may differ: cached routes are dropped
CHANGES_ROUTES = frozenset({"start_task", "finish_task", "fail_task", "delete_task", "join_task", "leave_task"})


class DispatchingMailboxes(Mailboxes):
    """The platform's mailboxes; messages to a virtual participant go to its backend instead."""

    def __init__(self):
        super().__init__()
        self._virtual: dict[str, tuple[frozenset, object]] = {}  # task -> (participant names, backend)

    def attach(self, task: str, names, backend) -> None:
        self._virtual[task] = (frozenset(names), backend)

    def detach(self, task: str) -> None:
        self._virtual.pop(task, None)

    def put(self, task: str, inboxes: list[str], sender: str, body: bytes) -> None:
        virtual = self._virtual.get(task)
        if virtual is None:
            return super().put(task, inboxes, sender, body)
        names, backend = virtual
        sites = [i for i in inboxes if i in names]
        rest = [i for i in inboxes if i not in names] if len(sites) != len(inboxes) else []
        if rest:
            super().put(task, rest, sender, body)
        if sites:
            backend.deliver(task, sites, sender, body)


class SimPlatform(InProcPlatform):
    """The in-process platform core with virtual users, bulk enrolment and remembered routes."""

    def __init__(self, db_url: str = "sqlite://"):
        super().__init__(db_url)
        self.mailboxes = DispatchingMailboxes()
        self._lock = threading.Lock()
        self._routes: dict[tuple, list[str]] = {}
        self._inboxes: dict[tuple, str] = {}
        self._status: dict[str, str] = {}  # task -> status, as the last lifecycle command answered
        self._enrolled: dict[str, frozenset] = {}  # task -> the virtual participants enrolled in it

    # ------------------------------------------------------------------------- accounts
    def add_virtual_users(self, names: list[str], org: str = "virtual company") -> None:
        """Create accounts that cannot log in (no argon2: the hash matches no password), in one transaction."""
        for name in names:
            check_name("user", name)
        if len(set(names)) != len(names):
            raise InvalidInput("virtual user names must differ")
        with self.service.db.session() as s:
            taken = s.scalars(select(User.name).where(User.name.in_(names))).all()
            if taken:
                raise UserExists(f"user {taken[0]!r} already exists")
            s.add_all([User(name=name, org=org, password_hash=NO_LOGIN_HASH) for name in names])

    def transport(self, user: str) -> "SimTransport":
        """A transport acting as ``user``: an in-process session, given by the simulation, not a login."""
        return SimTransport(self, user)

    # ------------------------------------------------------------------------ enrolment
    def enroll(self, task: str, members: list[tuple[str, dict | None]]) -> None:
        """Join every (user, schema) to ``task`` in one transaction, with join_task's checks and a
        platform-signed ``joined`` entry per member on the task's ledger."""
        service = self.service
        with service.ledger.writing() as s:
            row = access.task_row(s, task, lock=True)
            if row.status != "CREATED":
                raise InvalidState(f"task {task!r} is {row.status}; only CREATED tasks can be joined")
            limit = row.definition["max_participants"]
            if len(row.memberships) + len(members) > limit:
                raise TaskFull(f"task {task!r} takes {limit} participants; {len(row.memberships)} joined, "
                               f"{len(members)} more asked")
            names = [name for name, _ in members]
            users = {u.name: u for u in s.scalars(select(User).where(User.name.in_(names)))}
            present = {m.user_id for m in row.memberships}
            agreed = None  # all schemas agree with the first one checked against the task: checking each
            for name, schema in members:  # new one against it stands for checking it against all members
                user = users.get(name)
                if user is None:
                    raise InvalidInput(f"unknown user {name!r}")
                if user.id == row.creator_id:
                    raise PermissionDenied(f"{name} created task {task!r}; the creator aggregates and does not join")
                if user.id in present:
                    raise AlreadyJoined(f"{name} has already joined task {task!r}")
                if schema is not None and not isinstance(schema, dict):
                    raise InvalidInput("a data schema must be a JSON object")
                if schema is not None:
                    key = tuple(repr(schema.get(k)) for k in ("kind", "features", "target"))
                    if agreed is None:
                        check_join_schema(row, schema)
                        agreed = key
                    elif key != agreed:
                        check_join_schema(row, schema)  # raises SchemaMismatch with the reason
                row.memberships.append(Membership(user=user, schema=schema))
                present.add(user.id)
            s.flush()
            for name, schema in members:
                service.ledger.platform_append_in(s, task, "joined", {
                    "user": name, "public_key": service.ledger.key_of(s, name),
                    "schema_sha256": canonical_sha256(schema) if schema else None})
        with self._lock:
            self._enrolled[task] = self._enrolled.get(task, frozenset()) | frozenset(names)
            self._forget(task)

    # -------------------------------------------------------------------------- routes
    def route(self, caller: str, task: str, to: str) -> list[str]:
        """``service.route_message``, remembered until the task's status or members change."""
        key = (caller, task, to)
        routes = self._routes.get(key)
        if routes is None:
            if (to == "aggregator" and self._status.get(task) == "STARTED"
                    and caller in self._enrolled.get(task, ())):
                routes = [AGGREGATOR_INBOX]  # the core's rule for a member of a STARTED task
            else:
                routes = self.service.route_message(caller, task, to)
            with self._lock:
                self._routes[key] = routes
        return routes

    def inbox(self, caller: str, task: str) -> str:
        key = (caller, task)
        inbox = self._inboxes.get(key)
        if inbox is None:
            inbox = self.service.inbox_of(caller, task)
            with self._lock:
                self._inboxes[key] = inbox
        return inbox

    def after_command(self, command: str, params: dict, result) -> None:
        if command in CHANGES_ROUTES:
            task = params.get("task")
            with self._lock:
                if command == "delete_task":
                    self._status.pop(task, None)
                    self._enrolled.pop(task, None)
                elif isinstance(result, dict) and "status" in result:
                    self._status[task] = result["status"]
                self._forget(task)

    def _forget(self, task: str) -> None:
        self._routes = {k: v for k, v in self._routes.items() if k[1] != task}
        self._inboxes = {k: v for k, v in self._inboxes.items() if k[1] != task}

    def send_as(self, caller: str, task: str, to: str, body: bytes) -> dict:
        """Deliver a frame from ``caller`` the way the in-process transport does."""
        inboxes = self.route(caller, task, to)
        self.mailboxes.put(task, inboxes, caller, bytes(body))
        return {"delivered_to": len(inboxes), "size": len(body)}


class SimTransport(InProcTransport):
    """The in-process transport for a user the simulation acts for (no login: the session is given)."""

    def __init__(self, platform: SimPlatform, user: str):
        super().__init__(platform)
        self.user = user

    def register(self, user, password, org):
        raise InvalidState("a simulation makes its users with SimPlatform.add_virtual_users")

    def login(self, user, password):
        raise InvalidState("a simulation's users cannot log in; the simulation acts for them")

    def call(self, command, **params):
        result = dispatch(self._service, self._caller(), command, params)
        if command == "delete_task":
            self.platform.mailboxes.drop_task(result["task"])
        self.platform.after_command(command, params, result)
        return result

    def send(self, task, to, body):
        return self.platform.send_as(self._caller(), task, to, body)

    def receive(self, task, timeout):
        message = self.platform.mailboxes.get(task, self.platform.inbox(self._caller(), task), timeout)
        return None if message is None else (message.sender, message.body)
