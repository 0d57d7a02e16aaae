"""A participant's local data: CSV, Parquet, NPZ, a pandas DataFrame, arrays or a built-in set,
split into train and test locally.

- ``dataset.py``: the ``Dataset`` type (rows, labels, schema, split, shard) and ``DataError``;
- ``loading.py``: ``load_dataset``, a data spec as given on the command line, and ``apply_shard``;
- ``files.py``: CSV, Parquet and NPZ files;
- ``tables.py``: a pandas DataFrame or arrays to a ``Dataset``, missing values handled;
- ``builtin.py``: the built-in sets (scikit-learn's digits, MNIST).

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
