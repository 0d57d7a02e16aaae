"""The AMQP front of the platform core: one control request in, one reply out.

A request is an AMQP message on the durable request queue: the command in the ``type``
property, JSON parameters in the body (``put_model``: the model bytes in the body, the
parameters as JSON in the ``params`` header; or a blob's id there, whose file the core copies into
its model folder in pieces). Who asks is the ``user_id`` property, which
RabbitMQ checks against the user of the connection; nothing in the body can change it. That user
is a session account ``<user>~<session id>@<vhost>`` issued by ``login`` (``broker_sessions.py``):
strangers reach the front only through the registration account, with ``register`` and ``login``.
The reply has a ``status`` header (ok or error) and ``{"data": ...}`` or
``{"error": {code, message}}`` as its body (``get_model``: the bytes, with a ``meta`` header).

The front only translates, and keeps the broker in step with the core: after a task is
created, joined, left or deleted it declares or deletes the task's exchange and queues and
rewrites the permissions of the users concerned. Every rule stays in the core.
"""
from __future__ import annotations

import json
import logging
import threading
import uuid

from werkbund.platform.amqp import names
from werkbund.platform.amqp.broker_admin import BrokerAdmin
from werkbund.platform.amqp.broker_sessions import BrokerSessions
from werkbund.platform.command_schemas import NoParams, check_json, parse_json, validate_params
from werkbund.platform.commands import dispatch, dispatch_public
from werkbund.platform.db import advisory_lock, lock_key
from werkbund.platform.errors import AuthenticationFailed, InvalidInput, PermissionDenied, Unavailable, WerkbundError
from werkbund.platform.service import PlatformService

log = logging.getLogger("werkbund.platform.amqp")


class Topology:
    """Declares and deletes a task's exchange and queues on one (platform-owned) channel."""

    def __init__(self, channel, queue_arguments: dict | None = None):
        self.channel = channel
        self.queue_arguments = queue_arguments  # {"x-queue-type": "quorum"} on a cluster (--queue-type)

    def declare_task(self, task: str) -> None:
        exchange, queue = names.task_exchange(task), names.aggregator_queue(task)
        self.channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        self.channel.queue_declare(queue, durable=True, arguments=self.queue_arguments)
        self.channel.queue_bind(queue, exchange, routing_key=names.TO_AGGREGATOR)

    def declare_participant(self, task: str, user: str) -> None:
        exchange, queue = names.task_exchange(task), names.participant_queue(task, user)
        self.declare_task(task)  # idempotent; makes sure the exchange exists
        self.channel.queue_declare(queue, durable=True, arguments=self.queue_arguments)
        self.channel.queue_bind(queue, exchange, routing_key=names.TO_ALL)
        self.channel.queue_bind(queue, exchange, routing_key=names.to_user(user))

    def delete_participant(self, task: str, user: str) -> None:
        self.channel.queue_delete(names.participant_queue(task, user))

    def delete_task(self, task: str, participants) -> None:
        for user in participants:
            self.delete_participant(task, user)
        self.channel.queue_delete(names.aggregator_queue(task))
        self.channel.exchange_delete(names.task_exchange(task))


MODEL_BLOB_BYTES = 8 * 1024 * 1024  # a larger final model goes through the blob store when the client can


class AmqpFront:
    def __init__(self, service: PlatformService, admin: BrokerAdmin, blobs=None, blob_url: str | None = None,
                 own_account: str | None = None):
        self.service = service
        self.admin = admin
        self.sessions = BrokerSessions(service, admin, own_account)  # a broker account per login session
        self.blobs, self.blob_url = blobs, blob_url  # the blob store (platform/storage/blobs.py), if served
        self._sync_locks = [threading.Lock() for _ in range(64)]  # sync_user's writers here, striped by user

    def handle(self, caller: str | None, command: str | None, body: bytes, headers: dict,
               topology: Topology, later: list | None = None) -> tuple[dict, bytes]:
        """Answer one request: (reply headers, reply body). Never raises for a user's mistake.
        ``later``: where to put what must wait until the reply is sent (done at once without it)."""
        after = [] if later is None else later
        try:
            if caller == names.registration_user(self.admin.vhost):
                return _ok(self._public(command, body))
            account = names.parse_account(caller, self.admin.vhost)
            if not account or account[1] is None:
                raise AuthenticationFailed("a request must carry the user_id property of a session account; "
                                           "log in again")
            caller, session = account
            self.sessions.check(caller, session)
            if command == "logout":
                return _ok(self._logout(caller, session, body, after))
            if command == "renew_session":
                validate_params(command, NoParams, _json(body))
                return _ok(self.sessions.renew(caller, session))
            if command == "put_model":
                if headers.get(names.PARAMS_BYTES) is not None:  # the parameters at the start of the body
                    try:
                        raw, body = names.split_prefix(body, headers[names.PARAMS_BYTES])
                    except ValueError as exc:
                        raise InvalidInput(f"put_model: {exc}") from None
                    params = _json(raw)
                else:  # a client from before the prefix: small metadata in the header
                    params = _json(headers.get("params") or b"{}")
                task, meta = params.get("task"), params.get("meta") or {}
                if not isinstance(meta, dict):
                    raise InvalidInput("model metadata must be a JSON object")
                check_json(params, "put_model parameter")
                if params.get("blob") is None:
                    return _ok(self.service.put_model(caller, task, bytes(body), meta))
                return _ok(self._put_model_blob(caller, task, params["blob"], meta))
            if command == "get_model":
                params = _json(body)
                handle, meta = self.service.open_model(caller, params.get("task"))
                with handle:  # the model file, streamed into a blob: never whole in memory
                    if params.get("blob") and self.blobs is not None and meta["size"] > MODEL_BLOB_BYTES:
                        ref = self.blobs.put(params["task"], uuid.uuid4().hex, handle, meta["size"], caller)
                        return _with_meta(params, meta, {"blob": json.dumps(ref)}, b"")
                    data = handle.read()  # a small model, or a client without the blob store
                return _with_meta(params, meta, {}, data)
            return _ok(self._command(caller, command, _json(body), topology))
        except WerkbundError as exc:
            return {"status": "error"}, json.dumps({"error": exc.to_dict()}).encode()
        finally:
            if later is None:
                run_all(after)

    def _public(self, command, body) -> dict:
        """``register`` (no broker account: the broker never gets the password) or ``login`` (a session
        and its own broker account, with the user's permissions written before the reply)."""
        if command not in ("register", "login"):
            raise PermissionDenied("the registration account may only register and log in; connect as yourself")
        params = _json(body)
        if command == "register":
            return dispatch_public(self.service, "register", params)
        data, account = self.sessions.login(params)
        self.sync_user(data["user"], accounts=[account])
        try:
            self.sessions.sweep()  # the accounts of expired sessions go
        except WerkbundError as exc:
            log.warning("could not sweep expired session accounts: %s", exc)
        return data

    def _logout(self, caller: str, session: str, body, after: list) -> dict:
        """Revoke the session; its broker account (and so its connections) goes once the reply is sent."""
        validate_params("logout", NoParams, _json(body))
        self.sessions.revoke(caller, session)
        after.append(lambda: self.admin.delete_broker_user(names.session_account(caller, session, self.admin.vhost)))
        return {"user": caller}

    def _put_model_blob(self, caller: str, task, blob_id, meta: dict) -> dict:
        if self.blobs is None:
            raise Unavailable("this platform has no blob store; send the model in the message")
        blob = self.blobs.meta(task, blob_id)
        self.service.check_blob_access(caller, task, "store", blob["uploader"])
        if blob["uploader"] != caller:
            raise PermissionDenied("a model is stored from a blob its creator uploaded")
        with open(self.blobs.path(task, blob_id), "rb") as handle:  # streamed into the model folder
            result = self.service.put_model_stream(caller, task, handle, meta, size=blob["size"])
        if result["sha256"] != blob["sha256"]:
            raise Unavailable(f"blob {blob_id} of task {task!r} is damaged on the platform's disk; upload the "
                              "model again")
        self.blobs.delete(task, blob_id)
        return result

    def _command(self, caller: str, command, params: dict, topology: Topology):
        if not isinstance(command, str):
            raise InvalidInput("a request must name its command in the type property")
        if command == "transfer_token" and self.blobs is None:
            raise Unavailable("this platform serves no blob store; large messages travel in chunks")
        before = None
        if command == "delete_task" and isinstance(params.get("task"), str):
            before = self.service.task_info(caller, params["task"])
        result = dispatch(self.service, caller, command, params)
        task = params.get("task")
        if command == "transfer_token":
            result["url"] = self.blob_url
        elif command == "create_task":
            topology.declare_task(task)
            self.sync_user(caller)
        elif command == "join_task":
            topology.declare_participant(task, caller)
            self.sync_user(caller)
        elif command == "leave_task":
            self.sync_user(caller)
            topology.delete_participant(task, caller)
        elif command == "delete_task":
            members = (before or {}).get("participants") or []
            for user in [caller, *members]:
                self.sync_user(user)
            topology.delete_task(task, members)
            if self.blobs is not None:
                self.blobs.delete_task(task)
        return result

    def sync_user(self, user: str, accounts: list[str] | None = None) -> None:
        """Write ``user``'s permissions on each of its session accounts (``accounts``: only these).

        One writer at a time per user, in this process and (PostgreSQL) across replicas: each reads the
        user's tasks after its own change was committed, so the last to write knows every change; two
        memberships changed at once could otherwise each write a list without the other's task."""
        key = lock_key("permissions", user)
        with self._sync_locks[key % len(self._sync_locks)], advisory_lock(self.service.db.engine, key):
            tasks = self.service.list_tasks(user)
            self.admin.grant(user, created=[t["name"] for t in tasks if t["role"] == "creator"],
                             joined=[t["name"] for t in tasks if t["role"] == "participant"], accounts=accounts)


def run_all(actions: list) -> None:
    """Run what waited for the reply; a failure is logged (the sweep tidies up after it)."""
    for action in actions:
        try:
            action()
        except WerkbundError as exc:
            log.warning("after a reply: %s", exc)


def _with_meta(params: dict, meta: dict, headers: dict, data: bytes) -> tuple[dict, bytes]:
    """``get_model``'s reply: the metadata before the model bytes (``meta_in_body``), or, for a
    client from before that, in a header, if it fits one frame."""
    text = json.dumps(meta).encode()
    if params.get("meta_in_body") is True:
        return {"status": "ok", names.META_BYTES: len(text), **headers}, text + bytes(data)
    if len(text) > names.MAX_HEADER_BYTES:
        raise InvalidInput(f"the model's metadata ({len(text)} bytes) does not fit an AMQP header; "
                           "update werkbund on this machine to fetch it")
    return {"status": "ok", "meta": text.decode(), **headers}, data


def _ok(data) -> tuple[dict, bytes]:
    return {"status": "ok"}, json.dumps({"data": data}, default=str).encode()


def _json(raw) -> dict:
    value = parse_json(raw or b"{}")  # refuses JSON nested too deeply for Python's parser; dispatch checks the rest
    if not isinstance(value, dict):
        raise InvalidInput("command parameters must be a JSON object")
    return value
