"""Functions FHIR adds to FHIRPath: extension(), memberOf(), resolve()."""

from __future__ import annotations

from collections.abc import Mapping

from protocol.engine.fhirpath.functions.base import Entry, arities
from protocol.engine.fhirpath.navigation import _resource_type_of
from protocol.engine.fhirpath.runtime import (
    Compiling,
    _data,
    _Run,
    _State,
    _string_argument,
)
from protocol.engine.fhirpath.values import Node


def _fn_extension(compiler: Compiling, params: list) -> _Run:
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


def _fn_member_of(compiler: Compiling, params: list) -> _Run:
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


def _fn_resolve(compiler: Compiling, params: list) -> _Run:
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


FUNCTIONS: dict[str, Entry] = {
    "extension": (_fn_extension, arities(1)),
    "memberOf": (_fn_member_of, arities(1)),
    "resolve": (_fn_resolve, arities(0)),
}
