"""Loading a participant's local data: werkbund's ``load_dataset`` against bare pandas on the same files.

    .venv/bin/python bench/data_loading.py                     # 1,000,000 rows x 8 numeric columns + a label
    .venv/bin/python bench/data_loading.py --rows 100000 --repeat 5
    .venv/bin/python bench/data_loading.py --missing 0.001     # blank out 0.1 % of the feature cells

A CSV (and the same table as Parquet) of ``--rows`` rows with 8 float columns and an integer
label (3 classes) is written to a temporary folder. Timed, best of ``--repeat``, each from a file
already in the page cache: ``pandas.read_csv`` alone, ``load_dataset`` on the CSV (read_csv plus
the checks, missing-value handling and the float32 matrix), ``pandas.read_parquet`` alone and
``load_dataset`` on the Parquet file. The ratio is werkbund's time over bare pandas' time on the
same file. With ``--missing`` the rows with a blank cell are dropped (``missing="drop"``).
"""
from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow

from werkbund.algorithms.data.loading import load_dataset

FEATURES = [f"f{i}" for i in range(8)]


def make_frame(rows: int, missing: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES))).round(6)
    if missing:
        x[rng.random(x.shape) < missing] = np.nan
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["label"] = rng.integers(0, 3, size=rows)
    return frame


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated table (default 1,000,000)")
    p.add_argument("--repeat", type=int, default=3, help="loads per reader, best time kept (default 3)")
    p.add_argument("--missing", type=float, default=0.0, help="share of feature cells left blank (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", help="folder for the generated files (default: a temporary one, removed after)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the missing-value warning, once per load, is not timed output

    with tempfile.TemporaryDirectory(prefix="werkbund-bench-data-") as tmp:
        folder = Path(args.dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        frame = make_frame(args.rows, args.missing, args.seed)
        csv_path, parquet_path = folder / "table.csv", folder / "table.parquet"
        started = time.perf_counter()
        frame.to_csv(csv_path, index=False)
        frame.to_parquet(parquet_path, engine="pyarrow", index=False)
        written = time.perf_counter() - started
        print(f"{args.rows:,} rows x {len(FEATURES)} float columns + an integer label; "
              f"CSV {csv_path.stat().st_size / 1e6:.0f} MB, Parquet {parquet_path.stat().st_size / 1e6:.0f} MB "
              f"(written in {written:.1f} s); missing cells {args.missing:g}; best of {args.repeat}; "
              f"pandas {pd.__version__}, pyarrow {pyarrow.__version__}, numpy {np.__version__}, "
              f"python {sys.version.split()[0]}")
        del frame

        rows = []
        csv_bare, _ = best(lambda: pd.read_csv(csv_path), args.repeat)
        csv_werkbund, data = best(lambda: load_dataset(str(csv_path), target="label"), args.repeat)
        assert data.x.shape[1] == len(FEATURES) and data.classes == [0, 1, 2]
        rows.append(("CSV", csv_bare, csv_werkbund, len(data), data.meta["dropped_rows"]))
        pq_bare, _ = best(lambda: pd.read_parquet(parquet_path, engine="pyarrow"), args.repeat)
        pq_werkbund, data = best(lambda: load_dataset(str(parquet_path), target="label"), args.repeat)
        rows.append(("Parquet", pq_bare, pq_werkbund, len(data), data.meta["dropped_rows"]))

    print(f"{'file':<8}  {'pandas s':>9}  {'werkbund s':>10}  {'x pandas':>8}  {'rows kept':>10}  {'dropped':>8}")
    for name, bare, werkbund, kept, dropped in rows:
        print(f"{name:<8}  {bare:>9.3f}  {werkbund:>10.3f}  {werkbund / bare:>8.2f}  {kept:>10,}  {dropped:>8,}")
    print(f"werkbund CSV over werkbund Parquet: {rows[0][2] / rows[1][2]:.1f}x; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
