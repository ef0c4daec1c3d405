"""The values an evaluation works on: typed elements (Node), Date/DateTime, Time and Quantity; their JSON form and FHIR type names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from protocol.engine.fhirpath.datetimes import (
    _CALENDAR_TO_UCUM,
    _UNIT_TO_CALENDAR,
    _DateTime,
    _datetime_text,
    _number,
    _parse_datetime,
    _parse_time,
    _TimeOfDay,
)

UCUM = "http://unitsofmeasure.org"


class Node:
    """An element or resource of the data with its FHIR type.

    ``path`` is its FHIR type: the resourceType of a resource, the R4
    type of an element (``CodeableConcept``, ``dateTime``, ``code``, ``System.String`` ...), the
    element's path when the model gives it no type of its own (``Timing.repeat``: a backbone
    element), ``_.name`` below untyped data, None for untyped data.  Compares equal to a value or
    Node with equal data, like fhirpathpy's nodes.
    """

    __slots__ = ("data", "path")

    def __init__(self, data: Any, path: str | None) -> None:
        self.data = data
        self.path = path

    def __repr__(self) -> str:
        return f"Node({self.data!r}, {self.path!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is Node:
            return self.data == other.data
        return self.data == other

    def __hash__(self) -> int:
        return hash((json.dumps(self.data, sort_keys=True, default=str), self.path))


class DateTime:
    """A FHIRPath Date or DateTime value, as written (``text``), with its parsed components."""

    __slots__ = ("text", "parsed")

    def __init__(self, text: str, parsed: _DateTime | None = None) -> None:
        self.text = text
        self.parsed = parsed if parsed is not None else _parse_datetime(text[:-1] if text.endswith("T") else text)

    @property
    def asStr(self) -> str:  # noqa: N802 - the attribute name of fhirpathpy's date/time values
        """The value as written (the attribute name fhirpathpy's date/time values have too)."""
        return self.text

    def __repr__(self) -> str:
        return f"DateTime({self.text!r})"

    def _identity(self) -> Any:
        parsed = self.parsed
        if parsed is None:
            return self.text
        fraction = Decimal("0." + parsed.fraction).normalize() if parsed.fraction else None
        return parsed.fields, fraction, parsed.offset, self.text.endswith("T")

    def __eq__(self, other: object) -> bool:
        """The same date/time as written, to the same precision (membership and distinct(); ``=`` is the operator's)."""
        return type(other) is DateTime and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


class Time:
    """A FHIRPath Time value (``@T10:30``, ``timeOfDay()``), as written."""

    __slots__ = ("text", "parsed")

    def __init__(self, text: str) -> None:
        self.text = text
        self.parsed: _TimeOfDay | None = _parse_time(text)

    @property
    def asStr(self) -> str:  # noqa: N802
        """The value as written."""
        return self.text

    def __repr__(self) -> str:
        return f"Time({self.text!r})"

    def __eq__(self, other: object) -> bool:
        """The same time of day, to the same precision."""
        if type(other) is not Time:
            return False
        if self.parsed is None or other.parsed is None:
            return self.text == other.text
        return self.parsed.keys() == other.parsed.keys()

    def __hash__(self) -> int:
        return hash(self.parsed.keys() if self.parsed is not None else self.text)


class Quantity:
    """A FHIRPath quantity: a number and its unit, a calendar word (``days``) or a quoted UCUM code (``'mg'``)."""

    __slots__ = ("value", "unit")

    def __init__(self, value: Any, unit: str | None) -> None:
        self.value = value
        self.unit = unit

    def __str__(self) -> str:
        return f"{self.value} {self.unit}"

    @property
    def asStr(self) -> str:  # noqa: N802
        """Value and unit as fhirpathpy writes them (``5 'mg'``)."""
        return str(self)

    def __repr__(self) -> str:
        return f"Quantity({self.value!r}, {self.unit!r})"

    def __eq__(self, other: object) -> bool:
        """Equal quantities: the same amount in comparable units (``1 'g'`` and ``1000 'mg'``)."""
        if type(other) is not Quantity:
            return False
        values = _quantity_values(self, other)
        return values is not None and values[0] == values[1]

    def __hash__(self) -> int:
        code, _ = _ucum_code(self.unit)
        base = _in_base_unit(code)
        value = Decimal(str(self.value))
        if base is None:
            return hash((code, value.normalize()))
        return hash((base[0], (value * base[1]).normalize()))


_TEMPORAL_PATHS = frozenset({"date", "dateTime", "instant"})
_NOT_PLAIN_TEXT_PATHS = _TEMPORAL_PATHS | {"Quantity", "System.Quantity"}


def _to_json(value: Any) -> Any:
    """One result item as plain JSON: a Quantity as a FHIR Quantity, date/times as FHIR text, decimals as numbers."""
    t = type(value)
    if t is Node:
        data = value.data
        if isinstance(data, (dict, list)):
            return data
        return _to_json(data)
    if t is str or t is bool or t is int or t is float or value is None:
        return value
    if t is Decimal:
        return _number(value)
    if t is DateTime:
        return _datetime_text(value.text)
    if t is Time:
        return value.text[1:] if value.text.startswith("T") else value.text
    if t is Quantity:
        number = _number(Decimal(str(value.value)))
        unit = value.unit
        calendar = _UNIT_TO_CALENDAR.get(unit) if unit and not unit.startswith("'") else None
        if calendar is not None:
            return {"value": number, "unit": unit, "system": UCUM, "code": _CALENDAR_TO_UCUM[calendar]}
        code = unit[1:-1] if unit and unit.startswith("'") else (unit or "1")
        return {"value": number, "unit": code, "system": UCUM, "code": code}
    if isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, Mapping):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    return str(value)


def _type_name(value: Any) -> str | None:
    """FHIR type of one result item (to fill a choice element such as medication[x])."""
    t = type(value)
    if t is Node:
        data = value.data
        if isinstance(data, Mapping) and isinstance(data.get("resourceType"), str):
            return data["resourceType"]
        path = value.path
        return path if path and "." not in path else None
    if t is bool:
        return "boolean"
    if t is int:
        return "integer"
    if t is Decimal or t is float:
        return "decimal"
    if t is str:
        return "string"
    if t is Quantity:
        return "Quantity"
    if t is DateTime:
        return "date" if value.parsed is not None and len(value.parsed.fields) <= 3 and not value.text.endswith("T") else "dateTime"
    if t is Time:
        return "time"
    if isinstance(value, Mapping) and isinstance(value.get("resourceType"), str):
        return value["resourceType"]
    return None


# ---------------------------------------------------------------- quantities and their units
#
# A Quantity's unit is a calendar word (``days``, ``year``) or a quoted UCUM code (``'mg'``).  Two quantities
# compare when their units measure the same thing: the units below are converted to a base unit (gram, metre,
# litre, second) with a metric prefix; calendar words of a week or less are the UCUM durations they name,
# a year and a month are calendar periods that equal no UCUM unit ('a', 'mo') for = and compare as 365 and
# 30 days only for ~ (FHIRPath 2.0, "Quantity Equality").

_PREFIXES = {"": Decimal(1), "k": Decimal(1000), "h": Decimal(100), "da": Decimal(10), "d": Decimal("0.1"),
             "c": Decimal("0.01"), "m": Decimal("0.001"), "u": Decimal("1e-6"), "n": Decimal("1e-9"),
             "p": Decimal("1e-12")}
_BASE_UNITS = {"g": "g", "m": "m", "L": "L", "l": "L", "s": "s"}
_CUSTOMARY_UNITS = {"[lb_av]": ("g", Decimal("453.59237")), "[oz_av]": ("g", Decimal("28.349523125")),
                    "[in_i]": ("m", Decimal("0.0254")), "[ft_i]": ("m", Decimal("0.3048")),
                    "[mi_i]": ("m", Decimal("1609.344")), "[gal_us]": ("L", Decimal("3.785411784"))}
_TIME_UNITS = {"min": Decimal(60), "h": Decimal(3600), "d": Decimal(86400), "wk": Decimal(604800),
               "a": Decimal("31557600"), "mo": Decimal("2629800")}
_CALENDAR_CODES = {"week": "wk", "day": "d", "hour": "h", "minute": "min", "second": "s", "millisecond": "ms"}


def _ucum_code(unit: str | None) -> tuple[str, bool]:
    """(UCUM code, calendar) of a Quantity unit: a quoted code as is, a calendar word as the code it names."""
    if not unit:
        return "1", False
    if unit.startswith("'"):
        return unit[1:-1], False
    calendar = _UNIT_TO_CALENDAR.get(unit)
    if calendar is None:
        return unit, False
    return _CALENDAR_TO_UCUM[calendar], calendar in ("year", "month")


def _in_base_unit(code: str) -> tuple[str, Decimal] | None:
    """(base unit, factor) of a UCUM code this engine converts, or None."""
    if code in _TIME_UNITS:
        return "s", _TIME_UNITS[code]
    if code in _CUSTOMARY_UNITS:
        return _CUSTOMARY_UNITS[code]
    if code == "1":
        return "1", Decimal(1)
    for base in _BASE_UNITS:
        if code.endswith(base):
            prefix = code[: len(code) - len(base)]
            if prefix in _PREFIXES:
                return _BASE_UNITS[base], _PREFIXES[prefix]
    return None


def _quantity_values(x: Quantity, y: Quantity, equivalence: bool = False) -> tuple[Decimal, Decimal] | None:
    """The values of two quantities in one unit, or None when their units do not compare (a calendar year or
    month and a UCUM one do not, but for equivalence)."""
    vx, vy = Decimal(str(x.value)), Decimal(str(y.value))
    cx, calendar_x = _ucum_code(x.unit)
    cy, calendar_y = _ucum_code(y.unit)
    if calendar_x != calendar_y and not equivalence:
        return None
    if cx == cy:
        return vx, vy
    bx, by = _in_base_unit(cx), _in_base_unit(cy)
    if bx is None or by is None or bx[0] != by[0]:
        return None
    return vx * bx[1], vy * by[1]
