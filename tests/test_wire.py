"""Task messages, weights on the wire and federated statistics."""
import numpy as np
import pytest

from werkbund.algorithms.arrays import UpdateRejected, decode_weights, encode_weights, signature
from werkbund.algorithms.statistics import feature_moments, merge_moments
from werkbund.client.messages import MalformedMessage, decode_message, encode_message


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
