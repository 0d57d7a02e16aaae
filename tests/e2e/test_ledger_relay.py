"""Statements riding on updates (issue 15): the aggregator appends a round's statements with one
``ledger_relay`` request and forwards the proofs on its next broadcast; a participant makes no ledger
request of its own once it has pinned the platform's key. The aggregator is only a courier: a statement
it drops is appended by its author, a proof it forges or mangles sends the participant to the platform
directly, and a log the platform rewrites is still caught. On SQLite and on the real PostgreSQL."""
import hashlib

import pytest
from support.ledger_members import RelayedMember, Direct, make_task, member, report
from support.ledger_members import platform  # noqa: F401 (the fixture)

from werkbund.client.ledger import LedgerError
from werkbund.client.ledger_relay import RECEIPT_KEY_CHARS
from werkbund.ledger import entries as E
from werkbund.platform.errors import InvalidInput, InvalidState, PermissionDenied
from werkbund.platform.ledger.store import LedgerCheckpoint, LedgerEntry

PARTICIPANTS = ("bob", "carol", "dave")


def _round(alice, participants, number, receipts=None, meddle=None):
    """One round's ledger work as the engine does it: each participant settles the last round's receipts
    and sends a statement with its update; the aggregator checks and queues each, relays them after the
    exchange, then relays its aggregate entry with the audit. ``meddle(name, fields)``: the aggregator's
    hand on what it relays. Returns the receipts for the next broadcast."""
    alice.queue_entry("round_started", {"round": number, "global_sha256": "00" * 32})
    for p in participants:
        p.take_receipts(receipts)
        update = f"{p.name}-{number}".encode()
        fields = p.statement_for_update("update_submitted", {"round": number, "n_samples": 5,
                                                             "sha256": hashlib.sha256(update).hexdigest()})
        payload = alice.check_relayed(p.name, "update_submitted", number, fields["ledger_statement"],
                                      fields["ledger_signature"])
        assert payload["sha256"] == hashlib.sha256(update).hexdigest()
        alice.relay_cosign(p.name, fields.get("ledger_cosign"))
        if meddle is not None:
            meddle(p.name, fields)
    alice.flush_relay()
    alice.queue_entry("aggregate_published", {"round": number, "sha256": "11" * 32,
                                              "updates": sorted(p.name for p in participants)})
    return alice.flush_relay(audit=True)


def _cast(platform, task):
    alice = member(platform, "alice", task, kind=RelayedMember)
    return alice, [member(platform, name, task, n, kind=RelayedMember) for n, name in enumerate(PARTICIPANTS, 1)]


def _asked(handles):
    asked = {h.name: list(h.transport.asked) for h in handles}
    for h in handles:
        h.transport.asked.clear()
    return asked


def test_a_round_costs_the_ledger_two_relays_and_no_request_of_a_participant(platform):
    service = make_task(platform, "relay", PARTICIPANTS)
    alice, participants = _cast(platform, "relay")
    receipts = _round(alice, participants, 0)
    first = _asked([alice, *participants])
    # the member keys read once from the verified log, then the two relays
    assert first["alice"] == ["ledger_entries", "ledger_checkpoint", "ledger_relay", "ledger_relay"]
    assert all(first[p.name] == [] for p in participants)
    for number in (1, 2):
        receipts = _round(alice, participants, number, receipts)
        asked = _asked([alice, *participants])
        assert asked["alice"] == ["ledger_relay", "ledger_relay"]
        # round 1: the first receipts, checked by each participant against the platform key it pins
        # with one audit of its own; from then on the receipts settle everything
        assert all(asked[p.name] == (["ledger_audit"] if number == 1 else []) for p in participants), asked
    for p in participants:
        assert p.take_receipts(receipts)["relayed"] is True
        assert p.transport.asked == []
        assert len(p._ledger["own"]) == 3 and p._ledger["proven"] == 3
    entries = [i["entry"] for i in service.ledger.entries("alice", "relay")]
    for name in PARTICIPANTS:  # each statement appended once, by the relay
        assert [e["payload"]["round"] for e in entries if e["author"] == name] == [0, 1, 2]
    types = [e["type"] for e in entries if e["author"] != E.PLATFORM_AUTHOR]
    assert types == (["round_started"] + ["update_submitted"] * 3 + ["aggregate_published"]) * 3
    checked = report(service, "relay")
    assert checked.ok, str(checked)
    # the participants' cosignatures rode on their updates and were relayed
    size = alice._ledger["seen"]["size"]
    earlier = service.ledger.checkpoint("alice", "relay", receipts["consistency"][0]["old_size"])
    assert set(earlier["cosignatures"]) >= {"alice", *PARTICIPANTS}
    assert size == len(entries)


def test_what_the_aggregator_drops_or_mangles_each_participant_settles_with_the_platform(platform):
    """bob's statement never reaches the log through the relay, carol's proof is mangled, dave gets a
    checkpoint with a forged signature: each appends or audits directly, no false alarm, and the log holds
    every statement once."""
    service = make_task(platform, "courier", PARTICIPANTS)
    alice, participants = _cast(platform, "courier")
    bob, carol, dave = participants
    receipts = _round(alice, participants, 0)
    receipts = _round(alice, participants, 1, receipts)
    for p in participants:
        p.take_receipts(receipts)
    _asked([alice, *participants])

    def drop_bob(name, fields):
        if name == "bob":
            alice._ledger["queue"].pop()

    receipts = _round(alice, participants, 2, meddle=drop_bob)
    carol_spot = receipts["placed"][carol._ledger["pending"][0][1][:RECEIPT_KEY_CHARS]]
    receipts["nodes"].append("ab" * 32)  # carol's proof, and only hers, names a hash that is no node of the tree
    carol_spot[2] = [len(receipts["nodes"]) - 1] * len(carol_spot[2] or [1])
    forged = dict(receipts, signature=E.encode_signature(b"\0" * 64))
    bob.take_receipts(receipts)
    carol.take_receipts(receipts)
    dave.take_receipts(forged)
    asked = _asked(participants)
    assert asked["bob"] == ["ledger_append", "ledger_audit"]  # not relayed: appended by its author
    assert asked["carol"] == ["ledger_append", "ledger_audit"]  # (its place asked of the platform itself)
    assert asked["dave"] == ["ledger_append", "ledger_audit"]
    entries = [i["entry"] for i in service.ledger.entries("alice", "courier")]
    for name in PARTICIPANTS:
        assert [e["payload"]["round"] for e in entries if e["author"] == name] == [0, 1, 2]
    for p in participants:
        assert p._ledger["proven"] == len(p._ledger["own"]) == 3
    assert report(service, "courier").ok


def test_a_log_the_platform_rewrites_is_caught_whoever_carries_the_proofs(platform):
    service = make_task(platform, "rewrite", PARTICIPANTS)
    alice, participants = _cast(platform, "rewrite")
    receipts = _round(alice, participants, 0)
    receipts = _round(alice, participants, 1, receipts)
    for p in participants:
        p.take_receipts(receipts)
    seen = participants[0]._ledger["seen"]["size"]
    with service.db.session() as s:  # the platform drops the last round's entries and heads, then goes on
        s.query(LedgerEntry).filter(LedgerEntry.task == "rewrite", LedgerEntry.seq >= seen - 5).delete()
        s.query(LedgerCheckpoint).filter(LedgerCheckpoint.task == "rewrite",
                                         LedgerCheckpoint.size > seen - 5).delete()
    alice._ledger.update(own=[], proven=0, seen=None)  # (an aggregator in league with the platform)
    receipts = _round(alice, participants, 2)
    with pytest.raises(LedgerError, match="not consistent with checkpoint|not included|promised"):
        participants[0].take_receipts(receipts)


def test_the_platform_relays_for_the_creator_only_and_refuses_a_bad_statement_alone(platform):
    service = make_task(platform, "rules", ("bob", "carol"))
    keys = platform.keys

    def item(author, key, round=0):
        statement = E.make_statement("rules", "update_submitted", author, {"round": round})
        return {"statement": statement, "signature": E.encode_signature(E.sign_statement(statement, key))}

    good, forged, outsider = item("bob", keys["bob"]), item("carol", keys["bob"]), item("dave", keys["dave"])
    with pytest.raises(PermissionDenied, match="only the creator"):
        Direct(service, "bob").call("ledger_relay", task="rules", items=[good])
    alice = Direct(service, "alice")
    answer = alice.call("ledger_relay", task="rules", items=[forged, good, outsider],
                        audit={"seqs": [], "old_sizes": []})
    first, placed, last = answer["results"]
    assert "does not verify with carol's registered key" in first["error"]
    assert "dave is not a member" in last["error"]
    assert E.statement_of(placed["entry"]) == good["statement"] and placed["proof"] is not None
    again = alice.call("ledger_relay", task="rules", items=[good])  # an answer lost, the relay sent again
    assert again["results"][0]["entry"]["seq"] == placed["entry"]["seq"]
    entries = [i["entry"] for i in service.ledger.entries("alice", "rules")]
    assert [e["author"] for e in entries].count("bob") == 1 and len(entries) == placed["entry"]["seq"] + 1
    assert answer["checkpoint"]["size"] == len(entries)
    assert report(service, "rules").ok


def test_the_aggregator_refuses_a_statement_not_signed_by_its_sender(platform):
    """Another member's statement, another round's, a signature by someone else, or a statement too large to
    ride in the round's relay: each refused with its reason, none queued."""
    make_task(platform, "sender", PARTICIPANTS)
    alice, (bob, carol, _) = _cast(platform, "sender")
    fields = bob.statement_for_update("update_submitted", {"round": 0, "sha256": "ab" * 32})
    assert "not a update_submitted statement of carol" in alice.check_relayed(
        "carol", "update_submitted", 0, fields["ledger_statement"], fields["ledger_signature"])
    assert "for round 0, not 1" in alice.check_relayed("bob", "update_submitted", 1, fields["ledger_statement"],
                                                       fields["ledger_signature"])
    other = carol.statement_for_update("update_submitted", {"round": 0, "sha256": "ab" * 32})
    assert "not signed with bob's key" in alice.check_relayed("bob", "update_submitted", 0, fields["ledger_statement"],
                                                              other["ledger_signature"])
    assert alice._ledger["queue"] == []  # nothing refused is relayed
    big = bob.statement_for_update("update_submitted", {"round": 0, "sha256": "ab" * 32, "note": "x" * 70_000})
    assert "a relayed statement may have at most 65536" in alice.check_relayed(
        "bob", "update_submitted", 0, big["ledger_statement"], big["ledger_signature"])
    assert alice._ledger["queue"] == []


def test_a_round_record_rides_on_the_relay_and_both_or_neither_are_stored(platform):
    """The round's record (record_round's parameters) goes with the relay: one request and one transaction
    for a round's bookkeeping. A record the platform refuses (the task not started) refuses the relay too:
    neither the record nor the statements are stored, and the aggregator is told why."""
    service = make_task(platform, "record", ("bob",))
    statement = E.make_statement("record", "update_submitted", "bob", {"round": 0})
    item = {"statement": statement, "signature": E.encode_signature(E.sign_statement(statement, platform.keys["bob"]))}
    alice = Direct(service, "alice")
    record = {"number": 0, "reported": ["bob"], "rejected": {}, "missing": [], "metrics": {"accuracy": 0.75}}
    before = len(service.ledger.entries("alice", "record"))
    with pytest.raises(InvalidState, match="rounds are recorded only while it runs"):
        alice.call("ledger_relay", task="record", items=[item], record=record)
    assert len(service.ledger.entries("alice", "record")) == before and service.rounds("alice", "record") == []
    service.start_task("alice", "record")
    answer = alice.call("ledger_relay", task="record", items=[item], record=record)
    assert answer["record"]["round"] == 0 and "entry" in answer["results"][0]
    assert [(r["round"], r["reported"], r["metrics"]) for r in service.rounds("bob", "record")] == \
        [(0, ["bob"], {"accuracy": 0.75})]
    with pytest.raises(InvalidInput, match="record.bogus"):
        alice.call("ledger_relay", task="record", record={**record, "bogus": 1})
