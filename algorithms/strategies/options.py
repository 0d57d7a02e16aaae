"""Checks for strategy options, so that a bad task definition fails with a clear ValueError."""
from __future__ import annotations

import math
from numbers import Integral, Real


def number(strategy: str, option: str, value, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float, checked against the bounds (closed unless ``*_open``)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{strategy}: option {option!r} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        bound = ">" if low_open else ">="
        raise ValueError(f"{strategy}: option {option!r} must be {bound} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        bound = "<" if high_open else "<="
        raise ValueError(f"{strategy}: option {option!r} must be {bound} {high}, got {value}")
    return value


def integer(strategy: str, option: str, value, *, low: int = 0) -> int:
    """``value`` as an int >= ``low`` (booleans are refused)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{strategy}: option {option!r} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{strategy}: option {option!r} must be >= {low}, got {value}")
    return int(value)


MAX_SAMPLES = 2**53  # a count a double holds exactly: weights are computed in float64


def samples(n_samples) -> int:
    """A participant's sample count, which must be a positive integer."""
    try:
        whole = isinstance(n_samples, Integral) or (isinstance(n_samples, Real) and float(n_samples).is_integer())
    except OverflowError:
        whole = False
    if isinstance(n_samples, bool) or not whole or not 0 < n_samples <= MAX_SAMPLES:
        raise ValueError(f"an update must come with a positive integer sample count of at most {MAX_SAMPLES}, "
                         f"got {n_samples!r}")
    return int(n_samples)
