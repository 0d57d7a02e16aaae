"""The claim-check path of the cloud platform: large messages and models through its blob store.

A real `werkbund platform serve` (broker, SQLite, blob store over HTTP); bob and carol participate
in alice's task, mallory is no member.
"""
import hashlib
import os
import time

import pytest

from support.cloud_support import cloud_platform
from werkbund.client.transports.amqp.blobs import BlobClient
from werkbund.client.api import register
from werkbund.client.messages import encode_message
from werkbund.platform.errors import AuthenticationFailed, PermissionDenied

pytestmark = pytest.mark.broker

PASSWORD = "a-long-password-1"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cloud-blobs")
    with cloud_platform(tmp) as url:
        users = {name: register(name, PASSWORD, "org", platform="cloud", url=url)
                 for name in ("alice", "bob", "carol", "mallory")}
        users["alice"].create_task("big", {"algorithm": "neural_network", "quorum": 2, "rounds": 1})
        users["bob"].join_task("big")
        users["carol"].join_task("big")
        users["alice"].aggregator("big").start()
        yield {"users": users, "url": url, "blobs": tmp / "platform-home" / "platform-blobs" / "big",
               "log": tmp / "cloud-platform.log"}
        for user in users.values():
            user.close()


def stored_blobs(folder):
    return sorted(p.name for p in folder.glob("*") if p.suffix == "") if folder.exists() else []


def test_a_large_update_is_stored_once_and_deleted_when_handled(platform):
    users = platform["users"]
    payload = os.urandom(40 * MiB + 7)
    sent = users["bob"].participant("big").send("update", payload, round=0)
    assert stored_blobs(platform["blobs"]) == [sent["blob"]]  # on the platform's disk, not in the broker
    agg = users["alice"].aggregator("big")
    message = agg.receive(60)
    assert (message.sender, len(message.payload)) == ("bob", len(payload))
    assert hashlib.sha256(message.payload).digest() == hashlib.sha256(payload).digest()
    assert stored_blobs(platform["blobs"]) == [sent["blob"]]  # kept until handled (a crash redelivers it)
    assert agg.receive(0.5) is None  # asking for the next one: the update was handled
    assert stored_blobs(platform["blobs"]) == []


def test_a_waiting_receiver_streams_the_blob_while_it_is_uploaded(platform):
    """The reference goes out before the upload: the aggregator reads the blob as it arrives."""
    import threading

    users = platform["users"]
    agg, got = users["alice"].aggregator("big"), {}
    reader = threading.Thread(target=lambda: got.update(message=agg.receive(60)))
    reader.start()
    payload = os.urandom(48 * MiB)
    sent = users["bob"].participant("big").send("update", payload, round=0)
    reader.join(60)
    message = got["message"]
    assert (message.kind, message.sender, message.payload == payload) == ("update", "bob", True)
    assert sent["sha256"] == hashlib.sha256(encode_message("big", "update", payload, round=0)).hexdigest()
    assert agg.receive(0.5) is None and sent["blob"] not in stored_blobs(platform["blobs"])
    assert f"alice streams blob {sent['blob']} of task big while it is uploaded" in platform["log"].read_text()


def test_a_broadcast_blob_reaches_every_participant(platform):
    users = platform["users"]
    payload = os.urandom(12 * MiB)
    users["alice"].aggregator("big").broadcast("round", payload, round=1)
    for name in ("bob", "carol"):
        message = users[name].participant("big").receive(60)
        assert (message.kind, message.sender, message.payload == payload) == ("round", "alice", True)


def test_without_the_blob_store_large_messages_travel_in_chunks(platform):
    users = platform["users"]
    before = stored_blobs(platform["blobs"])  # the broadcast's blob stays until the platform sweeps it
    users["bob"].transport.blob_threshold = 1 << 40  # as a client of a platform with no blob store
    try:
        payload = os.urandom(40 * MiB)
        sent = users["bob"].participant("big").send("update", payload, round=2)
        assert "blob" not in sent and stored_blobs(platform["blobs"]) == before
        message = users["alice"].aggregator("big").receive(60)
        assert message.payload == payload
    finally:
        users["bob"].transport.blob_threshold = 8 * MiB


def test_a_large_message_whose_blob_store_cannot_be_reached_goes_through_the_broker_whole(platform):
    """A grant naming a blob store that does not answer (a replica gone, say): the message is not lost,
    it goes in chunks through the broker, cut from its payload."""
    users = platform["users"]
    transport = users["bob"].transport
    transport.blobs._grants["big"] = (BlobClient("http://127.0.0.1:1", "no-token"), time.monotonic() + 600)
    try:
        payload = os.urandom(40 * MiB + 3)
        sent = users["bob"].participant("big").send("update", payload, round=3)
        assert "blob" not in sent and sent["size"] > len(payload)  # the frame: header and payload
        message = users["alice"].aggregator("big").receive(60)
        assert (message.sender, message.get("round"), message.payload) == ("bob", 3, payload)
        assert message.checked_sha256 == hashlib.sha256(payload).hexdigest()
    finally:
        transport.blobs.forget("big")


def test_blob_store_access_follows_task_membership(platform, tmp_path):
    users = platform["users"]
    bob, carol, mallory = users["bob"].transport, users["carol"].transport, users["mallory"].transport
    with pytest.raises(PermissionDenied):
        mallory.call("transfer_token", task="big")
    grant = bob.call("transfer_token", task="big")
    as_bob = BlobClient(grant["url"], grant["token"])
    ref = as_bob.upload("big", os.urandom(1000))
    data, uploader = as_bob.download("big", ref["id"], ref["size"], ref["sha256"])
    assert (len(data), uploader) == (1000, "bob")
    grant = carol.call("transfer_token", task="big")
    as_carol = BlobClient(grant["url"], grant["token"])
    with pytest.raises(PermissionDenied, match="another participant"):  # carol may not read bob's update
        as_carol.download("big", ref["id"], ref["size"], ref["sha256"])
    with pytest.raises(PermissionDenied):
        as_carol.delete("big", ref["id"])
    with pytest.raises(AuthenticationFailed):
        BlobClient(grant["url"], "not-a-token").upload("big", b"x" * 10)
    as_bob.delete("big", ref["id"])


def test_a_tampered_or_foreign_blob_is_reported_malformed(platform, caplog):
    users = platform["users"]
    sent = users["bob"].participant("big").send("update", os.urandom(9 * MiB), round=3)
    path = platform["blobs"] / sent["blob"]
    with open(path, "r+b") as handle:  # one flipped byte on the platform's disk
        handle.seek(5 * MiB)
        byte = handle.read(1)
        handle.seek(5 * MiB)
        handle.write(bytes([byte[0] ^ 1]))
    message = users["alice"].aggregator("big").receive(60)
    assert (message.kind, message.sender) == ("malformed", "bob")
    assert "does not match its sha256" in caplog.text
    # carol points the aggregator at bob's blob, claiming it as her update
    grant = users["bob"].transport.call("transfer_token", task="big")
    ref = BlobClient(grant["url"], grant["token"]).upload("big", os.urandom(100))
    import pika

    from werkbund.platform.amqp import names

    carol = users["carol"].transport
    headers = {"wb-blob": ref["id"], "wb-size": ref["size"], "wb-sha256": ref["sha256"], "wb-blob-readers": "one"}
    carol.session.publish(names.task_exchange("big"), names.TO_AGGREGATOR, b"", pika.BasicProperties(
        user_id=carol.broker_account, delivery_mode=2, headers=headers))
    message = users["alice"].aggregator("big").receive(60)
    assert (message.kind, message.sender) == ("malformed", "carol")
    assert "refers to a blob bob uploaded" in caplog.text


def test_a_large_final_model_goes_through_the_blob_store(platform):
    users = platform["users"]
    model = os.urandom(20 * MiB + 3)
    before, started = stored_blobs(platform["blobs"]), time.monotonic()
    users["alice"].aggregator("big").finish(model, {"note": "big model"})
    data, meta = users["carol"].get_model("big")
    assert (data == model, meta["sha256"], meta["meta"]["note"]) == (True, hashlib.sha256(model).hexdigest(),
                                                                     "big model")
    assert stored_blobs(platform["blobs"]) == before  # the model's upload and download copies are gone
    assert time.monotonic() - started < 60
