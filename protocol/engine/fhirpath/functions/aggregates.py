"""Aggregates (FHIRPath 7): aggregate(), and sum(), min(), max(), avg() of FHIRPath 3.0 (STU)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from protocol.engine.fhirpath.context import _STRIDE_MASK, _deadline_passed
from protocol.engine.fhirpath.functions.base import Entry, _fn_simple, arities
from protocol.engine.fhirpath.operators import _add, _order
from protocol.engine.fhirpath.runtime import Compiling, _number_data, _Run, _State
from protocol.engine.fhirpath.values import Quantity


def _fn_aggregate(compiler: Compiling, params: list) -> _Run:
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


def _items_of(data: list) -> list:
    """The input's values for sum()/avg(): numbers (JSON decimals as Decimal) or quantities."""
    values = []
    for item in data:
        value = _number_data(item)
        if type(value) is bool or not (type(value) in (int, Decimal) or type(value) is Quantity):
            raise ValueError(f"sum()/avg() need numbers or quantities, got {value!r}")
        values.append(value)
    return values


def _sum(data: list) -> list:
    """The sum of the input's numbers or quantities; 0 for an empty input (FHIRPath 3.0 STU)."""
    values = _items_of(data)
    if not values:
        return [0]
    total = values[0]
    for value in values[1:]:
        total = _add(total, value, 1)
        if total is None:
            return []
    return [total]


def _avg(data: list) -> list:
    """The average of the input's numbers or quantities (a Decimal); empty for an empty input."""
    if not data:
        return []
    total = _sum(data)
    if not total:
        return []
    value = total[0]
    if type(value) is Quantity:
        return [Quantity(Decimal(str(value.value)) / len(data), value.unit)]
    return [Decimal(value) / len(data)]


def _extreme(sign: int) -> Callable[[Compiling, list], _Run]:
    """min() (sign -1) or max() (sign 1): the least or greatest item, compared as the operators compare."""

    def build(compiler: Compiling, params: list) -> _Run:
        def extreme(data: list, st: _State) -> list:
            if not data:
                return []
            best = data[0]
            for item in data[1:]:
                order = _order([item], [best], st)
                if order is None:
                    return []
                if order == sign:
                    best = item
            return [best]

        return extreme

    return build


FUNCTIONS: dict[str, Entry] = {
    "aggregate": (_fn_aggregate, arities(1, 2)),
    "sum": (_fn_simple(_sum), arities(0)),
    "avg": (_fn_simple(_avg), arities(0)),
    "min": (_extreme(-1), arities(0)),
    "max": (_extreme(1), arities(0)),
}
