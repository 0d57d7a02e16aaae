"""AMQP transport to the cloud platform: control requests as RPC, task messages through the broker.

Every user connects to RabbitMQ as themselves, never with their password: ``login`` goes through the
public registration account, the platform checks the password and issues a session, whose broker
account ``<user>~<session id>@<vhost>`` takes the session's token as its password. The client keeps
that token (not the password) to connect and reconnect; ``logout`` deletes the account. The broker
checks the token and the permissions the platform gave (see ``werkbund.platform.amqp.broker_sessions``). Task messages are
published, persistent and confirmed, to the task's topic exchange; the aggregator reads its
queue and each participant its own, acknowledging a message only when it asks for the next
one, that is after it handled it.

When the broker connection is lost (a broker restart), the session reconnects and the transport
repeats what was in flight: a control request under the same ``message_id`` (the platform answers
a repeated one from its memory instead of running it twice) and a task message under the same
transfer id (the receiver drops chunks it already has; the engine ignores a repeated message).

A message the broker refuses because the queue it goes to is full (the platform bounds every queue,
``werkbund platform serve --queue-max-messages/--queue-max-bytes``) fails with ``InboxFull``, as a 429
does over HTTP, naming the inbox and the limit. RabbitMQ refuses a message the same way when a quorum
queue has no leader for a moment (on a broker cluster, after the node that led it stopped), and AMQP
0-9-1 does not say which of the two it was. So a refused message or request goes again, under the same
transfer or request id, with backoff: for ``refused_seconds`` (5 s), or for ``RETRY_SECONDS`` once the
session reconnected in that time (a node went, and its queues are electing new leaders). A queue still
refusing then is full. One piece larger than the queue's byte bound is refused at once: it never fits.
A chunked message whose first chunks are queued already goes on likewise for ``RETRY_SECONDS`` while
the reader takes chunks out, so that no half message is left behind.

Large messages and models take the claim-check path when the platform serves a blob store
(``client/transports/amqp/blobs.py``): stored once, only a reference through the broker. Without one they
travel through the broker in checksummed chunks (``client/transports/amqp/chunks.py``). The grants to the
blob store, fetching a referenced message and deleting it once handled: ``claim_check.py``.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import time
import uuid

import pika

from werkbund.client.transports.amqp.blobs import BlobClient
from werkbund.client.transports.amqp.claim_check import BlobGrants, quietly
from werkbund.client.transports.amqp.chunks import CHUNK_BYTES, Reassembler, StreamedFrame, split
from werkbund.client.transports.amqp.session import AmqpSession, ConnectionLost
from werkbund.client.messages import MalformedFrame, MalformedMessage, frame_parts
from werkbund.client.transports.base import Transport
from werkbund.platform.amqp import names
from werkbund.platform.tls import client_context
from werkbund.platform.errors import (
    AuthenticationFailed, InboxFull, InvalidInput, NotFound, PermissionDenied, Unavailable, WerkbundError,
    error_from_dict,
)

CONTROL_TIMEOUT = 60.0
MODEL_TIMEOUT = 600.0
RETRY_SECONDS = 180.0  # how long to keep repeating work lost with the connection
REFUSED_SECONDS = 5.0  # how long a message the broker refused goes again (module docstring)
BLOB_THRESHOLD = 8 * 1024 * 1024  # larger messages and models go through the blob store, if there is one
# (WERKBUND_BLOB_THRESHOLD, in bytes, changes it)
RENEW_SECONDS = 3600.0  # a session in use is renewed this often (it lasts 12 hours from each renewal)
QUEUE_LIMIT_HEADERS = ("wb-queue-max-messages", "wb-queue-max-bytes")  # the platform's bound, in every reply

log = logging.getLogger("werkbund.client.amqp")


def retrying(work, seconds: float = RETRY_SECONDS, refused_for=None):
    """``work()``, repeated while it fails with ConnectionLost (the session reconnects meanwhile), and while
    the broker refuses it (InboxFull) for as many seconds as ``refused_for()`` says, if given: 0 raises the
    first refusal (module docstring)."""
    deadline = time.monotonic() + seconds
    refused_since, backoff = None, 0.1
    while True:
        try:
            return work()
        except ConnectionLost as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("%s; repeating it once the broker is back", exc)
            time.sleep(0.5)
        except InboxFull:
            now = time.monotonic()
            refused_since = refused_since or now
            if refused_for is None or now - refused_since >= refused_for():
                raise
            log.info("the broker refused a message (a full queue, or one electing a leader); "
                     "sending it again in %.1f s", backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


class BrokerParameters(pika.URLParameters):
    """pika's parameters, and the CA file they verify the broker with (named in errors)."""

    ca_certificate: str | None = None


class AmqpTransport(Transport):
    refused_seconds = REFUSED_SECONDS

    def __init__(self, url: str | None, vhost: str | None = None, ca_certificate: str | None = None,
                 heartbeat: int = 30, registration_password: str = names.REGISTRATION_PASSWORD,
                 timeout: float = CONTROL_TIMEOUT, chunk_bytes: int = CHUNK_BYTES, blob_threshold: int | None = None):
        if not url:
            raise InvalidInput("the cloud platform needs a broker URL (--url), e.g. amqp://broker:5672/werkbund")
        if not url.startswith(("amqp://", "amqps://")):
            raise InvalidInput(f"a cloud platform URL starts with amqp:// or amqps://, not {url!r}")
        self.url, self.vhost, self.ca_certificate = url, vhost, ca_certificate
        self.heartbeat, self.timeout = heartbeat, timeout
        self.broker_vhost = vhost or pika.URLParameters(url).virtual_host
        self.registration = (names.REGISTRATION_NAME, registration_password)
        self.user = None
        self.token = None  # the session's secret: the password of its broker account
        self.account = None  # the session account's name within the vhost, ``<user>~<session id>``
        self._renew_at = 0.0
        self.session: AmqpSession | None = None
        self._queues: dict[str, str] = {}
        self._pending_ack: dict[str, tuple] = {}
        self._reassembler = Reassembler()
        self.chunk_bytes = chunk_bytes
        if blob_threshold is None:
            try:
                blob_threshold = int(os.environ.get("WERKBUND_BLOB_THRESHOLD", BLOB_THRESHOLD))
            except ValueError:
                raise InvalidInput("WERKBUND_BLOB_THRESHOLD must be a number of bytes") from None
        self.blob_threshold = blob_threshold
        self.blobs = BlobGrants(lambda task: self.call("transfer_token", task=task), ca_certificate)
        self.queue_limits: tuple[int, int] | None = None  # (messages, bytes) per queue, as the platform says

    @property
    def broker_account(self) -> str | None:
        """The broker account this transport connects as (the ``user_id`` of what it publishes)."""
        return names.broker_user(self.account, self.broker_vhost) if self.account else None

    def parameters(self, user: str, password: str) -> pika.ConnectionParameters:
        """Connection parameters for broker account ``<user>@<vhost>`` (``user``: a session account's
        name, or the registration account's)."""
        params = BrokerParameters(self.url)
        params.credentials = pika.PlainCredentials(names.broker_user(user, self.broker_vhost), password)
        if self.vhost:
            params.virtual_host = self.vhost
        params.heartbeat = self.heartbeat
        params.blocked_connection_timeout = 300
        params.connection_attempts = 1
        if self.url.startswith("amqps://"):  # the broker's certificate: from ca_certificate, for this host name
            params.ssl_options = pika.SSLOptions(client_context(self.ca_certificate), params.host)
            params.ca_certificate = self.ca_certificate  # named in a verification failure (connection_error)
        return params

    # ------------------------------------------------------------ control
    def _rpc(self, session: AmqpSession, user: str, command: str, body: bytes, headers=None,
             timeout: float | None = None, retry: bool = True):
        request_id = uuid.uuid4().hex  # the same for every repetition of this request
        size = sum(len(str(k)) + len(str(v)) for k, v in (headers or {}).items())
        if size > names.MAX_HEADER_BYTES:  # the broker would close the connection, again on every retry
            raise InvalidInput(f"the {command} request's headers ({size} bytes) exceed what one AMQP frame "
                               f"carries ({names.MAX_HEADER_BYTES} bytes)")

        def attempt():
            corr = uuid.uuid4().hex
            properties = pika.BasicProperties(reply_to=names.REPLY_TO, correlation_id=corr, message_id=request_id,
                                              user_id=names.broker_user(user, self.broker_vhost),
                                              type=command, headers=headers or {}, content_type="application/json")
            return session.request(corr, body, properties, timeout or self.timeout)

        try:
            reply_headers, reply = (retrying(attempt, refused_for=lambda: self._refused_for(session, len(body)))
                                    if retry else attempt())
        except InboxFull:
            if self._never_fits(len(body)):
                raise InboxFull(f"the request ({len(body)} bytes) is larger than the platform's request queue "
                                f"takes ({self._limits_text()})") from None
            raise InboxFull(f"the platform's request queue is full ({self._limits_text()}): it is busy; "
                            "try again shortly") from None
        limits = tuple(reply_headers.get(name) for name in QUEUE_LIMIT_HEADERS)
        if all(isinstance(n, int) and not isinstance(n, bool) for n in limits):
            self.queue_limits = limits
        if reply_headers.get("status") == "ok" and command == "get_model":
            if reply_headers.get(names.META_BYTES) is None:
                return reply, json.loads(reply_headers.get("meta") or "{}"), reply_headers.get("blob")
            try:
                meta, data = names.split_prefix(reply, reply_headers[names.META_BYTES])
                return bytes(data), json.loads(meta), reply_headers.get("blob")
            except ValueError as exc:
                raise InvalidInput(f"unexpected model reply from the platform: {exc}") from None
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
        """Check the password with the platform (through the registration account) and connect with
        the session it issues; returns who the user is, the session token and its expiry."""
        if not user:
            raise AuthenticationFailed("no user given")
        self.close()
        session = AmqpSession(self.parameters(*self.registration))
        try:
            body = json.dumps({"user": user, "password": password}).encode()
            data = self._rpc(session, self.registration[0], "login", body)
        finally:
            session.close()
        self.user, self.token = data["user"], data["token"]
        return {**self.call("whoami"), "token": data["token"], "expires_at": data.get("expires_at")}

    def _session(self) -> AmqpSession:
        if self.session is None:
            if not self.token or not self.user:
                raise AuthenticationFailed("not logged in")
            # the token of this login, or one kept from an earlier login (``werkbund login``)
            self.account = names.session_name(self.user, names.session_id(self.token))
            self.session = AmqpSession(self.parameters(self.account, self.token))
            self._renew_at = time.monotonic() + RENEW_SECONDS
        elif time.monotonic() >= self._renew_at:  # in use: the session (and its broker account) lives on
            self._renew_at = time.monotonic() + RENEW_SECONDS
            try:
                self._rpc(self.session, self.account, "renew_session", b"{}")
            except (Unavailable, InvalidInput) as exc:
                log.warning("could not renew the session (%s); trying again later", exc)
                self._renew_at = time.monotonic() + 60.0
        return self.session

    def call(self, command, **params):
        session = self._session()
        return self._rpc(session, self.account, command, json.dumps(params).encode())

    def logout(self):
        """End the session on the platform: its broker account is deleted, so the token opens nothing."""
        try:
            if not self.token:
                return
            session = self._session()
            try:
                self._rpc(session, self.account, "logout", b"{}", retry=False)
            except ConnectionLost:
                pass  # the platform deleted the account, which closed this connection after the reply
        finally:
            self.close()
            self.token = self.account = None

    # ------------------------------------------------------------ messages
    def send_message(self, task, to, kind, payload, header, payload_sha256=None):
        """A large message is never built into a frame first: for the blob store, the frame's header
        and then its payload are uploaded from where they are (``frame_parts``); one too large for one
        chunk and not for the blob store is cut into chunks straight from its payload (``StreamedFrame``)."""
        view = memoryview(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else None
        if view is None or not view.c_contiguous or view.nbytes < self.chunk_bytes:
            return super().send_message(task, to, kind, payload, header, payload_sha256)  # one message, or odd
        blobs = self.blob_client(task) if view.nbytes > self.blob_threshold else None
        if blobs is not None:
            sent = self._send_blob(blobs, task, to, list(frame_parts(task, kind, view, payload_sha256=payload_sha256,
                                                                     **header)))
            if sent is not None:
                return sent
        try:
            frame = StreamedFrame(task, kind, payload, header, self.chunk_bytes)
        except ValueError:  # a header as large as a chunk (tiny chunks): the frame is built and split
            return super().send_message(task, to, kind, payload, header, payload_sha256)
        self._publish_chunks(task, to, frame.chunks)
        return {"delivered_to": to, "size": frame.size}

    def _publish_chunks(self, task: str, to: str, chunks) -> None:
        """Publish ``chunks(transfer)``, one in flight while the next is cut. After a lost connection, or
        a refusal once some chunks are queued, the chunks not yet confirmed go again (module docstring)."""
        session, exchange, key = self._session(), names.task_exchange(task), names.routing_key(to)
        transfer = uuid.uuid4().hex
        confirmed: set[int] = set()  # chunks the broker took
        largest = [0]  # the largest piece sent: one over the byte bound is never taken

        def confirm(index, future) -> bool:
            try:
                session.wait(future)
            except InboxFull:
                return False
            confirmed.add(index)
            return True

        def attempt():
            pending = None
            for index, (headers, chunk) in enumerate(chunks(transfer)):
                if index in confirmed:
                    continue
                properties = pika.BasicProperties(user_id=self.broker_account,
                                                  delivery_mode=pika.DeliveryMode.Persistent,
                                                  content_type="application/octet-stream", headers=headers or None)
                future = session.publish(exchange, key, chunk, properties, wait=False)
                largest[0] = max(largest[0], len(chunk))
                if pending is not None and not confirm(*pending):
                    confirm(index, future)  # in flight already: was it taken?
                    raise InboxFull("refused")
                pending = (index, future)
            if pending is not None and not confirm(*pending):
                raise InboxFull("refused")

        try:  # once some chunks are queued, the rest goes again for RETRY_SECONDS: no half message is left
            return retrying(attempt, refused_for=lambda: RETRY_SECONDS if confirmed else
                            self._refused_for(session, largest[0]))
        except InboxFull:
            if not confirmed:  # nothing of it is queued: refused, as a 429 over HTTP
                raise self._inbox_full(task, to, piece=largest[0]) from None
            raise self._inbox_full(task, to, f"; {len(confirmed)} chunks of this message are queued, the "
                                             f"rest was refused for {RETRY_SECONDS:.0f} s") from None

    def _refused_for(self, session: AmqpSession, piece: int) -> float:
        """How long a message whose largest piece has ``piece`` bytes goes again once refused (module docstring)."""
        if self._never_fits(piece):
            return 0.0
        return RETRY_SECONDS if session.reconnected_within(RETRY_SECONDS) else self.refused_seconds

    def _never_fits(self, piece: int) -> bool:
        """Whether one piece of ``piece`` bytes is more than a queue takes: even an empty one refuses it."""
        return bool(self.queue_limits) and piece > self.queue_limits[1]

    def _limits_text(self) -> str:
        if self.queue_limits is None:
            return "it holds as many messages or bytes as the platform allows"
        return f"at most {self.queue_limits[0]} messages and {self.queue_limits[1]} bytes wait in one queue"

    def _inbox_full(self, task: str, to: str, more: str = "", piece: int = 0) -> InboxFull:
        """The refusal a sender sees: which inbox, and the platform's bound."""
        inbox, reader = {"aggregator": ("the aggregator's inbox", "the aggregator"),
                         "all": ("a participant's inbox", "that participant")}.get(to, (f"{to}'s inbox", to))
        if self._never_fits(piece):
            return InboxFull(f"{inbox} in task {task!r} cannot take a message of {piece} bytes in one piece "
                             f"({self._limits_text()}); send it through the platform's blob store, or in smaller "
                             "parts")
        if to == "all":
            more += " (the participants whose inboxes had room got it)"
        return InboxFull(f"{inbox} in task {task!r} is full ({self._limits_text()}); the broker refused the message"
                         f"{more}; send again once {reader} has read some")

    def send(self, task, to, body):
        blobs = self.blob_client(task) if len(body) > self.blob_threshold else None
        if blobs is not None:
            sent = self._send_blob(blobs, task, to, [body])
            if sent is not None:
                return sent
        self._publish_chunks(task, to, lambda transfer: split(body, self.chunk_bytes, transfer))
        return {"delivered_to": to, "size": len(body)}

    def _send_blob(self, blobs: BlobClient, task: str, to: str, parts: list) -> dict | None:
        """The claim-check path: the frame (``parts``, bytes-likes in order) goes to the blob store and a
        reference through the broker; None where the blob store cannot be reached (send by the broker)."""
        session, exchange, key = self._session(), names.task_exchange(task), names.routing_key(to)
        size = sum(memoryview(part).nbytes for part in parts)
        try:
            blob_id = blobs.announce(task, size)
        except Unavailable as exc:
            log.warning("%s; sending the message through the broker instead", exc)
            self.blobs.forget(task)
            return None
        # the reference first: the receiver streams the blob while it is uploaded
        headers = {"wb-blob": blob_id, "wb-size": size, "wb-blob-readers": "all" if to == "all" else "one"}
        properties = pika.BasicProperties(user_id=self.broker_account,
                                          delivery_mode=pika.DeliveryMode.Persistent, headers=headers)
        try:
            retrying(lambda: session.publish(exchange, key, b"", properties))
        except InboxFull:
            quietly(blobs.delete, task, blob_id)
            raise self._inbox_full(task, to) from None
        ref = blobs.upload(task, parts, blob_id)
        return {"delivered_to": to, "size": size, "blob": ref["id"], "sha256": ref["sha256"]}

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
        queue_name = self._queue_of(task)
        inbox = retrying(lambda: session.inbox(queue_name))
        previous = self._pending_ack.pop(task, None)
        if previous is not None:  # the caller asks for the next one: the previous one is handled
            session.ack(previous)
            self.blobs.delete_handled(task)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                account, body, tag, headers = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            sender = names.platform_user(account, self.broker_vhost) or ""
            if "wb-blob" in headers:
                try:
                    whole = self.blobs.fetch(task, sender, headers)
                except NotFound as exc:  # handled and deleted before: a redelivery after a lost ack
                    log.info("skipping a message whose blob is gone: %s", exc)
                    session.ack(tag)
                    continue
                except Unavailable:
                    raise  # not acknowledged: the broker delivers it again
                except (MalformedMessage, WerkbundError) as exc:
                    session.ack(tag)
                    log.warning("malformed blob message from %s in %s: %s", sender, task, exc)
                    return sender, MalformedFrame(f"malformed blob message: {exc}")  # 'malformed' upstream
                self._pending_ack[task] = tag
                return sender, whole
            if "wb-chunk-id" not in headers:
                self._pending_ack[task] = tag
                return sender, body
            try:
                whole = self._reassembler.add(sender, headers, body)
            except MalformedMessage as exc:
                session.ack(tag)
                log.warning("malformed chunk from %s in %s: %s", sender, task, exc)
                return sender, MalformedFrame(f"malformed chunk: {exc}")  # decodes as 'malformed' upstream
            if whole is None:
                session.ack(tag)  # copied into the reassembly buffer
                continue
            self._pending_ack[task] = tag  # the last chunk stands for the whole until it is handled
            return sender, whole

    # ------------------------------------------------------------ models
    def put_model(self, task, data, meta):
        blobs = self.blob_client(task) if len(data) > self.blob_threshold else None
        params = {"task": task, "meta": meta}
        if blobs is not None:  # stored once in the blob store; the platform takes it from there
            params["blob"] = blobs.upload(task, data)["id"]
            data = b""
        # the parameters (the metadata grows with the rounds) open the body: headers must fit one frame
        head = json.dumps(params).encode()
        session = self._session()
        return self._rpc(session, self.account, "put_model", head + bytes(data), {names.PARAMS_BYTES: len(head)},
                         MODEL_TIMEOUT)

    def get_model(self, task):
        blobs = self.blob_client(task)
        params = {"task": task, "meta_in_body": True, **({"blob": True} if blobs is not None else {})}
        session = self._session()
        data, meta, ref = self._rpc(session, self.account, "get_model", json.dumps(params).encode(),
                                    timeout=MODEL_TIMEOUT)
        if ref:
            ref = json.loads(ref)
            if ref.get("sha256") != meta.get("sha256"):
                raise WerkbundError("the platform's copy of the model does not match the model's sha256")
            data = bytes(blobs.download(task, ref["id"], ref["size"], ref["sha256"])[0])
            quietly(blobs.delete, task, ref["id"])
        return data, meta

    # ------------------------------------------------------------ blobs
    def blob_client(self, task: str) -> BlobClient | None:
        """A client of the platform's blob store for ``task``, or None when the platform has none."""
        return self.blobs.client(task)

    def close(self):
        if self.session is not None:
            for tag in self._pending_ack.values():
                self.session.ack(tag)
            self.blobs.delete_handled()
            self._pending_ack.clear()
            self.session.close()
            self.session = None

