"""Validation of task definitions.

The platform checks the generic shape of a definition (numbers in range, a
known algorithm name) without importing any learning code: algorithm names are
looked up among the installed entry points of the group ``werkbund.algorithms``
by name only.
"""
from __future__ import annotations

import re
from importlib.metadata import entry_points

from werkbund.platform.errors import InvalidInput

ALGORITHM_GROUP = "werkbund.algorithms"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# algorithms whose participants train with DP-SGD when the definition has ``dp``
DP_ALGORITHMS = ("neural_network",)
# algorithms whose updates are sums or summaries, not model weights: POM 2 and 3 (which average weights) do not apply
PLAIN_ONLY_ALGORITHMS = ("kmeans", "statistics")

# key: (type or types, default, check, explanation)
_INT = (int,)
_NUM = (int, float)
FIELDS = {
    "algorithm": (str, "neural_network", None, "a registered algorithm name"),
    "quorum": (_INT, 2, lambda v: v >= 1, "at least 1"),
    "max_participants": (_INT, None, lambda v: v >= 1, "at least 1"),
    "rounds": (_INT, 5, lambda v: 1 <= v <= 100000, "between 1 and 100000"),
    "epochs": (_INT, 1, lambda v: 1 <= v <= 10000, "between 1 and 10000"),
    "batch_size": (_INT, 32, lambda v: v >= 1, "at least 1"),
    "learning_rate": (_NUM, 0.001, lambda v: 0 < v < 100, "positive"),
    "min_updates": (_INT, 1, lambda v: v >= 1, "at least 1"),
    "round_timeout": (_NUM, 300, lambda v: 0 < v <= 7 * 86400, "seconds, positive"),
    "test_size": (_NUM, 0.2, lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "seed": (_INT, 0, None, "an integer"),
    "pom": (_INT, 1, lambda v: v in (1, 2, 3),
            "1 (plain), 2 (secure aggregation) or 3 (homomorphic encryption); see algorithms/privacy/README.md"),
    "pom_options": (dict, None, lambda v: _pom_options_ok(v),
                    "{\"threshold\": int >= 2 (POM 2), \"clip_range\": number > 0, \"max_samples\": int >= 1}"),
    "standardize": (bool, True, None, "true or false"),
    "strategy": ((str, dict), None, None, "an aggregation strategy: a name or {\"name\": ..., options}"),
    "model": (dict, None, None, "a Keras architecture as JSON (the output of model.to_json())"),
    "description": (str, "", lambda v: len(v) <= 2000, "at most 2000 characters"),
    "clusters": (_INT, None, lambda v: 1 <= v <= 10000, "the number of clusters of kmeans, between 1 and 10000"),
    "tolerance": (_NUM, None, lambda v: v >= 0, "the largest centroid move (standardized units) that counts as "
                  "converged, at least 0"),
    "bins": (_INT, None, lambda v: 1 <= v <= 1000, "the number of histogram bins of statistics, between 1 and 1000"),
    "selection": (dict, None, lambda v: _selection_ok(v),
                  "{\"min_samples\": int, \"max_validation_loss\": number} (updates chosen by their ledger metadata)"),
    "kind": (str, None, lambda v: v in ("classification", "regression"),
             "\"classification\" or \"regression\" (participants must join with data of this kind)"),
    "early_stopping": (dict, None, lambda v: _early_stopping_ok(v),
                       "{\"metric\": \"loss\"|\"accuracy\"|\"rmse\"|\"mae\", \"patience\": int >= 1, "
                       "\"min_delta\": number >= 0, \"source\": \"participants\"|\"aggregator\"}"),
    "dp": (dict, None, lambda v: _dp_ok(v),
           "record-level DP-SGD: {\"epsilon\": > 0 and/or \"noise_multiplier\": > 0, \"delta\": in (0, 1), "
           "\"l2_norm_clip\": > 0 (default 1.0)}"),
}


def _dp_ok(value: dict) -> bool:
    """Check the ``dp`` field; raise InvalidInput naming the exact problem."""
    def number(key, low, high=None):
        v = value.get(key)
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or not (low < v and (high is None or v < high)):
            bound = f"between {low:g} and {high:g} (exclusive)" if high is not None else f"a number above {low:g}"
            raise InvalidInput(f"task definition field 'dp': {key} must be {bound}, not {v!r}")
    unknown = sorted(set(value) - {"epsilon", "delta", "l2_norm_clip", "noise_multiplier"})
    if unknown:
        raise InvalidInput(f"task definition field 'dp': unknown key(s) {', '.join(unknown)}; "
                           "known: epsilon, delta, l2_norm_clip, noise_multiplier")
    if value.get("epsilon") is None and value.get("noise_multiplier") is None:
        raise InvalidInput("task definition field 'dp' needs a target epsilon (the noise is calibrated for it) "
                           "or a noise_multiplier")
    if value.get("delta") is None:
        raise InvalidInput("task definition field 'dp' needs delta, e.g. 1e-5 (well below 1 / training records)")
    number("epsilon", 0, 1000)
    number("delta", 0, 1)
    number("l2_norm_clip", 0, 1e6)
    number("noise_multiplier", 0, 1000)
    return True


def _early_stopping_ok(value: dict) -> bool:
    number = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    checks = {"metric": lambda v: v in ("loss", "accuracy", "rmse", "mae"),
              "patience": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "min_delta": lambda v: number(v) and v >= 0,
              "source": lambda v: v in ("participants", "aggregator")}
    return set(value) <= set(checks) and all(checks[k](v) for k, v in value.items())


# strategies that need only the (weighted) sum of the updates, the one thing POM 2 and 3 reveal
SUM_ONLY_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
# algorithms whose round is a sample-weighted mean of weight arrays (what POM 2 and 3 compute)
POM_ALGORITHMS = ("neural_network", "logistic_regression", "linear_regression")


def _pom_options_ok(value: dict) -> bool:
    integer = (lambda v: isinstance(v, int) and not isinstance(v, bool))
    checks = {"threshold": lambda v: integer(v) and v >= 2, "max_samples": lambda v: integer(v) and v >= 1,
              "clip_range": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1e6}
    return set(value) <= set(checks) and all(checks[k](v) for k, v in value.items())


def _check_pom(result: dict) -> None:
    """POM 2 and 3 reveal only the sum of the updates: refuse what needs more, or makes no sense."""
    pom = result["pom"]
    if pom == 1:
        if result.get("pom_options"):
            raise InvalidInput("pom_options apply to POM 2 and 3 only; this task has pom 1")
        return
    if result["algorithm"] in PLAIN_ONLY_ALGORITHMS:
        raise InvalidInput(f"algorithm {result['algorithm']!r} runs in POM 1 only (its updates are summaries, "
                           "not model weights to average)")
    if result["algorithm"] not in POM_ALGORITHMS:
        raise InvalidInput(f"algorithm {result['algorithm']!r} does not average weight arrays, so it cannot run "
                           f"with POM {pom}; POM 2 and 3 support {', '.join(POM_ALGORITHMS)}")
    if result["quorum"] < 2:
        raise InvalidInput(f"POM {pom} needs a quorum of at least 2: the sum of one update is that update")
    threshold = (result.get("pom_options") or {}).get("threshold")
    if threshold is not None and (pom != 2 or threshold > result["max_participants"]):
        raise InvalidInput("pom_options.threshold is the secure-aggregation threshold of POM 2 and must not "
                           f"exceed max_participants ({result['max_participants']})")
    spec = result.get("strategy")
    while spec is not None:
        name = spec if isinstance(spec, str) else spec.get("name", "fedavg")
        if name not in SUM_ONLY_STRATEGIES:
            raise InvalidInput(
                f"strategy {name!r} needs every participant's update, but POM {pom} shows the aggregator only "
                f"their sum; use {', '.join(SUM_ONLY_STRATEGIES[:2])} or a server optimizer "
                f"({', '.join(SUM_ONLY_STRATEGIES[2:])}) over fedavg, or pom 1")
        spec = spec.get("inner") if isinstance(spec, dict) else None


def _selection_ok(value: dict) -> bool:
    checks = {"min_samples": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              "max_validation_loss": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0}
    return set(value) <= set(checks) and all(checks[k](v) for k, v in value.items())


def known_algorithms() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ALGORITHM_GROUP)})


def check_name(kind: str, name) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(
            f"invalid {kind} name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_definition(definition) -> dict:
    """Return the definition with defaults filled in, or raise InvalidInput naming the problem."""
    if not isinstance(definition, dict):
        raise InvalidInput("a task definition must be a JSON object")
    unknown = sorted(set(definition) - set(FIELDS))
    if unknown:
        raise InvalidInput(
            f"unknown field(s) in task definition: {', '.join(unknown)}; "
            f"known fields: {', '.join(sorted(FIELDS))}"
        )
    result = {}
    for key, (types, default, check, explanation) in FIELDS.items():
        if key not in definition or definition[key] is None:
            if default is not None:
                result[key] = default
            continue
        value = definition[key]
        types_tuple = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) and bool not in types_tuple:
            raise InvalidInput(f"task definition field {key!r} must be {explanation}, not {value!r}")
        if not isinstance(value, types_tuple) or (check is not None and not check(value)):
            raise InvalidInput(f"task definition field {key!r} must be {explanation}, not {value!r}")
        result[key] = value
    algorithms = known_algorithms()
    if result["algorithm"] not in algorithms:
        raise InvalidInput(
            f"unknown algorithm {result['algorithm']!r}; registered algorithms: {', '.join(algorithms) or 'none'}"
        )
    if result.get("dp") and result["algorithm"] not in DP_ALGORITHMS:
        raise InvalidInput(f"algorithm {result['algorithm']!r} has no differential privacy; 'dp' works with "
                           f"{', '.join(DP_ALGORITHMS)}")
    result.setdefault("max_participants", result["quorum"])
    if result["max_participants"] < result["quorum"]:
        raise InvalidInput(
            f"max_participants ({result['max_participants']}) is below the quorum ({result['quorum']})"
        )
    if result["min_updates"] > result["max_participants"]:
        raise InvalidInput(
            f"min_updates ({result['min_updates']}) exceeds max_participants ({result['max_participants']})"
        )
    _check_pom(result)
    return result
