"""Base of the strategies that need every update of the round at once (median, trimmed mean, Krum).

These do NOT stream: each update is kept as one flat vector in the model's float dtype until
``result``, so memory grows as (number of updates) x (model size). ``result`` then works through
the coordinates in cache-sized column blocks, so the extra memory on top of the buffered updates
is one small block plus the output vector; once it has the result it drops the updates (and
returns the same result if asked again that round).

Updates with NaN or infinite values are refused (``ValueError``): one NaN would otherwise poison
a coordinate's median. Robust strategies ignore the sample counts when combining, since a
Byzantine participant could lie about them; the counts are still checked and kept (``samples``).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from werkbund.algorithms.strategies.base import Strategy, Weights
from werkbund.algorithms.strategies.blocks import spans
from werkbund.algorithms.strategies.options import samples

BLOCK_ELEMENTS = 1 << 18


class Buffered(Strategy):
    name = "buffered"

    def begin_round(self, global_weights: Weights) -> None:
        super().begin_round(global_weights)
        self._shapes = [g.shape for g in self.global_weights]
        self._dtype = np.result_type(np.float32, *(g.dtype for g in self.global_weights))
        self._size = sum(g.size for g in self.global_weights)
        self.updates: list[np.ndarray] = []
        self._result: Weights | None = None
        self.senders: list[str] = []
        self.samples: list[int] = []

    def add(self, weights: Weights, n_samples: int, sender: str = "") -> None:
        n = samples(n_samples)
        if self._result is not None:
            raise ValueError(f"{self.name}: the round's result was already taken; call begin_round first")
        shapes = [np.shape(w) for w in weights]
        if shapes != self._shapes:
            raise ValueError(f"{self.name}: update from {sender or 'a participant'} has layer shapes "
                             f"{shapes}, expected {self._shapes}")
        flat = np.concatenate([np.ravel(w) for w in weights], dtype=self._dtype) if weights else \
            np.empty(0, dtype=self._dtype)
        if not np.isfinite(flat).all():
            raise ValueError(f"{self.name}: update from {sender or 'a participant'} has NaN or "
                             "infinite values")
        self.updates.append(flat)
        self.senders.append(sender)
        self.samples.append(n)

    @property
    def count(self) -> int:
        return len(self.samples)

    def result(self) -> Weights:
        if self._result is not None:
            return self._result
        if not self.updates:
            raise ValueError(f"{self.name}: no update was added this round")
        flat = self._aggregate()
        out, start = [], 0
        for g in self.global_weights:
            out.append(flat[start:start + g.size].reshape(g.shape).astype(g.dtype))
            start += g.size
        self._result, self.updates = out, []
        return out

    def _aggregate(self) -> np.ndarray:
        """The new global weights as one flat vector."""
        raise NotImplementedError

    def blocks(self, elements: int = BLOCK_ELEMENTS, dtype=None) -> Iterator[tuple[slice, np.ndarray]]:
        """``(columns, X)`` over the coordinates, X of shape (updates, columns) holding those
        coordinates of every update (in ``dtype``, default the buffer's). X is one reused buffer
        of about ``elements`` values: callers may overwrite it, but not keep it."""
        n = len(self.updates)
        step = max(1024, elements // n)
        block = np.empty((n, min(step, self._size)), dtype=dtype or self._dtype)
        for cols in spans(self._size, step):
            x = block[:, :cols.stop - cols.start]
            for i, row in enumerate(self.updates):
                x[i] = row[cols]
            yield cols, x
