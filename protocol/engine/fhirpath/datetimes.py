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

Evaluation cost matters (dozens of expressions per request): a compiled expression
runs as Python closures built once from the parse tree (``_Compiler``) that call
fhirpathpy's functions the way its interpreter does, without its per-node overhead.
``%variables`` are read from the caller's mapping only when the expression reaches
them, and ``and``/``or``/``implies`` skip their right operand when the left one
decides the result, so a mapping that computes variables on demand computes only
what is needed.

Time zone: an evaluation has a local time zone (``EvaluationContext.timezone``, the service's
``timezone`` setting through the engine; by default the clock's own).  today() and timeOfDay() are the
clock's local date and time there (now() is the clock as given), and a date or dateTime written
without an offset is local time there, in comparisons and in the functions below.

Functions of FHIRPath 3.0 (STU) added to fhirpathpy's through its user-invocation table (and
implemented alike by the native evaluator), for Date and DateTime values (FHIR date/dateTime/instant
elements, @-literals, now(), today(), date arithmetic, toDateTime(); other values are an error):

- ``lowBoundary([precision])`` / ``highBoundary([precision])``: the first/last instant a value can denote
  (``_boundary_text``).  Engine conventions: without a precision the result is a DateTime to the
  millisecond, for a Date too, and a value without an offset gets the offset of the evaluation's zone
  at the boundary itself (daylight saving changes included): in America/New_York,
  ``@2026-03-08.lowBoundary()`` is 2026-03-08T00:00:00.000-05:00 and ``.highBoundary()``
  2026-03-08T23:59:59.999-04:00.  A value with an offset keeps it.
- ``duration(value, precision)`` / ``difference(value, precision)``: whole periods, or period
  boundaries crossed, from the input to ``value`` (negative when the input is later); ``precision`` a
  string: 'year', 'month', 'week', 'day', 'hour', 'minute', 'second', 'millisecond' (plurals
  accepted).  Hours and below are true elapsed time between instants, days and above calendar periods
  of local time in the evaluation's zone; empty when a value is less precise than the precision asks
  (``_interval``).

Choosing the engine: ``default_evaluator()`` returns ``protocol.engine.fhirpath_native.NativeEvaluator``,
an implementation of the same interface that evaluates over plain JSON values with the same parser,
compile-time checks and date/time semantics, and hands anything it does not cover back to this
fhirpathpy-based evaluator (that module lists the few corner cases where results differ). It was
measured faster on the protocol (bench/fhirpath_micro.py, bench/apply.py) and is checked against this
evaluator on every content expression over hundreds of records (tests/test_fhirpath_native.py). The
environment variable ``BACK_SPASM_CDS_FHIRPATH`` selects the engine: ``native`` (the default, also
when unset or empty) or ``fhirpathpy``; anything else is an error.
"""

from __future__ import annotations

import calendar
import contextvars
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import ROUND_DOWN, Decimal
from functools import lru_cache
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.engine import do_eval
from fhirpathpy.engine import make_param as fp_make_param
from fhirpathpy.engine import param_check_table as fp_param_check_table
from fhirpathpy.engine import util as fp_util
from fhirpathpy.engine.evaluators import evaluators as fp_evaluators
from fhirpathpy.engine.invocations import combining as fp_combining
from fhirpathpy.engine.invocations import equality as fp_equality
from fhirpathpy.engine.invocations import filtering as fp_filtering
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.invocations import logic as fp_logic
from fhirpathpy.engine.invocations import math as fp_math
from fhirpathpy.engine.invocations import misc as fp_misc
from fhirpathpy.engine.invocations import subsetting as fp_subsetting
from fhirpathpy.engine.nodes import FP_DateTime, FP_Quantity, FP_Time, ResourceNode, TypeInfo
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

__all__ = [
    "CompiledExpression",
    "EvaluationContext",
    "EvaluationTimeout",
    "Evaluator",
    "FhirPathEvaluationError",
    "FhirPathPyEvaluator",
    "FhirPathSyntaxError",
    "default_evaluator",
    "time_zone",
]

UCUM = "http://unitsofmeasure.org"


# ---------------------------------------------------------------- public interface


class FhirPathSyntaxError(ValueError):
    """The expression does not parse, or calls an unknown function / wrong arity / invalid date literal."""


class FhirPathEvaluationError(RuntimeError):
    """Evaluating a compiled expression failed; wraps the engine's exception with a readable message."""


class EvaluationTimeout(Exception):
    """The caller's deadline passed during an evaluation (``EvaluationContext.expired``).

    Not an evaluation error: both evaluators let it through unchanged (no second evaluation, no wrapping),
    also when it is raised by the caller's mapping of variables, so that the caller can stop its work.
    """


@dataclass(frozen=True)
class EvaluationContext:
    """Per-call services the expressions need: request clock, time zone, ValueSet membership, reference resolution.

    ``timezone`` is the local time zone of the evaluation (the service's setting, see ``time_zone``):
    today() and timeOfDay() are the clock's local date and time there, and a date or dateTime written
    without an offset is read as local time there (comparisons, lowBoundary(), highBoundary(),
    duration(), difference()).  None (the default) means the clock's own zone (``now.tzinfo``), so a
    context built from a UTC clock works in UTC, and one built from a clock with another offset keeps
    that offset as before.

    ``expired`` (optional) tells whether the caller's deadline has passed: the evaluators ask it every 16
    items of where() and select() (and of all() and aggregate() in the native evaluator), and raise
    EvaluationTimeout when it answers True, so that one expression over a large collection cannot run on
    long past the deadline.
    """

    now: datetime  # timezone-aware; now() is this instant as given, today() and timeOfDay() its local date and time
    member_of: Callable[[dict, str], bool]  # (Coding or CodeableConcept, ValueSet url) -> member?
    resolve: Callable[[dict], dict | None]  # (Reference) -> the resource it points to, or None
    timezone: tzinfo | None = None  # local time zone of the evaluation; None: the clock's own (now.tzinfo)
    expired: Callable[[], bool] | None = None  # True once the caller's deadline has passed; None: no deadline

    def __post_init__(self) -> None:
        """Reject a naive clock, since now() and date comparisons need its UTC offset, and a zone that is not a tzinfo."""
        if self.now.tzinfo is None or self.now.utcoffset() is None:
            raise ValueError("EvaluationContext.now must be timezone-aware")
        if self.timezone is not None and not isinstance(self.timezone, tzinfo):
            raise TypeError(f"EvaluationContext.timezone must be a tzinfo (see time_zone()), got {self.timezone!r}")

    @property
    def zone(self) -> tzinfo:
        """The local time zone of the evaluation: ``timezone``, else the clock's own."""
        return self.timezone if self.timezone is not None else self.now.tzinfo


#: Items of where(), select(), all() and aggregate() between two questions to EvaluationContext.expired.
_DEADLINE_STRIDE = 16
_STRIDE_MASK = _DEADLINE_STRIDE - 1


def _deadline_passed() -> EvaluationTimeout:
    """The exception the evaluators raise when EvaluationContext.expired answers True."""
    return EvaluationTimeout("the time allowed for the evaluation has passed")


def time_zone(value: str | tzinfo | None) -> tzinfo:
    """The time zone a setting names: an IANA name (``Australia/Sydney``), ``UTC``, or a tzinfo as is.

    None and ``UTC`` (in any case) give ``datetime.timezone.utc``, which needs no time zone database;
    other names are read with ``zoneinfo`` (the system's database, or the ``tzdata`` package).  An
    unknown or malformed name is a ValueError that names it.
    """
    if value is None:
        return timezone.utc
    if isinstance(value, tzinfo):
        return value
    if not isinstance(value, str):
        raise TypeError(f"a time zone is an IANA name such as Europe/Paris, got {value!r}")
    name = value.strip()
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    raise ValueError(f"unknown time zone {value!r}: expected an IANA time zone name such as UTC, Europe/Paris or America/New_York")


class CompiledExpression(Protocol):
    """A parsed expression, evaluated per request without parsing again."""

    source: str
    variables: frozenset[str]

    def __call__(self, env: Mapping[str, Any], ctx: EvaluationContext, focus: Any = None) -> list:
        """Evaluate with ``focus`` as input collection and ``env`` as %variables; return the raw results.

        ``env`` is read lazily: only when the evaluation reaches ``%name`` does it ask
        ``name in env`` and then ``env[name]`` (again at every read), so its values may be
        computed on first access.  A name it lacks (other than ``context`` and ``ucum``,
        which default to the focus and the UCUM url) is a FhirPathEvaluationError then;
        an exception raised by ``env[name]`` propagates (wrapped unless it already is a
        FhirPathEvaluationError).  The right operand of ``and``/``or``/``implies`` is not
        evaluated when the left one decides the result.
        """
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


def _zone() -> tzinfo:
    """The local time zone of the evaluation running in this thread/task (UTC outside an evaluation)."""
    ctx = _CURRENT.get(None)
    return timezone.utc if ctx is None else ctx.zone


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
def _datetime_template(text: str) -> FP_DateTime | None:
    """fhirpathpy's date/time object for a text, parsed once and never handed out (see _new_datetime)."""
    return FP_DateTime(text)


def _new_datetime(text: str) -> FP_DateTime | None:
    """A new FP_DateTime for the text, equal to ``FP_DateTime(text)`` without parsing it again.

    Constructing one costs about 15 microseconds (two uncompiled regular expressions and a
    walk over the groups); a copy of a cached template has the same attributes.
    """
    template = _datetime_template(text)
    if template is None:
        return None
    value = object.__new__(FP_DateTime)
    value.__dict__.update(template.__dict__)
    value._dateTimeAsList = list(template._dateTimeAsList)
    return value


def _fields_text(fields: Sequence[int], count: int) -> str:
    """``YYYY-MM-DDThh:mm:ss`` written from the first ``count`` components (1 = year ... 6 = second)."""
    separators = ("", "-", "-", "T", ":", ":")
    return "".join(f"{separators[i]}{value:0{4 if i == 0 else 2}d}" for i, value in enumerate(fields[:count]))


@lru_cache(maxsize=4096)
def _parse_datetime(text: str) -> _DateTime | None:
    """Parse a FHIRPath/FHIR date or dateTime text, or return None if it is not one."""
    match = _DATETIME_RE.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    fields = tuple(int(v) for v in (year, month, day, hour, minute, second) if v is not None)
    if not _on_the_calendar(fields) or (zone not in (None, "Z") and (int(zone[1:3]) > 14 or int(zone[4:6]) > 59)):
        return None
    offset = None
    if zone is not None:
        offset = 0 if zone == "Z" else int(zone[0] + "1") * (int(zone[1:3]) * 60 + int(zone[4:6]))
    return _DateTime(fields, fraction, offset, zone)


def _on_the_calendar(fields: tuple[int, ...]) -> bool:
    """Whether the components name a real moment: month 1-12, a day the month has, hour 0-23, minute and second 0-59
    (``1961-13-45`` or ``2026-02-30`` look like dates but are not, and must not be read as one)."""
    limits = ((1, 12), (1, None), (0, 23), (0, 59), (0, 59))
    for position, value in enumerate(fields[1:]):
        low, high = limits[position]
        if high is None:
            high = calendar.monthrange(fields[0], fields[1])[1] if fields[0] >= 1 else 31
        if not low <= value <= high:
            return False
    return True


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
    if to_utc:
        zone = _zone()
        kx, ky = x.keys(_assumed_offset(x, zone), True), y.keys(_assumed_offset(y, zone), True)
    else:
        kx, ky = x.keys(0, False), y.keys(0, False)
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


# Paths of string nodes that fhirpathpy's = does not compare as plain text (date/times are
# compared as instants above; a "Quantity" node is read as a quantity).
_NOT_PLAIN_TEXT_PATHS = _TEMPORAL_TYPES | {"Quantity", "System.Quantity"}


def _plain_text(item: Any) -> str | None:
    """The text of a string item that fhirpathpy's = compares as a Python string, else None."""
    if type(item) is str:
        return item
    if isinstance(item, ResourceNode) and type(item.data) is str and item.path not in _NOT_PLAIN_TEXT_PATHS:
        return item.data
    return None


def _equality(original: Callable, negate: bool) -> Callable:
    """= / != : date/times by the rules above, anything else by fhirpathpy.

    Two single strings (``code = 'active'``, the most common comparison) are compared
    directly, which is what fhirpathpy's equality amounts to for them.
    """

    def operator(ctx: dict, a: list, b: list) -> Any:
        if len(a) == 1 and len(b) == 1:
            x, y = _plain_text(a[0]), _plain_text(b[0])
            if x is not None and y is not None:
                return [(x == y) != negate]
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
    return _new_datetime(_shifted_datetime_text(value, quantity, sign))


def _shifted_datetime_text(value: _DateTime, quantity: Any, sign: int) -> str:
    """The text of value + sign * quantity (see _corrected_operators for the rules).

    ``quantity`` is anything with the ``value`` and ``unit`` of a fhirpathpy quantity (a number,
    and a calendar word such as ``days`` or a quoted UCUM code such as ``'h'``).
    """
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

    text = _fields_text((result.year, result.month, result.day, result.hour, result.minute, result.second), precision)
    if precision > 5:
        if value.fraction is not None or result.microsecond:
            digits = min(max(len(value.fraction or ""), 3), 6)
            text += "." + f"{result.microsecond:06d}"[:digits]
    if value.zone is not None:
        text += value.zone
    return text


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


_JSON_KEYS = "protocol.engine.fhirpath:json-keys"  # state entry: id(data) -> (data, JSON text), per evaluation


def _distinct(ctx: dict, items: list) -> list:
    """distinct(), union(), `|`: first occurrence of each value, keeping the original nodes.

    fhirpathpy rebuilds de-duplicated nodes without their path, so elements lose their
    FHIR type and a following ofType()/is fails (AttributeError on `None.is_`).

    Values are told apart by their JSON text.  Within one evaluation the text of a given
    data object is computed once (chained unions such as ``%a | %b | %c`` see the same
    resources again); the data of a resource does not change while an expression runs.
    The JSON text of a string (the common union of texts and codes) is written by the
    encoder's string function directly, as json.dumps itself does for a string.
    """
    if not all(isinstance(item, ResourceNode) for item in items):
        return _distinct_values(items)
    if len(items) < 2:
        return list(items)
    keys = ctx.get(_JSON_KEYS)
    if keys is None:
        keys = ctx[_JSON_KEYS] = {}
    seen: set[str] = set()
    out = []
    for item in items:
        data = item.data
        if type(data) is str:
            key = encode_basestring_ascii(data)
        else:
            known = keys.get(id(data))
            if known is not None and known[0] is data:
                key = known[1]
            else:
                key = json.dumps(data, sort_keys=True, default=str)
                keys[id(data)] = (data, key)  # holds data, so its id is not reused meanwhile
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


_MILLISECONDS_OR_MONTHS = {
    **dict.fromkeys(("weeks", "'wk'", "week"), Decimal("604800000")),
    **dict.fromkeys(("days", "'d'", "day"), Decimal("86400000")),
    **dict.fromkeys(("hours", "'h'", "hour"), Decimal("3600000")),
    **dict.fromkeys(("minutes", "'min'", "minute"), Decimal("60000")),
    **dict.fromkeys(("seconds", "'s'", "second"), Decimal("1000")),
    **dict.fromkeys(("milliseconds", "'ms'", "millisecond"), Decimal("1")),
    **dict.fromkeys(("years", "'a'", "year"), Decimal("12")),
    **dict.fromkeys(("months", "'mo'", "month"), Decimal("1")),
}


def _distinct_values(x: list) -> list:
    """fhirpathpy's distinct_fn for collections that are not all nodes, its unit table built once."""
    if all(isinstance(v, FP_Quantity) for v in x):
        converted_values: dict = {}
        original_values: dict = {}
        for interval in x:
            unit = interval.unit
            if unit in _MILLISECONDS_OR_MONTHS:
                converted_value = interval.value * _MILLISECONDS_OR_MONTHS[unit]
                if converted_value not in converted_values:
                    converted_values[converted_value] = interval.value
                    original_values[converted_value] = interval
        if len(converted_values) == 1:
            return [list(original_values.values())[0]]
        return [original_values[val] for val in fp_util.uniq(converted_values.values())]
    return fp_util.uniq(x)


# ---------------------------------------------------------------- membership by key
#
# `in`, `contains`, intersect(), exclude(), subsetOf() and supersetOf() ask whether a collection holds an item
# equal to a value.  Asked item by item, a collection of n items tested against another of n costs n * n
# comparisons (9 million for two lists of 3,000 resources).  _Membership answers from a hash table instead,
# with exactly the answer of the item-by-item search: each evaluator gives a key function such that two items
# its equality finds equal have the same key, and the equality itself still decides between the items of a
# key.  Items without a key (date/times, quantities, anything whose equality is not Python's equality of
# JSON values) are compared with the value one by one, in the collection's order, as before.

#: Collections shorter than this are searched item by item (a search of a list not seen before is too).
_INDEXED_FROM = 32
#: intersect() and friends compare item by item while len(input) * len(argument) is at most this.
_PAIRWISE_LIMIT = 256
#: Lists an evaluation remembers for `in` and `contains` (see _searched_again).
_SEARCHED_LISTS = 16


class _NoKey(Exception):
    """A value with no key (see _frozen)."""


def _frozen(value: Any) -> Any:
    """A hashable image of a JSON value, equal for two values exactly when Python finds them equal."""
    t = type(value)
    if t is dict:
        return ("{", frozenset([(name, _frozen(item)) for name, item in value.items()]))
    if t is list:
        return ("[", tuple([_frozen(item) for item in value]))
    if t is str or t is int or t is bool or value is None:
        return value
    if (t is float and value == value) or (t is Decimal and not value.is_nan()):
        return value
    raise _NoKey


def _plain_member_key(value: Any) -> Any:
    """The key of a JSON value for _Membership, or None when it has none (then it is compared one by one).

    Strings and numbers are their own key (1, 1.0 and Decimal('1') are equal in Python and hash alike,
    NaN has no key); a resource is keyed by type and id (equal resources have equal types and ids, and the
    equality decides between versions of one resource); other objects and arrays by their frozen image.
    """
    t = type(value)
    if t is str or t is int or t is bool:
        return value
    if t is dict:
        rtype, rid = value.get("resourceType"), value.get("id")
        if type(rtype) is str and type(rid) is str:
            return ("resource", rtype, rid)
    elif t is float:
        return value if value == value else None
    elif t is Decimal:
        return None if value.is_nan() else value
    elif t is not list:
        return None
    try:
        return _frozen(value)
    except (_NoKey, RecursionError):
        return None


class _Membership:
    """A collection searched by key: ``holds(value)`` is ``any(equal(item, value) for item in items)``.

    ``key(item)`` must give the same key to any two items ``equal`` finds equal, or None (no key).  A value
    with a key is compared with the items of its key and with the items without one that come before the
    first of those that matches, in the collection's order; a value without a key with every item.  So the
    answer, and an exception a comparison raises, are those of the search item by item.
    """

    __slots__ = ("_key", "_equal", "_items", "_buckets", "_loose")

    def __init__(self, key: Callable[[Any], Any], equal: Callable[[Any, Any], Any], items: Sequence = ()) -> None:
        self._key = key
        self._equal = equal
        self._items: list = []
        self._buckets: dict[Any, list] = {}
        self._loose: list[tuple[int, Any]] = []
        for item in items:
            self.add(item)

    def add(self, item: Any) -> None:
        """Append an item to the collection."""
        entry = (len(self._items), item)
        self._items.append(item)
        key = self._key(item)
        if key is None:
            self._loose.append(entry)
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [entry]
        else:
            bucket.append(entry)

    def holds(self, value: Any) -> bool:
        """True if an item of the collection is equal to the value."""
        equal = self._equal
        key = self._key(value)
        if key is None:
            return any(equal(item, value) for item in self._items)
        found = None
        for position, item in self._buckets.get(key, ()):
            if equal(item, value):
                found = position
                break
        for position, item in self._loose:
            if found is not None and position > found:
                break
            if equal(item, value):
                return True
        return found is not None


def _searched_again(cache: dict, items: list, key: Callable[[Any], Any], equal: Callable[[Any, Any], Any]) -> _Membership | None:
    """The _Membership of a list searched again in the same evaluation, else None (search it item by item).

    Building the table costs about one search item by item, so it pays when the same list is searched many
    times (``%list`` tested in a where()): it is built the second time.  ``cache`` belongs to one evaluation
    and holds the lists it remembers, so that their ids are not reused meanwhile; it remembers the
    _SEARCHED_LISTS lists searched last only, so that lists made anew for each item of a where() are not all
    kept alive.
    """
    if len(items) < _INDEXED_FROM:
        return None
    name = (id(items), equal)
    entry = cache.pop(name, None)
    if entry is None:
        if len(cache) >= _SEARCHED_LISTS:
            del cache[next(iter(cache))]  # the list searched least recently
        cache[name] = [items, None]
        return None
    cache[name] = entry
    if entry[1] is None:
        entry[1] = _Membership(key, equal, items)
    return entry[1]


def _fp_member_key(item: Any) -> Any:
    """The key of a fhirpathpy value: a node's data, a JSON value; none for date/times, times and quantities,
    whose ``==`` is their own (an FP_DateTime even answers a string with a true value)."""
    if isinstance(item, ResourceNode):
        item = item.data
    return _plain_member_key(item)


def _fp_equal(item: Any, value: Any) -> Any:
    """``item == value``, as fhirpathpy's `in` and `contains` compare."""
    return item == value


def _fp_equal_reversed(item: Any, value: Any) -> Any:
    """``value == item``, as fhirpathpy's intersect() compares (the input's item first)."""
    return value == item


def _fp_in_list(item: Any, value: Any) -> Any:
    """``value in [item]``, as Python's ``in`` compares: the same object, or ``item == value``."""
    return item is value or item == value


_MEMBERS = "protocol.engine.fhirpath:members"  # state entry: the lists searched in this evaluation (see _searched_again)


def _fp_holds(ctx: dict, items: list, value: Any) -> bool:
    """fhirpathpy's contains_impl: an item of the list ``== value``, by key when the list is searched again."""
    cache = ctx.get(_MEMBERS)
    if cache is None:
        cache = ctx[_MEMBERS] = {}
    index = _searched_again(cache, items, _fp_member_key, _fp_equal)
    if index is None:
        return any(_fp_equal(item, value) for item in items)
    return index.holds(value)


def _contains_op(ctx: dict, a: list, b: list) -> Any:
    """`contains` as fhirpathpy's collections.contains, searched by key."""
    if len(b) == 0:
        return []
    if len(a) == 0:
        return False
    if len(b) > 1:
        raise Exception("Expected singleton on right side of contains, got " + str(b))
    return _fp_holds(ctx, a, b[0])


def _in_op(ctx: dict, a: list, b: list) -> Any:
    """`in` as fhirpathpy's collections.inn (its message included), searched by key."""
    if len(a) == 0:
        return []
    if len(b) == 0:
        return False
    if len(a) > 1:
        raise Exception("Expected singleton on right side of in, got " + str(b))
    return _fp_holds(ctx, b, a[0])


def _intersect(ctx: dict, list_1: list, list_2: list) -> list:
    """intersect() as fhirpathpy's subsetting.intersect_fn: the items of list_1 found in list_2, then the first of each."""
    if len(list_1) * len(list_2) <= _PAIRWISE_LIMIT:
        return fp_subsetting.intersect_fn(ctx, list_1, list_2)
    found = _Membership(_fp_member_key, _fp_equal_reversed, list_2)
    intersection = [item for item in list_1 if found.holds(item)]
    unique = _Membership(_fp_member_key, _fp_in_list)
    out = []
    for item in intersection:
        if not unique.holds(item):
            unique.add(item)
            out.append(item)
    return out


def _exclude(ctx: dict, coll1: list, coll2: list) -> list:
    """exclude() as fhirpathpy's combining.exclude_fn (``not in``), searched by key."""
    if len(coll1) * len(coll2) <= _PAIRWISE_LIMIT:
        return fp_combining.exclude_fn(ctx, coll1, coll2)
    index = _Membership(_fp_member_key, _fp_in_list, coll2)
    return [item for item in coll1 if not index.holds(item)]


def _subset_of(coll1: list, coll2: list) -> bool:
    """fhirpathpy's existence.subset_of (every item of coll1 ``in`` coll2), searched by key."""
    if len(coll1) * len(coll2) <= _PAIRWISE_LIMIT:
        return all(item in coll2 for item in coll1)
    index = _Membership(_fp_member_key, _fp_in_list, coll2)
    return all(index.holds(item) for item in coll1)


_TYPE_TESTS_LIMIT = 4096
_type_tests: dict[int, tuple[dict, dict]] = {}  # id(model) -> (model, {(path, name, namespace): bool})


def _of_type(ctx: dict, coll: list, tp: TypeInfo) -> list:
    """ofType(type): fhirpathpy's test, remembered per node path and type.

    fhirpathpy derives a node's type from its path with a regular expression and walks the
    model's type hierarchy for every item; with a model loaded the answer depends only on
    the path, the requested type and the model, so it is computed once for each.
    """
    model = TypeInfo.model
    if not model:
        return fp_filtering.of_type_fn(ctx, coll, tp)
    entry = _type_tests.get(id(model))
    if entry is None or entry[0] is not model:
        entry = _type_tests[id(model)] = (model, {})
    tests = entry[1]
    out = []
    for value in coll:
        if isinstance(value, ResourceNode) and value.path is not None:
            key = (value.path, tp.name, tp.namespace)
            matches = tests.get(key)
            if matches is None:
                matches = TypeInfo.from_value(value).is_(tp)
                if len(tests) < _TYPE_TESTS_LIMIT:
                    tests[key] = matches
        else:
            matches = TypeInfo.from_value(value).is_(tp)
        if matches:
            out.append(value)
    return out


_NO_INDEX = object()


def _where(ctx: dict, data: list, criteria: Callable) -> list:
    """where(criteria): fhirpathpy's test, criteria evaluated once per item, outer $index restored."""
    outer_index = ctx.get("$index", _NO_INDEX)
    expired = _context().expired
    selected = []
    for index, item in enumerate(data):
        if expired is not None and index & _STRIDE_MASK == _STRIDE_MASK and expired():
            raise _deadline_passed()
        ctx["$index"] = index
        result = criteria(item)
        if len(result) > 0 and result[0]:
            selected.append(item)
    if outer_index is not _NO_INDEX:
        ctx["$index"] = outer_index
    return fp_util.flatten(selected)


def _select(ctx: dict, data: list, projection: Callable) -> list:
    """select(projection): as fhirpathpy's, but restores the $index of an enclosing where/select, and joins the
    projections in one pass (fhirpathpy's flatten copies the list gathered so far for each one)."""
    outer_index = ctx.get("$index", _NO_INDEX)
    expired = _context().expired
    projected: list = []
    for index, item in enumerate(data):
        if expired is not None and index & _STRIDE_MASK == _STRIDE_MASK and expired():
            raise _deadline_passed()
        ctx["$index"] = index
        result = projection(item)
        if isinstance(result, list):
            projected.extend(result)
        else:
            projected.append(result)
    if outer_index is not _NO_INDEX:
        ctx["$index"] = outer_index
    return projected


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
      offset is local time in the evaluation's time zone, see EvaluationContext: by
      default the offset of the request clock); otherwise the written components
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

    Cost:

    7. ``in``, ``contains``, ``intersect()``, ``exclude()``, ``subsetOf()`` and ``supersetOf()`` compare every
       item of one collection with every item of the other (two lists of 3,000 resources: 9 million
       comparisons), and ``select()`` copies its result so far for every item.  Replaced by searches by key
       with the same answers (see _Membership: the same ``==``, in the same direction) and a select() in one
       pass.
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
        "ofType": {**reg["ofType"], "fn": _of_type},
        "where": {**reg["where"], "fn": _where},
        "select": {**reg["select"], "fn": _select},
        "exists": {**reg["exists"], "fn": _exists},
        "toString": {**reg["toString"], "fn": _to_string},
        "containsOp": {**reg["containsOp"], "fn": _contains_op},
        "inOp": {**reg["inOp"], "fn": _in_op},
        "intersect": {**reg["intersect"], "fn": _intersect},
        "exclude": {**reg["exclude"], "fn": _exclude},
        "subsetOf": {**reg["subsetOf"], "fn": lambda ctx, coll1, coll2: [_subset_of(coll1, coll2)]},
        "supersetOf": {**reg["supersetOf"], "fn": lambda ctx, coll1, coll2: [_subset_of(coll2, coll1)]},
    }


# ---------------------------------------------------------------- time zone, boundaries and intervals
#
# The local time zone of an evaluation (EvaluationContext.zone) decides what a date or dateTime written
# without an offset means, and what "today" is.  The functions below are shared with
# protocol.engine.fhirpath_native, so that both evaluators give the same results; see the docstrings of
# _boundary_text and _interval for the semantics of lowBoundary()/highBoundary() and duration()/difference().


@lru_cache(maxsize=4096)
def _local_offset(zone: tzinfo, fields: tuple[int, ...], fold: int = 0) -> int:
    """UTC offset in minutes that ``zone`` has at a local date/time (the components written, the rest at their start).

    ``fold`` chooses between the readings of a local time that a daylight saving change makes occur twice
    or not at all: 0 takes the offset in force before the change, 1 the offset after it (``datetime.fold``).
    """
    padded = list(fields[:6]) + [1] * (3 - min(len(fields), 3)) + [0] * (6 - max(len(fields), 3))
    offset = zone.utcoffset(datetime(*padded, fold=fold))
    return int(offset.total_seconds()) // 60


def _assumed_offset(value: _DateTime, zone: tzinfo) -> int:
    """The UTC offset of a date/time: as written, else the zone's at that local time (the earlier reading if ambiguous)."""
    if value.offset is not None:
        return value.offset
    return _local_offset(zone, value.fields, 0)


def _offset_text(minutes: int) -> str:
    """An offset in minutes as written in a dateTime: ``+HH:MM`` or ``-HH:MM``."""
    hours, rest = divmod(abs(minutes), 60)
    return f"{'-' if minutes < 0 else '+'}{hours:02d}:{rest:02d}"


#: lowBoundary()/highBoundary() precision (digits of the value, as FHIRPath counts them) -> components kept.
_BOUNDARY_COMPONENTS = {4: 1, 6: 2, 8: 3, 10: 4, 12: 5, 14: 6, 17: 7}


@lru_cache(maxsize=4096)
def _boundary_text(value: _DateTime, precision: int | None, high: bool, zone: tzinfo) -> str | None:
    """The text of ``value.lowBoundary(precision)`` (high False) or ``value.highBoundary(precision)``; None is empty.

    FHIRPath 3.0 (STU): the least (greatest) value the input can denote, to ``precision`` digits: 4 year,
    6 month, 8 day, 10 hour, 12 minute, 14 second, 17 millisecond; another number gives empty.  Components
    the value lacks are filled with their least (greatest) value (month 1/12, day 1/last of the month,
    23, 59, 59, 000/999; a written fraction of a second is kept to milliseconds, as fhirpath.js does),
    components beyond the precision are dropped.

    Engine conventions, where the specification differs or leaves a choice:

    - Without a precision the result is a DateTime to milliseconds (17) for Dates too (the specification
      returns a Date, at day precision, for a Date): a date-only onset becomes the first millisecond of
      its day, a date-only end the last.
    - A result with a time part gets an offset: the value's own when it has one ('Z' stays 'Z'), else the
      offset that the evaluation's time zone has at that local time, computed for the boundary itself so
      that a daylight saving change that day is taken into account (in America/New_York,
      ``@2026-03-08.lowBoundary()`` is ``2026-03-08T00:00:00.000-05:00`` and ``.highBoundary()`` is
      ``2026-03-08T23:59:59.999-04:00``).  Where the change makes the local time occur twice or not at
      all, the low boundary takes the offset before the change and the high boundary the offset after
      it, so that the two enclose every instant of the local period.
    """
    components = _BOUNDARY_COMPONENTS.get(17 if precision is None else precision)
    if components is None:
        return None
    written = value.fields
    fields = list(written[:components])
    while len(fields) < min(components, 6):
        filled = len(fields)
        if filled == 1:
            fields.append(12 if high else 1)
        elif filled == 2:
            fields.append(calendar.monthrange(fields[0], fields[1])[1] if high else 1)
        elif filled == 3:
            fields.append(23 if high else 0)
        else:
            fields.append(59 if high else 0)
    text = _fields_text(fields, min(components, 6))
    if components > 6:
        digits = (value.fraction or "")[:3] if len(written) == 6 else ""
        text += "." + (digits.ljust(3, "0") if digits else "999" if high else "000")
    if components > 3:
        if value.zone is not None:
            text += value.zone
        else:
            text += _offset_text(_local_offset(zone, tuple(fields), 1 if high else 0))
    return text


_INTERVAL_UNIT_NAMES = ("year", "month", "week", "day", "hour", "minute", "second", "millisecond")
#: duration()/difference() precision argument -> unit: the specification's singular names, and plurals.
_INTERVAL_UNITS = {**{u: u for u in _INTERVAL_UNIT_NAMES}, **{u + "s": u for u in _INTERVAL_UNIT_NAMES}}
_INTERVAL_LENGTH = {
    "hour": timedelta(hours=1),
    "minute": timedelta(minutes=1),
    "second": timedelta(seconds=1),
    "millisecond": timedelta(milliseconds=1),
}


def _microseconds(value: _DateTime) -> int:
    """The fraction of a second written, in microseconds (0 when the value stops above seconds)."""
    if len(value.fields) < 6 or not value.fraction:
        return 0
    return int(value.fraction[:6].ljust(6, "0"))


def _instant(value: _DateTime, zone: tzinfo) -> datetime:
    """The UTC instant a date/time with a time part starts at (no offset written: local time in the zone)."""
    padded = list(value.fields) + [0] * (6 - len(value.fields))
    written = datetime(*padded, _microseconds(value), tzinfo=timezone.utc)
    return written - timedelta(minutes=_assumed_offset(value, zone))


def _wall(value: _DateTime, zone: tzinfo, precision: int) -> datetime:
    """The value as a naive local date/time in the zone, cut to ``precision`` components (the rest at their start).

    A value written with an offset is converted to the zone's local time; one without is local time already.
    """
    if value.offset is not None:
        local = _instant(value, zone).astimezone(zone)
        fields: tuple[int, ...] = (local.year, local.month, local.day, local.hour, local.minute, local.second)
        micro = local.microsecond
    else:
        fields, micro = value.fields, _microseconds(value)
    kept = list(fields[:precision])
    padded = kept + [1] * (3 - min(len(kept), 3)) + [0] * (6 - max(len(kept), 3))
    return datetime(*padded, micro if precision >= 6 else 0)


def _local_floor(instant: datetime, unit: str, zone: tzinfo) -> datetime:
    """The UTC instant at which the local hour/minute/second/millisecond (in the zone) holding the instant starts."""
    local = instant.astimezone(zone)
    if unit == "hour":
        local = local.replace(minute=0, second=0, microsecond=0)
    elif unit == "minute":
        local = local.replace(second=0, microsecond=0)
    elif unit == "second":
        local = local.replace(microsecond=0)
    else:
        local = local.replace(microsecond=local.microsecond // 1000 * 1000)
    return local.astimezone(timezone.utc)


def _add_months(moment: datetime, months: int) -> datetime:
    """moment + months, the day clamped to the end of a shorter month (Jan 31 + 1 month = Feb 28), as ``+`` does."""
    year, month = divmod(moment.year * 12 + moment.month - 1 + months, 12)
    return moment.replace(year=year, month=month + 1, day=min(moment.day, calendar.monthrange(year, month + 1)[1]))


def _whole_periods(start: datetime, end: datetime, unit: str) -> int:
    """Whole calendar years/months/weeks/days from start to end (naive local times, start <= end)."""
    if unit in ("day", "week"):
        days = (end - start).days
        return days if unit == "day" else days // 7
    months = (end.year - start.year) * 12 + end.month - start.month
    if _add_months(start, months) > end:
        months -= 1
    return months if unit == "month" else months // 12


def _week_start(moment: datetime) -> date:
    """The Sunday that starts the week of a date (FHIRPath difference() counts weeks from Sunday)."""
    day = moment.date()
    return day - timedelta(days=(day.weekday() + 1) % 7)


def _boundaries_crossed(start: datetime, end: datetime, unit: str) -> int:
    """Calendar year/month/week/day boundaries crossed from start to end (naive local times; negative backwards)."""
    if unit == "day":
        return (end.date() - start.date()).days
    if unit == "week":
        return (_week_start(end) - _week_start(start)).days // 7
    months = (end.year - start.year) * 12 + end.month - start.month
    return months if unit == "month" else end.year - start.year


def _interval(start: _DateTime, end: _DateTime, precision: str, zone: tzinfo, whole: bool) -> int | None:
    """``start.duration(end, precision)`` (whole True) or ``start.difference(end, precision)``; None is empty.

    FHIRPath 3.0 (STU), "Date and Time Interval Functions": duration() is the number of whole periods of
    the precision from the input to the argument, difference() the number of period boundaries crossed
    (weeks start on Sunday); both are negative when the input is after the argument.  ``precision`` is
    one of 'year', 'month', 'week', 'day', 'hour', 'minute', 'second', 'millisecond' (the plural forms
    are accepted too); anything else is an error.  When the input or the argument is less precise than
    the precision asks (a date for 'hour'), the result is empty: ``onset.lowBoundary()`` makes a date-only
    onset a dateTime first.

    How values are compared (the specification asks to normalize offsets for hours and below and leaves
    the rest open):

    - hour, minute, second, millisecond: both values are instants (a value without an offset is local
      time in the evaluation's zone), so differing offsets and daylight saving changes give the true
      elapsed time: 2026-03-07T00:00-05:00 to 2026-03-09T00:00-04:00 is 47 hours.  duration() is the
      elapsed time divided by the unit, the remainder dropped; difference() counts the starts of local
      hours (minutes ...) of the evaluation's zone passed.
    - day, week, month, year: calendar periods of local time in the evaluation's zone (values with an
      offset are converted to it), so a day is a calendar day, 23 or 25 hours long across a daylight
      saving change.  When one value has no time part, both are compared by date (or month, or year:
      the lower of the two precisions).  duration() counts whole periods, the time of day included
      (months and years with end-of-month clamping, as ``+`` adds them).
    """
    unit = _INTERVAL_UNITS.get(precision) if isinstance(precision, str) else None
    if unit is None:
        raise ValueError(
            f"the precision of duration()/difference() is one of {', '.join(repr(u) for u in _INTERVAL_UNIT_NAMES)}, "
            f"got {precision!r}"
        )
    needed = _UNIT_PRECISION[unit]
    if start.precision < needed or end.precision < needed:
        return None
    if needed >= 4:
        a, b = _instant(start, zone), _instant(end, zone)
        length = _INTERVAL_LENGTH[unit]
        if whole:
            count = abs(b - a) // length
            return count if b >= a else -count
        return round((_local_floor(b, unit, zone) - _local_floor(a, unit, zone)) / length)
    common = min(start.precision, end.precision)
    a, b = _wall(start, zone, common), _wall(end, zone, common)
    if not whole:
        return _boundaries_crossed(a, b, unit)
    return _whole_periods(a, b, unit) if a <= b else -_whole_periods(b, a, unit)


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
    return _new_datetime(_context().now.isoformat(timespec="milliseconds"))


def _fn_today(ctx: dict, inputs: list) -> FP_DateTime:
    """today(): the request clock's date in the evaluation's time zone."""
    context = _context()
    return _new_datetime(context.now.astimezone(context.zone).date().isoformat())


def _fn_time_of_day(ctx: dict, inputs: list) -> FP_Time:
    """timeOfDay(): the request clock's time in the evaluation's time zone, millisecond precision."""
    context = _context()
    return FP_Time(context.now.astimezone(context.zone).time().isoformat(timespec="milliseconds"))


def _single_date_time(items: list, function: str) -> _DateTime | None:
    """The one Date/DateTime of a boundary or interval function's input or argument; None when empty.

    Only typed values count (FHIR date/dateTime/instant elements, @-literals, now(), today(), results of
    date arithmetic, toDateTime()); anything else, or more than one item, is an error.
    """
    if len(items) == 2:
        items = fp_equality.remove_duplicate_extension(items)
    if not items:
        return None
    if len(items) > 1:
        raise ValueError(f"{function}() needs a single Date or DateTime, got {len(items)} items")
    value = _temporal(items[0])
    if value is None:
        raise ValueError(f"{function}() needs a Date or DateTime value, got {_to_json(items[0])!r}")
    return value


def _boundary(inputs: list, precision: Any, high: bool) -> list:
    """lowBoundary([precision]) / highBoundary([precision]) of a Date or DateTime (see _boundary_text)."""
    value = _single_date_time(inputs, "highBoundary" if high else "lowBoundary")
    if value is None or isinstance(precision, list):  # an empty precision argument gives empty
        return []
    text = _boundary_text(value, None if precision is None else int(precision), high, _zone())
    return [] if text is None else [_new_datetime(text)]


def _fn_low_boundary(ctx: dict, inputs: list, precision: Any = None) -> list:
    """lowBoundary([precision]): the first instant the input can denote (see _boundary_text)."""
    return _boundary(inputs, precision, high=False)


def _fn_high_boundary(ctx: dict, inputs: list, precision: Any = None) -> list:
    """highBoundary([precision]): the last instant the input can denote (see _boundary_text)."""
    return _boundary(inputs, precision, high=True)


def _between(inputs: list, other: list, precision: Any, whole: bool) -> list:
    """duration(value, precision) / difference(value, precision) (see _interval)."""
    name = "duration" if whole else "difference"
    start = _single_date_time(inputs, name)
    end = _single_date_time(other, name)
    if start is None or end is None or isinstance(precision, list):
        return []
    result = _interval(start, end, precision, _zone(), whole)
    return [] if result is None else [result]


def _fn_duration(ctx: dict, inputs: list, other: list, precision: Any) -> list:
    """duration(value, precision): whole periods from the input to value, negative backwards (see _interval)."""
    return _between(inputs, other, precision, whole=True)


def _fn_difference(ctx: dict, inputs: list, other: list, precision: Any) -> list:
    """difference(value, precision): period boundaries crossed from the input to value (see _interval)."""
    return _between(inputs, other, precision, whole=False)


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


def _calendar_checked(convert: Callable) -> Callable:
    """fhirpathpy's toDate()/toDateTime(), giving empty for text that is shaped like a date but is not on the
    calendar (its own check is only lexical)."""

    def checked(ctx: Any, coll: list) -> Any:
        if len(coll) == 1:
            data = coll[0].data if isinstance(coll[0], ResourceNode) else coll[0]
            text = data.asStr if isinstance(data, FP_DateTime) else data
            if isinstance(text, str) and _parse_datetime(text) is None:
                return []
        return convert(ctx, coll)

    return checked


def _converts_on_the_calendar(convert: Callable) -> Callable:
    """convertsToDate()/convertsToDateTime() that agree with the checked conversions."""
    checked = _calendar_checked(convert)

    def converts(ctx: Any, coll: list) -> list:
        if len(coll) != 1:
            return []
        result = checked(ctx, coll)
        return [not (result == [] or result is None)]

    return converts


def _function_table() -> dict[str, dict]:
    """The function table passed to fhirpathpy with every evaluation (built once)."""
    table: dict[str, dict] = {
        "now": {"fn": _fn_now},
        "today": {"fn": _fn_today},
        "timeOfDay": {"fn": _fn_time_of_day},
        "memberOf": {"fn": _fn_member_of, "arity": {1: ["String"]}},
        "resolve": {"fn": _fn_resolve},
        "lowBoundary": {"fn": _fn_low_boundary, "arity": {0: [], 1: ["Integer"]}},
        "highBoundary": {"fn": _fn_high_boundary, "arity": {0: [], 1: ["Integer"]}},
        "duration": {"fn": _fn_duration, "arity": {2: ["Any", "String"]}},
        "difference": {"fn": _fn_difference, "arity": {2: ["Any", "String"]}},
        "toDate": {"fn": _calendar_checked(fp_misc.to_date)},
        "toDateTime": {"fn": _calendar_checked(fp_misc.to_date_time)},
        "convertsToDate": {"fn": _converts_on_the_calendar(fp_misc.to_date)},
        "convertsToDateTime": {"fn": _converts_on_the_calendar(fp_misc.to_date_time)},
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


# ---------------------------------------------------------------- compiled evaluation
#
# fhirpathpy interprets the parsed tree on every evaluation, and redoes per node work whose
# result never changes: unquoting identifiers with a regular expression, merging its whole
# function table into a new dict for every function call and operator, looking up node
# evaluators by type name, and reading the R4 model for every member of every item.
# ``_Compiler`` turns the tree once into Python closures that do the same steps in the
# same order with those constants computed ahead: every node becomes a node of type
# ``_COMPILED`` holding its closure, which fhirpathpy's own ``do_eval`` also dispatches
# (through one entry added to its evaluator table under a name it does not use), so
# fhirpathpy functions that evaluate their arguments (where, iif, aggregate ...) run the
# compiled arguments.  A node kind the compiler does not know is left to fhirpathpy.
#
# Two deliberate differences: ``and``/``or``/``implies`` do not evaluate their right
# operand when the left one decides the result, and %variables are read from the
# caller's mapping only when the expression reaches them (see _Variables).

_COMPILED = "protocol.engine.fhirpath:compiled"


def _run_compiled_node(ctx: dict, data: Any, node: dict) -> Any:
    """fhirpathpy evaluator for compiled nodes: run the node's closure."""
    return node["run"](ctx, data)


fp_evaluators[_COMPILED] = _run_compiled_node

_Run = Callable[[dict, Any], Any]  # (fhirpathpy state, input collection) -> result


class _Uncompiled(Exception):
    """A node the compiler leaves to fhirpathpy's interpreter (unknown kind or shape)."""


def _identifier_text(node: dict) -> str:
    """The value fhirpathpy's identifier evaluator gives a node, computed once."""
    return re.sub(r'(^"|"$)', "", node["text"])


def _is_nullable(value: Any) -> bool:
    """fhirpathpy's util.is_nullable: None or an empty list."""
    return value is None or (isinstance(value, list) and len(value) == 0)


def _is_some(value: Any) -> bool:
    """fhirpathpy's util.is_some: neither None nor an empty list."""
    return value is not None and not (isinstance(value, list) and len(value) == 0)


def _arraify(value: Any) -> list:
    """fhirpathpy's util.arraify without its default: a list as is, a value in a list, nothing as []."""
    if isinstance(value, list):
        return value
    if value is not None:
        return [value]
    return []


def _checked_param(res: list, node_type: Any) -> Any:
    """The end of fhirpathpy's make_param for typed arguments: singleton checks and conversion."""
    if isinstance(node_type, list):
        if len(res) == 0:
            return []
        node_type = node_type[0]
    if len(res) > 1:
        raise Exception(
            "Unexpected collection" + json.dumps(res) + "; expected singleton of type " + node_type
        )
    if len(res) == 0:
        return []
    if node_type not in fp_param_check_table:
        raise Exception("Implement me for " + node_type)
    return fp_param_check_table[node_type](res[0])


def _aliased_operator(aliases: dict[str, str]) -> Callable:
    """Builder of `is`/`as` and `in`/`contains`: the operator under the name of its table entry."""

    def build(compiler: _Compiler, node: dict) -> _Run:
        op = node["terminalNodeText"][0]
        if op not in aliases:
            raise _Uncompiled
        return compiler._infix(aliases[op], node["children"])

    return build


_CHOICE_CACHE_LIMIT = 512  # distinct input types remembered per member node


class _Compiler:
    """Builds the closures of one parsed expression for one model (see the section comment)."""

    def __init__(self, model: dict | None) -> None:
        self.model = model

    # -- entry points

    def node(self, node: dict) -> dict:
        """The compiled replacement of a node, or the node itself if left to fhirpathpy."""
        builder = self._BUILDERS.get(node.get("type"))
        if builder is None:
            return node
        try:
            run = builder(self, node)
        except Exception:  # _Uncompiled, or a shape fhirpathpy would fail on when evaluating
            return node
        return {"type": _COMPILED, "text": node.get("text"), "run": run}

    def run(self, node: dict) -> _Run:
        """The closure evaluating a node (fhirpathpy's do_eval for nodes left to it)."""
        compiled = self.node(node)
        if compiled is node:
            return lambda ctx, data: do_eval(ctx, data, node)
        return compiled["run"]

    # -- arguments, as fhirpathpy's make_param evaluates them

    def param(self, node_type: Any, node: dict) -> Callable[[dict, Any], Any]:
        """A closure (state, parent data) -> argument value, per fhirpathpy's make_param."""
        if node_type in ("Identifier", "TypeSpecifier"):  # read from the parse tree, not evaluated
            return lambda ctx, parent: fp_make_param(ctx, parent, node_type, node)
        run = self.run(node)
        if node_type == "Expr":

            def expr_param(ctx: dict, parent: Any) -> Callable[[Any], Any]:
                def evaluate(data: Any) -> Any:
                    this = _arraify(data)
                    ctx["$this"] = this
                    return run(ctx, this)

                return evaluate

            return expr_param
        if node_type == "AnyAtRoot":

            def at_root_param(ctx: dict, parent: Any) -> Any:
                this = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
                ctx["$this"] = this
                return run(ctx, this)

            return at_root_param
        if node_type == "Any":

            def any_param(ctx: dict, parent: Any) -> Any:
                ctx["$this"] = parent
                return run(ctx, parent)

            return any_param
        if node_type == ["Boolean"]:  # operands of and/or/xor/implies

            def boolean_param(ctx: dict, parent: Any) -> Any:
                ctx["$this"] = parent
                res = run(ctx, parent)
                if len(res) == 1 and (res[0] is True or res[0] is False):
                    return res[0]
                return _checked_param(res, node_type)

            return boolean_param

        def typed_param(ctx: dict, parent: Any) -> Any:
            ctx["$this"] = parent
            return _checked_param(run(ctx, parent), node_type)

        return typed_param

    # -- node kinds

    def _pass_through(self, node: dict) -> _Run:
        """TermExpression, InvocationTerm, ParenthesizedTerm: the child's value."""
        return self.run(node["children"][0])

    def _literal_term(self, node: dict) -> _Run:
        term = node["children"][0]
        if term:
            return self.run(term)
        text = node["text"]
        return lambda ctx, data: [text]

    def _constant(self, node: dict) -> _Run:
        """Number, string and boolean literals: an immutable value, computed once."""
        value = fp_evaluators[node["type"]](None, None, node)[0]
        return lambda ctx, data: [value]

    def _null_literal(self, node: dict) -> _Run:
        return lambda ctx, data: []

    def _quantity_literal(self, node: dict) -> _Run:
        quantity = fp_evaluators["QuantityLiteral"](None, None, node)[0]
        value, unit = quantity.value, quantity.unit
        return lambda ctx, data: [FP_Quantity(value, unit)]  # a new object per evaluation, as before

    def _date_time_literal(self, node: dict) -> _Run:
        text = node["text"][1:]
        return lambda ctx, data: [_new_datetime(text)]

    def _time_literal(self, node: dict) -> _Run:
        text = node["text"][2:]
        return lambda ctx, data: [FP_Time(text)]

    def _this(self, node: dict) -> _Run:
        return lambda ctx, data: _arraify(ctx["$this"])

    def _index(self, node: dict) -> _Run:
        return lambda ctx, data: _arraify(ctx["$index"])

    def _total(self, node: dict) -> _Run:
        return lambda ctx, data: _arraify(ctx["$total"])

    def _external_constant(self, node: dict) -> _Run:
        """%name: the variable, read from the caller's mapping when reached."""
        name = _identifier_text(node["children"][0]["children"][0]).replace("`", "")

        def variable(ctx: dict, data: Any) -> list:
            value = ctx["vars"].value(name)
            if value is None:
                return []
            if not isinstance(value, list):
                return [value]
            return value

        return variable

    def _invocation_expression(self, node: dict) -> _Run:
        """a.b.c: each step evaluated on the result of the previous one."""
        runs = [self.run(child) for child in node["children"]]
        if len(runs) == 2:
            first, second = runs

            def chain2(ctx: dict, data: Any) -> list:
                return list(second(ctx, first(ctx, data)))

            return chain2

        def chain(ctx: dict, data: Any) -> list:
            for step in runs:
                data = step(ctx, data)
            return list(data)

        return chain

    def _polarity(self, node: dict) -> _Run:
        sign = node["terminalNodeText"][0]
        operand = self.run(node["children"][0])

        def polarity(ctx: dict, data: Any) -> list:
            rtn = operand(ctx, data)
            if len(rtn) != 1:
                raise Exception("Unary " + sign + " can only be applied to an individual number.")
            if not fp_util.is_number(rtn[0]):
                raise Exception("Unary " + sign + " can only be applied to a number.")
            if sign == "-":
                rtn[0] = -rtn[0]
            return rtn

        return polarity

    def _indexer(self, node: dict) -> _Run:
        collection, index = (self.run(child) for child in node["children"][:2])

        def indexer(ctx: dict, data: Any) -> list:
            coll = collection(ctx, data)
            idx = index(ctx, data)
            if isinstance(idx, list) and len(idx) == 0:
                return []
            number = int(idx[0])
            if coll is not None and len(coll) > number and number >= 0:
                return [coll[number]]
            return []

        return indexer

    def _infix(self, fn_name: str, operands: list) -> _Run:
        """An operator as fhirpathpy's infix_invoke applies it, with its table entry looked up once."""
        invocation = _KNOWN_FUNCTIONS.get(fn_name)
        if invocation is None or "fn" not in invocation or len(operands) != 2:
            raise _Uncompiled
        arg_types = invocation["arity"][2]
        if arg_types is None:
            raise _Uncompiled
        fn = invocation["fn"]
        left, right = self.param(arg_types[0], operands[0]), self.param(arg_types[1], operands[1])
        short_circuit = _SHORT_CIRCUIT.get(fn_name)
        if short_circuit is not None and short_circuit[0] is fn and "nullable" not in invocation:
            decisive, result = short_circuit[1], [short_circuit[2]]

            def logical(ctx: dict, data: Any) -> list:
                a = left(ctx, data)
                if a is decisive:
                    ctx["$this"] = data  # as evaluating the right operand would have left it
                    return list(result)
                return _arraify(fn(ctx, a, right(ctx, data)))

            return logical
        if "nullable" in invocation:

            def nullable_operator(ctx: dict, data: Any) -> list:
                a = left(ctx, data)
                b = right(ctx, data)
                if _is_nullable(a) or _is_nullable(b):
                    return []
                return _arraify(fn(ctx, a, b))

            return nullable_operator

        def operator(ctx: dict, data: Any) -> list:
            a = left(ctx, data)
            return _arraify(fn(ctx, a, right(ctx, data)))

        return operator

    def _op_expression(self, node: dict) -> _Run:
        return self._infix(node["terminalNodeText"][0], node["children"])

    def _union_expression(self, node: dict) -> _Run:
        return self._infix("|", node["children"])

    def _function_invocation(self, node: dict) -> _Run:
        """name(args) as fhirpathpy's doInvoke calls it, with its table entry looked up once."""
        functn = node["children"][0]
        if functn.get("type") != "Functn":
            raise _Uncompiled
        parts = functn["children"]
        if parts[0].get("type") != "Identifier" or any(p.get("type") != "ParamList" for p in parts[1:]):
            raise _Uncompiled
        name = _identifier_text(parts[0])
        raw_params = parts[1]["children"] if len(parts) > 1 and "children" in parts[1] else None
        invocation = _KNOWN_FUNCTIONS.get(name)
        if invocation is None:
            raise _Uncompiled
        fn = invocation["fn"]
        nullable_input = "nullable_input" in invocation

        if "variadic" in invocation:
            params = [self.param(invocation["variadic"], p) for p in (raw_params or [])]

            def variadic(ctx: dict, data: Any) -> list:
                if nullable_input and _is_nullable(data):
                    return []
                this = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
                values = [param(ctx, this) for param in params]
                return _arraify(fn(ctx, _arraify(data), *values))

            return variadic

        if "arity" not in invocation:
            if raw_params:
                raise _Uncompiled  # fhirpathpy raises "expects no params"

            def no_arguments(ctx: dict, data: Any) -> list:
                if nullable_input and _is_nullable(data):
                    return []
                return _arraify(fn(ctx, _arraify(data)))

            return no_arguments

        if getattr(fn, "__name__", None) == "trace_fn" and raw_params is not None:
            raw_params = raw_params[:1]
        count = len(raw_params) if isinstance(raw_params, list) else 0
        if count not in invocation["arity"]:
            raise _Uncompiled  # fhirpathpy raises "wrong arity"
        arg_types = invocation["arity"][count]
        params = [self.param(arg_types[i], raw_params[i]) for i in range(count)]
        nullable = "nullable" in invocation

        if count == 0 and not nullable:

            def call0(ctx: dict, data: Any) -> list:
                if nullable_input and _is_nullable(data):
                    return []
                res = fn(ctx, data)
                return res if isinstance(res, list) else _arraify(res)

            return call0
        if count == 1 and not nullable:
            (param,) = params

            def call1(ctx: dict, data: Any) -> list:
                if nullable_input and _is_nullable(data):
                    return []
                res = fn(ctx, data, param(ctx, ctx["$this"] if "$this" in ctx else ctx["dataRoot"]))
                return res if isinstance(res, list) else _arraify(res)

            return call1

        def call(ctx: dict, data: Any) -> list:
            if nullable_input and _is_nullable(data):
                return []
            this = ctx["$this"] if "$this" in ctx else ctx["dataRoot"]
            values = [param(ctx, this) for param in params]
            if nullable and (_is_nullable(data) or any(_is_nullable(v) for v in values)):
                return []
            return _arraify(fn(ctx, data, *values))

        return call

    def _member_invocation(self, node: dict) -> _Run:
        """A child element: fhirpathpy's member_invocation with the model lookups done once per input type."""
        identifier = node["children"][0]
        if identifier.get("type") != "Identifier":
            raise _Uncompiled
        key = _identifier_text(identifier).replace("`", "")
        capitalized = fp_util.is_capitalized(key)
        model = self.model
        has_path_map = isinstance(model, dict) and "path2Type" in model
        under_key = "_" + key
        by_path: dict[Any, tuple] = {}

        def mapped(child_path: str) -> str:
            return model["path2Type"].get(child_path, child_path) if has_path_map else child_path

        def path_info(path: Any) -> tuple:
            """For inputs of one path: choice fields, child paths and the default full path."""
            raw_child = f"{path}.{key}" if path else f"_.{key}"
            child = raw_child
            choices = None
            if isinstance(model, dict):
                child = model["pathsDefinedElsewhere"].get(child, child)
                actual_types = model["choiceTypePaths"].get(child)
                if actual_types:
                    choices = tuple(
                        (f"{key}{t}", f"_{key}{t}", mapped(child + t)) for t in actual_types
                    )
            element_path = mapped("Extension" if key == "extension" else child)
            info = (choices, element_path, mapped(child), raw_child.replace("_", ""))
            if len(by_path) < _CHOICE_CACHE_LIMIT:
                by_path[path] = info
            return info

        def add(acc: list, value: Any, child_path: str, full_path: str) -> None:
            """Append the node(s) for a value found under the key (fhirpathpy's create_node)."""
            if isinstance(value, list):
                for i, item in enumerate(value):
                    acc.append(
                        item
                        if isinstance(item, ResourceNode)
                        else ResourceNode(item, child_path, None, f"{full_path}[{i}]", i)
                    )
            elif isinstance(value, ResourceNode):
                acc.append(value)
            else:
                acc.append(ResourceNode(value, child_path, None, full_path, None))

        def member(ctx: dict, data: Any) -> list:
            if not isinstance(data, list):
                return []
            if capitalized:
                try:
                    return [ResourceNode.create_node(x, key) for x in data if x["resourceType"] == key]
                except TypeError:
                    pass
            acc: list = []
            for res in data:
                if not isinstance(res, ResourceNode):
                    res = ResourceNode(res, None)
                path = res.path
                choices, element_path, child_path, default_full = by_path.get(path) or path_info(path)
                value = res.data
                to_add = to_add_ = None
                if type(value) is dict or isinstance(value, Mapping):
                    if choices:
                        for field, field_, choice_path in choices:
                            to_add = value.get(field)
                            to_add_ = value.get(field_)
                            if to_add is not None or to_add_ is not None:
                                child_path = choice_path
                                break
                    else:
                        to_add = value.get(key)
                        to_add_ = value.get(under_key)
                        child_path = element_path
                else:  # FP_Quantity is not a Mapping
                    if isinstance(value, FP_Quantity):
                        to_add = value.value
                    if key == "length":
                        to_add = len(value)
                if to_add is None and to_add_ is None:
                    continue
                prop_name = res.propName
                full_path = f"{prop_name}.{key}".replace("_", "") if prop_name else default_full
                if _is_some(to_add):
                    add(acc, to_add, child_path, full_path)
                if _is_some(to_add_):
                    add(acc, to_add_, child_path, full_path)
            return acc

        return member

    _BUILDERS: dict[str, Callable[[_Compiler, dict], _Run]] = {
        "TermExpression": _pass_through,
        "InvocationTerm": _pass_through,
        "ParenthesizedTerm": _pass_through,
        "LiteralTerm": _literal_term,
        "NumberLiteral": _constant,
        "StringLiteral": _constant,
        "BooleanLiteral": _constant,
        "NullLiteral": _null_literal,
        "QuantityLiteral": _quantity_literal,
        "DateTimeLiteral": _date_time_literal,
        "TimeLiteral": _time_literal,
        "ThisInvocation": _this,
        "IndexInvocation": _index,
        "TotalInvocation": _total,
        "ExternalConstantTerm": _external_constant,
        "InvocationExpression": _invocation_expression,
        "PolarityExpression": _polarity,
        "IndexerExpression": _indexer,
        "MemberInvocation": _member_invocation,
        "FunctionInvocation": _function_invocation,
        "UnionExpression": _union_expression,
        "InequalityExpression": _op_expression,
        "AdditiveExpression": _op_expression,
        "MultiplicativeExpression": _op_expression,
        "EqualityExpression": _op_expression,
        "OrExpression": _op_expression,
        "XorExpression": _op_expression,
        "AndExpression": _op_expression,
        "ImpliesExpression": _op_expression,
        "MembershipExpression": _aliased_operator({"contains": "containsOp", "in": "inOp"}),
        "TypeExpression": _aliased_operator({"is": "isOp", "as": "asOp"}),
    }


# operator -> (fhirpathpy function it must still be, left value deciding alone, result then)
_SHORT_CIRCUIT = {
    "and": (fp_logic.and_op, False, False),
    "or": (fp_logic.or_op, True, True),
    "implies": (fp_logic.implies_op, False, True),
}


# ---------------------------------------------------------------- evaluation


def _is_extension_only(item: Any) -> bool:
    """True for the node fhirpathpy adds for a primitive's `_element` (extensions only)."""
    if not isinstance(item, ResourceNode):
        return False
    data = item.data
    return isinstance(data, dict) and len(data) == 1 and "extension" in data


_ABSENT = object()
_DEFAULT_VARIABLES = ("context", "ucum")


class _Variables(Mapping):
    """The %variables of one evaluation, read from the caller's mapping only when reached.

    ``env`` is consulted with ``name in env`` and then ``env[name]`` when the expression
    evaluates ``%name`` (every time it does), so a mapping computing its values on demand
    computes only the variables actually read.  ``%context`` (the focus) and ``%ucum``
    are supplied unless ``env`` has them.  A list of one item is copied on each read, because
    unary minus negates the one item of its operand in place (nothing else changes an input);
    longer lists are handed over as they are, so that a list searched again and again (``%list``
    in a where(), see _searched_again) is recognised.
    """

    __slots__ = ("_env", "_focus")

    def __init__(self, env: Mapping[str, Any], focus: Any) -> None:
        self._env = env
        self._focus = focus

    def _get(self, name: str) -> Any:
        env = self._env
        if name in env:
            value = env[name]
        elif name == "context":
            value = self._focus
        elif name == "ucum":
            value = UCUM
        else:
            return _ABSENT
        return list(value) if isinstance(value, list) and len(value) == 1 else value

    def value(self, name: str) -> Any:
        """The value of %name; ValueError naming it when it is not defined."""
        value = self._get(name)
        if value is _ABSENT:
            raise ValueError(f"Attempting to access an undefined environment variable: {name}")
        return value

    def __getitem__(self, name: str) -> Any:
        value = self._get(name)
        if value is _ABSENT:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._env or name in _DEFAULT_VARIABLES

    def __iter__(self):
        yield from self._env
        yield from (name for name in _DEFAULT_VARIABLES if name not in self._env)

    def __len__(self) -> int:
        return len(self._env) + sum(1 for name in _DEFAULT_VARIABLES if name not in self._env)


class _CompiledFhirPathPy:
    """A parsed expression turned into closures over fhirpathpy's functions (see _Compiler)."""

    __slots__ = ("source", "variables", "_run", "_model")

    def __init__(self, source: str, variables: frozenset[str], run: _Run, model: dict) -> None:
        self.source = source
        self.variables = variables
        self._run = run
        self._model = model

    def __repr__(self) -> str:
        return f"CompiledExpression({self.source!r})"

    def __call__(self, env: Mapping[str, Any], ctx: EvaluationContext, focus: Any = None) -> list:
        """Evaluate with ``focus`` as input collection and ``env`` as %variables; return the raw results.

        ``env`` is only read for the variables the evaluation reaches (see _Variables).
        """
        if focus is None:
            data_root: list = []
        elif isinstance(focus, list):
            data_root = focus
        else:
            data_root = [focus]
        state = {
            "dataRoot": data_root,
            "vars": _Variables(env, focus),
            "model": self._model,
            "userInvocationTable": _FUNCTIONS,
        }
        TypeInfo.model = self._model  # global in fhirpathpy; ofType() needs it (is/as set it too)
        token = _CURRENT.set(ctx)
        try:
            result = self._run(state, data_root)
        except (FhirPathEvaluationError, EvaluationTimeout):
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


def _parse_checked(expression: str) -> tuple[dict, frozenset[str]]:
    """The parse tree of an expression and its %variable names, after every compile-time check.

    Shared by the evaluators, so that they accept exactly the same expressions: a syntax error, an
    empty expression, an unknown function, a wrong number of arguments or an invalid date/time
    literal is a FhirPathSyntaxError.  The tree's root node has the expression as only child.
    """
    root = _parse(expression)
    if not root.get("children"):
        raise FhirPathSyntaxError(f"empty expression {expression!r}")
    return root, _inspect(root, expression)


class FhirPathPyEvaluator:
    """The Evaluator implemented with fhirpathpy and its R4 model."""

    def __init__(self, model: dict | None = None) -> None:
        self._model = models["r4"] if model is None else model

    def compile(self, expression: str) -> CompiledExpression:
        """Parse once, reject syntax errors and unknown functions, and return the evaluable object."""
        root, variables = _parse_checked(expression)
        run = _Compiler(self._model).run(root["children"][0])
        return _CompiledFhirPathPy(expression, variables, run, self._model)

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

#: Environment variable choosing the FHIRPath engine of default_evaluator() (see the module docstring).
ENGINE_VARIABLE = "BACK_SPASM_CDS_FHIRPATH"
_ENGINES = ("fhirpathpy", "native")


def default_evaluator() -> Evaluator:
    """The project's FHIRPath engine, as chosen by the BACK_SPASM_CDS_FHIRPATH environment variable.

    Unset, empty or ``native``: protocol.engine.fhirpath_native.NativeEvaluator (falling back to fhirpathpy).
    ``fhirpathpy``: fhirpathpy with the R4 model and the corrections above.  Any other value is a ValueError.
    The variable is read at every call, so it applies to engines created after it is set.
    """
    choice = os.environ.get(ENGINE_VARIABLE, "").strip().lower() or "native"
    if choice == "fhirpathpy":
        return _DEFAULT
    if choice == "native":
        from protocol.engine.fhirpath_native import native_evaluator

        return native_evaluator()
    raise ValueError(f"{ENGINE_VARIABLE}={choice!r}: expected one of {', '.join(_ENGINES)}")
