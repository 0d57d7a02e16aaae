"""Task definition fields that several algorithms declare (``Algorithm(fields=...)``).

The platform checks only the generic fields (``registry.GENERIC_FIELDS``); these belong to the
algorithms that use them, and a definition that gives one to an algorithm that does not declare
it is refused as an unknown field.
"""
from __future__ import annotations

from werkbund.algorithms.field_spec import Field

EPOCHS = Field("epochs", int, 1, "local epochs per round", minimum=1, maximum=10000)
BATCH_SIZE = Field("batch_size", int, 32, "local mini-batch size", minimum=1)
LEARNING_RATE = Field("learning_rate", float, 0.001, "local learning rate", exclusive_minimum=0,
                      exclusive_maximum=100)
# the training schedule of algorithms that train with gradient steps
TRAINING = (EPOCHS, BATCH_SIZE, LEARNING_RATE)

STANDARDIZE = Field("standardize", bool, True, "federated standardization of the features before training")

# strategies that need only the (weighted) sum of the updates, the one thing POM 2 and 3 reveal
SUM_ONLY_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


def _check_strategy(spec, definition: dict) -> None:
    from werkbund.algorithms.strategies import build_strategy

    build_strategy(spec)  # unknown names and options, bad values: ValueError with the reason
    pom = definition.get("pom", 1)
    while spec is not None and pom in (2, 3):
        name = spec if isinstance(spec, str) else spec.get("name", "fedavg")
        if name not in SUM_ONLY_STRATEGIES:
            raise ValueError(
                f"strategy {name!r} needs every participant's update, but POM {pom} shows the aggregator only "
                f"their sum; use {', '.join(SUM_ONLY_STRATEGIES[:2])} or a server optimizer "
                f"({', '.join(SUM_ONLY_STRATEGIES[2:])}) over fedavg, or pom 1")
        spec = spec.get("inner") if isinstance(spec, dict) else None


STRATEGY = Field("strategy", (str, dict), None,
                 "how a round's updates are combined: a name or {\"name\": ..., options} (default fedavg); "
                 "see docs/task-definition.md#strategies", check=_check_strategy)

MODEL = Field("model", dict, None, "a Keras architecture as JSON (the output of model.to_json()); default: an MLP "
                                   "built from the participants' schema")


def _check_dp(value: dict, definition: dict) -> None:
    def number(key, low, high=None):
        v = value.get(key)
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or not (low < v and (high is None or v < high)):
            bound = f"between {low:g} and {high:g} (exclusive)" if high is not None else f"a number above {low:g}"
            raise ValueError(f"{key} must be {bound}, not {v!r}")
    unknown = sorted(set(value) - {"epsilon", "delta", "l2_norm_clip", "noise_multiplier"})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; known: epsilon, delta, l2_norm_clip, noise_multiplier")
    if value.get("epsilon") is None and value.get("noise_multiplier") is None:
        raise ValueError("needs a target epsilon (the noise is calibrated for it) or a noise_multiplier")
    if value.get("delta") is None:
        raise ValueError("needs delta, e.g. 1e-5 (well below 1 / training records)")
    number("epsilon", 0, 1000)
    number("delta", 0, 1)
    number("l2_norm_clip", 0, 1e6)
    number("noise_multiplier", 0, 1000)


# added to the fields of every algorithm that declares dp=True
DP = Field("dp", dict, None,
           "record-level DP-SGD: {\"epsilon\": > 0 and/or \"noise_multiplier\": > 0, \"delta\": in (0, 1), "
           "\"l2_norm_clip\": > 0 (default 1.0)}; see docs/privacy.md", check=_check_dp)
