"""Combining (FHIRPath 5.4): union(), combine()."""

from __future__ import annotations

from protocol.engine.fhirpath.functions.base import Entry, _fn_with_collection, arities
from protocol.engine.fhirpath.membership import _distinct

FUNCTIONS: dict[str, Entry] = {
    "union": (_fn_with_collection(lambda a, b: _distinct(a + b)), arities(1)),
    "combine": (_fn_with_collection(lambda a, b: a + b), arities(1)),
}
