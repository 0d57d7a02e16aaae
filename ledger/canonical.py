"""RFC 8785 canonical JSON, fast: what every signature, hash and Merkle leaf of the ledger is made over.

``rfc8785.dumps`` writes canonical JSON one value at a time in Python; a round's relay canonicalizes
every statement two or three times on the platform, the aggregator and the participants, so it was
a quarter of the platform's time in a round. Most ledger JSON is something Python's own JSON
encoder (C) already writes exactly as RFC 8785 does, once its floats are taken care of:

* keys sorted: RFC 8785 sorts by UTF-16 code units, Python by code points; the two orders agree
  for ASCII keys;
* strings: both escape ``"``, ``\\`` and the control characters alike (``\\n`` and the other short
  forms, ``\\u00XX`` in lower case for the rest) and write everything else as UTF-8;
* integers: both write the digits; RFC 8785 allows only ±(2**53 - 1);
* floats: RFC 8785 writes ECMAScript's shortest form. For a whole number below 2**53 that is the
  integer's digits (``2.0`` -> ``2``, ``-0.0`` -> ``0``); for any other float at least 1e-4 in size
  (a float that is not a whole number is below 2**53) Python's ``repr``, which the encoder uses, is
  that same form, without an exponent.

:func:`canonical_json` takes that path when a value has only such parts, and hands anything else
(a non-ASCII key, a float such as ``1e-05`` or ``1e+21``, an integer out of range, NaN, a lone
surrogate, a type JSON does not have) to ``rfc8785.dumps``, which writes it or refuses it. So the
bytes are ``rfc8785.dumps``'s in every case (``tests/unit/test_ledger_canonical.py`` compares the
two on generated values) and only the time differs.
"""
from __future__ import annotations

import json
import math

import rfc8785

CanonicalizationError = rfc8785.CanonicalizationError

_SAFE = 2**53 - 1
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class _Slow(Exception):
    """A part Python's encoder would not write as RFC 8785 does."""


def canonical_json(value) -> bytes:
    """``value``'s RFC 8785 serialization (raises :class:`CanonicalizationError` where it has none)."""
    try:
        return _ENCODER.encode(_plain(value)).encode("utf-8")
    except (_Slow, ValueError, UnicodeEncodeError, RecursionError):
        return rfc8785.dumps(value)


def _plain(value):
    """``value`` with each whole-number float as its integer; raises _Slow for a part the fast path
    cannot write exactly as RFC 8785."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if -_SAFE <= value <= _SAFE:
            return value
        raise _Slow
    if kind is float:
        if not math.isfinite(value):
            raise _Slow
        if value.is_integer():  # (above 2**53 RFC 8785 writes the shortest digits, not the integer's)
            if -_SAFE <= value <= _SAFE:
                return int(value)
            raise _Slow
        if -1e-4 < value < 1e-4:  # (where repr, and so the encoder, writes an exponent: 1e-05)
            raise _Slow
        return value
    if kind is dict:
        plain = {}
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                raise _Slow
            plain[key] = _plain(item)
        return plain
    if kind is list or kind is tuple:
        return [_plain(item) for item in value]
    raise _Slow
