"""Pieces shared by the tabular algorithms (k-means, linear and logistic regression, statistics).

- ``federated_scaler``: the aggregator's side of federated standardization (participants send
  count, mean and M2 per column, merged exactly with ``merge_moments``);
- ``named_arrays_bytes`` / ``read_named_arrays``: a final model as safetensors with named tensors
  (never pickle);
- ``write_local_result``: a participant's copy of the final model plus its JSON description.
"""
from __future__ import annotations

import json
import os

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from werkbund.algorithms.arrays import UpdateRejected
from werkbund.algorithms.statistics import merge_moments

# a column whose pooled variance is below this is left unscaled (as scikit-learn's StandardScaler does)
CONSTANT_VARIANCE = 1e-12


# bounds on one site's statistics: real features are far inside them, and within them the pooled
# mean and M2 (statistics.merge_moments) cannot overflow a double whatever the sites send
MAX_ABS_MEAN = 1e100
MAX_VARIANCE = 1e200


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


def federated_scaler(aggregator, n_columns: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Ask every participant for its column moments; return the pooled mean, scale (std, 1 where a
    column is constant) and row count."""
    moments = []
    collected = aggregator.exchange("stats", expect="stats", number=-1,
                                    handler=lambda m: moments.append(
                                        checked_moments(m, n_columns, aggregator.declared.get(m.sender))))
    merged = merge_moments(moments)
    scale = np.where(merged["variance"] > CONSTANT_VARIANCE, merged["std"], 1.0)
    aggregator.progress.message(f"federated standardization over {merged['count']} rows from "
                                f"{', '.join(collected.accepted)}")
    return merged["mean"], scale, int(merged["count"])


def float_list(values, length: int, name: str) -> np.ndarray:
    """A list of ``length`` finite numbers from a message header, as float64."""
    if not isinstance(values, list) or len(values) != length:
        raise ValueError(f"the aggregator's {name} must list {length} numbers")
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"the aggregator's {name} holds NaN or infinite values")
    return array


def named_arrays_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    return st_save({name: np.ascontiguousarray(value) for name, value in arrays.items()})


def read_named_arrays(data: bytes) -> dict[str, np.ndarray]:
    try:
        return st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise ValueError(f"not a readable safetensors model: {exc}") from None


def write_local_result(path, data: bytes, meta: dict) -> str:
    """Write the final model bytes to ``path`` and its description to ``path.json``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    with open(f"{path}.json", "w") as handle:
        json.dump(meta, handle, indent=2)
    return str(path)


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
