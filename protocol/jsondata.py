"""Copies of JSON data (dicts, lists and scalars as a JSON parser gives them), cheaper than ``copy.deepcopy``."""

from __future__ import annotations

import copy
from typing import Any

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
