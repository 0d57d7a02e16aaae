"""`werkbund platform serve --queue-type quorum` (for a broker cluster): every queue the platform
declares is a quorum queue, as the broker's management API reports it, and a task's messages go
through them. A single node serves quorum queues too, so the system broker shows it."""
from __future__ import annotations

import pytest
import requests

from support.cloud_support import MANAGEMENT, cloud_platform
from werkbund.client.api import register
from werkbund.platform.amqp import names

pytestmark = pytest.mark.broker

PASSWORD = "a-long-password-1"


def queue_type(vhost: str, queue: str) -> str:
    quoted = "/".join(requests.utils.quote(part, safe="") for part in (vhost, queue))
    answer = requests.get(f"{MANAGEMENT.replace('guest:guest@', '')}/api/queues/{quoted}", auth=("guest", "guest"),
                          timeout=10)
    answer.raise_for_status()
    return answer.json()["type"]


def test_the_platform_declares_quorum_queues_when_told(tmp_path):
    with cloud_platform(tmp_path, extra=("--queue-type", "quorum")) as url:
        vhost = url.rsplit("/", 1)[1]
        alice = register("alice", PASSWORD, "acme", platform="cloud", url=url)
        bob = register("bob", PASSWORD, "beta", platform="cloud", url=url)
        try:
            alice.create_task("replicated", {"algorithm": "statistics", "quorum": 1})
            bob.join_task("replicated")
            assert {queue_type(vhost, q) for q in (names.REQUEST_QUEUE, names.aggregator_queue("replicated"),
                                                   names.participant_queue("replicated", "bob"))} == {"quorum"}
            aggregator = alice.aggregator("replicated")
            aggregator.start()
            aggregator.send("bob", "hello", b"over a quorum queue")
            got = bob.participant("replicated").receive(timeout=30)
            assert got is not None and got.payload == b"over a quorum queue"
        finally:
            alice.close()
            bob.close()
