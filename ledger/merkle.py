"""Append-only Merkle tree hashed as RFC 9162 (Certificate Transparency v2) section 2.1.

Leaf hash SHA-256(0x00 || data), node hash SHA-256(0x01 || left || right), the empty
tree SHA-256(""); n > 1 leaves split at the largest power of two smaller than n; no
duplicated last node. Hashes are raw 32-byte ``bytes``; proofs are lists of hashes,
leaf to root, as RFC 9162 2.1.3.1 and 2.1.4.1 build them. ``verify_inclusion`` and
``verify_consistency`` return True or raise :class:`ProofError` with the reason.

:class:`MerkleTree` also caches the root of every complete aligned subtree, so the
root of any past size costs O(log n) hashes, a proof O(log^2 n), an append O(1).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class ProofError(ValueError):
    """A proof, size or root that does not verify, or a request that makes no sense."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} is not a {HASH_SIZE}-byte hash")
    return bytes(value)


def _check_size(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofError(f"{what} must be a non-negative integer, got {value!r}")
    return value


class MerkleTree:
    """An append-only list of leaf hashes with cached complete-subtree roots.

    ``_levels[h][i]`` is the root of the complete subtree over leaves
    ``[i * 2**h, (i + 1) * 2**h)``; ``_levels[0]`` are the leaf hashes.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()):
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append_leaf_hash(h)

    def __len__(self) -> int:
        return len(self._levels[0])

    size = property(__len__)

    @property
    def leaf_hashes(self) -> tuple[bytes, ...]:
        return tuple(self._levels[0])

    def leaf_hash_at(self, index: int) -> bytes:
        return self._levels[0][index]

    def append(self, data: bytes) -> int:
        """Append a leaf holding ``data``; return its index."""
        return self.append_leaf_hash(leaf_hash(data))

    def append_leaf_hash(self, h: bytes) -> int:
        """Append an already hashed leaf; return its index."""
        h = _check_hash(h, "leaf hash")
        levels = self._levels
        levels[0].append(h)
        index = len(levels[0]) - 1
        i, level = index, 0
        while i & 1:
            if level + 1 == len(levels):
                levels.append([])
            row = levels[level]
            levels[level + 1].append(node_hash(row[i - 1], row[i]))
            i >>= 1
            level += 1
        return index

    # -- hashing of ranges -------------------------------------------------

    def _range_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for the ranges the RFC recursion produces.

        Such ranges start at a multiple of the next power of two >= their
        length, so they decompose, left to right, into complete subtrees of
        strictly decreasing size whose right fold is the RFC 9162 hash.
        """
        if start == end:
            return EMPTY_ROOT
        peaks = []
        while start < end:
            height = (end - start).bit_length() - 1
            while start & ((1 << height) - 1):
                height -= 1
            peaks.append(self._levels[height][start >> height])
            start += 1 << height
        acc = peaks[-1]
        for peak in reversed(peaks[:-1]):
            acc = node_hash(peak, acc)
        return acc

    def _resolve_size(self, size) -> int:
        if size is None:
            return self.size
        size = _check_size(size, "tree size")
        if size > self.size:
            raise ProofError(f"tree size {size} exceeds the {self.size} leaves held")
        return size

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        return self._range_hash(0, self._resolve_size(size))

    # -- proofs ------------------------------------------------------------

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 2.1.3.1, leaf to root."""
        size = self._resolve_size(size)
        index = _check_size(index, "leaf index")
        if index >= size:
            raise ProofError(f"leaf index {index} is not below tree size {size}")
        proof: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                proof.append(self._range_hash(start + k, end))
                end = start + k
            else:
                proof.append(self._range_hash(start, start + k))
                start = start + k
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 9162 2.1.4.1, leaf to root.

        Empty when ``old_size`` is 0 or equals ``new_size`` (nothing to prove).
        """
        new_size = self._resolve_size(new_size)
        old_size = _check_size(old_size, "old tree size")
        if old_size > new_size:
            raise ProofError(f"old tree size {old_size} exceeds new tree size {new_size}")
        if old_size == 0 or old_size == new_size:
            return []
        proof: list[bytes] = []
        start, end, m, complete = 0, new_size, old_size, True
        while m != end - start:  # SUBPROOF(m, D[start:end], complete)
            k = _split(end - start)
            if m <= k:
                proof.append(self._range_hash(start + k, end))
                end = start + k
            else:
                proof.append(self._range_hash(start, start + k))
                start, m, complete = start + k, m - k, False
        if not complete:
            proof.append(self._range_hash(start, end))
        proof.reverse()
        return proof


# -- functions over a plain list of leaf hashes -------------------------------


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over the given leaf hashes (SHA-256("") for none), O(n)."""
    return MerkleTree(hashes).root()


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path of leaf ``index`` in the tree over all ``leaf_hashes``."""
    return MerkleTree(leaf_hashes).inclusion_proof(index)


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Consistency proof between the first ``old_size`` leaves and all of them."""
    return MerkleTree(leaf_hashes).consistency_proof(old_size)


def inclusion_proof_length(index: int, size: int) -> int:
    """Number of hashes in a correct audit path for ``index`` in a tree of ``size``."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + bin(index >> inner).count("1")


def consistency_proof_length(old_size: int, new_size: int) -> int:
    """Number of hashes in a correct consistency proof (0 < old_size < new_size)."""
    shift = (old_size & -old_size).bit_length() - 1
    inner = ((old_size - 1) ^ (new_size - 1)).bit_length()
    border = bin((old_size - 1) >> inner).count("1")
    seed = 0 if old_size == 1 << shift else 1
    return seed + inner - shift + border


def verify_inclusion(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """RFC 9162 2.1.3.2: check that ``leaf_hash`` is leaf ``index`` of the tree with ``root``."""
    r = _check_hash(leaf_hash, "leaf hash")
    root = _check_hash(root, "root")
    index = _check_size(index, "leaf index")
    tree_size = _check_size(tree_size, "tree size")
    if index >= tree_size:
        raise ProofError(f"leaf index {index} is not below tree size {tree_size}")
    proof = [_check_hash(p, f"proof element {i}") for i, p in enumerate(proof)]
    want = inclusion_proof_length(index, tree_size)
    if len(proof) != want:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, a tree of size "
                         f"{tree_size} needs {want} for leaf {index}")
    fn, sn = index, tree_size - 1
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    if r != root:
        raise ProofError(f"inclusion proof for leaf {index} does not lead to the root "
                         f"of the tree of size {tree_size}")
    return True


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: check that the tree ``new_root`` extends the tree ``old_root``.

    ``old_size == 0`` (anything extends the empty tree) and ``old_size == new_size``
    (the roots must be equal) take an empty proof.
    """
    old_size = _check_size(old_size, "old tree size")
    new_size = _check_size(new_size, "new tree size")
    old_root = _check_hash(old_root, "old root")
    new_root = _check_hash(new_root, "new root")
    proof = [_check_hash(p, f"proof element {i}") for i, p in enumerate(proof)]
    if old_size > new_size:
        raise ProofError(f"old tree size {old_size} exceeds new tree size {new_size}")
    if old_size == 0 or old_size == new_size:
        if proof:
            raise ProofError(f"consistency proof from size {old_size} to {new_size} "
                             "must be empty")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("old root of size 0 is not the empty-tree hash")
        if old_size == new_size and old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {old_size}")
        return True
    want = consistency_proof_length(old_size, new_size)
    if len(proof) != want:
        raise ProofError(f"consistency proof has {len(proof)} hashes, {want} are needed "
                         f"from size {old_size} to {new_size}")
    if old_size & (old_size - 1) == 0:  # an exact power of two
        proof = [old_root] + proof
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than needed")
    if fr != old_root:
        raise ProofError(f"consistency proof does not reproduce the old root of size {old_size}")
    if sr != new_root:
        raise ProofError(f"consistency proof does not reproduce the new root of size {new_size}")
    return True
