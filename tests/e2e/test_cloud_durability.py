"""Durability: the broker restarts in the middle of a federated task; the task completes, no update lost.

The test starts a RabbitMQ node of its own (tests/support/broker_node.py), the cloud platform on it, and an
aggregator and two participants as separate `werkbund` processes. When round 1 is recorded, carol is
frozen (SIGSTOP) until a round R is held open for her: bob has published his update of R (the task's
ledger says so), she has not, so the aggregator waits for her and the task cannot end. Then the whole
broker node is stopped and started again (its data survives: durable queues, persistent messages,
users and permissions), and carol is let go. Every client reconnects; whatever was in flight is
repeated or redelivered, and every round counts each participant's update once. Nothing waits on a
clock: each step waits for an event (a round record, a ledger entry). Bob's updates go through the
platform's blob store (a reference through the broker), carol's through the broker.
"""
import csv
import json
import os
import signal

import numpy as np
import pytest

from support.broker_node import broker_node
from support.cloud_support import cloud_platform
from support.process_federation import wait_for
from conftest import PASSWORDS, Cli
from werkbund.client.api import connect
from werkbund.platform.amqp import names

pytestmark = [pytest.mark.slow, pytest.mark.broker]
ROUNDS = 8  # the broker stops in a round held open for carol, whichever it is: the task cannot end first


def write_generated_csv(path, seed: int, rows: int = 240, features: int = 6):
    """A linearly separable two-class problem (random, so the test cannot pass on a constant model)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    y = (x @ np.linspace(1.0, -1.0, features) + 0.3 * x[:, 0] > 0).astype(int)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"f{i}" for i in range(features)), "label"])
        writer.writerows([*(f"{v:.5f}" for v in row), label] for row, label in zip(x, y))


def ledger_entries(alice, task: str) -> list[dict]:
    return [item["entry"] for item in alice.transport.call("ledger_entries", task=task, start=0)]


def round_under_way(alice, task: str) -> tuple[int, set[str]]:
    """From the ledger: the last round the aggregator started, and who published an update for it."""
    entries = ledger_entries(alice, task)
    started = max((e["payload"]["round"] for e in entries if e["type"] == "round_started"), default=-1)
    return started, {e["author"] for e in entries if e["type"] == "update_submitted" and e["payload"]["round"] == started}


def hold_a_round_open(alice, task: str, frozen, procs) -> int:
    """Round 1 recorded, then ``frozen`` (carol) stopped with SIGSTOP in a round R that bob published his
    update of and she did not: the aggregator waits for her update of R. Returns R.

    If she published her update of the round under way before the SIGSTOP, she sent it too (she
    publishes, then sends), so that round ends without waiting and the next is one she cannot publish
    for. Only if the SIGSTOP fell between her publishing and her sending does the round never end;
    then she is let go until the next round starts, and frozen again (as tests/e2e/test_crash_recovery.py)."""
    wait_for(lambda: len(alice.rounds(task)) >= 1, 300, "round 1's record", procs)
    os.kill(frozen.pid, signal.SIGSTOP)
    while True:
        number, published = wait_for(lambda: (lambda r: r if "bob" in r[1] else None)(round_under_way(alice, task)),
                                     120, "bob's update of the round under way", procs)
        if "carol" not in published:
            return number
        try:  # her update of `number` is on its way: the next round starts without her
            wait_for(lambda: round_under_way(alice, task)[0] > number, 30, "the next round", procs)
        except AssertionError as exc:
            if "did not happen" not in str(exc):
                raise
            os.kill(frozen.pid, signal.SIGCONT)  # frozen between publishing and sending: let the update go
            wait_for(lambda: round_under_way(alice, task)[0] > number, 120, "the next round", procs)
            os.kill(frozen.pid, signal.SIGSTOP)


def test_a_broker_restart_mid_task_loses_no_update(tmp_path):
    with broker_node(tmp_path / "broker") as node, cloud_platform(tmp_path, "sqlite", node=node) as url:
        (tmp_path / "users").mkdir()
        cli = Cli(url, tmp_path / "users", platform="cloud")
        plain_env = cli.env  # bob's updates take the claim-check path (blob store), carol's the broker
        cli.env = lambda user, password=None: {**plain_env(user, password),
                                               **({"WERKBUND_BLOB_THRESHOLD": "0"} if user == "bob" else {})}
        for user in ("alice", "bob", "carol"):
            assert cli.run(user, "register", "--org", f"org-{user}").returncode == 0
        definition = tmp_path / "task.json"
        definition.write_text(json.dumps({"algorithm": "neural_network", "quorum": 2, "rounds": ROUNDS,
                                          "epochs": 2, "batch_size": 16, "round_timeout": 240}))
        created = cli.run("alice", "create", "--task", "durable", "--definition", str(definition))
        assert created.returncode == 0, created.stderr
        aggregator = cli.start("alice", "aggregate", "--task", "durable", "--results", str(tmp_path / "results"),
                               log=tmp_path / "aggregate.log")
        procs = [aggregator]
        for i, user in enumerate(("bob", "carol")):
            write_generated_csv(tmp_path / f"{user}.csv", seed=i)
            joined = cli.run(user, "join", "--task", "durable", "--data", str(tmp_path / f"{user}.csv"),
                             "--target", "label")
            assert joined.returncode == 0, joined.stderr
            procs.append(cli.start(user, "participate", "--task", "durable", "--out",
                                   str(tmp_path / f"{user}.keras"), log=tmp_path / f"{user}.log"))
        carol = procs[2]
        try:
            alice = connect("cloud", url, "alice", PASSWORDS["alice"])  # one login: a login per poll is slow
            try:
                held = hold_a_round_open(alice, "durable", carol, procs)
                assert alice.task_info("durable")["status"] == "STARTED"
                recorded = len(alice.rounds("durable"))
            finally:
                alice.close()
            assert recorded <= held < ROUNDS  # round R is not recorded: it waits for carol's update
            node.stop()
            assert all(proc.poll() is None for proc in procs)  # every client waits for the broker
            node.start()
            os.kill(carol.pid, signal.SIGCONT)
            for proc in procs:
                proc.wait(timeout=400)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
        logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("aggregate", "bob", "carol")}
        assert [p.returncode for p in procs] == [0, 0, 0], logs
        assert "reconnected to the broker" in logs["aggregate"], logs["aggregate"]
        assert "task durable COMPLETE" in logs["aggregate"]
        platform_log = (tmp_path / "cloud-platform.log").read_text()
        assert platform_log.count("bob stored blob") >= ROUNDS and "carol stored blob" not in platform_log

        alice = connect("cloud", url, "alice", PASSWORDS["alice"])
        try:
            rounds = alice.rounds("durable")
            assert [r["round"] for r in rounds] == list(range(ROUNDS))
            for record in rounds:  # every round counts both participants' updates once: none lost, none late
                assert (sorted(record["reported"]), record["missing"], record["rejected"]) == \
                    (["bob", "carol"], [], {}), record
            submitted = sorted((e["payload"]["round"], e["author"]) for e in ledger_entries(alice, "durable")
                               if e["type"] == "update_submitted")
            assert submitted == [(r, user) for r in range(ROUNDS) for user in ("bob", "carol")]
            assert alice.task_info("durable")["status"] == "COMPLETE"
            model, meta = alice.get_model("durable")
            assert len(model) == meta["size"] > 0
        finally:
            alice.close()
        assert (tmp_path / "bob.keras").stat().st_size > 0 and (tmp_path / "carol.keras").stat().st_size > 0


def test_a_repeated_request_is_answered_from_memory_not_run_twice(tmp_path):
    """What a client does after a lost connection: the same request (same message_id) once more."""
    import uuid

    import pika

    from werkbund.client.api import register
    from werkbund.platform.errors import TaskExists

    with cloud_platform(tmp_path) as url:
        alice = register("alice", PASSWORDS["alice"], "acme", platform="cloud", url=url)
        try:
            transport = alice.transport
            body = json.dumps({"task": "once", "definition": {"algorithm": "neural_network"}}).encode()
            replies = []
            for _ in range(2):
                corr = uuid.uuid4().hex
                properties = pika.BasicProperties(
                    reply_to=names.REPLY_TO, correlation_id=corr, message_id="request-1", type="create_task",
                    user_id=transport.broker_account, content_type="application/json")
                replies.append(transport.session.request(corr, body, properties, 30))
            assert replies[0] == replies[1] and replies[0][0]["status"] == "ok"
            assert [t["name"] for t in alice.list_tasks()] == ["once"]
            with pytest.raises(TaskExists):  # a new request (new id) does run again
                alice.create_task("once", {"algorithm": "neural_network"})
        finally:
            alice.close()
