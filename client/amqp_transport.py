"""AMQP transport to the cloud platform: control requests as RPC, task messages through the broker.

Every user connects to RabbitMQ as themselves; the broker checks the password and the
permissions the platform gave (see ``werkbund.platform.broker_admin``). Task messages are
published, persistent and confirmed, to the task's topic exchange; the aggregator reads its
queue and each participant its own, acknowledging a message only when it asks for the next
one, that is after it handled it.
"""
from __future__ import annotations

import json
import queue
import ssl
import time
import uuid

import pika

from werkbund.client.amqp_chunks import CHUNK_BYTES, Reassembler, split
from werkbund.client.amqp_session import AmqpSession
from werkbund.client.messages import MalformedMessage
from werkbund.client.transport import Transport
from werkbund.platform import amqp_names as names
from werkbund.platform.errors import AuthenticationFailed, InvalidInput, PermissionDenied, error_from_dict

CONTROL_TIMEOUT = 60.0
MODEL_TIMEOUT = 600.0


class AmqpTransport(Transport):
    def __init__(self, url: str | None, vhost: str | None = None, ca_certificate: str | None = None,
                 heartbeat: int = 30, registration_password: str = names.REGISTRATION_PASSWORD, timeout: float = CONTROL_TIMEOUT,
                 chunk_bytes: int = CHUNK_BYTES):
        if not url:
            raise InvalidInput("the cloud platform needs a broker URL (--url), e.g. amqp://broker:5672/werkbund")
        if not url.startswith(("amqp://", "amqps://")):
            raise InvalidInput(f"a cloud platform URL starts with amqp:// or amqps://, not {url!r}")
        self.url, self.vhost, self.ca_certificate = url, vhost, ca_certificate
        self.heartbeat, self.timeout = heartbeat, timeout
        self.broker_vhost = vhost or pika.URLParameters(url).virtual_host
        self.registration = (names.REGISTRATION_NAME, registration_password)
        self.user = None
        self.session: AmqpSession | None = None
        self._queues: dict[str, str] = {}
        self._pending_ack: dict[str, tuple] = {}
        self._reassembler = Reassembler()
        self.chunk_bytes = chunk_bytes

    def parameters(self, user: str, password: str) -> pika.ConnectionParameters:
        params = pika.URLParameters(self.url)
        params.credentials = pika.PlainCredentials(names.broker_user(user, self.broker_vhost), password)
        if self.vhost:
            params.virtual_host = self.vhost
        params.heartbeat = self.heartbeat
        params.blocked_connection_timeout = 300
        params.connection_attempts = 1
        if self.url.startswith("amqps://"):
            context = ssl.create_default_context(cafile=self.ca_certificate)
            params.ssl_options = pika.SSLOptions(context, params.host)
        return params

    # ------------------------------------------------------------ control
    def _rpc(self, session: AmqpSession, user: str, command: str, body: bytes, headers=None,
             timeout: float | None = None):
        corr = uuid.uuid4().hex
        properties = pika.BasicProperties(reply_to=names.REPLY_TO, correlation_id=corr,
                                          user_id=names.broker_user(user, self.broker_vhost),
                                          type=command, headers=headers or {}, content_type="application/json")
        reply_headers, reply = session.request(corr, body, properties, timeout or self.timeout)
        if reply_headers.get("status") == "ok" and command == "get_model":
            return reply, json.loads(reply_headers.get("meta") or "{}")
        try:
            decoded = json.loads(reply)
        except ValueError:
            raise InvalidInput(f"unexpected reply from the platform: {reply[:200]!r}") from None
        if reply_headers.get("status") != "ok":
            raise error_from_dict(decoded.get("error") or {})
        return decoded["data"]

    def register(self, user, password, org):
        session = AmqpSession(self.parameters(*self.registration))
        try:
            body = json.dumps({"user": user, "password": password, "org": org}).encode()
            return self._rpc(session, self.registration[0], "register", body)
        finally:
            session.close()

    def login(self, user, password):
        if not user:
            raise AuthenticationFailed("no user given")
        self.close()
        self.session = AmqpSession(self.parameters(user, password))
        self.user = user
        return self.call("whoami")

    def _session(self) -> AmqpSession:
        if self.session is None:
            raise AuthenticationFailed("not logged in")
        return self.session

    def call(self, command, **params):
        return self._rpc(self._session(), self.user, command, json.dumps(params).encode())

    # ------------------------------------------------------------ messages
    def send(self, task, to, body):
        session, exchange, key = self._session(), names.task_exchange(task), names.routing_key(to)
        pending = None  # one chunk in flight while the next is cut and hashed
        for headers, chunk in split(body, self.chunk_bytes):
            properties = pika.BasicProperties(user_id=names.broker_user(self.user, self.broker_vhost),
                                              delivery_mode=pika.DeliveryMode.Persistent,
                                              content_type="application/octet-stream", headers=headers or None)
            future = session.publish(exchange, key, chunk, properties, wait=False)
            if pending is not None:
                session.wait(pending)
            pending = future
        session.wait(pending)
        return {"delivered_to": to, "size": len(body)}

    def _queue_of(self, task: str) -> str:
        if task not in self._queues:
            role = self.call("task_info", task=task).get("role")
            if role == "creator":
                self._queues[task] = names.aggregator_queue(task)
            elif role == "participant":
                self._queues[task] = names.participant_queue(task, self.user)
            else:
                raise PermissionDenied(f"you are not a participant of task {task!r}")
        return self._queues[task]

    def receive(self, task, timeout):
        session = self._session()
        inbox = session.inbox(self._queue_of(task))
        previous = self._pending_ack.pop(task, None)
        if previous is not None:  # the caller asks for the next one: the previous one is handled
            session.ack(previous)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                account, body, tag, headers = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            sender = names.platform_user(account, self.broker_vhost) or ""
            if "wb-chunk-id" not in headers:
                self._pending_ack[task] = tag
                return sender, body
            try:
                whole = self._reassembler.add(sender, headers, body)
            except MalformedMessage as exc:
                session.ack(tag)
                return sender, f"malformed chunk: {exc}".encode()  # decodes as 'malformed' upstream
            if whole is None:
                session.ack(tag)  # copied into the reassembly buffer
                continue
            self._pending_ack[task] = tag  # the last chunk stands for the whole until it is handled
            return sender, whole

    # ------------------------------------------------------------ models
    def put_model(self, task, data, meta):
        headers = {"params": json.dumps({"task": task, "meta": meta})}
        return self._rpc(self._session(), self.user, "put_model", bytes(data), headers, MODEL_TIMEOUT)

    def get_model(self, task):
        return self._rpc(self._session(), self.user, "get_model", json.dumps({"task": task}).encode(),
                         timeout=MODEL_TIMEOUT)

    def close(self):
        if self.session is not None:
            for tag in self._pending_ack.values():
                self.session.ack(tag)
            self._pending_ack.clear()
            self.session.close()
            self.session = None
