"""Durability: the broker restarts in the middle of a federated task; the task completes, no update lost.

The test starts a RabbitMQ node of its own (tests/broker_node.py), the cloud platform on it, and an
aggregator and two participants as separate `werkbund` processes. When round 1 is done and the
first update of round 2 has reached the aggregator's queue, the whole broker node is stopped and
started again (its data survives: durable queues, persistent messages, users and permissions).
Every client reconnects; whatever was in flight is repeated or redelivered. Bob's updates go
through the platform's blob store (a reference through the broker), carol's through the broker.
"""
import csv
import json
import os
import signal
import time

import numpy as np
import pytest

from broker_node import broker_node
from cloud_support import cloud_platform
from conftest import PASSWORDS, Cli
from werkbund.client.api import connect
from werkbund.platform import amqp_names as names

pytestmark = [pytest.mark.slow, pytest.mark.broker]
ROUNDS = 20  # a round takes about a second here, stopping the node several: it must stop mid-task


def write_generated_csv(path, seed: int, rows: int = 240, features: int = 6):
    """A linearly separable two-class problem (random, so the test cannot pass on a constant model)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    y = (x @ np.linspace(1.0, -1.0, features) + 0.3 * x[:, 0] > 0).astype(int)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"f{i}" for i in range(features)), "label"])
        writer.writerows([*(f"{v:.5f}" for v in row), label] for row, label in zip(x, y))


def wait_for(condition, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


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
            # round 1 done; carol is then frozen, so the task cannot finish before the broker stops (the
            # management API's counters lag by seconds: waiting on them alone raced a fast task to its end)
            aggregate_log = tmp_path / "aggregate.log"
            wait_for(lambda: f"round 1/{ROUNDS}:" in aggregate_log.read_text(), 240, "round 1", procs)
            vhost, queue = url.rsplit("/", 1)[1], names.aggregator_queue("durable")
            published = lambda: node.queue(vhost, queue).get("message_stats", {}).get("publish", 0)  # noqa: E731
            before = published()
            os.kill(carol.pid, signal.SIGSTOP)
            # bob's next update is in the aggregator's queue; the round waits for carol's
            wait_for(lambda: published() > before, 120, "an update after round 1", procs)
            node.stop()
            assert "COMPLETE" not in aggregate_log.read_text()  # stopped mid-task (it cannot go on now)
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
            for record in rounds:  # every round has both participants' updates: none lost, none late
                assert (sorted(record["reported"]), record["missing"], record["rejected"]) == \
                    (["bob", "carol"], [], {}), record
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
                    user_id=names.broker_user("alice", transport.broker_vhost), content_type="application/json")
                replies.append(transport.session.request(corr, body, properties, 30))
            assert replies[0] == replies[1] and replies[0][0]["status"] == "ok"
            assert [t["name"] for t in alice.list_tasks()] == ["once"]
            with pytest.raises(TaskExists):  # a new request (new id) does run again
                alice.create_task("once", {"algorithm": "neural_network"})
        finally:
            alice.close()
