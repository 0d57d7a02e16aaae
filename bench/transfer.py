"""Model transfer throughput: werkbund's cloud transport against raw pika through the same broker.

    python bench/transfer.py [--sizes 1,64,1024] [--repeat 3] [--broker amqp://guest:guest@127.0.0.1:5672]

Starts its own `werkbund platform serve` (SQLite, a vhost of its own, removed afterwards), then for
each size (MiB) sends random bytes from a participant process to an aggregator process three ways:
werkbund through the broker (checksummed chunks), werkbund's claim-check path (the platform's blob
store, streamed over HTTP; only a reference goes through the broker) and a plain pika
publish/consume of the same bytes through a plain queue. Sender and receiver are separate
processes; prints MB/s of each path, the ratios to raw pika and each process's peak memory (max RSS).
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import resource
import shutil
import statistics
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


NO_BLOBS = 1 << 62  # a blob threshold no message reaches: the chunked path through the broker


def werkbund_sender(url, blob_threshold, size, seed, out):
    from werkbund.client.api import connect

    payload = os.urandom(size)
    bob = connect("cloud", url, "bob", PASSWORD, blob_threshold=blob_threshold).participant("bench")
    bob.transport.blob_client("bench")  # the transfer token, like the login, is had once per task
    out.put(("ready", hashlib.sha256(payload).hexdigest()))
    started = time.perf_counter()
    bob.send("update", payload, round=0)
    out.put(("sent", time.perf_counter() - started, _peak_mib()))


def werkbund_receiver(url, blob_threshold, out):
    from werkbund.client.api import connect

    agg = connect("cloud", url, "alice", PASSWORD, blob_threshold=blob_threshold).aggregator("bench")
    agg.transport.blob_client("bench")
    agg.receive(0.1)
    out.put(("listening",))
    message = agg.receive(600)
    got_at, peak = time.perf_counter(), _peak_mib()
    out.put(("got", got_at, hashlib.sha256(message.payload).hexdigest(), peak))
    agg.receive(0.1)  # handled: the blob (if any) is deleted


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


def _median_run(runs: list[tuple]) -> tuple:
    """(the median MB/s, the largest sender peak, the largest receiver peak) of repeated runs."""
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs), max(r[2] for r in runs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,64,1024", help="MiB, comma-separated")
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each path per size; prints the median")
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
            print(f"{'size':>9} {'werkbund':>9} {'claim-check':>12} {'raw pika':>9} {'wb/raw':>7} {'cc/raw':>7}"
                  f" | peak MiB send/recv: {'werkbund':>11} {'claim-check':>12} {'raw pika':>11}")
            for mib in (int(s) for s in args.sizes.split(",")):
                size = mib * 1024 * 1024
                runs = {"wb": [], "cc": [], "raw": []}
                for _ in range(args.repeat):  # the three paths take turns, so they share the machine's load
                    runs["wb"].append(run_pair(werkbund_sender, (url, NO_BLOBS), werkbund_receiver, (url, NO_BLOBS),
                                               size))
                    runs["cc"].append(run_pair(werkbund_sender, (url, 0), werkbund_receiver, (url, 0), size))
                    queue = f"bench-raw-{uuid.uuid4().hex[:6]}"
                    runs["raw"].append(run_pair(raw_sender, (raw_url, queue), raw_receiver, (raw_url, queue, size),
                                                size))
                (wb, wb_tx, wb_rx), (cc, cc_tx, cc_rx), (raw, raw_tx, raw_rx) = (
                    _median_run(runs[path]) for path in ("wb", "cc", "raw"))
                print(f"{mib:>5} MiB {wb:>9.1f} {cc:>12.1f} {raw:>9.1f} {wb / raw:>7.2f} {cc / raw:>7.2f}"
                      f" | {'':>19}{wb_tx:>5.0f} /{wb_rx:>5.0f} {cc_tx:>5.0f} /{cc_rx:>5.0f}"
                      f" {raw_tx:>5.0f} /{raw_rx:>5.0f}",
                      flush=True)
            print("MB/s = 10^6 bytes per second, from the sender's start to the receiver holding the checked bytes"
                  + (f"; the median of {args.repeat} runs, the largest peaks" if args.repeat > 1 else ""))
            for user in users.values():
                user.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
