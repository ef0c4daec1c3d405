"""Checks of the protocol content: FHIR structure, codes, canonical references and FHIRPath logic.

Every problem names the file and the element path, so an author can go straight to it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from protocol.engine.content import Content
from protocol.engine.fhirpath import Evaluator, FhirPathSyntaxError, default_evaluator
from protocol.engine.logic import (
    EXPRESSION_LANGUAGE,
    STANDARD_VARIABLES,
    VARIABLE_EXTENSION,
    action_variables,
    library_names,
    resource_variables,
)
from protocol.engine.terminology import codings_of

# fhir.resources 8 has no R4 (4.0.1) models; R4B (4.3.0) is the nearest. For the types shipped here
# (PlanDefinition, ActivityDefinition, Library, ValueSet, CodeSystem, StructureDefinition) the R4B
# changes are additions: subjectCanonical on PlanDefinition/ActivityDefinition, a few new codes in
# required value sets (e.g. new resource types) and CodeSystem/ValueSet elements left as they were.
# So R4B accepts every valid R4 instance of these types, but it would also accept those R4B-only
# additions: the checks below keep to R4 code lists, and ../shared/tools/fhir-check (R4 schema and
# StructureDefinitions) is run on the bundle in CI. fhir.resources checks structure and datatypes,
# not code bindings, which is why the required bindings that matter here are checked by hand.

CLINICAL_SYSTEMS = {
    "http://snomed.info/sct",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://loinc.org",
    "http://www.ama-assn.org/go/cpt",
    "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
    "http://www.nlm.nih.gov/research/umls/rxnorm",
}

# Required bindings of FHIR R4 (code lists of the specification, not clinical terminology).
PUBLICATION_STATUS = {"draft", "active", "retired", "unknown"}
REQUEST_PRIORITY = {"routine", "urgent", "asap", "stat"}
REQUEST_INTENT = {"proposal", "plan", "directive", "order", "original-order", "reflex-order", "filler-order",
                  "instance-order", "option"}
REQUEST_RESOURCE_TYPES = {"Appointment", "AppointmentResponse", "CarePlan", "Claim", "CommunicationRequest", "Contract",
                          "DeviceRequest", "EnrollmentRequest", "ImmunizationRecommendation", "MedicationRequest",
                          "NutritionOrder", "ServiceRequest", "SupplyRequest", "Task", "VisionPrescription"}
ACTION_CODES = {
    "groupingBehavior": {"visual-group", "logical-group", "sentence-group"},
    "selectionBehavior": {"any", "all", "all-or-none", "exactly-one", "at-most-one", "one-or-more"},
    "requiredBehavior": {"must", "could", "must-unless-documented"},
    "precheckBehavior": {"yes", "no"},
    "cardinalityBehavior": {"single", "multiple"},
    "priority": REQUEST_PRIORITY,
}
CONDITION_KINDS = {"applicability", "start", "stop"}
RELATIONSHIPS = {"before-start", "before", "before-end", "concurrent-with-start", "concurrent", "concurrent-with-end",
                 "after-start", "after", "after-end"}
TRIGGER_TYPES = {"named-event", "periodic", "data-changed", "data-added", "data-modified", "data-removed",
                 "data-accessed", "data-access-ended"}
ACTION_TYPES = {"create", "update", "remove", "fire-event"}

# Profiles the artifacts declare in meta.profile, and the elements each requires beyond the base resource. R4 core
# shareable profiles (ShareablePlanDefinition and its siblings): url, version, name, experimental, publisher and
# description 1..1. CPG computable PlanDefinition: type 1..1, action 1..*, library 0..1. CPG activity profiles:
# kind and profile fixed, and the request's intent a proposal (checked where the engine reads it, check_activity).
SHAREABLE_ELEMENTS = ("url", "version", "name", "experimental", "publisher", "description")
SHAREABLE = {rtype: f"http://hl7.org/fhir/StructureDefinition/shareable{rtype.lower()}"
             for rtype in ("PlanDefinition", "ActivityDefinition", "Library", "ValueSet", "CodeSystem")}
CPG = "http://hl7.org/fhir/uv/cpg/StructureDefinition/"
CPG_COMPUTABLE_PLAN = CPG + "cpg-computableplandefinition"
CPG_ACTIVITY_KINDS = {CPG + "cpg-servicerequestactivity": "ServiceRequest", CPG + "cpg-medicationrequestactivity": "MedicationRequest"}

SIMPLE_PATH = re.compile(r"^%?[A-Za-z][A-Za-z0-9]*(\[\d+\])?(\.[A-Za-z][A-Za-z0-9]*(\[\d+\])?)*$")
MEMBER_OF = re.compile(r"memberOf\(\s*'([^']*)'\s*\)")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the content."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}"


def validate_content(content: Content, evaluator: Evaluator | None = None) -> list[Problem]:
    """Every problem of the content: structure, publication metadata, codes, references, FHIRPath."""
    evaluator = evaluator or default_evaluator()
    problems: list[Problem] = []
    seen: dict[tuple[str, str], str] = {}
    for resource in content.resources:
        checker = _ResourceChecker(content, resource, evaluator)
        checker.run()
        problems.extend(checker.problems)
        key = (resource["resourceType"], str(resource.get("id")))
        if key in seen:
            problems.append(Problem(checker.file, resource["resourceType"], f"duplicate id '{key[1]}' (also in {seen[key]})"))
        seen[key] = checker.file
    return problems


@lru_cache(maxsize=None)
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def is_resource_type(name: str) -> bool:
    """True for a FHIR resource type name."""
    try:
        _model(name)
    except (KeyError, ValueError, ImportError, AttributeError):
        return False
    return True


def fhir_path(resource_type: str, loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a FHIR element path: ``PlanDefinition.action[0].title``."""
    out = resource_type
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


class _ResourceChecker:
    """Collects the problems of one resource."""

    def __init__(self, content: Content, resource: dict[str, Any], evaluator: Evaluator):
        self.content = content
        self.resource = resource
        self.evaluator = evaluator
        self.type = resource["resourceType"]
        path = content.file_of(resource)
        self.file = path.name if isinstance(path, Path) else f"{self.type}-{resource.get('id')}.json"
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, path, message))

    def run(self) -> None:
        self.check_file_name()
        if not self.check_structure():
            return
        self.check_publication()
        self.check_profiles()
        self.check_codes()
        self.check_references()
        self.check_expressions()
        if self.type == "PlanDefinition":
            self.check_actions()
        if self.type == "ActivityDefinition":
            self.check_activity()

    # -- structure ------------------------------------------------------------------------------
    def check_file_name(self) -> None:
        expected = f"{self.type}-{self.resource.get('id')}.json"
        path = self.content.file_of(self.resource)
        if path is not None and path.name != expected:
            self.add(self.type, f"file name should be {expected} (one resource a file, named Type-id.json)")

    def check_structure(self) -> bool:
        try:
            model = _model(self.type)
        except (KeyError, ValueError, ImportError, AttributeError):
            self.add("resourceType", f"unknown resource type '{self.type}'")
            return False
        try:
            model.model_validate(self.resource)
        except ValidationError as exc:
            for error in exc.errors():
                self.add(fhir_path(self.type, tuple(error["loc"])), error["msg"])
            return False
        narrative = (self.resource.get("text") or {}).get("div")
        if not narrative:
            self.add(f"{self.type}.text", "human-readable narrative missing")
        elif self.type == "PlanDefinition":
            for path, action in _actions(self.resource.get("action") or [], "PlanDefinition.action"):
                if action.get("title") and html.escape(action["title"], quote=False) not in narrative:
                    self.add(f"{path}.title", "the narrative (text.div) does not mention this action: update it with the action")
        return True

    def check_publication(self) -> None:
        pub = self.content.publication_of(self.resource)  # each protocol's own publication.json, when several are merged
        if "url" not in self.resource and self.type not in {"ValueSet", "CodeSystem"} and not self.resource.get("url"):
            self.add(f"{self.type}.url", "canonical url missing")
            return
        expected = self.content.canonical(self.type, str(self.resource.get("id")))
        if self.resource.get("url") != expected:
            self.add(f"{self.type}.url", f"expected {expected} (base and version come from publication.json)")
        if self.resource.get("version") != pub["version"]:
            self.add(f"{self.type}.version", f"expected {pub['version']} (from publication.json)")
        if self.resource.get("status") not in PUBLICATION_STATUS:
            self.add(f"{self.type}.status", f"'{self.resource.get('status')}' is not a publication status")

    # -- profiles -------------------------------------------------------------------------------
    def check_profiles(self) -> None:
        """Each artifact declares the shareable profile of its type, and has what every profile it declares requires."""
        profiles = (self.resource.get("meta") or {}).get("profile") or []
        shareable = SHAREABLE.get(self.type)
        if shareable and shareable not in profiles:
            self.add(f"{self.type}.meta.profile", f"declare {shareable}: every artifact is shareable")
        if shareable in profiles:
            for element in SHAREABLE_ELEMENTS:
                if self.resource.get(element) in (None, ""):
                    self.add(f"{self.type}.{element}", f"required by {shareable}")
        if CPG_COMPUTABLE_PLAN in profiles:
            self.check_computable_plan()
        if self.type == "ValueSet":
            self.check_expansion()
        for profile, kind in CPG_ACTIVITY_KINDS.items():
            if profile in profiles:
                if self.resource.get("kind") != kind:
                    self.add(f"{self.type}.kind", f"{profile} requires kind {kind}")
                if self.resource.get("profile") is None:
                    self.add(f"{self.type}.profile", f"{profile} requires the profile of the request it creates")

    def check_expansion(self) -> None:
        """A ValueSet ships its whole expansion (timestamp, total, every code with its system): membership, ``$expand``
        and ``$package`` answer from it, so that no terminology server is needed."""
        expansion = self.resource.get("expansion")
        if not expansion:
            self.add("ValueSet.expansion", "missing: ship the expansion (scripts/make_valuesets.py builds it)")
            return
        contains = expansion.get("contains") or []
        if expansion.get("total") != len(contains):
            self.add("ValueSet.expansion.total", f"{expansion.get('total')} but {len(contains)} codes listed: ship the whole expansion")
        for i, concept in enumerate(contains):
            if not concept.get("system") or not concept.get("code"):
                self.add(f"ValueSet.expansion.contains[{i}]", "a code with its system")

    def check_computable_plan(self) -> None:
        """CPG computable PlanDefinition: a type, at least one action and at most one (primary) library."""
        if not self.resource.get("type"):
            self.add(f"{self.type}.type", f"required by {CPG_COMPUTABLE_PLAN}")
        if not self.resource.get("action"):
            self.add(f"{self.type}.action", f"at least one action, required by {CPG_COMPUTABLE_PLAN}")
        if len(self.resource.get("library") or []) > 1:
            self.add(f"{self.type}.library", f"at most one (primary) library in {CPG_COMPUTABLE_PLAN}")

    # -- codes ----------------------------------------------------------------------------------
    def check_codes(self) -> None:
        """Clinical codings outside ValueSets must be codes the protocol's ValueSets hold (no invented code)."""
        if self.type in {"ValueSet", "CodeSystem"}:
            return
        known = self.content.terminology.all_codes()
        for path, value in _walk(self.resource, self.type):
            for i, coding in enumerate(codings_of(value) if isinstance(value, dict) and "coding" in value else []):
                system, code = coding.get("system"), coding.get("code")
                if system in CLINICAL_SYSTEMS and (system, code) not in known:
                    self.add(f"{path}.coding[{i}]", f"code {system}|{code} is in no ValueSet of the protocol")

    # -- canonical references ---------------------------------------------------------------------
    def check_references(self) -> None:
        for path, canonical, expected in self._canonicals():
            if self.content.resolve(canonical, expected) is None:
                self.add(path, f"{expected or 'resource'} {canonical} does not resolve to an artifact of the protocol")

    def _canonicals(self) -> Iterator[tuple[str, str, str | None]]:
        r, t = self.resource, self.type
        for i, lib in enumerate(r.get("library") or []):
            yield f"{t}.library[{i}]", lib, "Library"
        for path, dr in _data_requirements(r, t):
            for j, cf in enumerate(dr.get("codeFilter") or []):
                if cf.get("valueSet"):
                    yield f"{path}.codeFilter[{j}].valueSet", cf["valueSet"], "ValueSet"
        if t == "PlanDefinition":
            for path, action in _actions(r.get("action") or [], f"{t}.action"):
                if action.get("definitionCanonical"):
                    target = _canonical_type(action["definitionCanonical"])
                    yield f"{path}.definitionCanonical", action["definitionCanonical"], target
        if t == "ValueSet":
            for i, inc in enumerate((r.get("compose") or {}).get("include") or []):
                for j, ref in enumerate(inc.get("valueSet") or []):
                    yield f"ValueSet.compose.include[{i}].valueSet[{j}]", ref, "ValueSet"
        for path, ext in _extensions(r, t):
            if isinstance(ext.get("valueCanonical"), str) and ext["valueCanonical"].startswith(self.content.publication_of(r)["canonical"]):
                yield f"{path}.valueCanonical", ext["valueCanonical"], _canonical_type(ext["valueCanonical"])
        for path, expression in _expressions(r, t):
            for url in MEMBER_OF.findall(expression.get("expression", "")):
                yield f"{path}.expression (memberOf)", url, "ValueSet"

    # -- FHIRPath -------------------------------------------------------------------------------
    def check_expressions(self) -> None:
        libraries = [self.content.resolve(lib, "Library") for lib in self.resource.get("library") or []]
        known = set(STANDARD_VARIABLES)
        for lib in libraries:
            if lib is not None:
                known |= library_names(lib)
        if self.type == "Library":
            known |= {p["name"] for p in self.resource.get("parameter") or [] if p.get("name")}
            known |= {dr["id"] for dr in self.resource.get("dataRequirement") or [] if dr.get("id")}
        for name, path, expression in resource_variables(self.resource, self.type):
            self.check_expression(path, expression, known)
            if name in known and name not in STANDARD_VARIABLES and self.type != "Library":
                self.add(path, f"variable %{name} is already defined")
            known.add(name)
        if self.type == "PlanDefinition":
            self.check_action_expressions(self.resource.get("action") or [], f"{self.type}.action", known)
        if self.type == "ActivityDefinition":
            for i, dv in enumerate(self.resource.get("dynamicValue") or []):
                self.check_expression(f"ActivityDefinition.dynamicValue[{i}].expression", dv.get("expression") or {}, known)

    def check_action_expressions(self, actions: list[dict[str, Any]], base: str, known: set[str]) -> None:
        for i, action in enumerate(actions):
            path = f"{base}[{i}]"
            scope = set(known) | {dr["id"] for dr in action.get("input") or [] if dr.get("id")}
            for name, vpath, expression in action_variables(action, path):
                self.check_expression(vpath, expression, scope)
                scope.add(name)
            for j, cond in enumerate(action.get("condition") or []):
                self.check_expression(f"{path}.condition[{j}].expression", cond.get("expression") or {}, scope)
            for j, dv in enumerate(action.get("dynamicValue") or []):
                self.check_expression(f"{path}.dynamicValue[{j}].expression", dv.get("expression") or {}, scope)
            self.check_action_expressions(action.get("action") or [], f"{path}.action", scope)

    def check_expression(self, path: str, expression: dict[str, Any], known: set[str]) -> None:
        language = expression.get("language")
        text = expression.get("expression")
        if language != EXPRESSION_LANGUAGE:
            self.add(f"{path}.language", f"'{language}' is not supported: the engine evaluates {EXPRESSION_LANGUAGE} only")
            return
        if not text:
            self.add(f"{path}.expression", "expression text missing")
            return
        try:
            compiled = self.evaluator.compile(text)
        except FhirPathSyntaxError as exc:
            self.add(f"{path}.expression", f"FHIRPath does not compile: {exc}")
            return
        for name in sorted(compiled.variables - known):
            self.add(f"{path}.expression", f"undefined variable %{name}")

    # -- PlanDefinition / ActivityDefinition specifics ----------------------------------------------
    def check_actions(self) -> None:
        ids: dict[str, str] = {}
        actions = list(_actions(self.resource.get("action") or [], "PlanDefinition.action"))
        for path, action in actions:
            aid = action.get("id")
            if not aid:
                self.add(path, "action id missing (needed for relatedAction, output ids and card anchors)")
            elif aid in ids:
                self.add(f"{path}.id", f"duplicate action id '{aid}' (also at {ids[aid]})")
            else:
                ids[aid] = path
        for path, action in actions:
            for field, allowed in ACTION_CODES.items():
                if field in action and action[field] not in allowed:
                    self.add(f"{path}.{field}", f"'{action[field]}' is not a valid code")
            for j, cond in enumerate(action.get("condition") or []):
                if cond.get("kind") not in CONDITION_KINDS:
                    self.add(f"{path}.condition[{j}].kind", f"'{cond.get('kind')}' is not a condition kind")
            for j, rel in enumerate(action.get("relatedAction") or []):
                if rel.get("actionId") not in ids:
                    self.add(f"{path}.relatedAction[{j}].actionId", f"no action with id '{rel.get('actionId')}'")
                if rel.get("relationship") not in RELATIONSHIPS:
                    self.add(f"{path}.relatedAction[{j}].relationship", f"'{rel.get('relationship')}' is not a relationship")
            for j, trig in enumerate(action.get("trigger") or []):
                if trig.get("type") not in TRIGGER_TYPES:
                    self.add(f"{path}.trigger[{j}].type", f"'{trig.get('type')}' is not a trigger type")
            for j, coding in enumerate(((action.get("type") or {}).get("coding")) or []):
                if coding.get("code") not in ACTION_TYPES:
                    self.add(f"{path}.type.coding[{j}]", f"'{coding.get('code')}' is not an action type")
            for j, dv in enumerate(action.get("dynamicValue") or []):
                self.check_dynamic_path(f"{path}.dynamicValue[{j}].path", dv.get("path"), self._target_type(action))

    def _target_type(self, action: dict[str, Any]) -> str | None:
        definition = action.get("definitionCanonical")
        target = self.content.resolve(definition) if definition else None
        return target.get("kind") if target and target["resourceType"] == "ActivityDefinition" else None

    def check_activity(self) -> None:
        kind = self.resource.get("kind")
        if kind not in REQUEST_RESOURCE_TYPES:
            self.add("ActivityDefinition.kind", f"'{kind}' is not a request resource type")
            return
        if "intent" in self.resource and self.resource["intent"] not in REQUEST_INTENT:
            self.add("ActivityDefinition.intent", f"'{self.resource['intent']}' is not a request intent")
        if "priority" in self.resource and self.resource["priority"] not in REQUEST_PRIORITY:
            self.add("ActivityDefinition.priority", f"'{self.resource['priority']}' is not a request priority")
        for i, dv in enumerate(self.resource.get("dynamicValue") or []):
            self.check_dynamic_path(f"ActivityDefinition.dynamicValue[{i}].path", dv.get("path"), kind)

    def check_dynamic_path(self, path: str, value: Any, target: str | None) -> None:
        if not isinstance(value, str) or not SIMPLE_PATH.match(value):
            self.add(path, f"'{value}' is not a simple FHIRPath (identifiers, constant indexers and dots)")
            return
        head = value.lstrip("%").split(".")[0].split("[")[0]
        if head == "action":
            return
        if target is None:
            self.add(path, f"'{value}' sets an element of a generated resource, but the action has no ActivityDefinition (use action.…)")
            return
        if head == target:
            return
        fields = _model(target).model_fields
        if head not in fields and not any(name.startswith(head) and name[len(head):][:1].isupper() for name in fields):
            self.add(path, f"'{head}' is not an element of {target}")


# -- walkers ------------------------------------------------------------------------------------------


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


def _actions(actions: list[dict[str, Any]], base: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, action in enumerate(actions):
        path = f"{base}[{i}]"
        yield path, action
        yield from _actions(action.get("action") or [], f"{path}.action")


def _data_requirements(resource: dict[str, Any], rtype: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, dr in enumerate(resource.get("dataRequirement") or []):
        yield f"{rtype}.dataRequirement[{i}]", dr
    for path, action in _actions(resource.get("action") or [], f"{rtype}.action"):
        for j, dr in enumerate(action.get("input") or []):
            yield f"{path}.input[{j}]", dr


def _extensions(resource: dict[str, Any], rtype: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, value in _walk(resource, rtype):
        if isinstance(value, dict) and isinstance(value.get("url"), str) and path.rsplit(".", 1)[-1].startswith("extension"):
            yield path, value


def _expressions(resource: dict[str, Any], rtype: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, value in _walk(resource, rtype):
        if isinstance(value, dict) and "language" in value and "expression" in value:
            yield path, value


def _canonical_type(canonical: str) -> str | None:
    parts = canonical.split("|")[0].rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 and parts[-2][:1].isupper() else None


__all__ = ["Problem", "validate_content", "is_resource_type", "fhir_path", "CLINICAL_SYSTEMS", "VARIABLE_EXTENSION"]
