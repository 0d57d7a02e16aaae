"""The ``neural_network`` algorithm: a Keras classifier or regressor trained with FedAvg.

Aggregator: merges the participants' feature statistics (federated
standardization), builds the model (the task's architecture or a default MLP
from the reported schema), sends it as Keras JSON, then per round broadcasts
the weights, takes the updates (safetensors, checked for shape, dtype and
finiteness), averages them weighted by sample count, and evaluates on its own
held-out data if it has some. Participants train ``epochs`` epochs with
``batch_size`` and ``learning_rate`` on their local split and evaluate every
global model on their local test split.

The kind comes from the participants' agreed data schema: ``classification``
(softmax over the classes, cross-entropy; accuracy, per-class precision and
recall, confusion matrix) or ``regression`` (one linear output, MSE; RMSE and
MAE). For regression the target's federated mean and standard deviation are
merged with the feature statistics and the default network rescales its output
to the target's units. Evaluations carry the sums that the aggregator pools
(see ``algorithms/metrics.py``).
"""
from __future__ import annotations

import logging

import numpy as np

from werkbund.algorithms.arrays import signature
from werkbund.algorithms.engine.aggregator import TaskFailure
from werkbund.algorithms.engine.participant import RoundParticipant
from werkbund.algorithms.engine.strategy_aggregator import StrategyAggregator
from werkbund.algorithms.privacy.dp import rounds as dp_rounds
from werkbund.algorithms.metrics import CLASSIFICATION, KINDS, REGRESSION, classification_metrics, regression_metrics
from werkbund.algorithms.fields import MODEL, STRATEGY, TRAINING
from werkbund.algorithms.labels import label_indices
from werkbund.algorithms.model_files import write_local_result
from werkbund.algorithms.moments import feature_moments
from werkbund.algorithms.registry import Algorithm, Field
from werkbund.algorithms.standardization import federated_moments, unit_variance
from werkbund.algorithms.strategies import build_strategy

log = logging.getLogger("werkbund.neural_network")


def _targets(labels, kind: str, classes: list) -> np.ndarray:
    """Class indices for a classifier, float32 targets for a regressor."""
    if kind != REGRESSION:
        return label_indices(labels, classes)
    try:
        y = np.asarray(labels, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError("a regression target must be numeric") from None
    if not np.isfinite(y).all():
        raise ValueError("the regression target holds NaN or infinite values")
    return y


def evaluate_model(model, x, y, kind: str, n_classes: int) -> dict:
    """Test metrics of ``model`` on (x, y), with the sums the aggregator pools across participants."""
    predicted = np.asarray(model.predict(x, verbose=0, batch_size=1024))
    if kind == REGRESSION:
        metrics = regression_metrics(y, predicted.reshape(-1))
        metrics["loss"] = metrics["sse"] / metrics["n_test"]  # the training loss, MSE
        return metrics
    probabilities = np.clip(predicted[np.arange(len(y)), y], 1e-7, 1.0)
    metrics = classification_metrics(y, np.argmax(predicted, axis=1), n_classes)
    metrics["loss"] = float(-np.mean(np.log(probabilities)))
    return metrics


class NeuralNetworkAggregator(StrategyAggregator):  # the update is the model's weights and a sample count (POM 2 and 3 apply)

    def setup(self):
        from werkbund.algorithms import keras_models as km

        d = self.definition
        km.keras.utils.set_random_seed(int(d.get("seed", 0)))
        if not self.schema or not self.schema.get("features"):
            raise TaskFailure("the participants reported no data schema; the model cannot be built")
        self.kind = self.schema.get("kind") or CLASSIFICATION
        if self.kind not in KINDS:
            raise TaskFailure(f"the participants' data is of kind {self.kind!r}; neural_network handles {KINDS}")
        regression = self.kind == REGRESSION
        self.classes = [] if regression else list(self.schema["classes"])
        n_features = len(self.schema["features"])
        if not regression and len(self.classes) < 2:
            raise TaskFailure(f"the participants' data has {len(self.classes)} class(es); a classifier needs 2 or more")
        mean = variance = target = None
        if standardizes(d):
            merged, target = federated_moments(self, n_features, target=regression)
            if regression:
                target = (float(target["mean"][0]), float(target["std"][0]) if target["std"][0] > 1e-12 else 1.0)
            # a feature that is constant across all sites is left unscaled (as scikit-learn's StandardScaler
            # does); dividing by a zero deviation would blow up any row where it is not constant after all
            mean, variance = merged["mean"], unit_variance(merged)
        if d.get("model"):
            model = km.model_from_architecture(d["model"])
            if mean is not None:
                model = km.with_standardization(model, n_features, mean, variance)
        elif regression:
            model = km.default_regressor(n_features, mean, variance, *(target or (None, None)))
        else:
            model = km.default_network(n_features, len(self.classes), mean, variance)
        self.model = km.compile_for(self.kind, model, d["learning_rate"])
        outputs = 1 if regression else len(self.classes)
        if self.model.output_shape[-1] != outputs:
            raise TaskFailure(f"the model has {self.model.output_shape[-1]} outputs but the {self.kind} task needs "
                              f"{outputs}" + ("" if regression else f" (classes {self.classes})"))
        self.weights = self.model.get_weights()
        self.expected = signature(self.weights)
        self.strategy = build_strategy(d.get("strategy"))
        self.dp = dp_rounds.start_budget(self)
        self.broadcast_setup(self.model.to_json().encode("utf-8"), classes=self.classes,
                             task_kind=self.kind, dp=self.dp.setup_header() if self.dp else None)
        self.progress.message(f"model sent: {self.model.count_params()} parameters, "
                              + ("regression" if regression else f"classes {self.classes}"))

    def aggregate(self, number):
        super().aggregate(number)
        self.model.set_weights(self.weights)

    def evaluate(self):
        if self.holdout is None or len(self.holdout) == 0:
            return {}
        y = _targets(self.holdout.y, self.kind, self.classes)
        return evaluate_model(self.model, self.holdout.x, y, self.kind, len(self.classes))

    def checkpoint_state(self):
        return self.weights, self.strategy.state_dict(), {"architecture": self.model.to_json(), "kind": self.kind,
                                                          "classes": self.classes,
                                                          "dp": self.dp.state() if self.dp else None}

    def restore_state(self, weights, strategy_state, meta):
        from werkbund.algorithms import keras_models as km

        self.kind, self.classes = meta.get("kind") or CLASSIFICATION, list(meta.get("classes") or [])
        self.model = km.compile_for(self.kind, km.model_from_architecture(meta["architecture"]),
                                    self.definition["learning_rate"])
        self.expected = signature(self.model.get_weights())
        self.restore_weights(weights, strategy_state)
        self.model.set_weights(weights)
        self.dp = dp_rounds.restore_budget(self.definition, meta.get("dp"))

    def final_model(self):
        from werkbund.algorithms.keras_models import model_bytes

        self.model.set_weights(self.weights)
        meta = {"classes": self.classes, "features": self.schema["features"], "target": self.schema.get("target"),
                "kind": self.kind, "format": "keras", "algorithm": "neural_network"}
        if self.dp is not None:
            meta["dp"] = self.dp.summary()
        return model_bytes(self.model), meta


class NeuralNetworkParticipant(RoundParticipant):
    def moments(self):
        if not standardizes(self.definition):  # whatever the aggregator asks: under DP they stay here
            raise ValueError("this task does not standardize"
                             + (" (differential privacy: the feature moments would be released without noise)"
                                if self.definition.get("dp") else "") + "; no statistics are sent")
        moments = feature_moments(self.train_data.x)
        if self.train_data.kind == REGRESSION:
            moments["target"] = feature_moments(_targets(self.train_data.y, REGRESSION, []).reshape(-1, 1))
        return moments

    def configure(self, message):
        from werkbund.algorithms import keras_models as km

        kind = message.get("task_kind") or CLASSIFICATION
        if kind != self.train_data.kind:
            raise ValueError(f"the task is a {kind} task but the local data was loaded for {self.train_data.kind}")
        classes = list(message.get("classes") or [])
        y_train = _targets(self.train_data.y, kind, classes)
        y_test = _targets(self.test_data.y, kind, classes) if len(self.test_data) else None
        model = km.compile_for(kind, km.model_from_architecture(message.payload.decode("utf-8")),
                               self.definition["learning_rate"])
        # the DP account carries over whatever this setup says (a re-sent setup never resets it); if it
        # cannot be taken, nothing of this setup is, and a DP task trains no round (train_private refuses)
        dp = dp_rounds.participant_budget(self, message)
        self.kind, self.classes, self.y_train, self.y_test = kind, classes, y_train, y_test
        self.model, self.expected, self.dp = model, signature(model.get_weights()), dp
        self.progress.message(f"model received: {self.model.count_params()} parameters")

    def _load_global(self, message):
        self.model.set_weights(self.global_weights(message, self.expected))

    def evaluate_global(self, message):
        self._load_global(message)
        return self._evaluate()

    def _evaluate(self) -> dict:
        if self.y_test is None:
            return {}
        return evaluate_model(self.model, self.test_data.x, self.y_test, self.kind, len(self.classes))

    def train(self, message):
        from werkbund.algorithms.keras_models import EpochCallback

        d = self.definition
        number = message.get("round")
        if self.definition.get("dp"):  # record-level DP-SGD instead of model.fit
            return dp_rounds.train_private(self, number)
        self.progress.epochs_started(number, d["epochs"])
        history = self.model.fit(self.train_data.x, self.y_train, epochs=d["epochs"], batch_size=d["batch_size"],
                                 verbose=0, shuffle=True, callbacks=[EpochCallback(self.progress, d["epochs"])])
        loss = float(history.history["loss"][-1])
        self.progress.message(f"round {number + 1}: trained on {len(self.y_train)} rows, loss {loss:.4f}")
        return self.model.get_weights(), {"n_samples": int(len(self.y_train)), "train_loss": loss}

    def keep_final(self, message):
        from werkbund.algorithms.keras_models import model_bytes

        self._load_global(message)
        evaluation = self._evaluate()
        result = {"eval": evaluation, "classes": self.classes, "kind": self.kind}
        if self.out_model:
            meta = {"task": self.channel.task, "kind": self.kind, "classes": self.classes,
                    "features": self.train_data.features, "eval": evaluation}
            result["model_path"] = write_local_result(self.out_model, model_bytes(self.model), meta)
        return result


def standardizes(definition: dict) -> bool:
    """Whether the task standardizes its features federatedly: ``standardize`` if given, else true without
    DP and false with it (the participants' count, mean and M2 per feature would be released without noise)."""
    value = definition.get("standardize")
    return (not definition.get("dp")) if value is None else bool(value)


def _check_standardize(value, definition: dict) -> None:
    if value and definition.get("dp"):
        raise ValueError("federated standardization releases each participant's exact row count, mean and M2 "
                         "per feature without noise, which differential privacy does not cover; scale the "
                         "features before joining and leave standardize out or false")


def _check_dp_metrics(definition: dict) -> None:
    """Under DP the participants report no test metrics (engine/participant.py): nothing may depend on them."""
    if not definition.get("dp"):
        return
    if (definition.get("selection") or {}).get("max_validation_loss") is not None:
        raise ValueError("selection max_validation_loss needs the participants' validation loss, which a task with "
                         "dp does not release (it is not covered by the privacy accounting)")
    early = definition.get("early_stopping")
    if isinstance(early, dict) and early.get("source", "participants") == "participants":
        raise ValueError("early_stopping on the participants' test metrics needs figures that a task with dp does "
                         "not release; use \"source\": \"aggregator\" (its own held-out data)")


STANDARDIZE = Field("standardize", bool, None,
                    "federated standardization of the features before training (default true; with dp false, and "
                    "true is refused: the moments would be released without noise)", check=_check_standardize)

ALGORITHM = Algorithm(
    name="neural_network",
    aggregator=NeuralNetworkAggregator,
    participant=NeuralNetworkParticipant,
    description="Keras classifier or regressor (default MLP or a given architecture), FedAvg weighted by sample count",
    fields=(*TRAINING, STANDARDIZE, STRATEGY, MODEL),
    privacy_modes=frozenset({1, 2, 3}),
    dp=True,
    checks=(_check_dp_metrics,),
    model_suffix=".keras",
)
