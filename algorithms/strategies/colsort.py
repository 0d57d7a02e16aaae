"""Sorting every coordinate across a few vectors at once, with a sorting network.

``np.sort``/``np.partition`` along the short axis of an (updates x coordinates) block sorts
millions of tiny columns one by one. A comparator network instead applies each compare-exchange
to whole rows with ``np.minimum``/``np.maximum``, which vectorises: for ten updates it is about
ten times faster. Batcher's odd-even merge sort needs O(n log^2 n) comparators, so beyond
``NETWORK_MAX`` rows the callers fall back to ``np.partition``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

NETWORK_MAX = 64


@lru_cache(maxsize=None)
def batcher_pairs(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for ``n`` inputs (any n)."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def sort_rows(rows: list[np.ndarray], spare: np.ndarray) -> list[np.ndarray]:
    """Sort each coordinate across ``rows`` (equal-shaped arrays, overwritten), smallest first.

    Returns the rows in sorted order; ``spare`` is one more array of the same shape and dtype used
    as scratch (the returned list may include it, and one input array then becomes spare).
    Values must not be NaN (min/max would spread it).
    """
    rows = list(rows)
    for i, j in batcher_pairs(len(rows)):
        np.minimum(rows[i], rows[j], out=spare)
        np.maximum(rows[i], rows[j], out=rows[j])
        rows[i], spare = spare, rows[i]
    return rows
