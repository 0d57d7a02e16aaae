"""Control commands retried through a platform crash are done once (platform/request_replies.py).

A real `werkbund local-platform` process over a SQLite file, killed with SIGKILL and started again on
the same database: the same request ids (``X-Werkbund-Request-Id``) answer the first replies and the
platform holds one task, one membership, one ledger entry of each; a new id is a new command; a
malformed id is a 400. And the HTTP client itself: it sends one id per call and the same one on the
retry that follows a platform crash between its commit and its reply.
"""
from __future__ import annotations

import socket
import threading

import pytest
import requests
from conftest import PASSWORDS, start_local_platform
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from werkbund.platform.errors import InvalidInput, TaskExists
from werkbund.ledger import entries as E

DEFINITION = {"algorithm": "logistic_regression", "quorum": 1, "rounds": 1}
HEADER = "X-Werkbund-Request-Id"


class Platform:
    """A local platform process over one SQLite file, killed and started again at will."""

    def __init__(self, tmp=None, url: str | None = None):
        self.tmp, self.url = tmp, url
        if url is None:  # a platform of its own
            self.db = f"sqlite:///{tmp / 'platform.sqlite'}"
            self.proc, self.url = start_local_platform(tmp, self.db)

    def kill_and_restart(self) -> None:
        self.proc.kill()  # SIGKILL: nothing in memory survives
        self.proc.wait(timeout=30)
        self.proc, self.url = start_local_platform(self.tmp, self.db)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)

    def post(self, path: str, body=None, token: str | None = None, request_id: str | None = None):
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if request_id is not None:
            headers[HEADER] = request_id
        return requests.post(f"{self.url}/api/v1{path}", json=body or {}, headers=headers, timeout=60)

    def call(self, token: str, command: str, request_id: str | None = None, **params):
        return self.post(f"/call/{command}", params, token, request_id)

    def data(self, token: str, command: str, **params):
        reply = self.call(token, command, **params)
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]

    def user(self, name: str, org: str, **extra) -> str:
        made = self.post("/register", {"user": name, "password": PASSWORDS[name], "org": org, **extra})
        assert made.status_code == 201, made.text
        return self.post("/login", {"user": name, "password": PASSWORDS[name]}).json()["data"]["token"]


def test_a_ledger_statement_is_appended_once_without_a_recorded_reply_even_across_a_kill_9(tmp_path):
    """A signed statement (the ledger's v2 format) needs no recorded reply: sent again, after a kill -9 and
    under any request id, the ledger itself answers the place it already has; nothing goes to
    request_replies (two queries and a row saved on every append, about a dozen a round)."""
    from sqlalchemy import create_engine

    from werkbund.platform.tables import RequestReply

    platform = Platform(tmp_path)
    try:
        key = Ed25519PrivateKey.generate()
        alice = platform.user("alice", "acme")
        bob = platform.user("bob", "beta", public_key=E.encode_public_key(key))
        assert platform.call(alice, "create_task", "create-1", task="t", definition=DEFINITION).status_code == 200
        assert platform.call(bob, "join_task", "join-1", task="t").status_code == 200
        statement = E.make_statement("t", "maintenance", "bob", {"note": "bearing replaced"})
        params = {"task": "t", "statement": statement, "signature": E.encode_signature(E.sign_statement(statement, key))}
        first = platform.call(bob, "ledger_append", "statement-1", **params)
        assert first.status_code == 200, first.text
        platform.kill_and_restart()
        for request_id in ("statement-1", "statement-2", None):
            again = platform.call(bob, "ledger_append", request_id, **params)
            assert again.status_code == 200, again.text
            assert ({k: again.json()["data"][k] for k in ("seq", "leaf_hash", "entry")}
                    == {k: first.json()["data"][k] for k in ("seq", "leaf_hash", "entry")})
        logged = [item["entry"]["type"] for item in platform.data(alice, "ledger_entries", task="t")]
        assert logged.count("maintenance") == 1
        engine = create_engine(platform.db)
        with engine.connect() as connection:
            assert sorted(connection.scalars(select(RequestReply.command))) == ["create_task", "join_task"]
        engine.dispose()
    finally:
        platform.stop()


def test_commands_repeated_after_a_kill_9_answer_their_first_reply_and_are_done_once(tmp_path):
    platform = Platform(tmp_path)
    try:
        key = Ed25519PrivateKey.generate()
        alice = platform.user("alice", "acme")
        bob = platform.user("bob", "beta", public_key=E.encode_public_key(key))
        head = {"size": 0}

        def bobs_entry():
            head.update(platform.data(bob, "ledger_head", task="t"))
            entry = E.make_entry("t", "maintenance", "bob", head["size"], head["prev"], {"note": "bearing replaced"})
            return {"task": "t", "entry": entry, "signature": E.encode_signature(E.sign_entry(entry, key))}

        requests_sent = []  # (token, command, request id, params) in the order they were first sent
        first = {}

        def send(token, command, request_id, **params):
            reply = platform.call(token, command, request_id, **params)
            assert reply.status_code == 200, reply.text
            requests_sent.append((token, command, request_id, params))
            first[request_id] = reply.json()

        send(alice, "create_task", "create-1", task="t", definition=DEFINITION)
        send(bob, "join_task", "join-1", task="t")
        append = bobs_entry()
        send(bob, "ledger_append", "append-1", **append)
        send(alice, "start_task", "start-1", task="t")
        send(alice, "record_round", "round-1", task="t", number=0, reported=["bob"])
        model = requests.put(f"{platform.url}/api/v1/tasks/t/model", data=b"final", timeout=60,
                             headers={"Authorization": f"Bearer {alice}"})
        assert model.status_code == 200, model.text
        send(alice, "finish_task", "finish-1", task="t")
        send(alice, "create_task", "create-gone", task="gone", definition=DEFINITION)
        send(alice, "delete_task", "delete-1", task="gone")

        platform.kill_and_restart()  # as if each reply had been lost with the platform

        for token, command, request_id, params in requests_sent:  # every retry answers the first reply
            again = platform.call(token, command, request_id, **params)
            assert (again.status_code, again.json()) == (200, first[request_id]), (command, again.text)
        assert first["create-1"]["data"]["status"] == "CREATED"  # the first reply, not today's state
        assert first["join-1"]["data"]["participants"] == ["bob"]

        # done once: one task, one membership, one round, each ledger entry once
        assert [t["name"] for t in platform.data(alice, "list_tasks")] == ["t"]
        info = platform.data(alice, "task_info", task="t")
        assert (info["status"], info["participants"], info["joined"]) == ("COMPLETE", ["bob"], 1)
        assert [r["round"] for r in platform.data(alice, "rounds", task="t")] == [0]
        logged = [(item["entry"]["type"], item["entry"]["author"])
                  for item in platform.data(alice, "ledger_entries", task="t")]
        assert logged == [("task_created", "platform"), ("joined", "platform"), ("maintenance", "bob"),
                          ("task_finished", "platform")]

        # a new request id with the same body is a new command, refused on today's state
        created = platform.call(alice, "create_task", "create-2", task="t", definition=DEFINITION)
        assert (created.status_code, created.json()["error"]["code"]) == (409, "task_exists")
        appended = platform.call(bob, "ledger_append", "append-2", **append)
        assert (appended.status_code, appended.json()["error"]["code"]) == (409, "conflict")
        # a request id is one call: used again for another command, it is refused
        reused = platform.call(alice, "fail_task", "create-1", task="t", reason="x")
        assert reused.status_code == 409 and "was used for create_task" in reused.json()["error"]["message"]
        # ids are per user: bob's "create-1" is his own, a new command
        other = platform.call(bob, "create_task", "create-1", task="t-bob", definition=DEFINITION)
        assert other.status_code == 200 and other.json()["data"]["creator"] == "bob"

        # a failed command records nothing: its retry runs it again and answers what is true then
        early = platform.call(bob, "start_task", "start-b", task="t-bob")
        assert (early.status_code, early.json()["error"]["code"]) == (409, "invalid_state"), early.text
        assert platform.data(alice, "join_task", task="t-bob")["participants"] == ["alice"]
        later = platform.call(bob, "start_task", "start-b", task="t-bob")
        assert later.status_code == 200 and later.json()["data"]["status"] == "STARTED", later.text
    finally:
        platform.stop()


def test_a_malformed_request_id_is_a_clear_400_and_runs_nothing(local_platform):
    platform = Platform(url=local_platform)
    carol = platform.user("carol", "gamma")
    for bad in ("", "x" * 65, "../etc", "a b", "id;drop", "ü"):
        reply = platform.call(carol, "create_task", bad, task="bad-id", definition=DEFINITION)
        assert reply.status_code == 400, (bad, reply.text)
        error = reply.json()["error"]
        assert error["code"] == "invalid_input"
        assert error["message"].startswith(f"a request id ({HEADER}) has 1 to 64 letters, digits, '-' or '_'")
    assert platform.call(carol, "task_info", task="bad-id").json()["error"]["code"] == "task_not_found"
    assert platform.call(carol, "whoami", "x" * 64).status_code == 200  # a read takes an id too, and records nothing


class CutAfterCommit:
    """A TCP proxy in front of the platform that forwards each HTTP request and its reply, except the
    first ``create_task`` call: its reply (the task is committed) is held back, ``on_cut`` runs (the
    test kills the platform and starts it again), and the client's connection is closed unanswered."""

    def __init__(self, upstream: str, on_cut):
        self.upstream, self.on_cut = upstream, on_cut
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.calls: list[tuple[str, str | None]] = []  # (path, request id) of every control call
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket):
        with client:
            reader = client.makefile("rb")
            while True:
                head, body = _read_message(reader)
                if head is None:
                    return
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split()[1]
                ids = [line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith(HEADER.lower())]
                if "/call/" in path:
                    self.calls.append((path, ids[0] if ids else None))
                host, port = self.upstream.removeprefix("http://").split(":")
                with socket.create_connection((host, int(port))) as up:
                    up.sendall(head + body)
                    reply_head, reply_body = _read_message(up.makefile("rb"))
                if path.endswith("/call/create_task") and not self.cut.is_set():
                    self.cut.set()
                    self.on_cut()
                    return  # closes the client's connection: the reply is lost
                client.sendall(reply_head + reply_body)

    def close(self):
        self.listener.close()


def _read_message(reader):
    """(head, body) of one HTTP/1.1 message with a Content-Length (what the platform's control calls use)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        if not line:
            return None, None
        head += line
    length = 0
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return head, reader.read(length) if length else b""


def test_the_http_client_retries_a_call_cut_by_a_crash_with_the_same_request_id(tmp_path, monkeypatch):
    from werkbund.client.transports.http import HttpTransport

    monkeypatch.setenv("WERKBUND_RECONNECT_SECONDS", "120")
    platform = Platform(tmp_path)
    proxy = CutAfterCommit(platform.url, on_cut=lambda: (platform.kill_and_restart(),
                                                         setattr(proxy, "upstream", platform.url)))
    try:
        platform.user("alice", "acme")
        transport = HttpTransport(proxy.url)
        transport.login("alice", PASSWORDS["alice"])
        created = transport.call("create_task", task="t", definition=DEFINITION)  # cut, retried, answered
        assert proxy.cut.is_set()
        assert (created["name"], created["status"], created["creator"]) == ("t", "CREATED", "alice")
        tries = [rid for path, rid in proxy.calls if path.endswith("/create_task")]
        assert len(tries) == 2 and tries[0] == tries[1] and len(tries[0]) == 32  # one id, sent twice

        assert [t["name"] for t in transport.call("list_tasks")] == ["t"]  # made once
        logged = [item["entry"]["type"] for item in transport.call("ledger_entries", task="t")]
        assert logged == ["task_created"]
        ids = [rid for _path, rid in proxy.calls]
        assert len(set(ids)) == len(ids) - 1  # every other call had an id of its own
        transport.close()
    finally:
        proxy.close()
        platform.stop()


def test_replies_older_than_the_retention_are_deleted_and_newer_ones_kept(tmp_path, monkeypatch):
    from datetime import timedelta

    from werkbund.platform import request_replies
    from werkbund.platform.commands import dispatch
    from werkbund.platform.tables import RequestReply, utcnow
    from werkbund.platform.service import PlatformService

    monkeypatch.setenv("WERKBUND_RECONNECT_SECONDS", "172800")  # two days' patience: kept four days
    assert request_replies.retention() == timedelta(days=4)
    monkeypatch.delenv("WERKBUND_RECONNECT_SECONDS")
    assert request_replies.retention() == timedelta(days=1)
    service = PlatformService(f"sqlite:///{tmp_path / 'platform.sqlite'}")
    service.register("alice", PASSWORDS["alice"], "acme")
    with service.db.session() as s:
        s.add(RequestReply(user_name="alice", request_id="old", command="start_task", reply={"data": 1},
                           created_at=utcnow() - timedelta(days=1, minutes=1)))
        s.add(RequestReply(user_name="alice", request_id="recent", command="start_task", reply={"data": 2},
                           created_at=utcnow() - timedelta(hours=23)))
    monkeypatch.setitem(request_replies._pruned, "at", float("-inf"))  # due now, not in a minute
    dispatch(service, "alice", "create_task", {"task": "t", "definition": DEFINITION}, request_id="new")
    with service.db.session() as s:
        assert sorted(s.scalars(select(RequestReply.request_id))) == ["new", "recent"]
    assert dispatch(service, "alice", "start_task", {"task": "t"}, request_id="recent") == 2  # still answered
    service.db.dispose()


@pytest.mark.slow
@pytest.mark.broker
def test_the_cloud_platform_answers_a_repeated_message_id_after_a_kill_9_from_its_database(tmp_path):
    """`werkbund platform serve` killed after answering; the same request (same ``message_id``) sent to
    the service started again on the same database answers the first reply and creates nothing."""
    import json
    import uuid

    import pika
    from support.cloud_support import MANAGEMENT, database, require_broker, start_cloud_platform

    from werkbund.client.transports.amqp.transport import AmqpTransport
    from werkbund.platform.amqp import names
    from werkbund.platform.amqp.broker_admin import BrokerAdmin
    from werkbund.platform.errors import error_from_dict

    require_broker()
    vhost = f"wb-test-{uuid.uuid4().hex[:8]}"
    with database("sqlite", tmp_path) as db_url:
        proc, url = start_cloud_platform(tmp_path, db_url, vhost)
        transport = AmqpTransport(url)
        try:
            transport.register("alice", PASSWORDS["alice"], "acme")
            transport.login("alice", PASSWORDS["alice"])

            def request(command, message_id, **params):
                corr = uuid.uuid4().hex
                properties = pika.BasicProperties(
                    reply_to=names.REPLY_TO, correlation_id=corr, message_id=message_id, type=command,
                    user_id=names.broker_user(transport.account, transport.broker_vhost), headers={},
                    content_type="application/json")
                headers, body = transport._session().request(corr, json.dumps(params).encode(), properties, 60)
                reply = json.loads(body)
                if headers.get("status") != "ok":
                    raise error_from_dict(reply["error"])
                return reply["data"]

            first = request("create_task", "cloud-create-1", task="t", definition=DEFINITION)
            proc.kill()  # SIGKILL: RecentReplies, in memory, is gone
            proc.wait(timeout=30)
            proc, _ = start_cloud_platform(tmp_path, db_url, vhost)
            assert request("create_task", "cloud-create-1", task="t", definition=DEFINITION) == first
            with pytest.raises(TaskExists):  # a new message id is a new command
                request("create_task", "cloud-create-2", task="t", definition=DEFINITION)
            with pytest.raises(InvalidInput, match="a request id"):
                request("create_task", "not/valid", task="t2", definition=DEFINITION)
            assert [t["name"] for t in transport.call("list_tasks")] == ["t"]
            assert [e["entry"]["type"] for e in transport.call("ledger_entries", task="t")] == ["task_created"]
        finally:
            transport.close()
            proc.terminate()
            proc.wait(timeout=20)
            admin = BrokerAdmin(MANAGEMENT, vhost)
            for account in admin.broker_users():
                admin.delete_broker_user(account)
            admin.delete_vhost()
