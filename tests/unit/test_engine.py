"""The round engine when participants misbehave or vanish (in one process, real Keras for the honest one)."""
import logging
import threading

import numpy as np
import pytest

from werkbund.algorithms.arrays import decode_weights, encode_weights
from werkbund.algorithms.data.loading import load_dataset
from werkbund.algorithms.engine.aggregator import TaskFailure
from werkbund.algorithms.engine.participant import TaskEnded
from werkbund.algorithms.builtin.neural_network import ALGORITHM
from werkbund.algorithms.moments import feature_moments
from werkbund.client.api import register
from werkbund.client.transports.inproc import InProcPlatform


def scripted(handle, data, plan):
    """A participant that follows ``plan[round]``: 'echo', 'wrong_shape', 'nan', 'vanish', or 'outweigh' and
    'overflow' (zero weights with a sample count of 10**12 or 10**400); ``plan["stats"] == "huge"`` sends
    standardization statistics over 10**18 rows with means of 1e300."""
    while True:
        message = handle.receive(timeout=NO_DEADLINE)  # (longer than any wait for a vanished one)
        if message is None or message.kind == "failed":
            return
        number = message.get("round")
        if message.kind == "final":  # answered, as a participant does, so that no deadline is waited out
            handle.send("final_eval", round=number)
            return
        if message.kind == "stats":
            moments = feature_moments(data.x)
            if plan.get("stats") == "huge":  # what crashed the aggregator: "value out of range for a double"
                moments = {"count": 10**18, "mean": [1e300] * len(moments["mean"]), "m2": moments["m2"]}
            handle.send("stats", round=number, **moments)
        elif message.kind == "round":
            action = plan.get(number, "echo")
            if action == "vanish":
                return
            weights = decode_weights(message.payload)
            if action == "wrong_shape":
                weights[0] = np.zeros((3, 3), np.float32)
            elif action == "nan":
                weights[-1] = np.full_like(weights[-1], np.nan)
            n_samples = 10
            if action in ("outweigh", "overflow"):  # zero weights that claim to stand for everybody's data
                weights = [np.zeros_like(w) for w in weights]
                n_samples = 10**12 if action == "outweigh" else 10**400
            handle.send("update", encode_weights(weights), round=number, n_samples=n_samples)


# A round ends when every participant answered, or at its deadline. Only a participant that vanishes makes a
# test wait the deadline out; the honest participant must answer before it even on a loaded CI machine, where
# its first round (building and tracing its Keras model) took more than 8 s. Where nobody vanishes the
# deadline is never reached, so it can be long.
VANISH_DEADLINE = 30
NO_DEADLINE = 120


def federation(definition, scripts):
    platform = InProcPlatform()
    alice = register("alice", "alice-password", "acme", platform="inproc", inproc=platform)
    alice.create_task("t", definition)
    digits = load_dataset("builtin:digits")
    threads, outcome = [], {}
    bob = register("bob", "bob-password", "beta", platform="inproc", inproc=platform)
    bob_data = digits.shard(1, 2)
    bob.join_task("t", bob_data.schema())
    for name, plan in scripts.items():
        user = register(name, f"{name}-password", name, platform="inproc", inproc=platform)
        data = digits.shard(2, 2)
        user.join_task("t", data.schema())
        threads.append(threading.Thread(target=scripted, args=(user.participant("t"), data, plan), daemon=True))

    def honest():
        train, test = bob_data.split(0.2, 0)
        try:
            outcome["bob"] = ALGORITHM.participant(bob.participant("t"), train, test).run()
        except TaskEnded as exc:
            outcome["bob"] = exc

    threads.append(threading.Thread(target=honest, daemon=True))
    for t in threads:
        t.start()
    return alice, threads, outcome


def test_bad_updates_are_rejected_and_a_vanished_participant_is_left_behind(caplog):
    definition = {"quorum": 3, "rounds": 2, "epochs": 1, "round_timeout": VANISH_DEADLINE, "min_updates": 1}
    alice, threads, outcome = federation(definition, {"mallory": {0: "wrong_shape", 1: "nan"},
                                                      "dave": {0: "echo", 1: "vanish"}})
    caplog.set_level(logging.INFO)
    result = ALGORITHM.aggregator(alice.aggregator("t")).run()
    for t in threads:
        t.join(timeout=60)
    assert result["task"]["status"] == "COMPLETE"
    rounds = alice.rounds("t")
    assert sorted(rounds[0]["reported"]) == ["bob", "dave"]
    assert "shape" in rounds[0]["rejected"]["mallory"]
    assert rounds[1]["reported"] == ["bob"]
    assert "NaN" in rounds[1]["rejected"]["mallory"]
    assert rounds[1]["missing"] == ["dave"]
    assert any("rejected update from mallory" in r.getMessage() and "NaN" in r.getMessage() for r in caplog.records)
    assert outcome["bob"]["eval"]["accuracy"] > 0.3  # the honest site still learned from the good updates


def test_too_few_updates_end_the_task_failed_with_the_reason():
    definition = {"quorum": 2, "rounds": 2, "epochs": 1, "round_timeout": VANISH_DEADLINE, "min_updates": 2}
    alice, threads, outcome = federation(definition, {"dave": {0: "echo", 1: "vanish"}})
    with pytest.raises(TaskFailure, match="only 1 valid update"):
        ALGORITHM.aggregator(alice.aggregator("t")).run()
    for t in threads:
        t.join(timeout=60)
    info = alice.task_info("t")
    assert info["status"] == "FAILED"
    assert "no answer: dave" in info["reason"]
    assert isinstance(outcome["bob"], TaskEnded) and "only 1 valid update" in str(outcome["bob"])


def test_a_robust_strategy_from_the_task_definition_is_used():
    definition = {"quorum": 2, "rounds": 1, "epochs": 1, "round_timeout": NO_DEADLINE,
                  "strategy": {"name": "median"}}
    alice, threads, outcome = federation(definition, {"dave": {0: "echo"}})
    aggregator = ALGORITHM.aggregator(alice.aggregator("t"))
    result = aggregator.run()
    for t in threads:
        t.join(timeout=60)
    assert result["task"]["status"] == "COMPLETE"
    assert aggregator.strategy.name == "median"


def test_a_participant_cannot_outweigh_the_others_by_its_sample_count():
    """Zero weights claiming 10**12 samples dragged accuracy from 0.75 to 0.09 and the task ended COMPLETE;
    10**400 raised OverflowError in FedAvg. Both are refused: a count is bounded by the rows declared at join."""
    definition = {"quorum": 3, "rounds": 2, "epochs": 1, "round_timeout": NO_DEADLINE, "min_updates": 1}
    alice, threads, outcome = federation(definition, {"mallory": {0: "outweigh", 1: "overflow"},
                                                      "dave": {0: "echo", 1: "echo"}})
    result = ALGORITHM.aggregator(alice.aggregator("t")).run()
    for t in threads:
        t.join(timeout=60)
    assert result["task"]["status"] == "COMPLETE"
    rounds = alice.rounds("t")
    assert "declared" in rounds[0]["rejected"]["mallory"] and "1000000000000" in rounds[0]["rejected"]["mallory"]
    assert "not a whole number between 1" in rounds[1]["rejected"]["mallory"]
    assert sorted(rounds[1]["reported"]) == ["bob", "dave"]
    assert outcome["bob"]["eval"]["accuracy"] > 0.3


def test_bad_standardization_statistics_are_refused_and_the_task_goes_on():
    """Moments over 10**18 rows with means of 1e300 crashed the aggregator and FAILED the task for everyone."""
    definition = {"quorum": 3, "rounds": 1, "epochs": 1, "round_timeout": NO_DEADLINE, "min_updates": 1}
    alice, threads, outcome = federation(definition, {"mallory": {"stats": "huge"}, "dave": {0: "echo"}})
    aggregator = ALGORITHM.aggregator(alice.aggregator("t"))
    result = aggregator.run()
    for t in threads:
        t.join(timeout=60)
    assert result["task"]["status"] == "COMPLETE"
    assert "but the participant declared 898 rows" in alice.rounds("t")[0]["metrics"]["setup_rejected"]["mallory"]
    assert np.isfinite(np.concatenate([w.ravel() for w in aggregator.weights])).all()
    assert outcome["bob"]["eval"]["accuracy"] > 0.3


@pytest.mark.parametrize("mean, m2, reason", [([1e300, 0.0], [1.0, 1.0], "out of range"),
                                              ([0.0, 0.0], [1e308, 1.0], "out of range"),
                                              ([0.0, float("nan")], [1.0, 1.0], "NaN"),
                                              ([0.0, 0.0], [-1.0, 1.0], "negative")])
def test_statistics_that_cannot_come_from_real_data_are_refused(mean, m2, reason):
    from werkbund.algorithms.arrays import UpdateRejected
    from werkbund.algorithms.moments import checked_moments

    class Stats(dict):
        sender = "mallory"

    with pytest.raises(UpdateRejected, match=reason):
        checked_moments(Stats(count=10, mean=mean, m2=m2), 2, most=100)
    assert checked_moments(Stats(count=10, mean=[1e6, -3.0], m2=[5.0, 0.0]), 2, most=100)["count"] == 10


def test_a_model_architecture_that_would_run_code_is_refused():
    """A task definition is someone else's: a Keras Lambda layer in its architecture would run their
    Python on every participant's machine, so Keras' safe mode refuses it."""
    import keras

    from werkbund.algorithms import keras_models

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    with pytest.raises(keras_models.ArchitectureRejected, match="Lambda"):
        keras_models.model_from_architecture(model.to_json())
