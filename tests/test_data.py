"""Local data: CSV, NPZ, MNIST IDX files, shards and splits."""
import gzip
import struct

import numpy as np
import pytest

from werkbund.algorithms.data import DataError, load_dataset, load_mnist


def test_csv_with_named_target_and_clear_errors(tmp_path):
    path = tmp_path / "weld.csv"
    path.write_text("WELCNT,WELCUR1_S,quality\n1,2.5,ok\n2,3.5,bad\n3,4.5,ok\n")
    data = load_dataset(str(path), target="quality")
    assert data.features == ["WELCNT", "WELCUR1_S"] and data.classes == ["bad", "ok"]
    assert data.x.dtype == np.float32 and data.x.shape == (3, 2)
    with pytest.raises(DataError, match="has no column 'label'"):
        load_dataset(str(path), target="label")
    (tmp_path / "text.csv").write_text("a,b,y\n1,x,0\n")
    with pytest.raises(DataError, match="column 'b' is not numeric"):
        load_dataset(str(tmp_path / "text.csv"), target="y")
    with pytest.raises(DataError, match="needs the name of its target"):
        load_dataset(str(path))


def test_npz_is_read_without_pickle(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((4, 2, 2)), y=np.array([0, 1, 0, 1]))
    data = load_dataset(str(good))
    assert data.x.shape == (4, 4) and data.classes == [0, 1]
    bad = tmp_path / "objects.npz"
    np.savez(bad, x=np.array([{"a": 1}] * 2, dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataError, match="not a plain NPZ"):
        load_dataset(str(bad))


def _idx(path, array):
    with gzip.open(path, "wb") as handle:
        handle.write(bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape))
        handle.write(array.astype(np.uint8).tobytes())


def test_mnist_from_idx_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28))
    _idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([7, 2, 1, 0, 4]))
    data = load_mnist(tmp_path)
    assert data.x.shape == (5, 784) and data.y.tolist() == [7, 2, 1, 0, 4]
    np.testing.assert_array_equal(data.x[0].reshape(28, 28), images[0])
    with pytest.raises(DataError, match="no MNIST files"):
        load_mnist(tmp_path / "elsewhere")


def test_shards_are_disjoint_and_splits_are_seeded():
    digits = load_dataset("builtin:digits")
    a, b = digits.shard(1, 2), digits.shard(2, 2)
    assert len(a) + len(b) == len(digits)
    rows_a = {r.tobytes() + bytes([int(l)]) for r, l in zip(a.x, a.y)}
    assert len(rows_a & {r.tobytes() + bytes([int(l)]) for r, l in zip(b.x, b.y)}) < 5  # digits has a few duplicate rows
    train1, test1 = a.split(0.25, seed=3)
    train2, test2 = a.split(0.25, seed=3)
    assert np.array_equal(test1.x, test2.x) and len(test1) == round(len(a) * 0.25)
    with pytest.raises(DataError, match="shard must look like"):
        load_dataset("builtin:digits", shard="half")
