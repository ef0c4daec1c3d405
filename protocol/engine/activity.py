"""The request an ActivityDefinition describes, before its dynamicValues: what ActivityDefinition/$apply starts from.

One builder per kind maps the definition's elements onto the request (R4 4.0.1): code, product and
dosage, timing, quantity, body site, priority, doNotPerform. Subject, encounter and requester come from
the $apply context; status is draft and intent is the definition's (proposal for the CPG activity profiles).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from protocol.engine.jsondata import copy_json

Json = dict[str, Any]


class UnsupportedKind(ValueError):
    """An ActivityDefinition kind this engine cannot turn into a request."""


@dataclass(frozen=True)
class RequestContext:
    """Who and when: the references the generated request carries."""

    subject: str | None
    encounter: str | None
    practitioner: str | None
    authored: str


def _timing(definition: Mapping[str, Any], prefix: str, out: Json) -> None:
    for key, value in definition.items():
        if key.startswith("timing") and key != "timing":
            out[prefix + key[len("timing"):]] = copy_json(value)


def _copy(definition: Mapping[str, Any], out: Json, *pairs: tuple[str, str]) -> None:
    for source, target in pairs:
        if source in definition:
            out[target] = copy_json(definition[source])


def _service_request(definition: Mapping[str, Any], out: Json) -> None:
    _copy(definition, out, ("code", "code"), ("priority", "priority"), ("doNotPerform", "doNotPerform"), ("bodySite", "bodySite"),
          ("quantity", "quantityQuantity"))
    _timing(definition, "occurrence", out)


def _medication_request(definition: Mapping[str, Any], out: Json) -> None:
    for key, value in definition.items():
        if key.startswith("product"):
            out["medication" + key[len("product"):]] = copy_json(value)
    _copy(definition, out, ("priority", "priority"), ("doNotPerform", "doNotPerform"), ("dosage", "dosageInstruction"))
    if "quantity" in definition:
        out.setdefault("dispenseRequest", {})["quantity"] = copy_json(definition["quantity"])


def _communication_request(definition: Mapping[str, Any], out: Json) -> None:
    if "code" in definition:
        out["category"] = [copy_json(definition["code"])]
    text = (definition.get("code") or {}).get("text") or definition.get("description")
    if text:
        out["payload"] = [{"contentString": text}]
    _copy(definition, out, ("priority", "priority"), ("doNotPerform", "doNotPerform"))
    _timing(definition, "occurrence", out)


def _device_request(definition: Mapping[str, Any], out: Json) -> None:
    if "code" in definition:
        out["codeCodeableConcept"] = copy_json(definition["code"])
    _copy(definition, out, ("priority", "priority"))
    _timing(definition, "occurrence", out)


def _task(definition: Mapping[str, Any], out: Json) -> None:
    _copy(definition, out, ("code", "code"), ("priority", "priority"))
    out["status"] = "draft"


BUILDERS: dict[str, Callable[[Mapping[str, Any], Json], None]] = {
    "ServiceRequest": _service_request,
    "MedicationRequest": _medication_request,
    "CommunicationRequest": _communication_request,
    "DeviceRequest": _device_request,
    "Task": _task,
}

SUBJECT_ELEMENT = {"Task": "for"}
#: R4 requests that have no intent and no instantiatesCanonical element.
WITHOUT_INTENT = {"CommunicationRequest"}


def new_request(definition: Mapping[str, Any], context: RequestContext) -> Json:
    """The request of the definition's kind, with the definition's static elements and the context."""
    kind = definition.get("kind")
    builder = BUILDERS.get(kind)
    if builder is None:
        raise UnsupportedKind(f"ActivityDefinition kind {kind!r} is not supported (supported: {', '.join(BUILDERS)})")
    out: Json = {"resourceType": kind}
    if definition.get("profile"):
        out["meta"] = {"profile": [definition["profile"]]}
    canonical = definition.get("url")
    if canonical and kind not in WITHOUT_INTENT:
        out["instantiatesCanonical"] = [f"{canonical}|{definition['version']}" if definition.get("version") else canonical]
    out["status"] = "draft"
    if kind not in WITHOUT_INTENT:
        out["intent"] = definition.get("intent", "proposal")
    builder(definition, out)
    if context.subject:
        out[SUBJECT_ELEMENT.get(kind, "subject")] = {"reference": context.subject}
    if context.encounter:
        out["encounter"] = {"reference": context.encounter}
    out["authoredOn"] = context.authored
    if context.practitioner:
        out["requester"] = {"reference": context.practitioner}
    return out


def drop_unreferenced_contained(resource: Json) -> None:
    """Remove contained resources that nothing in the resource refers to any more (invariant dom-3).

    A dynamicValue may replace the element that pointed at a contained resource (a corrected order that
    names another product drops its ``medicationReference`` to ``#med``); the contained copy must go with it.
    """
    contained = resource.get("contained")
    if not isinstance(contained, list) or not contained:
        return
    used: set[str] = set()
    stack: list[Any] = [value for key, value in resource.items() if key != "contained"]
    stack.extend(contained)
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            ref = value.get("reference")
            if isinstance(ref, str) and ref.startswith("#"):
                used.add(ref[1:])
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    kept = [c for c in contained if not isinstance(c, dict) or c.get("id") in used]
    if kept:
        resource["contained"] = kept
    else:
        resource.pop("contained")
