"""Local data: CSV, Parquet, DataFrames, arrays, NPZ, MNIST IDX files, missing values, shards and splits."""
import gzip
import struct

import numpy as np
import pandas as pd
import pytest

from werkbund.algorithms.data.builtin import load_mnist
from werkbund.algorithms.data.dataset import DataError
from werkbund.algorithms.data.loading import load_dataset
from werkbund.algorithms.data.tables import dataset_from_arrays, dataset_from_frame


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


MISSING_CSV = "temp,pressure,label\n1,2.5,ok\n,3,bad\n3,NA,None\n4,5,\n5,6,ok\n"


def test_csv_missing_values_are_dropped_and_named(tmp_path, caplog):
    path = tmp_path / "sensors.csv"
    path.write_text(MISSING_CSV)
    with caplog.at_level("WARNING", logger="werkbund.data"):
        data = load_dataset(str(path), target="label")
    assert data.meta["missing"] == {"temp": 1, "pressure": 1, "label": 1} and data.meta["dropped_rows"] == 3
    assert data.x.tolist() == [[1.0, 2.5], [5.0, 6.0]] and data.y.tolist() == ["ok", "ok"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "werkbund.data"]
    assert len(warnings) == 1 and "'temp' 1" in warnings[0] and "'label' 1" in warnings[0]


def test_csv_missing_values_as_an_error_or_filled_with_the_mean(tmp_path):
    path = tmp_path / "sensors.csv"
    path.write_text(MISSING_CSV)
    with pytest.raises(DataError, match=r"'temp' \(1 of 5 rows\), 'pressure' \(1 of 5 rows\), 'label' \(1 of 5"):
        load_dataset(str(path), target="label", missing="error")
    data = load_dataset(str(path), target="label", missing="mean")
    # the row without a label goes; the holes in the features get the mean of the rows kept
    assert data.meta["missing"] == {"temp": 1, "pressure": 1, "label": 1} and data.meta["dropped_rows"] == 1
    assert data.x[:, 0].tolist() == [1.0, 3.0, 3.0, 5.0]
    assert data.x[2, 1] == pytest.approx((2.5 + 3 + 6) / 3)
    assert data.classes == ["None", "bad", "ok"]  # a class named None is a class, not a hole
    with pytest.raises(DataError, match="missing='zero' is not a choice: use drop, error, mean"):
        load_dataset(str(path), target="label", missing="zero")


def test_parquet_round_trip_and_other_suffixes(tmp_path):
    frame = pd.DataFrame({"speed": [1.0, 2.0, 3.0, 4.0], "load": [0.5, 0.25, 0.0, 1.0], "fail": [0, 1, 0, 1]})
    path = tmp_path / "machines.parquet"
    frame.to_parquet(path, engine="pyarrow")
    data = load_dataset(str(path), target="fail")
    assert data.features == ["speed", "load"] and data.y.dtype == np.int64 and data.classes == [0, 1]
    np.testing.assert_array_equal(data.x, frame[["speed", "load"]].to_numpy(np.float32))
    assert load_dataset(str(path), target="fail", features=["load"]).x.shape == (4, 1)
    with pytest.raises(DataError, match="needs the name of its target"):
        load_dataset(str(path))
    (tmp_path / "data.xlsx").write_text("")
    with pytest.raises(DataError, match=r"use \.csv, \.parquet, \.npz, builtin:digits or builtin:mnist"):
        load_dataset(str(tmp_path / "data.xlsx"))


def test_dataframe_with_string_labels_and_clear_errors():
    frame = pd.DataFrame({"current": [1.5, 2.5, 3.5], "cycles": [10, 20, 30], "when": ["mon", "tue", "wed"],
                          "quality": ["ok", "bad", "ok"]})
    data = dataset_from_frame(frame, "quality", features=["current", "cycles"])
    assert data.x.dtype == np.float32 and data.x.shape == (3, 2) and data.classes == ["bad", "ok"]
    assert data.schema()["features"] == ["current", "cycles"] and data.meta["missing"] == {}
    with pytest.raises(DataError, match=r"column 'when' is not numeric \('mon'.*--features"):
        dataset_from_frame(frame, "quality")
    with pytest.raises(DataError, match="has no column 'label'; its columns are current, cycles, when, quality"):
        dataset_from_frame(frame, "label")
    with pytest.raises(DataError, match="has no column.*speed"):
        dataset_from_frame(frame, "quality", features=["speed"])
    regression = dataset_from_frame(frame.assign(y=[0.5, 1.0, 2.0]), "y", features=["current"], kind="regression")
    assert regression.y.dtype == np.float64 and regression.classes == []


def test_arrays_and_their_errors():
    data = dataset_from_arrays(np.ones((4, 2, 3)), [0, 1, 1, 0])
    assert data.x.shape == (4, 6) and data.features[-1] == "x5" and data.target == "y" and data.classes == [0, 1]
    named = dataset_from_arrays([[1, 2], [3, 4]], ["a", "b"], features=["p", "q"], target="part")
    assert named.features == ["p", "q"] and named.classes == ["a", "b"]
    with pytest.raises(DataError, match="x has 3 rows, y has 2"):
        dataset_from_arrays(np.zeros((3, 2)), [0, 1])
    with pytest.raises(DataError, match=r"x is not numeric: x\[1, 0\] \(flattened per row\) is 'abc'"):
        dataset_from_arrays([["1", "2"], ["abc", "3"]], [0, 1])
    with pytest.raises(DataError, match="2-D or more"):
        dataset_from_arrays([1, 2, 3], [0, 1, 0])


def test_builtin_mnist_needs_its_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("WERKBUND_MNIST_DIR", raising=False)
    with pytest.raises(DataError, match="builtin:mnist needs WERKBUND_MNIST_DIR"):
        load_dataset("builtin:mnist")
    _idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([3, 5]))
    monkeypatch.setenv("WERKBUND_MNIST_DIR", str(tmp_path))
    assert load_dataset("builtin:mnist").y.tolist() == [3, 5]


def test_the_same_columns_in_another_order_are_put_in_the_tasks_order():
    import pandas as pd

    frame = pd.DataFrame({"b": [1.0, 2.0], "a": [3.0, 4.0], "y": [0, 1]})
    data = dataset_from_frame(frame, "y")
    ordered = data.in_order(["a", "b"])
    assert ordered.features == ["a", "b"] and ordered.x.tolist() == [[3.0, 1.0], [4.0, 2.0]]
    with pytest.raises(DataError, match="are not the task's"):
        data.in_order(["a", "c"])


def test_the_target_cannot_be_a_feature_too(tmp_path):
    """Listing the label among the features leaked it (accuracy 1.0000)."""
    import pandas as pd

    frame = pd.DataFrame({"a": [1.0, 2.0], "y": [0, 1]})
    with pytest.raises(DataError, match="'y' is the target; it cannot be a feature column too"):
        dataset_from_frame(frame, "y", features=["a", "y"])
