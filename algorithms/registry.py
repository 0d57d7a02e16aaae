"""The algorithm registry: entry points of the group ``werkbund.algorithms``, and what each declares.

An algorithm is an :class:`Algorithm`: its aggregator and participant classes (the round
engine's template, ``algorithms/engine/``) and a declaration of what it can do: its task
definition fields (:class:`Field`, with type, default, range and help), the privacy operation
modes it runs under, whether it trains with differential privacy, the suffix of its model file
and the options a participant may give. Everything else asks the declaration: the creator's
client validates a definition with :meth:`Algorithm.validate` before sending it, each
participant's client checks it again when joining, the command line and the Python API render
the fields from it. The platform knows only the generic fields (``GENERIC_FIELDS``) and never
loads an algorithm.

A task definition names an algorithm; a client loads only what is installed under that name.
No import path ever comes from a task definition.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import Callable

from werkbund.algorithms.field_spec import DefinitionError, Field
from werkbund.algorithms.fields import DP

GROUP = "werkbund.algorithms"

# the fields the platform checks itself (platform/definition.py); an algorithm declares any other
GENERIC_FIELDS = frozenset({
    "algorithm", "algorithm_package", "quorum", "max_participants", "rounds", "min_updates", "round_timeout",
    "test_size", "seed", "pom", "pom_options", "description", "selection", "kind", "early_stopping",
})
POM_NAMES = {1: "plain", 2: "secure aggregation", 3: "homomorphic encryption"}


class UnknownAlgorithm(LookupError):
    """No algorithm of that name is installed here."""


@dataclass(frozen=True)
class Algorithm:
    """An installable algorithm and what it declares; see the module help and docs/writing-an-algorithm.md.

    - ``fields``: the definition fields of its own (the generic ones are the platform's);
    - ``privacy_modes``: the POMs it runs under (2 and 3 need an aggregator with
      ``weighted_mean_update``: its update is arrays whose sample-weighted mean is what
      ``accept_update`` combines, see ``engine/update_aggregation.py``);
    - ``dp``: whether its participants train with DP-SGD when the definition has ``dp``;
    - ``model_suffix``: the file suffix of its final model (a participant's local copy);
    - ``participant_options``: what a participant may pass to its participant class (e.g. ``hold_back``);
    - ``checks``: rules across fields, each ``check(definition)`` raising ``ValueError``;
    - ``missing_values``: what a participant's missing feature values become by default when it
      joins: ``"drop"`` (rows dropped) or ``"keep"`` (NaN kept, for an algorithm that counts them);
    - ``distribution``, ``version``: the installable distribution that provides it (filled from the
      entry point when left out).
    """

    name: str
    aggregator: type
    participant: type
    description: str = ""
    fields: tuple[Field, ...] = ()
    privacy_modes: frozenset[int] = frozenset({1})
    dp: bool = False
    model_suffix: str = ".model"
    participant_options: tuple[Field, ...] = ()
    checks: tuple[Callable[[dict], None], ...] = ()
    missing_values: str = "drop"
    distribution: str | None = None
    version: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "privacy_modes", frozenset(self.privacy_modes))
        if self.missing_values not in ("drop", "keep"):
            raise ValueError(f"algorithm {self.name!r}: missing_values must be 'drop' or 'keep'")
        clash = sorted({f.name for f in self.fields} & GENERIC_FIELDS)
        if clash:
            raise ValueError(f"algorithm {self.name!r} declares generic field(s) {', '.join(clash)}")
        if not self.privacy_modes or not self.privacy_modes <= set(POM_NAMES) or 1 not in self.privacy_modes:
            raise ValueError(f"algorithm {self.name!r}: privacy_modes must include 1 and be among 1, 2, 3")
        if self.privacy_modes - {1} and getattr(self.aggregator, "reuses_global_arrays", False):
            raise ValueError(f"algorithm {self.name!r} reuses its global arrays during a round, so it runs under POM 1 "
                             "only: POM 2 and 3 keep the round's arrays while the updates come in")
        if self.privacy_modes - {1} and not getattr(self.aggregator, "weighted_mean_update", False):
            raise ValueError(f"algorithm {self.name!r} declares POM {', '.join(map(str, sorted(self.privacy_modes)))}, "
                             "but POM 2 and 3 need an update that is a weighted sum of arrays: an aggregator with "
                             "weighted_mean_update = True (algorithms/engine/update_aggregation.py)")

    @property
    def all_fields(self) -> tuple[Field, ...]:
        """Its fields, with the shared ``dp`` field when it declares ``dp``."""
        if not self.dp:
            return tuple(self.fields)
        return tuple(self.fields) + (DP,)

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.all_fields]

    def validate(self, definition: dict) -> dict:
        """The definition with this algorithm's defaults filled in; DefinitionError naming the first
        field it refuses (unknown fields with the known ones, a type, a range, a privacy mode, dp).

        Generic fields pass through unchecked: the platform checks them (and a client before it)."""
        if not isinstance(definition, dict):
            raise DefinitionError("a task definition must be a JSON object")
        result = dict(definition)
        if result.get("dp") is not None and not self.dp:
            raise DefinitionError(f"algorithm {self.name!r} has no differential privacy; 'dp' works only with "
                                  "algorithms that declare it (`werkbund algorithms --details`)")
        own = {f.name: f for f in self.all_fields}
        unknown = sorted(set(result) - GENERIC_FIELDS - set(own))
        if unknown:
            raise DefinitionError(
                f"unknown field(s) in task definition: {', '.join(unknown)}; algorithm {self.name!r} knows "
                f"{', '.join(sorted(own)) or 'no fields of its own'}, and every task {', '.join(sorted(GENERIC_FIELDS))}")
        pom = result.get("pom", 1)
        if pom not in self.privacy_modes:
            modes = " and ".join(str(m) for m in sorted(self.privacy_modes))
            raise DefinitionError(f"algorithm {self.name!r} runs in POM {modes} only, not POM {pom} "
                                  f"({POM_NAMES.get(pom, 'unknown')})")
        for name, spec in own.items():
            if result.get(name) is None:
                result.pop(name, None)
                if spec.default is not None:
                    result[name] = spec.default
                continue
            spec.validate(result[name], result)
        for check in self.checks:
            try:
                check(result)
            except ValueError as exc:
                raise DefinitionError(f"algorithm {self.name!r}: {exc}") from None
        return result

    def validate_options(self, options: dict) -> dict:
        """A participant's options checked against ``participant_options`` (defaults filled in)."""
        known = {f.name: f for f in self.participant_options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise DefinitionError(
                f"algorithm {self.name!r} takes no participant option {', '.join(unknown)}; its options: "
                f"{', '.join(sorted(known)) or 'none'}")
        result = {}
        for name, spec in known.items():
            if options.get(name) is None:
                if spec.default is not None:
                    result[name] = spec.default
                continue
            result[name] = spec.validate(options[name], what="participant option")
        return result

    def describe(self) -> dict:
        """JSON-able facts for listings: what ``werkbund algorithms --algorithm NAME`` prints."""
        return {"name": self.name, "description": self.description, "distribution": self.distribution,
                "version": self.version, "privacy_modes": sorted(self.privacy_modes), "dp": self.dp,
                "model_suffix": self.model_suffix, "fields": [f.describe() for f in self.all_fields],
                "participant_options": [f.describe() for f in self.participant_options]}


def _entry_points(name: str | None = None):
    found = entry_points(group=GROUP)
    return [ep for ep in found if name is None or ep.name == name]


def available() -> list[str]:
    return sorted({ep.name for ep in _entry_points()})


def providers(name: str) -> list[str]:
    """The distributions that install an entry point called ``name`` (without loading it)."""
    return sorted({ep.dist.name for ep in _entry_points(name) if getattr(ep, "dist", None) is not None})


def normalized(distribution: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def get_algorithm(name: str, distribution: str | None = None) -> Algorithm:
    """The installed algorithm ``name``; where several distributions install that name, the one from
    ``distribution`` if it is among them."""
    matches = _entry_points(name)
    if not matches:
        raise UnknownAlgorithm(f"algorithm {name!r} is not installed; installed: {', '.join(available()) or 'none'}")
    preferred = [ep for ep in matches if distribution and getattr(ep, "dist", None) is not None
                 and normalized(ep.dist.name) == normalized(distribution)]
    entry = (preferred or matches)[0]
    algorithm = entry.load()
    if not isinstance(algorithm, Algorithm):
        raise UnknownAlgorithm(f"entry point {name!r} does not name a werkbund Algorithm")
    if algorithm.name != name:
        raise UnknownAlgorithm(f"entry point {name!r} names the algorithm {algorithm.name!r}; they must agree")
    dist = getattr(entry, "dist", None)
    if dist is not None and (algorithm.distribution is None or algorithm.version is None):
        algorithm = replace(algorithm, distribution=algorithm.distribution or dist.name,
                            version=algorithm.version or dist.version)
    return algorithm


__all__ = ["Algorithm", "DefinitionError", "Field", "GENERIC_FIELDS", "GROUP", "UnknownAlgorithm", "available",
           "get_algorithm", "normalized", "providers"]
