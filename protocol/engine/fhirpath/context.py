"""The evaluation context, the errors and the interface every FHIRPath evaluation goes through."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class FhirPathSyntaxError(ValueError):
    """The expression does not parse, or calls an unknown function / wrong arity / invalid date literal."""


class FhirPathEvaluationError(RuntimeError):
    """Evaluating a compiled expression failed; wraps the engine's exception with a readable message."""


class EvaluationTimeout(Exception):
    """The caller's deadline passed during an evaluation (``EvaluationContext.expired``).

    Not an evaluation error: the evaluator lets it through unchanged (no wrapping),
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

    ``expired`` (optional) tells whether the caller's deadline has passed: the evaluator asks it every 16
    items of where(), select(), repeat(), all() and aggregate(), and raises
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
    """The exception the evaluator raises when EvaluationContext.expired answers True."""
    return EvaluationTimeout("the time allowed for the evaluation has passed")


def breadth_first(start: Iterable[Any], expand: Callable[[Any], Iterable[Any]],
                  expired: Callable[[], bool] | None) -> Iterator[Any]:
    """Each item of ``start``, then of what ``expand`` gives for each item, level by level (repeat(), descendants());
    asks ``expired`` every few items, as where() does, since a deep or wide tree can take long."""
    pending = deque(start)
    count = 0
    while pending:
        item = pending.popleft()
        count += 1
        if expired is not None and count & _STRIDE_MASK == _STRIDE_MASK and expired():
            raise _deadline_passed()
        yield item
        pending.extend(expand(item))


def time_zone(value: str | tzinfo | None) -> tzinfo:
    """The time zone a setting names: an IANA name (``Australia/Sydney``), ``UTC``, or a tzinfo as is.

    None and ``UTC`` (in any case) give ``datetime.timezone.utc``, which needs no time zone database;
    other names are read with ``zoneinfo`` (the system's database, or the ``tzdata`` package).  An
    unknown or malformed name is a ValueError that names it.
    """
    if value is None:
        return UTC
    if isinstance(value, tzinfo):
        return value
    if not isinstance(value, str):
        raise TypeError(f"a time zone is an IANA name such as Europe/Paris, got {value!r}")
    name = value.strip()
    if name.upper() == "UTC":
        return UTC
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

