"""Writing an $apply result: the R4 CarePlan with its contained RequestGroup, or the R5 Bundle.

Both come from the same version-neutral tree (``ApplyResult``). In R4 every generated request is
contained in the CarePlan and referenced as ``#id``; in R5 the RequestOrchestration is the Bundle's
first entry and the requests follow it as entries referenced by ``urn:uuid``.

A RequestGroup action must have a resource or sub-actions (invariant rqg-1). An applied action that has
neither, because it only informs (a safety finding, a piece of guidance), is given a CommunicationRequest
that carries its text, the way the CPG "communicate" activities do.

The $apply inputs that name the context are reflected as the reference implementation (cqframework
clinical-reasoning, ResponseBuilder) reflects them: ``encounter`` on the CarePlan, the RequestGroup and the
requests; the author (``practitioner``, else ``organization``) as the CarePlan's author (R5: custodian) and,
when it is a Practitioner, PractitionerRole or Device (the only authors R4 and R5 allow there), the
RequestGroup's and the requests' requester (the reference implementation sets a request's requester from the
practitioner only); ``userLanguage`` as the ``language`` of the CarePlan and the RequestGroup.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from protocol.engine.apply import AppliedAction, ApplyResult, Issue, _instant, canonical_of, new_id
from protocol.engine.jsondata import copy_json

Json = dict[str, Any]
CQF_MESSAGES = "http://hl7.org/fhir/StructureDefinition/cqf-messages"
CPG_CAREPLAN = "http://hl7.org/fhir/uv/cpg/StructureDefinition/cpg-careplan"
#: The types RequestGroup.author (R4) and RequestOrchestration.author (R5) may reference.
REQUEST_AUTHORS = frozenset({"Practitioner", "PractitionerRole", "Device"})


class _Contained:
    """Generated resources with ids unique in their container; the same change to the same resource is kept once."""

    def __init__(self) -> None:
        self.resources: list[Json] = []
        self._by_id: dict[str, Json] = {}

    def add(self, resource: Json, preferred_id: str) -> str:
        """Contain the resource; its id is kept (an update keeps the id of what it changes) unless taken."""
        rid = (resource.get("id") or preferred_id)[:64]
        existing = self._by_id.get(rid)
        if existing is not None:
            if existing == {**resource, "id": rid}:
                return rid
            suffix = 2
            while f"{rid[:60]}-{suffix}" in self._by_id:
                suffix += 1
            rid = f"{rid[:60]}-{suffix}"
        resource = {**resource, "id": rid}
        self._by_id[rid] = resource
        self.resources.append(resource)
        return rid


def _request_actions(actions: list[AppliedAction], contained: _Contained, result: ApplyResult,
                     reference: Callable[[Json], str]) -> list[Json]:
    out = []
    for action in actions:
        fields = dict(action.fields)
        children = _request_actions(action.children, contained, result, reference)
        resource = action.resource
        if resource is None and not children and "resource" not in fields:
            resource = _communication(fields, result)
        if resource is not None:
            rid = contained.add(resource, fields.get("id") or resource["resourceType"].lower())
            fields["resource"] = {"reference": reference({**resource, "id": rid})}
        if children:
            fields["action"] = children
        out.append(fields)
    return out


def _communication(fields: Json, result: ApplyResult) -> Json:
    """The CommunicationRequest an information-only action stands for: its title and description, for the care team."""
    text = " ".join(part for part in (fields.get("title"), fields.get("description")) if part)
    out: Json = {"resourceType": "CommunicationRequest", "status": "draft", "subject": {"reference": result.subject},
                 "payload": [{"contentString": text or "See the plan."}], "authoredOn": _instant(result.now)}
    if fields.get("priority"):
        out["priority"] = fields["priority"]
    if result.encounter:
        out["encounter"] = {"reference": result.encounter}
    if result.author and _reference_type(result.author) in REQUEST_AUTHORS:
        out["requester"] = {"reference": result.author}
    return out


def _outcome(issues: list[Issue], oid: str) -> Json | None:
    if not issues:
        return None
    return {"resourceType": "OperationOutcome", "id": oid, "issue": [i.to_fhir() for i in issues]}


def _request(result: ApplyResult, resource_type: str, rid: str, actions: list[Json]) -> Json:
    """The RequestGroup (R4) or RequestOrchestration (R5) that carries the applied actions."""
    group: Json = {
        "resourceType": resource_type,
        "id": rid,
        "instantiatesCanonical": [canonical_of(result.plan)],
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": result.subject},
        "authoredOn": _instant(result.now),
    }
    _context(group, result, "author", REQUEST_AUTHORS)
    if actions:
        group["action"] = actions
    return group


def _context(resource: Json, result: ApplyResult, author_element: str, author_types: frozenset[str] | None = None) -> None:
    """Language, encounter and author, when the call gave them; the author only if of one of ``author_types`` (if given)."""
    if result.language:
        resource["language"] = result.language
    if result.encounter:
        resource["encounter"] = {"reference": result.encounter}
    if result.author and (author_types is None or _reference_type(result.author) in author_types):
        resource[author_element] = {"reference": result.author}


def _reference_type(reference: str) -> str | None:
    """The resource type a relative or absolute reference names (``Organization/1`` -> Organization)."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else None


def careplan_r4(result: ApplyResult, id_factory: Callable[[], str] = new_id) -> Json:
    """R4 PlanDefinition/$apply: a CarePlan whose activity references the contained RequestGroup."""
    issues = list(result.issues)
    contained = _Contained()
    actions = _request_actions(result.actions, contained, result, lambda r: f"#{r['id']}")
    canonical = canonical_of(result.plan)
    group = _request(result, "RequestGroup", "request-group", actions)
    careplan: Json = {
        "resourceType": "CarePlan",
        "id": id_factory(),
        "meta": {"profile": [CPG_CAREPLAN]},
        "contained": [group, *contained.resources],
        "instantiatesCanonical": [canonical],
        "status": "draft",
        "intent": "proposal",
        "category": [{"text": result.plan.get("title", "Care plan")}],
        "title": result.plan.get("title", "Care plan"),
        "subject": {"reference": result.subject},
        "created": _instant(result.now),
        "activity": [{"reference": {"reference": "#request-group"}}],
    }
    _context(careplan, result, "author")
    outcome = _outcome(issues, "outcome")
    if outcome is not None:
        careplan["contained"].append(outcome)
        careplan["extension"] = [{"url": CQF_MESSAGES, "valueReference": {"reference": "#outcome"}}]
    return careplan


def _related_artifact_r5(artifact: Json) -> Json:
    """R5 RelatedArtifact: the url moved into document.url."""
    out = {k: v for k, v in artifact.items() if k != "url"}
    if artifact.get("url"):
        out["document"] = {"url": artifact["url"]}
    return out


def _action_r5(action: Json) -> Json:
    """An R4 RequestGroup action as an R5 RequestOrchestration action."""
    out = {k: v for k, v in action.items() if k not in ("relatedAction", "timingDateTime", "timingPeriod", "action", "documentation")}
    if "id" in action:
        out["linkId"] = action["id"]
    if action.get("documentation"):
        out["documentation"] = [_related_artifact_r5(d) for d in action["documentation"]]
    if action.get("relatedAction"):
        out["relatedAction"] = [{("targetId" if k == "actionId" else k): v for k, v in rel.items()} for rel in action["relatedAction"]]
    if action.get("action"):
        out["action"] = [_action_r5(child) for child in action["action"]]
    return out


def bundle_r5(result: ApplyResult, id_factory: Callable[[], str] = new_id) -> Json:
    """R5 PlanDefinition/$apply: a Bundle whose first entry is the RequestOrchestration, then the requests and a CarePlan."""
    issues = list(result.issues)
    contained = _Contained()
    urls: dict[str, str] = {}

    def reference(resource: Json) -> str:
        return urls.setdefault(resource["id"], f"urn:uuid:{uuid.uuid4()}")

    actions = [_action_r5(a) for a in _request_actions(result.actions, contained, result, reference)]
    canonical = canonical_of(result.plan)
    orchestration_url = f"urn:uuid:{uuid.uuid4()}"
    orchestration = _request(result, "RequestOrchestration", id_factory(), actions)
    careplan: Json = {
        "resourceType": "CarePlan",
        "id": id_factory(),
        "instantiatesCanonical": [canonical],
        "status": "draft",
        "intent": "proposal",
        "title": result.plan.get("title", "Care plan"),
        "subject": {"reference": result.subject},
        "created": _instant(result.now),
        "activity": [{"plannedActivityReference": {"reference": orchestration_url}}],
    }
    _context(careplan, result, "custodian")
    entries = [{"fullUrl": orchestration_url, "resource": orchestration}]
    for resource in contained.resources:
        entries.append({"fullUrl": urls[resource["id"]], "resource": _request_r5(resource)})
    entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": careplan})
    outcome = _outcome(issues, id_factory())
    if outcome is not None:
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": outcome})
    return {"resourceType": "Bundle", "id": id_factory(), "type": "collection", "timestamp": _instant(result.now), "entry": entries}


def _request_r5(resource: Json) -> Json:
    """The few R4 request elements that changed shape in R5."""
    out = copy_json(resource)
    if out.get("resourceType") == "MedicationRequest":
        for key in ("medicationCodeableConcept", "medicationReference"):
            if key in out:
                out["medication"] = {"concept" if key.endswith("Concept") else "reference": out.pop(key)}
        out.pop("instantiatesCanonical", None)
        for dosage in out.get("dosageInstruction") or []:
            if isinstance(dosage.get("maxDosePerPeriod"), dict):
                dosage["maxDosePerPeriod"] = [dosage["maxDosePerPeriod"]]
    if out.get("resourceType") == "CommunicationRequest":
        out.setdefault("intent", "proposal")
    if out.get("resourceType") == "ServiceRequest":
        if "code" in out:
            out["code"] = {"concept": out["code"]}
        if isinstance(out.get("patientInstruction"), str):
            out["patientInstruction"] = [{"instructionMarkdown": out["patientInstruction"]}]
    return out
