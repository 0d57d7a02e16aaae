"""Algorithms declare what they can do; the clients ask the declaration, the platform only checks generic fields."""
import re
from pathlib import Path

import pytest

from werkbund.algorithms.engine.aggregator import RoundAggregator
from werkbund.algorithms.engine.participant import RoundParticipant
from werkbund.algorithms.registry import (GENERIC_FIELDS, Algorithm, DefinitionError, Field, available,
                                          get_algorithm)
from werkbund.client.api import register
from werkbund.client.definitions import check_definition, prepare_definition, task_algorithm
from werkbund.client.transports.inproc import InProcPlatform
from werkbund.platform.definition import FIELDS
from werkbund.platform.errors import AlgorithmNotInstalled, InvalidInput

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = ("neural_network", "kmeans", "logistic_regression", "linear_regression", "statistics")


class Summing(RoundAggregator):
    weighted_mean_update = True


def toy(**declared) -> Algorithm:
    return Algorithm("toy", Summing, RoundParticipant, "a toy", **declared)


def test_the_generic_fields_are_the_platforms():
    assert GENERIC_FIELDS == set(FIELDS)


def test_every_built_in_algorithm_declares_itself_and_validates_its_defaults():
    assert set(BUILT_IN) <= set(available())
    for name in BUILT_IN:
        algorithm = get_algorithm(name)
        assert algorithm.distribution == "werkbund" and algorithm.version
        assert algorithm.validate({})  # its defaults pass its own check
    assert get_algorithm("kmeans").validate({})["clusters"] == 3
    assert get_algorithm("neural_network").dp and get_algorithm("neural_network").privacy_modes == {1, 2, 3}
    assert get_algorithm("statistics").model_suffix == ".json"
    assert [f.name for f in get_algorithm("statistics").participant_options] == ["hold_back"]


def test_a_declaration_validates_fields_types_ranges_and_modes():
    algorithm = toy(fields=(Field("alpha", float, 0.5, "a fraction", minimum=0, maximum=1),
                            Field("mode", str, "fast", choices=("fast", "exact")),
                            Field("rate", float, None, exclusive_minimum=0)),
                    privacy_modes=frozenset({1, 2}), checks=(_no_exact_under_pom_2,))
    assert algorithm.validate({"quorum": 3}) == {"quorum": 3, "alpha": 0.5, "mode": "fast"}
    assert algorithm.validate({"alpha": 1})["alpha"] == 1  # an int is a number
    cases = [({"alpha": 1.5}, "'alpha' must be a number in [0, 1], not 1.5 (a fraction)"),
             ({"alpha": True}, "'alpha' must be a number"),
             ({"alpha": float("nan")}, "'alpha' must be a number"),
             ({"mode": "slow"}, "'mode' must be one of 'fast', 'exact', not 'slow'"),
             ({"rate": 0}, "'rate' must be a number above 0"),
             ({"clusters": 3}, "unknown field(s) in task definition: clusters; algorithm 'toy' knows alpha, mode, rate"),
             ({"pom": 3}, "algorithm 'toy' runs in POM 1 and 2 only, not POM 3"),
             ({"dp": {"epsilon": 1, "delta": 1e-5}}, "algorithm 'toy' has no differential privacy"),
             ({"pom": 2, "mode": "exact"}, "algorithm 'toy': exact mode needs every update")]
    for definition, message in cases:
        with pytest.raises(DefinitionError, match=re.escape(message)):
            algorithm.validate(definition)


def _no_exact_under_pom_2(definition):
    if definition.get("pom") == 2 and definition["mode"] == "exact":
        raise ValueError("exact mode needs every update")


def test_a_declaration_that_cannot_keep_its_word_is_refused():
    with pytest.raises(ValueError, match="weighted_mean_update"):
        Algorithm("toy", RoundAggregator, RoundParticipant, privacy_modes=frozenset({1, 2}))
    with pytest.raises(ValueError, match="generic field"):
        toy(fields=(Field("rounds", int, 3),))
    with pytest.raises(ValueError, match="field name"):
        Field("Bad-Name", int)


def test_participant_options_are_checked_by_the_declaration():
    statistics = get_algorithm("statistics")
    assert statistics.validate_options({"hold_back": ["a"]}) == {"hold_back": ["a"]}
    with pytest.raises(DefinitionError, match="takes no participant option colour; its options: hold_back"):
        statistics.validate_options({"colour": 1})
    with pytest.raises(DefinitionError, match="must list column names"):
        statistics.validate_options({"hold_back": [3]})
    with pytest.raises(DefinitionError, match="takes no participant option hold_back; its options: none"):
        get_algorithm("kmeans").validate_options({"hold_back": ["a"]})


def test_participate_reads_options_as_declared():
    from werkbund.client.cli.run import _participant_options

    assert _participant_options({"algorithm": "statistics"}, ("hold_back=a, b",)) == {"hold_back": ["a", "b"]}
    assert _participant_options({"algorithm": "statistics"}, ('hold_back=["a"]',)) == {"hold_back": ["a"]}
    with pytest.raises(InvalidInput, match="NAME one of none"):
        _participant_options({"algorithm": "kmeans"}, ("hold_back=a",))


def test_the_creators_client_checks_and_stamps_the_distribution():
    definition = prepare_definition({"algorithm": "kmeans", "clusters": 4})
    assert definition["clusters"] == 4 and definition["tolerance"] == 1e-4 and definition["rounds"] == 5
    assert definition["algorithm_package"]["distribution"] == "werkbund"
    with pytest.raises(InvalidInput, match="unknown field"):
        check_definition({"aggregator": "neural_network.Aggregator"})
    with pytest.raises(InvalidInput, match="quorum"):  # the generic check runs here too
        check_definition({"quorum": 0})
    with pytest.raises(AlgorithmNotInstalled, match="algorithm 'feature_x' is not installed here"):
        check_definition({"algorithm": "feature_x"})


def test_a_member_is_told_which_distribution_to_install():
    definition = {"algorithm": "feature_x", "algorithm_package": {"distribution": "werkbund-feature-x",
                                                                  "version": "2.0"}}
    with pytest.raises(AlgorithmNotInstalled, match=re.escape(
            "install the distribution 'werkbund-feature-x' (the task was created with version 2.0), "
            "e.g. `pip install werkbund-feature-x`")):
        task_algorithm(definition)
    algorithm, checked = task_algorithm({"algorithm": "kmeans"})
    assert algorithm.name == "kmeans" and checked["clusters"] == 3
    with pytest.raises(AlgorithmNotInstalled, match="comes from 'werkbund', but the task was created with the one "
                                                    "from 'other-kmeans'; install that distribution"):
        task_algorithm({"algorithm": "kmeans", "algorithm_package": {"distribution": "other-kmeans"}})
    assert task_algorithm({"algorithm": "kmeans", "algorithm_package": {"distribution": "Werkbund"}})
    with pytest.raises(InvalidInput, match="does not pass the check of algorithm 'kmeans' installed here"):
        task_algorithm({"algorithm": "kmeans", "clusters": 0})


def test_low_level_create_checks_before_the_platform_is_asked():
    platform = InProcPlatform()
    alice = register("alice", "alice-password", "acme", platform="inproc", inproc=platform)
    with pytest.raises(InvalidInput, match="'clusters' must be an integer in \\[1, 10000\\]"):
        alice.create_task("t", {"algorithm": "kmeans", "clusters": 0})
    with pytest.raises(InvalidInput, match="runs in POM 1 only"):
        alice.create_task("t", {"algorithm": "statistics", "pom": 2})
    assert alice.list_tasks() == []
    info = alice.create_task("t", {"algorithm": "statistics"})
    assert info["definition"]["bins"] == 10


def test_no_list_of_algorithm_names_is_left_in_the_platform_or_the_clients_checks():
    files = [*(ROOT / "platform").glob("*.py"), ROOT / "client" / "cli" / "__init__.py",
             ROOT / "client" / "cli" / "run.py",
             ROOT / "client" / "definitions.py", ROOT / "client" / "python_api" / "task.py",
             ROOT / "client" / "python_api" / "session.py"]
    offenders = [f"{path.name}: {name}" for path in files for name in BUILT_IN[1:]
                 if name in path.read_text()]
    assert offenders == []
    for path in files:
        text = path.read_text()
        assert "entry_points" not in text, path
        assert "inspect.signature" not in text and "model_suffix\")" not in text, path
