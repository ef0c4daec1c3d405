"""The protocol's FHIR face under ``/fhir``: read and search of the artifacts, $apply, $expand, metadata.

The same engine as the CDS Hooks path answers ``PlanDefinition/$apply`` (R4: the CarePlan) and
``PlanDefinition/$r5.apply`` (R5: a Parameters whose ``return`` is the Bundle, as the reference
implementation names it), and ``ActivityDefinition/$apply``. ``ValueSet/$expand`` answers from the shipped
expansion. Everything is ``application/fhir+json``; errors are OperationOutcomes. The endpoints are
authenticated like the CDS Hooks ones.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request

from protocol.content import TYPE_ORDER
from protocol.engine import ApplyError, Deadline
from protocol.output import bundle_r5, careplan_r4
from service.errors import BadRequest, NotFound, ServiceError
from service.hook_request import read_json_body
from service.hooks import bounded_work_error

bp = Blueprint("fhir", __name__, url_prefix="/fhir")
FHIR_JSON = "application/fhir+json"
SEARCH_PARAMETERS = ("_id", "url", "version", "name", "status", "title")
IGNORED_PARAMETERS = ("_format", "_pretty", "_summary", "_count")


def _state() -> Any:
    return current_app.extensions["back_spasm_cds"]


def fhir(resource: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(resource), status=status, mimetype=FHIR_JSON)


@bp.before_request
def authenticate() -> None:
    """The FHIR endpoints take the same CDS client JWT as the CDS Hooks ones (aud = the URL called)."""
    state = _state()
    base = state.settings.public_base_url or request.host_url
    g.client = state.auth.authenticate(request.headers.get("Authorization"), base.rstrip("/") + request.path)


@bp.after_request
def _fhir_errors(response: Response) -> Response:
    if response.status_code >= 400 and response.mimetype == "application/json":
        response.mimetype = FHIR_JSON
    return response


# -- metadata -----------------------------------------------------------------------------------------------

def _resource_types() -> list[str]:
    present = {r["resourceType"] for r in _state().engine.content.resources}
    return [t for t in TYPE_ORDER if t in present]


@bp.get("/metadata")
def metadata() -> Response:
    """The CapabilityStatement: exactly what this endpoint supports."""
    content = _state().engine.content
    pub = content.publication
    base = (_state().settings.public_base_url or request.host_url).rstrip("/") + "/fhir"
    search = [{"name": name, "type": "token" if name in ("_id", "status") else ("uri" if name == "url" else "string"),
               "documentation": f"exact match on {name.lstrip('_')}"} for name in SEARCH_PARAMETERS]
    resources = []
    for rtype in _resource_types():
        entry: dict[str, Any] = {"type": rtype, "interaction": [{"code": "read"}, {"code": "search-type"}], "searchParam": search,
                                 "versioning": "no-version", "readHistory": False, "updateCreate": False}
        operations = {"PlanDefinition": [("apply", "http://hl7.org/fhir/OperationDefinition/PlanDefinition-apply"),
                                         ("r5.apply", "http://hl7.org/fhir/uv/cpg/OperationDefinition/cpg-plandefinition-apply")],
                      "ActivityDefinition": [("apply", "http://hl7.org/fhir/OperationDefinition/ActivityDefinition-apply")],
                      "ValueSet": [("expand", "http://hl7.org/fhir/OperationDefinition/ValueSet-expand")]}.get(rtype)
        if operations:
            entry["operation"] = [{"name": name, "definition": definition} for name, definition in operations]
        resources.append(entry)
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": pub["date"],
        "publisher": pub["publisher"],
        "kind": "instance",
        "software": {"name": "back-spasm-cds", "version": pub["version"]},
        "implementation": {"description": f"{pub['title']}: knowledge artifacts and $apply", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{"mode": "server", "documentation": "Read-only knowledge repository of the protocol, with $apply and $expand.",
                  "security": {"description": "Bearer JWT of a trusted CDS client (CDS Hooks 2.0), aud = the URL called."},
                  "resource": resources}],
    }
    return fhir(statement)


# -- read and search --------------------------------------------------------------------------------------------

def _artifact(rtype: str, rid: str) -> dict[str, Any]:
    if rtype not in _resource_types():
        raise NotFound(f"resource type {rtype} is not served here (see /fhir/metadata)")
    resource = _state().engine.content.get(rtype, rid)
    if resource is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    return resource


@bp.get("/<rtype>/<rid>")
def read(rtype: str, rid: str) -> Response:
    """Read one artifact."""
    return fhir(_artifact(rtype, rid))


@bp.get("/<rtype>")
def search(rtype: str) -> Response:
    """Search the artifacts of a type by _id, url, version, name, title or status (exact match; several values OR'ed by comma)."""
    if rtype not in _resource_types():
        raise NotFound(f"resource type {rtype} is not served here (see /fhir/metadata)")
    unknown = sorted(k for k in request.args if k not in SEARCH_PARAMETERS and k not in IGNORED_PARAMETERS)
    if unknown:
        raise BadRequest(f"unsupported search parameter(s): {', '.join(unknown)}",
                         details=[f"supported: {', '.join(SEARCH_PARAMETERS)}"])
    matches = []
    for resource in _state().engine.content.of_type(rtype):
        if all(_matches(resource, name, request.args.getlist(name)) for name in SEARCH_PARAMETERS if name in request.args):
            matches.append(resource)
    base = (_state().settings.public_base_url or request.host_url).rstrip("/") + "/fhir"
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
              "link": [{"relation": "self", "url": request.url}],
              "entry": [{"fullUrl": f"{base}/{rtype}/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in matches]}
    return fhir(bundle)


def _matches(resource: dict[str, Any], name: str, values: list[str]) -> bool:
    field = "id" if name == "_id" else name
    wanted = {v for value in values for v in value.split(",")}
    if name == "url":
        wanted |= {v.split("|")[0] for v in wanted}
    return str(resource.get(field)) in wanted


# -- operations ----------------------------------------------------------------------------------------------------

def _parameters() -> dict[str, list[Any]]:
    """The Parameters body of an operation call: each parameter's values by name (a resource, a value[x], or a dict
    of its parts). A body that is not a Parameters, or a parameter without a name, is a 400 naming it."""
    if not request.content_length and not request.headers.get("Transfer-Encoding"):
        return {}
    body = read_json_body(request)
    if body.get("resourceType") != "Parameters":
        raise BadRequest("the body of an operation must be a Parameters resource")
    entries = body.get("parameter") or []
    if not isinstance(entries, list):
        raise BadRequest("Parameters.parameter must be an array")
    found: dict[str, list[Any]] = {}
    for i, parameter in enumerate(entries):
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str) or not parameter["name"]:
            raise BadRequest(f"Parameters.parameter[{i}] must be an object with a name")
        found.setdefault(parameter["name"], []).append(_parameter_value(parameter, f"parameter {parameter['name']}"))
    return found


def _parameter_value(parameter: dict[str, Any], where: str) -> Any:
    """A parameter's resource, its value[x] (the JSON value with its type name), or its parts by name."""
    if "resource" in parameter:
        resource = parameter["resource"]
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise BadRequest(f"{where}: resource must be a FHIR resource")
        return resource
    values = [(k[len("value"):], v) for k, v in parameter.items() if k.startswith("value") and len(k) > len("value")]
    if len(values) > 1:
        raise BadRequest(f"{where} has more than one value[x]")
    if values:
        return Value(*values[0])
    parts = parameter.get("part")
    if parts is None:
        return None
    if not isinstance(parts, list) or not all(isinstance(p, dict) and isinstance(p.get("name"), str) for p in parts):
        raise BadRequest(f"{where}: part must be an array of named parameters")
    return {p["name"]: _parameter_value(p, f"{where}.{p['name']}") for p in parts}


class Value:
    """A parameter's value[x]: its FHIR type (the key's suffix, e.g. ``String``) and the JSON value."""

    def __init__(self, type_name: str, value: Any):
        self.type_name = type_name
        self.value = value


def _one(parameters: dict[str, list[Any]], name: str) -> Any:
    """The single value of a parameter (from the body, else the query string); given twice is a 400."""
    values = parameters.get(name) or []
    if len(values) > 1 or (not values and len(request.args.getlist(name)) > 1):
        raise BadRequest(f"parameter {name} is given more than once")
    return values[0] if values else request.args.get(name)


def _text(parameters: dict[str, list[Any]], name: str, *types: str) -> str | None:
    """A parameter whose value is text: a value[x] of one of ``types`` (string-like) or a query string value."""
    value = _one(parameters, name)
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, Value) and value.type_name in types and isinstance(value.value, str):
        return value.value or None
    raise BadRequest(f"parameter {name} must be a {' or '.join(t[0].lower() + t[1:] for t in types)}")


def _reference(parameters: dict[str, list[Any]], name: str) -> str | None:
    """A parameter naming a resource: a string (``Patient/123``) or a valueReference with a reference."""
    value = _one(parameters, name)
    if isinstance(value, Value) and value.type_name == "Reference":
        value = value.value.get("reference") if isinstance(value.value, dict) else None
        if not isinstance(value, str) or not value:
            raise BadRequest(f"parameter {name} must be a reference such as Patient/123")
        return value
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, Value) and value.type_name in ("String", "Id", "Uri") and isinstance(value.value, str):
        return value.value or None
    raise BadRequest(f"parameter {name} must be a reference such as Patient/123")


def _integer(parameters: dict[str, list[Any]], name: str) -> int | None:
    """A parameter whose value is a non-negative integer: valueInteger (a JSON integer) or digits in the query string."""
    value = _one(parameters, name)
    if value is None:
        return None
    if isinstance(value, Value) and value.type_name in ("Integer", "UnsignedInt", "PositiveInt") and type(value.value) is int:
        number = value.value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        number = int(value)
    else:
        raise BadRequest(f"parameter {name} must be a non-negative integer")
    if number < 0:
        raise BadRequest(f"parameter {name} must be a non-negative integer")
    return number


def _resource(parameters: dict[str, list[Any]], name: str, rtype: str) -> dict[str, Any] | None:
    value = _one(parameters, name)
    if value is None:
        return None
    if not (isinstance(value, dict) and value.get("resourceType") == rtype):
        raise BadRequest(f"parameter {name} must be a {rtype} resource")
    return value


def _apply_inputs(parameters: dict[str, list[Any]]) -> dict[str, Any]:
    subject = _reference(parameters, "subject")
    if subject is None:
        raise BadRequest("subject is required (for example Patient/123)")
    data = _resource(parameters, "data", "Bundle")
    inner = _resource(parameters, "parameters", "Parameters")
    extra: dict[str, Any] = {}
    entries = (inner or {}).get("parameter") or []
    if not isinstance(entries, list):
        raise BadRequest("parameters: Parameters.parameter must be an array")
    for parameter in entries:
        if isinstance(parameter, dict) and isinstance(parameter.get("name"), str) and isinstance(parameter.get("resource"), dict):
            if parameter["name"] == "draftOrders":
                extra.setdefault("draftOrders", []).append(parameter["resource"])
            else:
                extra[parameter["name"]] = parameter["resource"]
    return {"subject": subject, "data": [data] if data else [], "encounter": _reference(parameters, "encounter"),
            "practitioner": _reference(parameters, "practitioner"), "organization": _reference(parameters, "organization"),
            "parameters": extra}


def _plan_reference(rid: str | None, parameters: dict[str, Any]) -> str:
    if rid:
        _artifact("PlanDefinition", rid)
        return rid
    url = _text(parameters, "url", "Uri", "Canonical", "Url", "String")
    if not url:
        raise BadRequest("give the PlanDefinition: PlanDefinition/{id}/$apply, or the url parameter")
    version = _text(parameters, "version", "String")
    return f"{url}|{version}" if version else url


def _now() -> datetime:
    return _state().clock()


def _bounds() -> dict[str, Any]:
    """The bounds of one $apply's work from the settings (max_resources, apply_time_limit from now)."""
    settings = _state().settings
    return {"max_resources": settings.max_resources, "deadline": Deadline.after(settings.apply_time_limit)}


def _apply(rid: str | None, r5: bool) -> Response:
    parameters = _parameters()
    reference = _plan_reference(rid, parameters)
    inputs = _apply_inputs(parameters)
    try:
        result = _state().engine.apply(reference, inputs["data"], _now(), inputs["subject"], encounter=inputs["encounter"],
                                       practitioner=inputs["practitioner"], organization=inputs["organization"], parameters=inputs["parameters"],
                                       **_bounds())
    except ApplyError as exc:
        raise bounded_work_error(exc, _state().settings) or BadRequest(str(exc)) from None
    if r5:
        return fhir({"resourceType": "Parameters", "parameter": [{"name": "return", "resource": bundle_r5(result)}]})
    return fhir(careplan_r4(result))


@bp.post("/PlanDefinition/<rid>/$apply")
def apply_instance(rid: str) -> Response:
    """R4 PlanDefinition/$apply on one PlanDefinition: the CarePlan."""
    return _apply(rid, r5=False)


@bp.post("/PlanDefinition/$apply")
def apply_type() -> Response:
    """R4 PlanDefinition/$apply with the url (and version) parameter."""
    return _apply(None, r5=False)


@bp.post("/PlanDefinition/<rid>/$r5.apply")
def apply_r5_instance(rid: str) -> Response:
    """R5-style $apply: Parameters whose return is the Bundle with the RequestOrchestration first."""
    return _apply(rid, r5=True)


@bp.post("/PlanDefinition/$r5.apply")
def apply_r5_type() -> Response:
    return _apply(None, r5=True)


@bp.post("/ActivityDefinition/<rid>/$apply")
def apply_activity(rid: str) -> Response:
    """ActivityDefinition/$apply: the request resource."""
    _artifact("ActivityDefinition", rid)
    inputs = _apply_inputs(_parameters())
    try:
        resource, issues = _state().engine.apply_activity(rid, inputs["data"], _now(), inputs["subject"], encounter=inputs["encounter"],
                                                          practitioner=inputs["practitioner"], parameters=inputs["parameters"], **_bounds())
    except ApplyError as exc:
        raise bounded_work_error(exc, _state().settings) or BadRequest(str(exc)) from None
    if resource is None:
        raise ServiceError("the ActivityDefinition produced no resource", status=422, details=[i.diagnostics for i in issues])
    return fhir(resource)


@bp.route("/ValueSet/<rid>/$expand", methods=["GET", "POST"])
def expand(rid: str) -> Response:
    """ValueSet/$expand from the shipped expansion (offset and count page through it; filter matches code or display)."""
    valueset = copy.deepcopy(_artifact("ValueSet", rid))
    expansion = valueset.get("expansion") or {}
    contains = list(expansion.get("contains") or [])
    parameters = _parameters() if request.method == "POST" else {}
    text = _text(parameters, "filter", "String")
    if text:
        needle = text.lower()
        contains = [c for c in contains if needle in str(c.get("code", "")).lower() or needle in str(c.get("display", "")).lower()]
    offset = _integer(parameters, "offset") or 0
    count = _integer(parameters, "count")
    page = contains[offset: offset + count if count is not None else None]
    expansion = dict(expansion, total=len(contains), contains=page)
    if offset:
        expansion["offset"] = offset
    if text:
        expansion["parameter"] = [{"name": "filter", "valueString": text}]
    valueset["expansion"] = expansion
    if not page:
        expansion.pop("contains")
    return fhir(valueset)
