"""Bounded queues on the cloud platform (issue 14): a real broker, a real `werkbund platform serve`
started with small bounds (--queue-max-messages, --queue-max-bytes).

A participant that floods the aggregator's queue gets a clear ``InboxFull`` (which inbox, what bound),
as a 429 over HTTP; the queue, as the broker's management API shows it, never holds more; nothing
queued before is lost; and the platform's other tasks go on. The bound is the queue's, not the
sender's (RabbitMQ counts per queue): while one member's flood fills it, another's send is refused too.
"""
from __future__ import annotations

import logging
import os
import subprocess
import threading
import time

import pytest
import requests

import werkbund
from support.cloud_support import MANAGEMENT, cloud_platform
from conftest import WERKBUND, quiet_env
from werkbund.client.api import register
from werkbund.platform.amqp import names
from werkbund.platform.errors import InboxFull

pytestmark = [pytest.mark.slow, pytest.mark.broker]
PASSWORD = "a-long-password-1"
LIMIT, LIMIT_BYTES = 8, 1_000_000
BOUNDS = ("--queue-max-messages", str(LIMIT), "--queue-max-bytes", str(LIMIT_BYTES))


def queue_state(vhost: str, queue: str) -> dict:
    """What the broker's management API says of a queue (its statistics lag by up to 5 s)."""
    quoted = "/".join(requests.utils.quote(part, safe="") for part in (vhost, queue))
    answer = requests.get(f"{MANAGEMENT.replace('guest:guest@', '')}/api/queues/{quoted}", auth=("guest", "guest"),
                          timeout=10)
    answer.raise_for_status()
    return answer.json()


def settled_depth(vhost: str, queue: str, expected: int, timeout: float = 30.0) -> dict:
    """The queue's state once the management API reports ``expected`` messages in it (or the last seen)."""
    deadline, state = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        state = queue_state(vhost, queue)
        if state.get("messages") == expected and "message_bytes" in state:  # (its byte count comes a moment later)
            break
        time.sleep(0.5)
    return state


def flood(sender, task: str, count: int, size: int = 0) -> tuple[int, InboxFull | None]:
    """Send ``count`` updates as fast as they are taken; (how many were taken, the refusal)."""
    for i in range(count):
        try:
            sender.participant(task).send("update", f"flood {i}".encode().ljust(size, b"."), round=1)
        except InboxFull as exc:
            return i, exc
    return count, None


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    with cloud_platform(tmp_path_factory.mktemp("cloud-bounds"), extra=BOUNDS) as url:
        users = {name: register(name, PASSWORD, "org", platform="cloud", url=url) for name in ("alice", "bob", "carol")}
        yield url, users
        for user in users.values():
            user.close()


def new_task(users, task: str) -> None:
    users["alice"].create_task(task, {"algorithm": "statistics", "quorum": 2})
    users["bob"].join_task(task)
    users["carol"].join_task(task)
    users["alice"].aggregator(task).start()


def test_a_flooding_participant_is_refused_at_the_bound_and_nothing_queued_is_lost(platform):
    url, users = platform
    vhost, queue = url.rsplit("/", 1)[1], names.aggregator_queue("flood")
    new_task(users, "flood")
    taken, refusal = flood(users["bob"], "flood", 3 * LIMIT)
    assert taken == LIMIT and isinstance(refusal, InboxFull) and refusal.code == "inbox_full"
    assert str(refusal).startswith("the aggregator's inbox in task 'flood' is full "
                                   f"(at most {LIMIT} messages and {LIMIT_BYTES} bytes wait in one queue)")
    state = settled_depth(vhost, queue, LIMIT)
    assert state["messages"] == LIMIT and state["effective_policy_definition"]["max-length"] == LIMIT
    # the bound is the queue's: carol is refused too until the aggregator reads
    with pytest.raises(InboxFull, match="the aggregator's inbox in task 'flood' is full"):
        users["carol"].participant("flood").send("update", b"carol's", round=1)

    aggregator = users["alice"].aggregator("flood")
    got = [aggregator.receive(30) for _ in range(LIMIT)]
    assert [(m.sender, m.payload) for m in got] == [("bob", f"flood {i}".encode()) for i in range(LIMIT)]
    users["carol"].participant("flood").send("update", b"carol's", round=1)  # room again
    message = aggregator.receive(30)
    assert (message.sender, message.payload) == ("carol", b"carol's")
    assert aggregator.receive(0.5) is None


def test_the_byte_bound_refuses_what_would_not_fit(platform):
    url, users = platform
    vhost, queue = url.rsplit("/", 1)[1], names.aggregator_queue("heavy")
    new_task(users, "heavy")
    size = 300_000  # three fit in 1 000 000 bytes, a fourth would not (through the broker: under the blob threshold)
    taken, refusal = flood(users["bob"], "heavy", LIMIT, size)
    assert taken == 3 and "the aggregator's inbox in task 'heavy' is full" in str(refusal)
    state = settled_depth(vhost, queue, 3)
    assert state["messages"] == 3 and state["message_bytes"] <= LIMIT_BYTES
    aggregator = users["alice"].aggregator("heavy")
    assert [aggregator.receive(30).payload[:7] for _ in range(3)] == [b"flood 0", b"flood 1", b"flood 2"]
    # one piece larger than the bound never fits, not even in an empty queue; a request neither
    with pytest.raises(InboxFull, match=r"the aggregator's inbox in task 'heavy' cannot take a message of \d+ bytes"):
        users["bob"].participant("heavy").send("update", b"x" * 1_500_000, round=1)
    with pytest.raises(InboxFull, match=r"the request \(\d+ bytes\) is larger than the platform's request queue"):
        aggregator.finish(b"m" * 1_500_000)
    # a participant's full inbox refuses the aggregator's messages too, named as such
    for _ in range(LIMIT):
        users["alice"].aggregator("heavy").send("bob", "model", b"for bob")
    with pytest.raises(InboxFull, match="bob's inbox in task 'heavy' is full"):
        users["alice"].aggregator("heavy").send("bob", "model", b"one too many")


def test_a_message_in_more_chunks_than_the_bound_goes_through_once_the_reader_reads(platform):
    """Refused in the middle (its first chunks queued), a chunked message is not left half sent: the
    sender sends the rest again while the aggregator takes chunks out."""
    url, users = platform
    vhost, queue = url.rsplit("/", 1)[1], names.aggregator_queue("chunked")
    new_task(users, "chunked")
    payload = os.urandom(3 * LIMIT * 10_000)  # 3 * LIMIT chunks of 10 000 bytes, through the broker
    bob = users["bob"].transport
    saved = bob.chunk_bytes, bob.blob_threshold
    bob.chunk_bytes, bob.blob_threshold = 10_000, 1 << 62
    outcome = {}

    def send():
        try:
            outcome["sent"] = users["bob"].participant("chunked").send("update", payload, round=1)
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert settled_depth(vhost, queue, LIMIT)["messages"] == LIMIT  # full, the sender waiting for room
        assert sender.is_alive()
        message = users["alice"].aggregator("chunked").receive(120)
        sender.join(120)
    finally:
        bob.chunk_bytes, bob.blob_threshold = saved
    assert "error" not in outcome and (message.sender, message.payload) == ("bob", payload)


def test_a_refused_send_goes_again_and_gets_through_once_there_is_room(platform):
    """RabbitMQ refuses a message for a full queue and for a quorum queue between two leaders alike (AMQP
    0-9-1 does not say which), so a refused send goes again for a while before it fails: room made
    meanwhile lets it through, once, after what was queued before it."""
    url, users = platform
    new_task(users, "moment")
    assert flood(users["bob"], "moment", 2 * LIMIT)[0] == LIMIT  # full
    users["carol"].transport.refused_seconds = 120  # (5 s by default: ample here too, this leaves no doubt)
    refused, outcome = threading.Event(), {}

    class Refusals(logging.Handler):
        def emit(self, record):
            if "refused a message" in record.getMessage():
                refused.set()

    def send():
        try:
            outcome["sent"] = users["carol"].participant("moment").send("update", b"carol's", round=1)
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    logger, handler = logging.getLogger("werkbund.client.amqp"), Refusals()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert refused.wait(60)  # refused: the queue is full, and nobody reads it yet
        aggregator = users["alice"].aggregator("moment")
        got = [aggregator.receive(30)]  # room
        sender.join(60)
        got += [aggregator.receive(30) for _ in range(LIMIT)]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        del users["carol"].transport.refused_seconds
    assert "error" not in outcome and outcome["sent"]["delivered_to"] == "aggregator"
    assert [(m.sender, m.payload) for m in got] == [
        *(("bob", f"flood {i}".encode()) for i in range(LIMIT)), ("carol", b"carol's")]
    assert aggregator.receive(0.5) is None  # carol's, sent again while refused, came once


def test_another_task_on_the_same_platform_completes_while_a_queue_is_full(platform, tmp_path, monkeypatch):
    url, users = platform
    new_task(users, "jammed")
    assert flood(users["bob"], "jammed", 2 * LIMIT)[0] == LIMIT
    monkeypatch.setenv("WERKBUND_HOME", str(tmp_path / "home"))
    dora, emil, fritz = (werkbund.register(name, PASSWORD, f"{name} GmbH", platform="cloud", url=url)
                         for name in ("dora", "emil", "fritz"))
    try:
        task = dora.create_task("normal", algorithm="logistic_regression", quorum=2, rounds=2, epochs=1)
        for i, site in enumerate((emil, fritz)):
            site.task("normal").join("builtin:digits", shard=f"{i + 1}/2")
        runs = [site.task("normal").participate(background=True, progress=False) for site in (emil, fritz)]
        result = task.aggregate(progress=False)
        assert result.history["n_reported"].tolist() == [2, 2] and task.status == "COMPLETE"
        for run in runs:
            assert run.wait(timeout=120).evaluation["accuracy"] > 0.5
    finally:
        for session in (dora, emil, fritz):
            session.close()


def test_quorum_queues_are_bounded_too(tmp_path):
    """A quorum queue checks the bound before it adds a message: it may take one more than a classic queue."""
    with cloud_platform(tmp_path, extra=("--queue-type", "quorum", *BOUNDS)) as url:
        vhost, queue = url.rsplit("/", 1)[1], names.aggregator_queue("flood")
        users = {name: register(name, PASSWORD, "org", platform="cloud", url=url) for name in ("alice", "bob", "carol")}
        try:
            new_task(users, "flood")
            taken, refusal = flood(users["bob"], "flood", 3 * LIMIT)
            assert LIMIT <= taken <= LIMIT + 1 and "the aggregator's inbox in task 'flood' is full" in str(refusal)
            state = settled_depth(vhost, queue, taken)
            assert state["type"] == "quorum" and state["messages"] == taken
            aggregator = users["alice"].aggregator("flood")
            got = [aggregator.receive(30) for _ in range(taken)]
            assert [m.payload for m in got] == [f"flood {i}".encode() for i in range(taken)]
        finally:
            for user in users.values():
                user.close()


@pytest.mark.parametrize("option, value, says", [
    ("--queue-max-messages", "0", "0 is not in the range x>=1"),
    ("--queue-max-bytes", "lots", "'lots' is not a valid integer"),
])
def test_a_bad_bound_is_refused_before_anything_starts(tmp_path, option, value, says):
    result = subprocess.run([WERKBUND, "platform", "serve", "--broker", "amqp://guest:guest@127.0.0.1:1/none",
                             "--db", f"sqlite:///{tmp_path / 'x.db'}", option, value],
                            env=quiet_env(WERKBUND_HOME=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr
