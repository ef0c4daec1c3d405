"""Membership by key: whether a collection holds a value, answered from a hash table (in, contains, intersect() ...)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from protocol.engine.fhirpath.runtime import _State
from protocol.engine.fhirpath.values import DateTime, Node, Quantity, Time

# ---------------------------------------------------------------- membership by key
#
# `in`, `contains`, intersect(), exclude(), subsetOf() and supersetOf() ask whether a collection holds an item
# equal to a value.  Asked item by item, a collection of n items tested against another of n costs n * n
# comparisons (9 million for two lists of 3,000 resources).  _Membership answers from a hash table instead,
# with exactly the answer of the item-by-item search: a key function gives two items its equality finds equal
# the same key, and the equality itself still decides between the items of a
# key.  Items without a key (date/times, quantities, anything whose equality is not Python's equality of
# JSON values) are compared with the value one by one, in the collection's order, as before.

#: Collections shorter than this are searched item by item (a search of a list not seen before is too).
_INDEXED_FROM = 32
#: intersect() and friends compare item by item while len(input) * len(argument) is at most this.
_PAIRWISE_LIMIT = 256
#: Lists an evaluation remembers for `in` and `contains` (see _searched_again).
_SEARCHED_LISTS = 16


class _NoKey(Exception):
    """A value with no key (see _frozen)."""


def _frozen(value: Any) -> Any:
    """A hashable image of a JSON value, equal for two values exactly when Python finds them equal."""
    t = type(value)
    if t is dict:
        return ("{", frozenset([(name, _frozen(item)) for name, item in value.items()]))
    if t is list:
        return ("[", tuple([_frozen(item) for item in value]))
    if t is str or t is int or t is bool or value is None:
        return value
    if (t is float and value == value) or (t is Decimal and not value.is_nan()):
        return value
    raise _NoKey


def _plain_member_key(value: Any) -> Any:
    """The key of a JSON value for _Membership, or None when it has none (then it is compared one by one).

    Strings and numbers are their own key (1, 1.0 and Decimal('1') are equal in Python and hash alike,
    NaN has no key); a resource is keyed by type and id (equal resources have equal types and ids, and the
    equality decides between versions of one resource); other objects and arrays by their frozen image.
    """
    t = type(value)
    if t is str or t is int or t is bool:
        return value
    if t is dict:
        rtype, rid = value.get("resourceType"), value.get("id")
        if type(rtype) is str and type(rid) is str:
            return ("resource", rtype, rid)
    elif t is float:
        return value if value == value else None
    elif t is Decimal:
        return None if value.is_nan() else value
    elif t is not list:
        return None
    try:
        return _frozen(value)
    except (_NoKey, RecursionError):
        return None


class _Membership:
    """A collection searched by key: ``holds(value)`` is ``any(equal(item, value) for item in items)``.

    ``key(item)`` must give the same key to any two items ``equal`` finds equal, or None (no key).  A value
    with a key is compared with the items of its key and with the items without one that come before the
    first of those that matches, in the collection's order; a value without a key with every item.  So the
    answer, and an exception a comparison raises, are those of the search item by item.
    """

    __slots__ = ("_key", "_equal", "_items", "_buckets", "_loose")

    def __init__(self, key: Callable[[Any], Any], equal: Callable[[Any, Any], Any], items: Sequence = ()) -> None:
        self._key = key
        self._equal = equal
        self._items: list = []
        self._buckets: dict[Any, list] = {}
        self._loose: list[tuple[int, Any]] = []
        for item in items:
            self.add(item)

    def add(self, item: Any) -> None:
        """Append an item to the collection."""
        entry = (len(self._items), item)
        self._items.append(item)
        key = self._key(item)
        if key is None:
            self._loose.append(entry)
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [entry]
        else:
            bucket.append(entry)

    def holds(self, value: Any) -> bool:
        """True if an item of the collection is equal to the value."""
        equal = self._equal
        key = self._key(value)
        if key is None:
            return any(equal(item, value) for item in self._items)
        found = None
        for position, item in self._buckets.get(key, ()):
            if equal(item, value):
                found = position
                break
        for position, item in self._loose:
            if found is not None and position > found:
                break
            if equal(item, value):
                return True
        return found is not None


def _searched_again(cache: dict, items: list, key: Callable[[Any], Any], equal: Callable[[Any, Any], Any]) -> _Membership | None:
    """The _Membership of a list searched again in the same evaluation, else None (search it item by item).

    Building the table costs about one search item by item, so it pays when the same list is searched many
    times (``%list`` tested in a where()): it is built the second time.  ``cache`` belongs to one evaluation
    and holds the lists it remembers, so that their ids are not reused meanwhile; it remembers the
    _SEARCHED_LISTS lists searched last only, so that lists made anew for each item of a where() are not all
    kept alive.
    """
    if len(items) < _INDEXED_FROM:
        return None
    name = (id(items), equal)
    entry = cache.pop(name, None)
    if entry is None:
        if len(cache) >= _SEARCHED_LISTS:
            del cache[next(iter(cache))]  # the list searched least recently
        cache[name] = [items, None]
        return None
    cache[name] = entry
    if entry[1] is None:
        entry[1] = _Membership(key, equal, items)
    return entry[1]


# ---------------------------------------------------------------- de-duplication


def _distinct(items: list) -> list:
    """distinct(), union(), `|`: the first of each value.

    Elements and resources (all items Nodes) are the same when their JSON is the same; a data
    object seen before is skipped without comparing, and resources with different type or id
    are not compared.  Quantities are the same when equal (``1 'g'`` and ``1000 'mg'``); other
    collections are told apart by their JSON text (see _plain_key).
    """
    if len(items) < 2:
        return list(items)
    if all(type(item) is Node for item in items):
        seen: set[int] = set()
        kept: dict[Any, list] = {}
        out = []
        for item in items:
            data = item.data
            ident = id(data)
            if ident in seen:
                continue
            seen.add(ident)
            t = type(data)
            if t is dict:
                rtype, rid = data.get("resourceType"), data.get("id")
                if rtype is not None and rid is not None and type(rid) is str and type(rtype) is str:
                    key: Any = (rtype, rid)
                    same = kept.get(key)
                    if same is None:
                        kept[key] = [data]
                    elif any(data == other for other in same):
                        continue
                    else:
                        same.append(data)
                    out.append(item)
                    continue
                key = json.dumps(data, sort_keys=True, default=str)
            elif t is str or t is int or t is float or t is bool or data is None:
                key = (t, data)
            else:
                key = json.dumps(data, sort_keys=True, default=str)
            if key in kept:
                continue
            kept[key] = [data]
            out.append(item)
        return out
    if all(type(item) is Quantity for item in items):
        kept_quantities: list = []
        for item in items:
            if item not in kept_quantities:
                kept_quantities.append(item)
        return kept_quantities
    unique: dict[Any, Any] = {}
    for item in items:
        unique[_plain_key(item)] = item  # a repeated key keeps its place and takes the last value
    return list(unique.values())


def _plain_key(item: Any) -> Any:
    """What tells a value apart in a mixed collection: its JSON text, in effect.

    Strings are keyed by themselves (their JSON text is unique to them and starts with a quote, which
    no other key does); elements and resources are never equal to another item there.
    """
    t = type(item)
    if t is str:
        return ("s", item)
    if t is Node:
        return ("n", id(item))
    if t is int:
        return str(item)
    if t is bool:
        return "true" if item else "false"
    if t is DateTime or t is Time:
        return ("t", item.text)
    if t is Quantity or t is Decimal:
        return str(item)
    try:
        return json.dumps(item, sort_keys=True)
    except TypeError:
        return str(item)


def _contains_item(items: list, value: Any) -> bool:
    """True if an item of the collection equals the value: Python's ``in`` on a list, which tests each item in
    order for being the value or ``item == value`` (JSON values by value; a date/time, time or quantity by its
    own ``==``, see protocol.engine.fhirpath.values)."""
    return value in items


def _same(item: Any, value: Any) -> bool:
    """The equality of _contains_item: the same object, or ``item == value``."""
    return item is value or item == value


def _member_key(item: Any) -> Any:
    """The key of an item for _Membership under _same: a Node's data as a JSON value; none for a DateTime, Time
    or Quantity (compared one by one, by their own ``==``)."""
    t = type(item)
    if t is Node:
        return _plain_member_key(item.data)
    if t is DateTime or t is Time or t is Quantity:
        return None
    return _plain_member_key(item)


def _holds(items: list, value: Any, st: _State) -> bool:
    """_contains_item, by key when the same list is searched again in this evaluation."""
    if len(items) < _INDEXED_FROM:
        return _contains_item(items, value)
    members = st.members
    if members is None:
        members = st.members = {}
    index = _searched_again(members, items, _member_key, _same)
    if index is None:
        return _contains_item(items, value)
    return index.holds(value)


def _index(items: list) -> _Membership:
    """The items, searched by key under _same."""
    return _Membership(_member_key, _same, items)

