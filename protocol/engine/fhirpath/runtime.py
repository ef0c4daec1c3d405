"""What an evaluation carries (its state) and how operators and functions read their operands and arguments."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from datetime import datetime, timezone, tzinfo
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol

from protocol.engine.fhirpath.context import EvaluationContext
from protocol.engine.fhirpath.datetimes import (
    _assumed_offset,
    _DateTime,
    _local_offset,
    _parse_datetime,
    _parse_time,
    _shifted_datetime_text,
    _TimeOfDay,
)
from protocol.engine.fhirpath.values import (
    _TEMPORAL_PATHS,
    UCUM,
    DateTime,
    Node,
    Quantity,
    Time,
)


class _Undefined(Exception):
    """%name is not defined (an evaluation error naming it)."""


class _EnvFailure(Exception):
    """Reading a variable from the caller's mapping raised; carries that exception."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _State:
    """What one evaluation carries besides its input: variables, context, $this/$index/$total, and the
    lists searched by `in`/`contains` (see protocol.engine.fhirpath.membership._searched_again)."""

    __slots__ = ("env", "focus", "ctx", "this", "index", "total", "_offset", "members")

    def __init__(self, env: Mapping[str, Any], focus: Any, ctx: EvaluationContext, root: list) -> None:
        self.env = env
        self.focus = focus
        self.ctx = ctx
        self.this = root
        self.index = None
        self.total = None
        self._offset = None
        self.members: dict | None = None

    def offset(self, value: _DateTime) -> int:
        """UTC offset in minutes of a date/time: as written, else the evaluation zone's at that local time."""
        if value.offset is not None:
            return value.offset
        zone = self.ctx.zone
        if type(zone) is timezone:  # a fixed offset: the same for every value, computed once
            if self._offset is None:
                self._offset = _local_offset(zone, value.fields)
            return self._offset
        return _assumed_offset(value, zone)


_Run = Callable[[list, _State], list]


# ---------------------------------------------------------------- small helpers


def _data(item: Any) -> Any:
    """The JSON value of an item (the data of a Node, the item itself otherwise)."""
    return item.data if type(item) is Node else item


def _number_data(item: Any) -> Any:
    """The value of an item as arithmetic and comparisons see it: JSON decimals as Decimal."""
    value = item.data if type(item) is Node else item
    if type(value) is float:
        return Decimal(str(value))
    return value


def _is_number(value: Any) -> bool:
    """int or Decimal, not bool (fhirpathpy's is_number, once JSON decimals are Decimals)."""
    t = type(value)
    return t is int or t is Decimal


def _without_extension_twin(items: list) -> list:
    """A primitive's value without the node of its ``_element`` (extensions), when both are there."""
    if len(items) == 2:
        second = items[1]
        if type(second) is Node and isinstance(second.data, Mapping) and "extension" in second.data:
            return items[:1]
    return items


def _is_extension_only(item: Any) -> bool:
    """The node of a primitive's ``_element`` that holds only extensions (dropped from results)."""
    if type(item) is not Node:
        return False
    data = item.data
    return type(data) is dict and len(data) == 1 and "extension" in data


def _singleton_error(values: list, expected: str) -> Exception:
    return ValueError(f"Unexpected collection {values!r}; expected singleton of type {expected}")


def _truth(result: list) -> bool:
    """A criterion's result as true or false: empty is false, one boolean is itself, one other value true.

    Several values count as true, as fhirpathpy and fhirpath.js read them (``name.exists(given)``), where
    FHIRPath's singleton evaluation would make them an error.
    """
    if not result:
        return False
    if len(result) == 1:
        value = result[0]
        if value is True or value is False:
            return value
        if type(value) is Node:
            value = value.data
            if value is True or value is False:
                return value
    return True


def _boolean_operand(result: list) -> bool | None:
    """An operand of and/or/xor/implies: True, False or None (empty); anything else is an error."""
    if not result:
        return None
    if len(result) > 1:
        raise _singleton_error(result, "Boolean")
    value = result[0]
    if value is True or value is False:
        return value
    value = _data(value)
    if value is True or value is False:
        return value
    raise ValueError(f"Expected boolean, got: {value!r}")


def _integer_argument(result: list) -> Any:
    """An Integer argument: None when empty; an integral number; anything else is an error."""
    if not result:
        return None
    if len(result) > 1:
        raise _singleton_error(result, "Integer")
    value = _number_data(result[0])
    if int(value) != value:
        raise ValueError(f"Expected integer, got: {value!r}")
    return value


def _string_argument(result: list) -> str | None:
    """A String argument: None when empty; a string; anything else is an error."""
    if not result:
        return None
    if len(result) > 1:
        raise _singleton_error(result, "String")
    value = _data(result[0])
    if type(value) is not str and not isinstance(value, str):
        raise ValueError(f"Expected string, got: {value!r}")
    return value


def _number_argument(result: list) -> Any:
    """A Number argument: None when empty; a number (JSON decimals as Decimal); anything else is an error."""
    if not result:
        return None
    if len(result) > 1:
        raise _singleton_error(result, "Number")
    value = _number_data(result[0])
    t = type(value)
    if t is not int and t is not Decimal and not isinstance(value, numbers.Number):
        raise ValueError(f"Expected number, got: {value!r}")
    return value


def _single_string(items: list) -> str:
    """The one string of a string function's input; anything else is an error."""
    if len(items) == 1:
        value = _data(items[0])
        if isinstance(value, str):
            return value
    raise ValueError(f"Expected string, but got {items!r}")


def _single_number(items: list) -> Decimal:
    """The one number of a math function's input, as Decimal (as fhirpathpy converts it)."""
    if len(items) != 1:
        raise ValueError(f"Expected list with number, but got {items!r}")
    value = _number_data(items[0])
    if not _is_number(value):
        raise ValueError(f"Expected number, but got {items!r}")
    return Decimal(value)


# ---------------------------------------------------------------- date/times


@lru_cache(maxsize=8192)
def _keys(value: _DateTime, offset: int, to_utc: bool) -> tuple:
    """Comparison keys of a date/time (see _DateTime.keys), remembered."""
    return value.keys(offset, to_utc)


def _typed_datetime(item: Any) -> _DateTime | None:
    """The item as date/time if typed as one: a DateTime, or a FHIR date/dateTime/instant element."""
    t = type(item)
    if t is DateTime:
        return item.parsed
    if t is Node and item.path in _TEMPORAL_PATHS and type(item.data) is str:
        return _parse_datetime(item.data)
    return None


def _text_datetime(item: Any) -> _DateTime | None:
    """A string item read as a date/time (for comparison with a typed one), or None."""
    value = item.data if type(item) is Node else item
    return _parse_datetime(value) if type(value) is str else None


def _datetime_pair(x: Any, y: Any) -> tuple[_DateTime, _DateTime] | None:
    """Both items as date/times when at least one is typed as one and the other reads as one."""
    dx, dy = _typed_datetime(x), _typed_datetime(y)
    if dx is None and dy is None:
        return None
    if dx is None:
        dx = _text_datetime(x)
        if dx is None:
            return None
    elif dy is None:
        dy = _text_datetime(y)
        if dy is None:
            return None
    return dx, dy


def _compare_datetimes(x: _DateTime, y: _DateTime, st: _State) -> int | None:
    """-1/0/1, or None when equal up to the lower of two different precisions."""
    if len(x.fields) >= 4 and len(y.fields) >= 4:
        kx, ky = _keys(x, st.offset(x), True), _keys(y, st.offset(y), True)
    else:
        kx, ky = _keys(x, 0, False), _keys(y, 0, False)
    for vx, vy in zip(kx, ky):
        if vx != vy:
            return -1 if vx < vy else 1
    return 0 if len(x.fields) == len(y.fields) else None


@lru_cache(maxsize=64)
def _now_value(now: datetime) -> DateTime:
    return DateTime(now.isoformat(timespec="milliseconds"))


@lru_cache(maxsize=64)
def _today_value(now: datetime, zone: tzinfo) -> DateTime:
    return DateTime(now.astimezone(zone).date().isoformat())


@lru_cache(maxsize=4096)
def _shifted(value: _DateTime, amount: Any, unit: str, sign: int) -> DateTime:
    """value + sign * (amount unit) as a DateTime, remembered (the same shifts recur in a request)."""
    return DateTime(_shifted_datetime_text(value, Quantity(amount, unit), sign))


def _as_quantity(item: Any) -> Quantity | None:
    """A Quantity, or a FHIR Quantity-like element with a UCUM code, as a quantity; else None.

    FHIR maps the UCUM codes of time ('a', 'mo', 'wk', 'd', 'h', 'min', 's', 'ms') to the calendar durations
    (FHIR R4, "FHIRPath": Quantity), so a FHIR Quantity of 2 'a' is 2 years: equal to ``2 year``, equivalent to
    ``2 'a'``, and added to a date as calendar years.
    """
    t = type(item)
    if t is Quantity:
        return item
    if t is Node:
        data = item.data
        if type(data) is dict and data.get("system") == UCUM and data.get("value") is not None and data.get("code"):
            code = data["code"]
            calendar = _UCUM_CALENDAR.get(code)
            return Quantity(Decimal(str(data["value"])), calendar if calendar is not None else f"'{code}'")
    return None


_UCUM_CALENDAR = {"a": "year", "mo": "month", "wk": "week", "d": "day", "h": "hour", "min": "minute", "s": "second",
                  "ms": "millisecond"}


def _date_like_for_arithmetic(item: Any) -> bool:
    """True for a date/time value, or a FHIR date/dateTime/instant/time element that reads as one (not a string for +)."""
    t = type(item)
    if t is DateTime or t is Time:
        return True
    if t is not Node or type(item.data) is not str:
        return False
    path = item.path
    if path in _TEMPORAL_PATHS:
        return _parse_datetime(item.data) is not None
    if path == "time":
        return _parse_time(item.data) is not None
    return False


def _typed_time(item: Any) -> _TimeOfDay | None:
    """The item as a time of day if typed as one: a Time, or a FHIR time element."""
    t = type(item)
    if t is Time:
        return item.parsed
    if t is Node and item.path == "time" and type(item.data) is str:
        return _parse_time(item.data)
    return None


_number_operand = _number_argument  # an operand of * / div mod is checked like a Number argument


def _constant_of(run: _Run) -> Any:
    """The value of a literal's closure (number, string or boolean), or None for any other closure."""
    return getattr(run, "constant", None)


def _folded(convert: Callable[[list], Any], run: _Run) -> tuple[bool, Any]:
    """(True, converted value) for a literal's closure whose value converts; (False, None) otherwise.

    A literal that does not convert (``'x'`` where a number is expected) is left to evaluation,
    where it is an error like any other.
    """
    constant = _constant_of(run)
    if constant is None:
        return False, None
    try:
        return True, convert([constant])
    except Exception:
        return False, None


def _number_of(run: _Run, data: list, st: _State) -> Any:
    """An operand of * / div mod evaluated: None when empty; a number; anything else is an error."""
    values = run(data, st)
    if len(values) == 1:
        value = values[0]
        t = type(value)
        if t is int or t is Decimal:
            return value
    return _number_operand(values)


class Compiling(Protocol):
    """What a function's builder asks of the compiler (see protocol.engine.fhirpath.compiler._Compiler)."""

    model: dict
    types: Any

    def compile(self, node: dict) -> _Run:
        """The closure of a parse tree node."""
        ...

    def value(self, node: dict) -> Callable[[_State], list]:
        """An argument evaluated on $this."""
        ...

    def expression(self, node: dict) -> _Run:
        """An argument evaluated per item."""
        ...
