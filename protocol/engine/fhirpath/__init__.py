"""FHIRPath for the engine: one evaluator, compiling each expression once to closures over plain JSON values.

The engine compiles every expression of the content once (``Evaluator.compile``) and evaluates the compiled
objects per request with a mapping of ``%variables`` and an :class:`EvaluationContext` (clock, time zone,
terminology membership, reference resolution).  Results are returned *raw* (the JSON values of the data, and
:class:`Node`, :class:`DateTime`, :class:`Time`, :class:`Quantity` where FHIR needs more than the JSON value)
so they can be fed into later expressions as variables without losing their FHIR type; ``Evaluator.to_json``
turns one raw item into plain JSON.

An expression is checked when it is compiled: a syntax error, a function the engine does not have (named in
the message), a wrong number of arguments or an invalid date/time literal is a FhirPathSyntaxError, which
``validate`` reports.  There is no other evaluator behind this one: what it does not support is refused
there, never handed over.

The package, by concern:

- ``parser``: fhirpathpy's ANTLR grammar and parse tree, the compile-time checks and the literals;
- ``context``: the errors, the EvaluationContext, the Evaluator and CompiledExpression interfaces, time zones;
- ``datetimes``: the date/time and time-of-day model, calendar arithmetic, lowBoundary()/highBoundary(),
  duration()/difference() and the evaluation's time zone;
- ``values``: the value classes, quantities and their units, JSON form and FHIR type names;
- ``types``: the FHIR R4 type model (fhirpathpy.models['r4']) for is/as/ofType()/type();
- ``navigation``: member navigation typed from the model;
- ``runtime``: an evaluation's state and the reading of operands and arguments;
- ``operators``: the operators; ``membership``: the keyed search of in/contains/intersect()/distinct() ...;
- ``functions``: the function library, one module per chapter of the specification;
- ``compiler``: the compiler and the evaluator (:class:`FhirPathEvaluator`).

Time zone: an evaluation has a local time zone (``EvaluationContext.timezone``, the service's ``timezone``
setting through the engine; by default the clock's own).  today() and timeOfDay() are the clock's local date
and time there (now() is the clock as given), and a date or dateTime written without an offset is local time
there, in comparisons and in lowBoundary(), highBoundary(), duration() and difference() (FHIRPath 3.0 STU;
the engine conventions for values without an offset and daylight saving changes are documented in
``datetimes._boundary_text`` and ``datetimes._interval``).

Where the engine departs from fhirpathpy (its oracle in the tests), following FHIRPath:

- ``where()``, ``exists(criteria)``, ``all()`` and ``iif()`` use singleton evaluation of their criterion;
- ``=`` and ``!=`` compare collections item by item; JSON decimals compare by their written value;
- ``toString()`` of a boolean is ``'true'``/``'false'``, of a complex element or resource empty;
- a capitalized name after a resource reached by navigation (``entry.resource.Patient``) filters by type;
- ``$this`` outside any iterating function is the input of the expression; it is restored after
  ``where()``/``select()``/... , as are ``$index`` and ``$total``.
"""

from __future__ import annotations

from protocol.engine.fhirpath.compiler import FhirPathEvaluator
from protocol.engine.fhirpath.context import (
    CompiledExpression,
    EvaluationContext,
    EvaluationTimeout,
    Evaluator,
    FhirPathEvaluationError,
    FhirPathSyntaxError,
    time_zone,
)
from protocol.engine.fhirpath.values import UCUM, DateTime, Node, Quantity, Time

__all__ = [
    "UCUM",
    "CompiledExpression",
    "DateTime",
    "EvaluationContext",
    "EvaluationTimeout",
    "Evaluator",
    "FhirPathEvaluationError",
    "FhirPathEvaluator",
    "FhirPathSyntaxError",
    "Node",
    "Quantity",
    "Time",
    "default_evaluator",
    "time_zone",
]

_DEFAULT: FhirPathEvaluator | None = None


def default_evaluator() -> FhirPathEvaluator:
    """The shared FHIRPath evaluator (R4 model), created on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = FhirPathEvaluator()
    return _DEFAULT
