"""FHIRPath for the engine: one small interface, implemented with fhirpathpy.

The engine compiles every expression of the content once (``Evaluator.compile``)
and evaluates the compiled objects per request with a mapping of ``%variables``
and an :class:`EvaluationContext` (clock, terminology membership, reference
resolution).  Results are returned *raw* (fhirpathpy ``ResourceNode`` and
``FP_*`` objects) so they can be fed into later expressions as variables without
losing their FHIR type; ``Evaluator.to_json`` turns one raw item into plain JSON.

Only the names in ``__all__`` are meant to be used by the rest of the project,
so that another FHIRPath engine could be put behind the same interface.

fhirpathpy 2.2.4 gets date/time comparison and arithmetic wrong in ways that
matter at clinical boundaries ("onset more than 48 hours ago").  This module
corrects that for the expressions it evaluates, without modifying fhirpathpy
itself: see ``_corrected_operators`` below.
"""

from __future__ import annotations

import calendar
import contextvars
import json
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from functools import lru_cache
from typing import Any, NamedTuple, Protocol

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.engine import do_eval
from fhirpathpy.engine import util as fp_util
from fhirpathpy.engine.invocations import equality as fp_equality
from fhirpathpy.engine.invocations import existence as fp_existence
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.invocations import math as fp_math
from fhirpathpy.engine.invocations import misc as fp_misc
from fhirpathpy.engine.nodes import FP_DateTime, FP_Quantity, FP_Time, ResourceNode, TypeInfo
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

__all__ = [
    "CompiledExpression",
    "EvaluationContext",
    "Evaluator",
    "FhirPathEvaluationError",
    "FhirPathPyEvaluator",
    "FhirPathSyntaxError",
    "default_evaluator",
]

UCUM = "http://unitsofmeasure.org"


# ---------------------------------------------------------------- public interface


class FhirPathSyntaxError(ValueError):
    """The expression does not parse, or calls an unknown function / wrong arity / invalid date literal."""


class FhirPathEvaluationError(RuntimeError):
    """Evaluating a compiled expression failed; wraps the engine's exception with a readable message."""


@dataclass(frozen=True)
class EvaluationContext:
    """Per-call services the expressions need: request clock, ValueSet membership, reference resolution."""

    now: datetime  # timezone-aware; now(), today(), timeOfDay() read it
    member_of: Callable[[dict, str], bool]  # (Coding or CodeableConcept, ValueSet url) -> member?
    resolve: Callable[[dict], dict | None]  # (Reference) -> the resource it points to, or None

    def __post_init__(self) -> None:
        """Reject a naive clock, since now() and date comparisons need its UTC offset."""
        if self.now.tzinfo is None or self.now.utcoffset() is None:
            raise ValueError("EvaluationContext.now must be timezone-aware")


class CompiledExpression(Protocol):
    """A parsed expression, evaluated per request without parsing again."""

    source: str
    variables: frozenset[str]

    def __call__(self, env: Mapping[str, Any], ctx: EvaluationContext, focus: Any = None) -> list:
        """Evaluate with ``focus`` as input collection and ``env`` as %variables; return the raw results."""
        ...


class Evaluator(Protocol):
    """A FHIRPath engine as the rule engine sees it."""

    def compile(self, expression: str) -> CompiledExpression:
        """Parse once (FhirPathSyntaxError if invalid), so evaluation per request costs no parsing."""
        ...

    def node(self, resource: dict) -> Any:
        """Wrap a resource dict as a typed value usable as a variable or focus."""
        ...

    def to_json(self, value: Any) -> Any:
        """Turn one raw result item into plain JSON for the response."""
        ...

    def type_name(self, value: Any) -> str | None:
        """FHIR type of one raw result item (to fill a choice element such as medication[x])."""
        ...


# ---------------------------------------------------------------- per-call context

_CURRENT: contextvars.ContextVar[EvaluationContext] = contextvars.ContextVar("fhirpath_context")


def _context() -> EvaluationContext:
    """The EvaluationContext of the evaluation running in this thread/task."""
    return _CURRENT.get()


def _default_offset_minutes() -> int:
    """UTC offset of the request clock, assumed for date/times written without an offset."""
    ctx = _CURRENT.get(None)
    if ctx is None:
        return 0
    return int(ctx.now.utcoffset().total_seconds()) // 60


# ---------------------------------------------------------------- corrections of fhirpathpy
#
# Installed through the function table handed to fhirpathpy with every evaluation
# (see _corrected_operators for the defects and the semantics implemented); fhirpathpy's
# own modules and objects are left untouched, so nothing changes for other users of it.

_TESTED_FHIRPATHPY_VERSIONS = frozenset({"2.2.4"})
CORRECTIONS_ACTIVE = fhirpathpy.__version__ in _TESTED_FHIRPATHPY_VERSIONS

_DATETIME_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_TEMPORAL_TYPES = frozenset({"date", "dateTime", "instant"})


class _DateTime(NamedTuple):
    """A parsed FHIRPath date/dateTime: components as written, precision 1 (year) to 6 (second)."""

    fields: tuple[int, ...]  # year, month, day, hour, minute, second (as many as written)
    fraction: str | None  # digits after the decimal point of the seconds, if written
    offset: int | None  # UTC offset in minutes, if written
    zone: str | None  # the offset as written ('Z', '+02:00')

    @property
    def precision(self) -> int:
        """Number of components written: 1 = year ... 6 = second (milliseconds included)."""
        return len(self.fields)

    def keys(self, default_offset: int, to_utc: bool) -> tuple:
        """Components compared by precision; seconds as a decimal; optionally shifted to UTC."""
        fields = self.fields
        seconds = Decimal(f"{fields[5]}.{self.fraction}") if self.fraction else None
        if to_utc:
            offset = self.offset if self.offset is not None else default_offset
            padded = list(fields) + [1] * (3 - min(len(fields), 3)) + [0] * (6 - max(len(fields), 3))
            utc = datetime(*padded) - timedelta(minutes=offset)
            fields = (utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second)[: len(self.fields)]
        keys: list = list(fields)
        if len(keys) == 6 and seconds is not None:
            keys[5] = Decimal(keys[5]) + (seconds - int(seconds))
        return tuple(keys)


@lru_cache(maxsize=4096)
def _parse_datetime(text: str) -> _DateTime | None:
    """Parse a FHIRPath/FHIR date or dateTime text, or return None if it is not one."""
    match = _DATETIME_RE.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    fields = tuple(int(v) for v in (year, month, day, hour, minute, second) if v is not None)
    offset = None
    if zone is not None:
        offset = 0 if zone == "Z" else int(zone[0] + "1") * (int(zone[1:3]) * 60 + int(zone[4:6]))
    return _DateTime(fields, fraction, offset, zone)


def _temporal(item: Any) -> _DateTime | None:
    """The item as a date/time if it is typed as one (@-literal, now(), FHIR date/dateTime/instant)."""
    if isinstance(item, FP_DateTime):
        return _parse_datetime(item.asStr)
    if isinstance(item, ResourceNode) and item.path in _TEMPORAL_TYPES and isinstance(item.data, str):
        return _parse_datetime(item.data)
    return None


def _text_as_datetime(item: Any) -> _DateTime | None:
    """A string item (plain or untyped node) read as a date/time, for comparison with a typed one."""
    data = item.data if isinstance(item, ResourceNode) else item
    return _parse_datetime(data) if isinstance(data, str) else None


def _singletons(a: list, b: list) -> tuple[Any, Any] | None:
    """The single items of two operand collections (ignoring a primitive's extension node)."""
    if len(a) == 2:
        a = fp_equality.remove_duplicate_extension(a)
    if len(b) == 2:
        b = fp_equality.remove_duplicate_extension(b)
    if len(a) != 1 or len(b) != 1:
        return None
    return a[0], b[0]


def _datetime_operands(a: list, b: list) -> tuple[_DateTime, _DateTime] | None:
    """Both operands as date/times if at least one is typed as a date/time, else None."""
    pair = _singletons(a, b)
    if pair is None:
        return None
    x, y = _temporal(pair[0]), _temporal(pair[1])
    if x is None and y is None:
        return None
    if x is None:
        x = _text_as_datetime(pair[0])
    if y is None:
        y = _text_as_datetime(pair[1])
    if x is None or y is None:
        return None
    return x, y


def _compare_datetimes(x: _DateTime, y: _DateTime) -> int | None:
    """-1/0/1 comparing two date/times, or None when equal up to the lower of two precisions."""
    to_utc = x.precision >= 4 and y.precision >= 4
    default_offset = _default_offset_minutes() if to_utc else 0
    kx, ky = x.keys(default_offset, to_utc), y.keys(default_offset, to_utc)
    for vx, vy in zip(kx, ky, strict=False):
        if vx != vy:
            return -1 if vx < vy else 1
    return 0 if x.precision == y.precision else None


def _comparison(original: Callable, test: Callable[[int], bool]) -> Callable:
    """An ordering operator: date/times by the rules above, anything else by fhirpathpy."""

    def operator(ctx: dict, a: list, b: list) -> Any:
        operands = _datetime_operands(a, b)
        if operands is None:
            return original(ctx, a, b)
        result = _compare_datetimes(*operands)
        return [] if result is None else [test(result)]

    return operator


def _equality(original: Callable, negate: bool) -> Callable:
    """= / != : date/times by the rules above, anything else by fhirpathpy."""

    def operator(ctx: dict, a: list, b: list) -> Any:
        operands = _datetime_operands(a, b)
        if operands is None:
            return original(ctx, a, b)
        result = _compare_datetimes(*operands)
        return [] if result is None else [(result == 0) != negate]

    return operator


_UNIT_TO_CALENDAR = {
    **{u: u for u in ("year", "month", "week", "day", "hour", "minute", "second", "millisecond")},
    **{u + "s": u for u in ("year", "month", "week", "day", "hour", "minute", "second", "millisecond")},
    "'a'": "year",
    "'mo'": "month",
    "'wk'": "week",
    "'d'": "day",
    "'h'": "hour",
    "'min'": "minute",
    "'s'": "second",
    "'ms'": "millisecond",
}
_UNIT_PRECISION = {
    "year": 1, "month": 2, "week": 3, "day": 3, "hour": 4, "minute": 5, "second": 6, "millisecond": 6,
}
_PRECISION_UNIT = {1: "year", 2: "month", 3: "day", 4: "hour", 5: "minute"}
_UNIT_SECONDS = {
    "year": 365 * 86400,
    "month": 30 * 86400,
    "week": 7 * 86400,
    "day": 86400,
    "hour": 3600,
    "minute": 60,
    "second": 1,
    "millisecond": Decimal("0.001"),
}


def _quantity(item: Any) -> FP_Quantity | None:
    """The item as a quantity: a FHIRPath quantity or a FHIR Quantity element with a UCUM code."""
    if isinstance(item, FP_Quantity):
        return item
    if isinstance(item, ResourceNode) and isinstance(item.data, Mapping):
        data = item.data
        if data.get("system") == UCUM and data.get("value") is not None and data.get("code"):
            return FP_Quantity(Decimal(str(data["value"])), f"'{data['code']}'")
    return None


def _add_to_datetime(value: _DateTime, quantity: FP_Quantity, sign: int) -> FP_DateTime:
    """value + sign * quantity, keeping the value's precision and offset."""
    unit = _UNIT_TO_CALENDAR.get(quantity.unit)
    if unit is None:
        raise ValueError(
            f"date/time arithmetic needs a time quantity (years ... milliseconds, 'a' ... 'ms'), got {quantity}"
        )
    amount = Decimal(str(quantity.value)) * sign
    if _UNIT_PRECISION[unit] < 6:
        amount = amount.to_integral_value(rounding=ROUND_DOWN)
    if unit == "week":
        unit, amount = "day", amount * 7
    precision = value.precision
    if _UNIT_PRECISION[unit] > precision and precision < 6:
        target = _PRECISION_UNIT[precision]
        if unit in ("year", "month") and target in ("year", "month"):
            amount = amount / 12  # months to years: the only finer-than-value case here
        else:
            amount = amount * _UNIT_SECONDS[unit] / _UNIT_SECONDS[target]
        unit, amount = target, amount.to_integral_value(rounding=ROUND_DOWN)

    fields = value.fields
    micro = int((value.fraction or "0")[:6].ljust(6, "0"))
    start = datetime(
        fields[0],
        fields[1] if precision > 1 else 1,
        fields[2] if precision > 2 else 1,
        fields[3] if precision > 3 else 0,
        fields[4] if precision > 4 else 0,
        fields[5] if precision > 5 else 0,
        micro,
    )
    if unit in ("year", "month"):
        months = start.year * 12 + start.month - 1 + int(amount) * (12 if unit == "year" else 1)
        year, month = divmod(months, 12)
        month += 1
        result = start.replace(year=year, month=month, day=min(start.day, calendar.monthrange(year, month)[1]))
    else:
        result = start + timedelta(microseconds=int(amount * _UNIT_SECONDS[unit] * 1_000_000))

    text = f"{result.year:04d}"
    if precision > 1:
        text += f"-{result.month:02d}"
    if precision > 2:
        text += f"-{result.day:02d}"
    if precision > 3:
        text += f"T{result.hour:02d}"
    if precision > 4:
        text += f":{result.minute:02d}"
    if precision > 5:
        text += f":{result.second:02d}"
        if value.fraction is not None or result.microsecond:
            digits = min(max(len(value.fraction or ""), 3), 6)
            text += "." + f"{result.microsecond:06d}"[:digits]
    if value.zone is not None:
        text += value.zone
    return FP_DateTime(text)


def _arithmetic(original: Callable, sign: int) -> Callable:
    """+ / - : date/time with a time quantity by the rules above, anything else by fhirpathpy."""

    def operator(ctx: dict, a: list, b: list) -> Any:
        pair = _singletons(a, b)
        if pair is not None:
            quantity = _quantity(pair[1])
            if quantity is not None:
                value = _temporal(pair[0]) or _text_as_datetime(pair[0])
                if value is not None:
                    return [_add_to_datetime(value, quantity, sign)]
        return original(ctx, a, b)

    return operator


def _distinct(ctx: dict, items: list) -> list:
    """distinct(), union(), `|`: first occurrence of each value, keeping the original nodes.

    fhirpathpy rebuilds de-duplicated nodes without their path, so elements lose their
    FHIR type and a following ofType()/is fails (AttributeError on `None.is_`).
    """
    if not items or not all(isinstance(item, ResourceNode) for item in items):
        return fp_existence.distinct_fn(ctx, items)
    seen: set[str] = set()
    out = []
    for item in items:
        key = json.dumps(item.data, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


_NO_INDEX = object()


def _where(ctx: dict, data: list, criteria: Callable) -> list:
    """where(criteria): fhirpathpy's test, criteria evaluated once per item, outer $index restored."""
    outer_index = ctx.get("$index", _NO_INDEX)
    selected = []
    for index, item in enumerate(data):
        ctx["$index"] = index
        result = criteria(item)
        if len(result) > 0 and result[0]:
            selected.append(item)
    if outer_index is not _NO_INDEX:
        ctx["$index"] = outer_index
    return fp_util.flatten(selected)


def _select(ctx: dict, data: list, projection: Callable) -> list:
    """select(projection): as fhirpathpy's, but restores the $index of an enclosing where/select."""
    outer_index = ctx.get("$index", _NO_INDEX)
    projected = []
    for index, item in enumerate(data):
        ctx["$index"] = index
        projected.append(projection(item))
    if outer_index is not _NO_INDEX:
        ctx["$index"] = outer_index
    return fp_util.flatten(projected)


def _exists(ctx: dict, data: list, criteria: Callable | None = None) -> bool:
    """exists([criteria]): like fhirpathpy's, but evaluates the criteria once per item."""
    if criteria is None:
        return len(data) > 0
    return len(_where(ctx, data, criteria)) > 0


def _to_string(ctx: dict, coll: list) -> Any:
    """toString(): a date/time as written; anything else as fhirpathpy converts it."""
    if len(coll) == 1 and isinstance(coll[0], (FP_DateTime, FP_Time)):
        return coll[0].asStr
    return fp_misc.to_string(ctx, coll)


def _corrected_operators() -> dict[str, dict]:
    """Function-table entries replacing fhirpathpy 2.2.4 operators and functions that are wrong.

    Date/time defects (they matter at clinical boundaries such as "onset within 48 hours"):

    1. Comparison of strings.  FHIR date/dateTime/instant elements, %variables holding
       date strings and the results of now()/today() are strings in fhirpathpy, and
       <, <=, >, >= compare two strings as Python strings unless one side is an @-literal:
       an onset of '2026-11-23T12:00:00+02:00' is "after" a recordedDate of
       '2026-11-23T11:00:00Z' (it is an hour before), and '...Z' sorts after '...+00:00'.
    2. Date against dateTime.  ``@2026-11-23 = @2026-11-23T10:00:00Z`` is false instead
       of empty, and ``@2026-11-23 < @2026-11-23T23:00:00-05:00`` converts the dateTime
       to UTC first and is true instead of empty.
    3. Arithmetic.  ``+``/``-`` with a time quantity raises UnboundLocalError for common
       shapes (seconds without milliseconds plus hours: ``@2026-11-23T10:00:00+02:00 +
       48 hours``; milliseconds with 'Z': ``'2026-11-23T10:00:00.000Z' + 48 hours``),
       converts other results to UTC, and for seconds precision drops the offset
       altogether: ``@2026-11-23T10:00:00+02:00 + 2 days`` gives '2026-11-25T08:00:00', a
       different instant for anyone reading it as local time.  UCUM 'a'/'mo' are refused.

    Semantics implemented instead (FHIRPath N1 / 2.0.0):

    - Date/times are compared precision by precision (year, month, day, hour, minute,
      second; seconds and milliseconds are a single precision compared as a decimal).
      When both have a time part they are normalized to UTC first (a value without an
      offset takes the offset of the request clock); otherwise the written components
      are compared.  If the values are equal up to the lower of two different
      precisions, =, !=, <, <=, >, >= give empty.  Strings are read as date/times when
      the other operand is a typed date/time (FHIR element, @-literal, now(), arithmetic).
    - Arithmetic keeps the value's precision and offset as written ('Z' stays 'Z').
      Units: years ... milliseconds (singular or plural) and UCUM 'a', 'mo', 'wk', 'd',
      'h', 'min', 's', 'ms' ('a'/'mo' as calendar years/months, as a FHIR Quantity is
      treated).  Above seconds the quantity is truncated to an integer; a quantity finer
      than the value's precision is converted to the value's finest unit and truncated
      (hours added to a date become whole days; 400 days added to a year, one year).
      Months are added with end-of-month clamping (Jan 31 + 1 month = Feb 28).
      Results are FP_DateTime objects, like fhirpathpy's @-literals.

    Other defects:

    4. ``where(criteria)`` and ``exists(criteria)`` evaluate the criteria twice for every
       item that gives a result (four times in a nested where), which doubles the cost
       of the most common rule shape.  Replaced by a single evaluation, same truth test.
       Also, ``where()`` and ``select()`` leave ``$index`` at the value of a nested
       where/select, so ``%a.where(%b.where(...).exists() and $index = 0)`` reads the
       inner index; the enclosing ``$index`` is now restored.
    5. ``distinct()``, ``union()`` and ``|`` rebuild de-duplicated element nodes without
       their path, so they lose their FHIR type and a following ``ofType()`` raises
       AttributeError.  Replaced by a version keeping the first node of each value
       (values are still told apart by their JSON data, as fhirpathpy does).
    6. ``toString()`` of a date/time re-parses it with dateutil: '.000' and 'Z' become
       '+00:00' text, hour precision gains minutes and seconds, and ``@2026-11.toString()``
       gives '2026-11-<current day>T00:00:00'.  Replaced by the value as written.
    """
    reg = invocation_registry
    return {
        "<": {**reg["<"], "fn": _comparison(fp_equality.lt, lambda r: r < 0)},
        "<=": {**reg["<="], "fn": _comparison(fp_equality.lte, lambda r: r <= 0)},
        ">": {**reg[">"], "fn": _comparison(fp_equality.gt, lambda r: r > 0)},
        ">=": {**reg[">="], "fn": _comparison(fp_equality.gte, lambda r: r >= 0)},
        "=": {**reg["="], "fn": _equality(fp_equality.equal, negate=False)},
        "!=": {**reg["!="], "fn": _equality(fp_equality.unequal, negate=True)},
        "+": {**reg["+"], "fn": _arithmetic(fp_math.plus, 1)},
        "-": {**reg["-"], "fn": _arithmetic(fp_math.minus, -1)},
        "|": {**reg["|"], "fn": lambda ctx, a, b: _distinct(ctx, a + b)},
        "union": {**reg["union"], "fn": lambda ctx, a, b: _distinct(ctx, a + b)},
        "distinct": {**reg["distinct"], "fn": _distinct},
        "where": {**reg["where"], "fn": _where},
        "select": {**reg["select"], "fn": _select},
        "exists": {**reg["exists"], "fn": _exists},
        "toString": {**reg["toString"], "fn": _to_string},
    }


# ---------------------------------------------------------------- functions backed by the context


class _ResourceNode(ResourceNode):
    """A typed resource node that also answers ``node["resourceType"]``.

    fhirpathpy resolves a leading type name (``Condition.code``) by reading
    ``item["resourceType"]`` of each input item, which a plain ``ResourceNode`` does not
    support; without this, a node passed as focus would not match ``Condition.code``.
    """

    def __getitem__(self, key: str) -> Any:
        if isinstance(self.data, Mapping):
            return self.data.get(key)
        raise TypeError("not a resource")


def _fn_now(ctx: dict, inputs: list) -> FP_DateTime:
    """now(): the request clock, millisecond precision, with its UTC offset."""
    return FP_DateTime(_context().now.isoformat(timespec="milliseconds"))


def _fn_today(ctx: dict, inputs: list) -> FP_DateTime:
    """today(): the request clock's date in the clock's own timezone."""
    return FP_DateTime(_context().now.date().isoformat())


def _fn_time_of_day(ctx: dict, inputs: list) -> FP_Time:
    """timeOfDay(): the request clock's local time, millisecond precision."""
    return FP_Time(_context().now.time().isoformat(timespec="milliseconds"))


def _fn_member_of(ctx: dict, inputs: list, url: Any) -> list:
    """memberOf(url): true if any input Coding/CodeableConcept is in the ValueSet; empty input gives empty."""
    if not inputs or not isinstance(url, str):
        return []
    member_of = _context().member_of
    for item in inputs:
        data = item.data if isinstance(item, ResourceNode) else item
        if isinstance(data, Mapping) and member_of(data, url):
            return [True]
    return [False]


def _fn_resolve(ctx: dict, inputs: list) -> list:
    """resolve(): the resources the input References point to; unresolvable ones are dropped."""
    resolve = _context().resolve
    out = []
    for item in inputs:
        data = item.data if isinstance(item, ResourceNode) else item
        if isinstance(data, str):
            data = {"reference": data}
        if isinstance(data, Mapping):
            target = resolve(data)
            if target is not None:
                out.append(_ResourceNode(target, None))
    return out


def _function_table() -> dict[str, dict]:
    """The function table passed to fhirpathpy with every evaluation (built once)."""
    table: dict[str, dict] = {
        "now": {"fn": _fn_now},
        "today": {"fn": _fn_today},
        "timeOfDay": {"fn": _fn_time_of_day},
        "memberOf": {"fn": _fn_member_of, "arity": {1: ["String"]}},
        "resolve": {"fn": _fn_resolve},
    }
    if CORRECTIONS_ACTIVE:
        table.update(_corrected_operators())
    else:
        warnings.warn(
            f"fhirpathpy {fhirpathpy.__version__} is not one of the tested versions "
            f"{sorted(_TESTED_FHIRPATHPY_VERSIONS)}: date/time corrections are not applied",
            RuntimeWarning,
            stacklevel=2,
        )
    return table


_FUNCTIONS = _function_table()
_KNOWN_FUNCTIONS = {**invocation_registry, **_FUNCTIONS}


# ---------------------------------------------------------------- parsing


class _RaisingErrorListener(ErrorListener):
    """Turns the first lexer/parser error into FhirPathSyntaxError (antlr would recover silently)."""

    def __init__(self, expression: str) -> None:
        self._expression = expression

    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):  # noqa: N802, N803
        raise FhirPathSyntaxError(f"{msg} at column {column + 1} of {self._expression!r}")


def _parse(expression: str) -> dict:
    """Parse the whole text (fhirpathpy's parse() ignores trailing input and errors) into its AST."""
    if not isinstance(expression, str):
        raise FhirPathSyntaxError(f"expression must be a string, got {type(expression).__name__}")
    listener = _RaisingErrorListener(expression)
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    tree = parser.entireExpression()
    builder = ASTPathListener()
    ParseTreeWalker().walk(builder, tree.expression())
    return builder.parentStack[0]


def _valid_datetime_text(text: str) -> bool:
    """True if the text is a date/dateTime fhirpathpy can represent and the calendar accepts."""
    parsed = _parse_datetime(text)
    if parsed is None or FP_DateTime(text) is None:
        return False
    fields = list(parsed.fields) + [1] * (3 - min(parsed.precision, 3))
    try:
        datetime(*fields)
    except ValueError:
        return False
    return True


def _inspect(ast: dict, expression: str) -> frozenset[str]:
    """Collect the %variable names and check every called function exists with a valid arity."""
    names: set[str] = set()
    stack = [ast]
    while stack:
        node = stack.pop()
        kind = node.get("type")
        if kind == "ExternalConstant":
            children = node.get("children")
            if children:
                name = re.sub(r'(^"|"$)', "", children[0]["text"]).replace("`", "")
            else:  # %'name' form: fhirpathpy cannot evaluate it, give it an identifier child
                name = node["terminalNodeText"][1][1:-1]
                node["children"] = [{"type": "Identifier", "text": name, "terminalNodeText": [name]}]
            names.add(name)
        elif kind == "DateTimeLiteral":
            if not _valid_datetime_text(node["text"][1:]):
                raise FhirPathSyntaxError(
                    f"invalid or unsupported date/time literal {node['text']} in {expression!r}"
                )
        elif kind == "Functn":
            fn_name = node["children"][0]["text"]
            params = node["children"][1].get("children", []) if len(node["children"]) > 1 else []
            entry = _KNOWN_FUNCTIONS.get(fn_name)
            if entry is None:
                raise FhirPathSyntaxError(f"unknown function {fn_name}() in {expression!r}")
            if "variadic" not in entry:
                allowed = set(entry.get("arity", {0: []}))
                if len(params) not in allowed:
                    raise FhirPathSyntaxError(
                        f"{fn_name}() takes {sorted(allowed)} argument(s), got {len(params)} in {expression!r}"
                    )
        stack.extend(node.get("children", ()))
    names.discard("ucum")
    return frozenset(names)


# ---------------------------------------------------------------- evaluation


def _is_extension_only(item: Any) -> bool:
    """True for the node fhirpathpy adds for a primitive's `_element` (extensions only)."""
    if not isinstance(item, ResourceNode):
        return False
    data = item.data
    return isinstance(data, dict) and len(data) == 1 and "extension" in data


class _CompiledFhirPathPy:
    """A parsed expression evaluated by fhirpathpy's interpreter with a prebuilt function table."""

    __slots__ = ("source", "variables", "_root", "_model")

    def __init__(self, source: str, variables: frozenset[str], root: dict, model: dict) -> None:
        self.source = source
        self.variables = variables
        self._root = root
        self._model = model

    def __repr__(self) -> str:
        return f"CompiledExpression({self.source!r})"

    def __call__(self, env: Mapping[str, Any], ctx: EvaluationContext, focus: Any = None) -> list:
        """Evaluate with ``focus`` as input collection and ``env`` as %variables; return the raw results."""
        if focus is None:
            data_root: list = []
        elif isinstance(focus, list):
            data_root = focus
        else:
            data_root = [focus]
        variables: dict[str, Any] = {"context": focus, "ucum": UCUM}
        for name, value in env.items():
            # copy lists: some fhirpathpy operations (unary minus) modify their input in place
            variables[name] = list(value) if isinstance(value, list) else value
        state = {
            "dataRoot": data_root,
            "vars": variables,
            "model": self._model,
            "userInvocationTable": _FUNCTIONS,
        }
        TypeInfo.model = self._model  # global in fhirpathpy; ofType() needs it (is/as set it too)
        token = _CURRENT.set(ctx)
        try:
            result = do_eval(state, data_root, self._root)
        except FhirPathEvaluationError:
            raise
        except Exception as exc:
            raise FhirPathEvaluationError(f"{self.source!r}: {type(exc).__name__}: {exc}") from exc
        finally:
            _CURRENT.reset(token)
        if not isinstance(result, list):
            return [result]
        return [item for item in result if not _is_extension_only(item)]


_CALENDAR_TO_UCUM = {
    "year": "a",
    "month": "mo",
    "week": "wk",
    "day": "d",
    "hour": "h",
    "minute": "min",
    "second": "s",
    "millisecond": "ms",
}


def _number(value: Decimal) -> int | float:
    """A Decimal as JSON number: int if integral, else float."""
    return int(value) if value == value.to_integral_value() else float(value)


def _datetime_text(text: str) -> str:
    """FHIR form of a FHIRPath dateTime text: a time part is padded to seconds."""
    parsed = _parse_datetime(text)
    if parsed is None or parsed.precision not in (4, 5):
        return text
    date_part, _, rest = text.partition("T")
    time_part = rest[: len(rest) - len(parsed.zone or "")]
    time_part += ":00" * (3 - len(time_part.split(":")))
    return f"{date_part}T{time_part}{parsed.zone or ''}"


def _to_json(value: Any) -> Any:
    """Convert one raw fhirpathpy item to plain JSON (see Evaluator.to_json)."""
    if isinstance(value, ResourceNode):
        data = value.data
        if isinstance(data, (dict, list)):
            return data
        return _to_json(data)
    if isinstance(value, bool) or value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, Decimal):
        return _number(value)
    if isinstance(value, FP_DateTime):
        return _datetime_text(value.asStr)
    if isinstance(value, FP_Time):
        return value.asStr[1:] if value.asStr.startswith("T") else value.asStr
    if isinstance(value, FP_Quantity):
        number = _number(Decimal(str(value.value)))
        unit = value.unit
        calendar = _UNIT_TO_CALENDAR.get(unit) if unit and not unit.startswith("'") else None
        if calendar is not None:
            return {"value": number, "unit": unit, "system": UCUM, "code": _CALENDAR_TO_UCUM[calendar]}
        code = unit[1:-1] if unit and unit.startswith("'") else (unit or "1")
        return {"value": number, "unit": code, "system": UCUM, "code": code}
    if isinstance(value, Mapping):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    if isinstance(value, TypeInfo):
        return {"namespace": value.namespace, "name": value.name}
    return str(value)


class FhirPathPyEvaluator:
    """The Evaluator implemented with fhirpathpy and its R4 model."""

    def __init__(self, model: dict | None = None) -> None:
        self._model = models["r4"] if model is None else model

    def compile(self, expression: str) -> CompiledExpression:
        """Parse once, reject syntax errors and unknown functions, and return the evaluable object."""
        root = _parse(expression)
        if not root.get("children"):
            raise FhirPathSyntaxError(f"empty expression {expression!r}")
        variables = _inspect(root, expression)
        return _CompiledFhirPathPy(expression, variables, root["children"][0], self._model)

    def node(self, resource: dict) -> Any:
        """Wrap a resource dict as a typed fhirpathpy node (its type comes from resourceType)."""
        if isinstance(resource, ResourceNode):
            return resource
        return _ResourceNode(resource, None)

    def to_json(self, value: Any) -> Any:
        """Convert one raw result item to JSON: Quantity dicts, FHIR date/time strings, int/float numbers."""
        return _to_json(value)

    def type_name(self, value: Any) -> str | None:
        """FHIR type of one raw result item: a node's type from the model, else from the Python value."""
        if isinstance(value, ResourceNode):
            if isinstance(value.data, Mapping) and isinstance(value.data.get("resourceType"), str):
                return value.data["resourceType"]
            return value.path if value.path and "." not in value.path else None
        if isinstance(value, bool):
            return "boolean"
        if isinstance(value, int):
            return "integer"
        if isinstance(value, (Decimal, float)):
            return "decimal"
        if isinstance(value, str):
            return "string"
        if isinstance(value, FP_Quantity):
            return "Quantity"
        if isinstance(value, FP_DateTime):
            parsed = _parse_datetime(value.asStr)
            return "date" if parsed is not None and parsed.precision <= 3 else "dateTime"
        if isinstance(value, FP_Time):
            return "time"
        if isinstance(value, Mapping) and isinstance(value.get("resourceType"), str):
            return value["resourceType"]
        return None


_DEFAULT = FhirPathPyEvaluator()


def default_evaluator() -> Evaluator:
    """The project's FHIRPath engine: fhirpathpy with the R4 model and the corrections above."""
    return _DEFAULT
