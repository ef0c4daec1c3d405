"""Subsetting (FHIRPath 5.3): single(), first(), last(), tail(), skip(), take(), intersect(), exclude()."""

from __future__ import annotations

from typing import Any

from protocol.engine.fhirpath.functions.base import (
    Entry,
    _fn_simple,
    _fn_with_collection,
    _fn_with_integer,
    arities,
)
from protocol.engine.fhirpath.membership import _PAIRWISE_LIMIT, _contains_item, _index


def _single(data: list) -> list:
    if len(data) > 1:
        raise ValueError("Expected single")
    return data


def _first(data: list) -> list:
    return data[:1]


def _last(data: list) -> list:
    return data[-1:]


def _take(data: list, count: Any) -> list:
    if not data:
        return []
    if count is None:
        raise ValueError("take() needs a number")
    return data[: int(count)]


def _skip(data: list, count: Any) -> list:
    if not data:
        return []
    if count is None:
        raise ValueError("skip() needs a number")
    return data[int(count):]


def _intersect(a: list, b: list) -> list:
    """The items of a found in b, the first of each value (both searched by key when large)."""
    out: list = []
    if len(a) * len(b) <= _PAIRWISE_LIMIT:
        for item in a:
            if _contains_item(b, item) and not _contains_item(out, item):
                out.append(item)
        return out
    found, kept = _index(b), _index(())
    for item in a:
        if found.holds(item) and not kept.holds(item):
            kept.add(item)
            out.append(item)
    return out


def _exclude(a: list, b: list) -> list:
    """The items of a not found in b."""
    if len(a) * len(b) <= _PAIRWISE_LIMIT:
        return [x for x in a if not _contains_item(b, x)]
    found = _index(b)
    return [x for x in a if not found.holds(x)]


FUNCTIONS: dict[str, Entry] = {
    "single": (_fn_simple(_single), arities(0)),
    "first": (_fn_simple(_first), arities(0)),
    "last": (_fn_simple(_last), arities(0)),
    "tail": (_fn_simple(lambda data: data[1:]), arities(0)),
    "skip": (_fn_with_integer(_skip), arities(1)),
    "take": (_fn_with_integer(_take), arities(1)),
    "intersect": (_fn_with_collection(_intersect), arities(1)),
    "exclude": (_fn_with_collection(_exclude), arities(1)),
}
