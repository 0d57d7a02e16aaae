"""``load_dataset``: a data spec as given on the command line (a CSV, Parquet or NPZ file, or
``builtin:digits`` / ``builtin:mnist``) to a ``Dataset``, with ``apply_shard`` for ``shard="i/n"``
and ``finish_dataset`` for data read some other way."""
from __future__ import annotations

from pathlib import Path

from werkbund.algorithms.data.builtin import builtin_dataset
from werkbund.algorithms.data.dataset import DataError, Dataset
from werkbund.algorithms.data.files import load_csv, load_npz, load_parquet
from werkbund.algorithms.data.tables import check_missing, named_counts


def load_dataset(spec: str, target: str | None = None, shard: str | None = None,
                 features: list[str] | None = None, kind: str = "classification",
                 missing: str = "drop") -> Dataset:
    check_missing(missing)
    if spec.startswith("builtin:"):
        data = builtin_dataset(spec[len("builtin:"):])
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
    return finish_dataset(data, kind, shard, spec)


def finish_dataset(data: Dataset, kind: str, shard: str | None, what: str) -> Dataset:
    """``data`` as a site uses it, however it was read: its target's ``kind``, part ``shard`` of it;
    refused (naming ``what`` and any rows dropped for missing values) when no row is left."""
    data.kind = kind
    data = apply_shard(data, shard)
    if len(data) == 0:
        dropped = data.meta.get("dropped_rows", 0)
        if dropped:
            raise DataError(f"{what} holds no rows once the {dropped} with missing values are dropped "
                            f"({named_counts(data.meta['missing'])})")
        raise DataError(f"{what} holds no rows")
    return data


def apply_shard(data: Dataset, shard: str | None) -> Dataset:
    """Part ``i/n`` of the data (``shard="1/3"``), or all of it for ``None``."""
    if not shard:
        return data
    try:
        index, count = (int(p) for p in shard.split("/"))
    except ValueError:
        raise DataError(f"shard must look like 1/3, not {shard!r}") from None
    return data.shard(index, count)
