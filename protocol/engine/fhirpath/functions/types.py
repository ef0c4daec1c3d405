"""Types as functions (FHIRPath 6.3 and reflection): is(), as(), type()."""

from __future__ import annotations

from protocol.engine.fhirpath.functions.base import Entry, arities
from protocol.engine.fhirpath.operators import _op_as, _op_is
from protocol.engine.fhirpath.runtime import Compiling, _Run, _State
from protocol.engine.fhirpath.types import _type_specifier, _Types


def _fn_is(compiler: Compiling, params: list) -> _Run:
    namespace, name = _type_specifier(params[0]["text"])
    return _op_is(lambda data, st: data, namespace, name, compiler.types)


def _fn_as(compiler: Compiling, params: list) -> _Run:
    namespace, name = _type_specifier(params[0]["text"])
    return _op_as(lambda data, st: data, namespace, name, compiler.types)


def _fn_type(compiler: Compiling, params: list) -> _Run:
    def type_(data: list, st: _State) -> list:
        out = []
        for item in data:
            info = _Types.info(item)
            if info is None:
                raise ValueError("value without a type")
            out.append({"name": info[1], "namespace": info[0]})
        return out

    return type_


FUNCTIONS: dict[str, Entry] = {
    "is": (_fn_is, arities(1)),
    "as": (_fn_as, arities(1)),
    "type": (_fn_type, arities(0)),
}
