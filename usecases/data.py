"""Data of the cross-company predictive-maintenance use case, cut into sites.

Three scenarios, each a set of sites with a local train and test split:

- ``ai4i``: the AI4I 2020 milling data (``<data dir>/ai4i2020/ai4i2020.csv``), one company per
  product quality type L, M, H; target ``Machine failure`` (0/1), or with ``failure_type`` the
  failure mode (TWF, HDF, PWF, OSF, RNF, none);
- ``cmapss``: NASA C-MAPSS turbofans (``<data dir>/cmapss``), one operator per sub-dataset
  FD001..FD004; target the remaining useful life, piecewise linear, capped at ``RUL_CAP``; the test
  set is the last cycle of every test engine with its RUL from ``RUL_FD00x.txt.gz``;
- ``welding``: the schema of the MUSKETEER welding use case (robots FPS2 and FPD2). The real data
  is proprietary, so :func:`make_welding` *generates* it; everything made from it says SYNTHETIC.

The data directory is always given by the caller (an option or ``WERKBUND_DATA_DIR``).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from werkbund.algorithms.data.dataset import Dataset, DataError

RUL_CAP = 125
AI4I_FEATURES = ["Air temperature [K]", "Process temperature [K]", "Rotational speed [rpm]", "Torque [Nm]",
                 "Tool wear [min]"]
AI4I_MODES = ["TWF", "HDF", "PWF", "OSF", "RNF"]
CMAPSS_FEATURES = ["setting_1", "setting_2", "setting_3"] + [f"sensor_{i}" for i in range(1, 22)]
WELDING_FEATURES = ["WELCNT", "WDRSCNT", "WELR", "WELCUR1_S"]
WELDING_CLASSES = [0, 1, 2, 3]  # WCLSRES <= 3, 4-5, 6-7, > 7
SYNTHETIC = "SYNTHETIC"


@dataclass
class Scenario:
    """Sites with their own train and test data, all with the same features and target."""

    name: str
    title: str
    kind: str  # "classification" or "regression"
    target: str
    sites: dict[str, tuple[Dataset, Dataset]]
    classes: list = field(default_factory=list)  # the agreed label space (classification)
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def features(self) -> list[str]:
        return next(iter(self.sites.values()))[0].features

    def pooled(self, part: int) -> Dataset:
        """All sites' train (part 0) or test (part 1) rows together."""
        parts = [split[part] for split in self.sites.values()]
        first = parts[0]
        return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
                       first.features, first.target, first.kind, "pooled")


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def split_site(data: Dataset, test_size: float, seed: int, stratify: bool) -> tuple[Dataset, Dataset]:
    """Train and test parts of one site; classification is split per class where every class can be."""
    if stratify and data.kind == "classification":
        _, counts = np.unique(data.y, return_counts=True)
        if len(counts) > 1 and counts.min() >= 2 and round(len(data) * test_size) >= len(counts):
            from sklearn.model_selection import train_test_split

            order = np.arange(len(data))
            train, test = train_test_split(order, test_size=test_size, random_state=seed, stratify=data.y)
            return data._take(np.sort(train)), data._take(np.sort(test))
    return data.split(test_size, seed)


def _limit(x: np.ndarray, y: np.ndarray, rows: int | None, seed: int):
    if rows is None or len(y) <= rows:
        return x, y
    keep = np.sort(_rng(seed).choice(len(y), size=rows, replace=False))
    return x[keep], y[keep]


# ---------------------------------------------------------------------------------------- AI4I 2020
def read_ai4i(path: Path) -> dict[str, np.ndarray]:
    """The AI4I 2020 CSV as columns: the five numeric features, Type, Machine failure, the mode flags."""
    if not path.exists():
        raise DataError(f"no AI4I 2020 file at {path}; give --data-dir with an ai4i2020/ai4i2020.csv in it")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        needed = AI4I_FEATURES + ["Type", "Machine failure"] + AI4I_MODES
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} is not the AI4I 2020 CSV: it has no column(s) {', '.join(missing)}")
        rows = list(reader)
    if not rows:
        raise DataError(f"{path} holds no rows")
    try:
        columns = {c: np.asarray([float(r[c]) for r in rows]) for c in AI4I_FEATURES + ["Machine failure"] + AI4I_MODES}
    except ValueError as exc:
        raise DataError(f"{path}: a numeric column holds text ({exc})") from None
    columns["Type"] = np.asarray([r["Type"].strip() for r in rows])
    return columns


def failure_type(columns: dict[str, np.ndarray]) -> np.ndarray:
    """The first failure mode flagged in a row (in the order TWF, HDF, PWF, OSF, RNF), else 'none'."""
    out = np.full(len(columns["Type"]), "none", dtype=object)
    for mode in reversed(AI4I_MODES):
        out[columns[mode] > 0] = mode
    return out.astype(str)


def load_ai4i(data_dir: str | Path, target: str = "failure", rows: int | None = None, test_size: float = 0.2,
              seed: int = 0) -> Scenario:
    """Three companies, one per product quality type (L, M, H); ``target`` 'failure' or 'failure_type'."""
    if target not in ("failure", "failure_type"):
        raise DataError(f"unknown AI4I target {target!r}; use failure or failure_type")
    columns = read_ai4i(Path(data_dir).expanduser() / "ai4i2020" / "ai4i2020.csv")
    x = np.stack([columns[c] for c in AI4I_FEATURES], axis=1).astype(np.float32)
    if target == "failure":
        y, name, classes = columns["Machine failure"].astype(np.int64), "Machine failure", [0, 1]
    else:
        y, name, classes = failure_type(columns), "failure type", sorted(AI4I_MODES + ["none"])
    types = columns["Type"]
    index = np.arange(len(y))
    if rows is not None and len(y) > rows:
        index = np.sort(_rng(seed).choice(len(y), size=rows, replace=False))
    sites = {}
    for quality in ("L", "M", "H"):
        rows_here = index[types[index] == quality]
        if len(rows_here) < 5:
            raise DataError(f"AI4I: only {len(rows_here)} rows of product type {quality}; use more --rows")
        data = Dataset(x[rows_here], y[rows_here], list(AI4I_FEATURES), name, source=f"ai4i2020 type {quality}")
        sites[f"company_{quality}"] = split_site(data, test_size, seed, stratify=True)
    title = "AI4I 2020: machine failure" if target == "failure" else "AI4I 2020: failure type"
    return Scenario("ai4i" if target == "failure" else "ai4i_type", title, "classification", name, sites, classes,
                    notes=["three companies = the product quality types L, M and H of the AI4I 2020 data "
                           "(S. Matzka, UCI 601, CC BY 4.0; the data itself is simulated by its authors)",
                           "features: " + ", ".join(AI4I_FEATURES)])


# ------------------------------------------------------------------------------------------ C-MAPSS
def _read_table(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataError(f"no C-MAPSS file {path.name} in {path.parent}; give --data-dir with a cmapss/ folder")
    table = np.loadtxt(path, ndmin=2)
    if table.shape[1] != 26:
        raise DataError(f"{path}: {table.shape[1]} columns, C-MAPSS rows have 26")
    return table


def load_cmapss_subset(directory: Path, subset: str, cap: int = RUL_CAP):
    """(train x, train RUL, test x at each engine's last cycle, its true RUL) of one sub-dataset."""
    train = _read_table(directory / f"train_{subset}.txt.gz")
    units, cycles = train[:, 0].astype(int), train[:, 1]
    last = {u: cycles[units == u].max() for u in np.unique(units)}
    rul = np.asarray([last[u] for u in units]) - cycles
    test = _read_table(directory / f"test_{subset}.txt.gz")
    rul_path = directory / f"RUL_{subset}.txt.gz"
    if not rul_path.exists():
        raise DataError(f"no {rul_path.name} in {directory}")
    true_rul = np.loadtxt(rul_path, ndmin=1)
    test_units = np.unique(test[:, 0].astype(int))
    if len(test_units) != len(true_rul):
        raise DataError(f"{subset}: {len(test_units)} test engines but {len(true_rul)} RUL values")
    last_rows = np.asarray([np.flatnonzero(test[:, 0] == u)[-1] for u in test_units])
    return (train[:, 2:].astype(np.float32), np.minimum(rul, cap).astype(np.float32),
            test[last_rows, 2:].astype(np.float32), np.minimum(true_rul, cap).astype(np.float32))


def load_cmapss(data_dir: str | Path, rows: int | None = None, cap: int = RUL_CAP, seed: int = 0,
                subsets=("FD001", "FD002", "FD003", "FD004")) -> Scenario:
    """Four operators, one per sub-dataset; ``rows`` limits each operator's training rows."""
    directory = Path(data_dir).expanduser() / "cmapss"
    sites = {}
    for i, subset in enumerate(subsets):
        x, y, x_test, y_test = load_cmapss_subset(directory, subset, cap)
        x, y = _limit(x, y, rows, seed + i)
        train = Dataset(x, y, list(CMAPSS_FEATURES), "RUL", kind="regression", source=f"cmapss {subset} train")
        test = Dataset(x_test, y_test, list(CMAPSS_FEATURES), "RUL", kind="regression", source=f"cmapss {subset} test")
        sites[f"operator_{subset}"] = (train, test)
    return Scenario("cmapss", "NASA C-MAPSS: remaining useful life", "regression", "RUL", sites,
                    notes=[f"RUL piecewise linear, capped at {cap} cycles (train and test)",
                           "test: the last cycle of every test engine, true RUL from RUL_FD00x",
                           "features: 3 operational settings and 21 sensors of the current cycle",
                           "FD001 and FD003 run in one operating condition, FD002 and FD004 in six: settings and "
                           "sensors that are constant at one operator vary at another, so a model trained at one "
                           "operator alone can extrapolate far out of range elsewhere (very large RMSE)"])


# ------------------------------------------------------------------------------- welding (SYNTHETIC)
# Per robot: sizes as in MUSKETEER D3.3; the feature distributions are made up and differ on purpose
# (FPD2 wears its electrodes longer and welds with more current); the quality rule is the same for both.
WELDING_ROBOTS = {
    "FPS2": {"n": 19288, "welcnt": 220, "wdrscnt": 25, "r0": 124.0, "r_wear": 0.045, "current": (9.8, 0.30)},
    "FPD2": {"n": 11143, "welcnt": 380, "wdrscnt": 45, "r0": 114.0, "r_wear": 0.055, "current": (10.3, 0.45)},
}


def welding_quality(welcnt, wdrscnt, welr, current, rng, q0: float = 6.6, noise: float = 0.3) -> np.ndarray:
    """The SYNTHETIC quality index WCLSRES (0..10), one rule for both robots: high resistance and
    current raise it, electrode wear (welds since dressing x dressings) lowers it, sharply beyond a
    wear that only FPD2 reaches; a current below 9.6 kA (mostly FPS2) raises it sharply."""
    wear = welcnt * wdrscnt / 1000.0
    q = (q0 + 0.11 * (welr - 128.0) + 0.9 * (current - 10.0) - 0.09 * wear
         - 0.45 * np.maximum(0.0, wear - 6.0) + 2.5 * np.maximum(0.0, 9.6 - current)
         + rng.normal(0.0, noise, size=welcnt.shape))
    return np.clip(np.round(q), 0, 10).astype(np.int64)


def bin_quality(wclsres: np.ndarray) -> np.ndarray:
    """WCLSRES_BIN: 0 if <= 3, 1 if 4-5, 2 if 6-7, 3 if > 7 (MUSKETEER D3.3)."""
    return np.digitize(wclsres, [3.5, 5.5, 7.5]).astype(np.int64)


def make_welding_robot(robot: str, rows: int | None = None, seed: int = 0) -> tuple[Dataset, np.ndarray]:
    """One robot's SYNTHETIC welding records: the binned dataset and the raw WCLSRES."""
    if robot not in WELDING_ROBOTS:
        raise DataError(f"unknown robot {robot!r}; the generator knows {', '.join(WELDING_ROBOTS)}")
    p = WELDING_ROBOTS[robot]
    n = int(rows if rows is not None else p["n"])
    rng = _rng(seed + (0 if robot == "FPS2" else 1))
    welcnt = rng.integers(0, p["welcnt"], size=n).astype(np.float64)
    wdrscnt = rng.integers(0, p["wdrscnt"], size=n).astype(np.float64)
    welr = p["r0"] + p["r_wear"] * welcnt + 0.35 * wdrscnt + rng.normal(0.0, 3.5, size=n)
    current = rng.normal(*p["current"], size=n)
    wclsres = welding_quality(welcnt, wdrscnt, welr, current, rng)
    x = np.stack([welcnt, wdrscnt, welr, current], axis=1).astype(np.float32)
    data = Dataset(x, bin_quality(wclsres), list(WELDING_FEATURES), "WCLSRES_BIN",
                   source=f"{SYNTHETIC} welding robot {robot}", meta={"synthetic": True})
    return data, wclsres


def make_welding(rows: int | None = None, test_size: float = 0.2, seed: int = 0) -> Scenario:
    """Two robots' SYNTHETIC welding data (FPS2 left door, FPD2 right door); ``rows`` per robot."""
    sites = {}
    for robot in WELDING_ROBOTS:
        data, _ = make_welding_robot(robot, rows, seed)
        sites[robot] = split_site(data, test_size, seed, stratify=True)
    return Scenario("welding", f"{SYNTHETIC} welding quality (MUSKETEER schema, generated data)", "classification",
                    "WCLSRES_BIN", sites, list(WELDING_CLASSES), synthetic=True,
                    notes=[f"{SYNTHETIC} DATA: the MUSKETEER welding data is proprietary; these records are made "
                           "by werkbund.usecases.data.make_welding with different distributions per "
                           "robot. They say nothing about real welding robots.",
                           "features WELCNT, WDRSCNT, WELR, WELCUR1_S; target WCLSRES binned: <=3, 4-5, 6-7, >7"])


def write_welding_csv(directory: str | Path, rows: int | None = None, seed: int = 0) -> list[Path]:
    """Write each robot's SYNTHETIC data as ``SYNTHETIC_welding_<robot>.csv`` (usable with ``werkbund join``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for robot in WELDING_ROBOTS:
        data, _ = make_welding_robot(robot, rows, seed)
        path = directory / f"{SYNTHETIC}_welding_{robot}.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(WELDING_FEATURES + ["WCLSRES_BIN"])
            for row, label in zip(data.x.tolist(), data.y.tolist()):
                writer.writerow([f"{v:.6g}" for v in row] + [label])
        paths.append(path)
    return paths


def load_scenario(name: str, data_dir: str | Path | None, rows: int | None = None, seed: int = 0) -> Scenario:
    """A scenario by name: ai4i, ai4i_type, cmapss (need ``data_dir``) or welding (generated)."""
    if name == "welding":
        return make_welding(rows, seed=seed)
    if data_dir is None:
        raise DataError(f"the {name} scenario needs a data directory: give --data-dir or set WERKBUND_DATA_DIR")
    if not Path(data_dir).expanduser().is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    if name == "ai4i":
        return load_ai4i(data_dir, "failure", rows, seed=seed)
    if name == "ai4i_type":
        return load_ai4i(data_dir, "failure_type", rows, seed=seed)
    if name == "cmapss":
        return load_cmapss(data_dir, rows, seed=seed)
    raise DataError(f"unknown scenario {name!r}; use ai4i, ai4i_type, cmapss or welding")
