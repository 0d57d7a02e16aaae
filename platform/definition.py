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
    "pom": (_INT, 1, lambda v: v in (1,), "1 (plain averaging)"),
    "standardize": (bool, True, None, "true or false"),
    "strategy": ((str, dict), None, None, "an aggregation strategy: a name or {\"name\": ..., options}"),
    "model": (dict, None, None, "a Keras architecture as JSON (the output of model.to_json())"),
    "description": (str, "", lambda v: len(v) <= 2000, "at most 2000 characters"),
    "selection": (dict, None, lambda v: _selection_ok(v),
                  "{\"min_samples\": int, \"max_validation_loss\": number} (updates chosen by their ledger metadata)"),
}


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
    result.setdefault("max_participants", result["quorum"])
    if result["max_participants"] < result["quorum"]:
        raise InvalidInput(
            f"max_participants ({result['max_participants']}) is below the quorum ({result['quorum']})"
        )
    if result["min_updates"] > result["max_participants"]:
        raise InvalidInput(
            f"min_updates ({result['min_updates']}) exceeds max_participants ({result['max_participants']})"
        )
    return result
