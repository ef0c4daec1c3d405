"""Existence (FHIRPath 5.1): empty(), exists(), all(), allTrue() ..., subsetOf(), supersetOf(), count(), distinct(), isDistinct()."""

from __future__ import annotations

from protocol.engine.fhirpath.context import _STRIDE_MASK, _deadline_passed
from protocol.engine.fhirpath.functions.base import (
    Entry,
    _fn_simple,
    _fn_with_collection,
    arities,
)
from protocol.engine.fhirpath.functions.filtering import _fn_where
from protocol.engine.fhirpath.membership import (
    _PAIRWISE_LIMIT,
    _contains_item,
    _distinct,
    _index,
)
from protocol.engine.fhirpath.runtime import Compiling, _data, _Run, _State, _truth


def _fn_exists(compiler: Compiling, params: list) -> _Run:
    if not params:
        return lambda data, st: [len(data) > 0]
    where = _fn_where(compiler, params)
    return lambda data, st: [len(where(data, st)) > 0]


def _fn_all(compiler: Compiling, params: list) -> _Run:
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


def _subset_of(a: list, b: list) -> list:
    """Whether every item of a is found in b."""
    if len(a) * len(b) <= _PAIRWISE_LIMIT:
        return [all(_contains_item(b, x) for x in a)]
    found = _index(b)
    return [all(found.holds(x) for x in a)]


def _boolean_items(data: list) -> list[bool]:
    values = []
    for item in data:
        value = _data(item)
        if type(value) is not bool:
            raise ValueError(f"Found type {type(value).__name__} but was expecting bool")
        values.append(value)
    return values


def _is_distinct(data: list) -> list:
    return [len(data) == len(_distinct(data))]


#: Functions left to protocol.engine.fhirpath (an expression calling one is evaluated there as a whole).


FUNCTIONS: dict[str, Entry] = {
    "empty": (_fn_simple(lambda data: [not data]), arities(0)),
    "exists": (_fn_exists, arities(0, 1)),
    "all": (_fn_all, arities(1)),
    "allTrue": (_fn_simple(lambda data: [all(_boolean_items(data))]), arities(0)),
    "anyTrue": (_fn_simple(lambda data: [any(_boolean_items(data))]), arities(0)),
    "allFalse": (_fn_simple(lambda data: [not any(_boolean_items(data))]), arities(0)),
    "anyFalse": (_fn_simple(lambda data: [not all(_boolean_items(data))]), arities(0)),
    "subsetOf": (_fn_with_collection(_subset_of), arities(1)),
    "supersetOf": (_fn_with_collection(lambda a, b: _subset_of(b, a)), arities(1)),
    "count": (_fn_simple(lambda data: [len(data)]), arities(0)),
    "distinct": (_fn_simple(_distinct), arities(0)),
    "isDistinct": (_fn_simple(_is_distinct), arities(0)),
}
