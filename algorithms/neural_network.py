"""The ``neural_network`` algorithm: a Keras classifier trained with FedAvg.

Aggregator: merges the participants' feature statistics (federated
standardization), builds the model (the task's architecture or a default MLP
from the reported schema), sends it as Keras JSON, then per round broadcasts
the weights, takes the updates (safetensors, checked for shape, dtype and
finiteness), averages them weighted by sample count, and evaluates on its own
held-out data if it has some. Participants train ``epochs`` epochs with
``batch_size`` and ``learning_rate`` on their local split and evaluate every
global model on their local test split.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from werkbund.algorithms.arrays import UpdateRejected, decode_weights, encode_weights, signature
from werkbund.algorithms.engine.aggregator import RoundAggregator, TaskFailure
from werkbund.algorithms.engine.participant import RoundParticipant
from werkbund.algorithms.registry import Algorithm
from werkbund.algorithms.statistics import feature_moments, merge_moments
from werkbund.algorithms.strategies import build_strategy

log = logging.getLogger("werkbund.neural_network")


def _label_indices(labels, classes: list) -> np.ndarray:
    index = {str(c): i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in np.asarray(labels).tolist()} - set(index))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among the task's classes {classes}")
    return np.asarray([index[str(v)] for v in np.asarray(labels).tolist()], dtype=np.int64)


class NeuralNetworkAggregator(RoundAggregator):
    def setup(self):
        from werkbund.algorithms import keras_models as km

        d = self.definition
        km.keras.utils.set_random_seed(int(d.get("seed", 0)))
        if not self.schema or not self.schema.get("features"):
            raise TaskFailure("the participants reported no data schema; the model cannot be built")
        self.classes = list(self.schema["classes"])
        n_features = len(self.schema["features"])
        if len(self.classes) < 2:
            raise TaskFailure(f"the participants' data has {len(self.classes)} class(es); a classifier needs 2 or more")
        mean = variance = None
        if d.get("standardize", True):
            moments = []
            collected = self.exchange("stats", expect="stats", number=-1,
                                      handler=lambda m: moments.append(_moments_of(m, n_features)))
            merged = merge_moments(moments)
            # a feature that is constant across all sites is left unscaled (as scikit-learn's StandardScaler
            # does); dividing by a zero deviation would blow up any row where it is not constant after all
            mean, variance = merged["mean"], np.where(merged["variance"] > 1e-12, merged["variance"], 1.0)
            self.progress.message(f"federated standardization over {merged['count']} rows from "
                                  f"{', '.join(collected.accepted)}")
        if d.get("model"):
            model = km.model_from_architecture(d["model"])
            if mean is not None:
                model = km.with_standardization(model, n_features, mean, variance)
        else:
            model = km.default_network(n_features, len(self.classes), mean, variance)
        self.model = km.compile_classifier(model, d["learning_rate"])
        if self.model.output_shape[-1] != len(self.classes):
            raise TaskFailure(f"the model has {self.model.output_shape[-1]} outputs but the data has "
                              f"{len(self.classes)} classes")
        self.weights = self.model.get_weights()
        self.expected = signature(self.weights)
        self.strategy = build_strategy(d.get("strategy"))
        self.channel.broadcast("setup", self.model.to_json().encode("utf-8"), round=-1, classes=self.classes)
        self.progress.message(f"model sent: {self.model.count_params()} parameters, classes {self.classes}")

    def global_payload(self):
        return encode_weights(self.weights), {}

    def begin_round(self, number):
        self.strategy.begin_round(self.weights)

    def accept_update(self, message):
        n_samples = message.get("n_samples")
        if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples <= 0:
            raise UpdateRejected(f"the update's sample count {n_samples!r} is not a positive integer")
        self.strategy.add(decode_weights(message.payload, self.expected), n_samples, message.sender)

    def aggregate(self, number):
        self.weights = self.strategy.result()
        self.model.set_weights(self.weights)

    def evaluate(self):
        if self.holdout is None or len(self.holdout) == 0:
            return {}
        y = _label_indices(self.holdout.y, self.classes)
        loss, accuracy = self.model.evaluate(self.holdout.x, y, verbose=0, return_dict=False)[:2]
        return {"loss": float(loss), "accuracy": float(accuracy), "n": len(self.holdout)}

    def final_model(self):
        from werkbund.algorithms.keras_models import model_bytes

        self.model.set_weights(self.weights)
        meta = {"classes": self.classes, "features": self.schema["features"], "target": self.schema.get("target"),
                "format": "keras", "algorithm": "neural_network"}
        return model_bytes(self.model), meta


def _moments_of(message, n_features: int) -> dict:
    count, mean, m2 = message.get("count"), message.get("mean"), message.get("m2")
    if not isinstance(count, int) or count <= 0:
        raise UpdateRejected("statistics without a positive row count")
    for name, values in (("mean", mean), ("m2", m2)):
        if not isinstance(values, list) or len(values) != n_features:
            raise UpdateRejected(f"statistics: {name} must list {n_features} numbers")
        if not np.isfinite(np.asarray(values, dtype=np.float64)).all():
            raise UpdateRejected(f"statistics: {name} holds NaN or infinite values")
    if min(m2) < 0:
        raise UpdateRejected("statistics: m2 cannot be negative")
    return {"count": count, "mean": mean, "m2": m2}


class NeuralNetworkParticipant(RoundParticipant):
    def moments(self):
        return feature_moments(self.train_data.x)

    def configure(self, message):
        from werkbund.algorithms import keras_models as km

        self.classes = list(message.get("classes") or [])
        self.y_train = _label_indices(self.train_data.y, self.classes)
        self.y_test = _label_indices(self.test_data.y, self.classes) if len(self.test_data) else None
        model = km.model_from_architecture(message.payload.decode("utf-8"))
        self.model = km.compile_classifier(model, self.definition["learning_rate"])
        self.expected = signature(self.model.get_weights())
        self.progress.message(f"model received: {self.model.count_params()} parameters")

    def _load_global(self, message):
        self.model.set_weights(decode_weights(message.payload, self.expected))

    def evaluate_global(self, message):
        self._load_global(message)
        return self._evaluate()

    def _evaluate(self) -> dict:
        if self.y_test is None:
            return {}
        loss, accuracy = self.model.evaluate(self.test_data.x, self.y_test, verbose=0, return_dict=False)[:2]
        return {"loss": float(loss), "accuracy": float(accuracy), "n_test": int(len(self.y_test))}

    def train(self, message):
        from werkbund.algorithms.keras_models import EpochCallback

        d = self.definition
        number = message.get("round")
        self.progress.epochs_started(number, d["epochs"])
        history = self.model.fit(self.train_data.x, self.y_train, epochs=d["epochs"], batch_size=d["batch_size"],
                                 verbose=0, shuffle=True, callbacks=[EpochCallback(self.progress, d["epochs"])])
        loss = float(history.history["loss"][-1])
        self.progress.message(f"round {number + 1}: trained on {len(self.y_train)} rows, loss {loss:.4f}")
        return encode_weights(self.model.get_weights()), {"n_samples": int(len(self.y_train)), "train_loss": loss}

    def keep_final(self, message):
        from werkbund.algorithms.keras_models import model_bytes

        self._load_global(message)
        evaluation = self._evaluate()
        result = {"eval": evaluation, "classes": self.classes}
        if self.out_model:
            os.makedirs(os.path.dirname(os.path.abspath(self.out_model)), exist_ok=True)
            with open(self.out_model, "wb") as handle:
                handle.write(model_bytes(self.model))
            with open(f"{self.out_model}.json", "w") as handle:
                json.dump({"task": self.channel.task, "classes": self.classes,
                           "features": self.train_data.features, "eval": evaluation}, handle, indent=2)
            result["model_path"] = str(self.out_model)
        return result


ALGORITHM = Algorithm(
    name="neural_network",
    aggregator=NeuralNetworkAggregator,
    participant=NeuralNetworkParticipant,
    description="Keras classifier (default MLP or a given architecture), FedAvg weighted by sample count",
)
