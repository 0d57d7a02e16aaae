"""The RFC 9162 Merkle tree against published vectors and a direct reading of the RFC."""
from __future__ import annotations

import hashlib
import time

import pytest

from werkbund.ledger.merkle import (EMPTY_ROOT, MerkleTree, ProofError, consistency_proof,
                                             inclusion_proof, leaf_hash, node_hash,
                                             root_from_leaf_hashes, verify_consistency,
                                             verify_inclusion)

# Test vectors of the Certificate Transparency reference implementation, as published in
# transparency-dev/merkle, proof/verify_test.go (`leaves`, `roots`, `inclusionProofs`,
# `consistencyProofs`; the same values appear in google/certificate-transparency's
# cpp/merkletree/merkle_tree_test.cc). Their inclusion vectors number leaves from 1;
# here they are converted to 0-based indexes.
LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]
INCLUSION = [  # (0-based index, tree size, audit path)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (0, 1, []),
]
CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
HASHES = [leaf_hash(d) for d in LEAVES]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


# -- a literal transcription of RFC 9162 2.1, used as the reference -------------------

def _k(n):
    return 1 << ((n - 1).bit_length() - 1)


def ref_mth(d):
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m, d):
    if len(d) == 1:
        return []
    k = _k(len(d))
    return ref_path(m, d[:k]) + [ref_mth(d[k:])] if m < k else ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m, d, b):
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def refused(fn, *args):
    try:
        fn(*args)
    except ProofError:
        return True
    return False


# -- published vectors -----------------------------------------------------------

def test_hashes_and_roots_match_the_vectors():
    assert root_from_leaf_hashes([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert HASHES[0] == hashlib.sha256(b"\x00").digest()
    for size in range(1, 9):
        assert root_from_leaf_hashes(HASHES[:size]) == ROOTS[size - 1], size
        assert MerkleTree(HASHES).root(size) == ROOTS[size - 1]


@pytest.mark.parametrize("index,size,path", INCLUSION)
def test_inclusion_vectors(index, size, path):
    proof = [bytes.fromhex(h) for h in path]
    assert inclusion_proof(HASHES[:size], index) == proof
    root = ROOTS[size - 1]
    assert verify_inclusion(HASHES[index], index, size, proof, root) is True
    # The probes of transparency-dev/merkle's corruptInclusionProof.
    probes = [(index - 1, size, root, HASHES[index], proof),
              (index + 1, size, root, HASHES[index], proof),
              (index ^ 2, size, root, HASHES[index], proof),
              (index, size * 2, root, HASHES[index], proof),
              (index, size // 2, root, HASHES[index], proof),
              (index, size, root, leaf_hash(b"WrongLeaf"), proof),
              (index, size, EMPTY_ROOT, HASHES[index], proof),
              (index, size, SOME_HASH, HASHES[index], proof),
              (index, size, root, HASHES[index], proof + [b""]),
              (index, size, root, HASHES[index], proof + [root]),
              (index, size, root, HASHES[index], [b""] + proof),
              (index, size, root, HASHES[index], [root] + proof)]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        probes.append((index, size, root, HASHES[index], flipped))
    if proof:
        probes.append((index, size, root, HASHES[index], proof[:-1]))
    if len(proof) > 1:
        probes.append((index, size, root, HASHES[index], [proof[0], SOME_HASH] + proof[1:]))
    for i, (idx, sz, rt, leaf, pr) in enumerate(probes):
        if (idx, sz, rt, leaf, pr) == (index, size, root, HASHES[index], proof):
            continue  # e.g. index ^ 2 == index is impossible, size // 2 == size for size 1 is not
        assert refused(verify_inclusion, leaf, idx, sz, pr, rt), f"probe {i} verified"


@pytest.mark.parametrize("old,new,path", CONSISTENCY)
def test_consistency_vectors(old, new, path):
    proof = [bytes.fromhex(h) for h in path]
    assert consistency_proof(HASHES[:new], old) == proof
    r1, r2 = ROOTS[old - 1], ROOTS[new - 1]
    assert verify_consistency(old, new, r1, r2, proof) is True
    if not proof:
        return
    # The probes of transparency-dev/merkle's corruptConsistencyProof.
    probes = [(old - 1, new, r1, r2, proof), (old + 1, new, r1, r2, proof),
              (old ^ 2, new, r1, r2, proof), (old, new * 2, r1, r2, proof),
              (old, new // 2, r1, r2, proof), (old, new, SOME_HASH, r2, proof),
              (old, new, r1, SOME_HASH, proof), (old, new, r2, r1, proof),
              (old, new, r1, r2, []), (old, new, r1, r2, proof + [b""]),
              (old, new, r1, r2, proof + [r1]), (old, new, r1, r2, proof + [r2]),
              (old, new, r1, r2, [b""] + proof), (old, new, r1, r2, [r1] + proof),
              (old, new, r1, r2, [r2] + proof), (old, new, r1, r2, [proof[0]] + proof),
              (old, new, r1, r2, proof[:-1])]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        probes.append((old, new, r1, r2, flipped))
    for i, probe in enumerate(probes):
        assert refused(verify_consistency, *probe), f"probe {i} verified"


# -- every tree size 1..64 ---------------------------------------------------------

LEAVES_64 = [leaf_hash(i.to_bytes(2, "big")) for i in range(64)]
TREE_64 = MerkleTree(LEAVES_64)


# A wrong size whose audit path has the same shape yields the same root, so it cannot be
# told apart (nor does it matter); wrong sizes are probed with size * 2, as upstream does.

def test_inclusion_every_size_and_index():
    for size in range(1, 65):
        leaves, root = LEAVES_64[:size], TREE_64.root(size)
        assert root == ref_mth(leaves)
        for index in range(size):
            proof = TREE_64.inclusion_proof(index, size)
            assert proof == ref_path(index, leaves)
            assert verify_inclusion(leaves[index], index, size, proof, root)
            assert refused(verify_inclusion, leaves[index], index, size, proof, SOME_HASH)
            assert refused(verify_inclusion, leaves[index], index, size * 2, proof, root)
            assert refused(verify_inclusion, leaves[index], index, size, proof + [root], root)
            assert refused(verify_inclusion, leaves[index], index, size, [], root) or size == 1
            if proof:
                bad = [bytes([proof[-1][0] ^ 1]) + proof[-1][1:]]
                assert refused(verify_inclusion, leaves[index], index, size, proof[:-1] + bad, root)
                other = (index + 1) % size
                assert refused(verify_inclusion, leaves[other], index, size, proof, root)


def test_consistency_every_size_pair():
    for new in range(1, 65):
        new_root = TREE_64.root(new)
        for old in range(1, new + 1):
            old_root = TREE_64.root(old)
            proof = TREE_64.consistency_proof(old, new)
            assert proof == (ref_subproof(old, LEAVES_64[:new], True) if old < new else [])
            assert verify_consistency(old, new, old_root, new_root, proof)
            if old == new:
                continue
            assert refused(verify_consistency, old, new, SOME_HASH, new_root, proof)
            assert refused(verify_consistency, old, new, old_root, SOME_HASH, proof)
            assert refused(verify_consistency, old, new * 2, old_root, new_root, proof)
            assert refused(verify_consistency, old, new, old_root, new_root, proof[:-1])
            assert refused(verify_consistency, old, new, old_root, new_root, proof + [new_root])
            bad = [bytes([proof[0][0] ^ 1]) + proof[0][1:]] + proof[1:]
            assert refused(verify_consistency, old, new, old_root, new_root, bad)


# -- edge cases and errors -----------------------------------------------------------

def test_trivial_consistency_and_its_limits():
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(0, 5, EMPTY_ROOT, ROOTS[4], [])
    assert verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    assert refused(verify_consistency, 3, 3, ROOTS[2], ROOTS[3], [])      # fork at equal size
    assert refused(verify_consistency, 3, 3, ROOTS[2], ROOTS[2], [EMPTY_ROOT])
    assert refused(verify_consistency, 0, 1, ROOTS[0], ROOTS[0], [])      # not the empty root
    assert refused(verify_consistency, 2, 1, ROOTS[1], ROOTS[0], [])      # time travel
    assert refused(verify_consistency, 1, 2, ROOTS[0], ROOTS[1], [])      # empty proof
    assert consistency_proof(HASHES, 0) == [] and consistency_proof(HASHES, 8) == []


def test_invalid_arguments_raise_proof_error_with_reason():
    with pytest.raises(ProofError, match="not below tree size"):
        verify_inclusion(HASHES[0], 8, 8, [], ROOTS[7])
    with pytest.raises(ProofError, match="not below tree size"):
        verify_inclusion(HASHES[0], 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError, match="needs 3"):
        verify_inclusion(HASHES[0], 0, 8, [SOME_HASH], ROOTS[7])
    with pytest.raises(ProofError, match="32-byte"):
        verify_inclusion(b"short", 0, 1, [], ROOTS[0])
    with pytest.raises(ProofError, match="non-negative"):
        verify_inclusion(HASHES[0], -1, 8, [], ROOTS[7])
    with pytest.raises(ProofError, match="non-negative"):
        verify_inclusion(HASHES[0], True, 8, [], ROOTS[7])
    with pytest.raises(ProofError) as info:
        verify_consistency(6, 8, ROOTS[5], ROOTS[7], [SOME_HASH] * 3)
    assert info.value.reason.startswith("consistency proof does not reproduce")
    with pytest.raises(ProofError, match="not below"):
        inclusion_proof(HASHES, 8)
    with pytest.raises(ProofError, match="exceeds"):
        MerkleTree(HASHES).root(9)
    with pytest.raises(ProofError, match="exceeds"):
        consistency_proof(HASHES[:3], 4)
    with pytest.raises(ProofError, match="32-byte"):
        MerkleTree().append_leaf_hash(b"x")


def test_incremental_tree_matches_batch_and_keeps_history():
    tree = MerkleTree()
    assert tree.root() == EMPTY_ROOT and len(tree) == 0
    for i, data in enumerate(LEAVES):
        assert tree.append(data) == i
        assert tree.root() == ROOTS[i]
    assert tree.leaf_hashes == tuple(HASHES)
    assert [tree.root(n) for n in range(1, 9)] == ROOTS
    assert tree.inclusion_proof(5, 8) == inclusion_proof(HASHES, 5)
    assert tree.consistency_proof(6, 8) == consistency_proof(HASHES, 6)
    assert tree.inclusion_proof(1, 5) == inclusion_proof(HASHES[:5], 1)


def test_ten_thousand_leaves_are_fast():
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(10_000)]
    start = time.perf_counter()
    root = root_from_leaf_hashes(hashes)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, elapsed
    tree = MerkleTree(hashes)
    assert tree.root() == root
    proof = tree.inclusion_proof(4321)
    assert verify_inclusion(hashes[4321], 4321, 10_000, proof, root)
    assert verify_consistency(7777, 10_000, tree.root(7777), root, tree.consistency_proof(7777))
