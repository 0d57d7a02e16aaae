"""The receipts a broadcast carries (client/ledger_relay.py): every member reads all of them, so a round's
proofs are listed once and each relayed statement's place takes a few bytes. A member gets back exactly its
own proof, one that still verifies against the tree's root; a receipt that names hashes it does not hold
is refused (the member then audits directly)."""
import base64
import json
import os

import pytest

from werkbund.client.ledger_relay import RECEIPT_KEY_CHARS, _receipt, _receipt_table
from werkbund.ledger import merkle

SIZE, FIRST, MEMBERS = 1100, 1000, 100  # a log of 1,100 entries, the last round's 100 statements relayed


@pytest.fixture(scope="module")
def relayed():
    leaves = [merkle.leaf_hash(os.urandom(16)) for _ in range(SIZE)]
    tree = merkle.MerkleTree(leaves)
    signatures = [base64.b64encode(os.urandom(64)).decode() for _ in range(MEMBERS)]
    placed = {sig: {"seq": FIRST + i, "prev": os.urandom(32).hex()} for i, sig in enumerate(signatures)}
    proofs = {FIRST + i: [h.hex() for h in tree.inclusion_proof(FIRST + i)] for i in range(MEMBERS)}
    return tree, placed, proofs


def test_each_member_reads_back_its_own_place_and_a_proof_that_verifies(relayed):
    tree, placed, proofs = relayed
    receipts = json.loads(json.dumps(_receipt_table(placed, proofs)))  # as it travels
    for signature, spot in placed.items():
        seq, prev, proof = _receipt(receipts, signature)
        assert (seq, prev, proof) == (spot["seq"], spot["prev"], proofs[spot["seq"]])
        merkle.verify_inclusion(tree.leaf_hash_at(seq), seq, SIZE, [bytes.fromhex(p) for p in proof], tree.root())


def test_the_round_s_proofs_are_listed_once_a_few_bytes_a_member(relayed):
    _, placed, proofs = relayed
    compact = len(json.dumps(_receipt_table(placed, proofs)))
    one_by_one = len(json.dumps({sig: {**spot, "proof": proofs[spot["seq"]]} for sig, spot in placed.items()}))
    hashes = sum(len(p) for p in proofs.values())
    assert len(_receipt_table(placed, proofs)["nodes"]) < hashes / 3  # neighbours share most of their paths
    assert compact < one_by_one / 2.5, (compact, one_by_one)
    assert compact / MEMBERS < 350  # bytes a relayed statement, hashes shared included (one by one: ~900)


def test_a_statement_without_a_proof_and_a_receipt_naming_no_hash_are_told_apart(relayed):
    _, placed, proofs = relayed
    signature, spot = next(iter(placed.items()))
    receipts = _receipt_table(placed, {k: v for k, v in proofs.items() if k != spot["seq"]})
    assert _receipt(receipts, signature) == (spot["seq"], spot["prev"], None)  # placed, not proven: audited directly
    receipts["placed"][signature[:RECEIPT_KEY_CHARS]][2] = [len(receipts["nodes"])]
    with pytest.raises(ValueError):
        _receipt(receipts, signature)
    with pytest.raises(KeyError):  # a statement the aggregator did not relay
        _receipt(receipts, base64.b64encode(os.urandom(64)).decode())
