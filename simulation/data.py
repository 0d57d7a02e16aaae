"""The one data set a simulation cuts into virtual companies, and the column it may cut along.

Whatever ``Task.join`` takes works here (``werkbund.client.python_api.task.as_dataset``): a CSV,
Parquet or NPZ path, ``builtin:digits``, a pandas DataFrame, a pair of arrays ``(x, y)`` or a
``Dataset``. A partition by column needs that column's value for every row kept: for a file or a
DataFrame the column may be any column, numeric or not (AI4I's ``Type`` is a letter) and is not a
feature unless ``features`` names it; for arrays or a ``Dataset`` it must be a feature or the target.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from werkbund.algorithms.data.dataset import DataError, Dataset
from werkbund.algorithms.data.tables import dataset_from_frame
from werkbund.client.python_api.task import as_dataset

ROW_ID = "__werkbund_row__"  # carried through the loader's missing-value handling to align the column


def load(data, target: str | None = None, features: list[str] | None = None, kind: str = "classification",
         missing: str = "drop", column: str | None = None) -> tuple[Dataset, np.ndarray | None]:
    """The data set, and the values of ``column`` for its rows (None without a column)."""
    if isinstance(features, str):
        features = [f.strip() for f in features.split(",") if f.strip()]
    if column is None:
        return as_dataset(data, target=target, features=features, kind=kind, missing=missing), None
    frame, source = _frame(data)
    if frame is None:  # arrays, a Dataset or a builtin: the column is one of its own
        dataset = as_dataset(data, target=target, features=features, kind=kind, missing=missing)
        if column in dataset.features:
            return dataset, dataset.x[:, dataset.features.index(column)].copy()
        if column == dataset.target:
            return dataset, np.asarray(dataset.y).copy()
        raise DataError(f"cannot partition by column {column!r}: the data has features "
                        f"{', '.join(dataset.features[:12])}{' ...' if len(dataset.features) > 12 else ''} "
                        f"and target {dataset.target!r}")
    names = [str(c).strip() for c in frame.columns]
    frame.columns = names
    if column not in names:
        raise DataError(f"cannot partition by column {column!r}: {source} has no such column "
                        f"(it has {', '.join(names[:12])}{' ...' if len(names) > 12 else ''})")
    if not target:
        raise DataError(f"{source} needs the name of its target column (target=... / --target)")
    chosen = list(features) if features else [n for n in names if n not in (target, column)]
    table = frame[[*chosen, target]].copy()
    table[ROW_ID] = np.arange(len(frame), dtype=np.float64)
    dataset = dataset_from_frame(table, target, [*chosen, ROW_ID], kind=kind, missing=missing, source=source)
    rows = dataset.x[:, -1].astype(np.int64)
    dataset.x = np.ascontiguousarray(dataset.x[:, :-1])
    dataset.features = chosen
    dataset.kind = kind
    return dataset, frame[column].to_numpy()[rows]


def _frame(data):
    """A pandas DataFrame for a CSV or Parquet path or a DataFrame, else (None, '')."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return data.copy(), "the DataFrame"
    if isinstance(data, (str, Path)) and not str(data).startswith("builtin:"):
        path = Path(data).expanduser()
        if not path.exists():
            raise DataError(f"data file {path} does not exist")
        suffix = path.suffix.lower()
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path), str(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path, engine="pyarrow"), str(path)
    return None, ""
