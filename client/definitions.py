"""A task definition checked where the code runs, by the algorithm installed there.

The platform checks only the generic fields and never loads an algorithm (``platform/definition.py``).
The rest is checked by the algorithm's own declaration (``Algorithm.validate``,
``algorithms/registry.py``), on the machines that run it:

- the creator's client before it sends a definition (:func:`prepare_definition`: the generic check,
  the algorithm's check with its defaults filled in, and ``algorithm_package`` naming the
  distribution that provides the algorithm, so that participants know what to install);
- each participant's client when it joins, and the aggregator and participant runs before they
  start (:func:`task_algorithm`).

An algorithm that is not installed is refused with :class:`AlgorithmNotInstalled`, naming the
distribution to install. Nothing is ever imported because a task names it: only an entry point
of the group ``werkbund.algorithms`` installed here, by name.
"""
from __future__ import annotations

import logging

from werkbund.algorithms.registry import (Algorithm, DefinitionError, UnknownAlgorithm, available, get_algorithm,
                                          normalized)
from werkbund.platform.definition import validate_definition as validate_generic
from werkbund.platform.errors import AlgorithmNotInstalled, InvalidInput

log = logging.getLogger("werkbund.client")

PACKAGE_FIELD = "algorithm_package"


def load_algorithm(name: str, definition: dict | None = None) -> Algorithm:
    """The installed algorithm ``name``; AlgorithmNotInstalled (naming what to install) if there is none."""
    wanted = ((definition or {}).get(PACKAGE_FIELD) or {}).get("distribution")
    try:
        return get_algorithm(name, wanted)
    except UnknownAlgorithm:
        raise AlgorithmNotInstalled(not_installed_message(name, definition)) from None
    except Exception as exc:  # a plug-in that is installed but broken (a missing dependency, ...)
        raise InvalidInput(f"algorithm {name!r} is installed but cannot be loaded: {type(exc).__name__}: {exc}") \
            from None


def not_installed_message(name: str, definition: dict | None = None) -> str:
    package = (definition or {}).get(PACKAGE_FIELD) or {}
    distribution, version = package.get("distribution"), package.get("version")
    if distribution:
        made = f" (the task was created with version {version})" if version else ""
        how = f"install the distribution {distribution!r}{made}, e.g. `pip install {distribution}`"
    else:
        how = (f"install the distribution that provides it (an entry point named {name!r} in the group "
               "werkbund.algorithms)" + ("; the task does not name one" if definition is not None else ""))
    return f"algorithm {name!r} is not installed here; {how}. Installed: {', '.join(available()) or 'none'}"


def check_definition(definition) -> tuple[dict, Algorithm]:
    """The generic check and the installed algorithm's: (the definition with every default, the algorithm)."""
    generic = validate_generic(definition)
    algorithm = load_algorithm(generic["algorithm"], generic)
    try:
        return algorithm.validate(generic), algorithm
    except DefinitionError as exc:
        raise InvalidInput(str(exc)) from None


def prepare_definition(definition) -> dict:
    """What the creator's client sends: the checked definition, stamped with the algorithm's distribution."""
    full, algorithm = check_definition(definition)
    full.pop(PACKAGE_FIELD, None)
    if algorithm.distribution:
        full[PACKAGE_FIELD] = {"distribution": algorithm.distribution,
                               **({"version": algorithm.version} if algorithm.version else {})}
    return full


def task_algorithm(definition: dict) -> tuple[Algorithm, dict]:
    """A member's check of a task: (the installed algorithm, the definition with its defaults).

    Raises AlgorithmNotInstalled naming the distribution to install, or InvalidInput when the
    definition does not pass the check of the algorithm installed here."""
    name = definition.get("algorithm")
    algorithm = load_algorithm(name, definition)
    wanted = (definition.get(PACKAGE_FIELD) or {}).get("distribution")
    if wanted and algorithm.distribution and normalized(wanted) != normalized(algorithm.distribution):
        raise AlgorithmNotInstalled(
            f"algorithm {name!r} installed here comes from {algorithm.distribution!r}, but the task was created "
            f"with the one from {wanted!r}; install that distribution, e.g. `pip install {wanted}`")
    try:
        checked = algorithm.validate(definition)
    except DefinitionError as exc:
        installed = f" ({algorithm.distribution} {algorithm.version})" if algorithm.distribution else ""
        raise InvalidInput(f"the task's definition does not pass the check of algorithm {name!r} installed "
                           f"here{installed}: {exc}") from None
    wanted = (definition.get(PACKAGE_FIELD) or {}).get("version")
    if wanted and algorithm.version and wanted != algorithm.version:
        log.warning("task created with %s %s; %s is installed here", algorithm.distribution, wanted,
                    algorithm.version)
    return algorithm, checked


def participant_options(algorithm: Algorithm, options: dict) -> dict:
    """A participant's options checked against what the algorithm declares."""
    try:
        return algorithm.validate_options(options)
    except DefinitionError as exc:
        raise InvalidInput(str(exc)) from None
