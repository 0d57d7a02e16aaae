"""A round aggregator whose global model is a list of arrays that an aggregation strategy combines.

``self.weights`` is the global model and ``self.strategy`` (from the task's ``strategy`` field,
``algorithms/strategies/``) combines each round's updates into the next one; a checkpoint keeps both.
The neural network and the linear models are such aggregators; an algorithm sets ``self.weights``,
``self.expected`` (the arrays' shapes and dtypes) and ``self.strategy`` in ``setup`` and restores them
with :meth:`restore_weights`.
"""
from __future__ import annotations

from werkbund.algorithms.arrays import check_weights
from werkbund.algorithms.engine.aggregator import RoundAggregator
from werkbund.algorithms.strategies import build_strategy


class StrategyAggregator(RoundAggregator):
    weighted_mean_update = True

    def global_weights(self):
        return self.weights

    def begin_round(self, number):
        self.strategy.begin_round(self.weights)

    def accept_update(self, update):
        self.strategy.add(update.weights, update.n_samples, update.sender)  # decoded and checked by the engine

    def aggregate(self, number):
        self.weights = self.strategy.result()

    def restore_weights(self, weights, strategy_state) -> None:
        """The checkpoint's global model (checked against ``self.expected``) and the strategy's state."""
        check_weights(weights, self.expected)
        self.weights = weights
        self.strategy = build_strategy(self.definition.get("strategy"))
        self.strategy.load_state_dict(strategy_state)
