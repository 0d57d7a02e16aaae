"""A participant's local data: CSV, NPZ or a built-in set, split into train and test locally.

The data never leaves the participant's machine; only a schema summary
(feature names, target, classes, row count) is reported when joining a task.

Data specs as given on the command line:

- ``path/to/file.csv`` with ``target="label"``: numeric feature columns, the target column by name;
- ``path/to/file.npz``: arrays ``x`` (rows first) and ``y``, read with ``allow_pickle=False``;
- ``builtin:digits``: scikit-learn's 8x8 digits (ships with scikit-learn, offline);
- ``builtin:mnist``: MNIST from the IDX ``.gz`` files in ``$WERKBUND_MNIST_DIR``
  (or an ``mnist.npz`` there).

``shard="i/n"`` keeps the i-th of n disjoint, seeded parts (1-based), so several
participants can take different parts of one file in a demo.
"""
from __future__ import annotations

import csv
import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


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
                 features: list[str] | None = None, kind: str = "classification") -> Dataset:
    if spec.startswith("builtin:"):
        data = _builtin(spec[len("builtin:"):])
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(f"data file {path} does not exist")
        if path.suffix.lower() == ".npz":
            data = load_npz(path)
        elif path.suffix.lower() in (".csv", ".txt"):
            if not target:
                raise DataError("a CSV needs the name of its target column (--target)")
            data = load_csv(path, target, features)
        else:
            raise DataError(f"unsupported data file {path.name}: use .csv, .npz or builtin:digits")
    data.kind = kind
    if shard:
        try:
            index, count = (int(p) for p in shard.split("/"))
        except ValueError:
            raise DataError(f"shard must look like 1/3, not {shard!r}") from None
        data = data.shard(index, count)
    if len(data) == 0:
        raise DataError(f"{spec} holds no rows")
    return data


def load_csv(path: Path, target: str, features: list[str] | None = None) -> Dataset:
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path} is empty") from None
        if target not in header:
            raise DataError(f"{path} has no column {target!r}; its columns are {', '.join(header)}")
        names = features or [h for h in header if h != target]
        missing = [n for n in names if n not in header]
        if missing:
            raise DataError(f"{path} has no column(s) {', '.join(missing)}")
        cols = [header.index(n) for n in names]
        t_col = header.index(target)
        rows, labels = [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{line_no}: {len(row)} fields, the header has {len(header)}")
            try:
                rows.append([float(row[c]) for c in cols])
            except ValueError:
                bad = next(names[i] for i, c in enumerate(cols) if not _is_float(row[c]))
                raise DataError(f"{path}:{line_no}: column {bad!r} is not numeric ({row[header.index(bad)]!r}); "
                                "choose numeric feature columns with --features") from None
            labels.append(row[t_col].strip())
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(names))
    return Dataset(x, _parse_labels(labels), list(names), target, source=str(path))


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _parse_labels(labels: list[str]) -> np.ndarray:
    try:
        values = np.asarray([float(v) for v in labels])
    except ValueError:
        return np.asarray(labels, dtype=object).astype(str)
    return values.astype(np.int64) if np.all(values == np.round(values)) else values


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
        return load_mnist(os.environ.get("WERKBUND_MNIST_DIR", "../shared/datasets/mnist"))
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
