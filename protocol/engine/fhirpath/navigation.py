"""Member navigation: the children of elements under a name, typed from the R4 model, with the fast paths of where() bodies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol.engine.fhirpath.operators import _op_equal_text
from protocol.engine.fhirpath.runtime import _Run, _State
from protocol.engine.fhirpath.values import _NOT_PLAIN_TEXT_PATHS, Node, Quantity


def _resource_type_of(data: Any) -> Any:
    """The resourceType of a resource dict, or None (an untyped value)."""
    if isinstance(data, Mapping) and "resourceType" in data:
        return data["resourceType"]
    return None


def _add_children(acc: list, value: Any, path: str) -> None:
    """Append the node(s) of a member's value: one per list item, a resource typed by its resourceType."""
    if type(value) is list:
        for item in value:
            if type(item) is dict and "resourceType" in item:
                acc.append(Node(item, item["resourceType"]))
            else:
                acc.append(Node(item, path))
    elif type(value) is dict and "resourceType" in value:
        acc.append(Node(value, value["resourceType"]))
    else:
        acc.append(Node(value, path))


_MEMBER_CACHE_LIMIT = 512


class _Member:
    """One member name (``code``, ``onset`` ...): the children of an element of a given type, and their type.

    The type of the children depends only on the type of the element (``path``) and the name, so it
    is looked up in the model once per element type: the field names of a choice element
    (``onsetDateTime``, ``onsetPeriod`` ...) with their types, or the member's own type.  A
    primitive's ``_name`` element (its extensions) is a child too, with the primitive's type, as
    FHIRPath has it.
    """

    __slots__ = ("key", "under_key", "path2type", "elsewhere", "choice_paths", "by_path")

    def __init__(self, model: dict, key: str) -> None:
        self.key = key
        self.under_key = "_" + key
        self.path2type = model.get("path2Type") or {}
        self.elsewhere = model.get("pathsDefinedElsewhere") or {}
        self.choice_paths = model.get("choiceTypePaths") or {}
        self.by_path: dict[Any, tuple] = {}

    def plan(self, path: Any) -> tuple:
        """For elements of one type: (choice fields with their types, or None; the member's type)."""
        plan = self.by_path.get(path)
        if plan is not None:
            return plan
        key = self.key
        raw = f"{path}.{key}" if path else f"_.{key}"
        child = self.elsewhere.get(raw, raw)
        actual = self.choice_paths.get(child)
        if actual:
            choices = tuple((key + t, "_" + key + t, self.path2type.get(child + t, child + t)) for t in actual)
            plan = (choices, None)
        else:
            element = "Extension" if key == "extension" else child
            plan = (None, self.path2type.get(element, element))
        if len(self.by_path) < _MEMBER_CACHE_LIMIT:
            self.by_path[path] = plan
        return plan

    def expand(self, value: Any, path: Any, values: list, paths: list) -> None:
        """Append the children of one element (its JSON value and its type) to values/paths."""
        if type(value) is dict or isinstance(value, Mapping):
            choices, element_path = self.by_path.get(path) or self.plan(path)
            if choices is None:
                found = value.get(self.key)
                if found is not None:
                    _extend(values, paths, found, element_path)
                found = value.get(self.under_key)
                if found is not None:
                    _extend(values, paths, found, element_path)
                return
            for field, field_, choice_path in choices:
                found = value.get(field)
                found_ = value.get(field_)
                if found is not None or found_ is not None:
                    if found is not None:
                        _extend(values, paths, found, choice_path)
                    if found_ is not None:
                        _extend(values, paths, found_, choice_path)
                    return
        elif type(value) is Quantity:
            if self.key != "value":
                raise ValueError(f"member {self.key} of a quantity")
            values.append(value.value)
            paths.append(f"_.{self.key}")
        elif self.key == "length":
            if type(value) is not str:
                raise ValueError(f"length of a {type(value).__name__}")
            values.append(len(value))
            paths.append((self.by_path.get(path) or self.plan(path))[1])


def _extend(values: list, paths: list, found: Any, path: str) -> None:
    """Append a member's value(s): one per list item, a resource typed by its resourceType."""
    if type(found) is list:
        for item in found:
            values.append(item)
            paths.append(item["resourceType"] if type(item) is dict and "resourceType" in item else path)
    else:
        values.append(found)
        paths.append(found["resourceType"] if type(found) is dict and "resourceType" in found else path)


def _members(model: dict, keys: list[str]) -> _Run:
    """A path of member names (``clinicalStatus.coding.code``): the descendants reached, typed from the model.

    Each name is one step (see _one_member); the path stops as soon as nothing is left.
    """
    steps = [_one_member(_Member(model, key)) for key in keys]
    if len(steps) == 1:
        return steps[0]

    def navigate(data: list, st: _State) -> list:
        for step in steps:
            data = step(data, st)
            if not data:
                return data
        return data

    return navigate


_new = object.__new__


def _one_member(step: _Member) -> _Run:
    """A single member name; one element (the case inside where() and select()) is answered directly."""
    key, under_key, by_path = step.key, step.under_key, step.by_path

    def navigate(data: list, st: _State) -> list:
        if len(data) == 1:
            item = data[0]
            if type(item) is Node:
                value = item.data
                if type(value) is dict:
                    choices, path = by_path.get(item.path) or step.plan(item.path)
                    if choices is None:
                        found = value.get(key)
                        twin = under_key in value
                    else:
                        found = None
                        twin = False
                        for field, field_, choice_path in choices:
                            found = value.get(field)
                            twin = field_ in value
                            if found is not None or twin:
                                path = choice_path
                                break
                    if not twin:
                        if found is None:
                            return []
                        if type(found) is not list:
                            node = _new(Node)
                            node.data = found
                            node.path = found["resourceType"] if type(found) is dict and "resourceType" in found else path
                            return [node]
                        out = []
                        for child in found:
                            node = _new(Node)
                            node.data = child
                            node.path = child["resourceType"] if type(child) is dict and "resourceType" in child else path
                            out.append(node)
                        return out
        values: list = []
        paths: list = []
        for item in data:
            if type(item) is Node:
                values.append(item.data)
                paths.append(item.path)
            else:
                values.append(item)
                paths.append(_resource_type_of(item))
        return _child_nodes(step, values, paths)

    navigate.member = step  # type: ignore[attr-defined]  (read by fused operations: see _Compiler)
    return navigate


def _member_exists(navigate: _Run, negate: bool) -> _Run:
    """``path.exists()`` (``path.empty()`` when negate): one element of a known type is answered from its JSON."""
    step: _Member | None = getattr(navigate, "member", None)
    if step is None:
        return lambda data, st: [bool(navigate(data, st)) != negate]
    key, under_key, by_path = step.key, step.under_key, step.by_path

    def exists(data: list, st: _State) -> list:
        if len(data) == 1:
            item = data[0]
            if type(item) is Node and type(item.data) is dict:
                plan = by_path.get(item.path)
                if plan is not None and plan[0] is None:
                    value = item.data
                    found = value.get(key)
                    if found is None or found == []:
                        found = value.get(under_key)
                        if found is None or found == []:
                            return [negate]
                    return [not negate]
        return [bool(navigate(data, st)) != negate]

    return exists


def _member_equals_text(navigate: _Run, text: str, negate: bool) -> _Run:
    """``name = 'text'`` for one element of a known type: the JSON string compared directly."""
    step: _Member = navigate.member  # type: ignore[attr-defined]
    key, under_key, by_path = step.key, step.under_key, step.by_path
    general = _op_equal_text(navigate, text, negate)

    def equal(data: list, st: _State) -> list:
        if len(data) == 1:
            item = data[0]
            if type(item) is Node:
                value = item.data
                if type(value) is dict:
                    plan = by_path.get(item.path)
                    if plan is not None and plan[0] is None and plan[1] not in _NOT_PLAIN_TEXT_PATHS and under_key not in value:
                        found = value.get(key)
                        if type(found) is str:
                            return [(found == text) != negate]
                        if found is None:
                            return []
        return general(data, st)

    return equal


def _child_nodes(step: _Member, values: list, paths: list) -> list:
    """The children of the elements (values with their types) under one member name, as Nodes."""
    key, under_key, by_path = step.key, step.under_key, step.by_path
    out: list = []
    for value, path in zip(values, paths):
        if type(value) is not dict:
            if isinstance(value, Mapping) or type(value) is Quantity or key == "length":
                found_values: list = []
                found_paths: list = []
                step.expand(value, path, found_values, found_paths)
                out.extend(map(Node, found_values, found_paths))
            continue
        choices, element_path = by_path.get(path) or step.plan(path)
        if choices is None:
            found = value.get(key)
            if found is not None:
                if type(found) is list:
                    for item in found:
                        node = _new(Node)
                        node.data = item
                        node.path = item["resourceType"] if type(item) is dict and "resourceType" in item else element_path
                        out.append(node)
                else:
                    node = _new(Node)
                    node.data = found
                    node.path = found["resourceType"] if type(found) is dict and "resourceType" in found else element_path
                    out.append(node)
            found = value.get(under_key)
            if found is not None:
                _append_nodes(out, found, element_path)
            continue
        for field, field_, choice_path in choices:
            found = value.get(field)
            found_ = value.get(field_)
            if found is not None or found_ is not None:
                if found is not None:
                    _append_nodes(out, found, choice_path)
                if found_ is not None:
                    _append_nodes(out, found_, choice_path)
                break
    return out


def _append_nodes(out: list, found: Any, path: str) -> None:
    """Append the node(s) of a member's value: one per list item, a resource typed by its resourceType."""
    if type(found) is list:
        for item in found:
            out.append(Node(item, item["resourceType"] if type(item) is dict and "resourceType" in item else path))
    else:
        out.append(Node(found, found["resourceType"] if type(found) is dict and "resourceType" in found else path))


def _type_filter(model: dict, key: str) -> _Run:
    """A capitalized name (``Patient.name``): the input's resources of that type, when every item is a
    resource or a resource-like dict; otherwise the member of that name."""
    navigate = _members(model, [key])

    def type_filter_or_navigate(data: list, st: _State) -> list:
        out = []
        for item in data:
            if type(item) is Node:
                value = item.data
                if not isinstance(value, Mapping):
                    return navigate(data, st)
                if value.get("resourceType") == key:
                    out.append(item)
            elif isinstance(item, Mapping):
                if item["resourceType"] == key:
                    out.append(Node(item, key))
            else:
                return navigate(data, st)
        return out

    return type_filter_or_navigate


def _is_capitalized(key: str) -> bool:
    return key[0] == key[0].upper()

