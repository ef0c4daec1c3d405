"""Where the logic of an artifact lives: its named variables and the names an expression may use.

Shared by the content checks and the engine so that both agree on what ``%name`` means.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

EXPRESSION_LANGUAGE = "text/fhirpath"
VARIABLE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/variable"

#: Names the engine defines for every expression (the $apply context and FHIRPath's own constants).
#: The $apply inputs about the user and the setting (CodeableConcepts), visible to every expression as %name: empty
#: when the call does not give them.
USER_AND_SETTING_INPUTS = ("userType", "userLanguage", "userTaskContext", "setting", "settingContext")
STANDARD_VARIABLES = frozenset({
    "context", "resource", "rootResource", "subject", "patient", "encounter", "practitioner", "organization",
    "ucum", "sct", "loinc", *USER_AND_SETTING_INPUTS,
})


def variables_of(element: dict[str, Any], path: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(name, element path, Expression) of each ``variable`` extension of an element, in order."""
    for i, ext in enumerate(element.get("extension") or []):
        if ext.get("url") == VARIABLE_EXTENSION:
            expression = ext.get("valueExpression") or {}
            yield expression.get("name", ""), f"{path}.extension[{i}].valueExpression", expression


def resource_variables(resource: dict[str, Any], rtype: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """The variables declared on a resource itself."""
    return variables_of(resource, rtype)


def action_variables(action: dict[str, Any], path: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """The variables declared on one PlanDefinition action (in scope for it and its children)."""
    return variables_of(action, path)


def library_names(library: dict[str, Any]) -> set[str]:
    """Every name a Library makes available: its parameters, data requirement ids and variables."""
    names = {p["name"] for p in library.get("parameter") or [] if p.get("name")}
    names |= {dr["id"] for dr in library.get("dataRequirement") or [] if dr.get("id")}
    names |= {name for name, _, _ in variables_of(library, "Library") if name}
    return names
