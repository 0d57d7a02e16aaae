"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries").

With ``n`` updates of which at most ``f`` are Byzantine, each update's score is the sum of squared
L2 distances to its ``n - f - 2`` nearest other updates; Krum keeps the update with the lowest
score, Multi-Krum averages (unweighted) the ``m`` updates with the lowest scores, scores computed
once. Ties go to the update added first. Krum needs ``n > 2f + 2``. Distances are taken between
the deltas from the global weights in float64, block by block through the Gram matrix
(``|a|^2 + |b|^2 - 2 a.b``, one BLAS call per block): the absolute error is about 1e-16 times the
squared norms of the deltas, far below any distance that could change which update is chosen.

Both need all updates at once (see ``buffered``); neither streams. After ``result`` the scores
are in ``last_scores`` and the indices and senders of the kept updates in ``selected`` and
``selected_senders``.
"""
from __future__ import annotations

import numpy as np

from werkbund.algorithms.strategies.buffered import Buffered
from werkbund.algorithms.strategies.options import integer

KRUM_BLOCK_ELEMENTS = 1 << 18


class MultiKrum(Buffered):
    """Average of the ``m`` updates with the best Krum scores (``m=None``: ``n - f``)."""

    name = "multi_krum"

    def __init__(self, f: int = 1, m: int | None = None):
        self.f = integer(self.name, "f", f, low=0)
        self.m = None if m is None else integer(self.name, "m", m, low=1)
        self.last_scores: np.ndarray | None = None
        self.selected: list[int] = []
        self.selected_senders: list[str] = []

    def scores(self) -> np.ndarray:
        """The Krum score of each update added this round."""
        n, f = self.count, self.f
        if n <= 2 * f + 2:
            raise ValueError(f"{self.name}: needs n > 2f + 2 updates; got n={n} with f={f} "
                             f"(at least {2 * f + 3} updates are needed)")
        dist = np.zeros((n, n), dtype=np.float64)
        flat_global = np.concatenate([g.ravel() for g in self.global_weights]) if self._size else None
        for cols, x in self.blocks(KRUM_BLOCK_ELEMENTS, dtype=np.float64):
            x -= flat_global[cols]
            gram = x @ x.T
            sq = np.diag(gram)
            dist += sq[:, None] + sq[None, :] - 2 * gram
        dist = np.maximum(dist, 0.0)  # rounding can leave tiny negatives for (near) identical updates
        np.fill_diagonal(dist, np.inf)
        nearest = np.sort(dist, axis=1)[:, :n - f - 2]
        return nearest.sum(axis=1)

    def _aggregate(self) -> np.ndarray:
        n = self.count
        m = n - self.f if self.m is None else self.m
        scores = self.last_scores = self.scores()
        if m > n:
            raise ValueError(f"{self.name}: cannot select m={m} of {n} updates")
        self.selected = sorted(np.argsort(scores, kind="stable")[:m].tolist())
        self.selected_senders = [self.senders[i] for i in self.selected]
        out = np.zeros(self._size, dtype=np.float64)
        for i in self.selected:
            out += self.updates[i]
        out /= m
        return out


class Krum(MultiKrum):
    """The single update with the best Krum score."""

    name = "krum"

    def __init__(self, f: int = 1):
        super().__init__(f=f, m=1)
