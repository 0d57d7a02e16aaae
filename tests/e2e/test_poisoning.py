"""One hostile participant of five against the robust strategies, end to end (issue: trust).

A real federation of five sites over the platform core (logistic regression on scikit-learn's digits):
one site sends updates scaled by 50, sign-flipped, or trained on flipped labels. With a robust
strategy from the task definition the model stays within 2 points of the clean run's accuracy; plain
FedAvg does not survive the sign flip. The figures are printed (`pytest -s`)."""
import pytest

from support.inproc_federation import run_federation
from werkbund.algorithms.data.loading import load_dataset

pytestmark = pytest.mark.slow  # 13 federations of five sites: about 3 minutes

ROUNDS = 6
ROBUST = {"median": {"name": "median"}, "trimmed_mean": {"name": "trimmed_mean", "beta": 0.2},
          "krum": {"name": "multi_krum", "f": 1}}
ATTACKS = {"scaled x50": lambda w: [50.0 * x for x in w], "sign-flipped": lambda w: [-3.0 * x for x in w],
           "labels flipped": None}


def _sites(attack: str):
    digits = load_dataset("builtin:digits")
    holdout, rest = digits.split(0.5, 1)  # the creator's own held-out half
    sites = {f"site{i}": rest.shard(i, 5, seed=3) for i in range(1, 6)}
    if attack == "labels flipped":
        bad = sites["site5"]
        bad.y = ((bad.y.astype(int) + 1) % 10).astype(bad.y.dtype)
    return sites, holdout


def _accuracy(strategy, attack: str | None) -> float:
    sites, holdout = _sites(attack or "")
    definition = {"algorithm": "logistic_regression", "rounds": ROUNDS, "epochs": 2, "round_timeout": 60,
                  "strategy": strategy}
    attacks = {"site5": ATTACKS[attack]} if attack and ATTACKS[attack] else None
    _, aggregator, outcome, results = run_federation(definition, sites, holdout=holdout, attacks=attacks)
    assert outcome["task"]["status"] == "COMPLETE", outcome
    return float(aggregator.evaluate()["accuracy"])


@pytest.fixture(scope="module")
def clean():
    return {name: _accuracy(spec, None) for name, spec in ROBUST.items()}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("strategy", sorted(ROBUST))
def test_a_robust_strategy_keeps_the_model_within_two_points(clean, strategy, attack):
    attacked = _accuracy(ROBUST[strategy], attack)
    print(f"\n{strategy:>12} vs {attack:<15}: clean {clean[strategy]:.3f}, attacked {attacked:.3f}")
    assert clean[strategy] > 0.8
    assert attacked >= clean[strategy] - 0.02


def test_plain_fedavg_is_sunk_by_one_sign_flipping_site():
    clean, attacked = _accuracy("fedavg", None), _accuracy("fedavg", "sign-flipped")
    print(f"\n      fedavg vs sign-flipped   : clean {clean:.3f}, attacked {attacked:.3f}")
    assert attacked < clean - 0.1
