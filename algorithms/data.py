"""A participant's local data: CSV, Parquet, NPZ, a pandas DataFrame, arrays or a built-in set,
split into train and test locally.

The data never leaves the participant's machine; only a schema summary
(feature names, target, classes, row count) is reported when joining a task.

Data specs as given on the command line (``load_dataset``):

- ``path/to/file.csv`` with ``target="label"``: read with ``pandas.read_csv``; numeric feature
  columns (all but the target, or the ones named in ``features``), the target column by name;
- ``path/to/file.parquet`` (or ``.pq``) with ``target=...``: read with ``pandas.read_parquet``
  (pyarrow), the same rules as a CSV;
- ``path/to/file.npz``: arrays ``x`` (rows first) and ``y``, read with ``allow_pickle=False``;
- ``builtin:digits``: scikit-learn's 8x8 digits (ships with scikit-learn, offline);
- ``builtin:mnist``: MNIST from the IDX ``.gz`` files in ``$WERKBUND_MNIST_DIR``
  (or an ``mnist.npz`` there); without that variable it is an error.

From Python (a notebook): ``dataset_from_frame(frame, target, ...)`` takes a pandas DataFrame, and
``dataset_from_arrays(x, y, ...)`` takes NumPy arrays or lists (``x`` rows first, flattened per row).
CSV and Parquet files go through ``dataset_from_frame`` too, so all three behave alike:

- features become a float32 matrix; a column that is not numeric is an error that names the
  column and shows one of its values (choose the feature columns with ``features`` / ``--features``);
- labels are integers when every value is integral, floats when numeric, strings otherwise;
- missing values (empty cells, NaN, None; in a feature column also the usual spellings such as
  ``NA``, ``NaN``, ``null``; in the target column only an empty cell, so a class named ``None``
  stays a class) are handled and named, by ``missing``:

  - ``"drop"`` (default): the rows with any missing feature or target value are dropped, with
    one warning that names the columns and counts;
  - ``"error"``: a ``DataError`` that names each column with missing values and its count;
  - ``"mean"``: a missing feature value becomes the column's local mean (over the rows kept);
    rows with a missing target are still dropped;
  - ``"keep"``: missing feature values stay NaN (for algorithms that count them, such as
    ``statistics``); rows with a missing target are still dropped.

  The per-column counts are kept in ``dataset.meta["missing"]`` (e.g. ``{"temp": 3, "label": 1}``),
  the number of dropped rows in ``dataset.meta["dropped_rows"]``; both stay on this machine.

``shard="i/n"`` keeps the i-th of n disjoint, seeded parts (1-based), so several
participants can take different parts of one file in a demo.
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas

log = logging.getLogger("werkbund.data")

MISSING_CHOICES = ("drop", "error", "mean", "keep")

# What reads as missing in a feature column (pandas' default spellings). In the target column only
# an empty cell is missing, so that a class named "None" or "NA" stays a class.
NA_SPELLINGS = frozenset(("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                          "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"))


class DataError(ValueError):
    """The local data cannot be used as given (a user's mistake, with the reason)."""


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray
    features: list[str]
    target: str
    kind: str = "classification"
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def classes(self) -> list:
        return _json_values(np.unique(self.y)) if self.kind == "classification" else []

    def schema(self, share_size: bool = True) -> dict:
        schema = {"kind": self.kind, "features": list(self.features), "target": self.target,
                  "classes": self.classes}
        if share_size:
            schema["n_samples"] = len(self)
        return schema

    def split(self, test_size: float, seed: int) -> tuple["Dataset", "Dataset"]:
        order = np.random.default_rng(seed).permutation(len(self))
        n_test = int(round(len(self) * test_size))
        test, train = order[:n_test], order[n_test:]
        return self._take(train), self._take(test)

    def shard(self, index: int, count: int, seed: int = 0) -> "Dataset":
        if not 1 <= index <= count:
            raise DataError(f"shard {index}/{count}: the index must be between 1 and {count}")
        order = np.random.default_rng(seed).permutation(len(self))
        return self._take(np.array_split(order, count)[index - 1])

    def in_order(self, features: list[str]) -> "Dataset":
        """The same rows with the feature columns in the task's order (a participant whose file lists
        the same columns in another order trains on them as the others do)."""
        if list(features) == list(self.features):
            return self
        if sorted(features) != sorted(self.features):
            raise DataError(f"your feature columns {self.features} are not the task's {list(features)}")
        index = [self.features.index(name) for name in features]
        return Dataset(self.x[:, index], self.y, list(features), self.target, self.kind, self.source, self.meta)

    def _take(self, rows) -> "Dataset":
        return Dataset(self.x[rows], self.y[rows], self.features, self.target, self.kind, self.source, self.meta)


def _json_values(values) -> list:
    out = []
    for v in values:
        v = v.item() if hasattr(v, "item") else v
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out.append(v)
    return out


def load_dataset(spec: str, target: str | None = None, shard: str | None = None,
                 features: list[str] | None = None, kind: str = "classification",
                 missing: str = "drop") -> Dataset:
    _check_missing(missing)
    if spec.startswith("builtin:"):
        data = _builtin(spec[len("builtin:"):])
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(f"data file {path} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".npz":
            data = load_npz(path)
        elif suffix in (".csv", ".txt"):
            if not target:
                raise DataError("a CSV needs the name of its target column (--target)")
            data = load_csv(path, target, features, missing=missing, kind=kind)
        elif suffix in (".parquet", ".pq"):
            if not target:
                raise DataError("a Parquet file needs the name of its target column (--target)")
            data = load_parquet(path, target, features, missing=missing, kind=kind)
        else:
            raise DataError(f"unsupported data file {path.name}: use .csv, .parquet, .npz, builtin:digits "
                            "or builtin:mnist")
    data.kind = kind
    data = apply_shard(data, shard)
    if len(data) == 0:
        dropped = data.meta.get("dropped_rows", 0)
        if dropped:
            raise DataError(f"{spec} holds no rows once the {dropped} with missing values are dropped "
                            f"({_named_counts(data.meta['missing'])})")
        raise DataError(f"{spec} holds no rows")
    return data


def _pandas():
    import pandas

    return pandas


def apply_shard(data: Dataset, shard: str | None) -> Dataset:
    """Part ``i/n`` of the data (``shard="1/3"``), or all of it for ``None``."""
    if not shard:
        return data
    try:
        index, count = (int(p) for p in shard.split("/"))
    except ValueError:
        raise DataError(f"shard must look like 1/3, not {shard!r}") from None
    return data.shard(index, count)


def load_csv(path: str | Path, target: str, features: list[str] | None = None, missing: str = "drop",
             kind: str = "classification") -> Dataset:
    """A CSV with a header row, read with ``pandas.read_csv``; see ``dataset_from_frame``."""
    pd = _pandas()
    _check_missing(missing)
    path = Path(path)
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
        raw = {str(h).strip(): h for h in header}
        names = list(raw)
        wanted = _wanted_columns(str(path), names, target, features)
        # Per-column missing markers: pandas' spellings in the features, only an empty cell in the target.
        na_values = {raw[name]: NA_SPELLINGS for name in wanted}
        na_values[raw[target]] = [""]
        frame = pd.read_csv(path, usecols=[raw[n] for n in (*wanted, target)] if features else None,
                            keep_default_na=False, na_values=na_values)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path} is not a well-formed CSV: {str(exc).strip()}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return dataset_from_frame(frame, target, wanted, kind=kind, missing=missing, source=str(path))


def load_parquet(path: str | Path, target: str, features: list[str] | None = None, missing: str = "drop",
                 kind: str = "classification") -> Dataset:
    """A Parquet file, read with ``pandas.read_parquet`` (pyarrow); see ``dataset_from_frame``."""
    pd = _pandas()
    import pyarrow
    import pyarrow.parquet

    _check_missing(missing)
    path = Path(path)
    try:
        stored = [n for n in pyarrow.parquet.read_schema(path).names if not n.startswith("__index_level_")]
        wanted = _wanted_columns(str(path), stored, target, features)
        frame = pd.read_parquet(path, engine="pyarrow", columns=[*wanted, target] if features else None)
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable Parquet file: {exc}") from None
    named = (*wanted, target) if features else (target,)
    if any(name in named for name in frame.index.names if name is not None):
        frame = frame.reset_index()  # pandas stores a named index apart from the columns; it is one here
    return dataset_from_frame(frame, target, wanted if features else None, kind=kind, missing=missing,
                              source=str(path))


def dataset_from_frame(frame: "pandas.DataFrame", target: str, features: list[str] | None = None,
                       kind: str = "classification", missing: str = "drop", source: str = "") -> Dataset:
    """A ``Dataset`` from a pandas DataFrame: the feature columns (all but ``target`` unless named)
    as float32, the labels from ``target``, missing values handled by ``missing`` (drop, error, mean)."""
    pd = _pandas()
    _check_missing(missing)
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, not {type(frame).__name__}")
    where = source or "the DataFrame"
    names = [str(c).strip() for c in frame.columns]
    doubled = sorted(n for n, count in Counter(names).items() if count > 1)
    if doubled:
        raise DataError(f"{where} has more than one column named {', '.join(map(repr, doubled))}")
    target = str(target).strip()
    wanted = _wanted_columns(where, names, target, features)
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
    _check_missing(missing)
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


def _check_missing(missing: str) -> None:
    if missing not in MISSING_CHOICES:
        raise DataError(f"missing={missing!r} is not a choice: use {', '.join(MISSING_CHOICES)}")


def _listed(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _wanted_columns(where: str, names: list[str], target: str, features) -> list[str]:
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


def _named_counts(counts: dict) -> str:
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
        log.warning("%smissing values: %s; %s", prefix, _named_counts(counts), "; ".join(note))
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


def load_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz or "y" not in npz:
                raise DataError(f"{path} must hold arrays named x and y; it holds {', '.join(npz.files)}")
            x, y = npz["x"], npz["y"]
    except ValueError as exc:
        raise DataError(f"{path} is not a plain NPZ file: {exc}") from None
    x = x.reshape(x.shape[0], -1).astype(np.float32)
    if y.shape[0] != x.shape[0]:
        raise DataError(f"{path}: x has {x.shape[0]} rows, y has {y.shape[0]}")
    return Dataset(x, y.reshape(-1), [f"x{i}" for i in range(x.shape[1])], "y", source=str(path))


def _builtin(name: str) -> Dataset:
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        features = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
        return Dataset(bunch.data.astype(np.float32), bunch.target.astype(np.int64), features, "digit",
                       source="builtin:digits")
    if name == "mnist":
        directory = os.environ.get("WERKBUND_MNIST_DIR")
        if not directory:
            raise DataError("builtin:mnist needs WERKBUND_MNIST_DIR: a folder with the four MNIST IDX .gz files "
                            "or an mnist.npz")
        return load_mnist(directory)
    raise DataError(f"unknown built-in dataset {name!r}; use builtin:digits or builtin:mnist")


def load_mnist(directory: str | Path, split: str = "train") -> Dataset:
    """MNIST from the four IDX ``.gz`` files, or an ``mnist.npz`` with x_train/y_train/x_test/y_test."""
    directory = Path(directory).expanduser()
    npz = directory / "mnist.npz" if directory.is_dir() else directory
    if npz.suffix == ".npz" and npz.exists():
        with np.load(npz, allow_pickle=False) as data:
            x, y = data[f"x_{split}"], data[f"y_{split}"]
    else:
        prefix = "train" if split == "train" else "t10k"
        images = directory / f"{prefix}-images-idx3-ubyte.gz"
        labels = directory / f"{prefix}-labels-idx1-ubyte.gz"
        if not images.exists() or not labels.exists():
            raise DataError(f"no MNIST files in {directory}; set WERKBUND_MNIST_DIR to a folder with the IDX .gz files")
        x, y = read_idx(images), read_idx(labels)
    x = x.reshape(x.shape[0], -1).astype(np.float32)
    return Dataset(x, y.astype(np.int64), [f"pixel_{i}" for i in range(x.shape[1])], "digit",
                   source=f"mnist:{split}")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as used by MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise DataError(f"{path} is cut short")
    return array.reshape(dims)
