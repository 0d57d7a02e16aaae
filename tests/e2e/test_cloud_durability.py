"""Durability: the broker restarts in the middle of a federated task; the task completes, no update lost.

The test starts a RabbitMQ node of its own (tests/support/broker_node.py), the cloud platform on it, and an
aggregator and two participants as separate `werkbund` processes (tests/support/process_federation.py).
In a round R held open for carol (frozen with SIGSTOP, bob's update of R sent, the aggregator waiting
for hers: the harness finds R without a deadline), the whole broker node is stopped and started again
(its data survives: durable queues, persistent messages, users and permissions), and carol is let go.
Every client reconnects; whatever was in flight is repeated or redelivered, and every round counts each
participant's update once. Bob's updates go through the platform's blob store (a reference through the
broker), carol's through the broker.
"""
import json

import pytest

from support.broker_node import broker_node
from support.cloud_support import cloud_platform
from support.process_federation import CloudFederation, hold_at
from conftest import PASSWORDS
from werkbund.platform.amqp import names

pytestmark = [pytest.mark.slow, pytest.mark.broker]
ROUNDS = 8  # the broker stops in a round held open for carol, whichever it is: the task cannot end first


def test_a_broker_restart_mid_task_loses_no_update(tmp_path):
    (tmp_path / "platform-home").mkdir()
    with broker_node(tmp_path / "broker") as node:
        fed = CloudFederation(tmp_path, broker=node, definition={"algorithm": "neural_network", "rounds": ROUNDS,
                                                                 "epochs": 2, "batch_size": 16, "round_timeout": 240})
        plain_env = fed.cli.env  # bob's updates take the claim-check path (blob store), carol's the broker
        fed.cli.env = lambda user, password=None: {**plain_env(user, password),
                                                   **({"WERKBUND_BLOB_THRESHOLD": "0"} if user == "bob" else {})}
        try:
            fed.setup_task()
            held = hold_at(fed, "during")  # carol frozen in round R, bob's update of R sent
            assert fed.api().task_info("t")["status"] == "STARTED"
            assert len(fed.rounds()) <= held < ROUNDS  # round R is not recorded: it waits for carol's update
            fed.forget_api()  # (asked again once the broker is back)
            node.stop()
            assert all(proc.poll() is None for proc in fed.procs.values())  # every client waits for the broker
            node.start()
            fed.finish(timeout=400)  # carol let go; COMPLETE, every round with both updates once
            assert "reconnected to the broker" in fed.log("aggregate"), fed.log("aggregate")[-3000:]
            platform_log = (tmp_path / "service-1" / "cloud-platform.log").read_text()
            assert platform_log.count("bob stored blob") >= ROUNDS and "carol stored blob" not in platform_log

            entries = [item["entry"] for item in fed.api().transport.call("ledger_entries", task="t", start=0)]
            submitted = sorted((e["payload"]["round"], e["author"]) for e in entries if e["type"] == "update_submitted")
            assert submitted == [(r, user) for r in range(ROUNDS) for user in ("bob", "carol")]
            model, meta = fed.api().get_model("t")
            assert len(model) == meta["size"] > 0
            for user in ("bob", "carol"):
                assert "final model written to" in fed.log(user)
        finally:
            fed.close()


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
