"""A federated task end to end on the local platform, every party a separate `werkbund` process.

Digits (1797 8x8 images, 10 classes) split between two sites; 3 rounds of 2 epochs. A model that
learned nothing scores about 0.10; the default MLP reaches about 0.90 here, so 0.80 leaves room for
seed and scheduling variation while still proving that federated training worked.
"""
import json

import numpy as np
import pytest

from support.process_federation import wait_all, write_csv

from werkbund.algorithms.data.loading import load_dataset

ACCURACY_FLOOR = 0.80
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_task(cli):
    for user, org in (("alice", "acme"), ("bob", "beta"), ("carol", "gamma"), ("mallory", "evil")):
        result = cli.run(user, "register", "--org", org)
        assert result.returncode == 0, result.stderr
    definition = cli.home / "task.json"
    definition.write_text(json.dumps({"algorithm": "neural_network", "quorum": 2, "rounds": 3, "epochs": 2,
                                      "batch_size": 32, "learning_rate": 0.002, "round_timeout": 120}))
    assert cli.run("alice", "create", "--task", "weld-1", "--definition", str(definition)).returncode == 0
    digits = load_dataset("builtin:digits")
    for i, user in enumerate(("bob", "carol")):
        write_csv(cli.home / f"{user}.csv", digits.shard(i + 1, 2))
    aggregator = cli.start("alice", "aggregate", "--task", "weld-1", "--results", str(cli.home / "results"),
                           log=cli.home / "aggregate.log")
    participants = []
    for user in ("bob", "carol"):
        joined = cli.run(user, "join", "--task", "weld-1", "--data", str(cli.home / f"{user}.csv"), "--target", "label")
        assert joined.returncode == 0, joined.stderr
        participants.append(cli.start(user, "participate", "--task", "weld-1", "--out",
                                      str(cli.home / f"{user}-final.keras"), log=cli.home / f"{user}.log"))
    wait_all([aggregator, *participants], timeout=300)
    logs = {name: (cli.home / f"{name}.log").read_text() for name in ("aggregate", "bob", "carol")}
    assert [p.returncode for p in (aggregator, *participants)] == [0, 0, 0], logs
    return logs


def test_task_completes_with_round_records(cli, finished_task):
    assert "task weld-1 COMPLETE" in finished_task["aggregate"]
    info = json.loads(cli.run("bob", "info", "--task", "weld-1", "--json").stdout)
    assert info["status"] == "COMPLETE"
    assert [r["round"] for r in info["rounds"]] == [0, 1, 2]
    assert all(sorted(r["reported"]) == ["bob", "carol"] for r in info["rounds"])
    assert info["rounds"][-1]["metrics"]["accuracy"] > ACCURACY_FLOOR
    assert info["rounds"][-1]["metrics"]["accuracy"] > info["rounds"][0]["metrics"]["accuracy"]
    assert (cli.home / "results" / "accuracy.png").stat().st_size > 1000


def test_both_participants_received_a_working_final_model(cli, finished_task):
    import keras

    digits = load_dataset("builtin:digits")
    for user in ("bob", "carol"):
        assert "final model written" in finished_task[user]
        model = keras.saving.load_model(cli.home / f"{user}-final.keras")
        predicted = np.argmax(model.predict(digits.x, verbose=0), axis=1)  # raw pixel values, scaling inside
        assert (predicted == digits.y).mean() > ACCURACY_FLOOR


def test_model_download_and_listing(cli, finished_task):
    result = cli.run("carol", "model", "--task", "weld-1", "--out", str(cli.home / "downloaded.keras"))
    assert result.returncode == 0, result.stderr
    meta = json.loads((cli.home / "downloaded.keras.json").read_text())
    assert meta["classes"] == list(range(10))
    listed = json.loads(cli.run("mallory", "list", "--json").stdout)
    assert [(t["name"], t["status"], t["joined"]) for t in listed] == [("weld-1", "COMPLETE", 2)]
    table = cli.run("mallory", "list").stdout
    assert "weld-1" in table and "COMPLETE" in table and "alice" in table
    assert cli.run("mallory", "model", "--task", "weld-1").returncode == 1


@pytest.mark.parametrize("user,args,message", [
    ("bob", ("register", "--org", "beta"), "user 'bob' already exists"),
    ("alice", ("create", "--task", "weld-1"), "task 'weld-1' already exists"),
    ("bob", ("info", "--task", "nope"), "unknown task 'nope'"),
    ("mallory", ("join", "--task", "weld-1", "--data", "builtin:digits"), "is COMPLETE"),
    ("bob", ("delete", "--task", "weld-1"), "only the creator of task 'weld-1'"),
    ("bob", ("aggregate", "--task", "weld-1"), "only the creator of task 'weld-1'"),
    ("bob", ("join", "--task", "weld-1", "--data", "missing.csv", "--target", "y"), "does not exist"),
])
def test_user_mistakes_end_with_one_line(cli, finished_task, user, args, message):
    result = cli.run(user, *args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_wrong_password_and_join_twice(cli, finished_task):
    wrong = cli.run("bob", "login", password="not-bobs-password")
    assert wrong.returncode == 1 and "error: wrong user name or password" in wrong.stderr
    assert cli.run("alice", "create", "--task", "weld-2", "--quorum", "2").returncode == 0
    assert cli.run("bob", "join", "--task", "weld-2", "--data", "builtin:digits").returncode == 0
    again = cli.run("bob", "join", "--task", "weld-2", "--data", "builtin:digits")
    assert again.returncode == 1 and "already joined task 'weld-2'" in again.stderr
    assert cli.run("bob", "leave", "--task", "weld-2").returncode == 0
    assert cli.run("alice", "delete", "--task", "weld-2").returncode == 0


def test_the_task_ledger_verifies_for_members_only(cli, finished_task):
    result = cli.run("bob", "ledger", "verify", "--task", "weld-1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signed by their authors" in result.stdout and "verified" in result.stdout
    bundle = json.loads(cli.run("carol", "ledger", "show", "--task", "weld-1", "--json").stdout)
    types = [item["entry"]["type"] for item in bundle["entries"]]
    assert types.count("update_submitted") == 6 and types.count("round_started") == 3
    assert types[0] == "task_created" and types[-1] == "task_finished"
    assert "bob" in bundle["latest"]["cosignatures"]  # verify cosigned the latest checkpoint
    assert all("verified and cosigned" in finished_task[user] for user in ("bob", "carol"))  # every round
    refused = cli.run("mallory", "ledger", "show", "--task", "weld-1")
    assert refused.returncode == 1 and "only the creator and participants" in refused.stderr
