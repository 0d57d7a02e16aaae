"""Identity key rotation and revocation as ledger entries, on a running local platform:
the rotation is signed with the old key and names the new one; the platform then refuses the
old key; a revoked key signs nothing more; `werkbund ledger verify` (online and offline)
follows the key history and names an entry signed with a retired key."""
import json

import pytest
from click.testing import CliRunner
from test_ledger_platform import Site

from werkbund.client import cli_ledger  # noqa: F401  (registers `ledger`)
from werkbund.client import state
from werkbund.client.cli import cli
from werkbund.client.identity import generate_identity
from werkbund.client.ledger import publish
from werkbund.platform.errors import Conflict, InvalidInput, InvalidState, PermissionDenied
from werkbund.platform.ledger import entries as E
from werkbund.platform.ledger import merkle
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
    new_key = state.load_identity(site.url, "bob")
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
    record = state.maintenance_dir(site.url, "bob", "weld") / "4.json"
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


def test_revocation_is_recorded_and_later_entries_by_the_key_are_refused(site):
    bob = site.users["bob"]
    old_key, old_pub = bob.identity, E.encode_public_key(bob.identity)
    result = site.cli("bob", "ledger", "revoke-key", "--reason", "laptop lost")
    assert result.exit_code == 0, result.output
    assert "recorded on the ledger of 2 task(s)" in result.output
    assert state.load_identity(site.url, "bob") is None  # the file is moved aside
    entry = _log(site)[-1]["entry"]
    assert (entry["type"], entry["author"]) == ("key_revoked", "platform")
    assert entry["payload"] == {"subject": "bob", "public_key": old_pub, "reason": "laptop lost"}
    with pytest.raises(PermissionDenied, match="identity key was revoked"):
        publish(bob.transport, "weld", "bob", old_key, "update_submitted", UPDATE)
    with pytest.raises(InvalidState, match="no identity key in force to revoke"):
        bob.transport.call("revoke_identity_key", reason="again")
    again = site.cli("bob", "ledger", "rotate-key")
    assert again.exit_code == 1 and "error:" in again.output and "revoke-key --new-key" in again.output
    with pytest.raises(InvalidInput, match="already in use"):  # the revoked key does not come back
        bob.transport.call("set_identity_key", public_key=old_pub)
    # a new key: registered by the platform on every log, usable at once
    new_key = generate_identity(state.identity_path(site.url, "bob"))
    bob.transport.call("set_identity_key", public_key=E.encode_public_key(new_key))
    assert _log(site, "cast")[-1]["entry"]["type"] == "key_registered"
    publish(bob.transport, "weld", "bob", new_key, "update_submitted", UPDATE)
    verified = site.cli("alice", "ledger", "verify", "--task", "weld")
    assert verified.exit_code == 0, verified.output
    assert "following 2 key change(s)" in verified.output


def test_revoke_with_a_new_key_in_one_step(site):
    result = site.cli("bob", "ledger", "revoke-key", "--reason", "stolen", "--new-key")
    assert result.exit_code == 0, result.output
    new_key = state.load_identity(site.url, "bob")
    assert f"registered a new identity key {E.encode_public_key(new_key)}" in result.output
    types = [item["entry"]["type"] for item in _log(site, "cast")]
    assert types[-2:] == ["key_revoked", "key_registered"]
    bob = site.api("bob")
    assert bob.participant("weld").publish_entry("update_submitted", UPDATE)["seq"] == 6


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
    from werkbund.platform.ledger import verify_log

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
