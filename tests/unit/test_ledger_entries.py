"""Ledger entries, checkpoints, signatures, and the offline verifier naming each tampering."""
from __future__ import annotations

import copy
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from werkbund.ledger.entries import (ENTRY_TYPES, GENESIS_PREV, EntryError, canonical_bytes,
                                              checkpoint_bytes, cosign_checkpoint, decode_public_key,
                                              decode_signature, encode_public_key, encode_signature, entry_hash,
                                              entry_leaf_hash, make_checkpoint, make_entry, sign_checkpoint,
                                              sign_entry, verify_checkpoint_signature, verify_cosignature,
                                              verify_entry_signature)
from werkbund.ledger.merkle import MerkleTree, consistency_proof, leaf_hash
from werkbund.ledger.verify import verify_log

KEYS = {name: Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32)
        for i, name in enumerate(["platform", "alice", "bob", "mallory"])}
PUBLIC = {name: encode_public_key(k) for name, k in KEYS.items() if name != "mallory"}
PLATFORM_PUB = PUBLIC["platform"]
SCRIPT = [("platform", "task_created", {"definition_sha256": "ab" * 32}),
          ("alice", "joined", {}), ("bob", "joined", {}),
          ("platform", "round_started", {"round": 1, "model_sha256": "01" * 32}),
          ("alice", "update_submitted", {"sha256": "02" * 32, "samples": 500, "val_loss": 0.25}),
          ("bob", "update_submitted", {"sha256": "03" * 32, "samples": 800, "val_loss": 0.5}),
          ("platform", "aggregate_published", {"round": 1, "sha256": "04" * 32}),
          ("alice", "maintenance", {"tuple_sha256": "05" * 32}),
          ("platform", "round_started", {"round": 2, "model_sha256": "04" * 32}),
          ("alice", "update_submitted", {"sha256": "06" * 32, "samples": 510, "val_loss": 0.2}),
          ("bob", "left", {}),
          ("platform", "task_finished", {"final_sha256": "07" * 32})]


def ts(i: int) -> str:
    return f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}.000000Z"


def build(script=SCRIPT, task="turbines", start=0, prev=GENESIS_PREV, signers=None):
    """Entries with valid links and signatures; ``signers`` may override who signs a seq."""
    pairs = []
    for i, (author, kind, payload) in enumerate(script, start=start):
        entry = make_entry(task, kind, author, i, prev, payload, ts(i))
        signer = (signers or {}).get(i, author)
        pairs.append((entry, sign_entry(entry, KEYS[signer])))
        prev = entry_hash(entry)
    return pairs


def checkpoint(pairs, size=None, log="turbines", ts_=None):
    size = len(pairs) if size is None else size
    root = MerkleTree(entry_leaf_hash(e) for e, _ in pairs).root(size)
    cp = make_checkpoint(log, size, root, ts_ or ts(size))
    return cp, sign_checkpoint(cp, KEYS["platform"])


def verify(pairs, cp_sig=None, **kw):
    cp, sig = cp_sig or checkpoint(pairs)
    return verify_log(pairs, PUBLIC, cp, sig, PLATFORM_PUB, **kw)


def messages(report):
    return [p.message for p in report.problems]


LOG = build()
CP = checkpoint(LOG)


# -- entries and checkpoints ----------------------------------------------------------

def test_canonical_bytes_are_rfc8785_and_order_independent():
    entry = make_entry("t", "joined", "alice", 0, GENESIS_PREV, {"z": 1.0, "a": "é"}, ts(0))
    assert canonical_bytes(entry) == (
        b'{"author":"alice","payload":{"a":"\xc3\xa9","z":1},"prev":"' + b"0" * 64
        + b'","seq":0,"task":"t","timestamp":"2025-01-01T00:00:00.000000Z","type":"joined"}')
    assert canonical_bytes(dict(reversed(list(entry.items())))) == canonical_bytes(entry)
    assert entry_hash(entry) == hashlib.sha256(canonical_bytes(entry)).hexdigest()
    assert entry_leaf_hash(entry) == leaf_hash(canonical_bytes(entry))
    assert {"task_created", "update_submitted", "key_rotated", "key_revoked"} <= ENTRY_TYPES


@pytest.mark.parametrize("change,match", [
    ({"type": "rumour"}, "unknown entry type"), ({"seq": -1}, "non-negative"),
    ({"seq": True}, "non-negative"), ({"prev": "AB" * 32}, "lowercase hex"),
    ({"prev": "ab" * 32}, "64 zeros"), ({"timestamp": "2025-01-01T00:00:00+01:00"}, "ending in Z"),
    ({"timestamp": "2025-02-30T00:00:00Z"}, "not a valid date"), ({"payload": [1]}, "JSON object"),
    ({"payload": {"x": float("nan")}}, "canonicalisable"), ({"extra": 1}, "unexpected fields"),
    ({"author": ""}, "non-empty"),
])
def test_malformed_entries_are_refused(change, match):
    entry = dict(LOG[0][0], **change)
    with pytest.raises(EntryError, match=match):
        canonical_bytes(entry)


def test_signatures_are_domain_separated_and_bound_to_the_entry():
    entry, sig = LOG[4]
    alice = PUBLIC["alice"]
    assert len(sig) == 64
    assert verify_entry_signature(entry, sig, alice)
    assert verify_entry_signature(entry, encode_signature(sig), KEYS["alice"].public_key())
    assert not verify_entry_signature(entry, sig, PUBLIC["bob"])
    assert not verify_entry_signature(dict(entry, payload={"samples": 5}), sig, alice)
    assert not verify_entry_signature(entry, b"\0" * 64, alice)
    assert not verify_entry_signature(entry, "not base64!", alice)
    assert not verify_entry_signature(entry, sig, "AAAA")
    cp, cp_sig = CP
    cosig = cosign_checkpoint(cp, KEYS["alice"])
    assert verify_checkpoint_signature(cp, cp_sig, PLATFORM_PUB)
    assert verify_cosignature(cp, cosig, alice)
    # The same key and bytes, another purpose: not interchangeable.
    assert not verify_checkpoint_signature(cp, cosign_checkpoint(cp, KEYS["platform"]), PLATFORM_PUB)
    assert not verify_cosignature(cp, sign_checkpoint(cp, KEYS["alice"]), alice)
    assert not verify_checkpoint_signature(dict(cp, size=11), cp_sig, PLATFORM_PUB)
    assert checkpoint_bytes(cp).startswith(b'{"log":"turbines","root":"')


def test_key_and_signature_encodings():
    text = PUBLIC["alice"]
    assert len(text) == 44 and decode_public_key(text).public_bytes_raw() == \
        KEYS["alice"].public_key().public_bytes_raw()
    assert encode_public_key(KEYS["alice"]) == text
    assert decode_signature(encode_signature(b"\1" * 64)) == b"\1" * 64
    for bad in ("short", "A" * 43 + "!", b"\0" * 31):
        with pytest.raises(EntryError):
            decode_public_key(bad)
    with pytest.raises(EntryError):
        make_checkpoint("t", 3, "XYZ", ts(0))


# -- the verifier --------------------------------------------------------------------

def test_an_intact_log_verifies_and_says_what_was_checked():
    report = verify(LOG)
    assert report.ok, str(report)
    assert report.problems == [] and report.to_dict()["ok"]
    text = str(report)
    for name in ("signatures", "sequence numbers", "hash chain", "checkpoint root"):
        assert name in text
    assert text.endswith("verified")


def test_edited_payload_is_named():
    pairs = copy.deepcopy(LOG)
    pairs[7][0]["payload"]["tuple_sha256"] = "ff" * 32
    report = verify(pairs, CP)
    assert not report.ok
    assert "entry 7: signature does not verify with alice's key" in messages(report)
    assert "entry 8: prev hash does not match entry 7" in messages(report)
    assert report.check("checkpoint root").status == "failed"
    assert report.bad_entries[0] == 7
    assert "VERIFICATION FAILED" in str(report)


def test_payload_edited_and_resigned_by_its_author_breaks_the_chain():
    pairs = copy.deepcopy(LOG)
    pairs[4][0]["payload"]["samples"] = 50_000
    pairs[4] = (pairs[4][0], sign_entry(pairs[4][0], KEYS["alice"]))
    report = verify(pairs, CP)
    assert report.check("signatures").ok
    assert messages(report)[0] == "entry 5: prev hash does not match entry 4"
    assert any(m.startswith("checkpoint root differs") for m in messages(report))


def test_deleted_entry_is_named():
    pairs = LOG[:3] + LOG[4:]
    report = verify(pairs, CP)
    msgs = messages(report)
    assert "entry 3 missing: entry 2 is followed by entry 4" in msgs
    assert "entry 4: prev hash does not match entry 2" in msgs
    assert "entries end at entry 11 (11 entries) but the checkpoint covers 12 entries (0..11)" in msgs
    assert 3 in report.bad_entries


def test_reordered_entries_are_named():
    pairs = list(LOG)
    pairs[3], pairs[4] = pairs[4], pairs[3]
    report = verify(pairs, CP)
    msgs = messages(report)
    assert "entry 3 missing: entry 2 is followed by entry 4" in msgs
    assert "entry 3 is out of order or repeated: it comes after entry 4" in msgs
    assert "entry 4: prev hash does not match entry 2" in msgs
    assert any(m.startswith("checkpoint root differs") for m in msgs)


def test_truncated_log_is_named():
    report = verify(LOG[:9], CP)
    assert messages(report) == ["entries end at entry 8 (9 entries) but the checkpoint covers "
                                "12 entries (0..11)"]
    assert report.check("checkpoint root").status == "skipped"
    assert report.bad_entries == [9]


def test_replaced_checkpoint_root_is_detected():
    cp, sig = CP
    forged = dict(cp, root="00" * 32)
    report = verify(LOG, (forged, sig))
    msgs = messages(report)
    assert "checkpoint signature does not verify with the platform key" in msgs
    assert "checkpoint root differs: entries were changed, removed or reordered" in msgs
    # Even the platform itself, re-signing a wrong root, is caught.
    report = verify(LOG, (forged, sign_checkpoint(forged, KEYS["platform"])))
    assert messages(report) == ["checkpoint root differs: entries were changed, removed or "
                                "reordered"]


def test_forged_signature_and_wrong_key_are_named():
    pairs = list(LOG)
    pairs[4] = (pairs[4][0], bytes(64))
    pairs[5] = (pairs[5][0], sign_entry(pairs[5][0], KEYS["alice"]))     # bob's entry, alice signs
    pairs[7] = (pairs[7][0], sign_entry(pairs[7][0], KEYS["mallory"]))   # an unknown key
    report = verify(pairs, CP)
    assert messages(report) == [
        "entry 4: signature does not verify with alice's key",
        "entry 5: signature does not verify with bob's key (it is alice's signature)",
        "entry 7: signature does not verify with alice's key"]
    assert report.check("checkpoint root").ok          # the data is intact, only signatures lie


def test_unknown_author_and_malformed_entry():
    pairs = build([("mallory", "joined", {})] + SCRIPT[1:3])
    pairs.append(({"seq": 3, "type": "joined"}, b""))
    report = verify_log(pairs, PUBLIC, *checkpoint(pairs[:3]), PLATFORM_PUB)
    msgs = messages(report)
    assert "entry 0: no public key is known for author mallory" in msgs
    assert any(m.startswith("entry at position 3: entry 3: missing fields") for m in msgs)


def test_key_rotation_and_revocation_follow_the_log():
    new_alice = Ed25519PrivateKey.from_private_bytes(b"\x09" * 32)
    KEYS["alice2"] = new_alice
    script = SCRIPT[:3] + [("alice", "key_rotated", {"public_key": encode_public_key(new_alice)}),
                           ("alice", "maintenance", {}),
                           ("platform", "key_revoked", {"subject": "bob", "reason": "lost"}),
                           ("bob", "left", {}),
                           ("bob", "key_rotated", {"subject": "alice", "public_key": PUBLIC["bob"]})]
    pairs = build(script, signers={4: "alice2"})
    report = verify(pairs)
    assert messages(report) == ["entry 6: bob's key was revoked at entry 5",
                                "entry 7: bob's key was revoked at entry 5"]
    # The old key no longer signs for alice after the rotation.
    pairs = build(script[:5])
    assert messages(verify(pairs)) == ["entry 4: signature does not verify with alice's key "
                                       "(it is signed with alice's key rotated away at entry 3)"]
    # Only the holder of the old key rotates it: neither another member nor the platform.
    pairs = build(script[:3] + [script[7]])
    assert messages(verify(pairs)) == ["entry 3: bob may not change the key of alice; only the "
                                       "holder of the old key rotates it"]
    pairs = build(script[:3] + [("platform", "key_rotated", {"subject": "alice",
                                                             "public_key": PUBLIC["bob"]})])
    assert messages(verify(pairs)) == ["entry 3: platform may not change the key of alice; only "
                                       "the holder of the old key rotates it"]
    del KEYS["alice2"]


def test_consistency_with_an_earlier_checkpoint():
    old_cp, old_sig = checkpoint(LOG, size=8, ts_=ts(100))
    proof = consistency_proof([entry_leaf_hash(e) for e, _ in LOG], 8)
    report = verify(LOG, CP, previous_checkpoint=old_cp, previous_signature=old_sig,
                    consistency_proof=proof)
    assert report.ok, str(report)
    assert "consistency proof verifies" in report.check(
        "consistency with the earlier checkpoint").detail


def test_a_different_history_shown_later_is_detected():
    # A member saw a checkpoint over history A; the platform now shows history B,
    # which shares entries 0..5 but then goes another way.
    seen_cp, seen_sig = checkpoint(LOG, size=10)
    fork = LOG[:6] + build([("platform", "task_failed", {"reason": "x"})] + SCRIPT[7:],
                           start=6, prev=entry_hash(LOG[5][0]))
    fork_cp = checkpoint(fork)
    proof = consistency_proof([entry_leaf_hash(e) for e, _ in fork], 10)
    report = verify(fork, fork_cp, previous_checkpoint=seen_cp, previous_signature=seen_sig,
                    consistency_proof=proof)
    msgs = messages(report)
    assert any("consistency proof from 10 to 12 fails" in m for m in msgs)
    assert any("history was rewritten" in m for m in msgs)
    # A log that shrank is refused, too.
    small = checkpoint(LOG[:9])
    report = verify(LOG[:9], small, previous_checkpoint=CP[0], previous_signature=CP[1])
    assert any("the log shrank" in m for m in messages(report))


def test_cosignatures_and_foreign_checkpoints():
    cp, sig = CP
    good = {"alice": cosign_checkpoint(cp, KEYS["alice"]), "bob": cosign_checkpoint(cp, KEYS["bob"])}
    assert verify(LOG, CP, cosignatures=good).ok
    bad = dict(good, bob=cosign_checkpoint(cp, KEYS["mallory"]))
    assert messages(verify(LOG, CP, cosignatures=bad)) == ["bob: cosignature does not verify"]
    other = checkpoint(LOG, log="other-task")
    assert any("is for log 'other-task'" in m for m in messages(verify(LOG, other)))
