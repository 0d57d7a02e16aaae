"""Data files: CSV (``pandas.read_csv``) and Parquet (``pandas.read_parquet``, pyarrow), both turned
into a ``Dataset`` by ``tables.dataset_from_frame``, and NPZ (arrays ``x`` and ``y``, read with
``allow_pickle=False``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from werkbund.algorithms.data.dataset import DataError, Dataset
from werkbund.algorithms.data.tables import NA_SPELLINGS, check_missing, dataset_from_frame, wanted_columns


def load_csv(path: str | Path, target: str, features: list[str] | None = None, missing: str = "drop",
             kind: str = "classification") -> Dataset:
    """A CSV with a header row, read with ``pandas.read_csv``; see ``dataset_from_frame``."""
    import pandas as pd

    check_missing(missing)
    path = Path(path)
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
        raw = {str(h).strip(): h for h in header}
        names = list(raw)
        wanted = wanted_columns(str(path), names, target, features)
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
    import pandas as pd
    import pyarrow
    import pyarrow.parquet

    check_missing(missing)
    path = Path(path)
    try:
        stored = [n for n in pyarrow.parquet.read_schema(path).names if not n.startswith("__index_level_")]
        wanted = wanted_columns(str(path), stored, target, features)
        frame = pd.read_parquet(path, engine="pyarrow", columns=[*wanted, target] if features else None)
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable Parquet file: {exc}") from None
    named = (*wanted, target) if features else (target,)
    if any(name in named for name in frame.index.names if name is not None):
        frame = frame.reset_index()  # pandas stores a named index apart from the columns; it is one here
    return dataset_from_frame(frame, target, wanted if features else None, kind=kind, missing=missing,
                              source=str(path))


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
