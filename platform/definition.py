"""Validation of task definitions on the platform: the generic fields only.

The platform stores and routes; it never loads an algorithm and keeps no list of them. It checks
the fields every task has (``FIELDS``: quorum, rounds, privacy mode, ...) and the shape of the
rest: an algorithm's own fields (``clusters``, ``dp``, ``model``, ...) are JSON values under
well-formed names, within a size bound, checked by the algorithm's declaration where the code
runs: the creator's client before it sends the definition, each participant's client when it
joins (``werkbund.client.definitions``, ``algorithms/registry.py``).
"""
from __future__ import annotations

import json
import re

from werkbund.platform.errors import InvalidInput

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch: "$" would accept a trailing newline
# an algorithm is named by its entry point in the group werkbund.algorithms: never an import path
ALGORITHM_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
FIELD_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_DEFINITION_BYTES = 1 << 20  # the whole definition as JSON: room for a Keras architecture
MAX_ALGORITHM_FIELDS = 100

# key: (type or types, default, check, explanation)
_INT = (int,)
_NUM = (int, float)
FIELDS = {
    "algorithm": (str, "neural_network", lambda v: bool(ALGORITHM_NAME_RE.fullmatch(v)),
                  "an algorithm's name, its entry point in the group werkbund.algorithms (`werkbund algorithms`): "
                  "letters, digits, '_' or '-', never an import path"),
    "algorithm_package": (dict, None, lambda v: _package_ok(v),
                          "{\"distribution\": the pip distribution that provides the algorithm, \"version\": its "
                          "version} (set by the creator's client)"),
    "quorum": (_INT, 2, lambda v: v >= 1, "at least 1"),
    "max_participants": (_INT, None, lambda v: v >= 1, "at least 1"),
    "rounds": (_INT, 5, lambda v: 1 <= v <= 100000, "between 1 and 100000"),
    "min_updates": (_INT, 1, lambda v: v >= 1, "at least 1"),
    "round_timeout": (_NUM, 300, lambda v: 0 < v <= 7 * 86400, "seconds, positive"),
    "test_size": (_NUM, 0.2, lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "seed": (_INT, 0, None, "an integer"),
    "pom": (_INT, 1, lambda v: v in (1, 2, 3),
            "1 (plain), 2 (secure aggregation) or 3 (homomorphic encryption); see algorithms/privacy/README.md"),
    "pom_options": (dict, None, lambda v: _pom_options_ok(v),
                    "{\"threshold\": int >= 2 (POM 2), \"clip_range\": number > 0, \"max_samples\": int >= 1}"),
    "description": (str, "", lambda v: len(v) <= 2000, "at most 2000 characters"),
    "selection": (dict, None, lambda v: _selection_ok(v),
                  "{\"min_samples\": int, \"max_samples\": int (rows a participant may declare at join), "
             "\"max_validation_loss\": number} (updates chosen by their ledger metadata)"),
    "kind": (str, None, lambda v: v in ("classification", "regression"),
             "\"classification\" or \"regression\" (participants must join with data of this kind)"),
    "early_stopping": (dict, None, lambda v: _early_stopping_ok(v),
                       "{\"metric\": \"loss\"|\"accuracy\"|\"rmse\"|\"mae\", \"patience\": int >= 1, "
                       "\"min_delta\": number >= 0, \"source\": \"participants\"|\"aggregator\"}"),
}


def _package_ok(value: dict) -> bool:
    return (set(value) <= {"distribution", "version"} and isinstance(value.get("distribution"), str)
            and 0 < len(value["distribution"]) <= 200
            and (value.get("version") is None or (isinstance(value["version"], str) and len(value["version"]) <= 100)))


def _early_stopping_ok(value: dict) -> bool:
    number = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    checks = {"metric": lambda v: v in ("loss", "accuracy", "rmse", "mae"),
              "patience": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "min_delta": lambda v: number(v) and v >= 0,
              "source": lambda v: v in ("participants", "aggregator")}
    return set(value) <= set(checks) and all(checks[k](v) for k, v in value.items())


def _pom_options_ok(value: dict) -> bool:
    integer = (lambda v: isinstance(v, int) and not isinstance(v, bool))
    checks = {"threshold": lambda v: integer(v) and v >= 2, "max_samples": lambda v: integer(v) and v >= 1,
              "clip_range": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1e6}
    return set(value) <= set(checks) and all(checks[k](v) for k, v in value.items())


def _check_pom(result: dict) -> None:
    """What any POM 2 or 3 task needs; whether the algorithm runs under it is its declaration's say."""
    pom = result["pom"]
    if pom == 1:
        if result.get("pom_options"):
            raise InvalidInput("pom_options apply to POM 2 and 3 only; this task has pom 1")
        return
    if result["quorum"] < 2:
        raise InvalidInput(f"POM {pom} needs a quorum of at least 2: the sum of one update is that update")
    threshold = (result.get("pom_options") or {}).get("threshold")
    if threshold is not None and (pom != 2 or threshold > result["max_participants"]):
        raise InvalidInput("pom_options.threshold is the secure-aggregation threshold of POM 2 and must not "
                           f"exceed max_participants ({result['max_participants']})")


def _selection_ok(value: dict) -> bool:
    checks = {"min_samples": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              "max_samples": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "max_validation_loss": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0}
    return set(value) <= set(checks) and all(checks[k](v) for k, v in value.items())


def check_name(kind: str, name) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid {kind} name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_organisation(org) -> str:
    """An organisation is free text for people (``Müller & Söhne GmbH``), but one printable line: a
    newline, NUL or an ANSI escape in it would forge a line in a log or colour a terminal."""
    if not isinstance(org, str) or not org.strip() or len(org) > 128:
        raise InvalidInput("the organisation must be a non-empty name of at most 128 characters")
    if not org.isprintable():
        raise InvalidInput("the organisation must be one line of printable characters "
                           "(no newline, tab, NUL or terminal escape)")
    return org


def column_difference(yours, wanted) -> tuple[list[str], list[str]]:
    """(columns the task has that yours lack, columns you have that the task does not)."""
    return [c for c in wanted if c not in set(yours)], [c for c in yours if c not in set(wanted)]


def describe_column_difference(missing: list[str], extra: list[str]) -> str:
    parts = ([f"lacks the task's feature column(s) {', '.join(map(repr, missing))}"] if missing else []) + \
            ([f"has column(s) {', '.join(map(repr, extra))} that the task does not use"] if extra else [])
    return "your data " + " and ".join(parts)


def validate_definition(definition) -> dict:
    """Return the definition with the generic defaults filled in, or raise InvalidInput naming the problem.

    Fields other than the generic ones are the algorithm's: they are kept as they are, provided
    their names are well formed and the whole stays within ``MAX_DEFINITION_BYTES``."""
    if not isinstance(definition, dict):
        raise InvalidInput("a task definition must be a JSON object")
    others = sorted(set(definition) - set(FIELDS), key=str)
    malformed = [k for k in others if not isinstance(k, str) or not FIELD_NAME_RE.fullmatch(k)]
    if malformed:
        raise InvalidInput(f"invalid field name(s) in task definition: {', '.join(map(repr, malformed))}; a field "
                           "is named with lower-case letters, digits and '_' (the generic fields: "
                           f"{', '.join(sorted(FIELDS))}; an algorithm's own: `werkbund algorithms --details`)")
    if len(others) > MAX_ALGORITHM_FIELDS:
        raise InvalidInput(f"a task definition holds at most {MAX_ALGORITHM_FIELDS} fields of its algorithm")
    try:
        size = len(json.dumps(definition, allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"a task definition must be plain JSON (no NaN or infinity): {exc}") from None
    if size > MAX_DEFINITION_BYTES:
        raise InvalidInput(f"the task definition is {size} bytes as JSON; at most {MAX_DEFINITION_BYTES}")
    result = {k: definition[k] for k in others}
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
