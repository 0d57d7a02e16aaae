"""A RabbitMQ cluster's failover under a running task (issue 15; docs/operations.md, "Quorum queues on a
broker cluster").

Three broker nodes of the test's own, clustered, behind HAProxy (tests/support/broker_cluster.py); the
cloud platform with `--queue-type quorum`, an aggregator and two participants as `werkbund` processes,
all through HAProxy, so all on node 1, which leads every queue. In a round held open (carol frozen,
bob's update of the round sent: tests/support/process_federation.py), node 1 is stopped for good. Each
queue then has a leader on node 2 or 3, every process reconnects through HAProxy, and the task ends
COMPLETE with every update of every round counted once.
"""
from __future__ import annotations

import pytest
from support.broker_cluster import broker_cluster
from support.process_federation import CloudFederation, hold_at

from werkbund.platform.amqp import names

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def test_the_node_that_leads_every_queue_stopped_mid_task_loses_no_update(tmp_path):
    (tmp_path / "platform-home").mkdir()
    with broker_cluster(tmp_path / "cluster") as cluster:
        first = cluster.nodes[0]
        fed = CloudFederation(tmp_path, broker=cluster, extra=("--queue-type", "quorum"))
        try:
            fed.setup_task()
            held = hold_at(fed, "during")  # carol frozen in round R, bob's update of R sent
            queues = [names.REQUEST_QUEUE, names.aggregator_queue("t"),
                      *(names.participant_queue("t", user) for user in fed.participants)]
            before = {queue: cluster.queue(fed.vhost, queue) for queue in queues}
            assert {record["type"] for record in before.values()} == {"quorum"}, before
            assert {record["leader"] for record in before.values()} == {first.node}, before
            assert all(sorted(record["members"]) == sorted(n.node for n in cluster.nodes) for record in before.values())
            assert {c["node"] for c in cluster.connections() if c["vhost"] == fed.vhost} == {first.node}

            first.stop()
            assert all(proc.poll() is None for proc in fed.procs.values())  # every client waits for the broker
            info = fed.finish()  # carol let go; COMPLETE, every round with both updates once
            assert info["rounds"][held]["reported"] and len(info["rounds"]) == fed.n_rounds

            after = {queue: cluster.queue(fed.vhost, queue) for queue in queues}
            assert all(record["leader"] in (cluster.nodes[1].node, cluster.nodes[2].node) for record in after.values()), \
                after
            for name in ("aggregate", "bob", "carol"):
                assert "reconnected to the broker" in fed.log(name), fed.log(name)[-3000:]
            verified = fed.cli.run("bob", "ledger", "verify", "--task", "t")
            assert verified.returncode == 0, verified.stdout + verified.stderr
        finally:
            fed.close()
