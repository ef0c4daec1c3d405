"""Reading a CDS Hooks request: parse, check what the hook requires, and normalise what clients get wrong.

A request that cannot be used gets a 400 naming every problem found (415 when it is not sent as JSON).
Unknown fields are ignored. Draft orders built by clients are normalised rather than rejected: an element
that FHIR R4 defines as a list but arrives as a single object (the CDS Hooks Sandbox sends
``MedicationRequest.category`` and ``reasonCode`` that way) is wrapped in a list, and a ``draftOrders``
Bundle without ``type`` is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from protocol.engine.jsondata import JsonShapeError, check_shape
from protocol.engine.paths import element_info
from service.errors import BadRequest, UnsupportedMediaType
from service.urls import BadBaseUrl, fhir_base

#: Context fields each hook requires (CDS Hooks library, STU1 1.0.1), and their JSON types.
HOOK_CONTEXT: dict[str, dict[str, type]] = {
    "patient-view": {"userId": str, "patientId": str},
    "order-select": {"userId": str, "patientId": str, "selections": list, "draftOrders": dict},
    "order-sign": {"userId": str, "patientId": str, "draftOrders": dict},
}
OPTIONAL_CONTEXT: dict[str, type] = {"encounterId": str}
#: Media types of a JSON request body (CDS Hooks sends application/json; FHIR operations may say fhir+json).
JSON_TYPES = ("application/json", "application/fhir+json")
#: The longest hookInstance or userId accepted: they are logged and stored, and a UUID or a reference is far shorter.
MAX_ID_LENGTH = 256
#: Context fields that name a resource by its FHIR id; prefetch queries are built from them.
ID_CONTEXT = ("patientId", "encounterId")
FHIR_ID = re.compile(r"(?!\.+\Z)[A-Za-z0-9\-.]{1,64}")
#: JSON that parses but is beyond what is accepted (orjson's messages), with what to tell the client.
JSON_LIMITS = {"depth limit exceeded": "nested too deeply", "number is infinity when parsed as double": "a number is beyond the 64-bit range"}


def read_json_body(request: Any) -> dict[str, Any]:
    """The JSON object a request carries: 415 unless its Content-Type is JSON (a ``text/plain`` POST is what a web
    page can send without a CORS preflight), then as ``parse_body``."""
    if request.mimetype not in JSON_TYPES:
        raise UnsupportedMediaType(f"the request body must be sent as application/json (got {request.mimetype or 'no Content-Type'})")
    return parse_body(request.get_data(cache=False))


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body: 400 if it is not JSON or not an object, is nested too deeply or holds a
    number that is not finite or beyond 64 bits (orjson would read a longer integer as a float)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if exc.msg in JSON_LIMITS or raw[exc.pos:exc.pos + 9].lstrip(b"-").startswith((b"NaN", b"Infinity")):
            limit = JSON_LIMITS.get(exc.msg, "NaN and Infinity are not JSON numbers")
            raise BadRequest(f"the request body cannot be accepted: {limit} (at position {exc.pos})") from None
        raise BadRequest(f"the request body is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        check_shape(body)
    except JsonShapeError as exc:
        raise BadRequest(f"the request body cannot be accepted: {exc}") from None
    return body


def check_hook_request(body: Mapping[str, Any], hook: str) -> None:
    """Every field the hook needs, with the right type; fhirAuthorization only with fhirServer (400 listing all problems)."""
    problems: list[str] = []
    if body.get("hook") != hook:
        problems.append(f"hook must be '{hook}' for this service (got {body.get('hook')!r})")
    if not isinstance(body.get("hookInstance"), str) or not body.get("hookInstance"):
        problems.append("hookInstance is required (a string, the UUID of this invocation)")
    elif len(body["hookInstance"]) > MAX_ID_LENGTH:
        problems.append(f"hookInstance must be at most {MAX_ID_LENGTH} characters (a UUID is 36)")
    context = body.get("context")
    if not isinstance(context, Mapping):
        problems.append("context is required (an object)")
    else:
        for name, kind in HOOK_CONTEXT.get(hook, {}).items():
            value = context.get(name)
            if value is None or value == "":
                problems.append(f"context.{name} is required for {hook}")
            elif not isinstance(value, kind):
                problems.append(f"context.{name} must be {'a string' if kind is str else 'an array' if kind is list else 'an object'}")
        for name, kind in OPTIONAL_CONTEXT.items():
            if name in context and not isinstance(context[name], kind):
                problems.append(f"context.{name} must be a string")
        if isinstance(context.get("userId"), str) and len(context["userId"]) > MAX_ID_LENGTH:
            problems.append(f"context.userId must be at most {MAX_ID_LENGTH} characters")
        for name in ID_CONTEXT:
            value = context.get(name)
            if isinstance(value, str) and value and not FHIR_ID.fullmatch(value):
                problems.append(f"context.{name} must be a FHIR id (1 to 64 letters, digits, '-' or '.')")
        if isinstance(context.get("selections"), list) and not all(isinstance(s, str) for s in context["selections"]):
            problems.append("context.selections must be an array of strings (references such as MedicationRequest/123)")
        orders = context.get("draftOrders")
        if isinstance(orders, Mapping):
            if orders.get("resourceType") != "Bundle":
                problems.append("context.draftOrders must be a Bundle")
            elif not isinstance(orders.get("entry", []), list):
                problems.append("context.draftOrders.entry must be an array")
    server = body.get("fhirServer")
    if server is not None:
        problem = _base_url_problem(server)
        if problem:
            problems.append(problem)
    authorization = body.get("fhirAuthorization")
    if authorization is not None:
        if not isinstance(authorization, Mapping):
            problems.append("fhirAuthorization must be an object")
        else:
            if server is None:
                problems.append("fhirAuthorization requires fhirServer")
            if not isinstance(authorization.get("access_token"), str) or not authorization.get("access_token"):
                problems.append("fhirAuthorization.access_token is required")
            if str(authorization.get("token_type", "Bearer")).lower() != "bearer":
                problems.append("fhirAuthorization.token_type must be Bearer")
    prefetch = body.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, Mapping):
        problems.append("prefetch must be an object")
    elif isinstance(prefetch, Mapping):
        for key, value in prefetch.items():
            if value is not None and not (isinstance(value, Mapping) and isinstance(value.get("resourceType"), str)):
                problems.append(f"prefetch.{key} must be a FHIR resource or null")
    if problems:
        raise BadRequest(f"invalid {hook} request", details=problems)


def _base_url_problem(value: Any) -> str | None:
    """Why a fhirServer cannot be used as a FHIR base URL, or None."""
    if not isinstance(value, str):
        return "fhirServer must be an http(s) URL"
    try:
        fhir_base(value)
    except BadBaseUrl as exc:
        return str(exc)
    return None


def normalise_resource(value: Any, model: str | None = None) -> Any:
    """A resource with every list element that arrived as a single value wrapped in a list (recursively)."""
    if isinstance(value, list):
        return [normalise_resource(item, model) for item in value]
    if not isinstance(value, dict):
        return value
    model = value.get("resourceType") if isinstance(value.get("resourceType"), str) else model
    if model is None:
        return value
    out = {}
    for key, item in value.items():
        info = element_info(model, key) if key not in ("resourceType", "contained") else None
        if key == "contained" and isinstance(item, (list, dict)):
            out[key] = [normalise_resource(r) for r in (item if isinstance(item, list) else [item])]
            continue
        if info is None:
            out[key] = item
            continue
        child_model, repeats = info
        if repeats and isinstance(item, dict):
            item = [item]
        out[key] = normalise_resource(item, child_model) if isinstance(item, (dict, list)) else item
    return out


def normalise_request(body: dict[str, Any]) -> dict[str, Any]:
    """The request with its draft orders normalised (see the module docstring)."""
    context = body.get("context")
    if isinstance(context, dict) and isinstance(context.get("draftOrders"), dict):
        orders = dict(context["draftOrders"])
        orders.setdefault("type", "collection")
        orders["entry"] = [dict(e, resource=normalise_resource(e["resource"])) if isinstance(e, Mapping) and isinstance(e.get("resource"), dict) else e
                           for e in orders.get("entry") or []]
        body = dict(body, context=dict(context, draftOrders=orders))
    return body
