"""Entry format v2 (issue 15): the log sequences signed statements and promises where each is, so an
append is one request whatever the load and an audit is one request; a promise the platform breaks, a
replayed statement and a forged answer are caught; logs of the old format still verify."""
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.ledger_members import MEMBERS, Direct, make_task as _task, member as _member, report as _report
from support.ledger_members import platform  # noqa: F401 (the fixture)

from werkbund.client.ledger import LedgerError, check_promise
from werkbund.ledger import entries as E
from werkbund.platform.ledger.store import LedgerEntry
from werkbund.ledger.verify import verify_log

def test_members_appending_at_once_each_land_with_one_request(platform):
    """Ten handles (two per member, alternating between the platform processes) append five entries
    each at the same moment: every append is one request (no head read, no conflict, no retry), the
    log is gap-free and verifies, and each member's audit is one request proving its promises."""
    service = _task(platform, "rush")
    authors = [(name, n) for n, name in enumerate([*MEMBERS, *MEMBERS, "alice", "alice"])]
    handles = [_member(platform, name, "rush", n) for name, n in authors]
    errors, start, promised = [], threading.Barrier(len(handles)), []

    def append(handle):
        try:
            start.wait()
            for i in range(5):
                kind = "round_started" if handle.name == "alice" else "update_submitted"
                promised.append(handle.publish_entry(kind, {"round": i, "sha256": "ab" * 32})["seq"])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(h.transport.asked == ["ledger_append"] * 5 for h in handles)
    first = 1 + len(MEMBERS)  # task_created and the joins
    assert sorted(promised) == list(range(first, first + 50))
    seqs = [item["entry"]["seq"] for item in service.ledger.entries("alice", "rush")]
    assert seqs == list(range(first + 50))
    for handle in handles:
        handle.transport.asked.clear()
        assert handle.audit_ledger()["size"] == first + 50
        assert handle.transport.asked == ["ledger_audit"]
    report = _report(service, "rush")
    assert report.ok, str(report)
    assert report.check("statements unique").detail.startswith("50 statement(s)")
    # the cosignature of the checkpoint verified rides on the next audit
    handles[0].publish_entry("update_submitted", {"round": 9, "sha256": "cd" * 32})
    handles[0].audit_ledger()
    assert "bob" in service.ledger.checkpoint("bob", "rush", first + 50)["cosignatures"]


@pytest.mark.parametrize("how", ["dropped", "replaced"])
def test_a_broken_promise_is_caught_by_the_audit(platform, how):
    """The platform promised bob's entry at seq S, then its log goes on without it (dropped, or
    another entry at S): bob's next audit, a single request, names the broken promise."""
    task = f"broken-{how}"
    service = _task(platform, task)
    bob = _member(platform, "bob", task)
    seq = bob.publish_entry("update_submitted", {"round": 0, "sha256": "ab" * 32})["seq"]
    with service.db.session() as s:
        s.query(LedgerEntry).filter_by(task=task, seq=seq).delete()
    if how == "replaced":
        assert _member(platform, "carol", task).publish_entry("update_submitted", {"round": 0})["seq"] == seq
    with pytest.raises(LedgerError, match=f"promised (your entry {seq}|it)"):
        bob.audit_ledger()


def test_a_replayed_statement_is_flagged_by_verify_and_never_appended_twice(platform):
    """A v2 signature does not cover the seq, so a statement shown twice would count twice: sent again
    (an answer lost), the platform answers with the promise it already gave; a log showing it twice
    (the platform replaying it) fails verification, naming both entries."""
    service = _task(platform, "replay")
    key = platform.keys["bob"]
    statement = E.make_statement("replay", "update_submitted", "bob", {"round": 0, "sha256": "ab" * 32})
    signature = E.encode_signature(E.sign_statement(statement, key))
    bob = Direct(service, "bob")
    first = bob.call("ledger_append", task="replay", statement=statement, signature=signature)
    again = bob.call("ledger_append", task="replay", statement=statement, signature=signature)
    assert again["seq"] == first["seq"] and again["leaf_hash"] == first["leaf_hash"]
    assert [i["entry"]["seq"] for i in service.ledger.entries("bob", "replay")][-1] == first["seq"]
    assert _report(service, "replay").ok
    ledger = service.ledger
    with ledger.writing() as s:  # the platform replays bob's statement itself
        entry = E.sequence(statement, *ledger._head(s, "replay"))
        ledger._insert(s, "replay", entry, signature, E.canonical_bytes(entry))
    report = _report(service, "replay")
    assert not report.ok and report.check("signatures").ok  # every signature is bob's own ...
    assert report.bad_entries == [first["seq"] + 1]
    assert (f"entry {first['seq'] + 1} repeats the statement of entry {first['seq']}"
            in str(report.check("statements unique").problems[0]))


def test_an_append_looks_for_its_statement_by_index_not_by_reading_the_log(platform):
    """Every append first looks whether its statement is there already (a retry whose answer was lost).
    That lookup goes by the (task, signature) index (revision 0005), so an append does not cost more with
    every entry the task's log holds (it read them all: 5.6 ms an append at 10,000 entries)."""
    from sqlalchemy import event, inspect

    service = _task(platform, "indexed")
    sqlite = service.db.engine.dialect.name == "sqlite"
    key = platform.keys["bob"]
    bob = Direct(service, "bob")
    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "FROM ledger_entries" in statement and "signature =" in statement:
            seen.append((statement, parameters))

    event.listen(service.db.engine, "before_cursor_execute", record)
    try:
        statement = E.make_statement("indexed", "update_submitted", "bob", {"round": 0})
        bob.call("ledger_append", task="indexed", statement=statement,
                 signature=E.encode_signature(E.sign_statement(statement, key)))
    finally:
        event.remove(service.db.engine, "before_cursor_execute", record)
    assert len(seen) == 1
    indexes = {i["name"]: i["column_names"] for i in inspect(service.db.engine).get_indexes("ledger_entries")}
    assert indexes.get("ix_ledger_entries_task_signature") == ["task", "signature"]
    if not sqlite:  # PostgreSQL's planner picks by table statistics: on a table this small, either index
        return
    with service.db.engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + seen[0][0], seen[0][1]))
    assert "ix_ledger_entries_task_signature" in plan, plan


def test_a_head_signed_while_an_audit_reads_the_log_is_no_broken_promise(platform):
    """Two reads make an audit's answer: the latest signed head and the stored entries. Between them,
    another member appends and has a larger head signed (100 participants on one platform do this all the
    time). bob's audit still proves his entry: a head newer than the entries read made his promise look
    broken ("checkpoint 193 does not include it") though nothing was dropped."""
    from sqlalchemy import event

    service = _task(platform, "meanwhile")
    bob, carol = _member(platform, "bob", "meanwhile", 0), _member(platform, "carol", "meanwhile", 0)
    bob.publish_entry("update_submitted", {"round": 0, "sha256": "ab" * 32, "n_samples": 1})
    bob.publish_entry("update_submitted", {"round": 1, "sha256": "cd" * 32, "n_samples": 1})
    service.ledger.checkpoint("alice", "meanwhile")  # a head, of the log as it is
    engine, injected = service.db.engine, []

    def meanwhile(conn, cursor, statement, parameters, context, executemany):
        """Once, after the audit's first read of the stored entries: carol appends, and a head of the
        grown log is signed and committed, by other connections."""
        if injected or "FROM ledger_entries" not in statement:
            return
        injected.append(statement)
        carol.publish_entry("update_submitted", {"round": 1, "sha256": "ef" * 32, "n_samples": 1})
        service.ledger.checkpoint("carol", "meanwhile")

    event.listen(engine, "after_cursor_execute", meanwhile)
    try:
        checked = bob.audit_ledger()  # its first: no cosignature to store; "a broken promise" before the fix
    finally:
        event.remove(engine, "after_cursor_execute", meanwhile)
    assert injected and checked["own_entries"] == 2
    assert bob.audit_ledger()["size"] == service.ledger.head("bob", "meanwhile")["size"]  # and it goes on

    injected.clear()  # the same for the bundle a member verifies offline (`werkbund ledger verify`)
    event.listen(engine, "after_cursor_execute", meanwhile)
    try:
        bundle = service.ledger.bundle("bob", "meanwhile")
    finally:
        event.remove(engine, "after_cursor_execute", meanwhile)
    latest = bundle["latest"]
    report = verify_log([(i["entry"], i["signature"]) for i in bundle["entries"]], bundle["keys"],
                        latest["checkpoint"], latest["signature"], bundle["platform_key"])
    assert injected and report.ok, str(report)


def test_a_forged_answer_to_an_append_is_refused(platform):
    """The member believes the answer only when the platform key signed a promise for its very
    statement at the seq given."""
    service = _task(platform, "forged")
    key = platform.keys["bob"]
    statement = E.make_statement("forged", "update_submitted", "bob", {"round": 0})
    answer = Direct(service, "bob").call("ledger_append", task="forged", statement=statement,
                                         signature=E.encode_signature(E.sign_statement(statement, key)))
    check_promise(answer, statement, service.ledger.public_key)
    other = E.make_statement("forged", "update_submitted", "bob", {"round": 1})
    with pytest.raises(LedgerError, match="not your statement"):
        check_promise(answer, other)
    with pytest.raises(LedgerError, match="not signed by the platform key"):
        check_promise({**answer, "promise": {**answer["promise"], "seq": answer["seq"] + 1}}, statement)
    with pytest.raises(LedgerError, match="key changed"):
        check_promise(answer, statement, E.encode_public_key(Ed25519PrivateKey.generate()))


def test_logs_of_the_old_format_still_verify(platform):
    """v1 entries (signed with their seq and prev, as before issue 15) are appended at the head and
    verify, alone and beside v2 entries in one log; a v1 entry at a stale head is still refused."""
    service = _task(platform, "old")
    key, ledger = platform.keys["bob"], service.ledger
    for i in range(3):
        head = ledger.head("bob", "old")
        entry = E.make_entry("old", "update_submitted", "bob", head["size"], head["prev"], {"round": i})
        ledger.append("bob", "old", entry, E.encode_signature(E.sign_entry(entry, key)))
    report = _report(service, "old")
    assert report.ok, str(report)
    assert not any(E.is_v2(i["entry"]) for i in ledger.entries("bob", "old"))
    _member(platform, "bob", "old").publish_entry("update_submitted", {"round": 3})
    report = _report(service, "old")
    assert report.ok and E.is_v2(ledger.entries("bob", "old")[-1]["entry"]), str(report)
    with pytest.raises(Exception, match="head moved"):
        ledger.append("bob", "old", entry, E.encode_signature(E.sign_entry(entry, key)))
