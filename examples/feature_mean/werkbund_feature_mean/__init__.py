"""``feature_mean``: the federated per-feature mean and variance, a werkbund algorithm in one file.

Each participant sends, per feature, the mean of its values and the mean of their squares over
all its rows, with its row count as the update's sample count. The aggregator's model is the
sample-weighted mean of these two vectors, which is exactly the pooled mean and the pooled mean
of squares; the variance follows (population variance, ddof=0), optionally shrunk toward the
average variance across features (``shrinkage``). The final model is JSON.

Because a round's result is the sample-weighted mean of the participants' arrays (the aggregator
sets ``weighted_mean_update``), the algorithm also runs under POM 2 (secure aggregation): there the
aggregator learns only that mean, never a single site's moments. Secure aggregation clips each
entry's change against the previous global model to ``pom_options.clip_range`` (64 by default), so
the participants refuse to send a change that would be clipped instead of letting the result go
wrong quietly.

The walk-through is docs/writing-an-algorithm.md in the werkbund repository.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from werkbund.algorithms.arrays import encode_weights
from werkbund.algorithms.engine.aggregator import RoundAggregator, TaskFailure
from werkbund.algorithms.engine.participant import RoundParticipant
from werkbund.algorithms.registry import Algorithm, Field

SECURE_CLIP_RANGE = 64.0  # POM 2's default pom_options.clip_range


def summary(weights: list[np.ndarray], features: list[str], count: int, shrinkage: float) -> dict:
    """The model: per feature the pooled mean and (shrunk) variance."""
    mean, square = (np.asarray(w, dtype=np.float64) for w in weights)
    variance = np.maximum(square - mean ** 2, 0.0)
    variance = (1.0 - shrinkage) * variance + shrinkage * (variance.mean() if variance.size else 0.0)
    return {"features": list(features), "count": int(count), "mean": mean.tolist(), "variance": variance.tolist(),
            "std": np.sqrt(variance).tolist(), "shrinkage": shrinkage}


class FeatureMeanAggregator(RoundAggregator):
    weighted_mean_update = True  # the update is arrays and a sample count: the engine decodes, POM 2 applies

    def setup(self):
        """Runs once the quorum has joined: the global model starts at zero for every feature."""
        self.features = list((self.schema or {}).get("features") or [])
        if not self.features:
            raise TaskFailure("the participants reported no data schema; feature_mean needs their feature names")
        self.weights = [np.zeros(len(self.features)), np.zeros(len(self.features))]
        self.count = 0

    def global_weights(self):
        """The arrays every round starts from (and the final message carries)."""
        return self.weights

    def global_payload(self):
        """The broadcast: the arrays, and the row count behind them for the participants' copy."""
        return encode_weights(self.weights), {"count": self.count}

    def begin_round(self, number):
        self.sums, self.total = [np.zeros_like(w) for w in self.weights], 0

    def accept_update(self, update):
        """One update, decoded and checked by the engine (shapes, dtypes, finite values, sample count);
        under POM 2 exactly one: the sample-weighted mean, with the total count. UpdateRejected refuses one."""
        self.sums = [s + update.n_samples * w for s, w in zip(self.sums, update.weights)]
        self.total += update.n_samples

    def aggregate(self, number):
        self.weights = [s / self.total for s in self.sums]
        self.count = self.total

    def final_model(self):
        model = summary(self.weights, self.features, self.count, self.definition["shrinkage"])
        return json.dumps(model).encode("utf-8"), {"algorithm": "feature_mean", "format": "json",
                                                  "features": self.features, "rows": self.count}

    def checkpoint_state(self):
        return self.weights, {}, {"features": self.features, "count": self.count}

    def restore_state(self, weights, strategy_state, meta):
        self.weights, self.features, self.count = list(weights), list(meta["features"]), int(meta["count"])


class FeatureMeanParticipant(RoundParticipant):
    def evaluate_global(self, message):
        return {}  # nothing to test a mean on; a model would report its local test metrics here

    def train(self, message):
        """The local moments over all local rows: (the arrays, the header with n_samples)."""
        x = np.concatenate([self.train_data.x, self.test_data.x]).astype(np.float64)
        weights = [x.mean(axis=0), (x ** 2).mean(axis=0)]
        if self.definition.get("pom", 1) == 2:
            clip = float((self.definition.get("pom_options") or {}).get("clip_range", SECURE_CLIP_RANGE))
            change = max(float(np.abs(w - g).max()) for w, g in zip(weights, self.global_weights(message)))
            if change > clip:
                raise ValueError(f"the local moments differ from the global ones by {change:.4g}, more than "
                                 f"pom_options.clip_range {clip:g}; create the task with a larger clip_range")
        return weights, {"n_samples": int(len(x))}

    def keep_final(self, message):
        model = summary(self.global_weights(message), self.train_data.features, message.get("count"),
                        self.definition["shrinkage"])
        result = {"eval": {}, "model": model}
        if self.out_model:
            Path(self.out_model).parent.mkdir(parents=True, exist_ok=True)
            Path(self.out_model).write_text(json.dumps(model, indent=2))
            result["model_path"] = str(self.out_model)
        return result


ALGORITHM = Algorithm(
    name="feature_mean",
    aggregator=FeatureMeanAggregator,
    participant=FeatureMeanParticipant,
    description="federated per-feature mean and variance (a plug-in example), POM 1 and 2",
    fields=(Field("shrinkage", float, 0.0, "shrink each feature's variance toward the average variance across "
                  "features by this fraction", minimum=0, maximum=1),),
    privacy_modes=frozenset({1, 2}),
    model_suffix=".json",
)
