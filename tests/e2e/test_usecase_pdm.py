"""The predictive-maintenance use case: data loaders, the SYNTHETIC welding generator and
`werkbund usecase pdm` end to end on a small slice (generated welding data and a tiny AI4I-shaped CSV)."""
import csv
import gzip
import json
import subprocess

import numpy as np
import pytest

from conftest import WERKBUND, quiet_env
from werkbund.algorithms.data.dataset import DataError
from werkbund.algorithms.data.files import load_csv
from werkbund.usecases.data import (
    WELDING_FEATURES, bin_quality, load_ai4i, load_cmapss, make_welding, write_welding_csv,
)

AI4I_HEADER = ["UDI", "Product ID", "Type", "Air temperature [K]", "Process temperature [K]",
               "Rotational speed [rpm]", "Torque [Nm]", "Tool wear [min]", "Machine failure",
               "TWF", "HDF", "PWF", "OSF", "RNF"]


def write_ai4i(directory, rows=400, seed=1):
    """An AI4I-shaped CSV (BOM, CRLF, as the UCI file): failures where power or wear is extreme."""
    rng = np.random.default_rng(seed)
    folder = directory / "ai4i2020"
    folder.mkdir(parents=True)
    types = rng.choice(["L", "M", "H"], size=rows, p=[0.5, 0.3, 0.2])
    with open(folder / "ai4i2020.csv", "w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(AI4I_HEADER)
        for i in range(rows):
            air = rng.normal(300, 2)
            speed, torque, wear = rng.normal(1500, 150), rng.normal(40, 10), rng.integers(0, 250)
            pwf = int(speed * torque / 9.5488 > 8500 or speed * torque / 9.5488 < 3500)
            twf = int(wear > 220)
            writer.writerow([i + 1, f"{types[i]}{i}", types[i], f"{air:.1f}", f"{air + 10:.1f}", f"{speed:.0f}",
                             f"{torque:.1f}", wear, int(pwf or twf), twf, 0, pwf, 0, 0])
    return types


def test_ai4i_companies_are_the_product_types(tmp_path):
    types = write_ai4i(tmp_path)
    scenario = load_ai4i(tmp_path, "failure")
    assert list(scenario.sites) == ["company_L", "company_M", "company_H"]
    for quality, (train, test) in zip("LMH", scenario.sites.values()):
        assert len(train) + len(test) == int((types == quality).sum())
    assert scenario.pooled(0).x.shape[1] == 5
    by_type = load_ai4i(tmp_path, "failure_type")
    labels = set(np.concatenate([np.concatenate([tr.y, te.y]) for tr, te in by_type.sites.values()]).tolist())
    assert labels <= {"none", "TWF", "PWF"} and "none" in labels
    assert by_type.classes == sorted(["HDF", "none", "OSF", "PWF", "RNF", "TWF"])


def test_ai4i_file_without_its_columns_is_refused(tmp_path):
    (tmp_path / "ai4i2020").mkdir()
    (tmp_path / "ai4i2020" / "ai4i2020.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not the AI4I 2020 CSV"):
        load_ai4i(tmp_path)


def test_cmapss_rul_is_capped_and_test_rul_comes_from_the_rul_file(tmp_path):
    folder = tmp_path / "cmapss"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def table(lengths):
        rows = [[u + 1, c + 1] + rng.normal(size=24).tolist() for u, n in enumerate(lengths) for c in range(n)]
        return "\n".join(" ".join(f"{v:.4f}" for v in r) + "  " for r in rows) + "\n"

    for subset in ("FD001", "FD002"):
        (folder / f"train_{subset}.txt.gz").write_bytes(gzip.compress(table([200, 50]).encode()))
        (folder / f"test_{subset}.txt.gz").write_bytes(gzip.compress(table([30, 40, 20]).encode()))
        (folder / f"RUL_{subset}.txt.gz").write_bytes(gzip.compress(b"10 \n140 \n60 \n"))
    scenario = load_cmapss(tmp_path, subsets=("FD001", "FD002"))
    train, test = scenario.sites["operator_FD001"]
    assert len(train) == 250 and train.x.shape[1] == 24
    assert train.y[0] == 125 and train.y[199] == 0 and train.y[200] == 49  # min(last cycle - cycle, 125)
    assert test.y.tolist() == [10, 125, 60]  # one row per test engine, true RUL capped like the training target
    np.testing.assert_allclose(test.x[0], np.loadtxt(folder / "test_FD001.txt.gz")[29, 2:], rtol=1e-6)


def test_synthetic_welding_robots_differ_and_say_so(tmp_path):
    scenario = make_welding(rows=2000)
    assert scenario.synthetic and "SYNTHETIC" in scenario.title
    (s_train, _), (d_train, _) = scenario.sites["FPS2"], scenario.sites["FPD2"]
    assert s_train.features == WELDING_FEATURES
    assert abs(s_train.x[:, 3].mean() - d_train.x[:, 3].mean()) > 0.3  # welding current differs
    assert d_train.x[:, 0].max() > 1.3 * s_train.x[:, 0].max()  # FPD2 welds longer between dressings
    assert bin_quality(np.arange(11)).tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    share_2 = [float(np.mean(t.y == 2)) for t, _ in scenario.sites.values()]
    assert all(0.5 < s < 0.95 for s in share_2)  # the in-range class dominates, as in D3.3
    paths = write_welding_csv(tmp_path, rows=50)
    assert [p.name for p in paths] == ["SYNTHETIC_welding_FPS2.csv", "SYNTHETIC_welding_FPD2.csv"]
    assert len(load_csv(paths[0], "WCLSRES_BIN")) == 50


def test_usecase_command_writes_the_report(tmp_path):
    write_ai4i(tmp_path / "data", rows=500)
    out = tmp_path / "out"
    result = subprocess.run(
        [WERKBUND, "usecase", "pdm", "--data-dir", str(tmp_path / "data"), "--scenario", "welding",
         "--scenario", "ai4i", "--rows", "400", "--rounds", "2", "--epochs", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, stdin=subprocess.DEVNULL,
        env=quiet_env(WERKBUND_HOME=str(tmp_path / "home")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "federated minus central" in result.stdout
    report = (out / "report.md").read_text()
    summaries = {s["scenario"]: s for s in json.loads((out / "results.json").read_text())}
    for name, sites in (("welding", ["FPS2", "FPD2"]), ("ai4i", ["company_L", "company_M", "company_H"])):
        summary = summaries[name]
        assert summary["test_sets"] == sites + ["combined"]
        models = summary["models"]
        assert list(models) == [f"local at {s}" for s in sites] + ["central (pooled data)", "federated"]
        for model_name, model in models.items():
            assert model["error"] is None, model["error"]
            assert len(model["curve"]) == 2
            scores = model["scores"]
            assert scores["combined"]["n"] == sum(scores[s]["n"] for s in sites)
            matrix = np.asarray(model["confusion"]["combined"])
            assert matrix.sum() == scores["combined"]["n"]
            assert scores["combined"]["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
            row = f"| {model_name} | " + " | ".join(f"{100 * scores[t]['accuracy']:.2f}" for t in summary["test_sets"])
            assert row in report  # the D3.3-style table shows exactly these figures
        assert models["federated"]["scores"]["combined"]["accuracy"] > 0.5
    assert "## SYNTHETIC welding quality" in report and "## AI4I 2020: machine failure" in report
    pngs = sorted(p.name for p in (out / "welding").glob("*.png"))
    assert pngs and all(name.startswith("SYNTHETIC_") for name in pngs)
    for png in list((out / "welding").glob("*.png")) + list((out / "ai4i").glob("*.png")):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png.parent.name}/{png.name})" in report
    assert (out / "welding" / "SYNTHETIC_welding_results.csv").read_text().splitlines()[1].startswith("SYNTHETIC,")
    assert (out / "welding" / "data" / "SYNTHETIC_welding_FPS2.csv").exists()
    assert not list(out.rglob("*.pem")) and not list(out.rglob("*.sqlite"))  # the platform's files are gone


def test_usecase_command_needs_the_data_it_is_asked_for(tmp_path):
    result = subprocess.run([WERKBUND, "usecase", "pdm", "--scenario", "ai4i", "--data-dir", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL,
                            env=quiet_env(WERKBUND_HOME=str(tmp_path / "home")))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: data directory {tmp_path / 'nope'} does not exist"
