"""The FHIR R4 type model (fhirpathpy.models['r4']): type names of values and is/as/ofType tests."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from protocol.engine.fhirpath.values import DateTime, Node, Quantity, Time

_TYPE_TESTS_LIMIT = 4096


class _Types:
    """Type questions answered from the R4 model, remembered per (type, asked type)."""

    def __init__(self, model: dict) -> None:
        self.model = model
        self.type2parent = model.get("type2Parent") or {}
        self.path2type = model.get("path2Type") or {}
        self._tests: dict[tuple, bool] = {}

    @staticmethod
    def info(value: Any) -> tuple[str, str] | None:
        """(namespace, name) of a value's type, as fhirpathpy's TypeInfo.from_value gives it."""
        t = type(value)
        if t is Node:
            path = value.path
            if path is None:
                return None
            if path.startswith("System."):
                return "System", path[7:]
            if "." not in path:
                return "FHIR", path
            return "FHIR", "BackboneElement"
        if t is bool:
            return "System", "Boolean"
        if t is int:
            return "System", "Integer"
        if t is Decimal or t is float:
            return "System", "Decimal"
        if t is DateTime:
            return "System", "DateTime"
        if t is Time:
            return "System", "Time"
        if t is Quantity:
            return "System", "Quantity"
        if t is str:
            return "System", "String"
        if isinstance(value, Mapping):
            return "System", "Object"
        return "System", t.__name__.capitalize()

    def _is_subtype(self, name: str, wanted: str) -> bool:
        current: str | None = name
        while current:
            if current == wanted:
                return True
            current = self.type2parent.get(current) or self.path2type.get(current)
        return False

    def matches(self, value: Any, namespace: str | None, name: str) -> bool:
        """``value is namespace.name`` (namespace None: any)."""
        info = self.info(value)
        if info is None:
            raise ValueError("value without a type")
        key = (info, namespace, name)
        known = self._tests.get(key)
        if known is not None:
            return known
        own_namespace, own_name = info
        if namespace is not None and namespace != own_namespace:
            result = False
        elif own_namespace == "FHIR":
            result = self._is_subtype(own_name, name)
        else:
            result = own_name == name
        if len(self._tests) < _TYPE_TESTS_LIMIT:
            self._tests[key] = result
        return result


def _type_specifier(text: str) -> tuple[str | None, str]:
    """(namespace, name) of a type specifier's text (``Quantity``, ``FHIR.Quantity``, ``System.String``)."""
    parts = text.replace("`", "").split(".")
    if len(parts) == 2:
        return parts[0], parts[1]
    if len(parts) == 1:
        return None, parts[0]
    raise ValueError(f"type specifier {text}")

