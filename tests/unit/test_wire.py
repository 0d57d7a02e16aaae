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
from werkbund.client.messages import (CheckedFrame, MalformedMessage, decode_message, encode_message, read_hashed,
                                      read_message)


def test_message_round_trip_and_checks():
    frame = encode_message("t", "update", b"\x00\x01payload", round=3, n_samples=5)
    message = decode_message(frame, sender="bob")
    assert (message.kind, message.sender, message.payload, message.get("round")) == ("update", "bob", b"\x00\x01payload", 3)
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


def trickle(data: bytes, most: int):
    """A stream's readinto that hands out at most ``most`` bytes a call, like a socket."""
    stream = io.BytesIO(data)
    return lambda buffer: stream.readinto(buffer[:most])


def test_read_message_checks_a_stream_as_it_reads_it():
    payload = os.urandom(3 * 1024 * 1024 + 5)
    frame = encode_message("t", "update", payload, round=1)
    checked = read_message(trickle(frame, 100_000), len(frame))
    assert isinstance(checked, CheckedFrame) and type(checked.payload) is bytes and checked.payload == payload
    message = decode_message(checked, sender="bob")
    assert (message.kind, message.sender, message.get("round"), message.payload) == ("update", "bob", 1, payload)
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
    for size in (0, 10, 2 * 1024 * 1024 + 1):
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


def test_merged_moments_match_pooled_statistics():
    rng = np.random.default_rng(1)
    sites = [rng.normal(loc, scale, size=(n, 4)) for loc, scale, n in ((0, 1, 50), (100, 5, 7), (-3, 0.1, 300))]
    merged = merge_moments([feature_moments(x) for x in sites])
    pooled = np.concatenate(sites)
    assert merged["count"] == len(pooled)
    np.testing.assert_allclose(merged["mean"], pooled.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(merged["std"], pooled.std(axis=0), rtol=1e-9)
