"""Federated standardization of tabular features (k-means, linear and logistic regression, the
neural network).

Aggregator: ``federated_moments`` asks every participant for its count, mean and M2 per column
(optionally of its target too), refuses malformed ones (``moments.checked_moments``) and merges the
rest exactly (``moments.merge_moments``); ``federated_scaler`` turns them into the pooled mean and
scale. A column whose pooled variance is below ``CONSTANT_VARIANCE`` is left unscaled.

Participant: ``complete`` refuses rows with missing or infinite values, ``float_list`` reads the
mean and scale the aggregator sends, ``standardized`` applies them.
"""
from __future__ import annotations

import numpy as np

from werkbund.algorithms.moments import checked_moments, merge_moments

# a column whose pooled variance is below this is left unscaled (as scikit-learn's StandardScaler does)
CONSTANT_VARIANCE = 1e-12


class _Header:
    """A dict seen through ``get``, like a message header (for the target's moments)."""

    def __init__(self, fields: dict):
        self.fields = fields if isinstance(fields, dict) else {}

    def get(self, key, default=None):
        return self.fields.get(key, default)


def federated_moments(aggregator, n_columns: int, target: bool = False) -> tuple[dict, dict | None]:
    """Ask every participant for its column moments (and, with ``target``, its target's moments in the
    header field ``target``); return the merged moments (``moments.merge_moments``) of the columns and
    of the target (None without ``target``). A participant whose moments are refused counts for neither."""
    moments, targets = [], []

    def take(message):
        declared = aggregator.declared.get(message.sender)
        columns = checked_moments(message, n_columns, declared)
        if target:
            targets.append(checked_moments(_Header(message.get("target") or {}), 1, declared))
        moments.append(columns)

    collected = aggregator.exchange("stats", expect="stats", number=-1, handler=take)
    merged = merge_moments(moments)
    aggregator.progress.message(f"federated standardization over {merged['count']} rows from "
                                f"{', '.join(collected.accepted)}")
    return merged, (merge_moments(targets) if target else None)


def unit_variance(merged: dict) -> np.ndarray:
    """The pooled variance per column, 1 where a column is constant."""
    return np.where(merged["variance"] > CONSTANT_VARIANCE, merged["variance"], 1.0)


def unit_scale(merged: dict) -> np.ndarray:
    """The pooled standard deviation per column, 1 where a column is constant."""
    return np.where(merged["variance"] > CONSTANT_VARIANCE, merged["std"], 1.0)


def federated_scaler(aggregator, n_columns: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Ask every participant for its column moments; return the pooled mean, scale (std, 1 where a
    column is constant) and row count."""
    merged, _ = federated_moments(aggregator, n_columns)
    return merged["mean"], unit_scale(merged), int(merged["count"])


def float_list(values, length: int, name: str) -> np.ndarray:
    """A list of ``length`` finite numbers from a message header, as float64."""
    if not isinstance(values, list) or len(values) != length:
        raise ValueError(f"the aggregator's {name} must list {length} numbers")
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"the aggregator's {name} holds NaN or infinite values")
    return array


def complete(x: np.ndarray, algorithm: str) -> np.ndarray:
    """The rows as float64, refused with a clear reason if any value is missing or infinite."""
    x = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{algorithm} needs complete rows, but {int(bad.sum())} of {len(x)} local rows hold "
                         "missing (NaN) or infinite values; drop or fill them first")
    return x


def standardized(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float64) - mean) / scale
