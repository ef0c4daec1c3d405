"""The FHIRPath operators: equality and equivalence, comparison, math and date/time arithmetic, boolean logic, membership, types.

Date/times (FHIRPath 2.0, with the engine's time zone): they are compared precision by precision (year,
month, day, hour, minute, second; seconds and milliseconds are one precision, compared as a decimal).
When both have a time part they are normalized to UTC first (a value without an offset is local time in
the evaluation's time zone, see EvaluationContext); otherwise the written components are compared.  If
the values are equal up to the lower of two different precisions, =, !=, <, <=, >, >= give empty.
Strings are read as date/times when the other operand is a typed date/time (FHIR element, @-literal,
now(), arithmetic).  Arithmetic keeps the value's precision and offset as written ('Z' stays 'Z').
Units: years ... milliseconds (singular or plural) and UCUM 'a', 'mo', 'wk', 'd', 'h', 'min', 's', 'ms'
('a'/'mo' as calendar years/months, as a FHIR Quantity is treated).  Above seconds the quantity is
truncated to an integer; a quantity finer than the value's precision is converted to the value's finest
unit and truncated (hours added to a date become whole days).  Months are added with end-of-month
clamping (Jan 31 + 1 month = Feb 28).  Times of day compare alike and add hours ... milliseconds around
the clock.  Quantities compare and add in comparable units (see values._quantity_values).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from protocol.engine.fhirpath.datetimes import (
    _compare_times,
    _parse_time,
    _shifted_time_text,
)
from protocol.engine.fhirpath.membership import _holds
from protocol.engine.fhirpath.runtime import (
    _as_quantity,
    _boolean_operand,
    _compare_datetimes,
    _constant_of,
    _data,
    _date_like_for_arithmetic,
    _datetime_pair,
    _folded,
    _is_number,
    _number_data,
    _number_of,
    _number_operand,
    _Run,
    _shifted,
    _State,
    _string_argument,
    _text_datetime,
    _typed_datetime,
    _typed_time,
    _without_extension_twin,
)
from protocol.engine.fhirpath.types import _Types
from protocol.engine.fhirpath.values import (
    _NOT_PLAIN_TEXT_PATHS,
    DateTime,
    Node,
    Quantity,
    Time,
    _in_base_unit,
    _quantity_values,
    _ucum_code,
)

# ---------------------------------------------------------------- equality and ordering


def _time_pair(x: Any, y: Any) -> tuple[Any, Any] | None:
    """Both items as times of day when at least one is typed as one and the other reads as one."""
    tx, ty = _typed_time(x), _typed_time(y)
    if tx is None and ty is None:
        return None
    if tx is None:
        value = _data(x)
        tx = _parse_time(value) if type(value) is str else None
    elif ty is None:
        value = _data(y)
        ty = _parse_time(value) if type(value) is str else None
    if tx is None or ty is None:
        return None
    return tx, ty


def _quantity_of(item: Any) -> Quantity | None:
    """A Quantity, or a FHIR Quantity element as one (see _as_quantity), else None."""
    return item if type(item) is Quantity else _as_quantity(item)


def _equal_items(x: Any, y: Any, st: _State) -> bool | None:
    """FHIRPath = of two single items: True, False, or None (empty: date/times of different precisions,
    quantities in units that do not compare)."""
    dx = x.data if type(x) is Node else x
    dy = y.data if type(y) is Node else y
    if type(dx) is str and type(dy) is str:
        x_plain = type(x) is not Node or x.path not in _NOT_PLAIN_TEXT_PATHS
        y_plain = type(y) is not Node or y.path not in _NOT_PLAIN_TEXT_PATHS
        if x_plain and y_plain:
            return dx == dy
    pair = _datetime_pair(x, y)
    if pair is not None:
        result = _compare_datetimes(pair[0], pair[1], st)
        return None if result is None else result == 0
    tx, ty = type(dx), type(dy)
    if tx in _SPECIAL or ty in _SPECIAL or (type(x) is Node and x.path in _QUANTITY_PATHS) or (
        type(y) is Node and y.path in _QUANTITY_PATHS
    ):
        return _equal_special(x, y)
    if tx is float:
        dx = Decimal(str(dx))
    if ty is float:
        dy = Decimal(str(dy))
    return dx == dy


_QUANTITY_PATHS = frozenset({"Quantity", "System.Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity"})


def _equal_special(x: Any, y: Any) -> bool | None:
    """= of items one of which is a time of day, a quantity or a date/time that the other is not."""
    times = _time_pair(x, y)
    if times is not None:
        result = _compare_times(times[0], times[1])
        return None if result is None else result == 0
    qx, qy = _quantity_of(x), _quantity_of(y)
    if qx is not None and qy is not None:
        values = _quantity_values(qx, qy)
        if values is None:
            return False if _quantity_values(qx, qy, equivalence=True) is not None else None
        return values[0] == values[1]
    if type(x) is Node and type(y) is Node:
        return x.data == y.data
    return False


_SPECIAL = (DateTime, Time, Quantity)


def _equal(a: list, b: list, st: _State) -> bool | None:
    """FHIRPath = of two non-empty collections."""
    if len(a) == 1 and len(b) == 1:
        return _equal_items(a[0], b[0], st)
    a1, b1 = _without_extension_twin(a), _without_extension_twin(b)
    if len(a1) == 1 and len(b1) == 1:
        pair = _datetime_pair(a1[0], b1[0])
        if pair is not None:
            result = _compare_datetimes(pair[0], pair[1], st)
            return None if result is None else result == 0
    if len(a) != len(b):
        return False
    empty = False
    for x, y in zip(a, b):
        result = _equal_items(x, y, st)
        if result is False:
            return False
        if result is None:
            empty = True
    return None if empty else True


def _order(a: list, b: list, st: _State) -> int | None:
    """-1/0/1 ordering two collections of one item each, or None (empty: date/times or times of different
    precisions, quantities whose units do not compare); values of different kinds are an error."""
    a, b = _without_extension_twin(a), _without_extension_twin(b)
    if len(a) > 1 or len(b) > 1:
        raise ValueError("Was expecting no more than one element. Singleton was expected")
    x, y = a[0], b[0]
    pair = _datetime_pair(x, y)
    if pair is not None:
        return _compare_datetimes(pair[0], pair[1], st)
    dx, dy = _number_data(x), _number_data(y)
    tx, ty = type(dx), type(dy)
    if (tx is str and ty is str) or (_is_number(dx) and _is_number(dy)) or (tx is bool and ty is bool):
        if type(x) is Node and x.path == "time" or type(y) is Node and y.path == "time":
            times = _time_pair(x, y)
            if times is not None:
                return _compare_times(times[0], times[1])
        return -1 if dx < dy else (0 if dx == dy else 1)
    times = _time_pair(x, y)
    if times is not None:
        return _compare_times(times[0], times[1])
    qx, qy = _quantity_of(x), _quantity_of(y)
    if qx is not None and qy is not None:
        values = _quantity_values(qx, qy)
        if values is None:
            return None
        return -1 if values[0] < values[1] else (0 if values[0] == values[1] else 1)
    raise ValueError(f"Cannot compare {_kind(x)} with {_kind(y)}")


def _kind(item: Any) -> str:
    """A value's kind for an error message."""
    if type(item) is Node:
        return item.path or "element"
    return type(item).__name__


def _equivalent_items(x: Any, y: Any, st: _State) -> bool:
    """FHIRPath ~ of two single items (date/times, strings, numbers, booleans, times, quantities, elements)."""
    pair = _datetime_pair(x, y)
    if pair is not None:
        return _compare_datetimes(pair[0], pair[1], st) == 0
    times = _time_pair(x, y)
    if times is not None:
        return _compare_times(times[0], times[1]) == 0
    dx, dy = _number_data(x), _number_data(y)
    tx, ty = type(dx), type(dy)
    if tx is str and ty is str:
        return " ".join(dx.lower().split()) == " ".join(dy.lower().split())
    if _is_number(dx) and _is_number(dy):
        return _equivalent_numbers(dx, dy)
    if tx is bool and ty is bool:
        return dx == dy
    qx, qy = _quantity_of(x), _quantity_of(y)
    if qx is not None and qy is not None:
        values = _quantity_values(qx, qy, equivalence=True)
        if values is None:
            return False
        places = min(_decimal_places(values[0]), _decimal_places(values[1]))
        step = Decimal(10) ** -places
        return values[0].quantize(step) == values[1].quantize(step)
    if isinstance(dx, dict) and isinstance(dy, dict):
        return _equivalent_json(dx, dy)
    return False


def _equivalent_numbers(x: Any, y: Any) -> bool:
    """~ of two numbers: equal when rounded to the precision of the less precise one."""
    if type(x) is Decimal or type(y) is Decimal:
        places = min(_decimal_places(x), _decimal_places(y))
        if places == 0:
            return round(x) == round(y)
        step = Decimal(10) ** -places
        return Decimal(x).quantize(step) == Decimal(y).quantize(step)
    return x == y


def _equivalent_json(x: Any, y: Any) -> bool:
    """~ of two complex elements: the same members, each equivalent (strings without case and spacing, lists in any order)."""
    if isinstance(x, dict) and isinstance(y, dict):
        keys = set(x) - {"id", "extension"}
        if keys != set(y) - {"id", "extension"}:
            return False
        return all(_equivalent_json(x[k], y[k]) for k in keys)
    if isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            return False
        rest = list(y)
        for item in x:
            for i, other in enumerate(rest):
                if _equivalent_json(item, other):
                    del rest[i]
                    break
            else:
                return False
        return True
    if isinstance(x, str) and isinstance(y, str):
        return " ".join(x.lower().split()) == " ".join(y.lower().split())
    nx = Decimal(str(x)) if type(x) is float else x
    ny = Decimal(str(y)) if type(y) is float else y
    if _is_number(nx) and _is_number(ny):
        return _equivalent_numbers(nx, ny)
    return x == y


def _equivalent(a: list, b: list, st: _State) -> bool:
    """~ of two collections: the same number of items, each item of one equivalent to its own item of the other, in any order."""
    if len(a) != len(b):
        return False
    rest = list(b)
    for x in a:
        for i, y in enumerate(rest):
            if _equivalent_items(x, y, st):
                del rest[i]
                break
        else:
            return False
    return True


def _decimal_places(value: Any) -> int:
    """Digits after the decimal point of a number, trailing zeros ignored (as fhirpathpy counts them)."""
    d = Decimal(str(value))
    text = f"{d:.{abs(d.as_tuple().exponent)}f}".rstrip("0").rstrip(".").split(".")
    return len(text[1]) if len(text) > 1 else 0

# ---------------------------------------------------------------- operators


def _op_equal(negate: bool) -> Callable[[_Run, _Run], _Run]:
    def build(left: _Run, right: _Run) -> _Run:
        def equal(data: list, st: _State) -> list:
            a = left(data, st)
            b = right(data, st)
            if not a or not b:
                return []
            if len(a) == 1 and len(b) == 1:
                x, y = a[0], b[0]
                t = type(x)
                if t is type(y) and (t is str or t is int or t is bool):
                    return [(x == y) != negate]
                result = _equal_items(x, y, st)
            else:
                result = _equal(a, b, st)
            return [] if result is None else [result != negate]

        return equal

    return build


def _op_equal_text(left: _Run, text: str, negate: bool) -> _Run:
    """``x = 'text'``: the common comparison of a code or string with a literal, without the general path."""
    literal = [text]

    def equal_text(data: list, st: _State) -> list:
        a = left(data, st)
        if not a:
            return []
        if len(a) == 1:
            x = a[0]
            if type(x) is Node:
                value = x.data
                if type(value) is str and x.path not in _NOT_PLAIN_TEXT_PATHS:
                    return [(value == text) != negate]
            elif type(x) is str:
                return [(x == text) != negate]
            result = _equal_items(x, text, st)
        else:
            result = _equal(a, literal, st)
        return [] if result is None else [result != negate]

    return equal_text


def _op_equivalent(negate: bool) -> Callable[[_Run, _Run], _Run]:
    def build(left: _Run, right: _Run) -> _Run:
        def equivalent(data: list, st: _State) -> list:
            a = left(data, st)
            b = right(data, st)
            if not a and not b:
                return [not negate]
            if not a or not b or len(a) != len(b):
                return [negate]
            if len(a) > 1:
                return [_equivalent(a, b, st) != negate]
            return [_equivalent_items(a[0], b[0], st) != negate]

        return equivalent

    return build


def _op_order(test: Callable[[int], bool]) -> Callable[[_Run, _Run], _Run]:
    def build(left: _Run, right: _Run) -> _Run:
        def compare(data: list, st: _State) -> list:
            a = left(data, st)
            b = right(data, st)
            if not a or not b:
                return []
            if len(a) == 1 and len(b) == 1:
                x, y = a[0], b[0]
                tx, ty = type(x), type(y)
                if (tx is int or tx is Decimal) and (ty is int or ty is Decimal):
                    return [test(-1 if x < y else (0 if x == y else 1))]
            result = _order(a, b, st)
            return [] if result is None else [test(result)]

        return compare

    return build


def _add(x: Any, y: Any, sign: int) -> Any:
    """x + y (sign 1) or x - y (sign -1) for single items."""
    quantity = _as_quantity(y) if type(y) is not Quantity else y
    if quantity is not None:
        value = _typed_datetime(x) or _text_datetime(x)
        if value is not None:
            return _shifted(value, quantity.value, quantity.unit, sign)
        time = _typed_time(x)
        if time is not None:
            return Time(_shifted_time_text(time, quantity, sign))
        left = _quantity_of(x)
        if left is not None:
            return _add_quantities(left, quantity, sign)
    if _date_like_for_arithmetic(x) or _date_like_for_arithmetic(y):
        raise ValueError(f"date/time arithmetic needs a time quantity, got {_kind(x)} {'+' if sign == 1 else '-'} {_kind(y)}")
    dx, dy = _number_data(x), _number_data(y)
    if sign == 1 and type(dx) is str and type(dy) is str:
        return dx + dy
    if _is_number(dx) and _is_number(dy):
        return dx + dy if sign == 1 else dx - dy
    raise ValueError(f"Cannot compute {_kind(x)} {'+' if sign == 1 else '-'} {_kind(y)}")


def _add_quantities(x: Quantity, y: Quantity, sign: int) -> Quantity | None:
    """x + y or x - y in x's unit; None (empty) when the units do not compare."""
    values = _quantity_values(x, y)
    if values is None:
        return None
    code = _ucum_code(x.unit)[0]
    if code == _ucum_code(y.unit)[0]:
        return Quantity(values[0] + sign * values[1], x.unit)
    base = _in_base_unit(code)
    if base is None:
        return None
    return Quantity((values[0] + sign * values[1]) / base[1], x.unit)


def _op_additive(sign: int) -> Callable[[_Run, _Run], _Run]:
    def build(left: _Run, right: _Run) -> _Run:
        def additive(data: list, st: _State) -> list:
            a = left(data, st)
            b = right(data, st)
            if not a or not b:
                return []
            if len(a) == 1 and len(b) == 1:
                x, y = a[0], b[0]
                tx, ty = type(x), type(y)
                if (tx is int or tx is Decimal) and (ty is int or ty is Decimal):
                    return [x + y] if sign == 1 else [x - y]
            else:
                a, b = _without_extension_twin(a), _without_extension_twin(b)
                if len(a) != 1 or len(b) != 1:
                    raise ValueError(f"Cannot {a!r} {'+' if sign == 1 else '-'} {b!r}")
            result = _add(a[0], b[0], sign)
            return [] if result is None else [result]

        return additive

    return build


def _op_multiplicative(compute: Callable[[Any, Any], Any]) -> Callable[[_Run, _Run], _Run]:
    def build(left: _Run, right: _Run) -> _Run:
        folded, y = _folded(_number_operand, right)
        if folded:

            def by_constant(data: list, st: _State) -> list:
                x = _number_of(left, data, st)
                if x is None:
                    return []
                result = compute(x, y)
                return [] if result is None else [result]

            return by_constant
        folded, x = _folded(_number_operand, left)
        if folded and _constant_of(right) is None:

            def of_constant(data: list, st: _State) -> list:
                y = _number_of(right, data, st)
                if y is None:
                    return []
                result = compute(x, y)
                return [] if result is None else [result]

            return of_constant

        def multiplicative(data: list, st: _State) -> list:
            x = _number_of(left, data, st)
            y = _number_of(right, data, st)
            if x is None or y is None:
                return []
            result = compute(x, y)
            return [] if result is None else [result]

        return multiplicative

    return build


def _divide(x: Any, y: Any) -> Any:
    return None if y == 0 else x / y


def _int_divide(x: Any, y: Any) -> Any:
    return None if y == 0 else int(x / y)


def _modulo(x: Any, y: Any) -> Any:
    return None if y == 0 else x % y


def _op_concatenate(left: _Run, right: _Run) -> _Run:
    def concatenate(data: list, st: _State) -> list:
        x = _string_argument(left(data, st))
        y = _string_argument(right(data, st))
        return [(x or "") + (y or "")]

    return concatenate


def _logical_chain(operands: list[_Run], conjunction: bool) -> _Run:
    """``a and b and c`` / ``a or b or c``: operands in order, stopping at the first deciding one.

    The same as the nested binary operators: for ``and`` the first false gives false, all true
    give true, otherwise empty; for ``or`` the other way round.  Every operand must give a boolean
    or nothing (else an error, as for the binary operators).
    """
    deciding = not conjunction  # false decides an and, true decides an or

    def chain(data: list, st: _State) -> list:
        empty = False
        for operand in operands:
            result = operand(data, st)
            if len(result) == 1 and (result[0] is True or result[0] is False):
                value = result[0]
            else:
                value = _boolean_operand(result)
                if value is None:
                    empty = True
                    continue
            if value is deciding:
                return [deciding]
        return [] if empty else [conjunction]

    return chain


def _op_and(left: _Run, right: _Run) -> _Run:
    def and_(data: list, st: _State) -> list:
        a = _boolean_operand(left(data, st))
        if a is False:
            return [False]
        b = _boolean_operand(right(data, st))
        if b is False:
            return [False]
        return [True] if a is True and b is True else []

    return and_


def _op_or(left: _Run, right: _Run) -> _Run:
    def or_(data: list, st: _State) -> list:
        a = _boolean_operand(left(data, st))
        if a is True:
            return [True]
        b = _boolean_operand(right(data, st))
        if b is True:
            return [True]
        return [False] if a is False and b is False else []

    return or_


def _op_xor(left: _Run, right: _Run) -> _Run:
    def xor(data: list, st: _State) -> list:
        a = _boolean_operand(left(data, st))
        b = _boolean_operand(right(data, st))
        if a is None or b is None:
            return []
        return [a != b]

    return xor


def _op_implies(left: _Run, right: _Run) -> _Run:
    def implies(data: list, st: _State) -> list:
        a = _boolean_operand(left(data, st))
        if a is False:
            return [True]
        b = _boolean_operand(right(data, st))
        if b is True:
            return [True]
        if a is True and b is False:
            return [False]
        return []

    return implies


def _op_in(left: _Run, right: _Run) -> _Run:
    def in_(data: list, st: _State) -> list:
        a = left(data, st)
        b = right(data, st)
        if not a:
            return []
        if not b:
            return [False]
        if len(a) > 1:
            raise ValueError(f"Expected singleton on left side of in, got {a!r}")
        return [_holds(b, a[0], st)]

    return in_


def _op_contains(left: _Run, right: _Run) -> _Run:
    def contains(data: list, st: _State) -> list:
        a = left(data, st)
        b = right(data, st)
        if not b:
            return []
        if not a:
            return [False]
        if len(b) > 1:
            raise ValueError(f"Expected singleton on right side of contains, got {b!r}")
        return [_holds(a, b[0], st)]

    return contains


def _op_is(operand: _Run, namespace: str | None, name: str, types: _Types) -> _Run:
    def is_(data: list, st: _State) -> list:
        values = operand(data, st)
        if not values:
            return []
        if len(values) > 1:
            raise ValueError(f"Expected singleton on left side of 'is', got {values!r}")
        return [types.matches(values[0], namespace, name)]

    return is_


def _op_as(operand: _Run, namespace: str | None, name: str, types: _Types) -> _Run:
    def as_(data: list, st: _State) -> list:
        values = operand(data, st)
        if not values:
            return []
        if len(values) > 1:
            raise ValueError(f"Expected singleton on left side of 'as', got {values!r}")
        return values if types.matches(values[0], namespace, name) else []

    return as_


_OPERATORS: dict[str, Callable] = {
    "=": _op_equal(False),
    "!=": _op_equal(True),
    "~": _op_equivalent(False),
    "!~": _op_equivalent(True),
    "<": _op_order(lambda r: r < 0),
    "<=": _op_order(lambda r: r <= 0),
    ">": _op_order(lambda r: r > 0),
    ">=": _op_order(lambda r: r >= 0),
    "+": _op_additive(1),
    "-": _op_additive(-1),
    "*": _op_multiplicative(lambda x, y: x * y),
    "/": _op_multiplicative(_divide),
    "div": _op_multiplicative(_int_divide),
    "mod": _op_multiplicative(_modulo),
    "&": _op_concatenate,
    "and": _op_and,
    "or": _op_or,
    "xor": _op_xor,
    "implies": _op_implies,
    "in": _op_in,
    "contains": _op_contains,
    "is": _op_is,
    "as": _op_as,
}

