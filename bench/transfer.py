"""Model transfer throughput: werkbund's cloud transport against raw pika through the same broker.

    python bench/transfer.py [--sizes 1,64,1024] [--broker amqp://guest:guest@127.0.0.1:5672]

Starts its own `werkbund platform serve` (SQLite, a vhost of its own, removed afterwards), then for
each size (MiB) sends random bytes from a participant process to an aggregator process, and the same
bytes with a plain pika publish/consume through a plain queue. Sender and receiver are separate
processes; prints MB/s of both paths, the ratio and each process's peak memory (max RSS).
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pika

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
PASSWORD = "bench-password-1"
RAW_PIECE = 16 * 1024 * 1024


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def werkbund_sender(url, size, seed, out):
    from werkbund.client.api import connect

    payload = os.urandom(size)
    bob = connect("cloud", url, "bob", PASSWORD).participant("bench")
    out.put(("ready", hashlib.sha256(payload).hexdigest()))
    started = time.perf_counter()
    bob.send("update", payload, round=0)
    out.put(("sent", time.perf_counter() - started, _peak_mib()))


def werkbund_receiver(url, out):
    from werkbund.client.api import connect

    agg = connect("cloud", url, "alice", PASSWORD).aggregator("bench")
    agg.receive(0.1)
    out.put(("listening",))
    message = agg.receive(600)
    out.put(("got", time.perf_counter(), hashlib.sha256(message.payload).hexdigest(), _peak_mib()))


def raw_sender(params_url, queue, size, out):
    payload = os.urandom(size)
    channel = pika.BlockingConnection(pika.URLParameters(params_url)).channel()
    channel.confirm_delivery()
    out.put(("ready", hashlib.sha256(payload).hexdigest()))
    started = time.perf_counter()
    view = memoryview(payload)  # the broker takes at most 128 MiB a message: same 16 MiB pieces as werkbund
    for start in range(0, size, RAW_PIECE):
        channel.basic_publish("", queue, bytes(view[start:start + RAW_PIECE]), pika.BasicProperties(delivery_mode=2))
    out.put(("sent", time.perf_counter() - started, _peak_mib()))


def raw_receiver(params_url, queue, size, out):
    channel = pika.BlockingConnection(pika.URLParameters(params_url)).channel()
    channel.queue_declare(queue, durable=True)
    out.put(("listening",))
    channel.basic_qos(prefetch_count=2)
    whole = bytearray(size)
    got = 0
    for method, _props, body in channel.consume(queue, inactivity_timeout=600):
        whole[got:got + len(body)] = body
        got += len(body)
        channel.basic_ack(method.delivery_tag)
        if got >= size:
            break
    out.put(("got", time.perf_counter(), hashlib.sha256(whole).hexdigest(), _peak_mib()))


def run_pair(sender, sender_args, receiver, receiver_args, size):
    ctx = mp.get_context("spawn")
    out_r, out_s = ctx.Queue(), ctx.Queue()
    rx = ctx.Process(target=receiver, args=(*receiver_args, out_r))
    rx.start()
    assert out_r.get(timeout=120)[0] == "listening"
    tx = ctx.Process(target=sender, args=(*sender_args, size, out_s) if sender is raw_sender
                     else (*sender_args, size, 0, out_s))
    tx.start()
    _, digest = out_s.get(timeout=300)
    started = time.perf_counter()  # the sender starts right after 'ready'; close enough for MB/s
    _, tx_seconds, tx_peak = out_s.get(timeout=900)
    _, got_at, got_digest, rx_peak = out_r.get(timeout=900)
    tx.join(), rx.join()
    assert got_digest == digest, "payload corrupted"
    return size / 1e6 / (got_at - started), tx_peak, rx_peak


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,64,1024", help="MiB, comma-separated")
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672")
    args = parser.parse_args()
    from cloud_support import cloud_platform
    from werkbund.client.api import register

    tmp = Path(tempfile.mkdtemp(prefix="wb-bench-"))
    try:
        with cloud_platform(tmp) as url:
            users = {n: register(n, PASSWORD, "bench", platform="cloud", url=url) for n in ("alice", "bob")}
            users["alice"].create_task("bench", {"algorithm": "neural_network", "quorum": 1, "rounds": 1})
            users["bob"].join_task("bench")
            users["alice"].aggregator("bench").start()
            raw_url = f"{args.broker}/{url.rsplit('/', 1)[1]}"
            print(f"{'size':>9} {'werkbund MB/s':>14} {'raw pika MB/s':>14} {'ratio':>6} "
                  f"{'wb send/recv peak MiB':>22} {'raw send/recv peak MiB':>23}")
            for mib in (int(s) for s in args.sizes.split(",")):
                size = mib * 1024 * 1024
                wb, wb_tx, wb_rx = run_pair(werkbund_sender, (url,), werkbund_receiver, (url,), size)
                queue = f"bench-raw-{uuid.uuid4().hex[:6]}"
                raw, raw_tx, raw_rx = run_pair(raw_sender, (raw_url, queue), raw_receiver, (raw_url, queue, size), size)
                print(f"{mib:>5} MiB {wb:>14.1f} {raw:>14.1f} {wb / raw:>6.2f} {wb_tx:>10.0f} /{wb_rx:>10.0f} "
                      f"{raw_tx:>11.0f} /{raw_rx:>10.0f}", flush=True)
            for user in users.values():
                user.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
