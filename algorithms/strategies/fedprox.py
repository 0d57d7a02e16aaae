"""FedProx (Li et al. 2020): a proximal term in the participants' local training.

Each participant minimises ``loss(w) + mu/2 * ||w - w_global||^2`` over its local steps, which
keeps heterogeneous sites from drifting apart. The server side is plain aggregation: the
``FedProx`` strategy passes updates to its inner strategy (default FedAvg) and only carries
``mu`` so that the task can send it to participants. The training loop is not here.

``keras_proximal_penalty`` imports Keras only when called, so this module imports fast without
TensorFlow.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from werkbund.algorithms.strategies.base import Strategy, Weights
from werkbund.algorithms.strategies.options import number
from werkbund.algorithms.strategies.wrapper import Wrapper


def _check(n_weights: int, n_global: int, mu) -> float:
    if n_weights != n_global:
        raise ValueError(f"fedprox: {n_weights} weight arrays but {n_global} global arrays; pass the "
                         "global values of exactly the trainable variables, in the same order")
    return number("fedprox", "mu", mu, low=0)


def proximal_penalty(weights: Weights, global_weights: Weights, mu: float) -> float:
    """``mu / 2 * sum_layers ||w - w_global||^2`` in float64."""
    mu = _check(len(weights), len(global_weights), mu)
    total = 0.0
    for w, g in zip(weights, global_weights):
        if np.shape(w) != np.shape(g):
            raise ValueError(f"fedprox: shape {np.shape(w)} does not match global {np.shape(g)}")
        d = np.subtract(w, g, dtype=np.float64).ravel()
        total += float(np.dot(d, d))
    return 0.5 * mu * total


def keras_proximal_penalty(variables: Sequence, global_weights: Sequence, mu: float):
    """The proximal penalty as a differentiable scalar tensor, for a custom training step.

    ``variables`` is ``model.trainable_variables``; ``global_weights`` holds the global values of
    those same variables in the same order (NumPy arrays or tensors; convert them to tensors once
    per round with ``keras.ops.convert_to_tensor`` to avoid a copy per step). Add the result to
    the loss before taking gradients.
    """
    from keras import ops  # lazily: importing this module must not pull in TensorFlow

    mu = _check(len(variables), len(global_weights), mu)
    total = None
    for v, g in zip(variables, global_weights):
        if tuple(v.shape) != tuple(np.shape(g)):
            raise ValueError(f"fedprox: variable shape {tuple(v.shape)} does not match global {np.shape(g)}")
        term = ops.sum(ops.square(v - ops.convert_to_tensor(g, dtype=v.dtype)))
        total = term if total is None else total + term
    if total is None:
        return ops.convert_to_tensor(0.0)
    return ops.multiply(total, 0.5 * mu)


class FedProx(Wrapper):
    """Server side of FedProx: the inner aggregation, plus ``mu`` for the participants."""

    name = "fedprox"

    def __init__(self, inner: Strategy | None = None, mu: float = 0.01):
        super().__init__(inner)
        self.mu = number(self.name, "mu", mu, low=0)

    def participant_options(self) -> dict:
        """What participants need to add the proximal term to their local loss."""
        return {"mu": self.mu}
