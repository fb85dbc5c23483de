"""Bounds shared by a config key and the constructor that takes its value: each stated once.

`schedule.*` values reach the LR schedules, and `optim.momentum`/`optim.eta` reach LARS, as they
are. The config schema types those keys with the types below (a value outside them is refused
before any worker starts, naming the key, and `seer config --schema` shows the bound); the
constructors check their arguments against the same types with `check`. So a config that
validates always builds, and a schedule or optimizer built by hand obeys the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

Count = Annotated[int, Field(ge=0)]
"""Steps: warmup, cooldown, cosine length, a hold."""
Patience = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""A learning rate or a relative improvement: finite and >= 0."""
Positive = Annotated[float, Field(gt=0)]
Smoothing = Annotated[float, Field(ge=0, lt=1)]
"""An EMA factor: 1 would never move."""
Factor = Annotated[float, Field(gt=0, lt=1)]
"""The plateau's LR multiplier: 1 would never lower the LR."""
Momentum = Annotated[float, Field(ge=0, lt=1)]

_BOUND_WORDS = {"greater_than_equal": ("small", ">="), "greater_than": ("small", ">"),
                "less_than_equal": ("large", "<="), "less_than": ("large", "<")}


def bound_message(name: str, error: Mapping[str, Any]) -> str | None:
    """`name: 0 is too small; allowed: >= 1` for one of pydantic's bound errors, else None."""
    words = _BOUND_WORDS.get(error["type"])
    if words is None:
        return None
    (bound,) = error["ctx"].values()
    value = error["input"]
    if isinstance(bound, float) and type(value) is int:
        value = float(value)  # a float key shows a YAML `0` as the 0.0 it holds
    if isinstance(bound, float) and bound.is_integer():
        bound = int(bound)  # as written: `> 0`, not `> 0.0`
    return f"{name}: {value!r} is too {words[0]}; allowed: {words[1]} {bound}"


def check(name: str, value: Any, bound: Any) -> None:
    """Raises ValueError naming `name` and what is allowed unless `value` is of type `bound`."""
    try:
        TypeAdapter(bound).validate_python(value, strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ValueError(bound_message(name, error) or f"{name}: {value!r}: {error['msg']}") \
            from None
