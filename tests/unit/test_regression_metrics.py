"""Evaluation figures (against scikit-learn on the same predictions) and neural_network regression,
in one process with real Keras: per participant, pooled across participants, kept per round."""
import threading

import numpy as np
import pytest
from sklearn import metrics as skm

from werkbund.algorithms.data.dataset import Dataset
from werkbund.algorithms.data.loading import load_dataset
from werkbund.algorithms.metrics import classification_metrics, combine, describe_rounds, regression_metrics
from werkbund.algorithms.builtin.neural_network import ALGORITHM
from werkbund.algorithms.plots import plot_accuracy, plot_confusion_matrix, plot_metric
from werkbund.client.api import register
from werkbund.client.transports.inproc import InProcPlatform


def test_confusion_matrix_precision_recall_and_accuracy_match_sklearn():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 5, 400)
    y_pred = np.where(rng.random(400) < 0.6, y_true, rng.integers(0, 4, 400))  # class 4 is rarely predicted
    y_pred[y_pred == 4] = 3  # ... and now never: its precision is 0/0
    m = classification_metrics(y_true, y_pred, 5)
    assert m["confusion"] == skm.confusion_matrix(y_true, y_pred, labels=range(5)).tolist()
    assert m["precision"] == pytest.approx(skm.precision_score(y_true, y_pred, labels=range(5), average=None,
                                                               zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(y_true, y_pred, labels=range(5), average=None,
                                                         zero_division=0))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["precision"][4] == 0.0 and m["n_test"] == 400


def test_combined_figures_equal_the_pooled_ones():
    rng = np.random.default_rng(4)
    y_true, y_pred = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    parts = np.split(np.arange(300), [40, 170])  # three participants of unequal size
    evals = {f"p{i}": classification_metrics(y_true[p], y_pred[p], 3) for i, p in enumerate(parts)}
    combined = combine(evals)
    assert combined["confusion"] == skm.confusion_matrix(y_true, y_pred).tolist()
    assert combined["precision"] == pytest.approx(skm.precision_score(y_true, y_pred, average=None))
    assert combined["recall"] == pytest.approx(skm.recall_score(y_true, y_pred, average=None))
    assert combined["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))

    t, p = rng.normal(100, 30, 300), rng.normal(100, 30, 300)
    evals = {f"p{i}": dict(regression_metrics(t[idx], p[idx]), loss=1.0 + i) for i, idx in enumerate(parts)}
    combined = combine(evals)
    assert combined["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(t, p)), rel=1e-12)
    assert combined["mae"] == pytest.approx(skm.mean_absolute_error(t, p), rel=1e-12)
    assert combined["n_test"] == 300
    assert combined["loss"] == pytest.approx((40 * 1.0 + 130 * 2.0 + 130 * 3.0) / 300)
    assert evals["p1"]["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(t[parts[1]], p[parts[1]])))


def regression_site(seed: int, n: int, shift: float) -> Dataset:
    """A remaining-useful-life-like target: a linear function of 4 sensors plus noise, in the hundreds."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, (n, 4)).astype(np.float32)
    y = 120 + 40 * x[:, 0] - 25 * x[:, 1] + 10 * x[:, 2] * x[:, 3] + rng.normal(0, 5, n)
    return Dataset(x, np.round(y).astype(np.int64), ["s1", "s2", "s3", "s4"], "rul", kind="regression")


def run_federation(tmp_path, definition, sites, holdout=None):
    # a database file, not sqlite:// (one connection shared by all threads: concurrent commits clash)
    platform = InProcPlatform(f"sqlite:///{tmp_path / 'platform.db'}")
    alice = register("alice", "alice-password", "acme", platform="inproc", inproc=platform)
    alice.create_task("t", definition)
    threads, outcome = [], {}
    for name, data in sites.items():
        user = register(name, f"{name}-password", name, platform="inproc", inproc=platform)
        user.join_task("t", data.schema())
        train, test = data.split(0.25, 0)

        def work(user=user, name=name, train=train, test=test):
            outcome[name] = ALGORITHM.participant(user.participant("t"), train, test).run()

        threads.append(threading.Thread(target=work, daemon=True))
    for t in threads:
        t.start()
    result = ALGORITHM.aggregator(alice.aggregator("t"), holdout=holdout).run()
    for t in threads:
        t.join(timeout=60)
    return alice, result, outcome


def test_regression_task_reports_rmse_and_mae_per_participant_and_combined(tmp_path):
    import keras

    sites = {"op1": regression_site(1, 300, 0.0), "op2": regression_site(2, 200, 0.5)}
    definition = {"quorum": 2, "rounds": 3, "epochs": 2, "batch_size": 32, "learning_rate": 0.02,
                  "round_timeout": 60}
    alice, result, outcome = run_federation(tmp_path, definition, sites, holdout=regression_site(9, 100, 0.2))
    assert result["task"]["status"] == "COMPLETE"
    rounds = alice.rounds("t")
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds:
        m = r["metrics"]
        assert "accuracy" not in m and "confusion" not in m
        per = m["participants"]
        assert set(per) == {"op1", "op2"}
        sse = sum(p["sse"] for p in per.values())
        assert m["n_test"] == 75 + 50
        assert m["rmse"] == pytest.approx(np.sqrt(sse / 125))
        assert m["mae"] == pytest.approx(sum(p["sae"] for p in per.values()) / 125)
        assert m["aggregator"]["rmse"] > 0 and m["aggregator"]["n_test"] == 100
    # trained: far better than predicting the mean target (its RMSE is the target's spread, about 45)
    spread = float(np.std(np.concatenate([s.y for s in sites.values()])))
    assert rounds[-1]["metrics"]["rmse"] < 0.5 * spread
    assert rounds[-1]["metrics"]["rmse"] < rounds[0]["metrics"]["rmse"]

    # the figures a participant reports are those of the final model on its own test split
    data, meta = alice.get_model("t")
    assert meta["meta"]["kind"] == "regression" and meta["meta"]["classes"] == []
    path = tmp_path / "final.keras"
    path.write_bytes(data)
    model = keras.saving.load_model(path)
    assert model.output_shape == (None, 1)
    _, test = sites["op2"].split(0.25, 0)
    predicted = model.predict(test.x, verbose=0).reshape(-1)
    reported = outcome["op2"]["eval"]
    assert reported["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(test.y, predicted)), rel=1e-4)
    assert reported["mae"] == pytest.approx(skm.mean_absolute_error(test.y, predicted), rel=1e-4)

    history = result["history"]
    for metric in ("rmse", "mae"):
        assert (tmp_path / f"{metric}.png").exists() is False
        plot_metric(history, metric, tmp_path / f"{metric}.png")
        assert (tmp_path / f"{metric}.png").stat().st_size > 5000


def test_classifier_rounds_carry_confusion_matrices_that_match_sklearn(tmp_path):
    import keras

    digits = load_dataset("builtin:digits")
    sites = {"bob": digits.shard(1, 2), "carol": digits.shard(2, 2)}
    definition = {"quorum": 2, "rounds": 2, "epochs": 2, "learning_rate": 0.003, "round_timeout": 60}
    alice, result, outcome = run_federation(tmp_path, definition, sites)
    rounds = alice.rounds("t")
    for r in rounds:
        m = r["metrics"]
        summed = sum(np.asarray(p["confusion"]) for p in m["participants"].values())
        assert m["confusion"] == summed.tolist()
        assert m["accuracy"] == pytest.approx(np.trace(summed) / summed.sum())
        assert len(m["precision"]) == len(m["recall"]) == 10
    data, _ = alice.get_model("t")
    (tmp_path / "final.keras").write_bytes(data)
    model = keras.saving.load_model(tmp_path / "final.keras")
    _, test = sites["carol"].split(0.25, 0)
    predicted = np.argmax(model.predict(test.x, verbose=0), axis=1)
    reported = outcome["carol"]["eval"]
    assert reported["confusion"] == skm.confusion_matrix(test.y, predicted, labels=range(10)).tolist()
    assert reported["precision"] == pytest.approx(skm.precision_score(test.y, predicted, labels=range(10),
                                                                      average=None, zero_division=0))
    assert reported["recall"] == pytest.approx(skm.recall_score(test.y, predicted, labels=range(10),
                                                                average=None, zero_division=0))
    assert reported["accuracy"] > 0.8
    text = describe_rounds(rounds, alice.task_info("t")["schema"]["classes"])  # what `werkbund info` prints
    assert text[0].startswith("round 1: 2 updates, all participants: accuracy")
    assert any(line.strip().startswith("carol: accuracy") for line in text)
    matrix_row = text[text.index(next(t for t in text if t.startswith("confusion matrix"))) + 2].split()
    assert matrix_row == ["0", *map(str, rounds[-1]["metrics"]["confusion"][0])]
    assert text[-1].split()[0] == "recall" and len(text[-1].split()) == 11
    history = result["history"]
    assert plot_accuracy(history, tmp_path / "accuracy.png")
    plot_confusion_matrix(history[-1]["confusion"], list(range(10)), tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").stat().st_size > 5000


def test_a_classification_site_cannot_join_a_regression_task():
    from werkbund.platform.errors import SchemaMismatch

    platform = InProcPlatform()
    alice = register("alice", "alice-password", "acme", platform="inproc", inproc=platform)
    alice.create_task("t", {"quorum": 2})
    op1 = register("op1", "op1-password", "o1", platform="inproc", inproc=platform)
    op1.join_task("t", regression_site(1, 50, 0.0).schema())
    op2 = register("op2", "op2-password", "o2", platform="inproc", inproc=platform)
    wrong = regression_site(2, 50, 0.0)
    wrong.kind = "classification"
    with pytest.raises(SchemaMismatch, match="kind is .regression., yours is .classification."):
        op2.join_task("t", wrong.schema())


def test_implausible_reports_are_left_out_of_the_combined_figures():
    good = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], 2)
    assert combine({"a": good, "b": dict(good, confusion=[[5, 0], [0, 5]])}).get("confusion") is None  # sum != n_test
    assert combine({"a": good, "b": dict(good, confusion=[[-1, 3], [1, 1]])}).get("confusion") is None
    assert combine({"a": good, "b": dict(good, confusion="x")}).get("confusion") is None
    assert combine({"a": good, "b": good})["confusion"] == [[4, 0], [2, 2]]
    reg = regression_metrics([1.0, 2.0], [1.5, 2.5])
    assert "rmse" not in combine({"a": reg, "b": dict(reg, sse=float("nan"))})
    assert combine({"a": reg, "b": reg})["rmse"] == pytest.approx(0.5)


def test_a_plot_of_many_participants_names_none_of_them_in_its_legend():
    history = [{"round": r, "accuracy": 0.5 + r / 10,
                "participants": {f"site{i}": {"accuracy": 0.4 + r / 10} for i in range(40)}} for r in range(3)]
    figure = plot_accuracy(history, None)
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["all participants", "each of 40 participants"]
    assert len(figure.axes[0].lines) == 41
    few = plot_accuracy([dict(h, participants={"bob": {"accuracy": 0.5}}) for h in history], None)
    assert [t.get_text() for t in few.axes[0].get_legend().get_texts()] == ["all participants", "bob"]
