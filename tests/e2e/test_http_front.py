"""The Flask front over a real socket: statuses, JSON errors, binary messages, long-polling."""
import json
import os
import threading
import time

import pytest
import requests

from werkbund.client.api import connect, register
from werkbund.local_platform.server import LocalPlatformServer
from werkbund.platform import errors


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LocalPlatformServer(f"sqlite:///{tmp_path_factory.mktemp('db') / 'p.sqlite'}").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def users(server):
    alice = register("alice", "alice-password", "acme", url=server.url)
    bob = register("bob", "bob-password", "beta", url=server.url)
    alice.create_task("t", {"quorum": 1})
    bob.join_task("t", {"kind": "classification", "features": ["a"], "target": "y", "classes": [0, 1]})
    alice.aggregator("t").start()
    return alice, bob


def test_errors_are_json_with_meaningful_statuses(server, users):
    api = f"{server.url}/api/v1"
    r = requests.post(f"{api}/login", json={"user": "bob", "password": "wrong-password"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "authentication_failed"
    r = requests.post(f"{api}/call/task_info", json={"task": "t"})
    assert r.status_code == 401
    token = requests.post(f"{api}/login", json={"user": "bob", "password": "bob-password"}).json()["data"]["token"]
    auth = {"Authorization": f"Bearer {token}"}
    r = requests.post(f"{api}/call/task_info", json={"task": "nope"}, headers=auth)
    assert r.status_code == 404 and "unknown task 'nope'" in r.json()["error"]["message"]
    r = requests.post(f"{api}/call/delete_task", json={"task": "t"}, headers=auth)
    assert r.status_code == 403
    r = requests.post(f"{api}/register", json={"user": "bob", "password": "whatever-long", "org": "x"})
    assert r.status_code == 409
    r = requests.post(f"{api}/call/task_info", data=b"{not json", headers=dict(auth, **{"Content-Type": "application/json"}))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
    r = requests.post(f"{api}/call/format_disk", json={}, headers=auth)
    assert r.status_code == 400 and "unknown command" in r.json()["error"]["message"]


def test_client_gets_typed_errors(server, users):
    with pytest.raises(errors.AuthenticationFailed):
        connect(url=server.url, user="bob", password="wrong-password")
    with pytest.raises(errors.TaskNotFound):
        users[1].task_info("missing")


def test_binary_messages_and_long_polling(users):
    alice, bob = users
    agg, part = alice.aggregator("t"), bob.participant("t")
    payload = bytes(range(256)) * 4096  # 1 MiB of every byte value, as raw bytes
    agg.broadcast("round", payload, round=0)
    message = part.receive(timeout=5)
    assert (message.kind, message.sender, message.payload) == ("round", "alice", payload)
    started = time.monotonic()
    assert part.receive(timeout=1.0) is None
    assert time.monotonic() - started >= 0.9

    got = {}
    waiter = threading.Thread(target=lambda: got.setdefault("m", agg.receive(timeout=10)))
    waiter.start()
    time.sleep(0.5)
    part.send("update", b"\x00\xff", round=0)
    waiter.join()
    assert (got["m"].kind, got["m"].sender, got["m"].payload) == ("update", "bob", b"\x00\xff")


def test_a_large_message_goes_out_from_its_payload_and_arrives_checked_whole(users):
    """Past STREAM_FROM a message is sent as its header, then its payload (no frame built), and read
    into its payload's own bytes with its sha256 checked on the way; a corrupt one is 'malformed' with
    the reason."""
    from werkbund.client.messages import CheckedFrame, encode_message
    from werkbund.client.transports.http import STREAM_FROM

    alice, bob = users
    agg, part = alice.aggregator("t"), bob.participant("t")
    payload = os.urandom(STREAM_FROM + 12345)
    agg.broadcast("round", payload, round=0, note="big")
    message = part.receive(timeout=10)
    assert (message.kind, message.sender, message.get("note"), message.payload == payload) == (
        "round", "alice", "big", True)
    sender, frame = bob.transport.receive("t", 0) or (None, None)
    assert frame is None  # delivered once

    corrupt = bytearray(encode_message("t", "update", payload, round=0))
    corrupt[-1] ^= 1
    bob.transport.send("t", "aggregator", bytes(corrupt))
    message = agg.receive(timeout=10)
    assert message.kind == "malformed" and message.sender == "bob" and "sha256" in message.extra["error"]
    bob.transport.send("t", "aggregator", encode_message("t", "update", payload, round=0))
    assert isinstance(alice.transport.receive("t", 10)[1], CheckedFrame)


def test_the_aggregator_takes_what_waits_in_one_long_poll_up_to_a_byte_bound_and_a_bad_frame_spoils_only_itself(
        server, users):
    """The aggregator asks for up to 64 messages a poll (``most=64``): the six waiting here come in three
    replies, since a batch takes no message past about 1 MiB; the corrupt frame and the body that is no
    frame come back 'malformed' in their places, their neighbours whole and in order."""
    from werkbund.client.messages import encode_message
    from werkbund.local_platform.app import BATCH_BYTES

    alice, bob = users
    agg = alice.aggregator("t")
    big = os.urandom(BATCH_BYTES + 1000)
    corrupt = bytearray(encode_message("t", "update", b"x" * 100, round=5))
    corrupt[-1] ^= 1
    for frame in (encode_message("t", "update", b"a", round=1), bytes(corrupt), b"not a frame",
                  encode_message("t", "update", b"b", round=2), encode_message("t", "update", big, round=3),
                  encode_message("t", "update", b"c", round=4)):
        bob.transport.send("t", "aggregator", frame)
    polls = []
    alice.transport.session.hooks["response"].append(
        lambda response, **_: polls.append(response.headers.get("X-Werkbund-Batch"))
        if response.request.method == "GET" else None)
    try:
        got = [agg.receive(timeout=5) for _ in range(6)]
    finally:
        alice.transport.session.hooks["response"].clear()
    assert [(m.kind, m.sender, m.get("round")) for m in got] == [
        ("update", "bob", 1), ("malformed", "bob", None), ("malformed", "bob", None), ("update", "bob", 2),
        ("update", "bob", 3), ("update", "bob", 4)]
    assert "sha256" in got[1].extra["error"] and "magic" in got[2].extra["error"]
    assert [got[0].payload, got[3].payload, got[4].payload == big, got[5].payload] == [b"a", b"b", True, b"c"]
    assert [len(json.loads(listing)) for listing in polls] == [4, 1, 1]  # three polls for six messages
    assert alice.transport.receive("t", 0) is None  # each was handed out once


def test_bodies_and_replies_either_side_of_the_fronts_small_bound_arrive_whole(users):
    """A request body up to SMALL is read whole on the event loop, a larger one streamed by a2wsgi; a reply up
    to SMALL is gathered in the route's thread, a larger one sent so far and then streamed: each arrives whole."""
    from werkbund.local_platform.front import SMALL

    alice, bob = users
    for size in (0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL + 7):
        body = b"raw!" + os.urandom(max(0, size - 4)) if size >= 4 else b"r" * size
        bob.transport.send("t", "aggregator", body)
        sender, got = alice.transport.receive("t", 10)
        assert (sender, len(got), got == body) == ("bob", size, True)
    assert alice.transport.receive("t", 0) is None


def test_a_poller_that_leaves_mid_reply_past_the_small_bound_leaves_no_message_behind(server, users):
    """A reply past SMALL is streamed from the route after the front sent what it gathered. A poller that
    closes its connection part-way through has had the message handed out: the reply is still closed, so the
    message's file on disk goes (it would come again after a restart otherwise) and the platform serves on."""
    from pathlib import Path

    from werkbund.local_platform.front import SMALL

    alice, bob = users

    def files():
        return sorted(path for path in Path(server.mailbox_dir).rglob("*") if path.is_file())

    before = files()
    bob.transport.send("t", "aggregator", b"raw!" + os.urandom(8 * SMALL))
    assert len(files()) == len(before) + 1  # the message waits on disk
    reply = requests.get(f"{server.url}/api/v1/tasks/t/messages", params={"timeout": "5"}, stream=True,
                         headers={"Authorization": f"Bearer {alice.transport.token}"}, timeout=30)
    assert reply.status_code == 200 and len(reply.raw.read(SMALL + 1)) == SMALL + 1
    reply.close()  # leaves with most of the 8 MiB unsent
    deadline = time.monotonic() + 30
    while files() != before and time.monotonic() < deadline:  # the front finishes the reply on its own time
        time.sleep(0.05)
    assert files() == before
    assert alice.transport.receive("t", 0) is None  # handed out once, not again
    bob.transport.send("t", "aggregator", b"raw!after")
    assert alice.transport.receive("t", 10) == ("bob", b"raw!after")


@pytest.mark.parametrize("most", ["0", "257", "two", "-1"])
def test_a_poll_asking_for_a_batch_out_of_bounds_is_a_clear_400(server, users, most):
    token = users[0].transport.token
    r = requests.get(f"{server.url}/api/v1/tasks/t/messages", params={"timeout": "0", "most": most},
                     headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
    assert "most" in r.json()["error"]["message"]


def test_a_participant_cannot_send_to_another_participant(users):
    _, bob = users
    with pytest.raises(errors.PermissionDenied):
        bob.transport.send("t", "alice", b"hello")


def test_malformed_message_reaches_the_aggregator_as_malformed(users):
    alice, bob = users
    bob.transport.send("t", "aggregator", b"not a werkbund frame")
    message = alice.aggregator("t").receive(timeout=5)
    assert message.kind == "malformed" and message.sender == "bob" and "bad magic" in message.extra["error"]


def test_a_flooding_participant_fills_only_its_own_share_of_the_aggregators_inbox(server, users):
    """500 MB messages posted without limit grew the server by 1.57 GB after three; now each sender may
    have a bounded number of messages and bytes waiting in an inbox, and is told so (429) beyond."""
    alice, bob = users
    boxes = server.app.extensions["werkbund_mailboxes"]
    saved = boxes.max_pending, boxes.max_pending_bytes
    boxes.max_pending, boxes.max_pending_bytes = 3, 10_000
    try:
        part, agg = bob.participant("t"), alice.aggregator("t")
        token = requests.post(f"{server.url}/api/v1/login",
                              json={"user": "bob", "password": "bob-password"}).json()["data"]["token"]
        url = f"{server.url}/api/v1/tasks/t/messages?to=aggregator"
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.post(url, data=b"x" * 6000, headers=auth).status_code == 202
        r = requests.post(url, data=b"x" * 6000, headers=auth)  # 12,000 bytes would wait: refused
        assert r.status_code == 429 and r.json()["error"]["code"] == "inbox_full"
        assert "already holds 1 of your messages" in r.json()["error"]["message"]
        for _ in range(2):
            assert requests.post(url, data=b"y", headers=auth).status_code == 202
        assert requests.post(url, data=b"y", headers=auth).status_code == 429  # a fourth message
        with pytest.raises(errors.InboxFull):
            part.send("update", b"z", round=0)
        assert agg.receive(timeout=5) is not None  # the aggregator reads one: room for one more
        assert requests.post(url, data=b"y", headers=auth).status_code == 202
        while agg.receive(timeout=0.1) is not None:
            pass
    finally:
        boxes.max_pending, boxes.max_pending_bytes = saved


def test_logout_revokes_the_token_on_the_platform(server, users, tmp_path, monkeypatch):
    """`werkbund logout` revokes the cached token: a copy of it opens nothing afterwards."""
    from click.testing import CliRunner

    from werkbund.client import home_files
    from werkbund.client.cli import cli

    monkeypatch.setenv("WERKBUND_HOME", str(tmp_path))
    env = {"WERKBUND_URL": server.url, "WERKBUND_USER": "bob", "WERKBUND_PASSWORD": "bob-password"}
    assert CliRunner().invoke(cli, ["list"], env=env).exit_code == 0  # logs in and caches the token
    token = home_files.load_token(server.url, "bob")
    api, auth = f"{server.url}/api/v1", {"Authorization": f"Bearer {token}"}
    assert requests.post(f"{api}/call/whoami", json={}, headers=auth).status_code == 200
    result = CliRunner().invoke(cli, ["logout"], env=env)
    assert result.exit_code == 0 and "revoked on the platform" in result.output
    assert requests.post(f"{api}/call/whoami", json={}, headers=auth).status_code == 401
    assert home_files.load_token(server.url, "bob") is None


def test_logins_told_the_platform_is_busy_are_tried_again(server, users, monkeypatch):
    """Many participants starting at once: the platform checks two passwords at a time and tells the rest,
    past the queue's wait, that it is busy (503); each client logs in all the same, a little later."""
    from werkbund.client.transports.http import HttpTransport
    from werkbund.platform import login_guard

    monkeypatch.setattr(login_guard, "QUEUE_SECONDS", 0.01)
    slots, refused = server.service.logins._checks, []
    acquire = slots.acquire

    def observed_acquire(*args, **kwargs):
        got = acquire(*args, **kwargs)
        if not got:
            refused.append("busy")
        return got

    monkeypatch.setattr(slots, "acquire", observed_acquire)
    clients = [HttpTransport(server.url) for _ in range(8)]
    logins = [threading.Thread(target=client.login, args=("bob", "bob-password")) for client in clients]
    for login in logins:
        login.start()
    for login in logins:
        login.join()
    assert refused, "no login was told the platform is busy: the case is not tested"
    assert all(client.token and client.user == "bob" for client in clients)



def test_replies_do_not_wait_for_delayed_acks(server):
    """Every connection the platform accepted has Nagle's algorithm off, so a reply's body does not wait
    for the client's delayed ACK of its headers (40 ms a request, which made a 10-participant round half a
    second slower): asyncio sets TCP_NODELAY only where the listening socket names IPPROTO_TCP."""
    import socket

    session = requests.Session()  # one kept-alive connection, open while the server's side is looked at
    assert session.post(f"{server.url}/api/v1/login", json={"user": "nobody", "password": "x" * 12},
                        timeout=10).status_code == 401
    connections = list(server._server.server_state.connections)
    assert connections
    for connection in connections:
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    session.close()


def test_headers_past_256_KiB_are_refused_with_431_before_the_app_and_the_platform_serves_on(server):
    """The parser (httptools) has no bound of its own: the platform's counts a request's target and headers.
    Up to 256 KiB the request reaches the app (a wrong password: 401); past it, in one header or in many,
    the answer is 431 and the connection is closed, and the next request is served."""
    login = f"{server.url}/api/v1/login"
    body = {"user": "nobody", "password": "x" * 12}
    assert requests.post(login, json=body, headers={"X-Big": "a" * 200_000}, timeout=10).status_code == 401
    for headers in ({"X-Big": "a" * 300_000}, {f"X-Many-{i}": "b" * 1000 for i in range(300)}):
        refused = requests.post(login, json=body, headers=headers, timeout=10)
        assert refused.status_code == 431 and "larger than 262144 bytes" in refused.text
        assert refused.headers["connection"] == "close"
    assert requests.post(login, json=body, timeout=10).status_code == 401


def test_a_final_model_with_a_long_round_history_is_stored_and_fetched(server, users, tmp_path):
    """A final model's metadata (its round history) grows with participants and rounds: 100 participants
    and 10 rounds passed the 256 KiB the server takes in a request's head, and 64 KiB (what requests reads
    of one reply header line) comes at 25 rounds of 10. Past 8 KiB it travels as JSON at the start of the
    body, both ways, from bytes and from a file; smaller, in a header as before."""
    alice, bob = users
    for name, sites, rounds in (("history", 100, 60), ("short-history", 3, 2)):
        alice.create_task(name, {"quorum": 1})
        bob.join_task(name, {"kind": "classification", "features": ["a"], "target": "y", "classes": [0, 1]})
        creator = alice.aggregator(name)
        creator.start()
        meta = {"rounds": [{"round": r, "reported": [f"site-{i:03d}" for i in range(sites)],
                            "metrics": {f"site-{i:03d}": {"loss": 0.5, "accuracy": 0.75} for i in range(sites)}}
                           for r in range(rounds)]}
        creator.finish(b"model bytes", meta)
        assert (len(json.dumps(meta)) > 300 * 1024) == (name == "history")
        model, fetched = bob.get_model(name)
        assert model == b"model bytes" and fetched["meta"] == meta and fetched["size"] == len(b"model bytes")
    big = {"rounds": [{"round": r, "reported": [f"site-{i:03d}" for i in range(100)]} for r in range(1000)]}
    assert len(json.dumps(big)) > 1024**2  # past both header limits several times over
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(3 * 1024**2 + 5))
    alice.create_task("history-file", {"quorum": 1})
    bob.join_task("history-file", {"kind": "classification", "features": ["a"], "target": "y", "classes": [0, 1]})
    alice.aggregator("history-file").start()
    alice.transport.put_model("history-file", path, big)  # streamed from the file, after the metadata
    alice.transport.call("finish_task", task="history-file")
    downloaded = bob.transport.download_model("history-file", tmp_path / "fetched.bin")
    assert (tmp_path / "fetched.bin").read_bytes() == path.read_bytes() and downloaded["meta"] == big


def test_a_platform_that_cuts_off_every_reply_is_asked_again_with_backoff_and_receive_keeps_its_timeout():
    """A message reply that breaks off mid-body is asked for again (the platform keeps a message until it
    was sent whole), but not without pause and not past the caller's timeout: against a server that cuts
    every reply, ``receive`` answers None at its timeout after a few tries."""
    import socket

    from werkbund.client.messages import MAGIC
    from werkbund.client.transports.http import HttpTransport

    listener = socket.create_server(("127.0.0.1", 0))
    asked = []

    def serve():
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with client:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    piece = client.recv(1)
                    if not piece:
                        break
                    head += piece
                asked.append(head.split(b"\r\n", 1)[0])
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nX-Werkbund-Sender: bob\r\n\r\n"
                               + MAGIC + b"\0" * 100)  # then the connection closes: the reply is cut off

    threading.Thread(target=serve, daemon=True).start()
    transport = HttpTransport(f"http://127.0.0.1:{listener.getsockname()[1]}", token="t" * 40, user="alice")
    got = {}
    waiter = threading.Thread(target=lambda: got.setdefault("answer", transport.receive("t", 1.0)), daemon=True)
    waiter.start()
    waiter.join(60)  # a receive that ignored its timeout would still be asking
    listener.close()
    assert not waiter.is_alive() and got == {"answer": None}
    assert asked and all(line.startswith(b"GET /api/v1/tasks/t/messages") for line in asked)
    assert 2 <= len(asked) <= 8, asked  # backoff 0.1-0.2 s, then doubling: a handful in one second, not hundreds
    transport.close()
