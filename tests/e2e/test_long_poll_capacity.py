"""Waiting participants hold no server thread: far more long polls than route threads wait at once, and
the platform still answers everyone else and delivers each message to the poll it is for (issue 15)."""
import http.client
import json
import select
import threading
from urllib.parse import urlsplit

import pytest
import requests
from argon2 import PasswordHasher

from werkbund.client.transports.http import HttpTransport
from werkbund.local_platform.server import LocalPlatformServer
from werkbund.platform import passwords

THREADS = 4          # route threads of the server under test
PARTICIPANTS = 100   # long polls waiting at once, each over its own connection
PASSWORD = "participant-secret-1"


@pytest.fixture
def server(tmp_path, monkeypatch):
    # argon2id at its cheapest, so that 101 registrations and logins fit the time; every other part is real
    monkeypatch.setattr(passwords, "_HASHER", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    monkeypatch.setattr(passwords, "_DUMMY_HASH", passwords._HASHER.hash("dummy-password"))
    srv = LocalPlatformServer(f"sqlite:///{tmp_path / 'p.sqlite'}", threads=THREADS).start()
    yield srv
    srv.stop()


def parked_polls(server, monkeypatch, expected: int) -> threading.Event:
    """Set once ``expected`` distinct inboxes have a long poll watching them (the route found them empty and
    left the wait to the front): observed on the platform's real mailboxes."""
    boxes = server.app.extensions["werkbund_mailboxes"]
    take, watched, lock, event = boxes.take, set(), threading.Lock(), threading.Event()

    def observed_take(task, inbox, wake=None):
        message = take(task, inbox, wake)
        if message is None and wake is not None:
            with lock:
                watched.add(inbox)
                if len(watched) >= expected:
                    event.set()
        return message

    monkeypatch.setattr(boxes, "take", observed_take)
    return event


def federation(url: str) -> tuple[HttpTransport, dict[str, HttpTransport]]:
    """alice's started task "t" with PARTICIPANTS members; the logged-in transports."""
    alice = HttpTransport(url)
    alice.register("alice", PASSWORD, "acme")
    alice.login("alice", PASSWORD)
    alice.call("create_task", task="t", definition={"algorithm": "kmeans", "quorum": 1, "rounds": 1,
                                                                "max_participants": PARTICIPANTS})
    members = {}
    for i in range(PARTICIPANTS):
        name = f"p{i:03d}"
        members[name] = HttpTransport(url)
        members[name].register(name, PASSWORD, f"org {i}")
        members[name].login(name, PASSWORD)
        members[name].call("join_task", task="t")
    alice.call("start_task", task="t")
    return alice, members


def open_poll(url: str, member: HttpTransport) -> http.client.HTTPConnection:
    """A long poll of 60 s (the most the platform waits) on a connection of its own, sent, not yet read."""
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
    conn.request("GET", "/api/v1/tasks/t/messages?timeout=60", headers={"Authorization": f"Bearer {member.token}"})
    return conn


def answered(conn: http.client.HTTPConnection) -> bool:
    """The platform has begun its reply on this connection (checked now, without waiting)."""
    return bool(select.select([conn.sock], [], [], 0)[0])


@pytest.mark.slow
def test_more_waiting_polls_than_threads_and_everyone_is_still_answered(server, monkeypatch):
    alice, members = federation(server.url)
    parked = parked_polls(server, monkeypatch, PARTICIPANTS)
    polls = {name: open_poll(server.url, member) for name, member in members.items()}
    try:
        assert parked.wait(120), "not every long poll reached its inbox"

        # 100 polls wait and 4 threads serve: control calls and sends are answered all the same
        assert [task["name"] for task in members["p007"].call("list_tasks")] == ["t"]
        assert alice.send("t", "p042", b"for p042 only")["delivered_to"] == 1

        reply = polls.pop("p042").getresponse()
        assert (reply.status, reply.getheader("X-Werkbund-Sender"), reply.read()) == (200, "alice", b"for p042 only")
        assert not [name for name, conn in polls.items() if answered(conn)]  # the others still wait

        assert alice.send("t", "all", b"to everyone")["delivered_to"] == PARTICIPANTS
        for name, conn in polls.items():
            reply = conn.getresponse()
            assert (reply.status, reply.read()) == (200, b"to everyone"), name
        assert members["p042"].receive("t", 5) == ("alice", b"to everyone")
    finally:
        for conn in polls.values():
            conn.close()


@pytest.mark.slow
def test_stop_answers_the_waiting_polls_and_returns(server, monkeypatch):
    alice, members = federation(server.url)
    parked = parked_polls(server, monkeypatch, PARTICIPANTS)
    polls = [open_poll(server.url, member) for member in members.values()]
    try:
        assert parked.wait(120), "not every long poll reached its inbox"
        server.stop()  # returns (the fixture's stop then finds it stopped) and nothing listens any more
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{server.url}/api/v1/health", timeout=10)
        for conn in polls:  # each told "nothing came" rather than left hanging until its timeout
            reply = conn.getresponse()
            assert (reply.status, reply.read()) == (204, b"")
    finally:
        for conn in polls:
            conn.close()


def test_a_bad_long_poll_gets_its_typed_error_not_a_wait(server):
    member = HttpTransport(server.url)
    member.register("dora", PASSWORD, "delta")
    member.login("dora", PASSWORD)
    conn = open_poll(server.url, member)  # task "t" does not exist: refused at once, as the route refuses it
    reply = conn.getresponse()
    assert reply.status == 404 and json.loads(reply.read())["error"]["code"] == "task_not_found"
    conn.close()


def test_a_waiting_poll_was_let_in_when_it_came_and_a_revoked_session_opens_no_new_one(server, monkeypatch):
    """A long poll's session and membership are checked when the request comes, as for any request, not again
    at each wake: the message that arrives while it waits is delivered even though its session was revoked
    meanwhile; the next poll with that session is refused (401) before it waits."""
    alice, bob = HttpTransport(server.url), HttpTransport(server.url)
    for user, transport in (("alice", alice), ("bob", bob)):
        transport.register(user, PASSWORD, user)
        transport.login(user, PASSWORD)
    alice.call("create_task", task="t", definition={"algorithm": "kmeans", "quorum": 1, "rounds": 1})
    bob.call("join_task", task="t")
    alice.call("start_task", task="t")
    parked = parked_polls(server, monkeypatch, 1)
    token, conn = bob.token, open_poll(server.url, bob)
    try:
        assert parked.wait(30), "the long poll did not reach its inbox"
        bob.logout()
        assert alice.send("t", "bob", b"sent while bob waited")["delivered_to"] == 1
        reply = conn.getresponse()
        assert (reply.status, reply.getheader("X-Werkbund-Sender"), reply.read()) == (200, "alice", b"sent while bob waited")
    finally:
        conn.close()
    again = requests.get(f"{server.url}/api/v1/tasks/t/messages?timeout=60", headers={"Authorization": f"Bearer {token}"},
                         timeout=30)
    assert again.status_code == 401 and again.json()["error"]["code"] == "authentication_failed"
