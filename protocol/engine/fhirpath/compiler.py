"""FHIRPath compiled to Python closures over plain JSON values: a second implementation of the Evaluator.

``protocol.engine.fhirpath`` evaluates through fhirpathpy's function implementations and objects; this
module implements the same interface (``Evaluator``, ``CompiledExpression``, ``EvaluationContext``)
without them, for speed.  It shares with ``protocol.engine.fhirpath`` everything that decides *which*
expressions are accepted and *what* a date/time means:

- parsing and every compile-time check (``_parse_checked``: syntax, unknown functions, arity,
  date/time literals), so both evaluators accept and reject exactly the same texts;
- the date/time model (``_parse_datetime``, ``_DateTime.keys``) and calendar arithmetic
  (``_shifted_datetime_text``), so comparisons and ``+``/``-`` with durations follow the
  documented semantics of ``protocol.engine.fhirpath``: precision by precision with seconds and
  milliseconds as one precision, offsets normalized when both values have a time part (a value
  without an offset is local time in the evaluation's time zone), empty when equal up to the lower
  of two precisions, arithmetic keeping precision and offset;
- the FHIRPath 3.0 (STU) functions ``lowBoundary()``, ``highBoundary()``, ``duration()`` and
  ``difference()`` for Date and DateTime values (``_boundary_text``, ``_interval``: the engine
  conventions for values without an offset and for daylight saving changes are documented there and
  in ``protocol.engine.fhirpath``'s module docstring);
- the JSON form of results (``to_json``) and the FHIR type names (``type_name``).

Values
------
A compiled expression works on lists of plain values: the ``dict``, ``str``, ``int``, ``float`` and
``bool`` of the resource JSON, ``Decimal`` for FHIRPath decimals, and four small classes where FHIR
needs more than the JSON value:

- :class:`Node`: an element or resource reached by navigation, with its FHIR type in ``path``
  (named as ``protocol.engine.fhirpath`` names it, so ``type_name`` and ``ofType()`` agree).  The type
  comes from the R4 model (``fhirpathpy.models['r4']``: ``path2Type``, ``choiceTypePaths``,
  ``pathsDefinedElsewhere``), looked up once per parent type and member name: ``onset`` of a
  Condition becomes the ``onsetDateTime``/``onsetPeriod``/... field present, typed ``dateTime``,
  ``Period``, ...; ``is``, ``as``, ``ofType()`` and ``type()`` use the model's type hierarchy.
- :class:`DateTime`: a date or dateTime value (@-literals, ``now()``, ``today()``, ``toDate()``,
  ``toDateTime()``, date arithmetic).  FHIR ``date``/``dateTime``/``instant`` elements stay
  strings in a Node of that type and are read as date/times by comparisons and arithmetic, as are
  plain strings compared with a typed date/time.
- :class:`Time` and :class:`Quantity`: time-of-day values and quantities (``21 days``, ``10 'mg'``).

Evaluation
----------
The parse tree is compiled once into closures ``run(input, state) -> list``.  ``%name`` reads the
caller's mapping when it is reached (``name in env`` then ``env[name]``, at every read, like
``protocol.engine.fhirpath``), ``and``/``or``/``implies`` do not evaluate their right operand when the
left one decides, and three-valued logic, empty propagation and singleton evaluation follow
FHIRPath 2.0.  ``now()``, ``today()``, ``timeOfDay()``, ``memberOf()`` and ``resolve()`` use the
``EvaluationContext`` (today() and timeOfDay() in its time zone, ``EvaluationContext.zone``).

What keeps an evaluation cheap: one element is navigated straight from its JSON (the usual case
inside ``where()``), and consecutive member names (``clinicalStatus.coding``) run as one step;
``name = 'text'`` and ``path.exists()``/``path.empty()`` read the
JSON directly when the element's type allows; chains of ``and``/``or`` run as one loop; literal
arguments and operands are converted once; the type of a member is looked up once per parent
type, ``ofType()`` once per type; date arithmetic and date comparison keys are remembered.  Each of
these gives the same result as the general path, which remains for every other case.  ``in``,
``contains``, ``intersect()``, ``exclude()``, ``subsetOf()`` and ``supersetOf()`` search large
collections by key (``protocol.engine.fhirpath._Membership``: Python's ``==`` on the items, as before, without
comparing every pair), a list tested again and again in one evaluation (``%list`` in a where()) is indexed
once, and where(), select(), all() and aggregate() ask ``EvaluationContext.expired`` every 16 items.

Falling back to protocol.engine.fhirpath
---------------------------------
- At compile time, an expression calling a function this module does not implement (see
  ``_DELEGATED``) is compiled by ``FhirPathPyEvaluator`` instead, as a whole; its inputs and results
  are converted between the two value representations, so callers see no difference.
- At evaluation time, when the native code raises (an error of the expression, or an operand
  combination it leaves to fhirpathpy: time-of-day arithmetic and comparison, quantity comparison
  and equality, collections where a single value is required ...), the same evaluation is done by
  ``FhirPathPyEvaluator``: its result, or its FhirPathEvaluationError, is returned.  So errors keep
  their current messages, and undecided corners keep their current results.  Errors raised by the
  caller's mapping and undefined ``%variables`` are reported directly, without a second evaluation.
  ``NativeEvaluator(rerun=False)`` reports native errors instead (for testing the native code).

Deliberate differences from the fhirpathpy evaluator (where fhirpathpy departs from FHIRPath and no
result of the protocol depends on it):

- ``where()``, ``exists(criteria)``, ``all()`` and ``iif()`` use singleton evaluation of their
  criterion: a single ``false`` (also a FHIR boolean element that is false) is false, any other
  single value true.  fhirpathpy keeps an element that is ``false`` in ``where()``, drops ``0`` and
  ``''``, and takes ``1`` as true in ``iif()``.
- ``=`` and ``!=`` compare collections of several items item by item (fhirpathpy compares only the
  first items when the counts are equal); JSON decimals compare by their written value (``0.1`` as
  FHIR decimal equals the literal ``0.1``).
- ``toString()`` of a boolean is ``'true'``/``'false'`` (fhirpathpy: ``'True'``), of a complex
  element or resource empty (fhirpathpy: Python's text of the dict); ``toInteger()`` returns an
  Integer; ``toDate()``/``toDateTime()`` of a date/time value return it (fhirpathpy: empty);
  ``toBoolean()`` and ``convertsToBoolean()`` read FHIR elements (fhirpathpy: empty for them).
- A capitalized name after a resource reached by navigation (``entry.resource.Patient``) filters by
  resource type, as it does on the focus (fhirpathpy looks for a member of that name).
- The index of ``[ ]`` may be a FHIR integer element; ``%name`` values are not copied (no operation
  here changes its input).
- ``$this`` outside any iterating function is the input of the expression; it is restored after
  ``where()``/``select()``/... (fhirpathpy leaves the last item), as are ``$index`` and ``$total``.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone, tzinfo
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal
from functools import lru_cache
from typing import Any

from fhirpathpy.engine.evaluators import evaluators as _fp_evaluators
from fhirpathpy.engine.nodes import FP_DateTime, FP_Quantity, FP_Time, ResourceNode, dateTimeRE, timeRE
from fhirpathpy.models import models

from protocol.engine.fhirpath import (
    UCUM,
    CompiledExpression,
    EvaluationContext,
    EvaluationTimeout,
    FhirPathEvaluationError,
    FhirPathPyEvaluator,
    _CALENDAR_TO_UCUM,
    _INDEXED_FROM,
    _PAIRWISE_LIMIT,
    _STRIDE_MASK,
    _DateTime,
    _Membership,
    _ResourceNode,
    _UNIT_TO_CALENDAR,
    _assumed_offset,
    _boundary_text,
    _datetime_text,
    _deadline_passed,
    _identifier_text,
    _interval,
    _local_offset,
    _new_datetime,
    _number,
    _parse_checked,
    _parse_datetime,
    _plain_member_key,
    _searched_again,
    _shifted_datetime_text,
)

__all__ = ["DateTime", "NativeEvaluator", "Node", "Quantity", "Time", "native_evaluator"]


# ---------------------------------------------------------------- values


class Node:
    """An element or resource of the data with its FHIR type.

    ``path`` is the type as ``protocol.engine.fhirpath`` names it: the resourceType of a resource, the R4
    type of an element (``CodeableConcept``, ``dateTime``, ``code``, ``System.String`` ...), the
    element's path when the model gives it no type of its own (``Timing.repeat``: a backbone
    element), ``_.name`` below untyped data, None for untyped data.  Compares equal to a value or
    Node with equal data, like fhirpathpy's nodes.
    """

    __slots__ = ("data", "path")

    def __init__(self, data: Any, path: str | None) -> None:
        self.data = data
        self.path = path

    def __repr__(self) -> str:
        return f"Node({self.data!r}, {self.path!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is Node:
            return self.data == other.data
        return self.data == other

    def __hash__(self) -> int:
        return hash((json.dumps(self.data, sort_keys=True, default=str), self.path))


class DateTime:
    """A FHIRPath Date or DateTime value, as written (``text``), with its parsed components."""

    __slots__ = ("text", "parsed")

    def __init__(self, text: str, parsed: _DateTime | None = None) -> None:
        self.text = text
        self.parsed = parsed if parsed is not None else _parse_datetime(text)

    @property
    def asStr(self) -> str:  # noqa: N802 - the attribute name of fhirpathpy's date/time values
        """The value as written (the attribute protocol.engine.fhirpath's date/time values have too)."""
        return self.text

    def __repr__(self) -> str:
        return f"DateTime({self.text!r})"


class Time:
    """A FHIRPath Time value (``@T10:30``, ``timeOfDay()``), as written."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    @property
    def asStr(self) -> str:  # noqa: N802
        """The value as written."""
        return self.text

    def __repr__(self) -> str:
        return f"Time({self.text!r})"


class Quantity:
    """A FHIRPath quantity: a number and its unit, a calendar word (``days``) or a quoted UCUM code (``'mg'``)."""

    __slots__ = ("value", "unit")

    def __init__(self, value: Any, unit: str | None) -> None:
        self.value = value
        self.unit = unit

    def __str__(self) -> str:
        return f"{self.value} {self.unit}"

    @property
    def asStr(self) -> str:  # noqa: N802
        """Value and unit as fhirpathpy writes them (``5 'mg'``)."""
        return str(self)

    def __repr__(self) -> str:
        return f"Quantity({self.value!r}, {self.unit!r})"


_TEMPORAL_PATHS = frozenset({"date", "dateTime", "instant"})
_NOT_PLAIN_TEXT_PATHS = _TEMPORAL_PATHS | {"Quantity", "System.Quantity"}
_FP_DATETIME_RE = re.compile(dateTimeRE)
_FP_TIME_RE = re.compile(timeRE)


class _Unsupported(Exception):
    """Raised while compiling for what this module leaves to protocol.engine.fhirpath."""


class _Undefined(Exception):
    """%name is not defined (reported as protocol.engine.fhirpath reports it)."""


class _EnvFailure(Exception):
    """Reading a variable from the caller's mapping raised; carries that exception."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _State:
    """What one evaluation carries besides its input: variables, context, $this/$index/$total, and the
    lists searched by `in`/`contains` (see protocol.engine.fhirpath._searched_again)."""

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
    """Singleton evaluation of a criterion: empty is false, one boolean is itself, one other value true."""
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
    raise ValueError("a criterion gave more than one value")


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
    """A Quantity, or a FHIR Quantity-like element with a UCUM code, as a quantity; else None."""
    t = type(item)
    if t is Quantity:
        return item
    if t is Node:
        data = item.data
        if type(data) is dict and data.get("system") == UCUM and data.get("value") is not None and data.get("code"):
            return Quantity(Decimal(str(data["value"])), f"'{data['code']}'")
    return None


def _date_like_for_arithmetic(item: Any) -> bool:
    """True for a FHIR date/dateTime/time element whose text fhirpathpy reads as such (not a string for +)."""
    if type(item) is not Node or type(item.data) is not str:
        return False
    path = item.path
    if path == "date" or path == "dateTime":
        return _FP_DATETIME_RE.match(item.data) is not None
    if path == "time":
        return _FP_TIME_RE.match(item.data) is not None
    return False


# ---------------------------------------------------------------- equality and ordering


def _equal_items(x: Any, y: Any, st: _State) -> bool | None:
    """FHIRPath = of two single items: True, False, or None (empty: date/times of different precisions)."""
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
    if tx in _SPECIAL or ty in _SPECIAL:
        raise _Unsupported("equality of date/time, time or quantity values")
    if (type(x) is Node and x.path in ("Quantity", "System.Quantity")) or (
        type(y) is Node and y.path in ("Quantity", "System.Quantity")
    ):
        raise _Unsupported("equality of quantities")
    if tx is float:
        dx = Decimal(str(dx))
    if ty is float:
        dy = Decimal(str(dy))
    return dx == dy


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
    """-1/0/1 ordering two collections of one item each, or None (date/times of different precisions)."""
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
        return -1 if dx < dy else (0 if dx == dy else 1)
    raise _Unsupported(f"comparison of {tx.__name__} with {ty.__name__}")


def _equivalent_items(x: Any, y: Any, st: _State) -> bool:
    """FHIRPath ~ of two single items (date/times, strings, numbers, booleans, elements)."""
    pair = _datetime_pair(x, y)
    if pair is not None:
        return _compare_datetimes(pair[0], pair[1], st) == 0
    dx, dy = _number_data(x), _number_data(y)
    tx, ty = type(dx), type(dy)
    if tx in _SPECIAL or ty in _SPECIAL:
        raise _Unsupported("equivalence of date/time, time or quantity values")
    if tx is str and ty is str:
        return " ".join(dx.lower().split()) == " ".join(dy.lower().split())
    if _is_number(dx) and _is_number(dy):
        if tx is Decimal or ty is Decimal:
            places = min(_decimal_places(dx), _decimal_places(dy))
            if places == 0:
                return round(dx) == round(dy)
            step = Decimal(10) ** -places
            return Decimal(dx).quantize(step) == Decimal(dy).quantize(step)
        return dx == dy
    if tx is bool and ty is bool:
        return dx == dy
    raise _Unsupported(f"equivalence of {tx.__name__} with {ty.__name__}")


def _decimal_places(value: Any) -> int:
    """Digits after the decimal point of a number, trailing zeros ignored (as fhirpathpy counts them)."""
    d = Decimal(str(value))
    text = f"{d:.{abs(d.as_tuple().exponent)}f}".rstrip("0").rstrip(".").split(".")
    return len(text[1]) if len(text) > 1 else 0


# ---------------------------------------------------------------- de-duplication


def _distinct(items: list) -> list:
    """distinct(), union(), `|`: the first of each value, the way protocol.engine.fhirpath tells values apart.

    Elements and resources (all items Nodes) are the same when their JSON is the same; a data
    object seen before is skipped without comparing, and resources with different type or id
    are not compared.  Other collections are told apart by JSON text (see _plain_key).
    """
    if len(items) < 2:
        return list(items)
    if all(type(item) is Node for item in items):
        seen: set[int] = set()
        kept: dict[Any, list] = {}
        out = []
        for item in items:
            data = item.data
            ident = id(data)
            if ident in seen:
                continue
            seen.add(ident)
            t = type(data)
            if t is dict:
                rtype, rid = data.get("resourceType"), data.get("id")
                if rtype is not None and rid is not None and type(rid) is str and type(rtype) is str:
                    key: Any = (rtype, rid)
                    same = kept.get(key)
                    if same is None:
                        kept[key] = [data]
                    elif any(data == other for other in same):
                        continue
                    else:
                        same.append(data)
                    out.append(item)
                    continue
                key = json.dumps(data, sort_keys=True, default=str)
            elif t is str or t is int or t is float or t is bool or data is None:
                key = (t, data)
            else:
                key = json.dumps(data, sort_keys=True, default=str)
            if key in kept:
                continue
            kept[key] = [data]
            out.append(item)
        return out
    if all(type(item) is Quantity for item in items):
        raise _Unsupported("distinct quantities")
    unique: dict[Any, Any] = {}
    for item in items:
        unique[_plain_key(item)] = item  # a repeated key keeps its place and takes the last value, as in fhirpathpy
    return list(unique.values())


def _plain_key(item: Any) -> Any:
    """What tells a value apart in a mixed collection: the same classes as fhirpathpy's JSON text keys.

    Strings are keyed by themselves (their JSON text is unique to them and starts with a quote, which
    no other key does); elements and resources are never equal to another item there.
    """
    t = type(item)
    if t is str:
        return ("s", item)
    if t is Node:
        return ("n", id(item))
    if t is int:
        return str(item)
    if t is bool:
        return "true" if item else "false"
    if t is DateTime or t is Time:
        return ("t", item.text)
    if t is Quantity or t is Decimal:
        return str(item)
    try:
        return json.dumps(item, sort_keys=True)
    except TypeError:
        return str(item)


def _contains_item(items: list, value: Any) -> bool:
    """True if an item of the collection equals the value (as fhirpathpy's `==` on items): Python's ``in`` on a
    list, which tests each item in order for being the value or ``item == value``."""
    return value in items


def _same(item: Any, value: Any) -> bool:
    """The equality of _contains_item: the same object, or ``item == value``."""
    return item is value or item == value


def _member_key(item: Any) -> Any:
    """The key of an item for protocol.engine.fhirpath._Membership under _same: a Node's data as a JSON value; a
    DateTime, Time or Quantity equals only itself (none defines ``==``), so its identity is its key."""
    t = type(item)
    if t is Node:
        return _plain_member_key(item.data)
    if t is DateTime or t is Time or t is Quantity:
        return ("object", id(item))
    return _plain_member_key(item)


def _holds(items: list, value: Any, st: _State) -> bool:
    """_contains_item, by key when the same list is searched again in this evaluation."""
    if len(items) < _INDEXED_FROM:
        return _contains_item(items, value)
    members = st.members
    if members is None:
        members = st.members = {}
    index = _searched_again(members, items, _member_key, _same)
    if index is None:
        return _contains_item(items, value)
    return index.holds(value)


def _index(items: list) -> _Membership:
    """The items, searched by key under _same."""
    return _Membership(_member_key, _same, items)


# ---------------------------------------------------------------- types


_TYPE_TESTS_LIMIT = 4096


class _Types:
    """Type questions answered from the R4 model, remembered per (type, asked type)."""

    def __init__(self, model: dict) -> None:
        self.model = model
        self.type2parent = model.get("type2Parent") or {}
        self.path2type = model.get("path2Type") or {}
        self._tests: dict[tuple, bool] = {}

    @staticmethod
    def info(value: Any) -> tuple[str, str] | None:
        """(namespace, name) of a value's type, as fhirpathpy's TypeInfo.from_value gives it."""
        t = type(value)
        if t is Node:
            path = value.path
            if path is None:
                return None
            if path.startswith("System."):
                return "System", path[7:]
            if "." not in path:
                return "FHIR", path
            return "FHIR", "BackboneElement"
        if t is bool:
            return "System", "Boolean"
        if t is int:
            return "System", "Integer"
        if t is Decimal or t is float:
            return "System", "Decimal"
        if t is DateTime:
            return "System", "DateTime"
        if t is Time:
            return "System", "Time"
        if t is Quantity:
            return "System", "Quantity"
        if t is str:
            return "System", "String"
        if isinstance(value, Mapping):
            return "System", "Object"
        return "System", t.__name__.capitalize()

    def _is_subtype(self, name: str, wanted: str) -> bool:
        current: str | None = name
        while current:
            if current == wanted:
                return True
            current = self.type2parent.get(current) or self.path2type.get(current)
        return False

    def matches(self, value: Any, namespace: str | None, name: str) -> bool:
        """``value is namespace.name`` (namespace None: any)."""
        info = self.info(value)
        if info is None:
            raise ValueError("value without a type")
        key = (info, namespace, name)
        known = self._tests.get(key)
        if known is not None:
            return known
        own_namespace, own_name = info
        if namespace is not None and namespace != own_namespace:
            result = False
        elif own_namespace == "FHIR":
            result = self._is_subtype(own_name, name)
        else:
            result = own_name == name
        if len(self._tests) < _TYPE_TESTS_LIMIT:
            self._tests[key] = result
        return result


def _type_specifier(text: str) -> tuple[str | None, str]:
    """(namespace, name) of a type specifier's text (``Quantity``, ``FHIR.Quantity``, ``System.String``)."""
    parts = text.replace("`", "").split(".")
    if len(parts) == 2:
        return parts[0], parts[1]
    if len(parts) == 1:
        return None, parts[0]
    raise _Unsupported(f"type specifier {text}")


# ---------------------------------------------------------------- navigation


def _resource_type_of(data: Any) -> Any:
    """The resourceType of a resource dict, or None (an untyped value)."""
    if isinstance(data, Mapping) and "resourceType" in data:
        return data["resourceType"]
    return None


def _add_children(acc: list, value: Any, path: str) -> None:
    """Append the node(s) of a member's value: one per list item, a resource typed by its resourceType."""
    if type(value) is list:
        for item in value:
            if type(item) is dict and "resourceType" in item:
                acc.append(Node(item, item["resourceType"]))
            else:
                acc.append(Node(item, path))
    elif type(value) is dict and "resourceType" in value:
        acc.append(Node(value, value["resourceType"]))
    else:
        acc.append(Node(value, path))


_MEMBER_CACHE_LIMIT = 512


class _Member:
    """One member name (``code``, ``onset`` ...): the children of an element of a given type, and their type.

    The type of the children depends only on the type of the element (``path``) and the name, so it
    is looked up in the model once per element type: the field names of a choice element
    (``onsetDateTime``, ``onsetPeriod`` ...) with their types, or the member's own type.  A
    primitive's ``_name`` element (its extensions) is a child too, with the primitive's type, as
    protocol.engine.fhirpath has it.
    """

    __slots__ = ("key", "under_key", "path2type", "elsewhere", "choice_paths", "by_path")

    def __init__(self, model: dict, key: str) -> None:
        self.key = key
        self.under_key = "_" + key
        self.path2type = model.get("path2Type") or {}
        self.elsewhere = model.get("pathsDefinedElsewhere") or {}
        self.choice_paths = model.get("choiceTypePaths") or {}
        self.by_path: dict[Any, tuple] = {}

    def plan(self, path: Any) -> tuple:
        """For elements of one type: (choice fields with their types, or None; the member's type)."""
        plan = self.by_path.get(path)
        if plan is not None:
            return plan
        key = self.key
        raw = f"{path}.{key}" if path else f"_.{key}"
        child = self.elsewhere.get(raw, raw)
        actual = self.choice_paths.get(child)
        if actual:
            choices = tuple((key + t, "_" + key + t, self.path2type.get(child + t, child + t)) for t in actual)
            plan = (choices, None)
        else:
            element = "Extension" if key == "extension" else child
            plan = (None, self.path2type.get(element, element))
        if len(self.by_path) < _MEMBER_CACHE_LIMIT:
            self.by_path[path] = plan
        return plan

    def expand(self, value: Any, path: Any, values: list, paths: list) -> None:
        """Append the children of one element (its JSON value and its type) to values/paths."""
        if type(value) is dict or isinstance(value, Mapping):
            choices, element_path = self.by_path.get(path) or self.plan(path)
            if choices is None:
                found = value.get(self.key)
                if found is not None:
                    _extend(values, paths, found, element_path)
                found = value.get(self.under_key)
                if found is not None:
                    _extend(values, paths, found, element_path)
                return
            for field, field_, choice_path in choices:
                found = value.get(field)
                found_ = value.get(field_)
                if found is not None or found_ is not None:
                    if found is not None:
                        _extend(values, paths, found, choice_path)
                    if found_ is not None:
                        _extend(values, paths, found_, choice_path)
                    return
        elif type(value) is Quantity:
            if self.key != "value":
                raise ValueError(f"member {self.key} of a quantity")
            values.append(value.value)
            paths.append(f"_.{self.key}")
        elif self.key == "length":
            if type(value) is not str:
                raise ValueError(f"length of a {type(value).__name__}")
            values.append(len(value))
            paths.append((self.by_path.get(path) or self.plan(path))[1])


def _extend(values: list, paths: list, found: Any, path: str) -> None:
    """Append a member's value(s): one per list item, a resource typed by its resourceType."""
    if type(found) is list:
        for item in found:
            values.append(item)
            paths.append(item["resourceType"] if type(item) is dict and "resourceType" in item else path)
    else:
        values.append(found)
        paths.append(found["resourceType"] if type(found) is dict and "resourceType" in found else path)


def _members(model: dict, keys: list[str]) -> _Run:
    """A path of member names (``clinicalStatus.coding.code``): the descendants reached, typed from the model.

    Each name is one step (see _one_member); the path stops as soon as nothing is left.
    """
    steps = [_one_member(_Member(model, key)) for key in keys]
    if len(steps) == 1:
        return steps[0]

    def navigate(data: list, st: _State) -> list:
        for step in steps:
            data = step(data, st)
            if not data:
                return data
        return data

    return navigate


_new = object.__new__


def _one_member(step: _Member) -> _Run:
    """A single member name; one element (the case inside where() and select()) is answered directly."""
    key, under_key, by_path = step.key, step.under_key, step.by_path

    def navigate(data: list, st: _State) -> list:
        if len(data) == 1:
            item = data[0]
            if type(item) is Node:
                value = item.data
                if type(value) is dict:
                    choices, path = by_path.get(item.path) or step.plan(item.path)
                    if choices is None:
                        found = value.get(key)
                        twin = under_key in value
                    else:
                        found = None
                        twin = False
                        for field, field_, choice_path in choices:
                            found = value.get(field)
                            twin = field_ in value
                            if found is not None or twin:
                                path = choice_path
                                break
                    if not twin:
                        if found is None:
                            return []
                        if type(found) is not list:
                            node = _new(Node)
                            node.data = found
                            node.path = found["resourceType"] if type(found) is dict and "resourceType" in found else path
                            return [node]
                        out = []
                        for child in found:
                            node = _new(Node)
                            node.data = child
                            node.path = child["resourceType"] if type(child) is dict and "resourceType" in child else path
                            out.append(node)
                        return out
        values: list = []
        paths: list = []
        for item in data:
            if type(item) is Node:
                values.append(item.data)
                paths.append(item.path)
            else:
                values.append(item)
                paths.append(_resource_type_of(item))
        return _child_nodes(step, values, paths)

    navigate.member = step  # type: ignore[attr-defined]  (read by fused operations: see _Compiler)
    return navigate


def _member_exists(navigate: _Run, negate: bool) -> _Run:
    """``path.exists()`` (``path.empty()`` when negate): one element of a known type is answered from its JSON."""
    step: _Member | None = getattr(navigate, "member", None)
    if step is None:
        return lambda data, st: [bool(navigate(data, st)) != negate]
    key, under_key, by_path = step.key, step.under_key, step.by_path

    def exists(data: list, st: _State) -> list:
        if len(data) == 1:
            item = data[0]
            if type(item) is Node and type(item.data) is dict:
                plan = by_path.get(item.path)
                if plan is not None and plan[0] is None:
                    value = item.data
                    found = value.get(key)
                    if found is None or found == []:
                        found = value.get(under_key)
                        if found is None or found == []:
                            return [negate]
                    return [not negate]
        return [bool(navigate(data, st)) != negate]

    return exists


def _member_equals_text(navigate: _Run, text: str, negate: bool) -> _Run:
    """``name = 'text'`` for one element of a known type: the JSON string compared directly."""
    step: _Member = navigate.member  # type: ignore[attr-defined]
    key, under_key, by_path = step.key, step.under_key, step.by_path
    general = _op_equal_text(navigate, text, negate)

    def equal(data: list, st: _State) -> list:
        if len(data) == 1:
            item = data[0]
            if type(item) is Node:
                value = item.data
                if type(value) is dict:
                    plan = by_path.get(item.path)
                    if plan is not None and plan[0] is None and plan[1] not in _NOT_PLAIN_TEXT_PATHS and under_key not in value:
                        found = value.get(key)
                        if type(found) is str:
                            return [(found == text) != negate]
                        if found is None:
                            return []
        return general(data, st)

    return equal


def _child_nodes(step: _Member, values: list, paths: list) -> list:
    """The children of the elements (values with their types) under one member name, as Nodes."""
    key, under_key, by_path = step.key, step.under_key, step.by_path
    out: list = []
    for value, path in zip(values, paths):
        if type(value) is not dict:
            if isinstance(value, Mapping) or type(value) is Quantity or key == "length":
                found_values: list = []
                found_paths: list = []
                step.expand(value, path, found_values, found_paths)
                out.extend(map(Node, found_values, found_paths))
            continue
        choices, element_path = by_path.get(path) or step.plan(path)
        if choices is None:
            found = value.get(key)
            if found is not None:
                if type(found) is list:
                    for item in found:
                        node = _new(Node)
                        node.data = item
                        node.path = item["resourceType"] if type(item) is dict and "resourceType" in item else element_path
                        out.append(node)
                else:
                    node = _new(Node)
                    node.data = found
                    node.path = found["resourceType"] if type(found) is dict and "resourceType" in found else element_path
                    out.append(node)
            found = value.get(under_key)
            if found is not None:
                _append_nodes(out, found, element_path)
            continue
        for field, field_, choice_path in choices:
            found = value.get(field)
            found_ = value.get(field_)
            if found is not None or found_ is not None:
                if found is not None:
                    _append_nodes(out, found, choice_path)
                if found_ is not None:
                    _append_nodes(out, found_, choice_path)
                break
    return out


def _append_nodes(out: list, found: Any, path: str) -> None:
    """Append the node(s) of a member's value: one per list item, a resource typed by its resourceType."""
    if type(found) is list:
        for item in found:
            out.append(Node(item, item["resourceType"] if type(item) is dict and "resourceType" in item else path))
    else:
        out.append(Node(found, found["resourceType"] if type(found) is dict and "resourceType" in found else path))


def _type_filter(model: dict, key: str) -> _Run:
    """A capitalized name (``Patient.name``): the input's resources of that type, when every item is a
    resource or a resource-like dict; otherwise the member of that name."""
    navigate = _members(model, [key])

    def type_filter_or_navigate(data: list, st: _State) -> list:
        out = []
        for item in data:
            if type(item) is Node:
                value = item.data
                if not isinstance(value, Mapping):
                    return navigate(data, st)
                if value.get("resourceType") == key:
                    out.append(item)
            elif isinstance(item, Mapping):
                if item["resourceType"] == key:
                    out.append(Node(item, key))
            else:
                return navigate(data, st)
        return out

    return type_filter_or_navigate


def _is_capitalized(key: str) -> bool:
    return key[0] == key[0].upper()


# ---------------------------------------------------------------- the compiler


def _strip_quotes(node: dict) -> str:
    return _identifier_text(node).replace("`", "")


class _Compiler:
    """Turns a parse tree into closures (see the module docstring)."""

    def __init__(self, model: dict, types: _Types) -> None:
        self.model = model
        self.types = types

    def compile(self, node: dict) -> _Run:
        builder = self._BUILDERS.get(node.get("type"))
        if builder is None:
            raise _Unsupported(f"expression node {node.get('type')}")
        return builder(self, node)

    # -- terms

    def _pass_through(self, node: dict) -> _Run:
        return self.compile(node["children"][0])

    def _literal_term(self, node: dict) -> _Run:
        children = node.get("children") or []
        if children and children[0]:
            return self.compile(children[0])
        value = node["text"]
        return lambda data, st: [value]

    def _constant(self, node: dict) -> _Run:
        value = _fp_evaluators[node["type"]](None, None, node)[0]
        run = lambda data, st: [value]  # noqa: E731
        run.constant = value  # type: ignore[attr-defined]  (read by operators and functions: see _constant_of)
        return run

    def _null(self, node: dict) -> _Run:
        return lambda data, st: []

    def _quantity(self, node: dict) -> _Run:
        literal = _fp_evaluators["QuantityLiteral"](None, None, node)[0]
        value = Quantity(literal.value, literal.unit)
        return lambda data, st: [value]

    def _datetime_literal(self, node: dict) -> _Run:
        value = DateTime(node["text"][1:])
        return lambda data, st: [value]

    def _time_literal(self, node: dict) -> _Run:
        value = Time(node["text"][2:])
        return lambda data, st: [value]

    def _this(self, node: dict) -> _Run:
        return lambda data, st: st.this

    def _index(self, node: dict) -> _Run:
        def index(data: list, st: _State) -> list:
            if st.index is None:
                raise KeyError("$index")
            return [st.index]

        return index

    def _total(self, node: dict) -> _Run:
        def total(data: list, st: _State) -> list:
            if st.total is None:
                raise KeyError("$total")
            return st.total

        return total

    def _external_constant(self, node: dict) -> _Run:
        name = _strip_quotes(node["children"][0]["children"][0])

        def variable(data: list, st: _State) -> list:
            env = st.env
            try:
                if name in env:
                    value = env[name]
                elif name == "context":
                    value = st.focus
                elif name == "ucum":
                    value = UCUM
                else:
                    raise _Undefined(name)
            except (_Undefined, EvaluationTimeout):
                raise
            except Exception as exc:
                raise _EnvFailure(exc) from exc
            if value is None:
                return []
            if type(value) is list:
                return value
            if isinstance(value, list):
                return list(value)
            return [value]

        return variable

    # -- paths

    def _invocation_expression(self, node: dict) -> _Run:
        """a.b.c(): the steps in order, consecutive member names followed together."""
        steps: list[dict] = []
        while node.get("type") == "InvocationExpression":
            steps.append(node["children"][1])
            node = node["children"][0]
        steps.append(node)
        steps.reverse()
        runs: list[_Run] = []
        keys: list[str] = []
        for step in steps:
            key = self._member_key(step)
            if key is not None and not _is_capitalized(key):
                keys.append(key)
                continue
            if keys:
                members = _members(self.model, keys)
                keys = []
                test = self._function_name(step)
                if test in ("exists", "empty"):
                    runs.append(_member_exists(members, negate=test == "empty"))
                    continue
                runs.append(members)
            runs.append(self.compile(step))
        if keys:
            runs.append(_members(self.model, keys))
        if len(runs) == 1:
            return runs[0]
        if len(runs) == 2:
            first, second = runs

            def chain2(data: list, st: _State) -> list:
                return second(first(data, st), st)

            return chain2
        if len(runs) == 3:
            first, second, third = runs

            def chain3(data: list, st: _State) -> list:
                return third(second(first(data, st), st), st)

            return chain3

        def chain(data: list, st: _State) -> list:
            for run in runs:
                data = run(data, st)
            return data

        return chain

    @staticmethod
    def _function_name(node: dict) -> str | None:
        """The name of a function step called without arguments (``exists`` in ``code.exists()``), else None."""
        if node.get("type") != "FunctionInvocation":
            return None
        functn = node["children"][0]
        parts = functn.get("children") or []
        if functn.get("type") != "Functn" or len(parts) != 1 or parts[0].get("type") != "Identifier":
            return None
        return _identifier_text(parts[0])

    @staticmethod
    def _member_key(node: dict) -> str | None:
        """The name of a member step (``code`` in ``code.coding``), or None for another kind of step."""
        while node.get("type") in ("TermExpression", "InvocationTerm"):
            node = node["children"][0]
        if node.get("type") != "MemberInvocation":
            return None
        identifier = node["children"][0]
        if identifier.get("type") != "Identifier":
            return None
        return _strip_quotes(identifier)

    def _member_invocation(self, node: dict) -> _Run:
        identifier = node["children"][0]
        if identifier.get("type") != "Identifier":
            raise _Unsupported("member")
        key = _strip_quotes(identifier)
        return _type_filter(self.model, key) if _is_capitalized(key) else _members(self.model, [key])

    def _indexer(self, node: dict) -> _Run:
        collection, index = (self.compile(child) for child in node["children"][:2])

        def indexer(data: list, st: _State) -> list:
            items = collection(data, st)
            position = index(data, st)
            if not position:
                return []
            number = int(_data(position[0]))
            if 0 <= number < len(items):
                return [items[number]]
            return []

        return indexer

    def _polarity(self, node: dict) -> _Run:
        sign = node["terminalNodeText"][0]
        operand = self.compile(node["children"][0])

        def polarity(data: list, st: _State) -> list:
            values = operand(data, st)
            if len(values) != 1:
                raise ValueError(f"Unary {sign} can only be applied to an individual number.")
            value = values[0]
            if not _is_number(value):
                raise ValueError(f"Unary {sign} can only be applied to a number.")
            return [-value] if sign == "-" else [value]

        return polarity

    # -- operators

    def _operator(self, node: dict) -> _Run:
        op = node["terminalNodeText"][0]
        builder = _OPERATORS.get(op)
        if builder is None:
            raise _Unsupported(f"operator {op}")
        left, right = node["children"][:2]
        if op in ("and", "or"):
            operands = [right]
            while left.get("type") == node["type"] and left["terminalNodeText"][0] == op:
                left, right = left["children"][:2]
                operands.append(right)
            operands.append(left)
            operands.reverse()
            return _logical_chain([self.compile(operand) for operand in operands], op == "and")
        if op in ("=", "!=") and self._string_literal(right) is not None:
            operand = self.compile(left)
            if getattr(operand, "member", None) is not None:
                return _member_equals_text(operand, self._string_literal(right), op == "!=")
            return _op_equal_text(operand, self._string_literal(right), op == "!=")
        if op in ("is", "as"):
            namespace, name = _type_specifier(right["text"])
            return builder(self.compile(left), namespace, name, self.types)
        return builder(self.compile(left), self.compile(right))

    @staticmethod
    def _string_literal(node: dict) -> str | None:
        """The value of a string literal operand, or None for another kind of operand."""
        while node.get("type") in ("TermExpression", "LiteralTerm") and node.get("children"):
            node = node["children"][0]
        if node.get("type") != "StringLiteral":
            return None
        return _fp_evaluators["StringLiteral"](None, None, node)[0]

    def _union(self, node: dict) -> _Run:
        left, right = (self.compile(child) for child in node["children"][:2])

        def union(data: list, st: _State) -> list:
            a = left(data, st)
            b = right(data, st)
            return _distinct(a + b)

        return union

    # -- functions

    def _function(self, node: dict) -> _Run:
        functn = node["children"][0]
        if functn.get("type") != "Functn":
            raise _Unsupported("function shape")
        parts = functn["children"]
        name = _identifier_text(parts[0])
        params = parts[1]["children"] if len(parts) > 1 and "children" in parts[1] else []
        builder = _FUNCTIONS.get(name)
        if builder is None:
            raise _Unsupported(f"function {name}()")
        return builder(self, params)

    def value(self, node: dict) -> Callable[[_State], list]:
        """An argument evaluated on $this (the current item of the enclosing iteration, or the input)."""
        run = self.compile(node)
        return lambda st: run(st.this, st)

    def expression(self, node: dict) -> _Run:
        """An argument evaluated per item (or on the function's input): the caller sets $this to its input."""
        return self.compile(node)

    _BUILDERS: dict[str, Callable[[_Compiler, dict], _Run]] = {}


_Compiler._BUILDERS = {
    "TermExpression": _Compiler._pass_through,
    "InvocationTerm": _Compiler._pass_through,
    "ParenthesizedTerm": _Compiler._pass_through,
    "LiteralTerm": _Compiler._literal_term,
    "NumberLiteral": _Compiler._constant,
    "StringLiteral": _Compiler._constant,
    "BooleanLiteral": _Compiler._constant,
    "NullLiteral": _Compiler._null,
    "QuantityLiteral": _Compiler._quantity,
    "DateTimeLiteral": _Compiler._datetime_literal,
    "TimeLiteral": _Compiler._time_literal,
    "ThisInvocation": _Compiler._this,
    "IndexInvocation": _Compiler._index,
    "TotalInvocation": _Compiler._total,
    "ExternalConstantTerm": _Compiler._external_constant,
    "InvocationExpression": _Compiler._invocation_expression,
    "MemberInvocation": _Compiler._member_invocation,
    "FunctionInvocation": _Compiler._function,
    "IndexerExpression": _Compiler._indexer,
    "PolarityExpression": _Compiler._polarity,
    "UnionExpression": _Compiler._union,
    "InequalityExpression": _Compiler._operator,
    "AdditiveExpression": _Compiler._operator,
    "MultiplicativeExpression": _Compiler._operator,
    "EqualityExpression": _Compiler._operator,
    "MembershipExpression": _Compiler._operator,
    "TypeExpression": _Compiler._operator,
    "AndExpression": _Compiler._operator,
    "OrExpression": _Compiler._operator,
    "XorExpression": _Compiler._operator,
    "ImpliesExpression": _Compiler._operator,
}


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
                raise _Unsupported("equivalence of collections")
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
    quantity = _as_quantity(y)
    if quantity is not None:
        value = _typed_datetime(x) or _text_datetime(x)
        if value is not None:
            return _shifted(value, quantity.value, quantity.unit, sign)
    if _date_like_for_arithmetic(x) or _date_like_for_arithmetic(y):
        raise _Unsupported("date/time arithmetic without a time quantity")
    dx, dy = _number_data(x), _number_data(y)
    if sign == 1 and type(dx) is str and type(dy) is str:
        return dx + dy
    if _is_number(dx) and _is_number(dy):
        return dx + dy if sign == 1 else dx - dy
    raise _Unsupported("arithmetic on these operands")


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
            return [_add(a[0], b[0], sign)]

        return additive

    return build


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


# ---------------------------------------------------------------- functions
#
# Each builder takes the compiler and the parameter nodes (their number already checked by
# _parse_checked) and returns the closure run(input, state).  Function arguments that are values
# are evaluated on $this; criteria and projections per item (see _Compiler.value/expression).


def _fn_simple(compute: Callable[[list], list]) -> Callable[[_Compiler, list], _Run]:
    """A function without arguments computing its result from its input."""

    def build(compiler: _Compiler, params: list) -> _Run:
        return lambda data, st: compute(data)

    return build


def _fn_nullable(compute: Callable[..., list], *kinds: str) -> Callable[[_Compiler, list], _Run]:
    """A function of one input string-ish value: empty input gives empty; typed arguments."""
    converters = {"String": _string_argument, "Integer": _integer_argument, "Number": _number_argument}

    def build(compiler: _Compiler, params: list) -> _Run:
        runs = [compiler.compile(p) for p in params]
        folded = [_folded(converters[kinds[i]], run) for i, run in enumerate(runs)]
        if all(ok for ok, _ in folded):
            constants = [value for _, value in folded]

            def with_constants(data: list, st: _State) -> list:
                if not data:
                    return []
                return compute(data, *constants)

            return with_constants
        arguments = [(run, converters[kinds[i]]) for i, run in enumerate(runs)]

        def run(data: list, st: _State) -> list:
            if not data:
                return []
            values = [convert(arg(st.this, st)) for arg, convert in arguments]
            return compute(data, *values)

        return run

    return build


def _fn_where(compiler: _Compiler, params: list) -> _Run:
    criterion = compiler.expression(params[0])

    def where(data: list, st: _State) -> list:
        if not data:
            return []
        this, index = st.this, st.index
        expired = st.ctx.expired
        out = []
        for i, item in enumerate(data):
            if expired is not None and i & _STRIDE_MASK == _STRIDE_MASK and expired():
                raise _deadline_passed()
            st.index = i
            st.this = one = [item]
            result = criterion(one, st)
            if result and (result[0] is True or (result[0] is not False and _truth(result))):
                out.append(item)
        st.this, st.index = this, index
        return out

    return where


def _fn_select(compiler: _Compiler, params: list) -> _Run:
    projection = compiler.expression(params[0])

    def select(data: list, st: _State) -> list:
        if not data:
            return []
        this, index = st.this, st.index
        expired = st.ctx.expired
        out: list = []
        for i, item in enumerate(data):
            if expired is not None and i & _STRIDE_MASK == _STRIDE_MASK and expired():
                raise _deadline_passed()
            st.index = i
            st.this = one = [item]
            out.extend(projection(one, st))
        st.this, st.index = this, index
        return out

    return select


def _fn_exists(compiler: _Compiler, params: list) -> _Run:
    if not params:
        return lambda data, st: [len(data) > 0]
    where = _fn_where(compiler, params)
    return lambda data, st: [len(where(data, st)) > 0]


def _fn_all(compiler: _Compiler, params: list) -> _Run:
    criterion = compiler.expression(params[0])

    def all_(data: list, st: _State) -> list:
        this, index = st.this, st.index
        expired = st.ctx.expired
        result = True
        for i, item in enumerate(data):
            if expired is not None and i & _STRIDE_MASK == _STRIDE_MASK and expired():
                raise _deadline_passed()
            st.index = i
            st.this = one = [item]
            if not _truth(criterion(one, st)):
                result = False
                break
        st.this, st.index = this, index
        return [result]

    return all_


def _fn_aggregate(compiler: _Compiler, params: list) -> _Run:
    step = compiler.expression(params[0])
    initial = compiler.value(params[1]) if len(params) > 1 else None

    def aggregate(data: list, st: _State) -> list:
        total = initial(st) if initial is not None else []
        this, index, outer_total = st.this, st.index, st.total
        expired = st.ctx.expired
        for i, item in enumerate(data):
            if expired is not None and i & _STRIDE_MASK == _STRIDE_MASK and expired():
                raise _deadline_passed()
            st.index = i
            st.total = total
            st.this = one = [item]
            total = step(one, st)
        st.this, st.index, st.total = this, index, outer_total
        return total

    return aggregate


def _fn_iif(compiler: _Compiler, params: list) -> _Run:
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


def _fn_coalesce(compiler: _Compiler, params: list) -> _Run:
    options = [compiler.expression(p) for p in params]

    def coalesce(data: list, st: _State) -> list:
        this = st.this
        for option in options:
            st.this = data
            result = option(data, st)
            if result:
                st.this = this
                return result
        st.this = this
        return []

    return coalesce


def _fn_with_collection(compute: Callable[[list, list], list]) -> Callable[[_Compiler, list], _Run]:
    """A function of its input and one collection argument (union, intersect ...)."""

    def build(compiler: _Compiler, params: list) -> _Run:
        other = compiler.value(params[0])
        return lambda data, st: compute(data, other(st))

    return build


def _intersect(a: list, b: list) -> list:
    """The items of a found in b, the first of each value (both searched by key when large)."""
    out: list = []
    if len(a) * len(b) <= _PAIRWISE_LIMIT:
        for item in a:
            if _contains_item(b, item) and not _contains_item(out, item):
                out.append(item)
        return out
    found, kept = _index(b), _index(())
    for item in a:
        if found.holds(item) and not kept.holds(item):
            kept.add(item)
            out.append(item)
    return out


def _exclude(a: list, b: list) -> list:
    """The items of a not found in b."""
    if len(a) * len(b) <= _PAIRWISE_LIMIT:
        return [x for x in a if not _contains_item(b, x)]
    found = _index(b)
    return [x for x in a if not found.holds(x)]


def _subset_of(a: list, b: list) -> list:
    """Whether every item of a is found in b."""
    if len(a) * len(b) <= _PAIRWISE_LIMIT:
        return [all(_contains_item(b, x) for x in a)]
    found = _index(b)
    return [all(found.holds(x) for x in a)]


def _fn_of_type(compiler: _Compiler, params: list) -> _Run:
    namespace, name = _type_specifier(params[0]["text"])
    types = compiler.types

    by_path: dict[Any, bool] = {}

    def of_type(data: list, st: _State) -> list:
        out = []
        for item in data:
            if type(item) is Node and item.path is not None:
                matches = by_path.get(item.path)
                if matches is None:
                    matches = types.matches(item, namespace, name)
                    if len(by_path) < _TYPE_TESTS_LIMIT:
                        by_path[item.path] = matches
            else:
                matches = types.matches(item, namespace, name)
            if matches:
                out.append(item)
        return out

    return of_type


def _fn_is(compiler: _Compiler, params: list) -> _Run:
    namespace, name = _type_specifier(params[0]["text"])
    return _op_is(lambda data, st: data, namespace, name, compiler.types)


def _fn_as(compiler: _Compiler, params: list) -> _Run:
    namespace, name = _type_specifier(params[0]["text"])
    return _op_as(lambda data, st: data, namespace, name, compiler.types)


def _fn_type(compiler: _Compiler, params: list) -> _Run:
    def type_(data: list, st: _State) -> list:
        out = []
        for item in data:
            info = _Types.info(item)
            if info is None:
                raise ValueError("value without a type")
            out.append({"name": info[1], "namespace": info[0]})
        return out

    return type_


def _fn_extension(compiler: _Compiler, params: list) -> _Run:
    url = compiler.value(params[0])

    def extension(data: list, st: _State) -> list:
        wanted = _string_argument(url(st))
        out = []
        for item in data:
            value = _data(item)
            if isinstance(value, Mapping):
                found = [e for e in value.get("extension", []) if e["url"] == wanted]
                if found:
                    out.append(Node(found[0], "Extension"))
        return out

    return extension


def _take(data: list, count: Any) -> list:
    if not data:
        return []
    if count is None:
        raise ValueError("take() needs a number")
    return data[: int(count)]


def _skip(data: list, count: Any) -> list:
    if not data:
        return []
    if count is None:
        raise ValueError("skip() needs a number")
    return data[int(count):]


def _fn_with_integer(compute: Callable[[list, Any], list]) -> Callable[[_Compiler, list], _Run]:
    def build(compiler: _Compiler, params: list) -> _Run:
        argument = compiler.value(params[0])
        return lambda data, st: compute(data, _integer_argument(argument(st)))

    return build


def _single(data: list) -> list:
    if len(data) > 1:
        raise ValueError("Expected single")
    return data


def _not(data: list) -> list:
    if len(data) != 1:
        return []
    value = _data(data[0])
    if value is True or value is False:
        return [not value]
    return [False]


def _boolean_items(data: list) -> list[bool]:
    values = []
    for item in data:
        value = _data(item)
        if type(value) is not bool:
            raise ValueError(f"Found type {type(value).__name__} but was expecting bool")
        values.append(value)
    return values


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
    if t is DateTime or t is Time:
        return value.text
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
    if type(value) is str and _FP_DATETIME_RE.match(value) and _parse_datetime(value) is not None:
        return [DateTime(value)]
    return []


def _converts(convert: Callable[[list], list], kind: type) -> Callable[[list], list]:
    def converts(data: list) -> list:
        if len(data) != 1:
            return []
        result = convert(data)
        return [bool(result) and type(result[0]) is kind]

    return converts


# -- strings


def _substring(data: list, start: Any, length: Any = None) -> list:
    text = _single_string(data)
    if start is None:
        return []
    start = int(start)
    if start < 0 or start >= len(text):
        return []
    if length is None:
        return [text[start:]]
    return [text[start: start + int(length)]]


def _index_of(data: list, part: Any) -> list:
    text = _single_string(data)
    if part is None:
        raise ValueError("indexOf() needs a string")
    return [text.find(part)]


def _starts_with(data: list, prefix: Any) -> list:
    if prefix is None:
        return []
    text = _single_string(data)
    return [bool(text) and text.startswith(prefix)]


def _ends_with(data: list, suffix: Any) -> list:
    if suffix is None:
        return []
    text = _single_string(data)
    return [bool(text) and text.endswith(suffix)]


def _contains_text(data: list, part: Any) -> list:
    text = _single_string(data)
    if part is None:
        raise ValueError("contains() needs a string")
    return [part in text]


def _replace(data: list, pattern: Any, substitution: Any) -> list:
    text = _single_string(data)
    if pattern == "" and substitution is not None:
        return [substitution + substitution.join(text) + substitution]
    if not text or not pattern:
        return []
    if substitution is None:
        raise ValueError("replace() needs a substitution")
    return [text.replace(pattern, substitution)]


def _matches(data: list, pattern: Any) -> list:
    if not pattern:
        return []
    text = _single_string(data)
    return [re.search(re.compile(pattern, re.DOTALL), text) is not None]


def _replace_matches(data: list, pattern: Any, substitution: Any) -> list:
    text = _single_string(data)
    if pattern is None or substitution is None:
        return []
    return [re.sub(re.compile(pattern), re.sub(r"\$(\d+)", r"\\\1", substitution), text)]


def _length(data: list) -> list:
    return [len(_single_string(data))]


def _split(data: list, separator: Any) -> list:
    text = _single_string(data)
    if separator is None:
        raise ValueError("split() needs a string")
    return text.split(separator)


def _trim(data: list) -> list:
    return [_single_string(data).strip()]


def _upper(data: list) -> list:
    return [_single_string(data).upper()]


def _lower(data: list) -> list:
    return [_single_string(data).lower()]


def _to_chars(data: list) -> list:
    if not data:
        return []
    return list(_single_string(data))


def _fn_join(compiler: _Compiler, params: list) -> _Run:
    separator = compiler.value(params[0]) if params else None

    def join(data: list, st: _State) -> list:
        if not data:
            return []
        sep = _string_argument(separator(st)) if separator is not None else ""
        if sep is None:
            raise ValueError("join() needs a string")
        texts = []
        for item in data:
            value = _data(item)
            if not isinstance(value, str):
                raise TypeError("Join requires a collection of strings.")
            texts.append(value)
        return [sep.join(texts)]

    return join


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


def _fn_round(compiler: _Compiler, params: list) -> _Run:
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


def _fn_log(compiler: _Compiler, params: list) -> _Run:
    base = compiler.value(params[0])

    def log(data: list, st: _State) -> list:
        b = _number_argument(base(st))
        if not data or b is None:
            return []
        return [(_single_number(data).ln() / Decimal(b).ln()).quantize(Decimal("1.000000000000000"))]

    return log


def _fn_power(compiler: _Compiler, params: list) -> _Run:
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


# -- context


def _fn_now(compiler: _Compiler, params: list) -> _Run:
    return lambda data, st: [_now_value(st.ctx.now)]


def _fn_today(compiler: _Compiler, params: list) -> _Run:
    return lambda data, st: [_today_value(st.ctx.now, st.ctx.zone)]


def _fn_time_of_day(compiler: _Compiler, params: list) -> _Run:
    return lambda data, st: [Time(st.ctx.now.astimezone(st.ctx.zone).time().isoformat(timespec="milliseconds"))]


def _single_date_time(items: list, function: str) -> _DateTime | None:
    """The one Date/DateTime of a boundary or interval function's input or argument; None when empty.

    Only typed values count (as in protocol.engine.fhirpath); anything else, or more than one item, is an error.
    """
    items = _without_extension_twin(items)
    if not items:
        return None
    if len(items) > 1:
        raise ValueError(f"{function}() needs a single Date or DateTime, got {len(items)} items")
    value = _typed_datetime(items[0])
    if value is None:
        raise ValueError(f"{function}() needs a Date or DateTime value, got {_to_json(items[0])!r}")
    return value


def _fn_boundary(high: bool) -> Callable[[_Compiler, list], _Run]:
    """lowBoundary([precision]) / highBoundary([precision]) of a Date or DateTime (protocol.engine.fhirpath._boundary_text)."""
    name = "highBoundary" if high else "lowBoundary"

    def build(compiler: _Compiler, params: list) -> _Run:
        precision = compiler.value(params[0]) if params else None

        def boundary(data: list, st: _State) -> list:
            value = _single_date_time(data, name)
            if value is None:
                return []
            digits = None
            if precision is not None:
                digits = _integer_argument(precision(st))
                if digits is None:
                    return []
            text = _boundary_text(value, None if digits is None else int(digits), high, st.ctx.zone)
            return [] if text is None else [DateTime(text)]

        return boundary

    return build


def _fn_interval(whole: bool) -> Callable[[_Compiler, list], _Run]:
    """duration(value, precision) / difference(value, precision) (protocol.engine.fhirpath._interval)."""
    name = "duration" if whole else "difference"

    def build(compiler: _Compiler, params: list) -> _Run:
        other, precision = compiler.value(params[0]), compiler.value(params[1])

        def interval(data: list, st: _State) -> list:
            start = _single_date_time(data, name)
            end = _single_date_time(other(st), name)
            unit = _string_argument(precision(st))
            if start is None or end is None or unit is None:
                return []
            result = _interval(start, end, unit, st.ctx.zone, whole)
            return [] if result is None else [result]

        return interval

    return build


def _fn_member_of(compiler: _Compiler, params: list) -> _Run:
    url = compiler.value(params[0])

    def member_of(data: list, st: _State) -> list:
        wanted = _string_argument(url(st))
        if not data or wanted is None:
            return []
        test = st.ctx.member_of
        for item in data:
            value = item.data if type(item) is Node else item
            if isinstance(value, Mapping) and test(value, wanted):
                return [True]
        return [False]

    return member_of


def _fn_resolve(compiler: _Compiler, params: list) -> _Run:
    def resolve(data: list, st: _State) -> list:
        lookup = st.ctx.resolve
        out = []
        for item in data:
            value = item.data if type(item) is Node else item
            if type(value) is str:
                value = {"reference": value}
            if isinstance(value, Mapping):
                target = lookup(value)
                if target is not None:
                    out.append(Node(target, _resource_type_of(target)))
        return out

    return resolve


def _first(data: list) -> list:
    return data[:1]


def _last(data: list) -> list:
    return data[-1:]


def _is_distinct(data: list) -> list:
    return [len(data) == len(_distinct(data))]


#: Functions left to protocol.engine.fhirpath (an expression calling one is evaluated there as a whole).
_DELEGATED = frozenset({
    "repeat", "trace", "children", "descendants", "sum", "min", "max", "avg", "toQuantity", "toTime",
    "convertsToQuantity", "convertsToTime", "encode", "decode",
})

_FUNCTIONS: dict[str, Callable[[_Compiler, list], _Run]] = {
    "empty": _fn_simple(lambda data: [not data]),
    "not": _fn_simple(_not),
    "exists": _fn_exists,
    "all": _fn_all,
    "allTrue": _fn_simple(lambda data: [all(_boolean_items(data))]),
    "anyTrue": _fn_simple(lambda data: [any(_boolean_items(data))]),
    "allFalse": _fn_simple(lambda data: [not any(_boolean_items(data))]),
    "anyFalse": _fn_simple(lambda data: [not all(_boolean_items(data))]),
    "count": _fn_simple(lambda data: [len(data)]),
    "distinct": _fn_simple(_distinct),
    "isDistinct": _fn_simple(_is_distinct),
    "union": _fn_with_collection(lambda a, b: _distinct(a + b)),
    "combine": _fn_with_collection(lambda a, b: a + b),
    "intersect": _fn_with_collection(_intersect),
    "exclude": _fn_with_collection(_exclude),
    "subsetOf": _fn_with_collection(_subset_of),
    "supersetOf": _fn_with_collection(lambda a, b: _subset_of(b, a)),
    "where": _fn_where,
    "select": _fn_select,
    "aggregate": _fn_aggregate,
    "iif": _fn_iif,
    "coalesce": _fn_coalesce,
    "first": _fn_simple(_first),
    "last": _fn_simple(_last),
    "tail": _fn_simple(lambda data: data[1:]),
    "single": _fn_simple(_single),
    "take": _fn_with_integer(_take),
    "skip": _fn_with_integer(_skip),
    "ofType": _fn_of_type,
    "is": _fn_is,
    "as": _fn_as,
    "type": _fn_type,
    "extension": _fn_extension,
    "toInteger": _fn_simple(_to_integer),
    "toDecimal": _fn_simple(_to_decimal),
    "toBoolean": _fn_simple(_to_boolean),
    "toString": _fn_simple(_to_string),
    "toDate": _fn_simple(_to_datetime),
    "toDateTime": _fn_simple(_to_datetime),
    "convertsToInteger": _fn_simple(_converts(_to_integer, int)),
    "convertsToDecimal": _fn_simple(_converts(_to_decimal, Decimal)),
    "convertsToBoolean": _fn_simple(_converts(_to_boolean, bool)),
    "convertsToString": _fn_simple(_converts(_to_string, str)),
    "convertsToDate": _fn_simple(_converts(_to_datetime, DateTime)),
    "convertsToDateTime": _fn_simple(_converts(_to_datetime, DateTime)),
    "substring": _fn_nullable(_substring, "Integer", "Integer"),
    "indexOf": _fn_nullable(_index_of, "String"),
    "startsWith": _fn_nullable(_starts_with, "String"),
    "endsWith": _fn_nullable(_ends_with, "String"),
    "contains": _fn_nullable(_contains_text, "String"),
    "upper": _fn_nullable(_upper),
    "lower": _fn_nullable(_lower),
    "replace": _fn_nullable(_replace, "String", "String"),
    "matches": _fn_nullable(_matches, "String"),
    "replaceMatches": _fn_nullable(_replace_matches, "String", "String"),
    "length": _fn_nullable(_length),
    "split": _fn_nullable(_split, "String"),
    "trim": _fn_nullable(_trim),
    "toChars": _fn_simple(_to_chars),
    "join": _fn_join,
    "abs": _fn_simple(_math(lambda v: v.copy_abs())),
    "ceiling": _fn_simple(_math(lambda v: v.to_integral_value(rounding=ROUND_CEILING))),
    "floor": _fn_simple(_math(lambda v: v.to_integral_value(rounding=ROUND_FLOOR))),
    "truncate": _fn_simple(_math(lambda v: v.to_integral_value(rounding=ROUND_DOWN))),
    "exp": _fn_simple(_math(lambda v: v.exp())),
    "ln": _fn_simple(_math(lambda v: v.ln())),
    "sqrt": _fn_simple(_math(_sqrt)),
    "round": _fn_round,
    "log": _fn_log,
    "power": _fn_power,
    "now": _fn_now,
    "today": _fn_today,
    "timeOfDay": _fn_time_of_day,
    "memberOf": _fn_member_of,
    "resolve": _fn_resolve,
    "lowBoundary": _fn_boundary(high=False),
    "highBoundary": _fn_boundary(high=True),
    "duration": _fn_interval(whole=True),
    "difference": _fn_interval(whole=False),
}


# ---------------------------------------------------------------- conversion to and from protocol.engine.fhirpath values


def _to_fhirpathpy(value: Any) -> Any:
    """The value as protocol.engine.fhirpath represents it (for an evaluation handed over to it)."""
    t = type(value)
    if t is Node:
        data = value.data
        if isinstance(data, Mapping) and "resourceType" in data:
            return _ResourceNode(data, None)
        return ResourceNode(data, value.path)
    if t is DateTime:
        converted = _new_datetime(value.text)
        return converted if converted is not None else value.text
    if t is Time:
        return FP_Time(value.text)
    if t is Quantity:
        return FP_Quantity(value.value, value.unit)
    if t is list:
        return [_to_fhirpathpy(item) for item in value]
    return value


def _from_fhirpathpy(value: Any) -> Any:
    """A protocol.engine.fhirpath result item as this module represents it."""
    if isinstance(value, ResourceNode):
        return Node(value.data, value.path)
    if isinstance(value, FP_DateTime):
        return DateTime(value.asStr)
    if isinstance(value, FP_Time):
        return Time(value.asStr)
    if isinstance(value, FP_Quantity):
        return Quantity(value.value, value.unit)
    return value


class _FhirPathPyVariables(Mapping):
    """The caller's variables as protocol.engine.fhirpath values, converted when read."""

    __slots__ = ("_env",)

    def __init__(self, env: Mapping[str, Any]) -> None:
        self._env = env

    def __contains__(self, name: object) -> bool:
        return name in self._env

    def __getitem__(self, name: str) -> Any:
        return _to_fhirpathpy(self._env[name])

    def __iter__(self):
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


def _evaluate_with_fhirpathpy(compiled: CompiledExpression, env: Mapping[str, Any], ctx: EvaluationContext,
                              focus: Any) -> list:
    raw = compiled(_FhirPathPyVariables(env), ctx, _to_fhirpathpy(focus))
    return [_from_fhirpathpy(item) for item in raw]


# ---------------------------------------------------------------- compiled expressions and the evaluator


class _NativeExpression:
    """An expression compiled to closures (see the module docstring)."""

    __slots__ = ("source", "variables", "_run", "_evaluator", "_delegate")

    native = True

    def __init__(self, source: str, variables: frozenset[str], run: _Run, evaluator: NativeEvaluator) -> None:
        self.source = source
        self.variables = variables
        self._run = run
        self._evaluator = evaluator
        self._delegate: CompiledExpression | None = None

    def __repr__(self) -> str:
        return f"NativeExpression({self.source!r})"

    def __call__(self, env: Mapping[str, Any], ctx: EvaluationContext, focus: Any = None) -> list:
        """Evaluate with ``focus`` as input collection and ``env`` as %variables; return the raw results."""
        if focus is None:
            root: list = []
        elif isinstance(focus, list):
            root = focus
        else:
            root = [focus]
        st = _new(_State)
        st.env = env
        st.focus = focus
        st.ctx = ctx
        st.this = root
        st.index = st.total = st._offset = st.members = None
        try:
            result = self._run(root, st)
        except _Undefined as exc:
            raise FhirPathEvaluationError(
                f"{self.source!r}: ValueError: Attempting to access an undefined environment variable: {exc}"
            ) from None
        except _EnvFailure as exc:
            error = exc.error
            if isinstance(error, FhirPathEvaluationError):
                raise error from None
            raise FhirPathEvaluationError(f"{self.source!r}: {type(error).__name__}: {error}") from error
        except EvaluationTimeout:
            raise
        except Exception as exc:
            if not self._evaluator.rerun:
                raise FhirPathEvaluationError(f"{self.source!r}: {type(exc).__name__}: {exc}") from exc
            return self.evaluate_with_fhirpathpy(env, ctx, focus)
        for item in result:
            if type(item) is Node and type(item.data) is dict and "extension" in item.data:
                return [item for item in result if not _is_extension_only(item)]
        return list(result)

    def evaluate_with_fhirpathpy(self, env: Mapping[str, Any], ctx: EvaluationContext, focus: Any = None) -> list:
        """The same evaluation done by protocol.engine.fhirpath's evaluator (results converted)."""
        delegate = self._delegate
        if delegate is None:
            delegate = self._delegate = self._evaluator.fhirpathpy.compile(self.source)
        return _evaluate_with_fhirpathpy(delegate, env, ctx, focus)


class _DelegatedExpression:
    """An expression this module does not compile, evaluated by protocol.engine.fhirpath (values converted)."""

    __slots__ = ("source", "variables", "reason", "_compiled")

    native = False

    def __init__(self, source: str, variables: frozenset[str], compiled: CompiledExpression, reason: str) -> None:
        self.source = source
        self.variables = variables
        self.reason = reason
        self._compiled = compiled

    def __repr__(self) -> str:
        return f"DelegatedExpression({self.source!r}, reason={self.reason!r})"

    def __call__(self, env: Mapping[str, Any], ctx: EvaluationContext, focus: Any = None) -> list:
        """Evaluate through protocol.engine.fhirpath (see CompiledExpression.__call__)."""
        return _evaluate_with_fhirpathpy(self._compiled, env, ctx, focus)


class NativeEvaluator:
    """The Evaluator compiling FHIRPath to closures over plain JSON values (see the module docstring).

    ``rerun``: when the native evaluation raises, evaluate again with protocol.engine.fhirpath (default);
    False reports the native error instead.  Compiled expressions have ``native`` True, or False when
    the expression is evaluated by protocol.engine.fhirpath as a whole (then ``reason`` says why).
    """

    def __init__(self, model: dict | None = None, *, rerun: bool = True) -> None:
        self._model = models["r4"] if model is None else model
        self._types = _Types(self._model)
        self.fhirpathpy = FhirPathPyEvaluator(self._model)
        self.rerun = rerun

    def compile(self, expression: str) -> CompiledExpression:
        """Parse once with protocol.engine.fhirpath's checks (FhirPathSyntaxError) and compile to closures."""
        root, variables = _parse_checked(expression)
        try:
            if _calls_delegated(root):
                raise _Unsupported("calls a function left to protocol.engine.fhirpath")
            run = _Compiler(self._model, self._types).compile(root["children"][0])
        except _Unsupported as exc:
            return _DelegatedExpression(expression, variables, self.fhirpathpy.compile(expression), str(exc))
        return _NativeExpression(expression, variables, run, self)

    def node(self, resource: dict) -> Any:
        """Wrap a resource dict as a typed value (its type comes from resourceType)."""
        if type(resource) is Node:
            return resource
        if isinstance(resource, ResourceNode):
            return _from_fhirpathpy(resource)
        return Node(resource, _resource_type_of(resource))

    def to_json(self, value: Any) -> Any:
        """One raw result item as JSON, exactly as protocol.engine.fhirpath converts the same result."""
        return _to_json(value)

    def type_name(self, value: Any) -> str | None:
        """FHIR type of one raw result item (to fill a choice element such as medication[x])."""
        t = type(value)
        if t is Node:
            data = value.data
            if isinstance(data, Mapping) and isinstance(data.get("resourceType"), str):
                return data["resourceType"]
            path = value.path
            return path if path and "." not in path else None
        if t is bool:
            return "boolean"
        if t is int:
            return "integer"
        if t is Decimal or t is float:
            return "decimal"
        if t is str:
            return "string"
        if t is Quantity:
            return "Quantity"
        if t is DateTime:
            return "date" if value.parsed is not None and len(value.parsed.fields) <= 3 else "dateTime"
        if t is Time:
            return "time"
        if isinstance(value, Mapping) and isinstance(value.get("resourceType"), str):
            return value["resourceType"]
        return None


def _calls_delegated(root: dict) -> bool:
    """True if the parse tree calls a function of _DELEGATED."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.get("type") == "Functn" and _identifier_text(node["children"][0]) in _DELEGATED:
            return True
        stack.extend(node.get("children", ()))
    return False


def _to_json(value: Any) -> Any:
    t = type(value)
    if t is Node:
        data = value.data
        if isinstance(data, (dict, list)):
            return data
        return _to_json(data)
    if t is str or t is bool or t is int or t is float or value is None:
        return value
    if t is Decimal:
        return _number(value)
    if t is DateTime:
        return _datetime_text(value.text)
    if t is Time:
        return value.text[1:] if value.text.startswith("T") else value.text
    if t is Quantity:
        number = _number(Decimal(str(value.value)))
        unit = value.unit
        calendar = _UNIT_TO_CALENDAR.get(unit) if unit and not unit.startswith("'") else None
        if calendar is not None:
            return {"value": number, "unit": unit, "system": UCUM, "code": _CALENDAR_TO_UCUM[calendar]}
        code = unit[1:-1] if unit and unit.startswith("'") else (unit or "1")
        return {"value": number, "unit": code, "system": UCUM, "code": code}
    if isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, Mapping):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    return str(value)


_NATIVE: NativeEvaluator | None = None


def native_evaluator() -> NativeEvaluator:
    """The shared NativeEvaluator (R4 model), created on first use."""
    global _NATIVE
    if _NATIVE is None:
        _NATIVE = NativeEvaluator()
    return _NATIVE
