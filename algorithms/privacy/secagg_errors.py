"""Errors raised by the POM 2 secure-aggregation state machines."""
from __future__ import annotations


class SecAggError(Exception):
    """A secure-aggregation round cannot go on (bad message, too few participants, failed check)."""


class SecAggOverflowError(SecAggError, OverflowError):
    """The fixed-point encoding would overflow the modulus for the given participants and weights."""


class SecAggSignatureError(SecAggError):
    """A key announcement is unsigned, forged, or signed by an unknown identity."""
