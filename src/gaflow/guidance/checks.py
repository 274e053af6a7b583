"""Checks for the numbers entering a config, so a bad value fails at once, naming its field.

JSON lets ``NaN``, ``Infinity``, ``true`` and ``"0.1"`` through where a number belongs, and every comparison with
NaN is false, so a plain ``x <= 0`` check would wave NaN through. Ints are accepted where a float belongs (and kept
as given, so configs hash as they did); bools are refused everywhere a number belongs.

>>> number("clip", 0.5, low=0, low_open=True)
>>> number("clip", float("nan"))
Traceback (most recent call last):
ValueError: clip must be finite, got nan
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


def number(field: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> None:
    """``value`` must be a finite real number (not a bool) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{field} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{field} must be finite, got {value!r}")
    _bounds(field, value, low, high, low_open, high_open)


def optional_number(field: str, value: Any, **bounds: Any) -> None:
    """Like :func:`number`, but ``None`` (the field's "off") is allowed."""
    if value is not None:
        number(field, value, **bounds)


def integer(field: str, value: Any, *, low: int | None = None, high: int | None = None) -> None:
    """``value`` must be an integer (not a bool, not a float such as ``2.0``) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{field} must be an integer, got {value!r} ({type(value).__name__})")
    _bounds(field, value, low, high, False, False)


def _bounds(field: str, value: Any, low, high, low_open: bool, high_open: bool) -> None:
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{field} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{field} must be {'<' if high_open else '<='} {high}, got {value!r}")
