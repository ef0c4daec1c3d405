"""Math (FHIRPath 5.7): abs(), ceiling(), exp(), floor(), ln(), log(), power(), round(), sqrt(), truncate()."""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal
from typing import Any

from protocol.engine.fhirpath.functions.base import Entry, _fn_simple, arities
from protocol.engine.fhirpath.runtime import (
    Compiling,
    _number_argument,
    _Run,
    _single_number,
    _State,
)

# -- math


def _math(compute: Callable[[Decimal], Any]) -> Callable[[list], list]:
    def function(data: list) -> list:
        if not data:
            return []
        result = compute(_single_number(data))
        return [] if result is None else [result]

    return function


def _sqrt(value: Decimal) -> Decimal | None:
    return None if value < 0 else value.sqrt()


def _fn_round(compiler: Compiling, params: list) -> _Run:
    precision = compiler.value(params[0])

    def round_(data: list, st: _State) -> list:
        digits = _number_argument(precision(st))
        if not data:
            return []
        value = _single_number(data)
        if digits is None:
            return [round(value)]
        scale = 10 ** Decimal(digits)
        return [round(value * scale) / scale]

    return round_


def _fn_log(compiler: Compiling, params: list) -> _Run:
    base = compiler.value(params[0])

    def log(data: list, st: _State) -> list:
        b = _number_argument(base(st))
        if not data or b is None:
            return []
        return [(_single_number(data).ln() / Decimal(b).ln()).quantize(Decimal("1.000000000000000"))]

    return log


def _fn_power(compiler: Compiling, params: list) -> _Run:
    exponent = compiler.value(params[0])

    def power(data: list, st: _State) -> list:
        e = _number_argument(exponent(st))
        if not data or e is None:
            return []
        value, e = _single_number(data), Decimal(e)
        if value < 0 or e.to_integral_value(rounding=ROUND_FLOOR) != e:
            return []
        return [pow(value, e)]

    return power


FUNCTIONS: dict[str, Entry] = {
    "abs": (_fn_simple(_math(lambda v: v.copy_abs())), arities(0)),
    "ceiling": (_fn_simple(_math(lambda v: v.to_integral_value(rounding=ROUND_CEILING))), arities(0)),
    "exp": (_fn_simple(_math(lambda v: v.exp())), arities(0)),
    "floor": (_fn_simple(_math(lambda v: v.to_integral_value(rounding=ROUND_FLOOR))), arities(0)),
    "ln": (_fn_simple(_math(lambda v: v.ln())), arities(0)),
    "log": (_fn_log, arities(1)),
    "power": (_fn_power, arities(1)),
    "round": (_fn_round, arities(0, 1)),
    "sqrt": (_fn_simple(_math(_sqrt)), arities(0)),
    "truncate": (_fn_simple(_math(lambda v: v.to_integral_value(rounding=ROUND_DOWN))), arities(0)),
}
