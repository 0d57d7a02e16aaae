"""Crashes and restarts: every party of a task is a real process, killed with SIGKILL at a chosen point.

The local platform keeps its task messages in files beside its SQLite database (``DiskMailboxes``),
so a platform killed mid-task and started again on the same database and port loses no message, and
its clients wait for it (``WERKBUND_RECONNECT_SECONDS``) instead of exiting. A participant killed and
run again asks the aggregator for a resync; an aggregator killed and run with ``--resume`` sends the
set-up again. Each scenario ends COMPLETE with every round recording both participants' updates once.

A participant is frozen (SIGSTOP) to hold a round open, so that the kill lands mid-task whatever the
speed of the machine: the round cannot end before the participant is let go.
"""
from __future__ import annotations

import os

import pytest
from support.process_federation import CloudFederation, Federation, free_port, hold_at

from werkbund.platform.errors import InvalidInput, Unavailable
from werkbund.platform.storage.mailboxes import DiskMailboxes, Mailboxes



# ------------------------------------------------------------------ the durable mailboxes alone
def test_disk_mailboxes_keep_every_accepted_message_across_a_restart(tmp_path):
    folder = tmp_path / "mail"
    boxes = DiskMailboxes(folder)
    assert boxes.put("t", ["bob", "carol"], "alice", b"round 0", message_id="m1")
    assert not boxes.put("t", ["bob", "carol"], "alice", b"round 0", message_id="m1")  # a repeat: stored once
    boxes.put("t", ["aggregator"], "bob", b"update 0")
    boxes.put("t", ["bob"], "alice", b"round 1")
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}
    assert sorted(p.stat().st_nlink for p in files) == [1, 1, 2, 2]  # the broadcast is one file, linked twice
    read = boxes.get("t", "bob", 0)
    assert (read.sender, read.body) == ("alice", b"round 0")
    read.done()  # handed to its reader: gone for good

    again = DiskMailboxes(folder)  # as after kill -9: only what is on disk
    assert not again.put("t", ["bob", "carol"], "alice", b"round 0", message_id="m1")
    assert [again.get("t", "bob", 0).body, again.get("t", "bob", 0)] == [b"round 1", None]
    assert again.get("t", "carol", 0).body == b"round 0"
    taken = again.get("t", "aggregator", 0)
    assert (taken.sender, taken.body) == ("bob", b"update 0")  # not done(): the reply never went out
    assert DiskMailboxes(folder).get("t", "aggregator", 0).body == b"update 0"  # so it comes again


def test_a_put_cut_off_before_its_commit_is_in_no_inbox_and_bounds_still_hold(tmp_path):
    folder = tmp_path / "mail"
    boxes = DiskMailboxes(folder, max_pending=2)
    boxes.put("t", ["bob", "carol"], "alice", b"whole")
    staged = folder / ".incoming" / "0000000000000099"  # what a platform killed mid-put leaves
    staged.write_bytes(b"half")
    for inbox in ("bob", "carol"):  # linked into both inboxes, but never committed
        os.link(staged, folder / b"t".hex() / inbox.encode().hex() / f"0000000000000099-{b'alice'.hex()}")
    again = DiskMailboxes(folder, max_pending=2)
    assert [m.body for m in (again.get("t", "bob", 0), again.get("t", "carol", 0))] == [b"whole", b"whole"]
    assert again.get("t", "bob", 0) is None and not staged.exists()
    again.put("t", ["aggregator"], "bob", b"1")
    again.put("t", ["aggregator"], "bob", b"2")
    with pytest.raises(Exception, match="already holds 2 of your messages"):
        again.put("t", ["aggregator"], "bob", b"3")
    memory = Mailboxes()
    assert memory.put("t", ["a"], "b", b"x", message_id="k") and not memory.put("t", ["a"], "b", b"x", message_id="k")
    with pytest.raises(InvalidInput, match="a message id has 1 to 64 letters"):
        memory.put("t", ["a"], "b", b"x", message_id="../x")


def test_a_platform_never_reached_fails_at_once_not_after_the_reconnect_patience(monkeypatch):
    from werkbund.client.transports.http import HttpTransport

    monkeypatch.setenv("WERKBUND_RECONNECT_SECONDS", "300")
    transport = HttpTransport(f"http://127.0.0.1:{free_port()}")
    assert transport.reconnect_seconds == 300 and not transport.reached
    with pytest.raises(Unavailable, match="cannot reach the local platform"):  # a wrong URL: no 5 minutes' wait
        transport.login("alice", "x")


# ------------------------------------------------------------------ real processes
@pytest.fixture
def federation(tmp_path):
    fed = Federation(tmp_path)
    yield fed
    fed.close()


# the participant killed at each point: the one whose update is still to come (before: bob, during:
# carol), or one whose update already waits in the aggregator's inbox (after: bob)
KILLED_PARTICIPANT = {"before": "bob", "during": "carol", "after": "bob"}


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "during", "after"])
def test_a_platform_killed_around_a_rounds_updates_and_restarted_loses_none_and_no_client_exits(federation, when):
    federation.setup_task()
    hold_at(federation, when)
    federation.kill(federation.platform)
    assert all(proc.poll() is None for proc in federation.procs.values())  # every client waits for it
    federation.start_platform()  # the same database and port
    federation.finish()  # lets every frozen process go on
    running = {"before": ("aggregate", "carol"), "during": ("aggregate", "bob"), "after": ("bob", "carol")}[when]
    for name in running:  # those not frozen while the platform was down waited for it
        assert "platform unreachable; retrying for up to 300 s" in federation.log(name)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "during", "after"])
def test_a_participant_killed_around_a_rounds_updates_and_run_again_is_resynced(federation, when):
    federation.setup_task()
    hold_at(federation, when)
    name = KILLED_PARTICIPANT[when]
    federation.kill(federation.procs[name])
    federation.participate(name)
    federation.finish()
    assert "this participant ran before" in federation.log(name)
    assert f"{name} was restarted" in federation.log("aggregate")


@pytest.mark.slow
def test_everything_killed_then_platform_aggregator_resume_and_participants_restarted(federation):
    """The case of the issue: the platform, the aggregator and both participants killed mid-task; the
    platform restarted on its database, `aggregate --resume`, both participants run again."""
    federation.setup_task()
    federation.hold_a_round_open()
    for name in ("aggregate", "bob", "carol"):
        federation.kill(federation.procs[name])
    federation.kill(federation.platform)
    federation.start_platform()
    federation.aggregate("--resume")
    federation.participate("bob")
    federation.participate("carol")
    federation.finish()
    log = federation.log("aggregate")
    assert "resumed from the checkpoint of round" in log
    assert "AttributeError" not in log + federation.log("bob") + federation.log("carol")


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "during", "after"])
def test_an_aggregator_killed_around_a_rounds_updates_resumes_with_the_participants_that_kept_running(
        federation, when):
    federation.setup_task()
    hold_at(federation, when)
    federation.kill(federation.procs["aggregate"])
    federation.aggregate("--resume")
    federation.finish()
    assert "resumed from the checkpoint of round" in federation.log("aggregate")


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.parametrize("when", ["before", "during", "after"])
def test_a_cloud_platform_service_killed_around_a_rounds_updates_and_restarted_loses_no_update(tmp_path, when):
    """`werkbund platform serve` killed (SIGKILL) at each point of a round; the broker keeps the queues,
    the service is started again on its database, the task ends COMPLETE with every update once."""
    (tmp_path / "platform-home").mkdir()
    fed = CloudFederation(tmp_path)
    try:
        fed.setup_task()
        hold_at(fed, when)
        fed.kill(fed.platform)
        assert all(proc.poll() is None for proc in fed.procs.values())
        fed.start_platform()
        fed.finish()
    finally:
        fed.close()
