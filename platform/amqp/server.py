"""`werkbund platform serve`: worker threads, each with its own broker connection, answering requests.

A client that lost its connection repeats its request under the same ``message_id``. A state-changing
control command records its reply in the database, in the command's own transaction, keyed by (user,
message id) (``request_replies.py``): a repetition, also after this server was killed and started
again, or taken by another replica of it (several may consume the one request queue; docs/operations.md),
answers the recorded reply and does nothing twice. ``RecentReplies`` keeps the replies of the
last requests in memory too, so that a repetition arriving while the first is still being answered
waits for it (and repeatable requests such as ``put_model`` are answered once per process).
"""
from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections import OrderedDict
from urllib.parse import urlsplit

import pika

from werkbund.platform.amqp import names
from werkbund.platform.amqp.front import AmqpFront, Topology, run_all
from werkbund.platform.amqp.broker_admin import BrokerAdmin
from werkbund.platform.db import Database
from werkbund.platform.errors import InvalidInput, Unavailable, WerkbundError
from werkbund.platform.request_replies import RECORDED, recorded, request_id
from werkbund.platform.service import PlatformService
from werkbund.platform.tls import client_context, explain

log = logging.getLogger("werkbund.platform.amqp")
# every queue's bound by default: 16 senders' share of a local inbox (256 messages), two senders' bytes (2 GiB)
QUEUE_MAX_MESSAGES, QUEUE_MAX_BYTES = 4096, 4 * 1024**3
QUEUE_LIMIT_HEADERS = ("wb-queue-max-messages", "wb-queue-max-bytes")  # in every reply, for the clients' errors
SWEEP_SECONDS = 300.0  # how often the accounts of expired sessions are looked for (besides at each login)


def default_management_url(broker_url: str) -> str:
    parts = urlsplit(broker_url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    userinfo = f"{parts.username or 'guest'}:{parts.password or 'guest'}@"
    return f"{scheme}://{userinfo}{parts.hostname or '127.0.0.1'}:{15671 if scheme == 'https' else 15672}"


class RecentReplies:
    """Replies to the last ``size`` requests by (user, message id); a repetition waits for the first."""

    def __init__(self, size: int = 4096):
        self.size = size
        self.lock = threading.Lock()
        self.entries: OrderedDict[tuple, dict] = OrderedDict()

    def claim(self, key) -> tuple[bool, dict]:
        """(True, a new entry) for the first request with ``key``; (False, its entry) for a repetition."""
        with self.lock:
            if key in self.entries:
                return False, self.entries[key]
            entry = self.entries[key] = {"done": threading.Event(), "reply": None}
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
            return True, entry

    def forget(self, key, entry: dict) -> None:
        with self.lock:
            if self.entries.get(key) is entry:
                del self.entries[key]
        entry["done"].set()  # a repetition waiting on it answers with an error; the client asks again

    @staticmethod
    def settle(entry: dict, reply) -> None:
        entry["reply"] = reply
        entry["done"].set()


class AmqpPlatformServer:
    """The platform core behind a RabbitMQ broker."""

    def __init__(self, broker_url: str, db_url: str, management_url: str | None = None, workers: int = 4,
                 blob_dir: str | None = None, blob_host: str = "127.0.0.1", blob_port: int | None = None,
                 blob_url: str | None = None, blob_certificate: str | None = None, blob_key: str | None = None,
                 broker_ca: str | None = None, queue_type: str = "classic",
                 queue_max_messages: int = QUEUE_MAX_MESSAGES, queue_max_bytes: int = QUEUE_MAX_BYTES):
        self.parameters = pika.URLParameters(broker_url)
        self.parameters.heartbeat = 30
        self.broker_ca = broker_ca
        if queue_type not in ("classic", "quorum"):
            raise InvalidInput(f"unknown queue type {queue_type!r}; use classic or quorum")
        # quorum queues are replicated across a cluster's nodes; the type is fixed when a queue is declared
        self.queue_arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else None
        for value, option in ((queue_max_messages, "--queue-max-messages"), (queue_max_bytes, "--queue-max-bytes")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{option} must be a whole number of at least 1, not {value!r}")
        self.queue_limits = (queue_max_messages, queue_max_bytes)  # every queue's bound (a broker policy)
        if broker_url.startswith("amqps://"):  # verify the broker's certificate, for its host name
            self.parameters.ssl_options = pika.SSLOptions(client_context(broker_ca), self.parameters.host)
        self.vhost = self.parameters.virtual_host
        self.admin = BrokerAdmin(management_url or default_management_url(broker_url), self.vhost,
                                 ca_certificate=broker_ca)
        self.service = PlatformService(Database(db_url))
        self.blob_server = None
        if blob_port is not None:  # the claim-check path for large messages and models
            from werkbund.platform.amqp.blob_server import BlobServer
            from werkbund.platform.storage.blobs import BlobStore

            self.blob_server = BlobServer(self.service, BlobStore(blob_dir), blob_host, blob_port, blob_url,
                                          blob_certificate, blob_key)
        self.front = AmqpFront(self.service, self.admin, self.blob_server and self.blob_server.store,
                               self.blob_server and self.blob_server.url,
                               own_account=self.parameters.credentials.username)
        self.workers = workers
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.recent = RecentReplies()

    def setup(self) -> None:
        """Vhost, permissions of the platform and of the registration account, the request queue."""
        self.admin.setup(self.parameters.credentials.username)
        self.admin.set_queue_limits(*self.queue_limits)
        with self._connect() as connection:
            channel = connection.channel()
            channel.exchange_declare(names.REQUEST_EXCHANGE, exchange_type="direct", durable=True)
            channel.queue_declare(names.REQUEST_QUEUE, durable=True, arguments=self.queue_arguments)
            channel.queue_bind(names.REQUEST_QUEUE, names.REQUEST_EXCHANGE, routing_key=names.REQUEST_KEY)
        # the accounts of expired sessions go, and those of the old form, which took the user's password
        for user in self.front.sessions.sweep():  # permissions follow the database, also after a restore
            if self._known(user):
                self.front.sync_user(user)

    def _known(self, user: str) -> bool:
        try:
            self.service.whoami(user)
            return True
        except Exception:
            return False

    def sweep(self) -> None:
        """Delete the broker accounts of expired sessions (also done at every login)."""
        try:
            self.front.sessions.sweep()
        except Exception as exc:  # noqa: BLE001 - the broker's management API may be down for a while
            log.warning("could not sweep expired session accounts: %r", exc)

    def _connect(self) -> pika.BlockingConnection:
        try:
            return pika.BlockingConnection(self.parameters)
        except pika.exceptions.AMQPConnectionError as exc:
            where = f"{self.parameters.host}:{self.parameters.port}"
            tls = explain(exc, "broker", where, self.broker_ca)
            if tls:
                raise Unavailable(tls) from None
            raise Unavailable(f"cannot connect to the broker at {self.parameters.host}:{self.parameters.port}"
                              f" (vhost {self.vhost}): {exc!r}") from None

    def start(self) -> None:
        if self.blob_server is not None:
            self.blob_server.start()
        for i in range(self.workers):
            thread = threading.Thread(target=self._worker, name=f"amqp-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def serve_forever(self) -> None:
        self.start()
        while not self._stop.wait(SWEEP_SECONDS):
            self.sweep()

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------- workers
    def _worker(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                connection = self._connect()
                backoff = 1.0
                channel = connection.channel()
                channel.basic_qos(prefetch_count=1)
                channel.basic_consume(names.REQUEST_QUEUE, self._on_request)
                while not self._stop.is_set():
                    connection.process_data_events(time_limit=1.0)
                connection.close()
            except Exception as exc:  # noqa: BLE001 - AMQPError, Unavailable, pika errors after a loss
                log.warning("broker connection lost (%r); reconnecting in %.0f s", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _on_request(self, channel, method, properties, body) -> None:
        started = time.monotonic()
        first, entry = True, None
        if properties.message_id and properties.type != "get_model":  # get_model: repeatable, large reply
            first, entry = self.recent.claim((properties.user_id, properties.message_id))
        later: list = []  # what waits for the reply (deleting the account of a session that logs out)
        if first:
            try:
                headers, reply = self._handle(channel, properties, body, later)
            except pika.exceptions.AMQPConnectionError:  # the connection went mid-way: the repetition runs it again
                if entry is not None:
                    self.recent.forget((properties.user_id, properties.message_id), entry)
                raise
            if entry is not None:
                self.recent.settle(entry, (headers, reply))
        else:
            log.info("%s repeats request %s; answering the first reply", properties.user_id, properties.message_id)
            entry["done"].wait(600)
            headers, reply = entry["reply"] or ({"status": "error"}, _INTERNAL_ERROR)
        if properties.reply_to:
            headers = {**headers, QUEUE_LIMIT_HEADERS[0]: self.queue_limits[0],  # named when a queue refuses
                       QUEUE_LIMIT_HEADERS[1]: self.queue_limits[1]}
            channel.basic_publish("", properties.reply_to, reply,
                                  pika.BasicProperties(correlation_id=properties.correlation_id, headers=headers))
        channel.basic_ack(method.delivery_tag)
        run_all(later)
        log.info("%s %s -> %s (%.0f ms)", properties.user_id, properties.type, headers.get("status"),
                 (time.monotonic() - started) * 1000)

    def _handle(self, channel, properties, body, later: list) -> tuple[dict, bytes]:
        command = properties.type
        durable = properties.message_id if command in RECORDED else None  # done once per message id
        try:
            with request_id(durable):  # dispatch records the reply with the command (request_replies.py)
                if command == "delete_task" and durable is not None:
                    # answered from the record: the front reads the task first, which is gone after it ran
                    user = names.platform_user(properties.user_id, self.admin.vhost)
                    found = recorded(self.service, user, durable) if user else None
                    if found is not None and found["command"] == command:
                        log.info("%s repeats request %s (%s); answering the recorded reply", user, durable, command)
                        return {"status": "ok"}, json.dumps({"data": found["data"]}).encode()
                return self.front.handle(properties.user_id, command, body,
                                         properties.headers or {}, Topology(channel, self.queue_arguments), later)
        except WerkbundError as exc:  # a malformed message id
            return {"status": "error"}, json.dumps({"error": exc.to_dict()}).encode()
        except pika.exceptions.AMQPConnectionError:
            raise
        except Exception:  # a bug, not a user's mistake: log it, answer, keep serving
            log.error("request %s from %s failed:\n%s", properties.type, properties.user_id, traceback.format_exc())
            return {"status": "error"}, _INTERNAL_ERROR


_INTERNAL_ERROR = b'{"error": {"code": "error", "message": "internal platform error"}}'
