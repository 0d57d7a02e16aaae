"""Aggregation strategies, selected by name in a task definition.

A spec is a name or ``{"name": ..., **options}``; wrappers take an ``inner`` spec, so strategies
compose, e.g. ``{"name": "fedadam", "eta": 0.01, "inner": {"name": "trimmed_mean", "beta": 0.2}}``.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping

from werkbund.algorithms.strategies.base import Strategy, Weights
from werkbund.algorithms.strategies.clip import Clip
from werkbund.algorithms.strategies.coordinate import Median, TrimmedMean
from werkbund.algorithms.strategies.fedavg import FedAvg
from werkbund.algorithms.strategies.fedprox import FedProx
from werkbund.algorithms.strategies.krum import Krum, MultiKrum
from werkbund.algorithms.strategies.server_optimizers import FedAdagrad, FedAdam, FedAvgM, FedYogi
from werkbund.algorithms.strategies.wrapper import Wrapper

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, Clip,
                Median, TrimmedMean, Krum, MultiKrum)
}


def strategy_options(name: str) -> list[str]:
    """The option names a registered strategy accepts (``inner`` for wrappers)."""
    params = inspect.signature(STRATEGIES[name].__init__).parameters
    return [p for p in params if p != "self" and params[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]


def build_strategy(spec: str | Mapping | Strategy | None = None) -> Strategy:
    """A strategy from its name or ``{"name": ..., **options}`` (default FedAvg), built recursively
    through ``inner``. Unknown names, unknown options and bad values raise ``ValueError``."""
    if spec is None:
        return FedAvg()
    if isinstance(spec, Strategy):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ValueError("a strategy spec must be a name or a mapping with 'name', "
                         f"got {type(spec).__name__}")
    options = dict(spec)
    name = options.pop("name", "fedavg")
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    allowed = strategy_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"strategy {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(allowed) or 'none'}")
    if "inner" in options:
        if not issubclass(STRATEGIES[name], Wrapper):  # pragma: no cover - guarded by `allowed`
            raise ValueError(f"strategy {name!r} does not wrap an inner strategy")
        options["inner"] = build_strategy(options["inner"])
    return STRATEGIES[name](**options)


__all__ = ["Strategy", "Weights", "Wrapper", "FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi",
           "FedAdagrad", "Clip", "Median", "TrimmedMean", "Krum", "MultiKrum", "STRATEGIES",
           "build_strategy", "strategy_options"]
