"""The ledger on a running local platform: forged entries refused, tampering with the stored
log through SQL caught by `werkbund ledger verify` (which names the entry), maintenance proofs."""
import json
import sqlite3

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from support.ledger_site import PASSWORDS, Site

from werkbund.client import home_files
from werkbund.client.cli import cli
from werkbund.client.identity import load_identity
from werkbund.client.ledger import LedgerError, publish
from werkbund.platform.errors import Conflict, PermissionDenied
from werkbund.ledger import entries as E
from werkbund.platform.ledger.store import load_or_create_key

@pytest.fixture
def site(tmp_path, monkeypatch):
    """A task whose ledger holds 8 entries by the platform, alice, bob and carol."""
    s = Site(tmp_path, monkeypatch).register()
    alice, bob, carol = s.api("alice"), s.api("bob"), s.api("carol")
    alice.create_task("weld", {"algorithm": "neural_network", "quorum": 2})       # 0
    bob.join_task("weld")                                                          # 1
    carol.join_task("weld")                                                        # 2
    bob.participant("weld").publish_entry("update_submitted", {"round": 0, "sha256": "ab" * 32})  # 3
    alice.aggregator("weld").publish_entry("round_started", {"round": 0})          # 4
    carol.participant("weld").publish_entry("update_submitted", {"round": 0, "sha256": "cd" * 32})  # 5
    result = s.cli("bob", "ledger", "maintenance", "--task", "weld", "--machine", "press-7",
                   "--event", "replaced hydraulic seal")                           # 6
    assert result.exit_code == 0, result.output
    carol.leave_task("weld")                                                       # 7
    s.users = {"alice": alice, "bob": bob, "carol": carol}
    yield s
    s.server.stop()


def test_members_verify_the_untouched_log_and_cosign(site):
    result = site.cli("bob", "ledger", "verify", "--task", "weld")
    assert result.exit_code == 0, result.output
    assert "8 entries signed by their authors" in result.output and "verified" in result.output
    shown = site.cli("alice", "ledger", "show", "--task", "weld")
    assert "update_submitted" in shown.output and "cosigned by: bob" in shown.output
    bundle = site.tmp / "bundle.json"
    assert site.cli("alice", "ledger", "export", "--task", "weld", "--out", str(bundle)).exit_code == 0
    offline = CliRunner().invoke(cli, ["ledger", "verify", "--bundle", str(bundle)])
    assert offline.exit_code == 0 and "offline verification" in offline.output


def test_forged_and_stale_entries_are_refused(site):
    bob = site.users["bob"]
    mallory_key = Ed25519PrivateKey.generate()
    head = bob.transport.call("ledger_head", task="weld")
    entry = E.make_entry("weld", "update_submitted", "bob", head["size"], head["prev"], {"round": 1})
    with pytest.raises(PermissionDenied, match="signature does not verify"):
        bob.transport.call("ledger_append", task="weld", entry=entry,
                           signature=E.encode_signature(E.sign_entry(entry, mallory_key)))
    stale = E.make_entry("weld", "update_submitted", "bob", 3, head["prev"], {"round": 1})
    with pytest.raises(Conflict, match="head moved") as refused:
        bob.transport.call("ledger_append", task="weld", entry=stale,
                           signature=E.encode_signature(E.sign_entry(stale, bob.identity)))
    assert refused.value.head == {"size": head["size"], "prev": head["prev"]}  # where to sign again
    as_alice = E.make_entry("weld", "update_submitted", "alice", head["size"], head["prev"], {"round": 1})
    with pytest.raises(PermissionDenied, match="authored by you"):
        bob.transport.call("ledger_append", task="weld", entry=as_alice,
                           signature=E.encode_signature(E.sign_entry(as_alice, bob.identity)))
    with pytest.raises(PermissionDenied, match="may not author"):
        publish(bob.transport, "weld", "bob", bob.identity, "task_finished", {})


def _entry(site, seq):
    with sqlite3.connect(site.db) as db:
        return db.execute("SELECT entry FROM ledger_entries WHERE task='weld' AND seq=?", (seq,)).fetchone()[0]


TAMPERING = {
    "edit a payload": (["UPDATE ledger_entries SET entry = replace(entry, '\"round\":0', '\"round\":9') "
                        "WHERE seq = 3"], "entry 3: signature does not verify"),
    "delete an entry": (["DELETE FROM ledger_entries WHERE seq = 4"], "entry 4 missing"),
    "reorder two": (["UPDATE ledger_entries SET seq = -1 WHERE seq = 3",
                     "UPDATE ledger_entries SET seq = 3 WHERE seq = 5",
                     "UPDATE ledger_entries SET seq = 5 WHERE seq = -1"], "entry 3"),
    "truncate": (["DELETE FROM ledger_entries WHERE seq >= 6"], "entries end at entry 5"),
    "replace the tree head": ([], "checkpoint signature does not verify with the platform key"),
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_tampering_with_the_stored_log_is_caught_and_named(site, how):
    statements, expected = TAMPERING[how]
    if how == "replace the tree head":  # keep it well-formed: a 64-hex root that is not the root
        with sqlite3.connect(site.db) as db:
            cp = json.loads(db.execute("SELECT checkpoint FROM ledger_checkpoints WHERE size = 8").fetchone()[0])
        cp["root"] = "00" * 32
        site.sql("UPDATE ledger_checkpoints SET checkpoint = ? WHERE size = 8", E.checkpoint_bytes(cp).decode())
    for statement in statements:
        site.sql(statement)
    result = site.cli("bob", "ledger", "verify", "--task", "weld")
    assert result.exit_code == 1, result.output
    assert expected in result.output, result.output
    assert "VERIFICATION FAILED" in result.output


def test_a_forked_history_shown_to_a_member_is_caught(site):
    """The platform (holding its key) rewrites its own last entry and re-signs a new head:
    every signature and the new root verify, but bob saw the old history and catches it."""
    assert site.cli("bob", "ledger", "verify", "--task", "weld").exit_code == 0
    key = load_or_create_key(site.db.with_name(site.db.name + ".ledger-key.pem"))
    old = json.loads(_entry(site, 7))
    forged = dict(old, payload={"user": "dave"}, timestamp=E.utc_timestamp())
    data = E.canonical_bytes(forged)
    from werkbund.ledger import merkle

    site.sql("UPDATE ledger_entries SET entry = ?, signature = ?, leaf_hash = ? WHERE seq = 7",
             data.decode(), E.encode_signature(E.sign_entry(forged, key)), merkle.leaf_hash(data).hex())
    with sqlite3.connect(site.db) as db:
        leaves = [bytes.fromhex(h) for (h,) in db.execute(
            "SELECT leaf_hash FROM ledger_entries WHERE task='weld' ORDER BY seq")]
    cp = E.make_checkpoint("weld", 8, merkle.MerkleTree(leaves).root())
    site.sql("UPDATE ledger_checkpoints SET checkpoint = ?, signature = ? WHERE size = 8",
             E.checkpoint_bytes(cp).decode(), E.encode_signature(E.sign_checkpoint(cp, key)))
    cosigned = site.cli("alice", "ledger", "verify", "--task", "weld")
    assert cosigned.exit_code == 1 and "bob: cosignature does not verify" in cosigned.output
    site.sql("DELETE FROM ledger_cosignatures")  # so the platform hides bob's cosignature too
    fresh = site.cli("alice", "ledger", "verify", "--task", "weld")  # alice never saw the original
    assert fresh.exit_code == 0, fresh.output
    result = site.cli("bob", "ledger", "verify", "--task", "weld")
    assert result.exit_code == 1, result.output
    assert "entry 7 differs from the one you saw" in result.output
    assert "history was rewritten" in result.output


def test_the_participant_audit_catches_a_rewritten_log(site):
    """Each round a participant checks its entries are included and the head only grew."""
    handle = site.users["bob"].participant("weld")
    handle.publish_entry("update_submitted", {"round": 1, "sha256": "ef" * 32})          # 8
    assert handle.audit_ledger()["size"] == 9
    site.sql("DELETE FROM ledger_entries WHERE seq = 8")
    site.sql("DELETE FROM ledger_checkpoints WHERE size = 9")
    handle.publish_entry("update_submitted", {"round": 1, "sha256": "ee" * 32})          # 8 again
    with pytest.raises(LedgerError, match="not consistent with checkpoint 9|not included"):
        handle.audit_ledger()


def test_members_appending_at_once_all_land_without_sleeping(site, monkeypatch):
    """The log sequences each signed statement, so nothing is refused and nothing signed again: 24
    entries from two members in six threads all land, in one gap-free log, and no thread ever sleeps
    (test_ledger_sequenced.py counts the requests)."""
    import threading

    import werkbund.client.ledger as client_ledger

    def no_sleep(seconds):
        raise AssertionError(f"publish slept {seconds} s on the hot path")

    monkeypatch.setattr(client_ledger.time, "sleep", no_sleep)
    handles = [site.users[name].participant("weld") for name in ("bob", "bob", "bob")] + \
              [site.users["alice"].aggregator("weld") for _ in range(3)]
    errors, start = [], threading.Barrier(len(handles))

    def append(handle, thread):
        try:
            start.wait()
            for i in range(4):
                kind = "update_submitted" if handle.name == "bob" else "round_started"
                handle.publish_entry(kind, {"round": 10 + thread * 4 + i, "sha256": "ab" * 32})
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(h, n)) for n, h in enumerate(handles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    seqs = [item["entry"]["seq"] for item in site.users["alice"].transport.call("ledger_entries", task="weld")]
    assert seqs == list(range(8 + 24))
    assert site.cli("bob", "ledger", "verify", "--task", "weld").exit_code == 0


def test_an_audit_proves_only_the_entries_since_the_last_one_and_still_catches_an_old_one_dropped(site):
    """The cost of a round's audit does not grow with the task: one request, asking an inclusion proof
    for the entry appended since the last audit only (an entry proven included once stays covered by
    the consistency proof from that checkpoint on). Dropping it later is still caught."""
    handle = site.users["bob"].participant("weld")
    asked = []
    call = handle.transport.call

    def counting(command, **params):
        asked.append((command, params))
        return call(command, **params)

    handle.transport.call = counting
    for number in range(1, 5):
        published = handle.publish_entry("update_submitted", {"round": number, "sha256": f"{number:02x}" * 32})
        asked.clear()
        handle.audit_ledger()
        assert [command for command, _ in asked] == ["ledger_audit"]
        assert asked[0][1]["seqs"] == [published["seq"]]
        assert (asked[0][1]["old_size"] is None) == (number == 1) and (asked[0][1]["cosign"] is None) == (number == 1)
    site.sql("DELETE FROM ledger_entries WHERE seq >= 8")  # the platform drops bob's first entries ...
    site.sql("DELETE FROM ledger_checkpoints WHERE size >= 9")
    handle.publish_entry("update_submitted", {"round": 5, "sha256": "ab" * 32})  # ... and goes on
    with pytest.raises(LedgerError, match="not consistent with checkpoint 12"):
        handle.audit_ledger()


def test_a_maintenance_record_is_proven_and_a_changed_tuple_is_not(site):
    site.monkeypatch.setenv("WERKBUND_HOME", str(site.tmp / "bob"))
    record = home_files.maintenance_dir(site.url, "bob", "weld") / "6.json"
    assert record.exists()
    proof = site.tmp / "proof.json"
    result = site.cli("bob", "ledger", "prove", "--task", "weld", "--record", str(record), "--out", str(proof))
    assert result.exit_code == 0, result.output
    assert "commitment in entry 6" in result.output and "press-7" in result.output
    data = json.loads(proof.read_text())
    data["record"]["event"] = "nothing happened"
    proof.write_text(json.dumps(data))
    forged = CliRunner().invoke(cli, ["ledger", "prove", "--proof", str(proof)])
    assert forged.exit_code == 1 and "does not hold the hash" in forged.output
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    key_file = home_files.identity_path(site.url, "bob")
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and load_identity(key_file, PASSWORDS["bob"]) is not None  # encrypted by default
