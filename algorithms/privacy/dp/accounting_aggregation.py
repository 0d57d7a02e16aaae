"""DP accounting as a layer around an inner aggregation (``DPAccounting``), for a task with ``dp``.

The budget (``dp.budget.AggregatorBudget``, the aggregator's ``dp``) comes from the algorithm's
DP-SGD set-up, which calibrates each participant's noise and sends it out with the model
(``dp.rounds.start_budget``), or from the aggregator's checkpoint (``dp.rounds.restore_budget``).
This layer checks every update's DP header (``q``, noise multiplier, steps) and sample count
against that plan and records its steps before passing it on, so the accounting is the same
whether the layer inside is the plain algorithm or POM 2 or 3 (which then hide the update itself).
Each round's record gets a ``dp`` entry: the epsilon spent by the worst participant and by each
one, and the round's events; when the next round would take a participant over the budget, the
task stops after this one (COMPLETE, with the reason).
"""
from __future__ import annotations

from werkbund.algorithms.engine.errors import TaskFailure
from werkbund.algorithms.engine.update_aggregation import AggregationWrapper


class DPAccounting(AggregationWrapper):
    """Checks and accounts each update's DP-SGD steps; adds the round's epsilon to its record."""

    def setup(self) -> None:
        if getattr(self.agg, "dp", None) is None:
            raise TaskFailure(f"the task has differential privacy, but {type(self.agg).__name__} made no privacy "
                              "plan (its aggregator sets no dp budget); it cannot be accounted")
        self.inner.setup()

    def accept(self, update) -> None:
        self.agg.dp.record(update.sender, update)  # UpdateRejected when off the plan
        self.inner.accept(update)

    def round_record(self, number: int) -> dict:
        return {**self.inner.round_record(number), **round_entry(self.agg, number)}


def round_entry(aggregator, number: int) -> dict:
    """The ``dp`` entry of round ``number``'s record; stops the task when the next round would not fit."""
    budget = aggregator.dp
    entry = budget.after_round(number, aggregator.active)
    spent = entry["dp"]
    aggregator.progress.message(f"round {number + 1}: privacy spent epsilon {spent['epsilon']:.4f} "
                                f"(worst participant {spent['worst_participant']}, delta {spent['delta']:g}"
                                + (f", budget {spent['budget']:g})" if spent["budget"] is not None else ")"))
    if budget.stopped:
        aggregator._stop_if(budget.stopped, aggregator._pending)
    return entry
