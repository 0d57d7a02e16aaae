"""`werkbund platform serve`: worker threads, each with its own broker connection, answering requests."""
from __future__ import annotations

import logging
import threading
import time
import traceback
from urllib.parse import urlsplit

import pika

from werkbund.platform import amqp_names as names
from werkbund.platform.amqp_front import AmqpFront, Topology
from werkbund.platform.broker_admin import BrokerAdmin
from werkbund.platform.db import Database
from werkbund.platform.errors import Unavailable
from werkbund.platform.service import PlatformService

log = logging.getLogger("werkbund.platform.amqp")


def default_management_url(broker_url: str) -> str:
    parts = urlsplit(broker_url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    userinfo = f"{parts.username or 'guest'}:{parts.password or 'guest'}@"
    return f"{scheme}://{userinfo}{parts.hostname or '127.0.0.1'}:{15671 if scheme == 'https' else 15672}"


class AmqpPlatformServer:
    """The platform core behind a RabbitMQ broker."""

    def __init__(self, broker_url: str, db_url: str, management_url: str | None = None, workers: int = 4):
        self.parameters = pika.URLParameters(broker_url)
        self.parameters.heartbeat = 30
        self.vhost = self.parameters.virtual_host
        self.admin = BrokerAdmin(management_url or default_management_url(broker_url), self.vhost)
        self.service = PlatformService(Database(db_url))
        self.front = AmqpFront(self.service, self.admin)
        self.workers = workers
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def setup(self) -> None:
        """Vhost, permissions of the platform and of the registration account, the request queue."""
        self.admin.setup(self.parameters.credentials.username)
        with self._connect() as connection:
            channel = connection.channel()
            channel.exchange_declare(names.REQUEST_EXCHANGE, exchange_type="direct", durable=True)
            channel.queue_declare(names.REQUEST_QUEUE, durable=True)
            channel.queue_bind(names.REQUEST_QUEUE, names.REQUEST_EXCHANGE, routing_key=names.REQUEST_KEY)
            for account in self.admin.broker_users():  # permissions follow the database, also after a restore
                user = names.platform_user(account, self.vhost)
                if user != names.REGISTRATION_NAME and self._known(user):
                    self.front.sync_user(user)

    def _known(self, user: str) -> bool:
        try:
            self.service.whoami(user)
            return True
        except Exception:
            return False

    def _connect(self) -> pika.BlockingConnection:
        try:
            return pika.BlockingConnection(self.parameters)
        except pika.exceptions.AMQPConnectionError as exc:
            raise Unavailable(f"cannot connect to the broker at {self.parameters.host}:{self.parameters.port}"
                              f" (vhost {self.vhost}): {exc!r}") from None

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._worker, name=f"amqp-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def serve_forever(self) -> None:
        self.start()
        while not self._stop.wait(1.0):
            pass

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
            except (Unavailable, pika.exceptions.AMQPError) as exc:
                log.warning("broker connection lost (%r); reconnecting in %.0f s", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def _on_request(self, channel, method, properties, body) -> None:
        started = time.monotonic()
        try:
            headers, reply = self.front.handle(properties.user_id, properties.type, body,
                                               properties.headers or {}, Topology(channel))
        except Exception:  # a bug, not a user's mistake: log it, answer, keep serving
            log.error("request %s from %s failed:\n%s", properties.type, properties.user_id, traceback.format_exc())
            headers, reply = {"status": "error"}, b'{"error": {"code": "error", "message": "internal platform error"}}'
        if properties.reply_to:
            channel.basic_publish("", properties.reply_to, reply,
                                  pika.BasicProperties(correlation_id=properties.correlation_id, headers=headers))
        channel.basic_ack(method.delivery_tag)
        log.info("%s %s -> %s (%.0f ms)", properties.user_id, properties.type, headers.get("status"),
                 (time.monotonic() - started) * 1000)
