"""Per-site feature moments (count, mean and M2 per column): computed, checked and merged exactly.

Each participant sends ``count``, ``mean`` and ``m2`` (sum of squared deviations
from its own mean) per feature (``feature_moments``); the aggregator refuses malformed or
out-of-range ones (``checked_moments``) and merges the rest with the parallel variance formula
(Chan, Golub and LeVeque, ``merge_moments``), which gives the pooled mean and variance without any
site revealing its rows. The ``statistics`` algorithm, a task of its own, is
``builtin/federated_statistics.py``; federated standardization is ``standardization.py``.
"""
from __future__ import annotations

import numpy as np

from werkbund.algorithms.arrays import UpdateRejected

# bounds on one site's statistics: real features are far inside them, and within them the pooled
# mean and M2 (merge_moments) cannot overflow a double whatever the sites send
MAX_ABS_MEAN = 1e100
MAX_VARIANCE = 1e200


def feature_moments(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    count = x.shape[0]
    mean = x.mean(axis=0) if count else np.zeros(x.shape[1])
    m2 = ((x - mean) ** 2).sum(axis=0)
    return {"count": int(count), "mean": mean.tolist(), "m2": m2.tolist()}


def merge_moments(parts: list[dict]) -> dict:
    """Pooled count, mean, M2, variance (population) and std from per-site moments."""
    count, mean, m2 = 0, None, None
    for part in parts:
        n_b = int(part["count"])
        if n_b == 0:
            continue
        mean_b = np.asarray(part["mean"], dtype=np.float64)
        m2_b = np.asarray(part["m2"], dtype=np.float64)
        if mean is None:
            count, mean, m2 = n_b, mean_b.copy(), m2_b.copy()
            continue
        if mean_b.shape != mean.shape:
            raise ValueError(f"sites report {mean.shape[0]} and {mean_b.shape[0]} features")
        n = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / n)
        m2 = m2 + m2_b + delta**2 * (count * n_b / n)
        count = n
    if mean is None:
        raise ValueError("no site reported any rows")
    variance = m2 / count
    return {"count": count, "mean": mean, "m2": m2, "variance": variance, "std": np.sqrt(variance)}


def checked_moments(message, n_columns: int, most: int | None = None) -> dict:
    """One participant's count, mean and M2 per column, refused (UpdateRejected, with the reason that
    goes into the round record) if malformed, beyond the bounds above, or counting more rows than
    ``most`` (what the participant declared when it joined)."""
    count, mean, m2 = message.get("count"), message.get("mean"), message.get("m2")
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise UpdateRejected("statistics without a positive row count")
    if most is not None and count > most:
        raise UpdateRejected(f"statistics over {count} rows, but the participant declared {most} rows when it joined")
    arrays = {}
    for name, values in (("mean", mean), ("m2", m2)):
        if not isinstance(values, list) or len(values) != n_columns:
            raise UpdateRejected(f"statistics: {name} must list {n_columns} numbers")
        try:
            arrays[name] = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise UpdateRejected(f"statistics: {name} holds something that is not a number") from None
        if not np.isfinite(arrays[name]).all():
            raise UpdateRejected(f"statistics: {name} holds NaN or infinite values")
    if (arrays["m2"] < 0).any():
        raise UpdateRejected("statistics: m2 cannot be negative")
    if (np.abs(arrays["mean"]) > MAX_ABS_MEAN).any() or (arrays["m2"] / count > MAX_VARIANCE).any():
        raise UpdateRejected(f"statistics out of range: a mean beyond ±{MAX_ABS_MEAN:g} or a variance beyond "
                             f"{MAX_VARIANCE:g} is no feature of real data")
    return {"count": count, "mean": mean, "m2": m2}
