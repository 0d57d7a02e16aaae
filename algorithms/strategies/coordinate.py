"""Coordinate-wise robust statistics (Yin et al. 2018): median and trimmed mean.

Each coordinate of the new weights is taken on its own across the round's updates, unweighted.
Both need all updates at once (see ``buffered``); neither streams. Coordinates are sorted across
updates in cache-sized blocks with a sorting network (``colsort``), or ``np.partition`` when
there are more than ``NETWORK_MAX`` updates; the middle values are then combined in float64.
"""
from __future__ import annotations

import math

import numpy as np

from werkbund.algorithms.strategies.buffered import Buffered
from werkbund.algorithms.strategies.colsort import NETWORK_MAX, sort_rows
from werkbund.algorithms.strategies.options import number


class _OrderStatistic(Buffered):
    """Averages, per coordinate, the sorted values at positions ``lo .. hi`` (inclusive)."""

    def _positions(self, n: int) -> tuple[int, int]:
        raise NotImplementedError

    def _aggregate(self) -> np.ndarray:
        n = self.count
        lo, hi = self._positions(n)
        out = np.empty(self._size, dtype=np.float64)
        spare = None
        for cols, x in self.blocks():
            if n <= NETWORK_MAX:
                if spare is None:
                    spare = np.empty_like(x[0])
                ordered = sort_rows(list(x), spare[:x.shape[1]])  # all scratch again after this block
            else:
                ordered = np.partition(x, (lo, hi), axis=0)
            o = out[cols]
            o[:] = ordered[lo]
            for row in ordered[lo + 1:hi + 1]:
                o += row
            o /= hi - lo + 1
        return out


class Median(_OrderStatistic):
    """Coordinate-wise median (the mean of the two middle values for an even number of updates)."""

    name = "median"

    def _positions(self, n: int) -> tuple[int, int]:
        return (n - 1) // 2, n // 2


class TrimmedMean(_OrderStatistic):
    """Coordinate-wise trimmed mean: drop the ``floor(beta * n)`` largest and smallest values of
    each coordinate and average the rest. ``beta`` is the fraction trimmed per side, in [0, 0.5)."""

    name = "trimmed_mean"

    def __init__(self, beta: float = 0.1):
        self.beta = number(self.name, "beta", beta, low=0, high=0.5, high_open=True)

    def trimmed(self, n: int) -> int:
        """How many values are dropped at each end when there are ``n`` updates."""
        return math.floor(self.beta * n)

    def _positions(self, n: int) -> tuple[int, int]:
        k = self.trimmed(n)
        return k, n - k - 1
