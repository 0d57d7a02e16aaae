"""FedAvg: the sample-weighted mean w = sum_k n_k / n * w_k, kept as a running sum.

Streams: only the float64 running sum (one model's worth) is held, never the updates. Each
update is added in cache-sized blocks through a small scratch buffer, and the sum's memory is
reused from round to round when the layer shapes stay the same.
"""
from __future__ import annotations

import numpy as np

from werkbund.algorithms.strategies.base import Strategy, Weights
from werkbund.algorithms.strategies.blocks import BLOCK, spans
from werkbund.algorithms.strategies.options import samples


class FedAvg(Strategy):
    name = "fedavg"

    def begin_round(self, global_weights: Weights) -> None:
        super().begin_round(global_weights)
        previous = getattr(self, "_sum", None)
        if previous is None or [a.shape for a in previous] != [g.shape for g in self.global_weights]:
            self._sum = [np.zeros(g.shape, dtype=np.float64) for g in self.global_weights]
        self._scratch = np.empty(BLOCK, dtype=np.float64)
        self._total = 0
        self._count = 0

    def add(self, weights: Weights, n_samples: int, sender: str = "") -> None:
        n = samples(n_samples)
        shapes = [np.shape(w) for w in weights]
        if shapes != [a.shape for a in self._sum]:
            raise ValueError(f"fedavg: update from {sender or 'a participant'} has layer shapes {shapes}, "
                             f"expected {[a.shape for a in self._sum]}")
        if self._count == 0:
            for acc in self._sum:
                acc.fill(0.0)
        for acc, w in zip(self._sum, weights):
            flat_acc, flat_w = acc.reshape(-1), np.ravel(w)
            for s in spans(flat_acc.size):
                scratch = self._scratch[:s.stop - s.start]
                np.multiply(flat_w[s], float(n), out=scratch, dtype=np.float64)
                flat_acc[s] += scratch
        self._total += n
        self._count += 1

    def result(self) -> Weights:
        if not self._count:
            raise ValueError("no update was added this round")
        return [(acc / self._total).astype(ref.dtype) for acc, ref in zip(self._sum, self.global_weights)]

    @property
    def count(self) -> int:
        return self._count
