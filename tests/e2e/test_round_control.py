"""Round control: early stopping, the checkpoint after every round and `--resume` after the
aggregator was stopped (in one process with scripted participants whose replies are known exactly,
and once with real `werkbund` processes on the local platform, the aggregator killed with SIGKILL).

The per-round deadline and the minimum number of updates are tested in test_engine.py."""
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from support.inproc_federation import CrashAfter

from werkbund.algorithms.arrays import decode_weights, encode_weights
from werkbund.algorithms.data.dataset import Dataset
from werkbund.algorithms.engine.checkpoint import Checkpoint, CheckpointError
from werkbund.algorithms.builtin.neural_network import ALGORITHM
from werkbund.client.api import register
from werkbund.client.transports.inproc import InProcPlatform

STEP = np.float32(0.01)


def site(seed: int, n: int = 60) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 3)).astype(np.float32)
    return Dataset(x, (x[:, 0] + x[:, 1] > 0).astype(np.int64), ["a", "b", "c"], "label")


def scripted(handle, losses: dict, log: list):
    """Sends back the global weights plus STEP, with the test loss ``losses[round]`` for the model it
    received; logs (round, payload) of every round message. Waits through an aggregator restart."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        message = handle.receive(timeout=5)
        if message is None:
            continue
        number = message.get("round")
        if message.kind == "failed":
            return
        if message.kind == "final":
            handle.send("final_eval", round=number, eval={"loss": 0.5, "n_test": 10})
            return
        if message.kind == "round":
            log.append((number, message.payload))
            weights = [w + STEP for w in decode_weights(message.payload)]
            handle.send("update", encode_weights(weights), round=number, n_samples=10,
                        eval={"loss": losses.get(number, 1.0), "n_test": 10})


def federation(tmp_path, definition, losses=None):
    # a database file, not sqlite:// (one connection shared by all threads: concurrent commits clash)
    platform = InProcPlatform(f"sqlite:///{tmp_path / 'platform.db'}")
    alice = register("alice", "alice-password", "acme", platform="inproc", inproc=platform)
    alice.create_task("t", dict(definition, standardize=False))
    logs, threads = {}, []
    for i, name in enumerate(("bob", "carol")):
        user = register(name, f"{name}-password", name, platform="inproc", inproc=platform)
        user.join_task("t", site(i).schema())
        logs[name] = []
        threads.append(threading.Thread(target=scripted, args=(user.participant("t"), losses or {}, logs[name]),
                                        daemon=True))
        threads[-1].start()
    return alice, logs, threads



def test_early_stopping_on_the_participants_combined_loss_completes_the_task_early(tmp_path):
    # the loss of aggregate r arrives with the updates of round r+1: 1.0, 0.9, then 0.95 and 0.92 (no new best)
    losses = {1: 1.0, 2: 0.9, 3: 0.95, 4: 0.92, 5: 0.5}
    alice, logs, threads = federation(tmp_path, {"quorum": 2, "rounds": 10, "round_timeout": 30,
                                       "early_stopping": {"metric": "loss", "patience": 2}}, losses)
    result = ALGORITHM.aggregator(alice.aggregator("t")).run()
    info = alice.task_info("t")
    assert info["status"] == "COMPLETE"
    rounds = alice.rounds("t")
    assert info["reason"] == rounds[3]["metrics"]["stopped"]  # `werkbund info` says why it ended early
    # round 4 (index 3) showed the second miss; the round running then (index 4) is the last one
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4]
    assert [r["metrics"]["loss"] for r in rounds[:4]] == pytest.approx([1.0, 0.9, 0.95, 0.92])
    assert "did not improve on 0.9 (round 2)" in rounds[3]["metrics"]["stopped"]
    assert all("stopped" not in r["metrics"] for r in rounds[:3])
    assert result["stopped_early"] == rounds[3]["metrics"]["stopped"]
    _, meta = alice.get_model("t")
    assert "early stopping" in meta["meta"]["stopped_early"]
    assert [n for n, _ in logs["bob"]] == [0, 1, 2, 3, 4]


def test_early_stopping_on_the_aggregators_holdout_stops_right_after_the_round(tmp_path):
    alice, logs, threads = federation(tmp_path, {"quorum": 2, "rounds": 6, "round_timeout": 30, "early_stopping": {
        "metric": "accuracy", "patience": 2, "min_delta": 2.0, "source": "aggregator"}})
    result = ALGORITHM.aggregator(alice.aggregator("t"), holdout=site(7, 40)).run()
    rounds = alice.rounds("t")
    assert [r["round"] for r in rounds] == [0, 1, 2]  # nothing beats the first accuracy by 2.0
    assert "aggregator's held-out accuracy" in rounds[2]["metrics"]["stopped"]
    assert rounds[2]["metrics"]["aggregator"]["n_test"] == 40
    assert result["task"]["status"] == "COMPLETE"


def test_a_killed_aggregator_resumes_from_its_checkpoint_at_the_next_round(tmp_path):
    definition = {"quorum": 2, "rounds": 4, "round_timeout": 30, "strategy": "fedavgm"}
    alice, logs, threads = federation(tmp_path, definition)
    tmp_path = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        ALGORITHM.aggregator(alice.aggregator("t"), checkpoint_dir=tmp_path, progress=CrashAfter(1)).run()
    assert alice.task_info("t")["status"] == "STARTED"  # not failed: the participants keep waiting
    assert [r["round"] for r in alice.rounds("t")] == [0]  # round 2's record waits for the evaluations
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["round"] == 1 and saved["pending"]["number"] == 1
    _, weights, strategy = Checkpoint(tmp_path, "t", alice.task_info("t")["definition"]).load()
    assert int(strategy["round"][0]) == 2 and any(k.startswith("m.") for k in strategy)
    assert not list(tmp_path.glob("*.pkl")) and sorted(p.suffix for p in tmp_path.iterdir()) == [".json",
                                                                                                 ".safetensors"]

    result = ALGORITHM.aggregator(alice.aggregator("t"), checkpoint_dir=tmp_path).run(resume=True)
    for t in threads:
        t.join(timeout=60)
    assert result["task"]["status"] == "COMPLETE"
    assert [r["round"] for r in alice.rounds("t")] == [0, 1, 2, 3]
    assert [h["round"] for h in result["history"]] == [0, 1, 2, 3]
    for log in logs.values():
        assert [n for n, _ in log] == [0, 1, 2, 3]  # continued, not restarted at 0
    received = {n: decode_weights(p) for n, p in logs["bob"]}
    for got, checkpointed in zip(received[2], weights):  # round 3 went out with the checkpointed weights
        np.testing.assert_array_equal(got, checkpointed)
    # FedAvgM's momentum survived: m = 0.9 m + 0.01 gives steps 0.01, 0.019, 0.0271, 0.03439
    for n, step in ((1, 0.01), (2, 0.019), (3, 0.0271)):
        np.testing.assert_allclose(received[n][0] - received[n - 1][0], step, atol=1e-5)

    with pytest.raises(CheckpointError, match="COMPLETE; only a STARTED task can resume"):
        ALGORITHM.aggregator(alice.aggregator("t"), checkpoint_dir=tmp_path).run(resume=True)


def test_without_a_checkpoint_an_interrupt_fails_the_task_and_resume_is_refused(tmp_path):
    alice, logs, threads = federation(tmp_path, {"quorum": 2, "rounds": 3, "round_timeout": 30})
    with pytest.raises(CheckpointError, match="no checkpoint of task 't'"):
        ALGORITHM.aggregator(alice.aggregator("t"), checkpoint_dir=tmp_path).run(resume=True)
    assert alice.task_info("t")["status"] == "CREATED"
    with pytest.raises(KeyboardInterrupt):
        ALGORITHM.aggregator(alice.aggregator("t"), progress=CrashAfter(0)).run()
    info = alice.task_info("t")
    assert info["status"] == "FAILED" and "interrupted" in info["reason"]
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()  # told, not left waiting


def test_a_checkpoint_of_another_definition_or_with_altered_tensors_is_refused(tmp_path):
    weights = [np.ones((2, 3), np.float32), np.zeros(3, np.float32)]
    Checkpoint(tmp_path, "t", {"rounds": 4}).save(1, weights, {"m.0": np.ones((2, 3))}, {"history": []})
    state, loaded, strategy = Checkpoint(tmp_path, "t", {"rounds": 4}).load()
    assert state["round"] == 1 and [w.shape for w in loaded] == [(2, 3), (3,)]
    np.testing.assert_array_equal(strategy["m.0"], np.ones((2, 3)))
    with pytest.raises(CheckpointError, match="another definition"):
        Checkpoint(tmp_path, "t", {"rounds": 5}).load()
    with pytest.raises(CheckpointError, match="belongs to task 't'"):
        Checkpoint(tmp_path, "u", {"rounds": 4}).load()
    tensors = tmp_path / state["tensors"]
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 1
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        Checkpoint(tmp_path, "t", {"rounds": 4}).load()


@pytest.mark.slow
def test_cli_regression_task_resumes_after_the_aggregator_was_killed(local_platform, tmp_path):
    """`create --kind regression`, `join --kind regression`, aggregator SIGKILLed after round 2 of 4,
    `aggregate --resume`: the task completes with rounds 1..4 and RMSE/MAE per participant."""
    from conftest import Cli

    cli = Cli(local_platform, tmp_path)
    for user, org in (("alice", "acme"), ("bob", "beta"), ("carol", "gamma")):
        assert cli.run(user, "register", "--org", org).returncode == 0
    (tmp_path / "task.json").write_text(json.dumps({"quorum": 2, "rounds": 4, "epochs": 2, "learning_rate": 0.02,
                                                    "round_timeout": 60}))
    created = cli.run("alice", "create", "--task", "rc", "--definition", str(tmp_path / "task.json"),
                      "--kind", "regression")
    assert created.returncode == 0, created.stderr
    for i, user in enumerate(("bob", "carol")):
        rng = np.random.default_rng(i)
        x = rng.normal(0, 1, (120, 3))
        np.savez(tmp_path / f"{user}.npz", x=x, y=150 + 40 * x[:, 0] - 20 * x[:, 1] + rng.normal(0, 3, 120))
        wrong = cli.run(user, "join", "--task", "rc", "--data", str(tmp_path / f"{user}.npz"))
        assert wrong.returncode == 1 and "is a regression task" in wrong.stderr
        joined = cli.run(user, "join", "--task", "rc", "--data", str(tmp_path / f"{user}.npz"), "--kind", "regression")
        assert joined.returncode == 0, joined.stderr
    checkpoints = tmp_path / "ckpt"
    args = ("aggregate", "--task", "rc", "--checkpoint-dir", str(checkpoints), "--results", str(tmp_path / "res"))
    first = cli.start("alice", *args, log=tmp_path / "aggregate-1.log")
    workers = [cli.start(u, "participate", "--task", "rc", log=tmp_path / f"{u}.log") for u in ("bob", "carol")]
    deadline = time.monotonic() + 120
    state = {}
    while time.monotonic() < deadline and state.get("round", -1) < 1:
        time.sleep(0.2)
        try:
            state = json.loads((checkpoints / "checkpoint.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    assert state.get("round") == 1, (tmp_path / "aggregate-1.log").read_text()
    os.kill(first.pid, signal.SIGKILL)  # after round 2 of 4 was checkpointed
    first.wait(timeout=30)
    info = json.loads(cli.run("alice", "info", "--task", "rc", "--json").stdout)
    assert info["status"] == "STARTED"

    second = cli.start("alice", *args, "--resume", log=tmp_path / "aggregate-2.log")
    for proc in (second, *workers):
        proc.wait(timeout=120)
    log = (tmp_path / "aggregate-2.log").read_text()
    assert second.returncode == 0, log
    assert all(w.returncode == 0 for w in workers)
    assert "resumed from the checkpoint of round" in log and "task rc COMPLETE" in log
    info = json.loads(cli.run("alice", "info", "--task", "rc", "--json").stdout)
    assert info["status"] == "COMPLETE"
    assert [r["round"] for r in info["rounds"]] == [0, 1, 2, 3]
    assert all(sorted(r["reported"]) == ["bob", "carol"] for r in info["rounds"])
    last = info["rounds"][-1]["metrics"]
    assert "accuracy" not in last and last["n_test"] == 48
    assert last["rmse"] < 0.5 * 44  # the target's spread is about 44: far better than its mean
    text = cli.run("alice", "info", "--task", "rc").stdout
    assert "round 4: 2 updates, all participants: rmse" in text and "bob: rmse" in text
    assert (tmp_path / "res" / "rmse.png").exists() and not (tmp_path / "res" / "accuracy.png").exists()


def test_a_criterion_met_only_in_the_last_round_is_not_an_early_stop(tmp_path):
    alice, logs, threads = federation(tmp_path, {"quorum": 2, "rounds": 3, "round_timeout": 30,
                                                 "early_stopping": {"metric": "loss", "patience": 1}},
                                      {1: 1.0, 2: 1.5})  # round 2 is worse, but round 3 is the last anyway
    result = ALGORITHM.aggregator(alice.aggregator("t")).run()
    assert [r["round"] for r in alice.rounds("t")] == [0, 1, 2]
    assert result["stopped_early"] is None
    assert all("stopped" not in r["metrics"] for r in alice.rounds("t"))
