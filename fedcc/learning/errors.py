"""The error the learning library raises for a setting that cannot work, and its checks."""

from __future__ import annotations

import math
from typing import Any

from fedcc import FedccError


class LearningSettingError(FedccError, ValueError):
    """A learning setting (a learning rate, a clipping norm, a bit count) is out of its range."""


def check_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> float:
    """`value` as a float after checking it is a finite number in the given range.

    Raises `LearningSettingError` saying what range was expected and what was found.
    """
    low = "(" if exclusive_minimum else "["
    high = ")" if exclusive_maximum else "]"
    expected = f"{low}{'-inf' if minimum is None else minimum}, "
    expected += f"{'inf' if maximum is None else maximum}{high}"
    if isinstance(value, bool) or (
        not isinstance(value, (int, float)) and not hasattr(value, "__float__")
    ):
        raise LearningSettingError(f"{name} must be a number in {expected}, found {value!r}")
    number = float(value)
    below = minimum is not None and (number < minimum or (exclusive_minimum and number == minimum))
    above = maximum is not None and (number > maximum or (exclusive_maximum and number == maximum))
    if not math.isfinite(number) or below or above:
        raise LearningSettingError(f"{name} must be a number in {expected}, found {value!r}")
    return number


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """`value` as an int after checking it is an integer in [minimum, maximum]."""
    expected = f"[{minimum}, {'inf' if maximum is None else maximum}]"
    if isinstance(value, bool) or (not isinstance(value, int) and not hasattr(value, "__index__")):
        raise LearningSettingError(f"{name} must be an integer in {expected}, found {value!r}")
    number = int(value.__index__())
    if number < minimum or (maximum is not None and number > maximum):
        raise LearningSettingError(f"{name} must be an integer in {expected}, found {value!r}")
    return number
