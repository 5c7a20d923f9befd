"""Small argument checks shared by the package; each raises with the argument named in backticks."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Literal, overload

from lightning_autolrs.exceptions import InvalidArgumentError, InvalidArgumentTypeError


@overload
def check_int(name: str, value: Any, *, minimum: int | None = ..., allow_none: Literal[False] = ...) -> int: ...
@overload
def check_int(name: str, value: Any, *, minimum: int | None = ..., allow_none: bool) -> int | None: ...
def check_int(name: str, value: Any, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """Return ``value`` as ``int`` after checking type and lower bound."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InvalidArgumentTypeError(f"`{name}` must be an integer, got {value!r} of type {type(value).__name__}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(f"`{name}` must be >= {minimum}, got {value}.")
    return value


@overload
def check_float(
    name: str,
    value: Any,
    *,
    positive: bool = ...,
    nonnegative: bool = ...,
    open_unit: bool = ...,
    allow_none: Literal[False] = ...,
) -> float: ...
@overload
def check_float(
    name: str,
    value: Any,
    *,
    positive: bool = ...,
    nonnegative: bool = ...,
    open_unit: bool = ...,
    allow_none: bool,
) -> float | None: ...
def check_float(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    open_unit: bool = False,
    allow_none: bool = False,
) -> float | None:
    """Return ``value`` as a finite ``float`` after checking type and range."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidArgumentTypeError(f"`{name}` must be a number, got {value!r} of type {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidArgumentError(f"`{name}` must be finite, got {value}.")
    if positive and value <= 0:
        raise InvalidArgumentError(f"`{name}` must be > 0, got {value}.")
    if nonnegative and value < 0:
        raise InvalidArgumentError(f"`{name}` must be >= 0, got {value}.")
    if open_unit and not 0.0 < value < 1.0:
        raise InvalidArgumentError(f"`{name}` must lie strictly between 0 and 1, got {value}.")
    return value
