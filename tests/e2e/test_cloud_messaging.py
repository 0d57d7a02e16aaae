"""Large task messages through the real broker: chunked, checksummed, reassembled intact."""
import hashlib
import os
import time
import zlib

import pytest

from support.cloud_support import cloud_platform
from werkbund.client.transports.amqp.chunks import Reassembler, StreamedFrame, split
from werkbund.client.api import register
from werkbund.client.messages import CheckedFrame, MalformedMessage, decode_message, encode_message

PASSWORD = "a-long-password-1"


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    with cloud_platform(tmp_path_factory.mktemp("cloud-msg")) as url:
        users = {name: register(name, PASSWORD, "org", platform="cloud", url=url) for name in ("alice", "bob")}
        users["alice"].create_task("big", {"algorithm": "neural_network", "quorum": 1, "rounds": 1})
        users["bob"].join_task("big")
        users["alice"].aggregator("big").start()
        yield users
        for user in users.values():
            user.close()


@pytest.mark.broker
@pytest.mark.parametrize("path", ["claim-check", "chunks"])
def test_a_256_mib_update_round_trips_intact(task, path):
    """Through the platform's blob store (the default), and in chunks through the broker (without one)."""
    payload = os.urandom(256 * 1024 * 1024 + 12345)  # random: nothing to compress or deduplicate
    digest = hashlib.sha256(payload).hexdigest()
    task["bob"].transport.blob_threshold = 1 << 62 if path == "chunks" else 8 * 1024 * 1024
    try:
        sent = task["bob"].participant("big").send("update", payload, round=0)
    finally:
        task["bob"].transport.blob_threshold = 8 * 1024 * 1024
    assert ("blob" in sent) == (path == "claim-check")
    del payload
    message = task["alice"].aggregator("big").receive(120)
    assert (message.sender, message.kind, len(message.payload)) == ("bob", "update", 256 * 1024 * 1024 + 12345)
    assert hashlib.sha256(message.payload).hexdigest() == digest


def test_chunks_are_checked_and_reassembled_in_any_order():
    body = os.urandom(10_000)
    chunks = list(split(body, 3_000))
    assert len(chunks) == 4
    whole = Reassembler()
    results = [whole.add("bob", headers, chunk) for headers, chunk in reversed(chunks)]
    assert results[:3] == [None, None, None] and bytes(results[3]) == body
    broken = Reassembler()
    headers, chunk = chunks[0]
    with pytest.raises(MalformedMessage, match="checksum"):
        broken.add("bob", headers, b"x" + chunk[1:])


def test_a_framed_message_is_checked_while_its_chunks_arrive():
    payload = os.urandom(20_000)
    frame = encode_message("big", "update", payload, round=3)
    chunks = list(split(frame, 3_000))
    receiver = Reassembler()
    whole = [receiver.add("bob", h, c) for h, c in chunks][-1]
    assert isinstance(whole, CheckedFrame)  # hashed on the way: decoding neither copies nor hashes again
    message = decode_message(whole, "bob")
    assert (message.kind, message.get("round"), message.payload) == ("update", 3, payload)
    later_first = Reassembler()  # the first chunk comes last: the frame is collected and checked as a whole
    assert decode_message([later_first.add("bob", h, c) for h, c in reversed(chunks)][-1]).payload == payload
    # a payload changed after framing, each chunk's CRC-32 made to fit: the frame's sha256 still catches it
    tampered = bytearray(frame)
    tampered[-5] ^= 1
    forged = [(dict(h, **{"wb-chunk-crc32": zlib.crc32(c)}), c) for h, c in split(bytes(tampered), 3_000)]
    receiver = Reassembler()
    for h, c in forged[:-1]:
        assert receiver.add("bob", h, c) is None
    with pytest.raises(MalformedMessage, match="sha256"):
        receiver.add("bob", *forged[-1])


def test_a_streamed_frame_carries_its_sha256_after_the_last_chunk():
    """The sender cuts chunks straight from the payload; the sha256 follows with the last chunk."""
    payload = os.urandom(20_000)
    chunks = list(StreamedFrame("big", "update", payload, {"round": 2}, 3_000).chunks("t1"))
    assert "wb-payload-sha256" in chunks[-1][0] and all("wb-payload-sha256" not in h for h, _ in chunks[:-1])
    for order in (chunks, chunks[::-1]):  # first chunk first: hashed on the way; last: checked at the end
        receiver = Reassembler()
        whole = [receiver.add("bob", h, c) for h, c in order][-1]
        message = decode_message(whole, "bob")
        assert (message.kind, message.get("round"), message.payload) == ("update", 2, payload)
        assert message.get("sha256") == hashlib.sha256(payload).hexdigest()
    wrong = [(dict(h, **{"wb-payload-sha256": "1" * 64}) if "wb-payload-sha256" in h else h, c) for h, c in chunks]
    receiver = Reassembler()
    with pytest.raises(MalformedMessage, match="sha256"):
        [receiver.add("bob", h, c) for h, c in wrong]


@pytest.mark.broker
def test_a_lost_connection_is_reestablished_and_nothing_is_lost(task):
    """The broker drops the aggregator's connection: it reconnects, and an unacknowledged update comes again."""
    import requests

    agg, bob = task["alice"].aggregator("big"), task["bob"].participant("big")
    bob.send("update", b"first", round=1)
    assert agg.receive(10).payload == b"first"  # received, not yet acknowledged (not handled)
    vhost = task["alice"].transport.broker_vhost
    for _ in range(40):  # the management API lists a connection after its first statistics (a few s)
        connections = requests.get(f"http://127.0.0.1:15672/api/vhosts/{vhost}/connections",
                                   auth=("guest", "guest"), timeout=10).json()
        mine = [c["name"] for c in connections if c["user"] == task["alice"].transport.broker_account]
        if mine:
            break
        time.sleep(0.5)
    assert mine
    for name in mine:
        requests.delete(f"http://127.0.0.1:15672/api/connections/{requests.utils.quote(name, safe='')}",
                        auth=("guest", "guest"), timeout=10)
    bob.send("update", b"second", round=1)
    again = agg.receive(30)
    assert again.payload == b"first" and agg.receive(30).payload == b"second"
    assert agg.receive(0.5) is None
    assert task["alice"].whoami()["user"] == "alice"


@pytest.mark.broker
def test_a_final_model_whose_metadata_outgrows_an_amqp_frame_is_stored_and_fetched(task):
    """A long task's round history (every round, every participant's figures) is more than the
    128 KiB that one AMQP frame, and so a message's headers, can carry: it travels at the start of the
    body. Before, the broker closed the connection on every try and the aggregator retried for ever."""
    from werkbund.platform.errors import InvalidInput

    history = [{"round": r, "participants": {f"site{p:03d}": {"confusion": [[r * p] * 10] * 10, "accuracy": 0.5}
                                             for p in range(10)}} for r in range(40)]
    model = os.urandom(1000)
    task["alice"].aggregator("big").finish(model, {"history": history})
    data, meta = task["bob"].get_model("big")
    assert data == model and meta["meta"]["history"] == history
    assert len(str(history)) > 128 * 1024
    with pytest.raises(InvalidInput, match="exceed what one AMQP frame"):  # at once, not retried
        task["bob"].transport._rpc(task["bob"].transport._session(), task["bob"].transport.account, "whoami",
                                   b"{}", {"note": "x" * (200 * 1024)})
