"""The blob store's HTTP endpoint on its own (no broker): TLS, streaming while uploading, stalls."""
import os
import threading

import pytest
from support.tls_support import self_signed

from werkbund.client.transports.amqp.blobs import BlobClient
from werkbund.client.messages import MalformedMessage, decode_message, encode_message
from werkbund.platform.storage import blobs
from werkbund.platform.amqp.blob_server import BlobServer
from werkbund.platform.storage.blobs import BlobStore
from werkbund.platform.errors import PermissionDenied, Unavailable
from werkbund.platform.service import PlatformService

MiB = 1024 * 1024


@pytest.fixture
def service(tmp_path):
    service = PlatformService(f"sqlite:///{tmp_path / 'platform.db'}")
    for user in ("alice", "bob", "mallory"):
        service.register(user, "a-long-password-1", "org")
    service.create_task("alice", "t", {"algorithm": "neural_network", "quorum": 1})
    service.join_task("bob", "t")
    yield service
    service.db.dispose()


@pytest.fixture
def server(service, tmp_path):
    server = BlobServer(service, BlobStore(tmp_path / "blobs")).start()
    yield server
    server.stop()


def client(server, service, user, **options):
    return BlobClient(server.url, service.transfer_token(user, "t")["token"], **options)


def test_blobs_over_https_with_the_platforms_certificate(service, tmp_path):
    certificate, key = self_signed(tmp_path)
    server = BlobServer(service, BlobStore(tmp_path / "blobs"), certificate=certificate, key=key).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        data = os.urandom(5 * MiB + 1)
        ref = client(server, service, "bob", ca_certificate=certificate).upload("t", data)
        got, uploader = client(server, service, "alice", ca_certificate=certificate).download(
            "t", ref["id"], ref["size"], ref["sha256"])
        assert (got == data, uploader) == (True, "bob")
        with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):  # a client not trusting it refuses
            client(server, service, "bob").upload("t", b"x")
    finally:
        server.stop()


def test_a_reader_streams_an_announced_blob_as_it_arrives(server, service):
    bob, alice = client(server, service, "bob"), client(server, service, "alice")
    data = os.urandom(24 * MiB)
    blob_id = bob.announce("t", len(data))
    got = {}
    reader = threading.Thread(target=lambda: got.update(result=alice.download("t", blob_id, len(data))))
    reader.start()
    ref = bob.upload("t", data, blob_id)
    reader.join(60)
    assert got["result"] == (bytearray(data), "bob") and ref["id"] == blob_id


def test_a_message_blob_is_read_and_checked_as_it_arrives(server, service):
    bob, alice = client(server, service, "bob"), client(server, service, "alice")
    payload = os.urandom(12 * MiB + 1)
    frame = encode_message("t", "update", payload, round=2)
    blob_id = bob.announce("t", len(frame))
    got = {}
    reader = threading.Thread(target=lambda: got.update(result=alice.download_message("t", blob_id, len(frame), "bob")))
    reader.start()
    bob.upload("t", frame, blob_id)
    reader.join(60)
    message = decode_message(got["result"], "bob")
    assert (message.payload == payload, message.get("round")) == (True, 2)
    with pytest.raises(MalformedMessage, match="refers to a blob bob uploaded"):  # claimed by someone else
        alice.download_message("t", blob_id, len(frame), "carol")
    with pytest.raises(MalformedMessage, match="has 12"):
        alice.download_message("t", blob_id, len(frame) + 1, "bob")


def test_a_stalled_upload_breaks_off_its_reader(server, service, monkeypatch):
    monkeypatch.setattr(blobs, "STALL_SECONDS", 1.0)
    bob, alice = client(server, service, "bob"), client(server, service, "alice")
    blob_id = bob.announce("t", 1000)  # and never uploaded
    with pytest.raises(Unavailable, match="broke off|stopped sending"):
        alice.download("t", blob_id, 1000)


def test_only_members_get_a_transfer_token(service):
    with pytest.raises(PermissionDenied):
        service.transfer_token("mallory", "t")
    assert service.transfer_token("bob", "t")["token"]
