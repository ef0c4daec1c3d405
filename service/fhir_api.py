"""The protocol's FHIR face under ``/fhir``: read and search of the artifacts, $apply, $expand, $data-requirements,
$package, metadata.

The same engine as the CDS Hooks path answers ``PlanDefinition/$apply`` (R4: the CarePlan) and
``PlanDefinition/$r5.apply`` (R5: a Parameters whose ``return`` is the Bundle, as the reference
implementation names it), and ``ActivityDefinition/$apply``. ``ValueSet/$expand`` answers from the shipped
expansion, by id or by canonical URL. Everything is ``application/fhir+json``; errors are OperationOutcomes. The
endpoints are authenticated like the CDS Hooks ones.

REST as FHIR R4 servers do it: searches take ``_count`` (pages linked by ``next``), ``_offset`` and ``_summary``;
string parameters match the start of the value ignoring case and accents (``:exact``, ``:contains``), tokens and
URIs match exactly; operations whose parameters are all primitive may be called with GET. Every parameter the
service does not support, and every bad value, is a 400 naming it, so a client never gets an answer to a question
it did not ask (``Prefer: handling=lenient`` lets a search skip parameters it does not know, as the spec allows).
"""

from __future__ import annotations

import copy
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from fhir.resources.R4B import get_fhir_model_class
from flask import Blueprint, Response, current_app, g, request
from werkzeug.datastructures import MultiDict

from protocol.engine.apply import ApplyError, Deadline
from protocol.engine.content import TYPE_ORDER
from protocol.engine.output import bundle_r5, careplan_r4
from protocol.engine.parameters import ApplyParameters, ParameterError, PrefetchData
from protocol.engine.requirements import module_definition, package_bundle
from service.cds_hooks.hook_request import read_json_body
from service.cds_hooks.hooks import bounded_work_error
from service.errors import BadRequest, NotFound, ServiceError

bp = Blueprint("fhir", __name__, url_prefix="/fhir")
FHIR_JSON = "application/fhir+json"
#: Parameters of every interaction (the format is always JSON, and always compact).
FORMAT_PARAMETERS = ("_format", "_pretty")
PUBLICATION_STATUS = "http://hl7.org/fhir/publication-status"
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "Resource encoded in summary mode"}
SUMMARY_MODES = ("true", "text", "data", "count", "false")


def _state() -> Any:
    return current_app.extensions["back_spasm_cds"]


def fhir(resource: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(resource), status=status, mimetype=FHIR_JSON)


def _base() -> str:
    """This FHIR endpoint's base URL: the configured public URL, else (development) the request's host."""
    return (_state().settings.public_base_url or request.host_url).rstrip("/") + "/fhir"


@bp.before_request
def authenticate() -> None:
    """The FHIR endpoints take the same CDS client JWT as the CDS Hooks ones (aud = the URL called)."""
    state = _state()
    base = state.settings.public_base_url or request.host_url
    g.client, g.tenant = state.auth.accept(request.headers.get("Authorization"), base.rstrip("/") + request.path)


@bp.after_request
def _fhir_errors(response: Response) -> Response:
    if response.status_code >= 400 and response.mimetype == "application/json":
        response.mimetype = FHIR_JSON
    return response


# -- search parameters -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchParameter:
    """A search parameter of every artifact type: its FHIR type, the element it reads, its modifiers, what it does."""

    name: str
    type: str
    element: str
    modifiers: tuple[str, ...]
    documentation: str


STRING_SEARCH = ("matches when the {element} starts with the value, ignoring case and accents; :exact for the whole value "
                 "as written, :contains for the value anywhere; several values separated by commas match any")
SEARCH_PARAMETERS = {p.name: p for p in (
    SearchParameter("_id", "token", "id", ("not", "missing"), "the logical id, exactly; several ids separated by commas match any"),
    SearchParameter("url", "uri", "url", ("missing",), "the canonical URL, exactly; url|version also asks for that version"),
    SearchParameter("version", "token", "version", ("not", "missing"), "the business version, exactly"),
    SearchParameter("name", "string", "name", ("exact", "contains", "missing"), STRING_SEARCH.format(element="name")),
    SearchParameter("title", "string", "title", ("exact", "contains", "missing"), STRING_SEARCH.format(element="title")),
    SearchParameter("status", "token", "status", ("not", "missing"),
                    f"the publication status (draft, active, retired, unknown), exactly; also {PUBLICATION_STATUS}|code"),
)}
#: Result parameters of a search: page size, where the page starts, how much of each resource.
RESULT_PARAMETERS = ("_count", "_offset", "_summary")
#: The system a token search may name for an element of type code (its codes' system), by parameter.
TOKEN_SYSTEMS = {"status": PUBLICATION_STATUS}


@dataclass(frozen=True)
class Criterion:
    """One search parameter as asked: it matches a resource when any of its values does (``:not``: when none does)."""

    parameter: SearchParameter
    modifier: str | None
    values: tuple[str, ...]

    def matches(self, resource: dict[str, Any]) -> bool:
        field = resource.get(self.parameter.element)
        if self.modifier == "missing":
            return (field is None) == (self.values[0] == "true")
        if self.modifier == "not":
            return not any(self._value_matches(field, value, resource) for value in self.values)
        return any(self._value_matches(field, value, resource) for value in self.values)

    def _value_matches(self, field: Any, value: str, resource: dict[str, Any]) -> bool:
        if not isinstance(field, str):
            return False
        kind = self.parameter.type
        if kind == "string":
            return _string_matches(field, value, self.modifier)
        if kind == "uri":
            url, version = _split_once(value, "|")
            return field == _unescape(url) and (not version or resource.get("version") == _unescape(version))
        system, code = _split_once(value, "|")
        if code is None:
            return field == _unescape(value)
        return _unescape(system) == TOKEN_SYSTEMS.get(self.parameter.name, "") and field == _unescape(code)


def _string_matches(field: str, value: str, modifier: str | None) -> bool:
    """FHIR string search: the start of the field ignoring case and accents; ``exact``: equal; ``contains``: anywhere."""
    wanted = _unescape(value)
    if modifier == "exact":
        return field == wanted
    if modifier == "contains":
        return _folded(wanted) in _folded(field)
    return _folded(field).startswith(_folded(wanted))


def _folded(text: str) -> str:
    """Text as string search compares it: accents and other combining marks removed, case folded."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def _split_escaped(text: str, separator: str) -> list[str]:
    """``text`` split at each ``separator`` not escaped by a backslash (FHIR search escaping); escapes are kept."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _split_once(text: str, separator: str) -> tuple[str, str | None]:
    """``text`` split at its first unescaped ``separator``; None for the second part when there is none."""
    parts = _split_escaped(text, separator)
    return (parts[0], separator.join(parts[1:])) if len(parts) > 1 else (text, None)


def _unescape(text: str) -> str:
    r"""A search value with its backslash escapes (``\,``, ``\|``, ``\$``, ``\\``) resolved."""
    out, escaped = [], False
    for char in text:
        if escaped or char != "\\":
            out.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(out)


@dataclass
class SearchRequest:
    """A search as asked: its criteria (all must match), its page, how much of each resource to send, and the
    parameters applied in the order given (what the self and paging links repeat)."""

    criteria: list[Criterion]
    count: int | None
    offset: int
    summary: str | None
    applied: list[tuple[str, str]]


def _lenient() -> bool:
    """Whether the client asked, with ``Prefer: handling=lenient``, that unknown search parameters be skipped."""
    preferences = request.headers.get("Prefer", "")
    return any(p.strip().replace(" ", "") == "handling=lenient" for p in preferences.split(","))


def _search_request(args: MultiDict[str, str]) -> SearchRequest:
    """The search a query string asks for; a 400 naming every unsupported parameter or modifier and every bad value."""
    criteria: list[Criterion] = []
    applied: list[tuple[str, str]] = []
    unknown: list[str] = []
    for key, value in args.items(multi=True):
        name, colon, modifier = key.partition(":")
        if key in FORMAT_PARAMETERS:
            continue
        if key in RESULT_PARAMETERS:
            applied.append((key, value))
            continue
        parameter = SEARCH_PARAMETERS.get(name)
        if parameter is None:
            unknown.append(key)
            continue
        if colon and modifier not in parameter.modifiers:
            raise BadRequest(f"search parameter {key}: the modifier :{modifier} is not supported for {name} ({parameter.type})",
                             details=[f"{name} takes {', '.join(':' + m for m in parameter.modifiers)}"])
        if value == "":
            continue
        if modifier == "missing" and value not in ("true", "false"):
            raise BadRequest(f"search parameter {key} must be true or false")
        values = (value,) if modifier == "missing" else tuple(_split_escaped(value, ","))
        if any(v == "" for v in values):
            raise BadRequest(f"search parameter {key} has an empty value between commas")
        criteria.append(Criterion(parameter, modifier or None, values))
        applied.append((key, value))
    if unknown and not _lenient():
        raise BadRequest(f"unsupported search parameter(s): {', '.join(sorted(set(unknown)))}",
                         details=[f"supported: {', '.join(SEARCH_PARAMETERS)}, and {', '.join(RESULT_PARAMETERS)}",
                                  "send Prefer: handling=lenient to have unknown parameters skipped"])
    count = _result_number(args, "_count")
    offset = _result_number(args, "_offset") or 0
    return SearchRequest(criteria, count, offset, _summary_mode(args, search=True), applied)


def _single(args: MultiDict[str, str], name: str) -> str | None:
    """A parameter that may be given once; twice is a 400."""
    values = args.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"parameter {name} is given more than once")
    return values[0] if values else None


def _result_number(args: MultiDict[str, str], name: str) -> int | None:
    """``_count`` or ``_offset``: a non-negative whole number written in digits."""
    value = _single(args, name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise BadRequest(f"parameter {name} must be a non-negative integer")
    return int(value)


def _summary_mode(args: MultiDict[str, str], search: bool) -> str | None:
    """``_summary``: true, text, data, count (searches only) or false; None when not asked."""
    value = _single(args, "_summary")
    if value is None or value == "false":
        return None
    if value not in SUMMARY_MODES:
        raise BadRequest(f"parameter _summary must be one of {', '.join(SUMMARY_MODES)}")
    if value == "count" and not search:
        raise BadRequest("parameter _summary=count asks for the number of matches of a search; a read has one resource")
    return value


# -- _summary ------------------------------------------------------------------------------------------------------

@cache
def _elements(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """The summary elements and the mandatory elements of a resource type, from the R4B definitions (fhir.resources).

    R4B is the nearest to R4 that the library ships; for the knowledge and terminology resources served here, their
    ``isSummary`` flags and minimum cardinalities are R4's. A type the library does not know has none.
    """
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError):
        return frozenset({"id", "meta"}), frozenset()
    summary, mandatory = set(), set()
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        key = field.alias or name
        if extra.get("summary_element_property"):
            summary.add(key)
        if extra.get("element_required"):
            mandatory.add(key)
    return frozenset(summary), frozenset(mandatory)


def summarised(resource: dict[str, Any], mode: str | None) -> dict[str, Any]:
    """A resource as ``_summary`` asks: ``true`` its summary elements, ``text`` its text, id, meta and mandatory
    elements, ``data`` all but its text; marked SUBSETTED in ``meta.tag``, as the spec asks. None or ``count``: whole."""
    if mode in (None, "count"):
        return resource
    summary, mandatory = _elements(resource["resourceType"])
    if mode == "true":
        keep = summary | {"id", "meta"}
    elif mode == "text":
        keep = mandatory | {"id", "meta", "text"}
    else:
        keep = {k for k in resource if k != "text"}
    out = {k: v for k, v in resource.items() if k == "resourceType" or k in keep or (k.startswith("_") and k[1:] in keep)}
    meta = copy.deepcopy(resource.get("meta")) if isinstance(resource.get("meta"), dict) else {}
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    out["meta"] = meta
    return out


# -- metadata -----------------------------------------------------------------------------------------------

def _resource_types() -> list[str]:
    present = {r["resourceType"] for r in _state().engine.content.resources}
    return [t for t in TYPE_ORDER if t in present]


def _served(rtype: str) -> None:
    """404 unless this endpoint serves resources of the type."""
    if rtype not in _resource_types():
        raise NotFound(f"resource type {rtype} is not served here (see /fhir/metadata)")


SEARCH_DOCUMENTATION = (
    "Search with GET [type]?params. Several parameters must all match; comma-separated values of one parameter match any. "
    "_count=n gives pages of n entries linked by next, previous, first and last (_offset=k skips the first k matches); "
    "_count=0 and _summary=count give the total only. _summary=true sends the summary elements of each resource "
    "(the R4 isSummary elements, with id and meta), _summary=text its text, id, meta and mandatory elements, "
    "_summary=data all but its text; such resources are tagged SUBSETTED. A search parameter given without a value "
    "is skipped (_count, _offset and _summary need one). An unsupported parameter or modifier, and a bad value, is a 400 naming it "
    "(Prefer: handling=lenient skips unknown parameters; the self link shows what was applied).")


OPERATIONS_DIR = Path(__file__).parent / "operations"


@cache
def operation_definitions() -> dict[str, dict[str, Any]]:
    """The OperationDefinitions of the operations served here, by id (``service/operations/*.json``), without their url."""
    found = {}
    for path in sorted(OPERATIONS_DIR.glob("OperationDefinition-*.json")):
        resource = orjson.loads(path.read_bytes())
        found[resource["id"]] = resource
    return found


def _operation_definition(oid: str) -> dict[str, Any]:
    """One OperationDefinition as served: its url is its address on this endpoint."""
    return {**operation_definitions()[oid], "url": f"{_base()}/OperationDefinition/{oid}"}


@bp.get("/OperationDefinition/<oid>")
def read_operation_definition(oid: str) -> Response:
    """The definition of one operation of this endpoint, as the CapabilityStatement names it."""
    _only(request.args, [], "read")
    if oid not in operation_definitions():
        raise NotFound(f"OperationDefinition/{oid} is not known (see /fhir/metadata)")
    return fhir(_operation_definition(oid))


def _operations(rtype: str) -> list[dict[str, str]]:
    """The operations of a resource type, as the CapabilityStatement lists them, with how they may be called."""
    apply_doc = ("POST a Parameters body (subject, encounter, practitioner, organization; userType, userLanguage, "
                 "userTaskContext, setting, settingContext; data, a Bundle of the patient's record, or prefetchData; "
                 "parameters, a Parameters resource of named inputs such as draftOrders; useServerData=false), or GET with "
                 "the primitive parameters in the URL, which applies the plan to an empty record. On the type, url and "
                 "version name the definition. Any other parameter, and a parameter of the wrong type, is a 400 naming it; "
                 "the OperationDefinition says what each does.")
    requirements_doc = ("GET or POST, on one artifact, no parameters: a module-definition Library of every data requirement "
                        "(code filters by ValueSet, date filters) and of every artifact and code system it depends on; the "
                        "CDS Hooks prefetch templates are made from the same requirements.")
    operations = {
        "PlanDefinition": [("apply", "PlanDefinition-apply", apply_doc),
                           ("r5.apply", "PlanDefinition-r5-apply", apply_doc + " The answer is a Parameters whose return is the R5 Bundle."),
                           ("data-requirements", "data-requirements", requirements_doc),
                           ("package", "PlanDefinition-package",
                            "GET or POST, on one PlanDefinition, no parameters: a collection Bundle of the plan and every "
                            "artifact it depends on, each once (ValueSets with their expansions).")],
        "Library": [("data-requirements", "data-requirements", requirements_doc)],
        "ActivityDefinition": [("apply", "ActivityDefinition-apply", apply_doc)],
        "ValueSet": [("expand", "ValueSet-expand",
                      ("GET or POST, from the shipped expansion: ValueSet/{id}/$expand, or ValueSet/$expand with url "
                       "(and valueSetVersion); filter (code or display contains it, ignoring case), offset and count "
                       "page through it. Any other parameter is a 400."))],
    }
    return [{"name": name, "definition": f"{_base()}/OperationDefinition/{oid}", "documentation": doc}
            for name, oid, doc in operations.get(rtype, [])]


@bp.get("/metadata")
def metadata() -> Response:
    """The CapabilityStatement: exactly what this endpoint supports."""
    content = _state().engine.content
    pub = content.publication
    search = [{"name": p.name, "type": p.type,
               "documentation": p.documentation + (f"; modifiers {', '.join(':' + m for m in p.modifiers)}" if p.modifiers else "")}
              for p in SEARCH_PARAMETERS.values()]
    resources = []
    for rtype in _resource_types():
        entry: dict[str, Any] = {"type": rtype,
                                 "interaction": [{"code": "read", "documentation": "_summary=true, text, data or false"},
                                                 {"code": "search-type", "documentation": SEARCH_DOCUMENTATION}],
                                 "searchParam": search, "versioning": "no-version", "readHistory": False, "updateCreate": False}
        operations = _operations(rtype)
        if operations:
            entry["operation"] = operations
        resources.append(entry)
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": pub["date"],
        "publisher": pub["publisher"],
        "kind": "instance",
        "software": {"name": "back-spasm-cds", "version": pub["version"]},
        "implementation": {"description": f"{pub['title']}: knowledge artifacts and $apply", "url": _base()},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{"mode": "server", "documentation": "Read-only knowledge repository of the protocol, with $apply, $expand, $data-requirements and $package. "
                                                     + SEARCH_DOCUMENTATION,
                  "security": {"description": "Bearer JWT of a trusted CDS client (CDS Hooks 2.0), aud = the URL called."},
                  "resource": resources}],
    }
    return fhir(statement)


# -- read and search --------------------------------------------------------------------------------------------

def _artifact(rtype: str, rid: str) -> dict[str, Any]:
    _served(rtype)
    resource = _state().engine.content.get(rtype, rid)
    if resource is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    return resource


def _only(args: MultiDict[str, str], allowed: Iterable[str], what: str) -> None:
    """400 naming the query parameters an interaction does not take."""
    allowed = set(allowed) | set(FORMAT_PARAMETERS)
    unknown = sorted({k for k in args if k not in allowed})
    if unknown:
        raise BadRequest(f"unsupported parameter(s) of {what}: {', '.join(unknown)}",
                         details=[f"supported: {', '.join(sorted(allowed))}"])


@bp.get("/<rtype>/<rid>")
def read(rtype: str, rid: str) -> Response:
    """Read one artifact (``_summary`` as a search's, but ``count``)."""
    resource = _artifact(rtype, rid)
    _only(request.args, ["_summary"], "read")
    return fhir(summarised(resource, _summary_mode(request.args, search=False)))


@bp.get("/<rtype>")
def search(rtype: str) -> Response:
    """Search the artifacts of a type (see SEARCH_PARAMETERS and SEARCH_DOCUMENTATION): a searchset, paged by _count."""
    _served(rtype)
    asked = _search_request(request.args)
    matches = [r for r in _state().engine.content.of_type(rtype) if all(c.matches(r) for c in asked.criteria)]
    return fhir(_searchset(rtype, matches, asked))


def _searchset(rtype: str, matches: list[dict[str, Any]], asked: SearchRequest) -> dict[str, Any]:
    """The searchset Bundle of one page of matches, with its total and its self, first, previous, next and last links."""
    base = _base()
    total = len(matches)
    size = 0 if asked.summary == "count" else asked.count
    page = matches[asked.offset:] if size is None else matches[asked.offset:asked.offset + size]

    def link(relation: str, offset: int) -> dict[str, str]:
        pairs = [(k, v) for k, v in asked.applied if k != "_offset"] + ([("_offset", str(offset))] if offset else [])
        return {"relation": relation, "url": f"{base}/{rtype}" + (f"?{urlencode(pairs, quote_via=quote, safe=':|,/')}" if pairs else "")}

    links = [link("self", asked.offset)]
    if size:
        last = (total - 1) // size * size if total else 0
        links.append(link("first", 0))
        if asked.offset > 0:
            links.append(link("previous", max(0, asked.offset - size)))
        if asked.offset + size < total:
            links.append(link("next", asked.offset + size))
        links.append(link("last", last))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
    if page and size != 0:
        bundle["entry"] = [{"fullUrl": f"{base}/{rtype}/{r['id']}", "resource": summarised(r, asked.summary),
                            "search": {"mode": "match"}} for r in page]
    return bundle


# -- operations ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Operation:
    """The parameters an operation takes: primitive ones (in a POST body or in the URL, so that a GET can carry them),
    resources, and complex values (a data type, or parts) by their kind (in a POST body only)."""

    name: str
    primitive: tuple[str, ...]
    resources: tuple[str, ...] = ()
    complex: tuple[tuple[str, str], ...] = ()


#: $apply's primitive inputs (the CPG operation's, less the endpoints), its resources, and its complex inputs by kind.
APPLY_PRIMITIVE = ("subject", "encounter", "practitioner", "organization", "useServerData")
APPLY_RESOURCES = ("data", "parameters")
APPLY_COMPLEX = (("userType", "CodeableConcept"), ("userLanguage", "CodeableConcept"), ("userTaskContext", "CodeableConcept"),
                 ("setting", "CodeableConcept"), ("settingContext", "CodeableConcept"), ("prefetchData", "list of parts"))
PLAN_APPLY = Operation("$apply", APPLY_PRIMITIVE, APPLY_RESOURCES, APPLY_COMPLEX)
PLAN_APPLY_BY_URL = Operation("$apply", ("url", "version", *APPLY_PRIMITIVE), APPLY_RESOURCES, APPLY_COMPLEX)
PLAN_R5_APPLY = Operation("$r5.apply", PLAN_APPLY.primitive, APPLY_RESOURCES, APPLY_COMPLEX)
PLAN_R5_APPLY_BY_URL = Operation("$r5.apply", PLAN_APPLY_BY_URL.primitive, APPLY_RESOURCES, APPLY_COMPLEX)
DATA_REQUIREMENTS = Operation("$data-requirements", ())
PACKAGE = Operation("$package", ())
EXPAND = Operation("$expand", ("filter", "offset", "count"))
EXPAND_BY_URL = Operation("$expand", ("url", "valueSetVersion", "filter", "offset", "count"))


def _operation_parameters(operation: Operation) -> dict[str, list[Any]]:
    """The parameters of an operation call: a POST's Parameters body, and the URL's parameters (all of a GET's).

    A resource or complex parameter in the URL (it cannot be written there), and a parameter the operation does not
    take, is a 400 naming it: an answer that silently left out part of the question would be wrong.
    """
    parameters = _parameters() if request.method == "POST" else {}
    in_url = {k for k in request.args if k not in FORMAT_PARAMETERS}
    kinds = {**{name: "resource" for name in operation.resources}, **dict(operation.complex)}
    misplaced = sorted(in_url & set(kinds))
    if misplaced:
        kind = kinds[misplaced[0]]
        raise BadRequest(f"parameter {misplaced[0]} of {operation.name} is a {kind}, which a URL cannot carry: "
                         "send it in a Parameters body with POST")
    names = [*operation.primitive, *operation.resources, *(name for name, _ in operation.complex)]
    unknown = sorted((in_url | set(parameters)) - set(names))
    if unknown:
        raise BadRequest(f"unsupported parameter(s) of {operation.name}: {', '.join(unknown)}",
                         details=[f"supported: {', '.join(names)}"])
    return parameters


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


def _concept(parameters: dict[str, list[Any]], name: str) -> dict[str, Any] | None:
    """A parameter whose value is a valueCodeableConcept (its content is checked by ApplyParameters)."""
    value = _one(parameters, name)
    if value is None:
        return None
    if isinstance(value, Value) and value.type_name == "CodeableConcept" and isinstance(value.value, dict):
        return value.value
    raise BadRequest(f"parameter {name} must be a CodeableConcept (valueCodeableConcept)")


def _boolean(parameters: dict[str, list[Any]], name: str) -> bool | None:
    """A parameter whose value is a valueBoolean, or true or false in the query string."""
    value = _one(parameters, name)
    if value is None:
        return None
    if isinstance(value, Value) and value.type_name == "Boolean" and isinstance(value.value, bool):
        return value.value
    if value in ("true", "false"):
        return value == "true"
    raise BadRequest(f"parameter {name} must be a boolean (true or false)")


PREFETCH_PARTS = ("key", "descriptor", "data")


def _prefetch_data(parameters: dict[str, list[Any]]) -> tuple[PrefetchData, ...]:
    """Each prefetchData parameter: its parts key (valueString), descriptor (valueDataRequirement) and data (a Bundle)."""
    items = []
    for i, value in enumerate(parameters.get("prefetchData") or []):
        where = f"parameter prefetchData[{i}]"
        if not isinstance(value, dict) or isinstance(value.get("resourceType"), str):
            raise BadRequest(f"{where} must have the parts key, descriptor and data (not a value or a resource)")
        unknown = sorted(set(value) - set(PREFETCH_PARTS))
        if unknown:
            raise BadRequest(f"{where}: unknown part(s) {', '.join(unknown)}", details=[f"its parts: {', '.join(PREFETCH_PARTS)}"])
        key, descriptor, data = (value.get(part) for part in PREFETCH_PARTS)
        if key is not None and not (isinstance(key, Value) and key.type_name == "String" and isinstance(key.value, str) and key.value):
            raise BadRequest(f"{where}: key must be a valueString")
        if descriptor is not None and not (isinstance(descriptor, Value) and descriptor.type_name == "DataRequirement"):
            raise BadRequest(f"{where}: descriptor must be a valueDataRequirement")
        if data is not None and not (isinstance(data, dict) and data.get("resourceType") == "Bundle"):
            raise BadRequest(f"{where}: data must be a Bundle resource")
        items.append(PrefetchData(key.value if key is not None else None, descriptor.value if descriptor is not None else None, data))
    return tuple(items)


def from_operation(parameters: dict[str, list[Any]]) -> ApplyParameters:
    """The inputs of an $apply call (its Parameters body and URL parameters, as ``_operation_parameters`` reads them),
    checked; a 400 names the first input of the wrong type or that cannot be taken."""
    subject = _reference(parameters, "subject")
    if subject is None:
        raise BadRequest("subject is required (for example Patient/123)")
    try:
        return ApplyParameters(
            subject=subject, encounter=_reference(parameters, "encounter"), practitioner=_reference(parameters, "practitioner"),
            organization=_reference(parameters, "organization"), user_type=_concept(parameters, "userType"),
            user_language=_concept(parameters, "userLanguage"), user_task_context=_concept(parameters, "userTaskContext"),
            setting=_concept(parameters, "setting"), setting_context=_concept(parameters, "settingContext"),
            parameters=_resource(parameters, "parameters", "Parameters"), data=_resource(parameters, "data", "Bundle"),
            prefetch_data=_prefetch_data(parameters), use_server_data=_boolean(parameters, "useServerData"))
    except ParameterError as exc:
        raise BadRequest(str(exc)) from None


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


def _apply(rid: str | None, r5: bool, operation: Operation) -> Response:
    """PlanDefinition $apply or $r5.apply, by id or by url: the CarePlan, or a Parameters returning the R5 Bundle."""
    parameters = _operation_parameters(operation)
    reference = _plan_reference(rid, parameters)
    inputs = from_operation(parameters)
    try:
        result = _state().engine.apply_parameters(reference, inputs, _now(), **_bounds())
    except ParameterError as exc:
        raise BadRequest(str(exc)) from None
    except ApplyError as exc:
        raise bounded_work_error(exc, _state().settings) or BadRequest(str(exc)) from None
    if r5:
        return fhir({"resourceType": "Parameters", "parameter": [{"name": "return", "resource": bundle_r5(result)}]})
    return fhir(careplan_r4(result))


@bp.route("/PlanDefinition/<rid>/$apply", methods=["GET", "POST"])
def apply_instance(rid: str) -> Response:
    """R4 PlanDefinition/$apply on one PlanDefinition: the CarePlan."""
    return _apply(rid, r5=False, operation=PLAN_APPLY)


@bp.route("/PlanDefinition/$apply", methods=["GET", "POST"])
def apply_type() -> Response:
    """R4 PlanDefinition/$apply with the url (and version) parameter."""
    return _apply(None, r5=False, operation=PLAN_APPLY_BY_URL)


@bp.route("/PlanDefinition/<rid>/$r5.apply", methods=["GET", "POST"])
def apply_r5_instance(rid: str) -> Response:
    """R5-style $apply: Parameters whose return is the Bundle with the RequestOrchestration first."""
    return _apply(rid, r5=True, operation=PLAN_R5_APPLY)


@bp.route("/PlanDefinition/$r5.apply", methods=["GET", "POST"])
def apply_r5_type() -> Response:
    """R5-style $apply with the url (and version) parameter."""
    return _apply(None, r5=True, operation=PLAN_R5_APPLY_BY_URL)


@bp.route("/ActivityDefinition/<rid>/$apply", methods=["GET", "POST"])
def apply_activity(rid: str) -> Response:
    """ActivityDefinition/$apply: the request resource."""
    _artifact("ActivityDefinition", rid)
    inputs = from_operation(_operation_parameters(PLAN_APPLY))
    try:
        resource, issues = _state().engine.apply_activity_parameters(rid, inputs, _now(), **_bounds())
    except ParameterError as exc:
        raise BadRequest(str(exc)) from None
    except ApplyError as exc:
        raise bounded_work_error(exc, _state().settings) or BadRequest(str(exc)) from None
    if resource is None:
        raise ServiceError("the ActivityDefinition produced no resource", status=422, details=[i.diagnostics for i in issues])
    return fhir(resource)


@bp.route("/PlanDefinition/<rid>/$data-requirements", methods=["GET", "POST"])
def plan_data_requirements(rid: str) -> Response:
    """PlanDefinition/$data-requirements: the module-definition Library of what the plan reads and uses."""
    return _data_requirements("PlanDefinition", rid)


@bp.route("/Library/<rid>/$data-requirements", methods=["GET", "POST"])
def library_data_requirements(rid: str) -> Response:
    """Library/$data-requirements: the module-definition Library of what the library reads and uses."""
    return _data_requirements("Library", rid)


def _data_requirements(rtype: str, rid: str) -> Response:
    """$data-requirements on one artifact (no parameters): the same requirements the discovery prefetch is built from."""
    artifact = _artifact(rtype, rid)
    _operation_parameters(DATA_REQUIREMENTS)
    return fhir(module_definition(_state().engine.content, artifact))


@bp.route("/PlanDefinition/<rid>/$package", methods=["GET", "POST"])
def plan_package(rid: str) -> Response:
    """PlanDefinition/$package: a Bundle of the plan and every artifact it depends on, each once."""
    artifact = _artifact("PlanDefinition", rid)
    _operation_parameters(PACKAGE)
    return fhir(package_bundle(_state().engine.content, artifact))


@bp.route("/ValueSet/<rid>/$expand", methods=["GET", "POST"])
def expand(rid: str) -> Response:
    """ValueSet/$expand of one ValueSet of this server."""
    valueset = _artifact("ValueSet", rid)
    return _expansion(valueset, _operation_parameters(EXPAND))


@bp.route("/ValueSet/$expand", methods=["GET", "POST"])
def expand_by_url() -> Response:
    """ValueSet/$expand of the ValueSet a canonical URL names (url, or url|version, or url and valueSetVersion)."""
    parameters = _operation_parameters(EXPAND_BY_URL)
    url = _text(parameters, "url", "Uri", "Canonical", "Url", "String")
    if not url:
        raise BadRequest("parameter url is required: the canonical URL of a ValueSet (or call ValueSet/{id}/$expand)")
    version = _text(parameters, "valueSetVersion", "String")
    if version and "|" in url:
        raise BadRequest("parameter valueSetVersion: the url already names a version (url|version); give it once")
    canonical = f"{url}|{version}" if version else url
    valueset = _state().engine.content.resolve(canonical, "ValueSet")
    if valueset is None:
        raise NotFound(f"no ValueSet {canonical} here (see /fhir/ValueSet)")
    return _expansion(valueset, parameters)


def _expansion(stored: dict[str, Any], parameters: dict[str, list[Any]]) -> Response:
    """The ValueSet with its shipped expansion, filtered (code or display contains the filter, ignoring case) and paged
    by offset and count."""
    valueset = copy.deepcopy(stored)
    expansion = valueset.get("expansion") or {}
    contains = list(expansion.get("contains") or [])
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
