"""Federated statistics against the same statistics of the pooled rows (in one process)."""
import json

import numpy as np
import pytest

from support.inproc_federation import run_federation
from werkbund.algorithms.data.dataset import Dataset
from werkbund.algorithms.builtin.federated_statistics import StatisticsParticipant, StatisticsRefused

FEATURES = ["pressure", "flow", "temperature", "operator_id"]


def site(rng, rows, shift, missing_share):
    x = rng.normal(shift, [1.0, 5.0, 30.0, 2.0], (rows, 4))
    x[:, 3] = np.round(np.abs(x[:, 3]))                          # a few repeated values
    x[rng.random((rows, 4)) < missing_share] = np.nan             # missing readings
    y = rng.choice(["ok", "worn", "broken"], size=rows, p=[0.6, 0.3, 0.1])
    return Dataset(x.astype(np.float32), y, FEATURES, "condition")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    rng = np.random.default_rng(11)
    sites = {"bob": site(rng, 180, 0.0, 0.05), "carol": site(rng, 75, 3.0, 0.2), "dave": site(rng, 240, -2.0, 0.0)}
    sites["carol"].x[:, 1] = np.nan                               # carol never measured flow
    out = tmp_path_factory.mktemp("stats")
    definition = {"algorithm": "statistics", "bins": 7, "round_timeout": 30}
    creator, aggregator, outcome, results = run_federation(
        definition, sites, out_dir=out, participant_options={"dave": {"hold_back": ["temperature"]}})
    return creator, aggregator, outcome, results, sites, out


def pooled(sites, column):
    i = FEATURES.index(column)
    return np.concatenate([np.concatenate([d.split(0.2, 0)[0].x, d.split(0.2, 0)[1].x])[:, i]
                           for d in sites.values()]).astype(np.float64)


def test_statistics_match_the_pooled_data(finished):
    creator, aggregator, outcome, results, sites, out = finished
    assert outcome["task"]["status"] == "COMPLETE"
    report = json.loads(creator.get_model("t")[0])
    assert report["rows"] == sum(len(d) for d in sites.values()) == 495
    assert list(report["columns"]) == ["pressure", "flow", "operator_id"]
    for column, stats in report["columns"].items():
        values = pooled(sites, column)
        present = values[~np.isnan(values)]
        assert stats["count"] == len(present) and stats["missing"] == int(np.isnan(values).sum())
        assert stats["min"] == present.min() and stats["max"] == present.max()
        assert stats["mean"] == pytest.approx(present.mean(), rel=1e-9)
        assert stats["std"] == pytest.approx(present.std(), rel=1e-9)
        edges = np.linspace(present.min(), present.max(), 8)
        np.testing.assert_allclose(stats["histogram"]["edges"], edges, rtol=1e-12)
        assert stats["histogram"]["counts"] == np.histogram(present, bins=edges)[0].tolist()
    assert report["columns"]["flow"]["missing"] >= 75             # carol's column is all missing
    labels, counts = np.unique(np.concatenate([d.y for d in sites.values()]), return_counts=True)
    assert report["class_counts"] == dict(zip(labels.tolist(), counts.tolist()))


def test_a_held_back_feature_is_absent_from_the_result(finished):
    creator, aggregator, outcome, results, sites, out = finished
    data, info = creator.get_model("t")
    report = json.loads(data)
    assert "temperature" not in report["columns"] and report["withheld"] == ["temperature"]
    assert "temperature" not in aggregator.summaries["dave"]["columns"]   # dave never sent it
    assert info["meta"]["features"] == ["pressure", "flow", "operator_id"]
    markdown = (out / "bob.model.md").read_text()
    assert "| pressure | " in markdown and "| temperature |" not in markdown and "Held back" in markdown
    for name in ("bob", "carol", "dave"):
        assert results[name]["report"] == report


def test_regression_targets_are_described_as_a_column_and_typos_are_refused():
    rng = np.random.default_rng(2)
    sites = {}
    for name, rows in (("bob", 50), ("carol", 70)):
        x = rng.normal(0, 1, (rows, 2)).astype(np.float32)
        sites[name] = Dataset(x, x[:, 0] * 3.0 + 1.0, ["a", "b"], "rul", kind="regression")
    creator, aggregator, outcome, results = run_federation({"algorithm": "statistics", "bins": 4}, sites)
    report = json.loads(creator.get_model("t")[0])
    target = np.concatenate([d.y for d in sites.values()]).astype(np.float64)
    assert list(report["columns"]) == ["a", "b", "rul"] and report["class_counts"] is None
    assert report["columns"]["rul"]["mean"] == pytest.approx(target.mean(), rel=1e-9)
    assert sum(report["columns"]["rul"]["histogram"]["counts"]) == 120
    with pytest.raises(StatisticsRefused, match="cannot hold back tmperature"):
        StatisticsParticipant(creator.aggregator("t"), sites["bob"], sites["bob"], hold_back=["tmperature"])


@pytest.mark.slow
def test_statistics_task_end_to_end_through_the_cli(local_platform, tmp_path):
    """The real `werkbund` processes on the local platform: carol holds back a column on the command
    line; the report is the task's final model, downloaded with `werkbund model`."""
    import csv

    from conftest import Cli

    cli = Cli(local_platform, tmp_path)
    for user, org in (("alice", "acme"), ("bob", "beta"), ("carol", "gamma")):
        assert cli.run(user, "register", "--org", org).returncode == 0
    (tmp_path / "task.json").write_text(json.dumps({"algorithm": "statistics", "quorum": 2, "bins": 5,
                                                    "round_timeout": 60}))
    assert cli.run("alice", "create", "--task", "stats-1", "--definition", str(tmp_path / "task.json")).returncode == 0
    rng = np.random.default_rng(4)
    sites = {"bob": site(rng, 60, 0.0, 0.1), "carol": site(rng, 45, 1.0, 0.0)}
    for user, data in sites.items():
        with open(tmp_path / f"{user}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*FEATURES, "condition"])
            writer.writerows([*(repr(float(v)) for v in row), label] for row, label in zip(data.x, data.y))
    aggregator = cli.start("alice", "aggregate", "--task", "stats-1", "--results", str(tmp_path / "results"),
                           log=tmp_path / "aggregate.log")
    participants = []
    for user, extra in (("bob", ()), ("carol", ("--hold-back", "operator_id"))):
        joined = cli.run(user, "join", "--task", "stats-1", "--data", str(tmp_path / f"{user}.csv"),
                         "--target", "condition")
        assert joined.returncode == 0, joined.stderr
        participants.append(cli.start(user, "participate", "--task", "stats-1", *extra, log=tmp_path / f"{user}.log"))
    for proc in (aggregator, *participants):
        proc.wait(timeout=120)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("aggregate", "bob", "carol")}
    assert [p.returncode for p in (aggregator, *participants)] == [0, 0, 0], logs
    assert "holding back operator_id" in logs["carol"]

    downloaded = cli.run("bob", "model", "--task", "stats-1", "--out", str(tmp_path / "report.json"))
    assert downloaded.returncode == 0, downloaded.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["columns"]) == ["pressure", "flow", "temperature"] and report["withheld"] == ["operator_id"]
    for i, column in enumerate(["pressure", "flow", "temperature"]):
        values = np.concatenate([d.x[:, i] for d in sites.values()]).astype(np.float64)
        present = values[~np.isnan(values)]
        stats = report["columns"][column]
        assert (stats["count"], stats["missing"]) == (len(present), len(values) - len(present))
        assert stats["mean"] == pytest.approx(present.mean(), rel=1e-9)
        assert stats["std"] == pytest.approx(present.std(), rel=1e-9)
        edges = np.linspace(present.min(), present.max(), 6)
        assert stats["histogram"]["counts"] == np.histogram(present, bins=edges)[0].tolist()
    assert sum(report["class_counts"].values()) == 105
    assert "| pressure |" in (tmp_path / "results" / "statistics.md").read_text()
    bob_copy = tmp_path / "bob" / "models" / "bob" / "stats-1.json"
    assert json.loads(bob_copy.read_text()) == report

    # a misspelt column is refused before anything is sent, with one error line
    assert cli.run("alice", "create", "--task", "stats-2", "--definition", str(tmp_path / "task.json")).returncode == 0
    assert cli.run("bob", "join", "--task", "stats-2", "--data", str(tmp_path / "bob.csv"),
                   "--target", "condition").returncode == 0
    refused = cli.run("bob", "participate", "--task", "stats-2", "--hold-back", "presure")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: cannot hold back presure")
