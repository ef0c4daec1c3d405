"""Filtering and projection (FHIRPath 5.2): where(), select(), repeat(), ofType()."""

from __future__ import annotations

from typing import Any

from protocol.engine.fhirpath.context import _STRIDE_MASK, _deadline_passed, breadth_first
from protocol.engine.fhirpath.functions.base import Entry, arities
from protocol.engine.fhirpath.membership import _member_key, _Membership, _same
from protocol.engine.fhirpath.runtime import Compiling, _Run, _State, _truth
from protocol.engine.fhirpath.types import _TYPE_TESTS_LIMIT, _type_specifier
from protocol.engine.fhirpath.values import Node


def _fn_where(compiler: Compiling, params: list) -> _Run:
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


def _fn_select(compiler: Compiling, params: list) -> _Run:
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


def _fn_of_type(compiler: Compiling, params: list) -> _Run:
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


def _fn_repeat(compiler: Compiling, params: list) -> _Run:
    """repeat(projection): the projection applied to the input, then to its results, until nothing new comes
    (items already found are not projected again, so a cycle ends)."""
    projection = compiler.expression(params[0])

    def repeat(data: list, st: _State) -> list:
        this, index = st.this, st.index
        found = _Membership(_member_key, _same)
        out: list = []

        def new_items(item: Any) -> list:
            st.this = one = [item]
            fresh = []
            for child in projection(one, st):
                if not found.holds(child):
                    found.add(child)
                    fresh.append(child)
            out.extend(fresh)
            return fresh

        for _ in breadth_first(data, new_items, st.ctx.expired):
            pass
        st.this, st.index = this, index
        return out

    return repeat


FUNCTIONS: dict[str, Entry] = {
    "where": (_fn_where, arities(1)),
    "select": (_fn_select, arities(1)),
    "repeat": (_fn_repeat, arities(1)),
    "ofType": (_fn_of_type, arities(1)),
}
