"""The broker itself refuses what a user may not do on the cloud platform (real RabbitMQ, real service)."""
import json

import pika
import pytest

from support.cloud_support import cloud_platform
from werkbund.client.transports.amqp.transport import AmqpTransport
from werkbund.client.api import connect, register
from werkbund.platform.amqp import names
from werkbund.platform.errors import AuthenticationFailed, PermissionDenied, Unavailable

PASSWORD = "a-long-password-1"
pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    with cloud_platform(tmp_path_factory.mktemp("cloud-perm")) as url:
        users = {name: register(name, PASSWORD, "org", platform="cloud", url=url) for name in ("alice", "bob", "carol")}
        users["alice"].create_task("t1", {"algorithm": "neural_network", "quorum": 2, "rounds": 1})
        users["bob"].join_task("t1")
        users["carol"].join_task("t1")
        users["alice"].aggregator("t1").start()
        yield url, users
        for user in users.values():
            user.close()


def test_messages_flow_along_the_permitted_routes(task):
    _, users = task
    agg, bob, carol = users["alice"].aggregator("t1"), users["bob"].participant("t1"), users["carol"].participant("t1")
    agg.broadcast("hello", b"\x00\x01" * 1000, round=0)
    assert [bob.receive(10).kind, carol.receive(10).kind] == ["hello", "hello"]
    agg.send("bob", "only-bob", b"")
    bob.send("update", b"b")
    got = agg.receive(10)
    assert (got.sender, got.kind, got.payload) == ("bob", "update", b"b")
    assert bob.receive(10).kind == "only-bob" and carol.receive(0.5) is None


@pytest.mark.parametrize("attempt", ["consume aggregator queue", "consume another participant's queue",
                                     "publish as someone else", "publish to all", "publish to another participant",
                                     "publish through the default exchange"])
def test_the_broker_refuses_a_participant(task, attempt):
    url, users = task
    session, carol = users["bob"].transport.session, users["carol"].transport.broker_account
    ex, as_bob = names.task_exchange("t1"), pika.BasicProperties(user_id=users["bob"].transport.broker_account)
    actions = {
        "consume aggregator queue": lambda: session.inbox(names.aggregator_queue("t1")),
        "consume another participant's queue": lambda: session.inbox(names.participant_queue("t1", "carol")),
        "publish as someone else": lambda: session.publish(ex, names.TO_AGGREGATOR, b"x",
                                                           pika.BasicProperties(user_id=carol)),
        "publish to all": lambda: session.publish(ex, names.TO_ALL, b"x", as_bob),
        "publish to another participant": lambda: session.publish(ex, names.to_user("carol"), b"x", as_bob),
        "publish through the default exchange": lambda: session.publish("", names.aggregator_queue("t1"), b"x", as_bob),
    }
    with pytest.raises(PermissionDenied, match="ACCESS_REFUSED|PRECONDITION_FAILED"):
        actions[attempt]()
    assert users["bob"].whoami()["user"] == "bob"  # the connection carries on after a refusal


def test_wrong_password_unknown_user_and_unreachable_broker(task):
    url, _ = task
    with pytest.raises(AuthenticationFailed, match="wrong user name or password"):
        connect("cloud", url, "bob", "not-bobs-password")
    with pytest.raises(AuthenticationFailed):
        connect("cloud", url, "nobody", PASSWORD)
    with pytest.raises(Unavailable, match="cannot reach the broker"):
        connect("cloud", "amqp://127.0.0.1:1/none", "bob", PASSWORD)


def test_registration_account_may_only_register(task):
    url, _ = task
    transport = AmqpTransport(url)
    from werkbund.client.transports.amqp.session import AmqpSession

    session = AmqpSession(transport.parameters(names.REGISTRATION_NAME, names.REGISTRATION_PASSWORD))
    try:
        with pytest.raises(PermissionDenied, match="may only register"):
            transport._rpc(session, names.REGISTRATION_NAME, "list_tasks", b"{}")
        with pytest.raises(PermissionDenied):
            session.inbox(names.aggregator_queue("t1"))
        # a platform user called 'guest' gets broker accounts guest~<session>@<vhost>: the broker's guest is untouched
        transport._rpc(session, names.REGISTRATION_NAME, "register",
                       json.dumps({"user": "guest", "password": PASSWORD, "org": "x"}).encode())
        pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F")).close()
    finally:
        session.close()


def test_identity_comes_from_the_broker_not_the_body(task):
    _, users = task
    bob = users["bob"].transport
    with pytest.raises(Exception, match="does not take"):
        bob.call("whoami", user="alice")
    with pytest.raises(PermissionDenied, match="PRECONDITION_FAILED"):
        bob._rpc(bob.session, "alice", "whoami", b"{}")  # user_id alice@<vhost> on bob's connection
    assert bob.call("whoami")["user"] == "bob"
