"""What every front refuses in a request's JSON (``check_json``: nesting past 64 levels, an integer beyond
±(2**53 - 1), a NUL or a lone surrogate in any text or key), whichever of its two walks decides: the quick one
that passes a well-formed body, the one that names the place of what it refuses."""
import pytest
from hypothesis import given, settings, strategies as st

from werkbund.platform.command_schemas import MAX_JSON_DEPTH, _fine, _walk, check_json
from werkbund.platform.errors import InvalidInput


def nested(depth):
    value = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("value,where", [
    ({"a": [1, 2, {"b": "x\x00y"}]}, "a[2].b: a text may not hold a NUL"),
    ({"a\x00": 1}, "a\x00: a text may not hold a NUL"),
    ({"a": ["ok", "\ud800"]}, "a[1]: a text may not hold a lone surrogate"),
    ({"m": [[0, 1], [2, 2**53]]}, "m[1][1]: the integer 9007199254740992 lies outside"),
    ({"n": -(2**53)}, "n: the integer"),
    ({"deep": nested(MAX_JSON_DEPTH)}, "nested too deeply"),
])
def test_what_is_refused_is_named_where_it_is(value, where):
    with pytest.raises(InvalidInput) as caught:
        check_json(value, "p")
    assert where in str(caught.value)


def test_a_round_relay_sized_body_passes():
    statement = {"payload": {"confusion": [[0] * 10] * 10, "precision": [1.0, 0.5] * 5, "loss": 0.2,
                             "note": "é", "none": None, "flag": True}}
    body = {"items": [{"statement": statement, "signature": "s" * 88}] * 12,
            "deep": nested(MAX_JSON_DEPTH - 2), "big": [2**53 - 1, -(2**53 - 1)]}
    assert _fine(body, 0)
    check_json(body)


TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0xDFFF), max_size=6)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**54), 2**54) | st.floats() | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=30)


@settings(max_examples=500, deadline=None)
@given(JSON, st.integers(0, 3))
def test_the_quick_walk_passes_exactly_what_the_naming_walk_passes(value, extra_depth):
    value = nested(MAX_JSON_DEPTH - 1 + extra_depth) if extra_depth >= 2 else {"v": value}
    try:
        _walk(value, "p")
        refused = False
    except InvalidInput:
        refused = True
    assert _fine(value, 0) is not refused
