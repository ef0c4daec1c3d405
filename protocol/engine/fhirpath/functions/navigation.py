"""Tree navigation (FHIRPath 5.8): children(), descendants()."""

from __future__ import annotations

from collections.abc import Mapping

from protocol.engine.fhirpath.context import breadth_first
from protocol.engine.fhirpath.functions.base import Entry, arities
from protocol.engine.fhirpath.navigation import _Member
from protocol.engine.fhirpath.runtime import Compiling, _Run, _State
from protocol.engine.fhirpath.values import Node


class _Children:
    """The children of elements: every member, typed as member navigation types it (a choice field by its type)."""

    def __init__(self, model: dict) -> None:
        self.model = model
        self.choice_paths = model.get("choiceTypePaths") or {}
        self.elsewhere = model.get("pathsDefinedElsewhere") or {}
        self.members: dict[str, _Member] = {}

    def _member(self, name: str) -> _Member:
        member = self.members.get(name)
        if member is None:
            member = self.members[name] = _Member(self.model, name)
        return member

    def _name(self, path: str | None, key: str) -> str:
        """The member name a JSON key is the field of: the choice element for ``valueQuantity``, else the key."""
        for i in range(1, len(key)):
            if key[i].isupper():
                base = key[:i]
                raw = f"{path}.{base}" if path else f"_.{base}"
                if key[i:] in (self.choice_paths.get(self.elsewhere.get(raw, raw)) or ()):
                    return base
        return key

    def of(self, item: object) -> list:
        """The children of one item (none for a primitive value)."""
        if type(item) is Node:
            data, path = item.data, item.path
        else:
            data, path = item, None
        if not isinstance(data, Mapping):
            return []
        names: list[str] = []
        for key in data:
            if key == "resourceType":
                continue
            name = self._name(path, key[1:] if key.startswith("_") else key)
            if name not in names:
                names.append(name)
        values: list = []
        paths: list = []
        for name in names:
            self._member(name).expand(data, path, values, paths)
        return [Node(value, found) for value, found in zip(values, paths)]


def _fn_children(compiler: Compiling, params: list) -> _Run:
    children = _Children(compiler.model)

    def children_(data: list, st: _State) -> list:
        out: list = []
        for item in data:
            out.extend(children.of(item))
        return out

    return children_


def _fn_descendants(compiler: Compiling, params: list) -> _Run:
    """descendants(): the children, their children, and so on (repeat(children()))."""
    children = _Children(compiler.model)

    def descendants(data: list, st: _State) -> list:
        return list(breadth_first([child for item in data for child in children.of(item)], children.of, st.ctx.expired))

    return descendants


FUNCTIONS: dict[str, Entry] = {
    "children": (_fn_children, arities(0)),
    "descendants": (_fn_descendants, arities(0)),
}
