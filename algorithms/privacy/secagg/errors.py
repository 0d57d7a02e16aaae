"""Errors raised by the POM 2 secure-aggregation state machines."""
from __future__ import annotations


class SecAggError(Exception):
    """A secure-aggregation round cannot go on (bad message, too few participants, failed check)."""


class SecAggOverflowError(SecAggError, OverflowError):
    """The fixed-point encoding would overflow the modulus for the given participants and weights."""


class SecAggSignatureError(SecAggError):
    """A key announcement is unsigned, forged, or signed by an unknown identity."""


class SecAggConsistencyError(SecAggError):
    """The aggregator showed participants different views of a round (who shared keys, who survived,
    the round's parameters), or could not show ``threshold`` signatures on this participant's view;
    no share is released."""


class SecAggRosterError(SecAggError):
    """A round's roster or threshold does not match the task: someone on it never joined, or the
    threshold is below the task's (``pom_options.threshold``, at least a majority of those who joined)."""
