"""The AMQP front of the platform core: one control request in, one reply out.

A request is an AMQP message on the durable request queue: the command in the ``type``
property, JSON parameters in the body (``put_model``: the model bytes in the body, the
parameters as JSON in the ``params`` header). Who asks is the ``user_id`` property, which
RabbitMQ checks against the user of the connection; nothing in the body can change it.
The reply has a ``status`` header (ok or error) and ``{"data": ...}`` or
``{"error": {code, message}}`` as its body (``get_model``: the bytes, with a ``meta`` header).

The front only translates, and keeps the broker in step with the core: after a task is
created, joined, left or deleted it declares or deletes the task's exchange and queues and
rewrites the permissions of the users concerned. Every rule stays in the core.
"""
from __future__ import annotations

import json
import logging
import uuid

from werkbund.platform import amqp_names as names
from werkbund.platform.broker_admin import BrokerAdmin
from werkbund.platform.command_schemas import check_json, parse_json
from werkbund.platform.commands import dispatch, dispatch_public
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
    def __init__(self, service: PlatformService, admin: BrokerAdmin, blobs=None, blob_url: str | None = None):
        self.service = service
        self.admin = admin
        self.blobs, self.blob_url = blobs, blob_url  # the blob store (platform/blob_store.py), if served

    def handle(self, caller: str | None, command: str | None, body: bytes, headers: dict,
               topology: Topology) -> tuple[dict, bytes]:
        """Answer one request: (reply headers, reply body). Never raises for a user's mistake."""
        try:
            if caller == names.registration_user(self.admin.vhost):
                return _ok(self._register(command, body, topology))
            caller = names.platform_user(caller, self.admin.vhost)
            if not caller:
                raise AuthenticationFailed("a request must carry the user_id property of a platform account")
            if command == "put_model":
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
                data, meta = self.service.get_model(caller, params.get("task"))
                if params.get("blob") and self.blobs is not None and len(data) > MODEL_BLOB_BYTES:
                    ref = self.blobs.put_bytes(params["task"], uuid.uuid4().hex, data, caller)
                    return {"status": "ok", "meta": json.dumps(meta), "blob": json.dumps(ref)}, b""
                return {"status": "ok", "meta": json.dumps(meta)}, data
            return _ok(self._command(caller, command, _json(body), topology))
        except WerkbundError as exc:
            return {"status": "error"}, json.dumps({"error": exc.to_dict()}).encode()

    def _register(self, command, body, topology) -> dict:
        if command != "register":
            raise PermissionDenied("the registration account may only register; connect as yourself")
        params = _json(body)
        data = dispatch_public(self.service, "register", params)
        self.admin.add_user(data["user"], params["password"])
        self.sync_user(data["user"])
        return data

    def _put_model_blob(self, caller: str, task, blob_id, meta: dict) -> dict:
        if self.blobs is None:
            raise Unavailable("this platform has no blob store; send the model in the message")
        uploader = self.blobs.meta(task, blob_id)["uploader"]
        self.service.check_blob_access(caller, task, "store", uploader)
        if uploader != caller:
            raise PermissionDenied("a model is stored from a blob its creator uploaded")
        result = self.service.put_model(caller, task, self.blobs.read_bytes(task, blob_id), meta)
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

    def sync_user(self, user: str) -> None:
        tasks = self.service.list_tasks(user)
        self.admin.grant(user, created=[t["name"] for t in tasks if t["role"] == "creator"],
                         joined=[t["name"] for t in tasks if t["role"] == "participant"])


def _ok(data) -> tuple[dict, bytes]:
    return {"status": "ok"}, json.dumps({"data": data}, default=str).encode()


def _json(raw) -> dict:
    value = parse_json(raw or b"{}")  # refuses JSON nested too deeply for Python's parser; dispatch checks the rest
    if not isinstance(value, dict):
        raise InvalidInput("command parameters must be a JSON object")
    return value
