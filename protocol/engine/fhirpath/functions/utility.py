"""Utility functions (FHIRPath 5.9 and 3.0 STU): trace(), now(), today(), timeOfDay(), the date/time boundaries and intervals, not(), coalesce()."""

from __future__ import annotations

import logging
from collections.abc import Callable

from protocol.engine.fhirpath.datetimes import _boundary_text, _DateTime, _interval
from protocol.engine.fhirpath.functions.base import Entry, _fn_simple, arities
from protocol.engine.fhirpath.runtime import (
    Compiling,
    _data,
    _integer_argument,
    _now_value,
    _Run,
    _State,
    _string_argument,
    _today_value,
    _typed_datetime,
    _without_extension_twin,
)
from protocol.engine.fhirpath.values import DateTime, Time, _to_json

_LOG = logging.getLogger("protocol.engine.fhirpath.trace")


def _not(data: list) -> list:
    """not(): the negation of one boolean; empty for empty; any other single value false; several values an error."""
    if len(data) > 1:
        raise ValueError(f"not() needs a single value, got {len(data)}")
    if not data:
        return []
    value = _data(data[0])
    if value is True or value is False:
        return [not value]
    return [False]


def _fn_coalesce(compiler: Compiling, params: list) -> _Run:
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


# -- context


def _fn_now(compiler: Compiling, params: list) -> _Run:
    return lambda data, st: [_now_value(st.ctx.now)]


def _fn_today(compiler: Compiling, params: list) -> _Run:
    return lambda data, st: [_today_value(st.ctx.now, st.ctx.zone)]


def _fn_time_of_day(compiler: Compiling, params: list) -> _Run:
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


def _fn_boundary(high: bool) -> Callable[[Compiling, list], _Run]:
    """lowBoundary([precision]) / highBoundary([precision]) of a Date or DateTime (datetimes._boundary_text)."""
    name = "highBoundary" if high else "lowBoundary"

    def build(compiler: Compiling, params: list) -> _Run:
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


def _fn_interval(whole: bool) -> Callable[[Compiling, list], _Run]:
    """duration(value, precision) / difference(value, precision) (datetimes._interval)."""
    name = "duration" if whole else "difference"

    def build(compiler: Compiling, params: list) -> _Run:
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


def _fn_trace(compiler: Compiling, params: list) -> _Run:
    """trace([name [, projection]]): the input unchanged; the input (or its projection) is logged at debug level under the name."""
    name = compiler.value(params[0]) if params else None
    projection = compiler.expression(params[1]) if len(params) > 1 else None

    def trace(data: list, st: _State) -> list:
        if _LOG.isEnabledFor(logging.DEBUG):
            label = _string_argument(name(st)) if name is not None else ""
            shown = data
            if projection is not None:
                this = st.this
                st.this = data
                shown = projection(data, st)
                st.this = this
            _LOG.debug("%s: %s", label, [_to_json(item) for item in shown])
        return data

    return trace


FUNCTIONS: dict[str, Entry] = {
    "trace": (_fn_trace, arities(0, 1, 2)),
    "now": (_fn_now, arities(0)),
    "today": (_fn_today, arities(0)),
    "timeOfDay": (_fn_time_of_day, arities(0)),
    "lowBoundary": (_fn_boundary(high=False), arities(0, 1)),
    "highBoundary": (_fn_boundary(high=True), arities(0, 1)),
    "duration": (_fn_interval(whole=True), arities(2)),
    "difference": (_fn_interval(whole=False), arities(2)),
    "not": (_fn_simple(_not), arities(0)),
    "coalesce": (_fn_coalesce, None),
}
