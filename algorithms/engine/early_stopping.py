"""Early stopping of a federated task on a validation metric.

The task definition's ``early_stopping`` names the metric (``loss``, ``accuracy``, ``rmse`` or
``mae``), the ``patience`` (how many evaluated rounds in a row may fail to improve on the best by
more than ``min_delta``) and the ``source``: ``participants`` (the combined test metrics that the
participants report for each round's aggregate; they arrive with the next round's updates, so the
decision about round r is taken while round r+1 runs) or ``aggregator`` (its own held-out data,
evaluated right after each aggregation).
"""
from __future__ import annotations

import math

from werkbund.algorithms.metrics import HIGHER_IS_BETTER

SOURCES = ("participants", "aggregator")


class EarlyStopping:
    def __init__(self, metric: str = "loss", patience: int = 2, min_delta: float = 0.0,
                 source: str = "participants"):
        if metric not in HIGHER_IS_BETTER:
            raise ValueError(f"early stopping: unknown metric {metric!r}; use one of {sorted(HIGHER_IS_BETTER)}")
        if source not in SOURCES:
            raise ValueError(f"early stopping: source must be one of {SOURCES}, not {source!r}")
        self.metric, self.patience, self.min_delta, self.source = metric, int(patience), float(min_delta), source
        self.higher = HIGHER_IS_BETTER[metric]
        self.best: float | None = None
        self.best_round: int | None = None
        self.waited = 0
        self.reason: str | None = None

    @classmethod
    def from_definition(cls, spec: dict | None) -> "EarlyStopping | None":
        return cls(**spec) if spec else None

    def observe(self, number: int, value) -> str | None:
        """Take the metric of round ``number`` (0-based); return the reason to stop, or None."""
        if self.reason is not None:
            return self.reason
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        improved = self.best is None or (value > self.best + self.min_delta if self.higher
                                         else value < self.best - self.min_delta)
        if improved:
            self.best, self.best_round, self.waited = float(value), number, 0
            return None
        self.waited += 1
        if self.waited >= self.patience:
            whose = "participants' combined test" if self.source == "participants" else "aggregator's held-out"
            self.reason = (f"early stopping: the {whose} {self.metric} did not improve on "
                           f"{self.best:.6g} (round {self.best_round + 1}) by more than {self.min_delta:g} "
                           f"for {self.waited} round(s) (patience {self.patience}); last value {value:.6g} "
                           f"in round {number + 1}")
        return self.reason

    def state(self) -> dict:
        return {"best": self.best, "best_round": self.best_round, "waited": self.waited, "reason": self.reason}

    def load(self, state: dict) -> None:
        self.best, self.best_round = state.get("best"), state.get("best_round")
        self.waited, self.reason = int(state.get("waited") or 0), state.get("reason")
