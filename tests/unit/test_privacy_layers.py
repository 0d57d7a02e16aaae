"""The privacy layers apply to any algorithm whose update is a weighted sum of arrays, not only to the built-in ones.

A tiny algorithm defined here, and used through an ``Algorithm`` object passed directly (no entry
point), pools every feature's mean and the matrix of second moments: each site sends its own and
its row count, the aggregator keeps its own running sum (no strategy, no Keras). It runs under POM
1, 2 and 3 on the in-process platform and must give the pooled figures each time; under POM 2 and 3
the aggregator's ``accept_update`` sees a single update per round, the sample-weighted mean, and
never a site's own figures. Plus the stack the engine builds from a definition, layer by layer.
"""
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from werkbund.algorithms.arrays import encode_weights
from werkbund.algorithms.data.dataset import Dataset
from werkbund.algorithms.engine.aggregation_stack import build_aggregation, build_encoding
from werkbund.algorithms.engine.aggregator import RoundAggregator, TaskFailure
from werkbund.algorithms.engine.participant import RoundParticipant, TaskEnded
from werkbund.algorithms.engine.update_aggregation import AlgorithmUpdates, PlainEncoding
from werkbund.algorithms.privacy.dp.accounting_aggregation import DPAccounting
from werkbund.algorithms.privacy.ckks.aggregation import HomomorphicAggregation, HomomorphicParticipant
from werkbund.algorithms.privacy.secagg.aggregation import SecureAggregation, SecureAggregationParticipant
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


@pytest.mark.parametrize("pom, layer, tolerance", [(1, None, 1e-12), (2, SecureAggregation, 1e-6),
                                                   (3, HomomorphicAggregation, 1e-5)])
def test_an_algorithm_written_without_privacy_in_mind_gets_the_pooled_result_under_every_mode(pom, layer, tolerance):
    aggregator, alice, outcome, pooled = federation(pom)
    assert alice.task_info("t")["status"] == "COMPLETE", getattr(aggregator, "failure", None)
    mean, second = aggregator.weights
    assert np.max(np.abs(mean - pooled.mean(axis=0))) < tolerance
    assert np.max(np.abs(second - pooled.T @ pooled / len(pooled))) < max(tolerance, 1e-5)  # float32
    assert second.dtype == np.float32
    for name in SITES:  # the final model reached every participant
        np.testing.assert_allclose(outcome[name]["weights"][0], mean)
    total = sum(SITES.values())
    if layer is None:
        assert aggregator.pom is None
        assert sorted(s for r, s, _ in aggregator.seen if r == 1) == sorted(SITES)
    else:
        assert isinstance(aggregator.pom, layer)
        # one update per round, the mean of all three, with their total sample count; no site's own
        everyone = "+".join(sorted(SITES))
        assert aggregator.seen == [(0, everyone, total), (1, everyone, total)]
        records = alice.rounds("t")
        assert [r["metrics"]["pom"]["mode"] for r in records] == [pom, pom]
        if pom == 2:  # the second round took its keys with the first round's messages
            assert [r["metrics"]["pom"]["keys_with_previous_round"] for r in records] == [False, True]


def test_pom2_says_how_many_changes_it_clipped_to_the_participant_and_in_the_round_record(caplog):
    # clip_range 0.5: the sites' means (around -1, 0, 1) and second moments change by more in round 0
    caplog.set_level("WARNING", logger="werkbund.pom")
    aggregator, alice, outcome, pooled = federation(2, rounds=1, pom_options={"clip_range": 0.5})
    assert alice.task_info("t")["status"] == "COMPLETE", getattr(aggregator, "failure", None)
    expected = {}
    for i, (name, n) in enumerate(SITES.items()):
        x = np.asarray(site_data(i, n).x, dtype=np.float64)
        change = np.concatenate([x.mean(axis=0), (x.T @ x / len(x)).astype(np.float32).ravel()])
        if np.count_nonzero(np.abs(change) > 0.5):
            expected[name] = int(np.count_nonzero(np.abs(change) > 0.5))
    assert expected  # the data do exceed the range
    assert alice.rounds("t")[0]["metrics"]["pom"]["clipped"] == expected
    warned = [r.getMessage() for r in caplog.records if "exceed pom_options.clip_range 0.5" in r.getMessage()]
    assert sorted(m.split(" of ")[0].split(": ")[1] for m in warned) == sorted(str(c) for c in expected.values())
    # and the aggregate is the mean of the clipped changes, not the pooled figures
    assert np.max(np.abs(aggregator.weights[0] - pooled.mean(axis=0))) > 0.1


class NotAWeightedSum(PooledMomentsAggregator):
    weighted_mean_update = False


def test_a_privacy_mode_refuses_an_algorithm_that_does_not_declare_a_weighted_sum_update():
    algorithm = Algorithm(name="pooled_moments", aggregator=NotAWeightedSum, participant=PooledMomentsParticipant)
    aggregator, alice, outcome, _ = federation(2, algorithm, rounds=1)
    assert "needs an algorithm whose update is a weighted sum of arrays" in str(aggregator.failure)
    assert alice.task_info("t")["status"] == "FAILED"
    assert all(isinstance(outcome[name], TaskEnded) for name in SITES)


def _stub(definition):
    return SimpleNamespace(definition=definition, channel=SimpleNamespace(task="t"), active=[])


@pytest.mark.parametrize("definition, layers, encoding", [
    ({}, [AlgorithmUpdates], PlainEncoding),
    ({"pom": 2}, [SecureAggregation, AlgorithmUpdates], SecureAggregationParticipant),
    ({"pom": 3, "dp": {"epsilon": 1.0, "delta": 1e-5}}, [DPAccounting, HomomorphicAggregation, AlgorithmUpdates],
     HomomorphicParticipant),
    ({"pom": 1, "dp": {"epsilon": 1.0, "delta": 1e-5}}, [DPAccounting, AlgorithmUpdates], PlainEncoding),
])
def test_the_stack_is_built_from_the_definition_outermost_first(definition, layers, encoding):
    stack, built = build_aggregation(_stub(definition)), []
    while stack is not None:
        built.append(type(stack))
        stack = getattr(stack, "inner", None)
    assert built == layers
    assert type(build_encoding(_stub(definition))) is encoding
