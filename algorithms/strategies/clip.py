"""Norm clipping of each update's delta, as a wrapper (the first stage of differential privacy).

For every update, ``delta = weights - global`` is measured with the L2 norm over all layers
together; when it exceeds ``max_norm`` it is scaled down to ``max_norm`` and the inner strategy
(default FedAvg) gets ``global + delta * max_norm / ||delta||``. Updates are transformed one at a
time and handed on, so clipping streams whenever the inner strategy does. The round's norms
(before clipping) are kept in ``norms`` and the number of clipped updates in ``clipped``.
"""
from __future__ import annotations

import math

import numpy as np

from werkbund.algorithms.strategies.base import Strategy, Weights
from werkbund.algorithms.strategies.blocks import BLOCK, spans
from werkbund.algorithms.strategies.options import number
from werkbund.algorithms.strategies.wrapper import Wrapper


def delta_norm(weights: Weights, global_weights: Weights) -> float:
    """L2 norm of ``weights - global_weights`` over all layers, computed in float64."""
    total = 0.0
    scratch = np.empty(BLOCK, dtype=np.float64)
    for w, g in zip(weights, global_weights):
        if np.shape(w) != np.shape(g):
            raise ValueError(f"clip: layer shape {np.shape(w)} does not match the global {np.shape(g)}")
        fw, fg = np.ravel(w), np.ravel(g)
        for s in spans(fw.size):
            d = scratch[:s.stop - s.start]
            np.subtract(fw[s], fg[s], out=d, dtype=np.float64)
            total += float(np.dot(d, d))
    return math.sqrt(total)


def clip_update(weights: Weights, global_weights: Weights, max_norm: float) -> tuple[Weights, float]:
    """``weights`` with the delta clipped to ``max_norm``, and the delta's norm before clipping.

    The norm is summed in float64; the clipped weights are computed in their own precision (at
    least float32), since they are rounded to it anyway. Unclipped updates are returned as they
    are (no copy)."""
    norm = delta_norm(weights, global_weights)
    if norm <= max_norm:
        return weights, norm
    scale = max_norm / norm
    clipped = []
    for w, g in zip(weights, global_weights):
        dtype = np.result_type(g.dtype, np.asarray(w).dtype)
        out = np.subtract(w, g, dtype=np.result_type(dtype, np.float32))  # in the weights' precision
        out *= scale
        out += g
        clipped.append(out.astype(dtype, copy=False))
    return clipped, norm


class Clip(Wrapper):
    name = "clip"

    def __init__(self, inner: Strategy | None = None, max_norm: float = 1.0):
        super().__init__(inner)
        self.max_norm = number(self.name, "max_norm", max_norm, low=0, low_open=True)

    def begin_round(self, global_weights: Weights) -> None:
        super().begin_round(global_weights)
        self.norms: list[float] = []
        self.clipped = 0

    def add(self, weights: Weights, n_samples: int, sender: str = "") -> None:
        if len(weights) != len(self.global_weights):
            raise ValueError(f"{self.name}: update from {sender or 'a participant'} has {len(weights)} "
                             f"layers, expected {len(self.global_weights)}")
        weights, norm = clip_update(weights, self.global_weights, self.max_norm)
        self.norms.append(norm)
        self.clipped += norm > self.max_norm
        self.inner.add(weights, n_samples, sender)

    def __repr__(self) -> str:
        return f"Clip(max_norm={self.max_norm}, inner={self.inner!r})"
