"""Federated feature statistics: per-site count, mean and M2, merged exactly.

Each participant sends ``count``, ``mean`` and ``m2`` (sum of squared deviations
from its own mean) per feature; the aggregator merges them with the parallel
variance formula (Chan, Golub and LeVeque), which gives the pooled mean and
variance without any site revealing its rows.
"""
from __future__ import annotations

import numpy as np


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
