"""The ``logistic_regression`` and ``linear_regression`` algorithms: linear models trained with FedAvg.

Both are plain NumPy (no TensorFlow): a weight matrix and a bias, trained locally with mini-batch
Adam (``epochs``, ``batch_size``, ``learning_rate``) on standardized features, and combined by the
task's aggregation strategy (default FedAvg weighted by sample count; robust strategies and
server optimizers apply as for the neural network; with ``{"name": "fedprox", "mu": ...}`` the
local loss gets the proximal term ``mu/2 ||w - w_global||^2``).

- ``logistic_regression``: multinomial (softmax) regression for a class target; metrics accuracy,
  cross-entropy loss, per-class precision and recall, confusion matrix (``metrics.py``, which the
  engine pools over the participants).
- ``linear_regression``: least squares for a numeric target (participants join with data of kind
  ``regression``); the target is standardized with the pooled mean and deviation too, and the
  final model's metadata gives the coefficients and intercept in the data's own units. Metrics
  RMSE, MAE and the mean squared error (``loss``), in the target's units, pooled likewise.

Federated standardization (``standardize``, default on) merges the participants' count, mean and
M2 per column exactly; the final model (safetensors, never pickle) carries the scaler. With a
checkpoint folder the aggregator saves weights and strategy state after every round (``--resume``).
"""
from __future__ import annotations

import numpy as np

from werkbund.algorithms.arrays import signature
from werkbund.algorithms.engine.aggregator import TaskFailure
from werkbund.algorithms.engine.participant import RoundParticipant
from werkbund.algorithms.engine.strategy_aggregator import StrategyAggregator
from werkbund.algorithms.metrics import classification_metrics, regression_metrics
from werkbund.algorithms.fields import STANDARDIZE, STRATEGY, TRAINING
from werkbund.algorithms.labels import label_indices
from werkbund.algorithms.model_files import named_arrays_bytes, write_local_result
from werkbund.algorithms.moments import feature_moments
from werkbund.algorithms.registry import Algorithm
from werkbund.algorithms.standardization import complete, federated_scaler, float_list, standardized
from werkbund.algorithms.strategies import FedProx, build_strategy


# --------------------------------------------------------------------------------- metrics
def classifier_evaluation(y_true: np.ndarray, probabilities: np.ndarray) -> dict:
    """Accuracy, per-class precision and recall, confusion matrix (``metrics.py``, so the engine pools
    them over participants) and the cross-entropy as ``loss``."""
    metrics = classification_metrics(y_true, probabilities.argmax(axis=1), probabilities.shape[1])
    chosen = np.clip(probabilities[np.arange(len(y_true)), y_true], 1e-12, 1.0)
    metrics["loss"] = float(-np.log(chosen).mean())
    return metrics


def regressor_evaluation(y_true: np.ndarray, predicted: np.ndarray) -> dict:
    """RMSE, MAE and their pooling sums (``metrics.py``), and the mean squared error as ``loss``."""
    metrics = regression_metrics(y_true, predicted)
    metrics["loss"] = metrics["sse"] / metrics["n_test"]
    return metrics


def numeric_target(labels) -> np.ndarray:
    try:
        y = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("linear regression needs a numeric target; this data's target is not numeric") from None
    if not np.isfinite(y).all():
        raise ValueError("the target holds NaN or infinite values")
    return y


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fedprox_mu(spec) -> float:
    """The proximal coefficient of a FedProx strategy anywhere in the task's strategy (0 if none)."""
    strategy = build_strategy(spec)
    while strategy is not None:
        if isinstance(strategy, FedProx):
            return float(strategy.mu)
        strategy = getattr(strategy, "inner", None)
    return 0.0


class Adam:
    """Adam over a list of arrays; its moments persist across rounds like a Keras optimizer's."""

    def __init__(self, shapes, learning_rate: float, beta1=0.9, beta2=0.999, epsilon=1e-7):
        self.lr, self.beta1, self.beta2, self.epsilon = learning_rate, beta1, beta2, epsilon
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.t = 0

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.t += 1
        correction = np.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            p -= self.lr * correction * m / (np.sqrt(v) + self.epsilon)


# ----------------------------------------------------------------------------- aggregators
class _LinearAggregator(StrategyAggregator):  # the update is [weights, bias] and a sample count (POM 2 and 3 apply)
    data_kind = ""
    algorithm = ""

    def outputs(self) -> int:
        raise NotImplementedError

    def setup(self):
        d = self.definition
        if not self.schema or not self.schema.get("features"):
            raise TaskFailure(f"the participants reported no data schema; {self.algorithm} needs their features")
        if self.schema.get("kind") != self.data_kind:
            raise TaskFailure(f"{self.algorithm} needs data of kind {self.data_kind!r}; the participants joined "
                              f"with data of kind {self.schema.get('kind')!r}")
        self.features = list(self.schema["features"])
        self.classes = list(self.schema.get("classes") or [])
        n = len(self.features)
        self.target_mean, self.target_scale = 0.0, 1.0
        if d.get("standardize", True):
            columns = n + (1 if self.data_kind == "regression" else 0)
            mean, scale, _ = federated_scaler(self, columns)
            self.mean, self.scale = mean[:n], scale[:n]
            if columns > n:
                self.target_mean, self.target_scale = float(mean[n]), float(scale[n])
        else:
            self.mean, self.scale = np.zeros(n), np.ones(n)
        outputs = self.outputs()
        self.weights = [np.zeros((n, outputs)), np.zeros(outputs)]
        self.expected = signature(self.weights)
        self.strategy = build_strategy(d.get("strategy"))
        self.broadcast_setup(b"", classes=self.classes, mean=self.mean.tolist(),
                             scale=self.scale.tolist(), target_mean=self.target_mean,
                             target_scale=self.target_scale)
        self.progress.message(f"{self.algorithm}: {n} features, {outputs} output(s)")

    def checkpoint_state(self):
        facts = {"features": self.features, "classes": self.classes, "mean": self.mean.tolist(),
                 "scale": self.scale.tolist(), "target_mean": self.target_mean, "target_scale": self.target_scale}
        return self.weights, self.strategy.state_dict(), facts

    def restore_state(self, weights, strategy_state, meta):
        self.features, self.classes = list(meta["features"]), list(meta["classes"])
        self.mean, self.scale = np.asarray(meta["mean"]), np.asarray(meta["scale"])
        self.target_mean, self.target_scale = float(meta["target_mean"]), float(meta["target_scale"])
        outputs = self.outputs()
        self.expected = signature([np.zeros((len(self.features), outputs)), np.zeros(outputs)])
        self.restore_weights(weights, strategy_state)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return standardized(x, self.mean, self.scale) @ self.weights[0] + self.weights[1]

    def model_arrays(self) -> dict:
        return {"weights": self.weights[0], "bias": self.weights[1], "mean": self.mean, "scale": self.scale}

    def final_model(self):
        meta = {"algorithm": self.algorithm, "format": "safetensors", "features": self.features,
                "target": self.schema.get("target"), "classes": self.classes or None,
                "standardized": bool(self.definition.get("standardize", True))}
        return named_arrays_bytes(self.model_arrays()), dict(meta, **self.model_summary())

    def model_summary(self) -> dict:
        return {}


class LogisticRegressionAggregator(_LinearAggregator):
    data_kind, algorithm = "classification", "logistic_regression"

    def outputs(self):
        if len(self.classes) < 2:
            raise TaskFailure(f"the participants' data has {len(self.classes)} class(es); "
                              "logistic regression needs 2 or more")
        return len(self.classes)

    def evaluate(self):
        if self.holdout is None or len(self.holdout) == 0:
            return {}
        y = label_indices(self.holdout.y, self.classes)
        return classifier_evaluation(y, softmax(self.predict(self.holdout.x)))


class LinearRegressionAggregator(_LinearAggregator):
    data_kind, algorithm = "regression", "linear_regression"

    def outputs(self):
        return 1

    def original_units(self) -> tuple[np.ndarray, float]:
        """Coefficients and intercept for raw features and the raw target."""
        w, b = self.weights[0][:, 0], float(self.weights[1][0])
        coefficients = w * self.target_scale / self.scale
        intercept = self.target_mean + self.target_scale * (b - float((w * self.mean / self.scale).sum()))
        return coefficients, intercept

    def evaluate(self):
        if self.holdout is None or len(self.holdout) == 0:
            return {}
        predicted = self.predict(self.holdout.x)[:, 0] * self.target_scale + self.target_mean
        return regressor_evaluation(numeric_target(self.holdout.y), predicted)

    def model_arrays(self):
        return dict(super().model_arrays(), target_mean=np.array([self.target_mean]),
                    target_scale=np.array([self.target_scale]))

    def model_summary(self):
        coefficients, intercept = self.original_units()
        return {"coefficients": dict(zip(self.features, coefficients.tolist())), "intercept": intercept}


# ----------------------------------------------------------------------------- participants
class _LinearParticipant(RoundParticipant):
    data_kind = ""
    algorithm = ""

    def targets(self, data) -> np.ndarray:
        raise NotImplementedError

    def loss_and_gradient(self, x, y, w, b):
        raise NotImplementedError

    def evaluate_weights(self, w, b) -> dict:
        raise NotImplementedError

    def moments(self):
        x = complete(self.train_data.x, self.algorithm)
        if self.data_kind == "regression":
            x = np.column_stack([x, numeric_target(self.train_data.y)])
        return feature_moments(x)

    def configure(self, message):
        n = len(self.train_data.features)
        self.classes = list(message.get("classes") or [])
        self.mean = float_list(message.get("mean"), n, "mean")
        self.scale = float_list(message.get("scale"), n, "scale")
        self.target_mean = float(message.get("target_mean") or 0.0)
        self.target_scale = float(message.get("target_scale") or 1.0)
        if (self.scale <= 0).any() or self.target_scale <= 0:
            raise ValueError("the aggregator's scale must be positive")
        self.x_train = standardized(complete(self.train_data.x, self.algorithm), self.mean, self.scale)
        self.y_train = self.targets(self.train_data)
        self.x_test = (standardized(complete(self.test_data.x, self.algorithm), self.mean, self.scale)
                       if len(self.test_data) else None)
        self.y_test = self.targets(self.test_data) if len(self.test_data) else None
        outputs = len(self.classes) if self.data_kind == "classification" else 1
        self.expected = signature([np.zeros((n, outputs)), np.zeros(outputs)])
        d = self.definition
        self.optimizer = Adam([s for s, _ in self.expected], float(d["learning_rate"]))
        self.mu = fedprox_mu(d.get("strategy"))
        self.rng = np.random.default_rng(int(d.get("seed", 0)) + len(self.x_train))

    def _weights(self, message) -> list[np.ndarray]:
        return self.global_weights(message, self.expected)

    def evaluate_global(self, message):
        return self._evaluate(self._weights(message))

    def _evaluate(self, weights) -> dict:
        if self.x_test is None:
            return {}
        return self.evaluate_weights(*weights)

    def train(self, message):
        d = self.definition
        start = self._weights(message)
        w, b = (a.copy() for a in start)
        n, batch = len(self.x_train), int(d["batch_size"])
        losses = []
        for _ in range(int(d["epochs"])):
            order = self.rng.permutation(n)
            for first in range(0, n, batch):
                rows = order[first:first + batch]
                loss, grad_w, grad_b = self.loss_and_gradient(self.x_train[rows], self.y_train[rows], w, b)
                if self.mu:
                    grad_w, grad_b = grad_w + self.mu * (w - start[0]), grad_b + self.mu * (b - start[1])
                self.optimizer.step([w, b], [grad_w, grad_b])
                losses.append(loss * len(rows))
        train_loss = float(sum(losses[-((n + batch - 1) // batch):]) / n)
        self.progress.message(f"round {message.get('round') + 1}: trained on {n} rows, loss {train_loss:.4f}")
        return [w, b], {"n_samples": int(n), "train_loss": train_loss}

    def keep_final(self, message):
        weights = self._weights(message)
        evaluation = self._evaluate(weights)
        result = {"eval": evaluation, "classes": self.classes}
        if self.out_model:
            arrays = {"weights": weights[0], "bias": weights[1], "mean": self.mean, "scale": self.scale,
                      "target_mean": np.array([self.target_mean]), "target_scale": np.array([self.target_scale])}
            meta = {"task": self.channel.task, "algorithm": self.algorithm, "features": self.train_data.features,
                    "classes": self.classes or None, "eval": evaluation}
            result["model_path"] = write_local_result(self.out_model, named_arrays_bytes(arrays), meta)
        return result


class LogisticRegressionParticipant(_LinearParticipant):
    data_kind, algorithm = "classification", "logistic_regression"

    def targets(self, data):
        return label_indices(data.y, self.classes)

    def loss_and_gradient(self, x, y, w, b):
        p = softmax(x @ w + b)
        loss = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())
        p[np.arange(len(y)), y] -= 1.0
        p /= len(y)
        return loss, x.T @ p, p.sum(axis=0)

    def evaluate_weights(self, w, b):
        return classifier_evaluation(self.y_test, softmax(self.x_test @ w + b))


class LinearRegressionParticipant(_LinearParticipant):
    data_kind, algorithm = "regression", "linear_regression"

    def targets(self, data):
        return (numeric_target(data.y) - self.target_mean) / self.target_scale

    def loss_and_gradient(self, x, y, w, b):
        residual = (x @ w + b)[:, 0] - y
        grad = (2.0 / len(y)) * residual
        return float((residual ** 2).mean()), x.T @ grad[:, None], np.array([grad.sum()])

    def evaluate_weights(self, w, b):
        predicted = (self.x_test @ w + b)[:, 0] * self.target_scale + self.target_mean
        return regressor_evaluation(self.y_test * self.target_scale + self.target_mean, predicted)


# what both linear models declare beyond their names and classes: the training fields, federated
# standardization and the strategy; every privacy mode (the update is a weighted sum of arrays); a
# safetensors model
LINEAR_MODEL = dict(fields=(*TRAINING, STANDARDIZE, STRATEGY), privacy_modes=frozenset({1, 2, 3}),
                    model_suffix=".safetensors")

LOGISTIC_REGRESSION = Algorithm(
    name="logistic_regression", aggregator=LogisticRegressionAggregator, participant=LogisticRegressionParticipant,
    description="multinomial logistic regression (NumPy, local Adam), FedAvg or the task's strategy", **LINEAR_MODEL)

LINEAR_REGRESSION = Algorithm(
    name="linear_regression", aggregator=LinearRegressionAggregator, participant=LinearRegressionParticipant,
    description="least-squares linear regression for a numeric target (NumPy, local Adam), FedAvg", **LINEAR_MODEL)
