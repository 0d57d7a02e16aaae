"""Control commands done once, even when a client asks again after a platform crash.

A client sends one request id with each control call and the same id on every retry of it
(HTTP: the header ``X-Werkbund-Request-Id``; AMQP: the ``message_id`` property): 1 to 64 letters,
digits, ``-`` or ``_``. For a command that changes state (``RECORDED``) the platform runs the
command and writes its reply to ``request_replies`` (``models.RequestReply``, keyed by user and
request id) in ONE database transaction (``db.SHARED_SESSION``: every session the command opens
joins it, inside the ledger's writer lock), so the command is either done and its reply recorded,
or neither. The exception is ``delete_task`` (``RECORDED_AFTER``), recorded right after its own
commit: a crash between the two leaves it done without a record, and its retry answers
``task_not_found``. A repetition of a recorded (user, request id) answers the recorded reply and runs
nothing; one for another command is refused (``Conflict``).
Across processes (replicas of the platform on one PostgreSQL database) an advisory lock on the
(user, request id) makes a retry that reaches another replica wait for the first attempt's
transaction, and the unique key on the table decides between two that never met.

Only successes are recorded: a command that fails changed nothing (its transaction rolled back),
so its retry runs it again and answers what is true then. Read-only commands and
``transfer_token`` (a new token is harmless, and no secret is kept in the table) record nothing.
Records older than ``retention()`` (a day, or twice ``WERKBUND_RECONNECT_SECONDS`` if longer) are
deleted, at most once a minute per process, inside a recording transaction.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta

from sqlalchemy import delete, select, text
from sqlalchemy.exc import IntegrityError

from werkbund.platform.db import advisory_lock, lock_key
from werkbund.platform.errors import Conflict, InvalidInput
from werkbund.platform.tables import RequestReply, utcnow

log = logging.getLogger("werkbund.platform.requests")

HEADER = "X-Werkbund-Request-Id"
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# the control commands that change state: their replies are recorded (commands.COMMANDS has them all)
RECORDED = frozenset({
    "create_task", "delete_task", "join_task", "leave_task", "start_task", "record_round", "finish_task",
    "fail_task", "set_identity_key", "ledger_append", "ledger_cosign", "rotate_identity_key",
    "revoke_identity_key",
})
# recorded in a transaction of its own right after the command's: delete_task removes the task's
# model file once its row is gone, which must not happen before that deletion is committed
RECORDED_AFTER = frozenset({"delete_task"})
PRUNE_EVERY = 60.0  # seconds between two deletions of old records, per process


def recorded_command(command: str, params: dict) -> bool:
    """Whether the reply of ``command`` (with its checked ``params``) is recorded: a state-changing
    command is, except a ledger statement (``ledger_append`` with ``statement``), which the ledger
    answers again by itself, with the promise of where it already is (``platform/ledger/service.py``):
    a record would only cost two more queries and a row on every append, about a dozen a round."""
    return command in RECORDED and not (command == "ledger_append" and params.get("statement") is not None)


# the request id of the control call this thread (or task) is answering, set by a front
CURRENT: ContextVar = ContextVar("werkbund_request_id", default=None)
_pruned = {"at": float("-inf")}
_prune_lock = threading.Lock()


def check_request_id(value) -> str:
    if not isinstance(value, str) or not REQUEST_ID.fullmatch(value):
        shown = repr(value[:70]) if isinstance(value, str) else type(value).__name__
        raise InvalidInput(f"a request id ({HEADER}) has 1 to 64 letters, digits, '-' or '_'; got {shown}")
    return value


@contextmanager
def request_id(value: str | None):
    """The request id of the call answered inside the block (None: the client sent none)."""
    token = CURRENT.set(None if value is None else check_request_id(value))
    try:
        yield
    finally:
        CURRENT.reset(token)


def retention() -> timedelta:
    """How long a reply is kept: a day, or twice the clients' reconnect patience if that is longer."""
    try:
        patience = float(os.environ.get("WERKBUND_RECONNECT_SECONDS", "") or 0)
    except ValueError:
        patience = 0.0
    patience = patience if 0 <= patience < float("inf") else 0.0
    return max(timedelta(days=1), timedelta(seconds=2 * patience))


def recorded(service, user: str, request: str) -> dict | None:
    """The recorded reply ``{"command", "data"}`` to ``user``'s request, if there is one."""
    with service.db.session() as s:
        return _lookup(s, user, request)


def run_once(service, caller: str, command: str, request: str, run):
    """``run()`` (the command) and the record of its reply in one transaction; the recorded reply
    instead when this (caller, request id) was answered before."""
    found = None
    try:
        if command in RECORDED_AFTER:  # the command commits on its own, then its record
            with advisory_lock(service.db.engine, lock_key("request", caller, request)):  # across its two transactions
                found = recorded(service, caller, request)
                if found is None:
                    data = run()
                    with service.db.session() as s:
                        _record(s, caller, request, command, data)
        else:
            # the ledger's writer lock, then one session for everything
            with service.ledger.writing() as s, service.db.sharing(s):
                _lock(s, caller, request)
                found = _lookup(s, caller, request)
                if found is None:
                    _prune(s)
                    data = run()
                    _record(s, caller, request, command, data)
    except IntegrityError:  # another platform process recorded this request id first: its reply counts
        found = recorded(service, caller, request)
        if found is None:
            raise
    if found is None:
        return data
    if found["command"] != command:
        raise Conflict(f"request id {request} was used for {found['command']} already; "
                       f"send a new request id with each call")
    log.info("%s repeats request %s (%s); answering the recorded reply", caller, request, command)
    return found["data"]


def _lock(s, user: str, request: str) -> None:
    """Hold the (user, request id) until the transaction ends (PostgreSQL). Replicas of the platform
    answer one queue, so a retry can reach another replica while the first attempt still runs there
    (or while its killed process's transaction is rolled back): it waits here and then finds the
    recorded reply, instead of running the command a second time and answering, say, already_joined.
    In one process the ledger's writer lock already serialises them; SQLite has one writer at a time."""
    if s.bind.dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key("request", user, request)})


def _record(s, user: str, request: str, command: str, data) -> None:
    s.add(RequestReply(user_name=user, request_id=request, command=command,
                       reply={"data": json.loads(json.dumps(data, default=str))}))
    s.flush()


def _lookup(s, user: str, request: str) -> dict | None:
    row = s.execute(select(RequestReply.command, RequestReply.reply)
                    .where(RequestReply.user_name == user, RequestReply.request_id == request)).first()
    return None if row is None else {"command": row.command, "data": (row.reply or {}).get("data")}


def _prune(s) -> None:
    with _prune_lock:
        now = time.monotonic()
        if now - _pruned["at"] < PRUNE_EVERY:
            return
        _pruned["at"] = now
    s.execute(delete(RequestReply).where(RequestReply.created_at < utcnow() - retention()))
