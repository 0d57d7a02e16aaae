"""The interface every aggregation strategy follows.

A strategy is fed the updates of one round one at a time (``add``) and then
asked for the new global weights (``result``). Weights are lists of NumPy
arrays in the model's layer order. Strategies that can stream (FedAvg) keep a
running sum and never hold all updates at once; wrappers (server optimizers,
clipping, noise) hold an inner strategy and compose with it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

Weights = list[np.ndarray]


class Strategy(ABC):
    """Combines participants' weights into the next global weights, one round at a time."""

    name = "strategy"

    def begin_round(self, global_weights: Weights) -> None:
        """Called with the global weights that were sent out, before any ``add``."""
        self.global_weights = [np.asarray(w) for w in global_weights]

    @abstractmethod
    def add(self, weights: Weights, n_samples: int, sender: str = "") -> None:
        """Take one participant's weights (already validated) and its sample count."""

    @abstractmethod
    def result(self) -> Weights:
        """The new global weights from everything added this round."""

    @property
    @abstractmethod
    def count(self) -> int:
        """How many updates were added this round."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """State that must survive a restart (server optimizer moments), as a flat dict of arrays.

        Stateless strategies return ``{}``; wrappers add their inner strategy's state under
        ``"inner."``. The dict can go straight into a safetensors checkpoint.
        """
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned; unknown keys are an error."""
        if state:
            raise ValueError(f"strategy {self.name!r} keeps no state, got keys {sorted(state)}")
