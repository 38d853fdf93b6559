"""Checks of plain values (integers, numbers, flags, choices) with one message style.

Every check returns the value in its plain Python type (``int``, ``float``, ``bool``) or
raises with the message ``"{name} must be {requirement}, got {value!r}."``, where ``name``
may carry its context (``"option 'val_size' of dataset 'mnist'"``, ``"train.epochs"``).

Exception policy of the package: an invalid value of an option, a config key or a
function argument raises :class:`~pyro_vae.errors.ConfigError` (what these checks
raise); data that are malformed or outside a support raise
:class:`~pyro_vae.errors.DataError`. Both subclass
:class:`~pyro_vae.errors.PyroVAEError` and :class:`ValueError`.

Integers are ``int`` or numpy integers, never ``bool``; numbers are real numbers
(``int``, ``float``, numpy scalars), never ``bool``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import ConfigError
from .registry import suggest

__all__ = ["check_bool", "check_choice", "check_int", "check_ints", "check_number", "is_integer"]


def _fail(name: str, requirement: str, value: Any):
    raise ConfigError(f"{name} must be {requirement}, got {value!r}.")


def is_integer(value: Any) -> bool:
    """Whether ``value`` is an ``int`` or a numpy integer (``bool`` is not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_within(value: Any, minimum: int | None, maximum: int | None) -> bool:
    return (is_integer(value) and (minimum is None or value >= minimum)
            and (maximum is None or value <= maximum))


def _int_requirement(minimum: int | None, maximum: int | None) -> str:
    if maximum is not None:
        return f"an integer in [{minimum}, {maximum}]" if minimum is not None else f"an integer <= {maximum}"
    if minimum == 1:
        return "a positive integer"
    return f"an integer >= {minimum}" if minimum is not None else "an integer"


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = 1,
    maximum: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (``None`` passes with ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not _int_within(value, minimum, maximum):
        _fail(name, _int_requirement(minimum, maximum), value)
    return int(value)


def check_ints(
    value: Any,
    name: str,
    *,
    minimum: int | None = 1,
    length: int | None = None,
    allow_empty: bool = False,
) -> tuple[int, ...]:
    """An integer or a list/tuple of them (``length`` of them, if given) as a tuple of ints."""
    entries = list(value) if isinstance(value, (list, tuple)) else [value]
    count = f"a list of {length}" if length is not None else "a list"
    requirement = f"{_int_requirement(minimum, None)} or {count} of them"
    if isinstance(value, (list, tuple)) and (
        (length is not None and len(entries) != length) or (not entries and not allow_empty)
    ):
        _fail(name, requirement, value)
    if not all(_int_within(v, minimum, None) for v in entries):
        _fail(name, requirement, value)
    return tuple(int(v) for v in entries)


def _number_requirement(minimum, maximum, greater_than, less_than, finite) -> str:
    low = f"[{minimum}" if minimum is not None else f"({greater_than}" if greater_than is not None else None
    high = f"{maximum}]" if maximum is not None else f"{less_than})" if less_than is not None else None
    kind = "a finite number" if finite and (low is None or high is None) else "a number"
    if low is not None and high is not None:
        return f"{kind} in {low}, {high}"
    if low is not None:
        return f"{kind} {'>=' if low[0] == '[' else '>'} {low[1:]}"
    if high is not None:
        return f"{kind} {'<=' if high[-1] == ']' else '<'} {high[:-1]}"
    return kind


def check_number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    greater_than: float | None = None,
    less_than: float | None = None,
    finite: bool = True,
    allow_none: bool = False,
) -> float | None:
    """``value`` as a ``float`` within the bounds: ``minimum``/``maximum`` inclusive,
    ``greater_than``/``less_than`` strict; NaN never passes, infinities only with ``finite=False``."""
    if value is None and allow_none:
        return None
    ok = (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
        and (not finite or math.isfinite(value))
        and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
        and (greater_than is None or value > greater_than) and (less_than is None or value < less_than)
    )
    if not ok:
        _fail(name, _number_requirement(minimum, maximum, greater_than, less_than, finite), value)
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (numpy booleans included)."""
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, "true or false", value)
    return bool(value)


def check_choice(value: Any, name: str, choices: Iterable) -> Any:
    """``value`` if it is one of ``choices``, else an error listing them (with a suggestion)."""
    choices = tuple(choices)
    if not any(isinstance(value, type(choice)) and isinstance(value, bool) == isinstance(choice, bool)
               and value == choice for choice in choices):
        listed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be one of {listed}, got {value!r}.{suggest(value, choices)}")
    return value
