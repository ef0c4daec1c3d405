"""Setting the element a dynamicValue path names, on a resource or a RequestGroup action.

Paths follow the simple FHIRPath subset the specification allows for dynamicValue.path: identifiers,
constant indexers and dots (``dosageInstruction[0].timing.repeat.boundsDuration``). Each path is planned
once, when the content is loaded, against the R4B models of fhir.resources (element names, list or single,
choice types); setting a value at request time is then plain dict work.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

SEGMENT = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(?:\[(\d+)\])?$")


class PathError(ValueError):
    """A dynamicValue path that does not name an element of its target type."""


@dataclass(frozen=True)
class Step:
    """One element on the way: its JSON key (or the keys of a choice element), whether it repeats, an index."""

    name: str
    index: int | None
    is_list: bool
    choices: tuple[tuple[str, str], ...]  # (JSON key, type) for a choice element like medication[x]
    model: str | None  # model of the element's type, to plan the next step


@dataclass(frozen=True)
class PathPlan:
    """Where a value goes: the steps from the root type to the element."""

    root: str
    path: str
    steps: tuple[Step, ...]

    def set(self, target: dict[str, Any], values: list[Any], types: list[str | None]) -> None:
        """Put the values at the path, creating what is missing; a list element takes all values, a single one the first."""
        node = target
        for step in self.steps[:-1]:
            node = _child(node, step)
        last = self.steps[-1]
        key = _choice_key(last, types[0] if types else None) if last.choices else last.name
        for other, _ in last.choices:
            if other != key:
                node.pop(other, None)
        if last.is_list and last.index is None:
            node[key] = list(values)
            return
        if last.is_list:
            items = node.setdefault(key, [])
            while len(items) <= last.index:
                items.append(None)
            items[last.index] = values[0]
            return
        node[key] = values[0]


def _child(node: dict[str, Any], step: Step) -> dict[str, Any]:
    key = step.name if not step.choices else next((k for k, _ in step.choices if k in node), step.choices[0][0])
    if step.is_list:
        items = node.setdefault(key, [])
        index = step.index or 0
        while len(items) <= index:
            items.append({})
        if not isinstance(items[index], dict):
            items[index] = {}
        return items[index]
    child = node.get(key)
    if not isinstance(child, dict):
        child = node[key] = {}
    return child


def _choice_key(step: Step, type_name: str | None) -> str:
    for key, choice_type in step.choices:
        if type_name is not None and choice_type.lower() == type_name.lower():
            return key
    allowed = ", ".join(t for _, t in step.choices)
    raise PathError(f"a value of type {type_name or 'unknown'} cannot go in {step.name}[x] (allowed: {allowed})")


@lru_cache(maxsize=None)
def _model(name: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(name)


def _type_of(annotation: Any) -> tuple[str | None, bool]:
    """(model or primitive type name, repeats) from a field annotation of fhir.resources."""
    is_list = False
    stack = [annotation]
    while stack:
        current = stack.pop()
        origin = typing.get_origin(current)
        if origin in (list, typing.List):
            is_list = True
        args = typing.get_args(current)
        if args:
            stack.extend(a for a in args if a is not type(None))
            continue
        name = getattr(current, "__name__", "")
        if name.endswith("Type"):
            return name[: -len("Type")], is_list
        if name in ("str", "bool", "int", "float", "Decimal"):
            return None, is_list
    return None, is_list


@lru_cache(maxsize=None)
def element_info(model_name: str, element: str) -> tuple[str | None, bool] | None:
    """(type of the element's value, whether it repeats) for an element of a resource or datatype; None if unknown."""
    try:
        fields = _model(model_name).model_fields
    except (KeyError, ValueError, AttributeError):
        return None
    field = fields.get(element)
    return _type_of(field.annotation) if field is not None else None


def plan_path(root: str, path: str) -> PathPlan:
    """Plan a dynamicValue path on a resource type (or a backbone model such as ``RequestGroupAction``)."""
    steps: list[Step] = []
    model_name: str | None = root
    for segment in path.lstrip("%").split("."):
        match = SEGMENT.match(segment)
        if match is None or model_name is None:
            raise PathError(f"'{path}' is not a simple path into {root}")
        name, index = match.group(1), match.group(2)
        fields = _model(model_name).model_fields
        if name in fields:
            type_name, is_list = _type_of(fields[name].annotation)
            steps.append(Step(name, int(index) if index else None, is_list, (), type_name))
            model_name = type_name
            continue
        choices = tuple((key, key[len(name):]) for key, field in fields.items()
                        if (field.json_schema_extra or {}).get("one_of_many") == name)
        if not choices:
            raise PathError(f"'{name}' is not an element of {model_name}")
        steps.append(Step(name, int(index) if index else None, False, choices, None))
        model_name = None
    return PathPlan(root, path, tuple(steps))
