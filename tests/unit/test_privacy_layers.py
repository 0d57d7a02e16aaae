"""The privacy layers apply to any algorithm whose update is a weighted sum of arrays, not only to the built-in ones.

A tiny algorithm (tests/support/pooled_moments.py), used through an ``Algorithm`` object passed directly (no entry
point), pools every feature's mean and the matrix of second moments: each site sends its own and
its row count, the aggregator keeps its own running sum (no strategy, no Keras). It runs under POM
1, 2 and 3 on the in-process platform and must give the pooled figures each time; under POM 2 and 3
the aggregator's ``accept_update`` sees a single update per round, the sample-weighted mean, and
never a site's own figures. Plus the stack the engine builds from a definition, layer by layer.
"""
from types import SimpleNamespace

import numpy as np
import pytest

from support.pooled_moments import SITES, PooledMomentsAggregator, PooledMomentsParticipant, federation, site_data

from werkbund.algorithms.engine.aggregation_stack import build_aggregation, build_encoding
from werkbund.algorithms.engine.participant import TaskEnded
from werkbund.algorithms.engine.update_aggregation import AlgorithmUpdates, PlainEncoding
from werkbund.algorithms.privacy.dp.accounting_aggregation import DPAccounting
from werkbund.algorithms.privacy.ckks.aggregation import HomomorphicAggregation, HomomorphicParticipant
from werkbund.algorithms.privacy.secagg.aggregation import SecureAggregation, SecureAggregationParticipant
from werkbund.algorithms.registry import Algorithm


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
