"""What a task definition field (or a participant option) is: :class:`Field`, its type, default,
range, choices and help, and the :class:`DefinitionError` a refused value raises. An algorithm
declares its fields with it (``algorithms/registry.py``); ``algorithms/fields.py`` holds the fields
several algorithms share."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               dict: "a JSON object", list: "a JSON list"}


class DefinitionError(ValueError):
    """A task definition (or a participant option) that an algorithm refuses; the message names the field."""


@dataclass(frozen=True)
class Field:
    """One task definition field an algorithm declares (or one participant option).

    ``type`` is ``int``, ``float`` (an int is taken too), ``bool``, ``str``, ``dict``, ``list`` or a
    tuple of them; ``default`` is filled in when the field is absent (None: stays absent);
    ``minimum``/``maximum`` bound a number inclusively, ``exclusive_minimum``/``exclusive_maximum``
    exclusively; ``choices`` lists the values allowed; ``check(value, definition)`` may raise
    ``ValueError`` for what the rest cannot say (its message completes "field NAME: ...").
    """

    name: str
    type: Any
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    choices: tuple = ()
    check: Callable[[Any, dict], None] | None = None

    def __post_init__(self):
        if not FIELD_NAME.fullmatch(self.name):
            raise ValueError(f"field name {self.name!r}: use lower-case letters, digits and '_', at most 64")

    @property
    def types(self) -> tuple:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        return types + ((int,) if float in types and int not in types else ())

    @property
    def type_name(self) -> str:
        names = [_TYPE_NAMES.get(t, getattr(t, "__name__", str(t))) for t in
                 (self.type if isinstance(self.type, tuple) else (self.type,))]
        return " or ".join(names)

    @property
    def range(self) -> str:
        """The allowed values in words ('' if any value of the type goes)."""
        if self.choices:
            return "one of " + ", ".join(repr(c) if isinstance(c, str) else str(c) for c in self.choices)
        low = (f"[{self.minimum:g}" if self.minimum is not None
               else f"({self.exclusive_minimum:g}" if self.exclusive_minimum is not None else None)
        high = (f"{self.maximum:g}]" if self.maximum is not None
                else f"{self.exclusive_maximum:g})" if self.exclusive_maximum is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"at least {self.minimum:g}" if self.minimum is not None else f"above {self.exclusive_minimum:g}"
        if high:
            return f"at most {self.maximum:g}" if self.maximum is not None else f"below {self.exclusive_maximum:g}"
        return ""

    def explain(self) -> str:
        """What a value must be, in words: 'an integer in [1, 1000]', "one of 'a', 'b'"."""
        if self.choices:
            return self.range
        return " ".join(part for part in (self.type_name, self.range) if part)

    def validate(self, value, definition: dict | None = None, what: str = "task definition field"):
        """The value if it fits, else DefinitionError naming the field and what it must be."""
        types = self.types
        wrong_type = ((isinstance(value, bool) and bool not in types) or not isinstance(value, types)
                      or (isinstance(value, float) and not math.isfinite(value)))
        if wrong_type or not self._in_range(value):
            hint = f" ({self.help})" if self.help else ""
            raise DefinitionError(f"{what} {self.name!r} must be {self.explain()}, not {value!r}{hint}")
        if self.check is not None:
            try:
                self.check(value, definition or {})
            except ValueError as exc:
                raise DefinitionError(f"{what} {self.name!r}: {exc}") from None
        return value

    def _in_range(self, value) -> bool:
        if self.choices and value not in self.choices:
            return False
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                return False
            if self.maximum is not None and value > self.maximum:
                return False
            if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
                return False
            if self.exclusive_maximum is not None and value >= self.exclusive_maximum:
                return False
        return True

    def describe(self) -> dict:
        """JSON-able facts for listings (``werkbund algorithms --algorithm NAME --json``)."""
        return {"name": self.name, "type": self.type_name, "default": self.default, "range": self.range,
                "help": self.help}
