"""Linear and logistic regression trained with FedAvg across three sites (in one process)."""
import json

import numpy as np
import pytest
from safetensors.numpy import load as st_load

from support.inproc_federation import run_federation
from werkbund.algorithms.data.dataset import Dataset
from werkbund.algorithms.engine.aggregator import TaskFailure
from werkbund.algorithms.builtin.linear_models import classifier_evaluation, regressor_evaluation

COEFFICIENTS = np.array([2.5, -1.0, 0.02, 40.0])
INTERCEPT = 7.0
FEATURES = ["load", "speed", "temperature", "wear"]


def regression_site(rng, shift, rows=300):
    """Features on different scales, each site's feature distribution shifted (non-IID)."""
    x = rng.normal(shift, 1.0, (rows, 4)) * np.array([1.0, 3.0, 100.0, 0.05])
    y = x @ COEFFICIENTS + INTERCEPT + rng.normal(0, 0.1, rows)
    return Dataset(x.astype(np.float32), y, FEATURES, "rul", kind="regression")


def test_linear_regression_recovers_the_coefficients(tmp_path):
    rng = np.random.default_rng(5)
    sites = {"bob": regression_site(rng, 0.0), "carol": regression_site(rng, 1.5), "dave": regression_site(rng, -1.0)}
    holdout = regression_site(rng, 0.5, rows=100)
    definition = {"algorithm": "linear_regression", "rounds": 6, "epochs": 4, "batch_size": 32,
                  "learning_rate": 0.02, "round_timeout": 30}
    creator, aggregator, outcome, results = run_federation(definition, sites, holdout=holdout, out_dir=tmp_path)
    assert outcome["task"]["status"] == "COMPLETE"
    data, info = creator.get_model("t")
    meta = info["meta"]
    recovered = np.array([meta["coefficients"][name] for name in FEATURES])
    # the recovered coefficients are within 1 % of the truth (about 0.2 % in practice), the intercept within 0.1
    np.testing.assert_allclose(recovered, COEFFICIENTS, rtol=0.01)
    assert meta["intercept"] == pytest.approx(INTERCEPT, abs=0.1)
    # the stored arrays predict the target of the holdout rows from raw features
    model = st_load(data)
    z = (holdout.x.astype(np.float64) - model["mean"]) / model["scale"]
    predicted = (z @ model["weights"] + model["bias"])[:, 0] * model["target_scale"][0] + model["target_mean"][0]
    rmse = float(np.sqrt(((predicted - holdout.y) ** 2).mean()))
    assert rmse < 0.15  # the noise is 0.1; the target's own deviation is about 5
    final = aggregator.evaluate()
    assert final["rmse"] == pytest.approx(rmse, rel=1e-9)
    assert final["mae"] < final["rmse"]
    last = creator.rounds("t")[-1]["metrics"]
    assert set(last["participants"]) == {"bob", "carol", "dave"}
    assert all(e["rmse"] < 0.3 for e in last["participants"].values())
    assert last["rmse"] < 0.3 and last["n_test"] == 180  # pooled over the sites' test rows
    assert json.loads((tmp_path / "bob.model.json").read_text())["eval"]["rmse"] < 0.3


def classification_site(rng, weights, rows=300):
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    y = rng.choice(3, size=rows, p=weights)
    x = centres[y] + rng.normal(0, 0.6, (rows, 2))
    return Dataset(x.astype(np.float32), y.astype(np.int64), ["pressure", "flow"], "state")


def test_logistic_regression_separates_the_classes():
    rng = np.random.default_rng(9)
    sites = {"bob": classification_site(rng, [0.6, 0.3, 0.1]), "carol": classification_site(rng, [0.1, 0.3, 0.6]),
             "dave": classification_site(rng, [0.34, 0.33, 0.33])}
    holdout = classification_site(rng, [0.34, 0.33, 0.33], rows=150)
    definition = {"algorithm": "logistic_regression", "rounds": 4, "epochs": 2, "batch_size": 32,
                  "learning_rate": 0.05, "round_timeout": 30}
    creator, aggregator, outcome, results = run_federation(definition, sites, holdout=holdout)
    assert outcome["task"]["status"] == "COMPLETE"
    final = aggregator.evaluate()
    assert final["accuracy"] > 0.97  # the classes are 4 / 0.6 ~ 6.7 deviations apart
    assert min(final["recall"]) > 0.93 and min(final["precision"]) > 0.93
    assert np.asarray(final["confusion"]).sum() == 150
    for name, result in results.items():
        assert result["eval"]["accuracy"] > 0.95, name
    history = creator.rounds("t")
    last = history[-1]["metrics"]
    assert last["accuracy"] > 0.95 and last["n_test"] == 180   # pooled over the three sites' test rows
    assert np.asarray(last["confusion"]).sum() == 180 and len(last["recall"]) == 3
    assert history[0]["metrics"]["aggregator"]["accuracy"] <= history[-1]["metrics"]["aggregator"]["accuracy"]
    meta = creator.get_model("t")[1]["meta"]
    assert meta["classes"] == [0, 1, 2] and meta["algorithm"] == "logistic_regression"


def test_linear_regression_refuses_classification_data():
    rng = np.random.default_rng(1)
    sites = {"bob": classification_site(rng, [0.5, 0.5, 0.0])}
    with pytest.raises(TaskFailure, match="needs data of kind 'regression'"):
        run_federation({"algorithm": "linear_regression", "rounds": 1, "round_timeout": 10}, sites)


def test_evaluations_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    metrics = classifier_evaluation(np.array([0, 1, 1, 1]), probabilities)
    assert metrics["accuracy"] == 0.75 and metrics["n_test"] == 4
    assert metrics["confusion"] == [[1, 0], [1, 2]]
    assert metrics["precision"] == [0.5, 1.0] and metrics["recall"] == [1.0, pytest.approx(2 / 3)]
    assert metrics["loss"] == pytest.approx(-np.log([0.9, 0.8, 0.4, 0.7]).mean())
    metrics = regressor_evaluation(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0]))
    assert metrics["loss"] == pytest.approx(5 / 3) and metrics["rmse"] == pytest.approx(np.sqrt(5 / 3))
    assert metrics["mae"] == pytest.approx(1.0)


def test_the_linear_model_survives_a_checkpoint():
    from werkbund.algorithms.builtin.linear_models import LinearRegressionAggregator

    rng = np.random.default_rng(8)
    sites = {"bob": regression_site(rng, 0.0, rows=80), "carol": regression_site(rng, 1.0, rows=80)}
    definition = {"algorithm": "linear_regression", "rounds": 2, "learning_rate": 0.05, "round_timeout": 30,
                  "strategy": {"name": "fedavgm", "momentum": 0.5}}
    creator, aggregator, outcome, results = run_federation(definition, sites)
    weights, strategy_state, facts = aggregator.checkpoint_state()
    assert strategy_state  # FedAvgM keeps a momentum buffer
    restored = LinearRegressionAggregator(creator.aggregator("t"))
    restored.schema = aggregator.schema  # as the engine restores it from the checkpoint before restore_state
    restored.restore_state(weights, strategy_state, json.loads(json.dumps(facts)))
    assert restored.final_model()[1]["coefficients"] == aggregator.final_model()[1]["coefficients"]
    assert restored.final_model()[0] == aggregator.final_model()[0]


def test_fedprox_mu_is_found_inside_composed_strategies():
    from werkbund.algorithms.builtin.linear_models import fedprox_mu

    assert fedprox_mu(None) == 0.0 and fedprox_mu("median") == 0.0
    assert fedprox_mu({"name": "fedprox", "mu": 0.5}) == 0.5
    assert fedprox_mu({"name": "fedadam", "inner": {"name": "fedprox", "mu": 0.2}}) == 0.2
