"""Differential privacy: DP-SGD (clipping, noise), the PLD accounting, the budget, and a DP task end to end.

Epsilons are checked against Google's dp-accounting called here directly, with the events composed
round by round (the code under test groups them), so a wrong grouping, q, sigma or step count shows.
"""
import csv
import json
import re
import threading

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from sklearn.datasets import make_classification

from werkbund.algorithms import keras_models as km
from werkbund.algorithms.data.dataset import Dataset
from werkbund.algorithms.engine.aggregator import TaskFailure
from werkbund.algorithms.engine.participant import TaskEnded
from werkbund.algorithms.builtin.neural_network import ALGORITHM
from werkbund.algorithms.privacy.dp.accounting_pld import (StepEvents, calibrate_noise, epsilon_spent,
                                                           planned_epsilon, round_events)
from werkbund.algorithms.privacy.dp.sgd import DPSGDTrainer, clip_per_example
from werkbund.client.api import register
from werkbund.client.transports.inproc import InProcPlatform
from werkbund.client.definitions import check_definition
from werkbund.platform.errors import InvalidInput

DELTA = 1e-5


def reference_epsilon(rounds: list[dict], delta: float,
                      relation=dp_accounting.NeighboringRelation.REPLACE_ONE) -> float:
    """Epsilon of one participant's per-round (q, sigma, steps), straight from dp-accounting; replace-one
    neighbours (the training-set sizes are public), unless ``relation`` says otherwise."""
    accountant = pld_privacy_accountant.PLDAccountant(relation)
    for r in rounds:
        accountant.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(r["q"], dp_accounting.GaussianDpEvent(r["noise_multiplier"])),
            r["steps"]))
    return accountant.get_epsilon(delta)


def tiny_data(n=300, features=6, seed=0) -> Dataset:
    x, y = make_classification(n_samples=n, n_features=features, n_informative=4, random_state=seed)
    return Dataset(x.astype(np.float32), y, [f"f{i}" for i in range(features)], "label")


def sgd_model(n_features=6, learning_rate=1.0):
    km.keras.utils.set_random_seed(0)
    model = km.default_network(n_features, 2, hidden=(128,))
    model.compile(optimizer=km.keras.optimizers.SGD(learning_rate=learning_rate),
                  loss="sparse_categorical_crossentropy")
    return model


# ----------------------------------------------------------------- definition
@pytest.mark.parametrize("dp, message", [
    ({"delta": 1e-5}, "needs a target epsilon"),
    ({"epsilon": 1.0}, "needs delta"),
    ({"epsilon": 0, "delta": 1e-5}, "epsilon must be"),
    ({"epsilon": 1.0, "delta": 1.5}, "delta must be between 0 and 1"),
    ({"epsilon": 1.0, "delta": 1e-5, "l2_norm_clip": -1}, "l2_norm_clip must be"),
    ({"noise_multiplier": 1.0, "delta": 1e-5, "sigma": 2}, "unknown key(s) sigma"),
])
def test_bad_dp_settings_are_refused_with_the_reason(dp, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        check_definition({"dp": dp})  # the creator's client, with the declaration of neural_network


def test_good_dp_settings_are_kept():
    dp = {"epsilon": 3, "delta": 1e-5, "l2_norm_clip": 0.5}
    assert check_definition({"dp": dp})[0]["dp"] == dp


def test_dp_is_refused_for_an_algorithm_without_it():
    with pytest.raises(InvalidInput, match="has no differential privacy"):
        check_definition({"algorithm": "kmeans", "dp": {"epsilon": 1, "delta": 1e-5}})


# ----------------------------------------------------------------- accounting
def test_epsilon_matches_dp_accounting_for_the_same_events():
    rounds = [{"q": 0.05, "noise_multiplier": 2.0, "steps": 40}] * 3 + [{"q": 0.1, "noise_multiplier": 3.0, "steps": 20}]
    ours = epsilon_spent([StepEvents(**r) for r in rounds], DELTA)
    assert ours == pytest.approx(reference_epsilon(rounds, DELTA), rel=1e-6)
    assert ours < epsilon_spent([StepEvents(**r) for r in rounds * 2], DELTA)  # more steps spend more


def test_calibrated_noise_meets_the_target_tightly():
    sizes, batch, epochs, rounds, target = [400, 900], 32, 2, 3, 0.5
    sigma = calibrate_noise(target, DELTA, sizes, batch, epochs, rounds)
    assert planned_epsilon(sigma, sizes, batch, epochs, rounds, DELTA) <= target
    assert planned_epsilon(sigma * 0.97, sizes, batch, epochs, rounds, DELTA) > target  # not much more noise than needed
    # the smaller site samples a larger fraction per step: it is the worst case
    event = round_events(batch, epochs, 400, sigma)
    assert event.q == batch / 400 and event.steps == epochs * 13
    assert reference_epsilon([event.as_header()] * rounds, DELTA) == pytest.approx(
        planned_epsilon(sigma, sizes, batch, epochs, rounds, DELTA), rel=1e-6)


# ----------------------------------------------------------------- DP-SGD step
def test_clipping_bounds_every_example_and_keeps_small_gradients():
    rng = np.random.default_rng(0)
    gradients = [rng.normal(size=(8, 5, 3)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)]
    gradients[0][0] *= 1e-3
    gradients[1][0] *= 1e-3  # example 0 is well inside the bound
    clipped, norms = clip_per_example(gradients, 0.5)
    after = np.sqrt(sum(np.sum(np.square(g.numpy().reshape(8, -1)), axis=1) for g in clipped))
    before = np.sqrt(sum(np.sum(np.square(g.reshape(8, -1)), axis=1) for g in gradients))
    assert np.allclose(norms.numpy(), before, rtol=1e-5)
    assert np.all(after <= 0.5 * (1 + 1e-5))
    assert np.allclose(after[1:], 0.5, rtol=1e-5)  # larger ones are scaled down to the bound, not below
    assert np.allclose(clipped[0].numpy()[0], gradients[0][0]) and np.allclose(clipped[1].numpy()[0], gradients[1][0])


def test_without_noise_a_step_moves_the_weights_at_most_by_the_clip_bound():
    data = tiny_data(n=64)
    model = sgd_model(learning_rate=1.0)
    trainer = DPSGDTrainer(model, l2_norm_clip=0.01, noise_multiplier=0.0, batch_size=64, seed=1)
    gradients, _ = trainer.per_example_gradients(data.x, data.y)
    assert float(clip_per_example(gradients, 1e9)[1].numpy().min()) > 0.01  # the bound really bites
    before = model.get_weights()
    events, _ = trainer.train(data.x, data.y, epochs=1)  # q = 1: one step over all 64 rows
    assert (events.q, events.steps) == (1.0, 1)
    moved = np.sqrt(sum(np.sum(np.square(a - b)) for a, b in zip(model.get_weights(), before)))
    # SGD, learning rate 1: the step is the mean of 64 gradients of norm <= 0.01 each
    assert 0 < moved <= 0.01 * (1 + 1e-4)


def test_noise_is_applied_with_the_calibrated_scale():
    data = tiny_data(n=64)
    weights = {}
    for sigma in (0.0, 2.0):
        model = sgd_model(learning_rate=1.0)
        DPSGDTrainer(model, l2_norm_clip=1.0, noise_multiplier=sigma, batch_size=64, seed=7).train(data.x, data.y, 1)
        weights[sigma] = np.concatenate([w.ravel() for w in model.get_weights()])
    difference = weights[2.0] - weights[0.0]
    # one SGD step of learning rate 1: the difference is the noise, N(0, (sigma * clip / batch)^2) per weight
    assert np.std(difference) == pytest.approx(2.0 * 1.0 / 64, rel=0.1)
    assert abs(np.mean(difference)) < 3 * 2.0 / 64 / np.sqrt(difference.size)


# ------------------------------------------------------------ budget in a task
def federation(definition, sizes=(150, 150), ledger=False):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    platform = InProcPlatform()
    ledger = ledger or definition.get("pom", 1) != 1  # identity keys: signed ledger entries
    keys = {"identity": Ed25519PrivateKey.generate()} if ledger else {}
    alice = register("alice", "alice-password", "acme", platform="inproc", inproc=platform, **keys)
    alice.create_task("dp", definition)
    threads, outcome = [], {}
    for i, n in enumerate(sizes):
        name = f"site{i + 1}"
        keys = {"identity": Ed25519PrivateKey.generate()} if ledger else {}
        user = register(name, f"{name}-password", name, platform="inproc", inproc=platform, **keys)
        data = tiny_data(n=n, seed=i)
        user.join_task("dp", data.schema())
        train, test = data.split(0.2, 0)

        def run(user=user, train=train, test=test, name=name):
            try:
                outcome[name] = ALGORITHM.participant(user.participant("dp"), train, test).run()
            except TaskEnded as exc:
                outcome[name] = exc

        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()
    return alice, threads, outcome


def test_training_stops_when_the_budget_is_spent_and_reports_the_epsilon():
    # 120 training rows, batch 30: q = 0.25, 4 steps a round; the budget fits one round, not two
    one = StepEvents(0.25, 1.0, 4)
    budget = round((epsilon_spent([one], DELTA) + epsilon_spent([one, one], DELTA)) / 2, 3)
    definition = {"quorum": 2, "rounds": 4, "epochs": 1, "batch_size": 30, "learning_rate": 0.01,
                  "round_timeout": 60, "dp": {"noise_multiplier": 1.0, "epsilon": budget, "delta": DELTA}}
    alice, threads, outcome = federation(definition)
    result = ALGORITHM.aggregator(alice.aggregator("dp")).run()
    for t in threads:
        t.join(timeout=60)
    assert result["task"]["status"] == "COMPLETE"
    rounds = alice.rounds("dp")
    assert [r["round"] for r in rounds] == [0]
    record = rounds[0]["metrics"]
    assert "privacy budget spent" in record["stopped"] and "after 1 of 4 rounds" in record["stopped"]
    assert "privacy budget spent" in result["stopped_early"]
    for site in ("site1", "site2"):
        assert record["dp"]["events"][site] == one.as_header()
        assert record["dp"]["participants"][site] == pytest.approx(reference_epsilon([one.as_header()], DELTA), rel=1e-6)
        assert record["train"][site]["loss"] is None  # no noiseless statistic of the private rows is released
    assert record["dp"]["epsilon"] <= budget
    _, meta = alice.get_model("dp")
    assert meta["meta"]["dp"]["epsilon"] == record["dp"]["epsilon"]
    assert meta["meta"]["dp"]["rounds_trained"] == 1
    assert all(isinstance(outcome[s], dict) for s in ("site1", "site2"))


def test_with_dp_no_moments_and_no_participant_metrics_reach_the_aggregator_or_the_ledger():
    definition = {"quorum": 2, "rounds": 2, "epochs": 1, "batch_size": 30, "learning_rate": 0.05,
                  "round_timeout": 60, "dp": {"noise_multiplier": 1.0, "delta": DELTA}}
    alice, threads, outcome = federation(definition, ledger=True)
    handle, received = alice.aggregator("dp"), []
    receive = handle.receive

    def recording(timeout):
        message = receive(timeout)
        if message is not None:
            received.append(message)
        return message

    handle.receive = recording
    holdout = tiny_data(n=60, seed=9)
    result = ALGORITHM.aggregator(handle, holdout=holdout).run()
    for t in threads:
        t.join(timeout=60)
    assert result["task"]["status"] == "COMPLETE"
    kinds = {m.kind for m in received}
    assert kinds == {"dp_plan", "update", "final_eval"}  # no "stats": nothing to standardize with
    assert not any({"count", "mean", "m2"} & set(m.header) for m in received)
    assert all(m.get("eval") == {} for m in received if m.kind in ("update", "final_eval"))
    for r in alice.rounds("dp"):
        metrics = r["metrics"]
        assert all(e == {} for e in metrics["participants"].values()) and "accuracy" not in metrics
        assert "loss" not in metrics
        assert all(t["loss"] is None for t in metrics["train"].values())
        assert 0 <= metrics["aggregator"]["accuracy"] <= 1  # the aggregator's own held-out data still counts
    updates = [e["entry"]["payload"] for e in alice.transport.call("ledger_entries", task="dp", start=0)
               if e["entry"]["type"] == "update_submitted"]
    assert len(updates) == 4
    for payload in updates:
        assert payload["validation"] == {} and payload["train_loss"] is None
        assert payload["dp"]["neighbouring_relation"] == "replace_one" and payload["dp"]["steps"] == 4
    for site in ("site1", "site2"):  # each participant keeps its own figures
        assert outcome[site]["eval"]["n_test"] == 30


def test_a_budget_too_small_for_one_round_fails_the_task_with_the_reason():
    definition = {"quorum": 2, "rounds": 2, "epochs": 1, "batch_size": 30, "round_timeout": 60,
                  "dp": {"noise_multiplier": 1.0, "epsilon": 0.05, "delta": DELTA}}
    alice, threads, outcome = federation(definition)
    with pytest.raises(TaskFailure, match="too small for a single round"):
        ALGORITHM.aggregator(alice.aggregator("dp")).run()
    for t in threads:
        t.join(timeout=60)
    info = alice.task_info("dp")
    assert info["status"] == "FAILED" and "too small for a single round" in info["reason"]
    assert all(isinstance(outcome[s], TaskEnded) for s in ("site1", "site2"))


def test_a_resumed_aggregator_keeps_the_privacy_accounting_of_its_checkpoint():
    from werkbund.algorithms.privacy.dp.budget import AggregatorBudget
    from werkbund.algorithms.privacy.dp.rounds import restore_budget

    definition = {"batch_size": 30, "epochs": 1, "rounds": 6, "dp": {"epsilon": 2.0, "delta": DELTA}}
    budget = AggregatorBudget(definition, {"site1": 150, "site2": 400})
    for number in range(3):  # three rounds' updates, each as planned
        for site in ("site1", "site2"):
            budget.records[site].append(budget.planned(site))
        before = budget.after_round(number, ["site1", "site2"])
    saved = json.loads(json.dumps(budget.state()))  # what the checkpoint file holds
    resumed = restore_budget(definition, saved)
    assert resumed.noise == budget.noise and resumed.spent() == budget.spent()
    assert resumed.spent()["participants"]["site1"] == pytest.approx(
        reference_epsilon([budget.planned("site1").as_header()] * 3, DELTA), rel=1e-6)
    records = []
    for b in (budget, resumed):  # the rest of the task is accounted alike
        for number in range(3, 6):
            for site in ("site1", "site2"):
                b.records[site].append(b.planned(site))
            entry = b.after_round(number, ["site1", "site2"])
        records.append(entry)
    assert records[0] == records[1]
    assert before["dp"]["epsilon"] < records[1]["dp"]["epsilon"] <= 2.0
    with pytest.raises(TaskFailure, match="holds no privacy accounting"):
        restore_budget(definition, None)


@pytest.mark.slow
@pytest.mark.parametrize("pom", [2, 3])
def test_dp_is_accounted_under_secure_aggregation_and_encryption(pom):
    """POM 2 and 3: the aggregator never sees an update, but it still checks and accounts each one's DP header."""
    definition = {"quorum": 3, "rounds": 2, "epochs": 1, "batch_size": 30, "learning_rate": 0.01, "round_timeout": 60,
                  "pom": pom, "dp": {"epsilon": 3.0, "delta": DELTA}}
    alice, threads, outcome = federation(definition, sizes=(150, 150, 200))
    result = ALGORITHM.aggregator(alice.aggregator("dp")).run()
    for t in threads:
        t.join(timeout=60)
    assert result["task"]["status"] == "COMPLETE"
    rounds = alice.rounds("dp")
    for site in ("site1", "site2", "site3"):
        events = [r["metrics"]["dp"]["events"][site] for r in rounds]
        assert rounds[-1]["metrics"]["dp"]["participants"][site] == pytest.approx(
            reference_epsilon(events, DELTA), rel=1e-6)
    assert 0.9 * 3.0 < rounds[-1]["metrics"]["dp"]["epsilon"] <= 3.0


# ----------------------------------------------------- end to end, local platform
@pytest.mark.slow
def test_dp_task_end_to_end_on_the_local_platform(local_platform, tmp_path):
    from conftest import Cli

    cli = Cli(local_platform, tmp_path)
    for user, org in (("alice", "acme"), ("bob", "beta"), ("carol", "gamma")):
        assert cli.run(user, "register", "--org", org).returncode == 0
    definition = tmp_path / "task.json"
    definition.write_text(json.dumps({"quorum": 2, "rounds": 2, "epochs": 1, "batch_size": 25, "learning_rate": 0.01,
                                      "round_timeout": 120, "dp": {"epsilon": 2.0, "delta": DELTA}}))
    assert cli.run("alice", "create", "--task", "dp-1", "--definition", str(definition)).returncode == 0
    aggregator = cli.start("alice", "aggregate", "--task", "dp-1", "--results", str(tmp_path / "results"),
                           log=tmp_path / "aggregate.log")
    participants = []
    for i, user in enumerate(("bob", "carol")):
        data = tiny_data(n=200 + 100 * i, seed=i)
        with open(tmp_path / f"{user}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*data.features, "label"])
            writer.writerows([*(f"{v:.6g}" for v in row), int(label)] for row, label in zip(data.x, data.y))
        joined = cli.run(user, "join", "--task", "dp-1", "--data", str(tmp_path / f"{user}.csv"), "--target", "label")
        assert joined.returncode == 0, joined.stderr
        participants.append(cli.start(user, "participate", "--task", "dp-1", "--out", str(tmp_path / f"{user}.keras"),
                                      log=tmp_path / f"{user}.log"))
    for proc in (aggregator, *participants):
        proc.wait(timeout=400)
    logs = {p: (tmp_path / f"{p}.log").read_text() for p in ("aggregate", "bob", "carol")}
    assert [p.returncode for p in (aggregator, *participants)] == [0, 0, 0], logs
    info = json.loads(cli.run("bob", "info", "--task", "dp-1", "--json").stdout)
    assert info["status"] == "COMPLETE" and [r["round"] for r in info["rounds"]] == [0, 1]
    history = {"bob": [], "carol": []}
    for r in info["rounds"]:
        spent = r["metrics"]["dp"]
        for user in history:
            history[user].append(spent["events"][user])
            assert spent["participants"][user] == pytest.approx(reference_epsilon(history[user], DELTA), rel=1e-6)
        assert spent["epsilon"] == max(spent["participants"].values())
    # bob has fewer rows, so a larger q and a larger noise multiplier for the same target
    assert history["bob"][0]["noise_multiplier"] > history["carol"][0]["noise_multiplier"]
    assert 0.9 * 2.0 < info["rounds"][-1]["metrics"]["dp"]["epsilon"] <= 2.0  # calibrated for the planned 2 rounds
    shown = cli.run("bob", "info", "--task", "dp-1").stdout
    assert "record-level DP-SGD, epsilon 2, delta 1e-05" in shown
    assert "privacy spent: epsilon" in shown


# ------------------------------------------- the epsilon that holds for what is released
def test_reported_epsilon_is_the_replace_one_figure_about_twice_the_add_or_remove_one():
    """The training-set sizes are public (DP plan, update headers, ledger), so the neighbouring datasets
    differ in one replaced record; the same noise under add-or-remove-one would claim about half."""
    from werkbund.algorithms.privacy.dp.budget import AggregatorBudget

    rounds = [{"q": 0.25, "noise_multiplier": 4.0, "steps": 4}] * 3
    ours = epsilon_spent([StepEvents(**r) for r in rounds], DELTA)
    assert ours == pytest.approx(reference_epsilon(rounds, DELTA), rel=1e-6)
    add_or_remove = reference_epsilon(rounds, DELTA, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    assert 1.7 < ours / add_or_remove < 2.3
    definition = {"batch_size": 30, "epochs": 1, "rounds": 3, "dp": {"noise_multiplier": 4.0, "delta": DELTA}}
    budget = AggregatorBudget(definition, {"site1": 120})
    assert budget.setup_header()["neighbouring_relation"] == "replace_one"
    for number in range(3):
        budget.records["site1"].append(budget.planned("site1"))
        entry = budget.after_round(number, ["site1"])["dp"]
    assert entry["neighbouring_relation"] == "replace_one" and entry["epsilon"] == pytest.approx(ours, rel=1e-6)
    assert budget.summary()["neighbouring_relation"] == "replace_one"
    assert "replace one" in budget.describe()


@pytest.mark.parametrize("extra, message", [
    ({"standardize": True}, "federated standardization releases each participant's exact row count"),
    ({"early_stopping": {"metric": "loss"}}, "use \"source\": \"aggregator\""),
    ({"selection": {"max_validation_loss": 1.0}}, "max_validation_loss needs the participants' validation loss"),
])
def test_what_dp_does_not_cover_cannot_be_switched_on(extra, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        check_definition({"dp": {"epsilon": 1.0, "delta": DELTA}, **extra})
    assert check_definition({"dp": {"epsilon": 1.0, "delta": DELTA}, "standardize": False})[0]["standardize"] is False
    assert check_definition({"dp": {"epsilon": 1.0, "delta": DELTA},
                             "early_stopping": {"metric": "loss", "source": "aggregator"}})


# ------------------------------------------------ the participant's own account, kept
class ScriptedChannel:
    """A participant's channel that hands out the given messages and keeps what the participant sends."""

    def __init__(self, definition: dict, state_dir, messages: list):
        self.definition, self.state_dir, self.name, self.task = definition, state_dir, "site1", "dp"
        self.messages, self.sent = list(messages), []

    def receive(self, timeout):
        from werkbund.client.messages import TaskMessage

        if self.messages:
            return self.messages.pop(0)
        return TaskMessage("failed", {"reason": "script over"}, sender="alice")

    def send(self, kind, payload=b"", **header):
        self.sent.append((kind, payload, header))

    def info(self):
        return {"status": "STARTED"}


def scripted_participant(definition, state_dir, script):
    """Run a neural_network participant on 150 rows (120 for training) through ``script``: the kinds it
    receives, ``("setup", n)`` the n-th model; it returns what was sent and the participant."""
    from werkbund.algorithms.arrays import encode_weights
    from werkbund.client.messages import TaskMessage

    models = [km.compile_for("classification", km.default_network(6, 2, hidden=(16,)), 0.05) for _ in range(2)]
    messages = []
    for step in script:
        kind, arg = step
        if kind == "setup":
            messages.append(TaskMessage("setup", {"round": -1, "classes": [0, 1], "task_kind": "classification",
                                                  "dp": None}, models[arg].to_json().encode(), "alice"))
        elif kind in ("round", "final"):
            messages.append(TaskMessage(kind, {"round": arg}, encode_weights(models[0].get_weights()), "alice"))
        else:
            messages.append(TaskMessage(kind, {"round": arg}, b"", "alice"))
    train, test = tiny_data(n=150).split(0.2, 0)
    channel = ScriptedChannel(definition, state_dir, messages)
    participant = ALGORITHM.participant(channel, train, test)
    try:
        participant.run()  # returns after a final message
    except TaskEnded as exc:
        assert "script over" in str(exc)
    # a restarted participant first asks for the set-up again ("resync"; the script answers "resynced")
    return [m for m in channel.sent if m[0] != "resync"], participant, models[0].get_weights()


def test_a_resent_setup_or_a_restart_never_resets_the_participants_budget(tmp_path):
    one = StepEvents(0.25, 1.0, 4)  # 120 training rows, batch 30
    budget = round((epsilon_spent([one], DELTA) + epsilon_spent([one, one], DELTA)) / 2, 3)
    definition = {"batch_size": 30, "epochs": 1, "learning_rate": 0.05, "rounds": 4,
                  "dp": {"noise_multiplier": 1.0, "epsilon": budget, "delta": DELTA}}
    sent, _, _ = scripted_participant(definition, tmp_path, [("setup", 0), ("round", 0), ("setup", 1), ("round", 1)])
    assert [kind for kind, _, _ in sent] == ["update", "error"]
    assert "over the task's budget" in sent[1][2]["reason"] and "refused" in sent[1][2]["reason"]
    account = tmp_path / "dp_account.json"
    assert account.stat().st_mode & 0o777 == 0o600
    kept = json.loads(account.read_text())
    assert kept["events"] == [one.as_header()] and kept["neighbouring_relation"] == "replace_one"
    # the participant restarts (a new object, a new process would be the same) and gets a fresh setup
    sent, _, _ = scripted_participant(definition, tmp_path, [("resynced", -1), ("setup", 1), ("round", 1)])
    assert [kind for kind, _, _ in sent] == ["error"] and "over the task's budget" in sent[0][2]["reason"]
    assert json.loads(account.read_text())["events"] == [one.as_header()]
    # without a state folder the account lives in the participant object: a re-sent setup keeps it too
    sent, _, _ = scripted_participant(definition, None, [("setup", 0), ("round", 0), ("setup", 0), ("round", 1)])
    assert [kind for kind, _, _ in sent] == ["update", "error"]
    account.write_text("{not json")
    sent, _, _ = scripted_participant(definition, tmp_path, [("resynced", -1), ("setup", 0), ("round", 1)])
    assert [kind for kind, _, _ in sent] == ["error", "error"] and "cannot be read" in sent[0][2]["reason"]


def test_after_a_resent_setup_dp_sgd_trains_the_new_model(tmp_path):
    from werkbund.algorithms.arrays import decode_weights

    definition = {"batch_size": 30, "epochs": 1, "learning_rate": 0.5, "rounds": 4,
                  "dp": {"noise_multiplier": 1.0, "delta": DELTA}}
    sent, participant, global_weights = scripted_participant(
        definition, tmp_path, [("setup", 0), ("round", 0), ("setup", 1), ("round", 1)])
    assert [kind for kind, _, _ in sent] == ["update", "update"]
    assert participant.dp_trainer.model is participant.model
    for _, payload, header in sent:  # each update is trained: it moved away from the global weights it got
        update = decode_weights(payload)
        assert any(not np.allclose(u, g) for u, g in zip(update, global_weights))
        assert header["dp"] == {"q": 0.25, "noise_multiplier": 1.0, "steps": 4}
    assert len(json.loads((tmp_path / "dp_account.json").read_text())["events"]) == 2


def test_under_dp_the_participant_sends_no_moments_and_no_test_metrics(tmp_path):
    definition = {"batch_size": 30, "epochs": 1, "learning_rate": 0.05, "rounds": 1,
                  "dp": {"noise_multiplier": 1.0, "delta": DELTA}}
    # even an aggregator that asks for the standardization moments gets none
    sent, participant, _ = scripted_participant(definition, tmp_path, [("stats", -1), ("setup", 0), ("round", 0),
                                                                       ("final", 1)])
    assert sent[0][0] == "error" and "differential privacy" in sent[0][2]["reason"]
    assert not any({"count", "mean", "m2"} & set(header) for _, _, header in sent)
    update = [header for kind, _, header in sent if kind == "update"][0]
    assert update["eval"] == {} and "train_loss" not in update
    assert sent[-1][0] == "final_eval" and sent[-1][2]["eval"] == {}
    assert participant.result["eval"]["n_test"] == 30  # its own figures stay with the participant
