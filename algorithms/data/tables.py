"""Tables to a ``Dataset``: a pandas DataFrame (``dataset_from_frame``, which CSV and Parquet files go
through too) or arrays (``dataset_from_arrays``); non-numeric feature columns refused with the
column named, labels typed, missing values handled by ``missing`` (see the package's docstring)."""
from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from werkbund.algorithms.data.dataset import DataError, Dataset

if TYPE_CHECKING:
    import pandas

log = logging.getLogger("werkbund.data")

MISSING_CHOICES = ("drop", "error", "mean", "keep")

# What reads as missing in a feature column (pandas' default spellings). In the target column only
# an empty cell is missing, so that a class named "None" or "NA" stays a class.
NA_SPELLINGS = frozenset(("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                          "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"))


def _pandas():
    import pandas

    return pandas


def dataset_from_frame(frame: "pandas.DataFrame", target: str, features: list[str] | None = None,
                       kind: str = "classification", missing: str = "drop", source: str = "") -> Dataset:
    """A ``Dataset`` from a pandas DataFrame: the feature columns (all but ``target`` unless named)
    as float32, the labels from ``target``, missing values handled by ``missing`` (drop, error, mean)."""
    pd = _pandas()
    check_missing(missing)
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, not {type(frame).__name__}")
    where = source or "the DataFrame"
    names = [str(c).strip() for c in frame.columns]
    doubled = sorted(n for n, count in Counter(names).items() if count > 1)
    if doubled:
        raise DataError(f"{where} has more than one column named {', '.join(map(repr, doubled))}")
    target = str(target).strip()
    wanted = wanted_columns(where, names, target, features)
    position = {name: i for i, name in enumerate(names)}
    x = np.empty((len(frame), len(wanted)), dtype=np.float32)
    for j, name in enumerate(wanted):
        x[:, j] = _feature_column(frame.iloc[:, position[name]], name, source)
    labels, no_label = _target_column(frame.iloc[:, position[target]])
    return _assemble(x, labels, no_label, wanted, target, kind, missing, source)


def dataset_from_arrays(x, y, features: list[str] | None = None, target: str = "y",
                        kind: str = "classification", missing: str = "drop") -> Dataset:
    """A ``Dataset`` from arrays (or lists): ``x`` rows first, 2-D or more (flattened per row), ``y`` 1-D.
    NaN in ``x`` or a missing label (NaN, None) is handled by ``missing`` as in ``dataset_from_frame``."""
    pd = _pandas()
    check_missing(missing)
    try:
        x = np.asarray(x)
    except ValueError as exc:  # ragged nested lists
        raise DataError(f"x is not a rectangular array: {exc}") from None
    if np.iscomplexobj(x):
        raise DataError("x holds complex numbers; give real ones")
    if x.dtype == object:
        x = np.where(pd.isna(x), np.nan, x)  # None in x is a missing value, as NaN is
    if x.ndim < 2:
        raise DataError(f"x must be 2-D or more, rows first; it has shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"y must be 1-D, one label per row; it has shape {y.shape}")
    if y.shape[0] != x.shape[0]:
        raise DataError(f"x has {x.shape[0]} rows, y has {y.shape[0]}")
    try:
        values = x.astype(np.float32)
    except (ValueError, TypeError):
        bad = next((i for i, v in enumerate(x.flat) if not _is_number(v)), 0)
        row, col = divmod(bad, x.shape[1])
        value = x.flat[bad]
        value = value.item() if isinstance(value, np.generic) else value
        raise DataError(f"x is not numeric: x[{row}, {col}] (flattened per row) is {value!r}") from None
    if features is None:
        features = [f"x{i}" for i in range(x.shape[1])]
    features = [str(f) for f in features]
    if len(features) != x.shape[1]:
        raise DataError(f"{len(features)} feature names for {x.shape[1]} columns of x")
    if len(set(features)) != len(features) or target in features:
        raise DataError("the feature names and the target name must all differ")
    labels, no_label = _target_column(pd.Series(y))
    return _assemble(values, labels, no_label, features, str(target), kind, missing, "arrays")


def check_missing(missing: str) -> None:
    if missing not in MISSING_CHOICES:
        raise DataError(f"missing={missing!r} is not a choice: use {', '.join(MISSING_CHOICES)}")


def _listed(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def wanted_columns(where: str, names: list[str], target: str, features) -> list[str]:
    """The feature columns to read; raises a DataError naming what is not there."""
    if target not in names:
        raise DataError(f"{where} has no column {target!r}; its columns are {_listed(names)}")
    if isinstance(features, str):
        features = features.split(",")
    if features:
        wanted = list(dict.fromkeys(str(f).strip() for f in features))
        absent = [n for n in wanted if n not in names]
        if absent:
            raise DataError(f"{where} has no column(s) {', '.join(absent)}; its columns are {_listed(names)}")
        if target in wanted:
            raise DataError(f"{target!r} is the target; it cannot be a feature column too")
    else:
        wanted = [n for n in names if n != target]
    if not wanted:
        raise DataError(f"{where} has no feature columns besides the target {target!r}")
    return wanted


def _feature_column(column, name: str, source: str) -> np.ndarray:
    """One feature column as float32, NaN where a value is missing; a DataError if it holds text."""
    pd = _pandas()
    types = pd.api.types
    dtype = column.dtype
    if types.is_bool_dtype(dtype) or (types.is_numeric_dtype(dtype) and not types.is_complex_dtype(dtype)):
        return column.to_numpy(dtype=np.float32, na_value=np.nan)
    values = column.astype(object)
    present = values.notna().to_numpy()
    if types.is_datetime64_any_dtype(dtype) or types.is_timedelta64_dtype(dtype):
        numeric, failed = None, present
    else:
        try:
            numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            failed = present & np.isnan(numeric)
        except (TypeError, ValueError):  # e.g. lists or dicts in the cells
            numeric, failed = None, present
    if failed.any():
        rows = np.flatnonzero(failed)
        spelled_missing = np.fromiter((isinstance(v, str) and v.strip() in NA_SPELLINGS
                                       for v in values.iloc[rows]), dtype=bool, count=len(rows))
        bad = rows[~spelled_missing]
        if len(bad):
            prefix = f"{source}: " if source else ""
            raise DataError(f"{prefix}column {name!r} is not numeric ({values.iat[bad[0]]!r} in data row "
                            f"{bad[0] + 1}; {len(bad)} such value{'s' if len(bad) > 1 else ''} in all); "
                            "choose numeric feature columns with --features")
    return numeric.astype(np.float32) if numeric is not None else np.full(len(values), np.nan, np.float32)


def _target_column(column) -> tuple[np.ndarray, np.ndarray]:
    """The labels, float64 if every present value is numeric, else stripped strings (object array),
    and where the label is missing (NaN, None or an empty cell)."""
    pd = _pandas()
    types = pd.api.types
    dtype = column.dtype
    if types.is_bool_dtype(dtype):  # as a CSV of True/False has always been read: two string classes
        return column.astype(str).to_numpy(dtype=object), column.isna().to_numpy()
    if types.is_numeric_dtype(dtype) and not types.is_complex_dtype(dtype):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        return values, np.isnan(values)
    values = column.astype(object)
    absent = values.isna().to_numpy()
    text = np.empty(len(values), dtype=object)
    text[~absent] = values[~absent].astype(str).str.strip().to_numpy(dtype=object)
    absent = absent | (text == "")
    present = ~absent
    numeric = pd.to_numeric(pd.Series(text[present], dtype=object), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan)
    if np.isnan(numeric).any():
        return text, absent
    out = np.full(len(values), np.nan)
    out[present] = numeric
    return out, absent


def _labels(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return values.astype(str)
    if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype(np.int64)
    return values


def named_counts(counts: dict) -> str:
    return ", ".join(f"{name!r} {count}" for name, count in counts.items())


def _assemble(x: np.ndarray, labels: np.ndarray, no_label: np.ndarray, features: list[str], target: str,
              kind: str, missing: str, source: str) -> Dataset:
    holes = np.isnan(x)
    per_feature = holes.sum(axis=0)
    counts = {name: int(n) for name, n in zip(features, per_feature) if n}
    if no_label.any():
        counts[target] = int(no_label.sum())
    prefix = f"{source}: " if source else ""
    dropped = 0
    if counts:
        if missing == "error":
            raise DataError(f"{prefix}missing values in {len(counts)} column{'s' if len(counts) > 1 else ''}: "
                            + ", ".join(f"{name!r} ({n} of {len(x)} rows)" for name, n in counts.items())
                            + "; fill them in, or drop those rows (missing='drop') "
                            "or fill features with the column mean (missing='mean')")
        if missing == "drop":
            drop = holes.any(axis=1) | no_label
        else:  # mean and keep: only rows without a label go; mean fills the features from the rows kept
            drop = no_label
        keep = ~drop
        if drop.any():
            x, labels, holes = x[keep], labels[keep], holes[keep]
            dropped = int(drop.sum())
        filled = {}
        if missing == "mean":
            for j in np.flatnonzero(holes.any(axis=0)):
                column = x[:, j]
                present = column[~holes[:, j]]
                if not len(present):
                    raise DataError(f"{prefix}column {features[j]!r} has no values to take the mean of")
                column[holes[:, j]] = present.mean(dtype=np.float64)
                filled[features[j]] = int(holes[:, j].sum())
        note = [f"dropped {dropped} of {len(keep)} rows"] if dropped else []
        if missing == "keep" and holes.any():
            note.append("feature values kept as NaN")
        if filled:
            note.append("filled " + ", ".join(f"{name!r} {n}" for name, n in filled.items()) + " with the column mean")
        log.warning("%smissing values: %s; %s", prefix, named_counts(counts), "; ".join(note))
    if kind == "regression" and labels.dtype == object and len(labels):
        raise DataError(f"{prefix}the target {target!r} holds text ({labels[0]!r}); a regression needs numbers")
    meta = {"missing": counts, "dropped_rows": dropped, "missing_mode": missing}
    return Dataset(x, _labels(labels), list(features), target, kind=kind, source=source, meta=meta)


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False
