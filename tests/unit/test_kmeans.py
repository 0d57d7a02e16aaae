"""Federated k-means across three sites whose data are mixed differently (in one process)."""
import json

import numpy as np
import pytest
from safetensors.numpy import load as st_load

from support.inproc_federation import run_federation
from werkbund.algorithms.data.dataset import Dataset
from werkbund.algorithms.builtin.kmeans import weighted_kmeans

CENTERS = np.array([[0.0, 0.0, 0.0], [6.0, 1.0, -2.0], [-3.0, 7.0, 4.0], [5.0, -6.0, 8.0]])
FEATURES = ["temperature", "vibration", "current"]


def site(rng, shares, rows=240):
    """Rows around the true centres; ``shares`` says how many come from each centre (non-IID sites)."""
    counts = rng.multinomial(rows, shares)
    x = np.concatenate([c + rng.normal(0, 0.4, (n, 3)) for c, n in zip(CENTERS, counts)])
    # the scale of the features differs, as real sensors do; standardization must cope
    x = x * np.array([1.0, 10.0, 0.1]) + np.array([50.0, 0.0, 3.0])
    y = np.zeros(len(x), dtype=np.int64)
    return Dataset(x.astype(np.float32), y, FEATURES, "none")


def true_centres():
    return CENTERS * np.array([1.0, 10.0, 0.1]) + np.array([50.0, 0.0, 3.0])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    rng = np.random.default_rng(3)
    sites = {"bob": site(rng, [0.7, 0.3, 0.0, 0.0]), "carol": site(rng, [0.0, 0.2, 0.8, 0.0]),
             "dave": site(rng, [0.1, 0.0, 0.3, 0.6])}
    holdout = site(rng, [0.25, 0.25, 0.25, 0.25], rows=80)
    out = tmp_path_factory.mktemp("kmeans")
    definition = {"algorithm": "kmeans", "clusters": 4, "rounds": 10, "round_timeout": 30, "seed": 1}
    creator, aggregator, outcome, results = run_federation(definition, sites, holdout=holdout, out_dir=out)
    return creator, aggregator, outcome, results, out, sites


def match(found, expected):
    """For each expected centre, the distance to the nearest found one (in original units, per axis scale)."""
    scale = np.array([1.0, 10.0, 0.1])
    return np.array([np.min(np.abs((found - e) / scale).max(axis=1)) for e in expected])


def test_centroids_converge_to_the_true_centres(finished):
    creator, aggregator, outcome, results, out, sites = finished
    assert outcome["task"]["status"] == "COMPLETE"
    data, meta = creator.get_model("t")
    model = st_load(data)
    centroids = model["centroids"]
    assert centroids.shape == (4, 3)
    # every true centre has a centroid within 0.15 (the noise is 0.4 per axis, ~200 rows per centre)
    assert match(centroids, true_centres()).max() < 0.15
    # the scaler carried by the model is the pooled one
    pooled = np.concatenate([s.split(0.2, 0)[0].x for s in sites.values()]).astype(np.float64)
    np.testing.assert_allclose(model["mean"], pooled.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(model["scale"], pooled.std(axis=0), rtol=1e-9)
    np.testing.assert_allclose(model["centroids_standardized"] * model["scale"] + model["mean"], centroids)


def test_inertia_is_recorded_per_round_and_falls_to_the_noise_level(finished):
    creator, aggregator, outcome, results, out, sites = finished
    meta = creator.get_model("t")[1]["meta"]
    inertia = meta["inertia"]
    assert meta["converged_round"] is not None and meta["converged_round"] < 10
    assert len(inertia) == meta["converged_round"]  # round 0 seeds, each later round records one value
    assert all(b <= a + 1e-9 for a, b in zip(inertia, inertia[1:]))  # Lloyd never increases the inertia
    rows = sum(len(s.split(0.2, 0)[0]) for s in sites.values())
    # at the truth, each standardized row is off by noise only; within 20 % of that bound
    truth_per_row = ((0.4 * np.array([1.0, 10.0, 0.1])) ** 2 / model_scale(creator) ** 2).sum()
    assert inertia[-1] / rows < 1.2 * truth_per_row
    recorded = [r["metrics"]["aggregator"]["inertia"] for r in creator.rounds("t")[1:]]
    assert recorded == pytest.approx(inertia)


def model_scale(creator):
    return st_load(creator.get_model("t")[0])["scale"]


def test_participants_get_the_model_and_a_scatter_plot(finished):
    creator, aggregator, outcome, results, out, sites = finished
    for name in ("bob", "carol", "dave"):
        result = results[name]
        assert not isinstance(result, Exception), result
        assert match(np.array(result["centroids"]), true_centres()).max() < 0.15
        local = json.loads((out / f"{name}.model.json").read_text())
        assert sum(local["local_sizes"]) == len(sites[name])
        assert (out / f"{name}.model.png").stat().st_size > 5000
        assert result["eval"]["n_test"] == 48
    plots = aggregator.write_results(out)
    assert [p.endswith("clusters.png") for p in plots] == [True]


def test_weighted_kmeans_handles_fewer_points_than_clusters():
    rng = np.random.default_rng(0)
    centroids, sizes = weighted_kmeans(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([3.0, 1.0]), 3, rng)
    assert centroids.shape == (3, 2) and sizes.sum() == 4.0


def test_an_empty_cluster_takes_half_of_the_widest_one():
    from werkbund.algorithms.builtin.kmeans import cluster_sums, split_widest

    rng = np.random.default_rng(0)
    wide = np.column_stack([rng.normal(0, 3.0, 400), rng.normal(0, 0.1, 400)])   # spread along x
    narrow = np.array([10.0, 10.0]) + rng.normal(0, 0.1, (100, 2))
    centroids = np.array([[0.0, 0.0], [10.0, 10.0], [50.0, 50.0]])               # the third gets no rows
    counts, sums, squares = cluster_sums(np.concatenate([wide, narrow]), centroids)
    assert counts.tolist() == [400, 100, 0]
    moved = split_widest(sums / np.maximum(counts, 1)[:, None], counts, sums, squares, [2])
    assert abs(moved[2, 0] - moved[0, 0]) == pytest.approx(wide[:, 0].std(), rel=0.05)  # split along x
    assert moved[2, 1] == pytest.approx(moved[0, 1])
    np.testing.assert_allclose(moved[1], narrow.mean(axis=0))                           # untouched


def test_updates_that_do_not_add_up_are_refused_and_the_state_survives_a_checkpoint(finished):
    from werkbund.algorithms.arrays import UpdateRejected, encode_weights
    from werkbund.algorithms.builtin.kmeans import KMeansAggregator
    from werkbund.client.messages import TaskMessage

    creator, aggregator, outcome, results, out, sites = finished
    aggregator.begin_round(99)
    counts, sums = np.array([10.0, 0, 0, 0]), np.zeros((4, 3))
    lying = TaskMessage("update", {"n_samples": 12}, encode_weights([counts, sums, sums]), sender="mallory")
    with pytest.raises(UpdateRejected, match="add up to 10"):
        aggregator.accept_update(lying)
    negative = TaskMessage("update", {"n_samples": 10}, encode_weights([counts, sums, sums - 1]), sender="mallory")
    with pytest.raises(UpdateRejected, match="negative"):
        aggregator.accept_update(negative)
    weights, strategy_state, facts = aggregator.checkpoint_state()
    restored = KMeansAggregator(creator.aggregator("t"))
    restored.restore_state(weights, strategy_state, json.loads(json.dumps(facts)))
    assert restored.final_model()[0] == aggregator.final_model()[0]


def test_incomplete_rows_and_secure_aggregation_are_refused_with_the_reason():
    from types import SimpleNamespace

    from werkbund.algorithms.builtin.kmeans import KMeansParticipant
    from werkbund.client.definitions import check_definition
    from werkbund.platform.errors import InvalidInput

    x = np.array([[1.0, 2.0], [np.nan, 1.0], [3.0, 4.0]], dtype=np.float32)
    data = Dataset(x, np.zeros(3, dtype=np.int64), ["a", "b"], "none")
    participant = KMeansParticipant(SimpleNamespace(definition={}, task="t"), data, data)
    with pytest.raises(ValueError, match="1 of 3 local rows hold missing"):
        participant.moments()
    # the creator's client asks the declaration before anything is sent
    with pytest.raises(InvalidInput, match="runs in POM 1 only"):
        check_definition({"algorithm": "kmeans", "quorum": 2, "pom": 2})
    with pytest.raises(InvalidInput, match="clusters"):
        check_definition({"algorithm": "kmeans", "clusters": 0})
