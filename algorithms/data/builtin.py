"""The built-in data sets: ``builtin:digits`` (scikit-learn's 8x8 digits, offline) and
``builtin:mnist`` (MNIST from the IDX ``.gz`` files or an ``mnist.npz`` in ``$WERKBUND_MNIST_DIR``)."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from werkbund.algorithms.data.dataset import DataError, Dataset


def builtin_dataset(name: str) -> Dataset:
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
