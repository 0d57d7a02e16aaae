"""A round through RabbitMQ with no werkbund code: the floor under the cloud platform's round
(``bench/vs_flower.py --platforms broker``).

The same exchange as a werkbund round on the cloud platform, with the same guarantees for the
messages and nothing else: the server publishes one message of the model's size to a topic exchange,
routed to N durable queues (one a participant); each of N client processes reads it, acknowledges it
and answers with a message of the same size to the server's durable queue; the server reads and
acknowledges the N answers. Every message is persistent and every publish waits for the broker's
confirm, as werkbund's do, so that a broker restart loses nothing. Nothing is authenticated beyond the
broker's login, stored, signed, checked or trained: what is measured is what the broker and pika cost.

Figures as for a werkbund line: the median round after the first (from the server's publish to its
reading the N-th answer) and the CPU a round of the server, the clients and RabbitMQ, from /proc.
It uses the broker's default vhost with the guest account (``WERKBUND_BENCH_AMQP`` overrides the URL)
and removes its queues and exchange afterwards.
"""
from __future__ import annotations

import multiprocessing
import os
import statistics
import time
import uuid

import pika

AMQP_URL = os.environ.get("WERKBUND_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


def _connect():
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()  # basic_publish returns once the broker has the message
    return connection, channel


def _client(exchange: str, queue: str, size: int, ready) -> None:
    connection, channel = _connect()
    ready.set()
    for method, _properties, body in channel.consume(queue):
        channel.basic_ack(method.delivery_tag)
        if not body:  # the end
            break
        channel.basic_publish(exchange, "aggregator", body[:size], PERSISTENT)
    connection.close()


def run_broker_floor(participants: int, rounds: int, size: int) -> dict:
    """``rounds`` bare rounds of ``participants`` client processes and a ``size``-byte message each way."""
    from vs_flower import _broker_pids, _cpu_s  # (bench/ is the script's folder, so on the path)

    tag = f"wb-floor-{uuid.uuid4().hex[:8]}"
    inbox, queues = f"{tag}.aggregator", [f"{tag}.p{i}" for i in range(participants)]
    connection, channel = _connect()
    channel.exchange_declare(tag, "topic")
    for queue, key in [(inbox, "aggregator")] + [(queue, "all") for queue in queues]:
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, tag, key)
    spawn = multiprocessing.get_context("spawn")
    ready = [spawn.Event() for _ in queues]
    clients = [spawn.Process(target=_client, args=(tag, queue, size, event), daemon=True)
               for queue, event in zip(queues, ready)]
    started = time.perf_counter()
    try:
        for proc in clients:
            proc.start()
        for event in ready:
            event.wait(60)
        groups = {"server": [os.getpid()], "clients": [proc.pid for proc in clients], "broker": _broker_pids()}
        answers, payload, durations, before = channel.consume(inbox), os.urandom(size), [], None
        for number in range(rounds):
            began = time.perf_counter()
            channel.basic_publish(tag, "all", payload, PERSISTENT)
            for _ in queues:
                method, _properties, _body = next(answers)
                channel.basic_ack(method.delivery_tag)
            durations.append(time.perf_counter() - began)
            if number == 0:
                before = {group: sum(_cpu_s(pid) for pid in pids) for group, pids in groups.items()}
        cpu = {group: 1000 * (sum(_cpu_s(pid) for pid in pids) - before[group]) / max(rounds - 1, 1)
               for group, pids in groups.items()}
        wall = time.perf_counter() - started
        channel.basic_publish(tag, "all", b"", PERSISTENT)
        for proc in clients:
            proc.join(timeout=30)
        channel.cancel()
    finally:
        for proc in clients:
            if proc.is_alive():
                proc.terminate()
        for queue in [inbox] + queues:
            channel.queue_delete(queue)
        channel.exchange_delete(tag)
        connection.close()
    return {"round_s": durations, "median_round_s": statistics.median(durations[1:] or durations), "wall_s": wall,
            "rounds": rounds, "platform_peak_rss_mib": None, "cpu_ms_per_round": cpu}
