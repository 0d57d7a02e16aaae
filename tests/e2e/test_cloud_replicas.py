"""Replicas of the cloud platform: two `werkbund platform serve` processes on one PostgreSQL database
and one broker vhost answer the requests of one task together, and one of them killed mid-task loses
nothing.

Each replica has a WERKBUND_HOME of its own, as on another host; what they share is what
docs/operations.md says they must: the database, the ledger key file (``WERKBUND_LEDGER_KEY``), the
final models' folder (``WERKBUND_MODEL_DIR``) and the blob folder. They start at the same moment on
an empty database. A replica's log has one line per request it answered (``<user> <command> -> ok``):
both logs have some of the aggregator's and participants' ledger and round requests before the kill,
and the one left has more after it. The kill lands in a round held open (carol frozen with bob's
update in, as tests/e2e/test_crash_recovery.py holds it); the task still ends COMPLETE with every update
of every round once, and the ledger verifies for every member against the one platform key.

The rules that need one writer across replicas are tested on their own: the schema made once, a
retried command waiting for its first attempt on another replica, a replica with another ledger key
refused, and a blob that crosses replicas.
"""
from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.cloud_support import postgres_database
from sqlalchemy import text
from support.process_federation import CloudFederation, hold_at, wait_for

from werkbund.platform.db import Database
from werkbund.platform.errors import AlreadyJoined, InvalidState
from werkbund.platform.ledger.store import load_or_create_key
from werkbund.platform.replicas import check_ledger_key
from werkbund.platform.request_replies import run_once
from werkbund.platform.service import PlatformService

DEFINITION = {"algorithm": "logistic_regression", "quorum": 1, "rounds": 1}
# every request a replica answered (a round now costs the ledger one request, so the round's own requests
# before the hold can all land on one replica; the task's polls, joins and reads land on both)
ANSWERED = re.compile(r" [a-z_]+ -> ok \(")


class ReplicatedFederation(CloudFederation):
    """CloudFederation with two replicas of the service on a PostgreSQL database."""

    def __init__(self, tmp, db_url: str, rounds: int = 5):
        super().__init__(tmp)
        self.db = db_url
        self.definition["rounds"] = self.n_rounds = rounds
        self.shared = {"WERKBUND_LEDGER_KEY": str(tmp / "shared" / "ledger-key.pem"),
                       "WERKBUND_MODEL_DIR": str(tmp / "shared" / "models")}
        load_or_create_key(tmp / "shared" / "ledger-key.pem")  # made once, as the operator gives it to each
        self.replicas: dict[str, object] = {}

    def start_platform(self):
        from support.cloud_support import start_cloud_platform

        def start(name: str):
            folder = self.tmp / name
            folder.mkdir()
            proc, _ = start_cloud_platform(folder, self.db, self.vhost, env=self.shared,
                                           extra=("--workers", "2", "--blob-dir", str(self.tmp / "shared" / "blobs")))
            return name, proc

        with ThreadPoolExecutor(2) as pool:  # at the same moment, on an empty database
            self.replicas = dict(pool.map(start, ("r1", "r2")))
        self.platform = self.replicas["r2"]  # the one that stays

    def answered(self, name: str) -> int:
        """How many requests replica ``name`` answered, from its log."""
        return len(ANSWERED.findall((self.tmp / name / "cloud-platform.log").read_text()))

    def close(self):
        for proc in self.replicas.values():
            if proc.poll() is None:
                self.kill(proc)
        super().close()


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.postgres
def test_two_replicas_serve_one_task_and_one_killed_mid_task_loses_nothing(tmp_path):
    (tmp_path / "platform-home").mkdir()
    with postgres_database() as db_url:
        fed = ReplicatedFederation(tmp_path, db_url)
        try:
            fed.setup_task()
            hold_at(fed, "during")  # carol frozen in round R, bob's update of R in
            before = {name: fed.answered(name) for name in fed.replicas}
            assert all(before.values()), f"a replica answered no request: {before}"
            fed.kill(fed.replicas["r1"])  # SIGKILL
            assert all(proc.poll() is None for proc in fed.procs.values())  # every client goes on
            info = fed.finish()  # carol let go; COMPLETE, every round with both updates once
            assert fed.answered("r2") > before["r2"]
            assert info["status"] == "COMPLETE"
            for user in ("alice", "bob", "carol"):
                verified = fed.cli.run(user, "ledger", "verify", "--task", "t")
                assert verified.returncode == 0, verified.stdout + verified.stderr
        finally:
            fed.close()


def test_a_replica_with_another_ledger_key_is_refused(tmp_path):
    """Replicas on other hosts each make a key of their own unless given one: the second is refused."""
    url = f"sqlite:///{tmp_path / 'platform.sqlite'}"
    first = PlatformService(Database(url), ledger_key=tmp_path / "first.pem")
    check_ledger_key(first)  # an empty ledger: any key
    first.register("alice", "alice-secret-1", "acme")
    first.create_task("alice", "t", dict(DEFINITION))  # a task_created entry and its checkpoint, signed
    check_ledger_key(first)
    check_ledger_key(PlatformService(Database(url), ledger_key=tmp_path / "first.pem"))  # the same key file
    other = PlatformService(Database(url), ledger_key=tmp_path / "other.pem")
    with pytest.raises(InvalidState, match="did not sign the ledger.*WERKBUND_LEDGER_KEY"):
        check_ledger_key(other)


@pytest.mark.postgres
def test_a_retry_on_another_replica_waits_for_the_first_attempt_and_answers_its_reply(tmp_path):
    """The same join_task (one request id) in two replicas at once: the second waits for the first's
    transaction (an advisory lock) and answers its recorded reply, not already_joined."""
    with postgres_database() as url:
        key = tmp_path / "key.pem"
        first, second = (PlatformService(Database(url), ledger_key=key) for _ in range(2))
        first.register("alice", "alice-secret-1", "acme")
        first.register("bob", "bob-secret-22", "beta")
        first.create_task("alice", "t", dict(DEFINITION))
        inside, release, replies = threading.Event(), threading.Event(), {}

        def held_join():
            reply = first.join_task("bob", "t")
            inside.set()
            release.wait(60)  # the transaction (and its lock) stays open until the retry waits
            return reply

        def attempt(name, service, run):
            try:
                replies[name] = run_once(service, "bob", "join_task", "req-1", run)
            except AlreadyJoined as exc:
                replies[name] = exc

        threads = [threading.Thread(target=attempt, args=("first", first, held_join))]
        threads[0].start()
        assert inside.wait(60)
        threads.append(threading.Thread(target=attempt, args=("retry", second,
                                                             lambda: second.join_task("bob", "t"))))
        threads[1].start()
        waiting = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                   "AND datname = current_database()")
        with second.db.engine.connect() as connection:
            wait_for(lambda: connection.execute(text(waiting)).scalar() > 0, 60, "the retry to wait for the lock")
        release.set()
        for thread in threads:
            thread.join(60)
        assert replies["retry"] == replies["first"], replies
        assert [m["user"] for m in first.participants("alice", "t")] == ["bob"]
        for service in (first, second):
            service.db.dispose()



def test_a_blob_announced_uploaded_and_read_through_different_replicas(tmp_path):
    """Replicas share the blob folder behind one load-balanced URL, so each request may reach another:
    bob announces through one replica and uploads through the other, alice reads through the first
    from before the upload starts (following the growing file), and again once it is complete."""
    from werkbund.client.transports.amqp.blobs import BlobClient
    from werkbund.platform.amqp.blob_server import BlobServer
    from werkbund.platform.storage.blobs import BlobStore

    url = f"sqlite:///{tmp_path / 'platform.sqlite'}"
    services = [PlatformService(Database(url), ledger_key=tmp_path / "key.pem") for _ in range(2)]
    for user in ("alice", "bob"):
        services[0].register(user, "a-long-password-1", "org")
    services[0].create_task("alice", "t", {"algorithm": "neural_network", "quorum": 1})
    services[0].join_task("bob", "t")
    servers = [BlobServer(service, BlobStore(tmp_path / "blobs")).start() for service in services]
    try:
        token = services[0].transfer_token("bob", "t")["token"]
        bob_first, bob_second = (BlobClient(server.url, token) for server in servers)
        alice = BlobClient(servers[0].url, services[1].transfer_token("alice", "t")["token"])
        data = os.urandom(24 * 1024 * 1024)
        blob_id = bob_first.announce("t", len(data))
        got = {}
        reader = threading.Thread(target=lambda: got.update(result=alice.download("t", blob_id, len(data))))
        reader.start()
        ref = bob_second.upload("t", data, blob_id)
        reader.join(60)
        assert got["result"] == (bytearray(data), "bob") and ref["id"] == blob_id
        assert alice.download("t", blob_id, len(data), ref["sha256"])[0] == data  # and once it is complete
    finally:
        for server in servers:
            server.stop()
        for service in services:
            service.db.dispose()


@pytest.mark.postgres
def test_replicas_started_together_on_an_empty_database_make_its_schema_once(tmp_path):
    """Four processes' worth of Database() at one moment: one makes the schema, the others wait and use it."""
    with postgres_database() as url:
        barrier, actions, errors = threading.Barrier(4), [], []

        def open_database():
            barrier.wait(30)
            try:
                db = Database(url)
                actions.append(db.schema_action)
                db.dispose()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_database) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors and sorted(actions) == ["created", "current", "current", "current"], (actions, errors)
