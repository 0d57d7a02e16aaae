"""A strategy that wraps an inner strategy (default FedAvg) and passes updates through to it.

Wrappers are how aggregation composes (docs/architecture.md, "Algorithms"): clipping transforms each update
before the inner strategy sees it, server optimizers turn the inner result into a step. A wrapper
holds no update itself, so it streams whenever its inner strategy streams.
"""
from __future__ import annotations

import numpy as np

from werkbund.algorithms.strategies.base import Strategy, Weights
from werkbund.algorithms.strategies.fedavg import FedAvg

INNER_PREFIX = "inner."


class Wrapper(Strategy):
    name = "wrapper"

    def __init__(self, inner: Strategy | None = None):
        if inner is None:
            inner = FedAvg()
        if not isinstance(inner, Strategy):
            raise ValueError(f"{self.name}: 'inner' must be a strategy, got {type(inner).__name__}")
        self.inner = inner

    def begin_round(self, global_weights: Weights) -> None:
        super().begin_round(global_weights)
        self.inner.begin_round(self.global_weights)

    def add(self, weights: Weights, n_samples: int, sender: str = "") -> None:
        self.inner.add(weights, n_samples, sender)

    def result(self) -> Weights:
        return self.inner.result()

    @property
    def count(self) -> int:
        return self.inner.count

    def state_dict(self) -> dict[str, np.ndarray]:
        return {INNER_PREFIX + k: v for k, v in self.inner.state_dict().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        own = {k: v for k, v in state.items() if not k.startswith(INNER_PREFIX)}
        if own:
            raise ValueError(f"strategy {self.name!r} keeps no state of its own, got keys {sorted(own)}")
        self.inner.load_state_dict(split_inner(state))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(inner={self.inner!r})"


def split_inner(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inner strategy's part of a wrapper's state dict, prefix removed."""
    return {k[len(INNER_PREFIX):]: v for k, v in state.items() if k.startswith(INNER_PREFIX)}
