"""Identity key rotation, revocation and operator reset as ledger entries, on a running local
platform: the rotation (and the revocation) is signed with the old key; a password alone
replaces no key; a lost key is replaced only by the operator's `werkbund platform reset-key`,
which every member sees in `werkbund ledger verify`; verify (online and offline) follows the
key history and names an entry signed with a retired key; the POM key check takes each
member's key from the verified ledger and refuses a platform that answers another one."""
import json
import re

import pytest
from click.testing import CliRunner
from support.ledger_site import PASSWORDS, Site

from werkbund.client import home_files
from werkbund.client.cli import cli
from werkbund.client.identity import generate_identity
from werkbund.algorithms.privacy.wire import PomError, registered_identity_keys
from werkbund.client.ledger import publish, revoke_key, rotate_key
from werkbund.platform.db import sqlite_url
from werkbund.platform.errors import Conflict, InvalidInput, InvalidState, PermissionDenied
from werkbund.ledger import entries as E
from werkbund.ledger import merkle
from werkbund.platform.ledger.store import load_or_create_key

UPDATE = {"round": 0, "sha256": "ab" * 32}


@pytest.fixture
def site(tmp_path, monkeypatch):
    """alice created "weld" and "cast"; bob joined both, carol joined weld."""
    s = Site(tmp_path, monkeypatch).register()
    alice, bob, carol = s.api("alice"), s.api("bob"), s.api("carol")
    for task in ("weld", "cast"):
        alice.create_task(task, {"algorithm": "neural_network", "quorum": 1, "max_participants": 5})
        bob.join_task(task)
    carol.join_task("weld")
    bob.participant("weld").publish_entry("update_submitted", UPDATE)
    s.users = {"alice": alice, "bob": bob, "carol": carol}
    yield s
    s.server.stop()


def _log(site, task="weld"):
    return site.users["alice"].transport.call("ledger_entries", task=task)


def _platform_key(site):
    return load_or_create_key(site.db.with_name(site.db.name + ".ledger-key.pem"))


def test_rotation_is_signed_by_the_old_key_and_the_old_key_is_refused_after(site):
    bob = site.users["bob"]
    old_pub = E.encode_public_key(bob.identity)
    recorded = site.cli("bob", "ledger", "maintenance", "--task", "weld", "--machine", "press-7",
                        "--event", "seal replaced")                                  # entry 4
    assert recorded.exit_code == 0, recorded.output
    result = site.cli("bob", "ledger", "rotate-key")
    assert result.exit_code == 0, result.output
    assert "recorded on the ledger of 2 task(s): cast, weld" in result.output
    new_key = home_files.load_identity(site.url, "bob", PASSWORDS["bob"])
    new_pub = E.encode_public_key(new_key)
    assert new_pub != old_pub
    assert bob.transport.call("identity_key", user="bob")["public_key"] == new_pub
    assert [e["kind"] for e in bob.transport.call("key_history")] == ["registered", "rotated"]
    for task in ("weld", "cast"):
        last = _log(site, task)[-1]
        entry = last["entry"]
        assert (entry["type"], entry["author"]) == ("key_rotated", "bob")
        assert entry["payload"] == {"subject": "bob", "public_key": new_pub, "previous_key": old_pub}
        assert E.verify_entry_signature(entry, last["signature"], old_pub)
        assert not E.verify_entry_signature(entry, last["signature"], new_pub)
    # the old key signs nothing more; the new one does
    with pytest.raises(PermissionDenied, match="does not verify with your registered key"):
        publish(bob.transport, "weld", "bob", bob.identity, "update_submitted", UPDATE)
    cp = bob.transport.call("ledger_checkpoint", task="weld")["checkpoint"]
    with pytest.raises(PermissionDenied, match="cosignature does not verify"):
        bob.transport.call("ledger_cosign", task="weld", size=cp["size"],
                           signature=E.encode_signature(E.cosign_checkpoint(cp, bob.identity)))
    assert publish(bob.transport, "weld", "bob", new_key, "update_submitted", UPDATE)["seq"] == 6
    # the maintenance record made with the old key is still proven with the key in force then
    record = home_files.maintenance_dir(site.url, "bob", "weld") / "4.json"
    proven = site.cli("bob", "ledger", "prove", "--task", "weld", "--record", str(record))
    assert proven.exit_code == 0 and "entry 4 signed by bob" in proven.output, proven.output
    # a task joined later names the new key in its joined entry
    site.users["alice"].create_task("mill", {"algorithm": "neural_network", "quorum": 1, "max_participants": 5})
    site.api("bob").join_task("mill")
    assert _log(site, "mill")[1]["entry"]["payload"]["public_key"] == new_pub
    verified = site.cli("carol", "ledger", "verify", "--task", "weld")
    assert verified.exit_code == 0, verified.output
    assert "7 entries signed by their authors, following 1 key change(s)" in verified.output
    bundle = site.tmp / "weld.json"
    assert site.cli("bob", "ledger", "export", "--task", "weld", "--out", str(bundle)).exit_code == 0
    offline = CliRunner().invoke(cli, ["ledger", "verify", "--bundle", str(bundle)])
    assert offline.exit_code == 0 and "following 1 key change(s)" in offline.output, offline.output
    # a key once used is never taken again, by anyone
    with pytest.raises(InvalidInput, match="already in use"):
        site.users["carol"].transport.call("rotate_identity_key", public_key=old_pub, entries=[])


def test_revocation_is_signed_by_the_key_and_later_entries_by_it_are_refused(site):
    bob = site.users["bob"]
    old_key, old_pub = bob.identity, E.encode_public_key(bob.identity)
    result = site.cli("bob", "ledger", "revoke-key", "--reason", "key copied")
    assert result.exit_code == 0, result.output
    assert "recorded on the ledger of 2 task(s)" in result.output and "werkbund ledger new-key" in result.output
    assert home_files.load_identity(site.url, "bob") is None  # the file is moved aside
    last = _log(site)[-1]
    entry = last["entry"]
    assert (entry["type"], entry["author"]) == ("key_revoked", "bob")
    assert entry["payload"] == {"subject": "bob", "public_key": old_pub, "reason": "key copied"}
    assert E.verify_entry_signature(entry, last["signature"], old_pub)
    with pytest.raises(PermissionDenied, match="identity key was revoked"):
        publish(bob.transport, "weld", "bob", old_key, "update_submitted", UPDATE)
    with pytest.raises(InvalidState, match="no identity key in force to revoke"):
        bob.transport.call("revoke_identity_key", reason="again")
    again = site.cli("bob", "ledger", "rotate-key")
    assert again.exit_code == 1 and "error:" in again.output and "ledger new-key" in again.output
    verified = site.cli("alice", "ledger", "verify", "--task", "weld")
    assert verified.exit_code == 0 and "following 1 key change(s)" in verified.output, verified.output
    # a platform that quietly gives bob a new key after the revocation is caught by verify
    items = _log(site)
    last = items[-1]["entry"]
    quiet = E.encode_public_key(generate_identity(site.tmp / "quiet.pem"))
    for kind, payload, why in (("key_registered", {"subject": "bob"}, "registers a new key for bob, whose key "
                                "was retired before"),
                               ("joined", {"user": "bob"}, "joined names a key for bob, whose key was retired at entry")):
        entry = E.make_entry("weld", kind, "platform", last["seq"] + 1, E.entry_hash(last),
                             dict(payload, public_key=quiet))
        report_text = _verify_with_extra(site, items, entry)
        assert f"entry {entry['seq']}: {why}" in report_text and "VERIFICATION FAILED" in report_text


def test_a_password_alone_neither_revokes_nor_replaces_a_key(site):
    """What a thief with only bob's password (a logged-in session, no key) can do: nothing to the key."""
    bob = site.users["bob"]
    old_pub = E.encode_public_key(bob.identity)
    with pytest.raises(PermissionDenied, match="must be signed by your current identity key"):
        bob.transport.call("revoke_identity_key", reason="thief")
    thief = generate_identity(site.tmp / "thief.pem")
    with pytest.raises(PermissionDenied, match="must be signed by your current identity key"):
        bob.transport.call("rotate_identity_key", public_key=E.encode_public_key(thief), entries=[])
    with pytest.raises(InvalidInput, match="names another previous_key than your key in force"):
        rotate_key(bob.transport, "bob", thief, generate_identity(site.tmp / "thief2.pem"))
    with pytest.raises(InvalidInput, match="names another public_key than your key in force"):
        revoke_key(bob.transport, "bob", thief, "thief")
    with pytest.raises(Conflict, match="already has an identity key"):
        bob.transport.call("set_identity_key", public_key=E.encode_public_key(thief))
    assert bob.transport.call("identity_key", user="bob")["public_key"] == old_pub
    assert _log(site)[-1]["entry"]["type"] == "update_submitted"  # nothing was recorded
    # after a revocation (signed by the key) a password does not register a new key either
    revoke_key(bob.transport, "bob", bob.identity, "key copied")
    with pytest.raises(PermissionDenied, match="needs the platform operator"):
        bob.transport.call("set_identity_key", public_key=E.encode_public_key(thief))
    assert bob.transport.call("identity_key", user="bob")["public_key"] is None


def test_a_user_in_no_task_rotates_and_revokes_with_the_old_keys_signed_statement(site):
    alice = site.users["alice"]
    for task in ("weld", "cast"):
        alice.delete_task(task)
    assert alice.transport.call("ledger_key_logs") == []
    old_pub = E.encode_public_key(alice.identity)
    new_key = generate_identity(site.tmp / "alice-new.pem")
    new_pub = E.encode_public_key(new_key)
    with pytest.raises(PermissionDenied, match="sign the key statement"):
        alice.transport.call("rotate_identity_key", public_key=new_pub, entries=[])
    forged = E.encode_signature(new_key.sign(E.key_statement("key_rotated", "alice", old_pub, new_pub)))
    with pytest.raises(PermissionDenied, match="sign the key statement"):
        alice.transport.call("rotate_identity_key", public_key=new_pub, entries=[], statement_signature=forged)
    assert alice.transport.call("identity_key", user="alice")["public_key"] == old_pub
    assert rotate_key(alice.transport, "alice", alice.identity, new_key)["tasks"] == []
    assert alice.transport.call("identity_key", user="alice")["public_key"] == new_pub
    with pytest.raises(PermissionDenied, match="sign the key statement"):
        revoke_key(alice.transport, "alice", alice.identity, "the old one")
    assert revoke_key(alice.transport, "alice", new_key, "copied")["revoked"] == new_pub


def test_a_lost_key_is_replaced_by_the_operator_and_every_member_sees_the_reset(site):
    bob = site.users["bob"]
    old_pub = E.encode_public_key(bob.identity)
    site.monkeypatch.setenv("WERKBUND_HOME", str(site.tmp / "bob"))
    home_files.identity_path(site.url, "bob").unlink()  # the laptop is gone
    lost = site.cli("bob", "ledger", "revoke-key", "--reason", "laptop lost")
    assert lost.exit_code == 1 and "needs its signature" in lost.output
    asked = site.cli("bob", "ledger", "new-key")
    assert asked.exit_code == 0, asked.output
    new_pub = asked.output.split("your new public key: ")[1].split()[0]
    assert "werkbund platform reset-key --user bob" in asked.output
    assert bob.transport.call("identity_key", user="bob")["public_key"] == old_pub  # nothing changed yet
    reset = CliRunner().invoke(cli, ["platform", "reset-key", "--db", sqlite_url(site.db), "--user", "bob",
                                     "--public-key", new_pub, "--reason", "in person, ID card seen"])
    assert reset.exit_code == 0, reset.output
    assert f"reset bob's identity key to {new_pub} (was {old_pub})" in reset.output
    assert "key_reset recorded on the ledger of 2 task(s): cast, weld" in reset.output
    last = _log(site, "cast")[-1]["entry"]
    assert (last["type"], last["author"]) == ("key_reset", "platform")
    assert last["payload"] == {"subject": "bob", "public_key": new_pub, "previous_key": old_pub,
                               "reason": "in person, ID card seen"}
    taken = site.cli("bob", "ledger", "new-key")
    assert taken.exit_code == 0 and "the operator's reset is in force" in taken.output, taken.output
    new_key = home_files.load_identity(site.url, "bob", PASSWORDS["bob"])
    assert E.encode_public_key(new_key) == new_pub
    seq = publish(bob.transport, "weld", "bob", new_key, "update_submitted", UPDATE)["seq"]
    for member in ("alice", "carol"):
        verified = site.cli(member, "ledger", "verify", "--task", "weld")
        assert verified.exit_code == 0, verified.output
        assert (f"WARNING operator key resets: entry {seq - 1}: the platform operator reset bob's key "
                "(in person, ID card seen)") in verified.output
    # the reset key is the key the POM check takes from the ledger
    got = registered_identity_keys(site.users["carol"].participant("weld"), ["bob"])
    assert E.encode_public_key(got["bob"]) == new_pub
    refused = CliRunner().invoke(cli, ["platform", "reset-key", "--db", sqlite_url(site.db), "--user", "bob",
                                       "--public-key", old_pub, "--reason", "again"])
    assert refused.exit_code == 1 and "already in use" in refused.output


def test_the_pom_key_check_takes_keys_from_the_verified_ledger_not_the_platforms_word(site):
    carol = site.users["carol"].participant("weld")
    keys = {u: E.encode_public_key(site.users[u].identity) for u in ("alice", "bob", "carol")}
    got = registered_identity_keys(carol, ["alice", "bob", "carol"])
    assert {u: E.encode_public_key(k) for u, k in got.items()} == keys
    # after a rotation the ledger names the new key, and the platform agrees
    assert site.cli("bob", "ledger", "rotate-key").exit_code == 0
    rotated = E.encode_public_key(home_files.load_identity(site.url, "bob", PASSWORDS["bob"]))
    assert E.encode_public_key(registered_identity_keys(carol, ["bob"])["bob"]) == rotated
    # the database row changed behind the ledger's back: the platform now answers mallory's key
    mallory = E.encode_public_key(generate_identity(site.tmp / "mallory.pem"))
    site.sql("UPDATE identity_keys SET public_key = ? WHERE user = ?", mallory, "bob")
    assert site.users["alice"].transport.call("identity_key", user="bob")["public_key"] == mallory
    with pytest.raises(PomError, match=re.escape(f"the platform says bob's identity key is {mallory}, but the "
                                                  f"task's verified ledger says {rotated}")):
        registered_identity_keys(site.users["alice"].aggregator("weld"), ["bob", "carol"])
    # a user with no key on the ledger is refused, and a log that does not verify gives no keys at all
    with pytest.raises(PomError, match="'nobody' has no identity key on the task's ledger"):
        registered_identity_keys(carol, ["nobody"])
    joined = _log(site)[1]["entry"]
    tampered = dict(joined, payload=dict(joined["payload"], public_key=mallory))
    site.sql("UPDATE ledger_entries SET entry = ? WHERE task = 'weld' AND seq = 1", E.canonical_bytes(tampered).decode())
    with pytest.raises(PomError, match="does not verify"):
        registered_identity_keys(site.users["alice"].aggregator("weld"), ["bob"])


def _append_forged(site, entry_key, author="bob", task="weld"):
    """What a platform (or a thief with database access) could do: store an entry signed with
    ``entry_key`` at the head and sign a new checkpoint over it."""
    items = _log(site, task)
    last = items[-1]["entry"]
    forged = E.make_entry(task, "update_submitted", author, last["seq"] + 1, E.entry_hash(last),
                          {"round": 9, "sha256": "ee" * 32})
    data = E.canonical_bytes(forged)
    site.sql("INSERT INTO ledger_entries (task, seq, author, type, entry, signature, leaf_hash, "
             "entry_hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '2025-01-01 00:00:00')",
             task, forged["seq"], author, forged["type"], data.decode(),
             E.encode_signature(E.sign_entry(forged, entry_key)), merkle.leaf_hash(data).hex(),
             E.entry_hash(forged))
    leaves = [E.entry_leaf_hash(i["entry"]) for i in items] + [merkle.leaf_hash(data)]
    cp = E.make_checkpoint(task, len(leaves), merkle.MerkleTree(leaves).root())
    site.sql("INSERT INTO ledger_checkpoints (task, size, checkpoint, signature) VALUES (?, ?, ?, ?)",
             task, cp["size"], E.checkpoint_bytes(cp).decode(),
             E.encode_signature(E.sign_checkpoint(cp, _platform_key(site))))
    return forged["seq"]


@pytest.mark.parametrize("how", ["rotate-key", "revoke-key"])
def test_an_entry_signed_with_a_retired_key_is_named_online_and_offline(site, how):
    old_key = site.users["bob"].identity
    assert site.cli("bob", "ledger", how).exit_code == 0
    retired_at = _log(site)[-1]["entry"]["seq"]
    seq = _append_forged(site, old_key)
    why = ("it is signed with bob's key rotated away" if how == "rotate-key"
           else "bob's key was revoked")
    expected = f"entry {seq}: "
    online = site.cli("carol", "ledger", "verify", "--task", "weld")
    assert online.exit_code == 1, online.output
    assert expected in online.output and f"{why} at entry {retired_at}" in online.output
    assert f"first bad entry {seq}" in online.output
    bundle = site.tmp / "weld.json"
    assert site.cli("alice", "ledger", "export", "--task", "weld", "--out", str(bundle)).exit_code == 0
    offline = CliRunner().invoke(cli, ["ledger", "verify", "--bundle", str(bundle)])
    assert offline.exit_code == 1 and f"{why} at entry {retired_at}" in offline.output
    # the entries before the change still verify against the old key
    data = json.loads(bundle.read_text())
    data["entries"] = data["entries"][:seq]
    leaves = [E.entry_leaf_hash(i["entry"]) for i in data["entries"]]
    cp = E.make_checkpoint("weld", seq, merkle.MerkleTree(leaves).root())
    data["latest"] = {"checkpoint": cp, "cosignatures": {},
                      "signature": E.encode_signature(E.sign_checkpoint(cp, _platform_key(site)))}
    bundle.write_text(json.dumps(data))
    assert CliRunner().invoke(cli, ["ledger", "verify", "--bundle", str(bundle)]).exit_code == 0


def _verify_with_extra(site, items, entry) -> str:
    from werkbund.ledger.verify import verify_log

    key = _platform_key(site)
    pairs = [(i["entry"], i["signature"]) for i in items] + [(entry, E.sign_entry(entry, key))]
    cp = E.make_checkpoint("weld", len(pairs), merkle.MerkleTree(E.entry_leaf_hash(e) for e, _ in pairs).root())
    return str(verify_log(pairs, {"platform": E.encode_public_key(key)}, cp, E.sign_checkpoint(cp, key),
                          E.encode_public_key(key)))


def test_a_rotation_takes_every_log_or_none(site):
    bob = site.users["bob"]
    new_key = generate_identity(site.tmp / "new.pem")
    new_pub, old_pub = E.encode_public_key(new_key), E.encode_public_key(bob.identity)
    heads = bob.transport.call("ledger_key_logs")
    assert [h["task"] for h in heads] == ["cast", "weld"]

    def signed(head, key, **payload):
        entry = E.make_entry(head["task"], "key_rotated", "bob", head["size"], head["prev"],
                             {"subject": "bob", "public_key": new_pub, **payload})
        return {"entry": entry, "signature": E.encode_signature(E.sign_entry(entry, key))}

    sizes = {h["task"]: h["size"] for h in heads}
    with pytest.raises(PermissionDenied, match="not signed by your current identity key"):
        bob.transport.call("rotate_identity_key", public_key=new_pub,
                           entries=[signed(heads[0], bob.identity), signed(heads[1], new_key)])
    with pytest.raises(Conflict, match="missing: weld"):
        bob.transport.call("rotate_identity_key", public_key=new_pub, entries=[signed(heads[0], bob.identity)])
    with pytest.raises(PermissionDenied, match="not in task"):
        alien = {"task": "nowhere", "size": 0, "prev": E.GENESIS_PREV}
        bob.transport.call("rotate_identity_key", public_key=new_pub,
                           entries=[signed(h, bob.identity) for h in heads + [alien]])
    publish(bob.transport, "weld", "bob", bob.identity, "update_submitted", UPDATE)  # weld's head moves
    with pytest.raises(Conflict, match="head moved"):
        bob.transport.call("rotate_identity_key", public_key=new_pub,
                           entries=[signed(h, bob.identity) for h in heads])
    with pytest.raises(InvalidInput, match="previous_key"):
        fresh = bob.transport.call("ledger_key_logs")
        bob.transport.call("rotate_identity_key", public_key=new_pub,
                           entries=[signed(h, bob.identity, previous_key=new_pub) for h in fresh])
    # nothing of the refused attempts went anywhere: cast unchanged, weld only has the update
    assert bob.transport.call("ledger_head", task="cast")["size"] == sizes["cast"]
    assert bob.transport.call("ledger_head", task="weld")["size"] == sizes["weld"] + 1
    assert bob.transport.call("identity_key", user="bob")["public_key"] == old_pub
    fresh = bob.transport.call("ledger_key_logs")
    done = bob.transport.call("rotate_identity_key", public_key=new_pub,
                              entries=[signed(h, bob.identity, previous_key=old_pub) for h in fresh])
    assert done["tasks"] == ["cast", "weld"]
    assert bob.transport.call("identity_key", user="bob")["public_key"] == new_pub
    # the platform signs joined and key_registered entries; neither may replace a key in force
    mallory = generate_identity(site.tmp / "mallory.pem")
    for kind, payload in (("key_registered", {"subject": "bob"}), ("joined", {"user": "bob"})):
        items = _log(site)
        last = items[-1]["entry"]
        entry = E.make_entry("weld", kind, "platform", last["seq"] + 1, E.entry_hash(last),
                             dict(payload, public_key=E.encode_public_key(mallory)))
        report_text = _verify_with_extra(site, items, entry)
        assert f"entry {entry['seq']}: " in report_text and "a key changes only by key_rotated" in report_text
        assert "VERIFICATION FAILED" in report_text


def test_platform_processes_starting_together_all_sign_with_one_ledger_key(tmp_path):
    """Replicas of the platform started at the same moment on one key file: each finds no key or a
    whole one (never a half-written file) and all end up with the same key."""
    import subprocess
    import sys

    from werkbund.ledger.entries import encode_public_key

    path = tmp_path / "keys" / "ledger-key.pem"
    code = ("import sys; from werkbund.platform.ledger.store import load_or_create_key as k; "
            "from werkbund.ledger.entries import encode_public_key as e; "
            "print(e(k(sys.argv[1])))")
    starts = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
              for _ in range(6)]
    keys = {p.communicate(timeout=120)[0].strip() for p in starts}
    assert [p.returncode for p in starts] == [0] * 6
    assert keys == {encode_public_key(load_or_create_key(path))}
    assert [f.name for f in path.parent.iterdir()] == ["ledger-key.pem"]  # no temporary file left
