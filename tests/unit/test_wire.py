"""Task messages, weights on the wire and federated statistics."""
import hashlib
import io
import json
import os
import struct

import numpy as np
import pytest

from werkbund.algorithms.arrays import UpdateRejected, decode_weights, encode_weights, signature
from werkbund.algorithms.moments import feature_moments, merge_moments
from werkbund.client.messages import (HASH_BESIDE, CheckedFrame, MalformedMessage, decode_message, encode_message, frame_parts,
                                      read_hashed, read_message)


def test_message_round_trip_and_checks():
    frame = encode_message("t", "update", b"\x00\x01payload", round=3, n_samples=5)
    message = decode_message(frame, sender="bob")
    assert (message.kind, message.sender, message.payload, message.get("round")) == ("update", "bob", b"\x00\x01payload", 3)
    # the digest checked on receipt travels with the message: the ledger check need not hash the bytes again
    assert message.checked_sha256 == hashlib.sha256(b"\x00\x01payload").hexdigest()
    with pytest.raises(MalformedMessage, match="bad magic"):
        decode_message(b"garbage")
    with pytest.raises(MalformedMessage, match="checksum"):
        decode_message(frame[:-1] + b"X")
    with pytest.raises(MalformedMessage, match="payload has"):
        decode_message(frame[:-2])


def test_a_large_frame_is_the_plain_layout_built_in_place():
    payload = os.urandom(4 * 1024 * 1024 + 3)  # large enough to be hashed beside the copy, in place
    frame = encode_message("t", "update", bytearray(payload), round=3)
    (head_len,) = struct.unpack(">I", frame[4:8])
    header = json.loads(frame[8:8 + head_len])
    assert type(frame) is bytes and frame[:4] == b"WBM1" and frame[8 + head_len:] == payload
    assert (header["size"], header["round"]) == (len(payload), 3)
    assert header["sha256"] == hashlib.sha256(payload).hexdigest()
    assert decode_message(frame, "bob").payload == payload
    with pytest.raises(MalformedMessage, match="checksum"):
        decode_message(frame[:-1] + bytes([frame[-1] ^ 1]))


def test_a_sender_that_has_its_payloads_sha256_is_not_made_to_hash_it_again_and_a_wrong_one_is_refused():
    for payload in (b"small", os.urandom(4 * 1024 * 1024 + 1)):
        digest = hashlib.sha256(payload).hexdigest()
        frame = encode_message("t", "update", payload, round=2)
        assert encode_message("t", "update", payload, payload_sha256=digest, round=2) == frame
        prefix, view = frame_parts("t", "update", payload, payload_sha256=digest, round=2)
        assert prefix + bytes(view) == frame
        wrong = encode_message("t", "update", payload, payload_sha256="0" * 64, round=2)
        with pytest.raises(MalformedMessage, match="checksum"):  # the receiver trusts no sender's digest
            decode_message(wrong)
        with pytest.raises(MalformedMessage, match="does not match its sha256"):
            read_message(trickle(wrong, 1 << 20), len(wrong))


def trickle(data: bytes, most: int):
    """A stream's readinto that hands out at most ``most`` bytes a call, like a socket."""
    stream = io.BytesIO(data)
    return lambda buffer: stream.readinto(buffer[:most])


@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024 + 5, HASH_BESIDE + 5])  # hashed once read, or beside
def test_read_message_checks_a_stream_as_it_reads_it(size):
    payload = os.urandom(size)
    frame = encode_message("t", "update", payload, round=1)
    checked = read_message(trickle(frame, 100_000), len(frame))
    assert isinstance(checked, CheckedFrame) and type(checked.payload) is bytes and checked.payload == payload
    message = decode_message(checked, sender="bob")
    assert (message.kind, message.sender, message.get("round"), message.payload) == ("update", "bob", 1, payload)
    assert message.checked_sha256 == hashlib.sha256(payload).hexdigest()
    flipped = bytearray(frame)
    flipped[-1000] ^= 1
    with pytest.raises(MalformedMessage, match="does not match its sha256"):
        read_message(trickle(bytes(flipped), 1 << 20), len(frame))
    with pytest.raises(MalformedMessage, match="ends after"):  # the stream stops early
        read_message(trickle(frame[:-10], 1 << 20), len(frame))
    with pytest.raises(MalformedMessage, match="payload has"):  # the size given is not the header's
        read_message(trickle(frame, 1 << 20), len(frame) - 1)
    with pytest.raises(MalformedMessage, match="bad magic"):
        read_message(trickle(b"PK\x03\x04" + frame[4:], 1 << 20), len(frame))
    with pytest.raises(MalformedMessage, match="out of range"):
        read_message(trickle(frame, 1 << 20), 20)


def test_read_hashed_returns_the_bytes_and_their_sha256():
    for size in (0, 10, 2 * 1024 * 1024 + 1, HASH_BESIDE, HASH_BESIDE + 300_001):
        data = os.urandom(size)
        got, digest = read_hashed(trickle(data, 300_000), size)
        assert (type(got), got, digest) == (bytes, data, hashlib.sha256(data).hexdigest())


def test_weights_round_trip_and_validation():
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float32)]
    expected = signature(weights)
    back = decode_weights(encode_weights(weights), expected)
    assert all(np.array_equal(a, b) for a, b in zip(weights, back))
    with pytest.raises(UpdateRejected, match="shape"):
        decode_weights(encode_weights([np.zeros((3, 2), np.float32), weights[1]]), expected)
    with pytest.raises(UpdateRejected, match="NaN"):
        decode_weights(encode_weights([weights[0], np.array([1, np.nan, 2], np.float32)]), expected)
    with pytest.raises(UpdateRejected, match="dtype"):
        decode_weights(encode_weights([weights[0].astype(np.float64), weights[1]]), expected)
    with pytest.raises(UpdateRejected, match="expected 2"):
        decode_weights(encode_weights(weights[:1]), expected)
    with pytest.raises(UpdateRejected, match="not readable"):
        decode_weights(b"\x80\x04\x95 pickle-looking bytes", expected)


def test_weights_are_read_as_the_library_reads_them_but_as_views_of_the_bytes():
    from safetensors.numpy import load

    weights = [np.random.default_rng(0).random((3, 4), np.float32), np.arange(5), np.zeros((0, 3)),
               np.array([True]), np.ones((2, 2), np.float16), np.arange(6, dtype=np.uint16).reshape(2, 3)]
    data = encode_weights(weights)
    library = load(data)
    ours = decode_weights(data)
    assert [(w.shape, w.dtype) for w in ours] == [(library[f"w{i:05d}"].shape, library[f"w{i:05d}"].dtype)
                                                 for i in range(len(weights))]
    assert all(np.array_equal(a, b) for a, b in zip(ours, weights))
    # no copy: each array is a read-only view of the received bytes (a GiB model is held once, not twice)
    raw = np.frombuffer(data, np.uint8)
    assert all(np.shares_memory(raw, w) and not w.flags.writeable for w in ours if w.size)


def test_weights_are_written_byte_for_byte_as_the_library_writes_them():
    from safetensors.numpy import load, save

    weights = [np.random.default_rng(1).random((3, 4), np.float32), np.arange(5), np.zeros((0, 3)), np.array(True),
               np.ones((2, 2), np.float16), np.arange(4, dtype=">i4"), np.asfortranarray(np.eye(3))]
    ours = encode_weights(weights)
    assert ours == save({f"w{i:05d}": np.ascontiguousarray(w) for i, w in enumerate(weights)})
    assert all(np.array_equal(load(ours)[f"w{i:05d}"], np.ascontiguousarray(w)) for i, w in enumerate(weights))
    with pytest.raises(ValueError, match="cannot be sent"):
        encode_weights([np.array(["text"])])


def _safetensors(header, body: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + body


def _f32(offsets, shape=(1,), dtype="F32"):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize("data, reason", [
    (b"\x01\x02", "shorter than the 8-byte header length"),
    (struct.pack("<Q", 2**64 - 1) + b"{}", "does not fit"),
    (struct.pack("<Q", 2) + b"\xff\xfe", "not JSON"),
    (struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    (_safetensors([1, 2]), "not a JSON object"),
    (_safetensors({"__metadata__": [1]}), "__metadata__"),
    (_safetensors({"w00000": _f32((0, 4)), "w00001": _f32((0, 4))}, bytes(8)), "does not start where"),
    (_safetensors({"w00000": _f32((4, 8))}, bytes(8)), "does not start where"),
    (_safetensors({"w00000": _f32((0, 4))}, bytes(5)), "cover 4 of 5 bytes"),
    (_safetensors({"w00000": _f32((0, 4))}, bytes(3)), "cover 4 of 3 bytes"),
    (_safetensors({"w00000": _f32((0, 8))}, bytes(8)), "not described correctly"),  # 2 floats, shape says 1
    (_safetensors({"w00000": _f32((0, 4), (2**40, 2**40))}, bytes(4)), "not described correctly"),
    (_safetensors({"w00000": _f32((0, 4), (-1,))}, bytes(4)), "not described correctly"),
    (_safetensors({"w00000": _f32((0, 4), (True,))}, bytes(4)), "not described correctly"),
    (_safetensors({"w00000": _f32((0, 2), dtype="BF16")}, bytes(2)), "not described correctly"),
    (_safetensors({"w00000": "F32"}), "not described correctly"),
])
def test_a_hostile_weights_header_is_rejected_with_the_reason(data, reason):
    with pytest.raises(UpdateRejected, match=reason):
        decode_weights(data)


def test_merged_moments_match_pooled_statistics():
    rng = np.random.default_rng(1)
    sites = [rng.normal(loc, scale, size=(n, 4)) for loc, scale, n in ((0, 1, 50), (100, 5, 7), (-3, 0.1, 300))]
    merged = merge_moments([feature_moments(x) for x in sites])
    pooled = np.concatenate(sites)
    assert merged["count"] == len(pooled)
    np.testing.assert_allclose(merged["mean"], pooled.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(merged["std"], pooled.std(axis=0), rtol=1e-9)
