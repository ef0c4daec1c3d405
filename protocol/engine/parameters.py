"""The inputs of PlanDefinition/$apply (and ActivityDefinition/$apply) as one checked value, whichever transport sent them.

``ApplyParameters`` holds every input of the CPG operation ``cpg-plandefinition-apply`` that this engine takes:
subject, encounter, practitioner, organization, the five user and setting CodeableConcepts, ``parameters`` (a
Parameters resource), ``data`` (a Bundle), ``prefetchData`` (key, descriptor, data) and ``useServerData``. The FHIR
operation (``service.fhir_api``) and the CDS Hooks request (``service.cds_hooks.calls.from_hook``) both build one,
so the two paths cannot drift; the engine reads nothing else (``Engine.apply_parameters``).

Checks made here raise ``ParameterError`` naming the operation parameter, which the transports answer with a 400:
a value of the wrong shape, ``data`` together with ``prefetchData`` (exclusive in the CPG operation),
``useServerData`` true (the service holds no patient data of its own), and a name in ``parameters`` that another
variable of the expressions already uses (``check_names``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.engine.logic import USER_AND_SETTING_INPUTS

Json = dict[str, Any]

#: The operation's CodeableConcept inputs, by their Python field: each is also visible to expressions as %name.
CONCEPTS = dict(zip(("user_type", "user_language", "user_task_context", "setting", "setting_context"), USER_AND_SETTING_INPUTS))
#: A language tag as BCP 47 writes it (the R4 ``language`` element's values): letters, then subtags of letters and digits.
LANGUAGE_TAG = re.compile(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*")


class ParameterError(ValueError):
    """An input of $apply that cannot be taken; ``parameter`` is the operation's name for it."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class ParameterValue:
    """One ``Parameters.parameter`` entry given as a value[x] or as parts: the engine makes it a typed FHIRPath value."""

    entry: Json

    @property
    def is_value(self) -> bool:
        """True for a value[x] (the entry's type is in its key); False for an entry of parts."""
        return any(key.startswith("value") and len(key) > len("value") for key in self.entry)


@dataclass(frozen=True)
class PrefetchData:
    """One ``prefetchData`` input: the prefetch key it answers, the DataRequirement describing it, and its Bundle."""

    key: str | None = None
    descriptor: Json | None = None
    data: Json | None = None


@dataclass(frozen=True)
class ApplyParameters:
    """Every input of one $apply call, checked when made (``ParameterError`` names the first bad one)."""

    subject: str
    encounter: str | None = None
    practitioner: str | None = None
    organization: str | None = None
    user_type: Json | None = None
    user_language: Json | None = None
    user_task_context: Json | None = None
    setting: Json | None = None
    setting_context: Json | None = None
    parameters: Json | None = None
    data: Json | None = None
    prefetch_data: tuple[PrefetchData, ...] = field(default_factory=tuple)
    use_server_data: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.subject, str) or not self.subject:
            raise ParameterError("subject", "subject is required (for example Patient/123)")
        for name in ("encounter", "practitioner", "organization"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ParameterError(name, f"parameter {name} must be a reference such as {name.capitalize()}/123")
        for attribute, name in CONCEPTS.items():
            _check_concept(getattr(self, attribute), name)
        if self.language_code() is None and _first_code(self.user_language) is not None:
            raise ParameterError("userLanguage", "parameter userLanguage: its first coding's code must be a language tag such as en-AU")
        _check_parameters(self.parameters)
        _check_resource(self.data, "data", "Bundle")
        if not isinstance(self.prefetch_data, tuple):
            object.__setattr__(self, "prefetch_data", tuple(self.prefetch_data))
        for item in self.prefetch_data:
            _check_prefetch(item)
        if self.data is not None and self.prefetch_data:
            raise ParameterError("prefetchData", "parameters data and prefetchData are exclusive: give all the data in one "
                                                 "Bundle (data) or as prefetch Bundles (prefetchData), not both")
        if self.use_server_data is not None and not isinstance(self.use_server_data, bool):
            raise ParameterError("useServerData", "parameter useServerData must be a boolean")
        if self.use_server_data:
            raise ParameterError("useServerData", "parameter useServerData must be false: this service holds no patient data "
                                                  "of its own, so every resource must come in data or prefetchData")

    def language_code(self) -> str | None:
        """The language of the output: the code of userLanguage's first coding, when it is a language tag."""
        code = _first_code(self.user_language)
        return code if code is not None and LANGUAGE_TAG.fullmatch(code) else None

    def records(self) -> list[Json]:
        """The Bundles the record is read from: ``data``, or each prefetch item's Bundle."""
        if self.data is not None:
            return [self.data]
        return [item.data for item in self.prefetch_data if item.data is not None]

    def named_inputs(self) -> dict[str, Any]:
        """Each entry of ``parameters`` by name (a resource, or a ParameterValue); a name given several times is a list."""
        found: dict[str, list[Any]] = {}
        for entry in (self.parameters or {}).get("parameter") or []:
            value = entry["resource"] if "resource" in entry else ParameterValue(entry)
            found.setdefault(entry["name"], []).append(value)
        return {name: values[0] if len(values) == 1 else values for name, values in found.items()}

    def context_inputs(self) -> dict[str, ParameterValue]:
        """The user and setting inputs given, by operation name, for the expressions' %userType, %setting ..."""
        out = {}
        for attribute, name in CONCEPTS.items():
            value = getattr(self, attribute)
            if value is not None:
                out[name] = ParameterValue({"name": name, "valueCodeableConcept": value})
        return out

    def check_names(self, taken: Iterable[str]) -> None:
        """ParameterError for the first name of ``parameters`` that is already a variable (``taken``) or an operation input."""
        reserved = set(taken) | set(CONCEPTS.values())
        for name in self.named_inputs():
            if name in reserved:
                raise ParameterError("parameters", f"parameter parameters: the name {name!r} is already a variable of the "
                                                   f"expressions (%{name}); give the input another name")


def _first_code(concept: Any) -> str | None:
    coding = (concept or {}).get("coding") or []
    code = coding[0].get("code") if coding and isinstance(coding[0], Mapping) else None
    return code if isinstance(code, str) else None


def _check_concept(value: Any, name: str) -> None:
    """A CodeableConcept: an object whose coding is a list of objects and whose text is a string."""
    if value is None:
        return
    problem = not isinstance(value, Mapping) or not (value.get("coding") or value.get("text"))
    if not problem:
        coding = value.get("coding", [])
        problem = (not isinstance(coding, list) or not all(isinstance(c, Mapping) for c in coding)
                   or not isinstance(value.get("text", ""), str)
                   or any(not isinstance(c.get(k, ""), str) for c in coding for k in ("system", "code", "display")))
    if problem:
        raise ParameterError(name, f"parameter {name} must be a CodeableConcept (coding with system and code, or text)")


def _check_resource(value: Any, name: str, rtype: str) -> None:
    if value is not None and not (isinstance(value, Mapping) and value.get("resourceType") == rtype):
        raise ParameterError(name, f"parameter {name} must be a {rtype} resource")


def _check_parameters(value: Any) -> None:
    """A Parameters resource whose every entry has a name and one resource, one value[x] or parts."""
    _check_resource(value, "parameters", "Parameters")
    if value is None:
        return
    entries = value.get("parameter", [])
    if not isinstance(entries, list):
        raise ParameterError("parameters", "parameter parameters: Parameters.parameter must be an array")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ParameterError("parameters", f"parameter parameters: parameter[{i}] must be an object with a name")
        name = entry["name"]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ParameterError("parameters", f"parameter parameters: the name {name!r} cannot be read as %{name} in FHIRPath "
                                               "(letters, digits and _, not starting with a digit)")
        values = [k for k in entry if k.startswith("value") and len(k) > len("value")]
        kinds = len(values) + ("resource" in entry) + ("part" in entry)
        if kinds != 1:
            raise ParameterError("parameters", f"parameter parameters: {name} must have exactly one of value[x], resource or part")
        if "resource" in entry and not (isinstance(entry["resource"], Mapping) and isinstance(entry["resource"].get("resourceType"), str)):
            raise ParameterError("parameters", f"parameter parameters: {name}.resource must be a FHIR resource")
        if "part" in entry and not (isinstance(entry["part"], list) and all(isinstance(p, Mapping) and isinstance(p.get("name"), str)
                                                                             for p in entry["part"])):
            raise ParameterError("parameters", f"parameter parameters: {name}.part must be an array of named parameters")


def _check_prefetch(item: Any) -> None:
    if not isinstance(item, PrefetchData):
        raise ParameterError("prefetchData", "parameter prefetchData must have the parts key, descriptor and data")
    if item.key is not None and (not isinstance(item.key, str) or not item.key):
        raise ParameterError("prefetchData", "parameter prefetchData: key must be a string")
    if item.descriptor is not None and not (isinstance(item.descriptor, Mapping) and isinstance(item.descriptor.get("type"), str)):
        raise ParameterError("prefetchData", "parameter prefetchData: descriptor must be a DataRequirement (with its type)")
    if item.data is not None and not (isinstance(item.data, Mapping) and item.data.get("resourceType") == "Bundle"):
        raise ParameterError("prefetchData", "parameter prefetchData: data must be a Bundle")
    if item.key is None and item.descriptor is None:
        raise ParameterError("prefetchData", "parameter prefetchData: give its key, its descriptor or both")
