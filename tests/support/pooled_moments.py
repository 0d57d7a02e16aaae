"""A tiny algorithm written without privacy in mind, for the privacy-layer tests: it pools every
feature's mean and the matrix of second moments (each site sends its own and its row count, the
aggregator keeps a running sum; no strategy, no Keras), and ``federation`` runs a task of it, or of
another ``Algorithm`` object, on the in-process platform with three sites in threads."""
import threading

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from werkbund.algorithms.arrays import encode_weights
from werkbund.algorithms.data.dataset import Dataset
from werkbund.algorithms.engine.aggregator import RoundAggregator, TaskFailure
from werkbund.algorithms.engine.participant import RoundParticipant, TaskEnded
from werkbund.algorithms.registry import Algorithm
from werkbund.client.api import register
from werkbund.client.transports.inproc import InProcPlatform

SITES = {"bob": 40, "carol": 25, "dave": 60}  # training rows per site
FEATURES = 3


class PooledMomentsAggregator(RoundAggregator):
    """Every feature's pooled mean and second-moment matrix: the sample-weighted mean of the sites' own."""

    weighted_mean_update = True

    def setup(self):
        self.weights = [np.zeros(FEATURES), np.zeros((FEATURES, FEATURES), np.float32)]
        self.seen = []  # (round, sender, n_samples) of every update accept_update got
        self.channel.broadcast("setup", b"", round=-1)

    def global_weights(self):
        return self.weights

    def begin_round(self, number):
        self.sums, self.total = [np.zeros(w.shape) for w in self.weights], 0

    def accept_update(self, update):
        self.seen.append((update.get("round"), update.sender, update.n_samples))
        for acc, w in zip(self.sums, update.weights):
            acc += update.n_samples * w.astype(np.float64)
        self.total += update.n_samples

    def aggregate(self, number):
        self.weights = [(acc / self.total).astype(w.dtype) for acc, w in zip(self.sums, self.weights)]

    def final_model(self):
        return encode_weights(self.weights), {"algorithm": "pooled_moments"}


class PooledMomentsParticipant(RoundParticipant):
    def configure(self, message):
        self.x = np.asarray(self.train_data.x, dtype=np.float64)

    def evaluate_global(self, message):
        return {}

    def train(self, message):
        assert [w.shape for w in self.global_weights(message)] == [(FEATURES,), (FEATURES, FEATURES)]
        return [self.x.mean(axis=0), (self.x.T @ self.x / len(self.x)).astype(np.float32)], {"n_samples": len(self.x)}

    def keep_final(self, message):
        return {"eval": {}, "weights": [np.array(w) for w in self.global_weights(message)]}


POOLED_MOMENTS = Algorithm(name="pooled_moments", aggregator=PooledMomentsAggregator,
                           participant=PooledMomentsParticipant, description="pooled feature moments (a test's)")


def site_data(i: int, rows: int) -> Dataset:
    rng = np.random.default_rng(i)
    x = rng.normal(loc=i - 1.0, scale=1.0 + 0.5 * i, size=(rows, FEATURES)).astype(np.float32)
    return Dataset(x, np.zeros(rows, dtype=np.int64), [f"f{j}" for j in range(FEATURES)], "none")


def federation(pom: int, algorithm=POOLED_MOMENTS, rounds: int = 2, **options):
    """Run a task of ``algorithm`` on the in-process platform; returns (aggregator, outcome, training rows).

    The platform hosts the task without the algorithm installed (it checks the generic fields only),
    and the algorithm's classes run from the object passed here."""
    platform = InProcPlatform()
    alice = register("alice", "alice-password", "acme", platform="inproc", inproc=platform,
                     identity=Ed25519PrivateKey.generate())
    alice.transport.call("create_task", task="t", definition={
        "algorithm": algorithm.name, "quorum": len(SITES), "rounds": rounds, "round_timeout": 30, "pom": pom,
        **options})
    outcome, rows, threads = {}, [], []
    for i, (name, n) in enumerate(SITES.items()):
        user = register(name, f"{name}-password", name, platform="inproc", inproc=platform,
                        identity=Ed25519PrivateKey.generate())
        data = site_data(i, n)
        user.transport.call("join_task", task="t", schema=data.schema())
        rows.append(np.asarray(data.x, dtype=np.float64))

        def run(handle=user.participant("t"), data=data, name=name):
            try:
                outcome[name] = algorithm.participant(handle, data, data).run()
            except TaskEnded as exc:
                outcome[name] = exc
        threads.append(threading.Thread(target=run, daemon=True))
    for thread in threads:
        thread.start()
    aggregator = algorithm.aggregator(alice.aggregator("t"))
    aggregator.quorum_timeout = 60
    try:
        aggregator.run()
    except TaskFailure as exc:
        aggregator.failure = exc
    for thread in threads:
        thread.join(timeout=60)
    return aggregator, alice, outcome, np.concatenate(rows)
