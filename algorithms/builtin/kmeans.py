"""The ``kmeans`` algorithm: federated k-means (Lloyd's algorithm over sufficient statistics).

Setup: with ``standardize`` (the default) participants send count, mean and M2 per feature and
every site clusters standardized features; the final model carries the scaler.

Round 0 seeds the centroids without any row leaving a site: every participant runs k-means++
and a few Lloyd steps on its own (standardized) training rows and sends its ``clusters`` local
centroids with their sizes; the aggregator runs weighted k-means++ and Lloyd on those candidates
(weights = sizes) to pick the ``clusters`` starting centroids (the one-shot reduction of k-FED,
Dennis et al. 2021).

Rounds 1..: the aggregator broadcasts the centroids; each participant assigns its rows to the
nearest one and returns, per cluster, the count, the sum and the sum of squares of its rows.
The aggregator adds them up (a running sum), sets each centroid to its cluster's mean, and
computes the inertia at the broadcast centroids from the same sums. An empty cluster is not
left where it was: the cluster with the largest spread is split along its widest feature and
the empty one takes one half. When no centroid moves by more than ``tolerance`` (standardized
units), the task has converged and stops early through the engine's ``_stop_if`` (COMPLETE). With
a checkpoint folder the aggregator saves the centroids after every round and can ``--resume``.

The aggregator's figures per round: ``inertia`` (of the training rows, at the centroids that were
broadcast), ``loss`` (that inertia per row), ``shift`` (the largest centroid move) and the number
of empty clusters; with held-out rows of its own also ``holdout_inertia`` and ``holdout_loss``.
Participants report the inertia of their test rows (``loss`` per row, pooled by the engine).

The final model is safetensors (centroids in original and standardized units, the scaler and
the cluster sizes) with the inertia per round in its JSON metadata. Note that per-cluster sums
of a cluster that holds a single row of a site reveal that row to the aggregator, as in any
federated k-means without secure aggregation.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from werkbund.algorithms.arrays import UpdateRejected, decode_weights, encode_weights
from werkbund.algorithms.engine.aggregator import RoundAggregator, TaskFailure
from werkbund.algorithms.engine.participant import RoundParticipant
from werkbund.algorithms.fields import STANDARDIZE
from werkbund.algorithms.model_files import named_arrays_bytes, write_local_result
from werkbund.algorithms.moments import feature_moments
from werkbund.algorithms.registry import Algorithm, Field
from werkbund.algorithms.standardization import complete, federated_scaler, float_list, standardized

log = logging.getLogger("werkbund.kmeans")

DEFAULT_CLUSTERS = 3
DEFAULT_TOLERANCE = 1e-4
LOCAL_LLOYD_STEPS = 25


# ------------------------------------------------------------------ plain k-means on one machine
def kmeans_plus_plus(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k starting centroids chosen with probability proportional to weight x squared distance."""
    chosen = [points[rng.choice(len(points), p=weights / weights.sum())]]
    closest = ((points - chosen[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        score = weights * closest
        if score.sum() <= 0:  # fewer distinct points than clusters: repeat one
            chosen.append(points[rng.integers(len(points))])
            continue
        pick = points[rng.choice(len(points), p=score / score.sum())]
        chosen.append(pick)
        closest = np.minimum(closest, ((points - pick) ** 2).sum(axis=1))
    return np.array(chosen, dtype=np.float64)


def assign(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid and the squared distance to it, per row."""
    distances = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    nearest = distances.argmin(axis=1)
    return nearest, distances[np.arange(len(points)), nearest]


def weighted_kmeans(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator,
                    steps: int = LOCAL_LLOYD_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Weighted k-means++ and Lloyd steps; returns the centroids and the weight in each cluster."""
    centroids = kmeans_plus_plus(points, weights, k, rng)
    for _ in range(steps):
        nearest, _ = assign(points, centroids)
        mass = np.bincount(nearest, weights=weights, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, points * weights[:, None])
        moved = np.where(mass[:, None] > 0, sums / np.maximum(mass, 1e-300)[:, None], centroids)
        if np.allclose(moved, centroids):
            break
        centroids = moved
    nearest, _ = assign(points, centroids)
    return centroids, np.bincount(nearest, weights=weights, minlength=k)


def cluster_sums(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster: count, sum and sum of squares of the rows nearest to each centroid."""
    k, d = centroids.shape
    nearest, _ = assign(points, centroids)
    counts = np.bincount(nearest, minlength=k).astype(np.float64)
    sums, squares = np.zeros((k, d)), np.zeros((k, d))
    np.add.at(sums, nearest, points)
    np.add.at(squares, nearest, points ** 2)
    return counts, sums, squares


def split_widest(centroids, counts, sums, squares, empty) -> np.ndarray:
    """Move each empty cluster into the cluster with the largest sum of squared deviations: that
    cluster is split along its widest feature, half a standard deviation to either side."""
    centroids = centroids.copy()
    safe = np.maximum(counts, 1)[:, None]
    spread = np.maximum(squares / safe - (sums / safe) ** 2, 0.0) * counts[:, None]
    for j in empty:
        widest = int(spread.sum(axis=1).argmax())
        if spread[widest].sum() <= 0:
            break
        feature = int(spread[widest].argmax())
        step = np.sqrt(spread[widest, feature] / counts[widest]) / 2
        centroids[j] = centroids[widest]
        centroids[j, feature] += step
        centroids[widest, feature] -= step
        spread[widest] /= 4  # roughly what each half keeps, so that a second empty cluster may go elsewhere
        spread[j] = spread[widest]
    return centroids


def _settings(definition: dict) -> tuple[int, float]:
    k = int(definition.get("clusters") or DEFAULT_CLUSTERS)
    tolerance = definition.get("tolerance")
    return k, float(DEFAULT_TOLERANCE if tolerance is None else tolerance)


def _counts_ok(counts: np.ndarray, n_samples) -> None:
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples <= 0:
        raise UpdateRejected(f"the update's sample count {n_samples!r} is not a positive integer")
    if (counts < 0).any() or (counts != np.round(counts)).any():
        raise UpdateRejected("cluster sizes must be non-negative whole numbers")
    if int(counts.sum()) != n_samples:
        raise UpdateRejected(f"cluster sizes add up to {int(counts.sum())}, the update claims {n_samples} rows")


# ---------------------------------------------------------------------------- the aggregator
class KMeansAggregator(RoundAggregator):
    def setup(self):
        d = self.definition
        if not self.schema or not self.schema.get("features"):
            raise TaskFailure("the participants reported no data schema; k-means needs their feature names")
        self.features = list(self.schema["features"])
        self.k, self.tolerance = _settings(d)
        n = len(self.features)
        if d.get("standardize", True):
            self.mean, self.scale, rows = federated_scaler(self, n)
            if rows < self.k:
                raise TaskFailure(f"the participants hold {rows} rows in all, fewer than {self.k} clusters")
        else:
            self.mean, self.scale = np.zeros(n), np.ones(n)
        self.rng = np.random.default_rng(int(d.get("seed", 0)))
        self.centroids: np.ndarray | None = None
        self.sizes = np.zeros(self.k)
        self.inertia: list[float] = []
        self.converged_round: int | None = None
        self._last: dict = {}
        self.broadcast_setup(b"", clusters=self.k, mean=self.mean.tolist(),
                             scale=self.scale.tolist())
        self.progress.message(f"k-means with {self.k} clusters over {n} features; round 0 seeds the centroids")

    def round_metrics(self, number):
        """Once converged, tell the engine to stop after this round (the task ends COMPLETE)."""
        if self.converged_round == number:
            self._stop_if(f"k-means converged in round {number + 1}: no centroid moved more than {self.tolerance} "
                          "(standardized units)", self._pending)
        return {}

    def checkpoint_state(self):
        facts = {"features": self.features, "k": self.k, "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                 "sizes": self.sizes.tolist(), "inertia": self.inertia, "converged_round": self.converged_round,
                 "rng": self.rng.bit_generator.state}
        return ([] if self.centroids is None else [self.centroids]), {}, facts

    def restore_state(self, weights, strategy_state, meta):
        self.features, self.k = list(meta["features"]), int(meta["k"])
        _, self.tolerance = _settings(self.definition)
        self.mean, self.scale = np.asarray(meta["mean"]), np.asarray(meta["scale"])
        self.sizes, self.inertia = np.asarray(meta["sizes"]), list(meta["inertia"])
        self.converged_round, self._last = meta.get("converged_round"), {}
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = meta["rng"]
        self.centroids = np.asarray(weights[0], dtype=np.float64) if weights else None
        if self.centroids is not None and self.centroids.shape != (self.k, len(self.features)):
            raise ValueError(f"the checkpoint's centroids have shape {self.centroids.shape}")

    def global_payload(self):
        if self.centroids is None:
            return b"", {"phase": "seed"}
        return encode_weights([self.centroids]), {"phase": "assign"}

    def begin_round(self, number):
        self.seeding = self.centroids is None
        self._candidates, self._candidate_sizes = [], []
        self._counts = np.zeros(self.k)
        self._sums = np.zeros((self.k, len(self.features)))
        self._squares = np.zeros_like(self._sums)

    def accept_update(self, message):
        k, n = self.k, len(self.features)
        n_samples = message.get("n_samples")
        if self.seeding:
            centroids, counts = decode_weights(message.payload, [((k, n), "float64"), ((k,), "float64")])
            _counts_ok(counts, n_samples)
            self._candidates.append(centroids[counts > 0])
            self._candidate_sizes.append(counts[counts > 0])
            return
        counts, sums, squares = decode_weights(message.payload, [((k,), "float64"), ((k, n), "float64"),
                                                                 ((k, n), "float64")])
        _counts_ok(counts, n_samples)
        if (squares < 0).any():
            raise UpdateRejected("sums of squares cannot be negative")
        self._counts += counts
        self._sums += sums
        self._squares += squares

    def aggregate(self, number):
        if self.seeding:
            points, weights = np.concatenate(self._candidates), np.concatenate(self._candidate_sizes)
            if len(points) == 0:
                raise TaskFailure("no participant sent seeding candidates")
            self.centroids, self.sizes = weighted_kmeans(points, weights, self.k, self.rng)
            self._last = {"candidates": int(len(points))}
            self.progress.message(f"seeded {self.k} centroids from {len(points)} local centroids")
            return
        c, counts = self.centroids, self._counts
        # inertia at the broadcast centroids: sum ||x - c||^2 = sum x^2 - 2 c.sum x + n ||c||^2
        inertia = float((self._squares.sum(axis=1) - 2 * (c * self._sums).sum(axis=1)
                         + counts * (c ** 2).sum(axis=1)).sum())
        moved = np.where(counts[:, None] > 0, self._sums / np.maximum(counts, 1)[:, None], c)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            moved = split_widest(moved, counts, self._sums, self._squares, empty)
            log.info("round %d: %d empty cluster(s) took half of the widest cluster", number, len(empty))
        shift = float(np.sqrt(((moved - c) ** 2).sum(axis=1)).max())
        self.centroids, self.sizes = moved, counts
        self.inertia.append(max(inertia, 0.0))
        self._last = {"inertia": self.inertia[-1], "loss": self.inertia[-1] / max(float(counts.sum()), 1.0),
                      "shift": shift, "empty_clusters": int(len(empty))}
        if shift <= self.tolerance and not len(empty):
            self.converged_round = number

    def evaluate(self):
        metrics = dict(self._last)
        if self.holdout is not None and len(self.holdout) and self.centroids is not None:
            _, distances = assign(standardized(self.holdout.x, self.mean, self.scale), self.centroids)
            metrics.update({"holdout_inertia": float(distances.sum()), "holdout_loss": float(distances.mean()),
                            "n": len(self.holdout)})
        return metrics

    def original_centroids(self) -> np.ndarray:
        return self.centroids * self.scale + self.mean

    def final_model(self):
        arrays = {"centroids": self.original_centroids(), "centroids_standardized": self.centroids,
                  "mean": self.mean, "scale": self.scale, "sizes": self.sizes}
        meta = {"algorithm": "kmeans", "format": "safetensors", "features": self.features, "clusters": self.k,
                "standardized": bool(self.definition.get("standardize", True)), "inertia": self.inertia,
                "converged_round": self.converged_round, "sizes": [int(s) for s in self.sizes],
                "centroids": self.original_centroids().tolist(), "target": None, "classes": None}
        return named_arrays_bytes(arrays), meta

    def write_results(self, directory) -> list[str]:
        """A scatter plot of the centroids (and the aggregator's own held-out rows, if any)."""
        from werkbund.algorithms.plots import plot_clusters

        x = labels = None
        if self.holdout is not None and len(self.holdout):
            x = np.asarray(self.holdout.x, dtype=np.float64)
            labels, _ = assign(standardized(x, self.mean, self.scale), self.centroids)
        path = Path(directory) / "clusters.png"
        return [plot_clusters(path, self.original_centroids(), self.features, x=x, labels=labels,
                              sizes=self.sizes, title=f"{self.channel.task}: {self.k} federated clusters")]


# --------------------------------------------------------------------------- the participant
class KMeansParticipant(RoundParticipant):

    def moments(self):
        return feature_moments(complete(self.train_data.x, "k-means"))

    def configure(self, message):
        n = len(self.train_data.features)
        self.k = message.get("clusters")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"the aggregator asks for {self.k!r} clusters")
        self.mean = float_list(message.get("mean"), n, "mean")
        self.scale = float_list(message.get("scale"), n, "scale")
        if (self.scale <= 0).any():
            raise ValueError("the aggregator's scale must be positive")
        self.x_train = standardized(complete(self.train_data.x, "k-means"), self.mean, self.scale)
        self.x_test = (standardized(complete(self.test_data.x, "k-means"), self.mean, self.scale)
                       if len(self.test_data) else None)
        self.rng = np.random.default_rng(int(self.definition.get("seed", 0)) + 7919 * len(self.x_train))

    def _centroids(self, message) -> np.ndarray:
        return self.global_weights(message, [((self.k, self.x_train.shape[1]), "float64")])[0]

    def evaluate_global(self, message):
        if message.get("phase") == "seed":
            return {}
        return self._evaluate(self._centroids(message))

    def _evaluate(self, centroids) -> dict:
        if self.x_test is None:
            return {}
        _, distances = assign(self.x_test, centroids)
        return {"loss": float(distances.mean()), "inertia": float(distances.sum()), "n_test": int(len(distances))}

    def train(self, message):
        n = len(self.x_train)
        if message.get("phase") == "seed":
            k = min(self.k, n)
            centroids, sizes = weighted_kmeans(self.x_train, np.ones(n), k, self.rng)
            padded, padded_sizes = np.zeros((self.k, self.x_train.shape[1])), np.zeros(self.k)
            padded[:k], padded_sizes[:k] = centroids, np.round(sizes)
            self.progress.message(f"round 0: sent {k} local centroids as seeding candidates")
            return [padded, padded_sizes], {"n_samples": n}
        centroids = self._centroids(message)
        counts, sums, squares = cluster_sums(self.x_train, centroids)
        inertia = float((squares.sum(axis=1) - 2 * (centroids * sums).sum(axis=1)
                         + counts * (centroids ** 2).sum(axis=1)).sum())
        self.progress.message(f"round {message.get('round') + 1}: assigned {n} rows, local inertia {inertia:.4f}")
        return [counts, sums, squares], {"n_samples": n, "train_loss": inertia / n}

    def keep_final(self, message):
        from werkbund.algorithms.plots import plot_clusters

        centroids = self._centroids(message)
        evaluation = self._evaluate(centroids)
        original = centroids * self.scale + self.mean
        result = {"eval": evaluation, "centroids": original.tolist()}
        if self.out_model:
            x = np.concatenate([self.train_data.x, self.test_data.x]).astype(np.float64)
            labels, _ = assign(standardized(x, self.mean, self.scale), centroids)
            arrays = {"centroids": original, "centroids_standardized": centroids, "mean": self.mean,
                      "scale": self.scale}
            meta = {"task": self.channel.task, "algorithm": "kmeans", "features": self.train_data.features,
                    "centroids": original.tolist(), "local_sizes": np.bincount(labels, minlength=self.k).tolist(),
                    "eval": evaluation}
            result["model_path"] = write_local_result(self.out_model, named_arrays_bytes(arrays), meta)
            result["plot_path"] = plot_clusters(
                f"{self.out_model}.png", original, self.train_data.features, x=x, labels=labels,
                title=f"{self.channel.task}: local rows, global clusters")
        return result


ALGORITHM = Algorithm(
    name="kmeans",
    aggregator=KMeansAggregator,
    participant=KMeansParticipant,
    description="federated k-means: k-FED seeding, then Lloyd rounds over per-cluster sums and counts",
    fields=(
        Field("clusters", int, DEFAULT_CLUSTERS, "the number of clusters", minimum=1, maximum=10000),
        Field("tolerance", float, DEFAULT_TOLERANCE, "the largest centroid move (standardized units) that counts "
              "as converged: the task stops early, COMPLETE", minimum=0),
        STANDARDIZE,
    ),
    privacy_modes=frozenset({1}),  # its updates are per-cluster sums and counts, not weights to average
    model_suffix=".safetensors",
)
