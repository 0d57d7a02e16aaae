"""In-memory Merkle trees of the task logs, so proofs and tree heads are not recomputed each time.

A :class:`~werkbund.ledger.merkle.MerkleTree` keeps the root of every complete
aligned subtree, so once a task's tree is in memory a root costs O(log n) hashes, a proof
O(log^2 n) and an append O(1). :class:`TreeCache` keeps one tree per task (the most
recently used ``capacity`` tasks) and checks it against the database before each use:

* one query reads the last stored entry: ``size`` is its seq + 1 (committed, as this
  session sees it);
* the cached tree's leaf ``min(cached, size) - 1`` must be the stored leaf hash of that
  seq, otherwise the tree is rebuilt from the database (another process, a rolled-back
  append, or a log changed behind the platform's back);
* leaves the database has and the tree lacks (appended by another process) are added.

So a use usually costs one small indexed query instead of reading and hashing every leaf.
The tree may hold leaves beyond ``size`` (an append in flight in another thread, or
one rolled back); callers always pass the size they mean.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from sqlalchemy import func, select

from werkbund.ledger import merkle
from werkbund.platform.ledger.store import LedgerEntry


class TreeCache:
    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._trees: OrderedDict[str, merkle.MerkleTree] = OrderedDict()
        self._lock = threading.Lock()
        self.rebuilds = 0  # how often a tree was read in full (for tests and the bench)

    @staticmethod
    def stored_size(s, task: str) -> int:
        last = s.scalar(select(func.max(LedgerEntry.seq)).where(LedgerEntry.task == task))
        return 0 if last is None else last + 1

    def tree(self, s, task: str) -> tuple[merkle.MerkleTree, int]:
        """The task's tree, holding at least the stored leaves, and how many are stored."""
        last = s.execute(select(LedgerEntry.seq, LedgerEntry.leaf_hash).where(LedgerEntry.task == task)
                         .order_by(LedgerEntry.seq.desc()).limit(1)).first()
        size = 0 if last is None else last.seq + 1
        with self._lock:  # one thread at a time extends or replaces a tree
            tree = self._trees.get(task)
            if tree is not None:
                if tree.size >= size:  # the usual case: one query checks it
                    agrees = size == 0 or tree.leaf_hash_at(size - 1).hex() == last.leaf_hash
                else:
                    agrees = self._agrees(s, task, tree)
                if not agrees:
                    tree = None
            if tree is None:
                self.rebuilds += 1
                tree = merkle.MerkleTree(self._leaves(s, task, 0, size))
            elif tree.size < size:
                for leaf in self._leaves(s, task, tree.size, size):
                    tree.append_leaf_hash(leaf)
            self._trees[task] = tree
            self._trees.move_to_end(task)
            while len(self._trees) > self.capacity:
                self._trees.popitem(last=False)
        return tree, min(size, tree.size)  # fewer leaves than seq numbers: a log with gaps

    def forget(self, task: str) -> None:
        with self._lock:
            self._trees.pop(task, None)

    @staticmethod
    def _agrees(s, task: str, tree: merkle.MerkleTree) -> bool:
        """Is the tree's last leaf the stored leaf of that seq? (The tree is shorter than the log.)"""
        if tree.size == 0:
            return True
        stored = s.scalar(select(LedgerEntry.leaf_hash).where(LedgerEntry.task == task,
                                                               LedgerEntry.seq == tree.size - 1))
        return stored is not None and bytes.fromhex(stored) == tree.leaf_hash_at(tree.size - 1)

    @staticmethod
    def _leaves(s, task: str, start: int, end: int):
        query = (select(LedgerEntry.leaf_hash)
                 .where(LedgerEntry.task == task, LedgerEntry.seq >= start, LedgerEntry.seq < end)
                 .order_by(LedgerEntry.seq))
        return [bytes.fromhex(h) for h in s.scalars(query)]
