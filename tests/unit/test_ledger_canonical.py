"""The ledger's canonical JSON (``ledger/canonical.py``) is byte for byte ``rfc8785.dumps``: its fast path
through Python's JSON encoder must never write other bytes, or signatures made by one version would not
verify under the other. Compared on the cases where the two encoders differ and on generated values."""
import pytest
import rfc8785
from hypothesis import given, settings, strategies as st

from werkbund.ledger.canonical import CanonicalizationError, _plain, canonical_json

EDGES = [
    0.0, -0.0, 1.0, -2.0, 0.1, -0.5, 123.456, 1e-4, -1e-4, 9.999999999999999e-05, 1.0000000000000002e-4, 1.5e-4, 1e-5, 3.2e-05, 1e-6, 1e-7, 5e-324, 1e15, 1e16,
    1.2345678901234567e19, 1e20, 1e21, 1e22, 2.0**53 - 1, 2.0**53, 2.0**53 + 2, 9007199254740991.0,
    -9007199254740993.0, 1.7976931348623157e308, 0.30000000000000004, 2**53 - 1, -(2**53 - 1), 0, True, False,
    None, "", "é", "\x00\x01\x1f\x7f", "a\"b\\c/d", "\b\f\n\r\t", "\u2028\u2029", "😀", "\ufeff",
    {"z": 1, "a": [1, 2.5, {"é": 1}], "\ue000": 1, "😀": 2}, {"b": {"c": {"d": []}}, "a": {}}, [[], {}, [None]],
    (1, "two", 3.0),
]


@pytest.mark.parametrize("value", EDGES, ids=repr)
def test_the_edges_are_written_as_rfc8785_writes_them(value):
    assert canonical_json(value) == rfc8785.dumps(value)
    assert canonical_json({"v": value, "list": [value]}) == rfc8785.dumps({"v": value, "list": [value]})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 2**53, -(2**53), "\ud800",
                                   {1: "a"}, {"x": object()}, {"x": b"bytes"}])
def test_what_rfc8785_refuses_is_refused(value):
    with pytest.raises(CanonicalizationError):
        canonical_json({"v": value})


def test_a_ledger_statement_takes_the_fast_path():
    """What a round's statements hold (text, hashes, counts, metrics) goes through Python's encoder."""
    statement = {"task": "t", "type": "update_submitted", "author": "site001",
                 "timestamp": "2026-12-07T08:00:00.000000Z",
                 "payload": {"round": 3, "n_samples": 48, "sha256": "a" * 64,
                             "validation": {"loss": 0.5123, "accuracy": 0.9, "per_class": [0.25, 1.0, 0.0] * 10}}}
    assert _plain(statement)["payload"]["validation"]["per_class"][:3] == [0.25, 1, 0]
    assert canonical_json(statement) == rfc8785.dumps(statement)


def _keys():
    return st.text(max_size=6)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_keys(), children, max_size=5),
    max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(JSON)
def test_generated_values_are_written_as_rfc8785_writes_them(value):
    try:
        expected = rfc8785.dumps(value)
    except CanonicalizationError:
        with pytest.raises(CanonicalizationError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected
