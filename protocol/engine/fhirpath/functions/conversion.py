"""Conversion (FHIRPath 5.5): iif(), toBoolean() ... toQuantity(), toString(), toTime() and the convertsTo functions."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from protocol.engine.fhirpath.datetimes import (
    _UNIT_TO_CALENDAR,
    _parse_datetime,
    _parse_time,
)
from protocol.engine.fhirpath.functions.base import Entry, _fn_simple, arities
from protocol.engine.fhirpath.runtime import (
    Compiling,
    _as_quantity,
    _data,
    _is_number,
    _number_data,
    _Run,
    _State,
    _string_argument,
    _truth,
)
from protocol.engine.fhirpath.values import (
    DateTime,
    Node,
    Quantity,
    Time,
    _in_base_unit,
    _ucum_code,
)


def _fn_iif(compiler: Compiling, params: list) -> _Run:
    criterion, yes = compiler.expression(params[0]), compiler.expression(params[1])
    no = compiler.expression(params[2]) if len(params) > 2 else None

    def iif(data: list, st: _State) -> list:
        this = st.this
        st.this = data
        result = criterion(data, st)
        if result and (result[0] is True or (result[0] is not False and _truth(result))):
            st.this = data
            out = yes(data, st)
        elif no is not None:
            st.this = data
            out = no(data, st)
        else:
            out = []
        st.this = this
        return out

    return iif


# -- conversions

_INTEGER_TEXT = re.compile(r"^[+-]?\d+$")
_DECIMAL_TEXT = re.compile(r"^[+-]?\d+(\.\d+)?$")
_TRUE_TEXTS = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE_TEXTS = frozenset({"false", "f", "no", "n", "0", "0.0"})


def _to_integer(data: list) -> list:
    if len(data) != 1:
        return []
    value = _number_data(data[0])
    if value is True or value is False:
        return [int(value)]
    if _is_number(value):
        return [int(value)] if int(value) == value else []
    if type(value) is str and _INTEGER_TEXT.match(value):
        return [int(value)]
    return []


def _to_decimal(data: list) -> list:
    if len(data) != 1:
        return []
    value = _number_data(data[0])
    if value is True or value is False:
        return [Decimal(int(value))]
    if _is_number(value):
        return [Decimal(value)]
    if type(value) is str and _DECIMAL_TEXT.match(value):
        return [Decimal(value)]
    return []


def _to_boolean(data: list) -> list:
    if len(data) != 1:
        return []
    value = _number_data(data[0])
    if value is True or value is False:
        return [value]
    if _is_number(value):
        if value == 1:
            return [True]
        if value == 0:
            return [False]
        return []
    if type(value) is str:
        lowered = value.lower()
        if lowered in _TRUE_TEXTS:
            return [True]
        if lowered in _FALSE_TEXTS:
            return [False]
    return []


def _text_of(value: Any) -> str | None:
    """toString() of one item, or None when it has no string form."""
    t = type(value)
    if t is DateTime:
        return value.text
    if t is Time:
        return _time_text(value)
    if t is Node:
        value = value.data
        t = type(value)
    if t is str:
        return value
    if t is bool:
        return "true" if value else "false"
    if t is int or t is Decimal:
        return str(value)
    if t is float:
        return str(Decimal(str(value)))
    if t is Quantity:
        return str(value)
    return None


def _time_text(value: Time) -> str:
    """toString() of a time: ``hh:mm:ss`` at least (as fhirpathpy writes it), a fraction and an offset as written."""
    parsed = value.parsed
    text = value.text[1:] if value.text.startswith("T") else value.text
    if parsed is None or len(parsed.fields) == 3:
        return text
    clock = ":".join(f"{v:02d}" for v in parsed.fields + (0,) * (3 - len(parsed.fields)))
    return clock + (parsed.zone or "")


def _to_string(data: list) -> list:
    if len(data) != 1:
        return []
    text = _text_of(data[0])
    return [] if text is None else [text]


def _to_datetime(data: list) -> list:
    if len(data) > 1:
        raise ValueError(f"toDateTime() called for a collection of length {len(data)}")
    if not data:
        return []
    value = _data(data[0])
    if type(value) is DateTime:
        return [value]
    if type(value) is str and _parse_datetime(value) is not None:
        return [DateTime(value)]
    return []


def _converts(convert: Callable[[list], list], kind: type) -> Callable[[list], list]:
    def converts(data: list) -> list:
        if len(data) != 1:
            return []
        result = convert(data)
        return [bool(result) and type(result[0]) is kind]

    return converts


def _to_date(data: list) -> list:
    """toDate(): a Date, a DateTime cut to its date, or a string that reads as one."""
    result = _to_datetime(data)
    if not result:
        return []
    value = result[0]
    if value.parsed is None or len(value.parsed.fields) <= 3 and not value.text.endswith("T"):
        return result
    return [DateTime(value.text.partition("T")[0])]


def _to_time(data: list) -> list:
    """toTime(): a Time, or a string (or FHIR time) that reads as a time of day."""
    if len(data) > 1:
        raise ValueError(f"toTime() called for a collection of length {len(data)}")
    if not data:
        return []
    value = _data(data[0])
    if type(value) is Time:
        return [value]
    if type(value) is str and _parse_time(value) is not None:
        return [Time(value[1:] if value.startswith("T") else value)]
    return []


_QUANTITY_TEXT = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(?:'([^']+)'|([a-zA-Z]+))?\s*$")


def _quantity_from(item: Any) -> Quantity | None:
    """One item as a quantity: a Quantity, a FHIR Quantity, a number (unit '1'), a boolean, or a string such as ``5 'mg'`` or ``4 days``."""
    if type(item) is Quantity:
        return item
    quantity = _as_quantity(item)
    if quantity is not None:
        return quantity
    value = _number_data(item)
    if value is True or value is False:
        return Quantity(Decimal(1 if value else 0), "'1'")
    if _is_number(value):
        return Quantity(Decimal(value), "'1'")
    if type(value) is str:
        match = _QUANTITY_TEXT.match(value)
        if match is None:
            return None
        number, code, word = match.groups()
        if word is not None and word not in _UNIT_TO_CALENDAR:
            return None
        try:
            amount = Decimal(number)
        except InvalidOperation:
            return None
        return Quantity(amount, word if word is not None else f"'{code or '1'}'")
    return None


def _fn_to_quantity(compiler: Compiling, params: list) -> _Run:
    """toQuantity([unit]): the input as a quantity, in the unit asked for when given (empty if it does not convert)."""
    unit = compiler.value(params[0]) if params else None

    def to_quantity(data: list, st: _State) -> list:
        if len(data) != 1:
            return []
        quantity = _quantity_from(data[0])
        if quantity is None:
            return []
        if unit is None:
            return [quantity]
        wanted = _string_argument(unit(st))
        if wanted is None:
            return [quantity]
        target = wanted if wanted in _UNIT_TO_CALENDAR else f"'{wanted.strip(chr(39))}'"
        have, _ = _ucum_code(quantity.unit)
        want, _ = _ucum_code(target)
        if have == want:
            return [Quantity(quantity.value, target)]
        base_have, base_want = _in_base_unit(have), _in_base_unit(want)
        if base_have is None or base_want is None or base_have[0] != base_want[0]:
            return []
        return [Quantity(Decimal(str(quantity.value)) * base_have[1] / base_want[1], target)]

    return to_quantity


def _fn_converts_to_quantity(compiler: Compiling, params: list) -> _Run:
    """convertsToQuantity([unit])."""
    convert = _fn_to_quantity(compiler, params)

    def converts(data: list, st: _State) -> list:
        if len(data) != 1:
            return []
        return [bool(convert(data, st))]

    return converts


FUNCTIONS: dict[str, Entry] = {
    "iif": (_fn_iif, arities(2, 3)),
    "toBoolean": (_fn_simple(_to_boolean), arities(0)),
    "convertsToBoolean": (_fn_simple(_converts(_to_boolean, bool)), arities(0)),
    "toInteger": (_fn_simple(_to_integer), arities(0)),
    "convertsToInteger": (_fn_simple(_converts(_to_integer, int)), arities(0)),
    "toDecimal": (_fn_simple(_to_decimal), arities(0)),
    "convertsToDecimal": (_fn_simple(_converts(_to_decimal, Decimal)), arities(0)),
    "toDate": (_fn_simple(_to_date), arities(0)),
    "convertsToDate": (_fn_simple(_converts(_to_date, DateTime)), arities(0)),
    "toDateTime": (_fn_simple(_to_datetime), arities(0)),
    "convertsToDateTime": (_fn_simple(_converts(_to_datetime, DateTime)), arities(0)),
    "toTime": (_fn_simple(_to_time), arities(0)),
    "convertsToTime": (_fn_simple(_converts(_to_time, Time)), arities(0)),
    "toQuantity": (_fn_to_quantity, arities(0, 1)),
    "convertsToQuantity": (_fn_converts_to_quantity, arities(0, 1)),
    "toString": (_fn_simple(_to_string), arities(0)),
    "convertsToString": (_fn_simple(_converts(_to_string, str)), arities(0)),
}
