"""JSON data as a parser gives it (dicts, lists, scalars): a shape check for untrusted input, and cheap deep copies.

Input from outside is checked once, where it is parsed (``check_shape``): nesting deeper than ``MAX_DEPTH`` and
numbers that no FHIR element can hold are refused there, so the recursive code after it (copies, normalising
drafts, FHIRPath) always runs within a known bound.
"""

from __future__ import annotations

import copy
import math
from typing import Any

#: The deepest nesting accepted in input. FHIR resources nest a few dozen levels at most (a Bundle, a resource,
#: contained resources, nested extensions and Questionnaire items); far below Python's recursion limit.
MAX_DEPTH = 100
#: FHIR integers are 32-bit and integer64 is 64-bit; no decimal a record holds comes near this either.
MAX_MAGNITUDE = 2 ** 63 - 1
MIN_INTEGER = -(2 ** 63)


class JsonShapeError(ValueError):
    """Input whose nesting or numbers are beyond what is accepted; the message says what and where."""

_SCALARS = frozenset({str, int, float, bool, type(None)})


def copy_json(value: Any) -> Any:
    """A deep copy of JSON data: fresh dicts and lists, shared immutable scalars; anything else goes to deepcopy."""
    kind = type(value)
    if kind is dict:
        return {key: item if type(item) in _SCALARS else copy_json(item) for key, item in value.items()}
    if kind is list:
        return [item if type(item) in _SCALARS else copy_json(item) for item in value]
    if kind in _SCALARS:
        return value
    return copy.deepcopy(value)


def check_shape(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than ``max_depth`` or holding a number beyond 64 bits, NaN or an infinity.

    Walks the data once without recursion (it runs on every request body); only when something is wrong is the
    walk repeated to name the path of the problem.
    """
    if type(value) in (int, float):
        if not _acceptable_number(value):
            raise JsonShapeError("the number is not finite or beyond the 64-bit range")
        return
    if not isinstance(value, (dict, list)) or _shape_ok(value, max_depth):
        return
    problem, path = _first_problem(value, max_depth)
    raise JsonShapeError(f"{problem} at {_path_text(path)}")


def _shape_ok(value: Any, max_depth: int) -> bool:
    """One pass, a level of nesting at a time (no stack of (node, depth) pairs to build); strings, the most common
    values, cost one type check."""
    level, depth = [value], 1
    high, low = MAX_MAGNITUDE, MIN_INTEGER
    while level:
        if depth > max_depth:
            return False
        deeper: list[Any] = []
        push = deeper.append
        for node in level:
            for item in node.values() if type(node) is dict else node:
                kind = type(item)
                if kind is str:
                    continue
                if kind is dict or kind is list:
                    push(item)
                elif (kind is int or kind is float) and not low <= item <= high:
                    return False
        level = deeper
        depth += 1
    return True


def _first_problem(value: Any, max_depth: int) -> tuple[str, tuple[Any, ...]]:
    """What is wrong with data ``_shape_ok`` refused, and where (a linked path of keys)."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if depth > max_depth:
            return f"nested too deeply: more than {max_depth} levels", path
        for key, item in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(item, (dict, list)):
                stack.append((item, depth + 1, (path, key)))
            elif type(item) in (int, float) and not _acceptable_number(item):
                return "a number is not finite or beyond the 64-bit range", (path, key)
    return "not accepted", ()


def _acceptable_number(value: float) -> bool:
    return math.isfinite(value) and MIN_INTEGER <= value <= MAX_MAGNITUDE


def _path_text(path: tuple[Any, ...], limit: int = 8) -> str:
    """``$.a.b[0]`` from the linked (parent, key) pairs; deep paths keep their first and last steps only."""
    keys: list[Any] = []
    while path:
        path, key = path
        keys.append(key)
    keys.reverse()
    steps = [f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys]
    if len(steps) > limit:
        steps = steps[:limit // 2] + ["…"] + steps[-limit // 2:]
    return "$" + "".join(steps)
