"""The function library, by chapter of the FHIRPath specification: each function's builder and the numbers of arguments it takes."""

from __future__ import annotations

from protocol.engine.fhirpath.functions import (
    aggregates,
    combining,
    conversion,
    existence,
    fhir,
    filtering,
    math,
    navigation,
    strings,
    subsetting,
    types,
    utility,
)
from protocol.engine.fhirpath.functions.base import Builder

_CHAPTERS = (existence, filtering, subsetting, combining, conversion, strings, math, navigation, utility, types,
             aggregates, fhir)

#: Function name -> its builder: (compiler, parameter nodes) -> closure.
BUILDERS: dict[str, Builder] = {}
#: Function name -> the numbers of arguments it takes (None: one or more).
ARITIES: dict[str, frozenset[int] | None] = {}

for _chapter in _CHAPTERS:
    for _name, (_builder, _arities) in _chapter.FUNCTIONS.items():
        if _name in BUILDERS:
            raise RuntimeError(f"function {_name}() is defined twice")
        BUILDERS[_name] = _builder
        ARITIES[_name] = _arities
