"""The algorithm registry: entry points of the group ``werkbund.algorithms``.

A task definition names an algorithm; the client loads only what is installed
under that name. No import path ever comes from a task definition.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

GROUP = "werkbund.algorithms"


@dataclass(frozen=True)
class Algorithm:
    name: str
    aggregator: type
    participant: type
    description: str = ""


class UnknownAlgorithm(LookupError):
    pass


def available() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def get_algorithm(name: str) -> Algorithm:
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        raise UnknownAlgorithm(f"algorithm {name!r} is not installed; installed: {', '.join(available()) or 'none'}")
    algorithm = matches[0].load()
    if not isinstance(algorithm, Algorithm):
        raise UnknownAlgorithm(f"entry point {name!r} does not name a werkbund Algorithm")
    return algorithm
