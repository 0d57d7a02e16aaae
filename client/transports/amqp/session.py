"""One broker connection owned by one I/O thread, which other threads hand work to.

pika's BlockingConnection is not thread-safe, and it answers heartbeats only while someone calls
it. So a dedicated thread owns the connection and keeps calling ``process_data_events``: heartbeats
are answered while the caller trains for minutes, deliveries are pushed into local queues as they
arrive (push consumption, not polling), and the caller's publishes run on that thread through
``add_callback_threadsafe``, the one thread-safe method of the connection. When the connection is
lost the thread reconnects with backoff and subscribes again; unacknowledged messages come back.
Work that was in flight on the lost connection (a publish, a request waiting for its reply) fails
with :class:`ConnectionLost`, which the transport retries once the connection is back. A publish the
broker refuses (a nack: the queue holds as many messages or bytes as the platform's policy allows,
``overflow: reject-publish``, or a quorum queue has no leader for a moment) fails with
:class:`InboxFull` instead; the transport decides whether to send it again (its module docstring).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, TimeoutError as FutureTimeout

import pika
from pika.exceptions import (
    AMQPConnectionError, AMQPError, ChannelClosed, ChannelClosedByBroker, ConnectionWrongStateError,
    IncompatibleProtocolError, NackError, ProbableAccessDeniedError,
    ProbableAuthenticationError, StreamLostError, UnroutableError,
)

from werkbund.platform.amqp import names
from werkbund.platform.errors import (
    AuthenticationFailed, InboxFull, InvalidInput, NotFound, PermissionDenied, Unavailable, WerkbundError,
)
from werkbund.platform.tls import explain

log = logging.getLogger("werkbund.client.amqp")
# pika logs each failed connection attempt at ERROR, with a traceback; we raise a typed error instead
logging.getLogger("pika").setLevel(logging.CRITICAL)
PREFETCH = 2


class ConnectionLost(Unavailable):
    """The broker connection dropped while this work was in flight; it may be retried after the reconnect."""


class AmqpSession:
    def __init__(self, parameters: pika.ConnectionParameters, reconnect_seconds: float = 120.0):
        self.parameters = parameters
        self.reconnect_seconds = reconnect_seconds
        self.replies: dict[str, Future] = {}
        self.inflight: set[Future] = set()  # submitted work not yet done
        self.lock = threading.Lock()
        self.inboxes: dict[str, queue.Queue] = {}  # queue name -> (sender, body, (generation, tag))
        self.generation = 0
        self.reconnected_at: float | None = None  # time.monotonic() of the last reconnect
        self.closing = False
        self.ready = threading.Event()  # cleared while reconnecting
        self.connection = self._open_connection()
        self._open_channel()
        self.ready.set()
        self.thread = threading.Thread(target=self._loop, name="werkbund-amqp-io", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------- connection
    def _open_connection(self) -> pika.BlockingConnection:
        try:
            return pika.BlockingConnection(self.parameters)
        except Exception as exc:  # pika raises many kinds here
            raise connection_error(exc, self.parameters) from None

    def _open_channel(self) -> None:
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.channel.basic_qos(prefetch_count=PREFETCH)
        self.channel.basic_consume(names.REPLY_TO, self._on_reply, auto_ack=True)
        self.generation += 1
        for queue_name, inbox in list(self.inboxes.items()):
            _drain(inbox)  # not acknowledged on the old channel: the broker delivers them again
            self._consume(queue_name, inbox)

    def _loop(self) -> None:
        while not self.closing:
            try:
                self.connection.process_data_events(time_limit=1.0)
                continue
            except ChannelClosed as exc:
                cause = exc
                if self.connection.is_open:
                    log.debug("channel closed: %r; opening a new one", exc)
                    self._fail_replies(broker_error(exc))
                    try:
                        self._open_channel()
                        continue
                    except Exception as again:  # noqa: BLE001 - the connection went too
                        cause = again
            except Exception as exc:  # noqa: BLE001 - AMQPError, or pika's own errors once the connection is gone
                cause = exc
            if self.closing:
                return
            self.ready.clear()
            self._fail_replies(ConnectionLost(f"lost the broker connection: {cause!r}"))
            self._reconnect(cause)
            self.ready.set()

    def _reconnect(self, cause) -> None:
        deadline, backoff = time.monotonic() + self.reconnect_seconds, 0.5
        while not self.closing:
            log.warning("broker connection lost (%r); reconnecting in %.1f s", cause, backoff)
            time.sleep(backoff)
            connection = None
            try:
                connection = self.connection = pika.BlockingConnection(self.parameters)
                self._open_channel()
                self.reconnected_at = time.monotonic()
                log.warning("reconnected to the broker")
                return
            except Exception as exc:  # noqa: BLE001 - AMQPError mostly; any failure here means: try again
                cause = exc
                if connection is not None and connection.is_open:
                    try:
                        connection.close()
                    except Exception:  # noqa: BLE001 - dropping it anyway
                        pass
                if isinstance(connection_error(exc, self.parameters), AuthenticationFailed):
                    self.closing = True  # the session's account is gone (logout, expiry): no use trying again
                    self._broken = AuthenticationFailed("the broker no longer accepts this session (it expired or "
                                                        "was logged out); log in again")
                    return
                if time.monotonic() > deadline:
                    self.closing = True
                    self._broken = Unavailable(f"cannot reconnect to the broker: {exc!r}")
                    return
                backoff = min(backoff * 2, 3.0)

    def _fail_replies(self, error: Exception) -> None:
        """Fail the requests waiting for replies and, when the connection is lost, the work in flight."""
        futures = [self.replies.pop(corr, None) for corr in list(self.replies)]
        if isinstance(error, ConnectionLost):
            with self.lock:
                futures += list(self.inflight)
        for future in futures:
            if future is not None:
                _settle(future, error=error)

    def _settled(self, future: Future) -> None:
        with self.lock:
            self.inflight.discard(future)

    # --------------------------------------------------------------- work
    def run(self, fn, timeout: float = 600.0):
        """Run ``fn()`` on the I/O thread and return its result (or raise its error, mapped)."""
        return self.wait(self.submit(fn), timeout)

    def submit(self, fn) -> Future:
        """Queue ``fn()`` for the I/O thread (work runs in the order it was submitted)."""
        if not self.ready.wait(self.reconnect_seconds) or self.closing:
            raise getattr(self, "_broken", None) or Unavailable("the broker connection is closed")
        future: Future = Future()
        with self.lock:
            self.inflight.add(future)
        future.add_done_callback(self._settled)

        def work():
            if future.done():  # failed as lost in a reconnect; the caller retries it
                return
            try:
                _settle(future, result=fn())
            except ChannelClosed as exc:  # refused by the broker: report it, carry on on a new channel
                _settle(future, error=exc)
                self._open_channel()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                _settle(future, error=exc)

        for _ in range(int(self.reconnect_seconds * 10)):
            try:
                connection = self.connection
                connection.add_callback_threadsafe(work)
                future.wb_connection = connection  # a later reconnect means this work never ran
                break
            except ConnectionWrongStateError:  # lost a moment ago; the I/O thread is reconnecting
                if self.closing:  # it gave up (the session's account was deleted at logout, or expired)
                    _settle(future, error=getattr(self, "_broken", None)
                            or Unavailable("the broker connection is closed"))
                    break
                time.sleep(0.1)
                self.ready.wait(self.reconnect_seconds)
        return future

    def reconnected_within(self, seconds: float) -> bool:
        """Whether the connection was lost and made again in the last ``seconds``."""
        return self.reconnected_at is not None and time.monotonic() - self.reconnected_at <= seconds

    def wait(self, future: Future, timeout: float = 600.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return future.result(max(0.0, min(1.0, deadline - time.monotonic())))
            except FutureTimeout:
                if getattr(future, "wb_connection", self.connection) is not self.connection:
                    raise ConnectionLost("the broker connection was replaced before this work ran") from None
                if time.monotonic() >= deadline:
                    raise Unavailable(f"the broker did not answer in {timeout:.0f} s") from None
            except (AMQPError, ChannelClosed) as exc:
                raise broker_error(exc) from None

    def publish(self, exchange: str, key: str, body: bytes, properties: pika.BasicProperties,
                mandatory: bool = True, wait: bool = True):
        """Publish (confirmed); with ``wait=False`` return a Future, so the caller can prepare the next one."""
        future = self.submit(lambda: self.channel.basic_publish(exchange, key, body, properties, mandatory=mandatory))
        return self.wait(future) if wait else future

    def request(self, correlation_id: str, body: bytes, properties: pika.BasicProperties, timeout: float):
        future: Future = Future()
        self.replies[correlation_id] = future
        try:
            self.publish(names.REQUEST_EXCHANGE, names.REQUEST_KEY, body, properties)
            return future.result(timeout)
        except FutureTimeout:
            raise Unavailable(f"the platform did not answer in {timeout:.0f} s; "
                              "is `werkbund platform serve` running?") from None
        finally:
            self.replies.pop(correlation_id, None)

    def _on_reply(self, _channel, _method, properties, body) -> None:
        future = self.replies.pop(properties.correlation_id, None)
        if future is not None:
            _settle(future, result=(properties.headers or {}, body))

    # --------------------------------------------------------- consuming
    def inbox(self, queue_name: str) -> queue.Queue:
        if queue_name not in self.inboxes:
            inbox = queue.Queue()
            self.run(lambda: self._consume(queue_name, inbox))
            self.inboxes[queue_name] = inbox
        return self.inboxes[queue_name]

    def _consume(self, queue_name: str, inbox: queue.Queue) -> None:
        generation = self.generation

        def on_message(_channel, method, properties, body):
            inbox.put((properties.user_id or "", body, (generation, method.delivery_tag), properties.headers or {}))

        self.channel.basic_consume(queue_name, on_message, auto_ack=False)

    def ack(self, tag) -> None:
        """Acknowledge a handled message (fire and forget; after a reconnect it was redelivered)."""
        generation, delivery_tag = tag
        if generation == self.generation and not self.closing:
            try:
                self.connection.add_callback_threadsafe(
                    lambda: self.channel.basic_ack(delivery_tag) if generation == self.generation else None)
            except ConnectionWrongStateError:
                pass  # the connection is gone: the broker delivers the message again

    def close(self) -> None:
        if self.closing:
            return
        try:
            self.run(lambda: None, timeout=10)
        except WerkbundError:
            pass
        self.closing = True
        self.thread.join(timeout=5)
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing anyway
            pass


def _settle(future: Future, result=None, error: BaseException | None = None) -> None:
    """Complete ``future`` unless it already is (a reconnect may have failed it meanwhile)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except Exception:  # noqa: BLE001 - InvalidStateError: completed in between
        pass


def _drain(inbox: queue.Queue) -> None:
    try:
        while True:
            inbox.get_nowait()
    except queue.Empty:
        pass


def connection_error(exc: Exception, parameters) -> WerkbundError:
    where = f"{parameters.host}:{parameters.port} (vhost {parameters.virtual_host})"
    tls = explain(exc, "broker", f"{parameters.host}:{parameters.port}", getattr(parameters, "ca_certificate", None))
    if tls:
        return Unavailable(tls)
    if parameters.ssl_options is None and isinstance(exc, (IncompatibleProtocolError, StreamLostError)):
        return Unavailable(f"the broker at {where} closed the plain AMQP connection at once; if it requires TLS, "
                           "use an amqps:// URL (and ca_certificate)")
    if isinstance(exc, ProbableAuthenticationError) or "ACCESS_REFUSED" in repr(exc) and "PLAIN" in repr(exc):
        return AuthenticationFailed("wrong user name or password")
    if isinstance(exc, ProbableAccessDeniedError):
        return PermissionDenied(f"the broker at {where} refused access to the vhost")
    if isinstance(exc, AMQPConnectionError):
        return Unavailable(f"cannot reach the broker at {where}: {exc!r}")
    return Unavailable(f"cannot connect to the broker at {where}: {exc!r}")


def broker_error(exc: Exception) -> WerkbundError:
    if isinstance(exc, NackError):  # refused by a full queue (reject-publish), or one without a leader
        return InboxFull("the broker refused the message: the queue it goes to is full")
    if isinstance(exc, AMQPConnectionError):  # the connection went
        return ConnectionLost(f"lost the broker connection: {exc!r}")
    if isinstance(exc, UnroutableError):
        return InvalidInput("the message has no queue to go to (unknown recipient or no participants)")
    if isinstance(exc, ChannelClosedByBroker):
        text = exc.reply_text
        if exc.reply_code == 403 or (exc.reply_code == 406 and "user_id" in text):
            return PermissionDenied(f"the broker refused: {text}")
        if exc.reply_code == 404:
            return NotFound(f"the broker does not know it: {text}")
        return WerkbundError(f"the broker closed the channel: {exc.reply_code} {text}")
    return Unavailable(f"broker connection problem: {exc!r}")
