"""The predictive-maintenance use case: what federation buys over training alone, and how close it
comes to pooling all data centrally.

For one scenario (see ``usecases/data.py``) the same model with the same budget
(``rounds`` x ``epochs`` passes over the data) is trained three ways:

- locally at each site on its own rows only,
- centrally on all sites' rows pooled (what nobody may do in practice: the upper reference),
- federated through a real platform (``usecases/federation.py``): FedAvg over the sites,
  ``epochs`` local epochs per round, federated standardization.

Every model is then tested on every site's test rows and on all of them together, as in the
tables of MUSKETEER D3.3: accuracy and a confusion matrix for classifiers, RMSE and MAE for
regressors. The metric of each model on the pooled test rows is kept per round for the plots.
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from werkbund.algorithms.engine.progress import Progress
from werkbund.algorithms.labels import label_indices
from werkbund.usecases.data import Scenario

log = logging.getLogger("werkbund.usecase")
COMBINED = "combined"
CENTRAL = "central (pooled data)"
FEDERATED = "federated"


@dataclass
class Budget:
    rounds: int = 10
    epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 0.002
    seed: int = 0

    def definition(self, description: str = "") -> dict:
        return {"rounds": self.rounds, "epochs": self.epochs, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, "seed": self.seed, "round_timeout": 900,
                "description": description[:2000]}


@dataclass
class ModelResult:
    """One trained model: its metrics on every test set, confusion matrices, metric per round."""

    name: str
    scores: dict[str, dict] = field(default_factory=dict)  # test set -> metrics
    confusion: dict[str, list] = field(default_factory=dict)  # test set -> matrix (classifiers)
    curve: list[float] = field(default_factory=list)  # pooled-test metric after every round
    wall_s: float = 0.0
    error: str | None = None


@dataclass
class ScenarioResult:
    scenario: Scenario
    budget: Budget
    models: dict[str, ModelResult] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return "accuracy" if self.scenario.kind == "classification" else "rmse"

    @property
    def test_sets(self) -> list[str]:
        return list(self.scenario.sites) + [COMBINED]


# ------------------------------------------------------------------------------------- metrics
def score(kind: str, y_true, y_pred, n_classes: int = 0) -> tuple[dict, list | None]:
    """Metrics of predictions (class indices or values) and the confusion matrix of a classifier."""
    if kind == "classification":
        from sklearn.metrics import confusion_matrix, f1_score

        matrix = confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))
        return ({"accuracy": float(np.mean(y_true == y_pred)),
                 "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
                 "n": int(len(y_true))}, matrix.tolist())
    errors = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return {"rmse": float(np.sqrt(np.mean(errors ** 2))), "mae": float(np.mean(np.abs(errors))),
            "n": int(len(y_true))}, None


def predict(model, x, kind: str) -> np.ndarray:
    # called directly (eagerly) in chunks: model.predict would retrace a tf.function for every new shape
    out = np.concatenate([np.asarray(model(x[i:i + 4096], training=False)) for i in range(0, len(x), 4096)])
    return np.argmax(out, axis=1) if kind == "classification" else out.reshape(-1)


def test_model(result: ModelResult, model, scenario: Scenario, classes: list) -> None:
    """Fill ``result`` with the model's metrics on every site's test rows and on all of them."""
    truths, preds = [], []
    for site, (_, test) in scenario.sites.items():
        y = label_indices(test.y, classes) if scenario.kind == "classification" else test.y
        p = predict(model, test.x, scenario.kind)
        result.scores[site], matrix = score(scenario.kind, y, p, len(classes))
        if matrix is not None:
            result.confusion[site] = matrix
        truths.append(y)
        preds.append(p)
    result.scores[COMBINED], matrix = score(scenario.kind, np.concatenate(truths), np.concatenate(preds), len(classes))
    if matrix is not None:
        result.confusion[COMBINED] = matrix


# -------------------------------------------------------------------------- local and central
def build_model(scenario: Scenario, train, budget: Budget, classes: list):
    """The federated task's default model, standardized on ``train`` (as the platform does it)."""
    from werkbund.algorithms import keras_models as km

    km.keras.utils.set_random_seed(budget.seed)
    x = np.asarray(train.x, dtype=np.float64)
    mean, variance = x.mean(axis=0), x.var(axis=0)
    variance = np.where(variance > 1e-12, variance, 1.0)
    if scenario.kind == "regression":
        y = np.asarray(train.y, dtype=np.float64)
        std = float(y.std()) if y.std() > 1e-12 else 1.0
        model = km.default_regressor(x.shape[1], mean, variance, float(y.mean()), std)
    else:
        model = km.default_network(x.shape[1], len(classes), mean, variance)
    return km.compile_for(scenario.kind, model, budget.learning_rate)


def curve_point(model, scenario: Scenario, pooled_test, classes: list) -> float:
    y = label_indices(pooled_test.y, classes) if scenario.kind == "classification" else pooled_test.y
    metrics, _ = score(scenario.kind, y, predict(model, pooled_test.x, scenario.kind), len(classes))
    return metrics["accuracy" if scenario.kind == "classification" else "rmse"]


def train_alone(name: str, train, scenario: Scenario, budget: Budget, classes: list, tick=None) -> ModelResult:
    """Train on one set of rows for ``rounds`` x ``epochs`` epochs, testing after every ``epochs``."""
    started = time.monotonic()
    result = ModelResult(name)
    model = build_model(scenario, train, budget, classes)
    y = label_indices(train.y, classes) if scenario.kind == "classification" else np.asarray(train.y, np.float32)
    pooled_test = scenario.pooled(1)
    for number in range(budget.rounds):
        model.fit(train.x, y, epochs=budget.epochs, batch_size=budget.batch_size, verbose=0, shuffle=True)
        result.curve.append(curve_point(model, scenario, pooled_test, classes))
        if tick:
            tick(f"{name}: round {number + 1}/{budget.rounds}")
    test_model(result, model, scenario, classes)
    result.wall_s = time.monotonic() - started
    return result


# --------------------------------------------------------------------------------- federated
class _RoundTicker(Progress):
    """The aggregator's progress: advances the caller's bar once per round."""

    def __init__(self, tick):
        self.tick = tick

    def round_done(self, number, total, summary):
        if self.tick:
            self.tick(f"federated: round {number + 1}/{total}")


def federated_curve(history: list[dict], kind: str) -> list[float]:
    """The combined test metric of each round's aggregate, as the participants evaluated it."""
    curve = []
    for h in history:
        if kind == "classification":
            curve.append(h.get("accuracy", float("nan")))
        elif "rmse" in h:
            curve.append(h["rmse"])
        else:  # the pooled MSE is the test-size weighted mean of the sites' MSE
            curve.append(math.sqrt(h["loss"]) if "loss" in h else float("nan"))
    return curve


def train_federated(scenario: Scenario, budget: Budget, classes: list, platform: str = "local",
                    tick=None) -> ModelResult:
    from werkbund.usecases.federation import run_federated

    started = time.monotonic()
    result = ModelResult(FEDERATED)
    overrides = {"classes": classes} if scenario.kind == "classification" else {}
    try:  # the platform's database and keys live only as long as the run
        with tempfile.TemporaryDirectory(prefix="werkbund-usecase-") as tmp:
            run = run_federated(f"usecase-{scenario.name}", scenario.sites,
                                budget.definition(f"werkbund use case: {scenario.title}"), Path(tmp),
                                platform=platform, schema_overrides=overrides,
                                progress=_RoundTicker(tick))
    except Exception as exc:  # reported in the table instead of losing the local and central results
        log.exception("the federated run of %s failed", scenario.name)
        result.error = f"{type(exc).__name__}: {exc}"
        result.wall_s = time.monotonic() - started
        return result
    model_classes = run["meta"].get("classes") or classes
    if scenario.kind == "classification" and [str(c) for c in model_classes] != [str(c) for c in classes]:
        raise RuntimeError(f"the federated model's classes {model_classes} differ from the scenario's {classes}")
    result.curve = federated_curve(run["history"], scenario.kind)
    test_model(result, run["model"], scenario, classes)
    result.wall_s = time.monotonic() - started
    return result


def run_scenario(scenario: Scenario, budget: Budget, platform: str = "local", tick=None,
                 federated: bool = True) -> ScenarioResult:
    """Local at every site, central, federated: the same model and budget, tested the same way."""
    classes = list(scenario.classes) if scenario.kind == "classification" else []
    outcome = ScenarioResult(scenario, budget)
    for site, (train, _) in scenario.sites.items():
        name = f"local at {site}"
        outcome.models[name] = train_alone(name, train, scenario, budget, classes, tick)
    outcome.models[CENTRAL] = train_alone(CENTRAL, scenario.pooled(0), scenario, budget, classes, tick)
    if federated:
        outcome.models[FEDERATED] = train_federated(scenario, budget, classes, platform, tick)
    return outcome


def steps(scenario: Scenario, budget: Budget, federated: bool = True) -> int:
    """How many progress ticks ``run_scenario`` makes."""
    return budget.rounds * (len(scenario.sites) + 1 + (1 if federated else 0))
