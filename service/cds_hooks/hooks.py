"""The CDS Hooks endpoints: discovery, service calls and feedback (a Flask blueprint)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, jsonify, request

from protocol.engine.apply import ApplyError, ApplyTimeout, Deadline, TooMuchData
from protocol.engine.paths import element_info
from protocol.engine.requirements import data_requirements
from service.cds_hooks.calls import calls_for_hook, hook_context, run_calls
from service.cds_hooks.cards import CardBuilder, override_reason_codes, response
from service.cds_hooks.feedback import check_against_issued, parse_feedback
from service.cds_hooks.hook_request import check_hook_request, normalise_request, parse_body, read_json_body
from service.cds_hooks.prefetch import gather
from service.errors import BadRequest, NotFound, ServiceError
from service.urls import fhir_base

bp = Blueprint("cds", __name__)


def _state() -> Any:
    return current_app.extensions["back_spasm_cds"]


@bp.before_request
def authenticate() -> None:
    """Every call (not the CORS preflight) carries a JWT whose aud is the URL called."""
    if request.method == "OPTIONS":
        return
    state = _state()
    base = state.settings.public_base_url or request.host_url
    audience = base.rstrip("/") + request.path
    g.client, g.tenant = state.auth.accept(request.headers.get("Authorization"), audience)


def _fhir_server(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The request as the service may act on it, and whether its fhirServer was refused.

    A fhirServer the client may not name (not on its allow-list, http in production, any but loopback without a JWT)
    is dropped with its token; the caller says so in a 412 if data was missing, and the log line marks it.
    """
    server = body.get("fhirServer")
    if not server:
        return body, False
    server = fhir_base(server)
    if not _state().auth.fhir_server_allowed(g.get("client"), server):
        g.fhir_server_refused = True
        return {k: v for k, v in body.items() if k not in ("fhirServer", "fhirAuthorization")}, True
    return dict(body, fhirServer=server), False


def _service(service_id: str) -> Any:
    service = _state().services.get(service_id)
    if service is None:
        raise NotFound(f"no CDS service '{service_id}' (see GET /cds-services)")
    return service


@bp.get("/cds-services")
def discovery() -> Response:
    """CDS Hooks discovery: every service, its hook and its prefetch templates."""
    return jsonify({"services": [s.discovery() for s in _state().services.values()]})


def bounded_work_error(exc: ApplyError, settings: Any) -> ServiceError | None:
    """The answer to a request the engine refused for its size or stopped for its time, None for another ApplyError.

    More resources than ``max_resources``: 413 naming the setting and the count. Over ``apply_time_limit``: 503 with
    Retry-After and no card at all (a half-applied protocol is never answered). Both name the setting, never the data.
    """
    if isinstance(exc, TooMuchData):
        return ServiceError(f"the request's data holds {exc.count} resources, more than the max_resources setting allows "
                            f"({exc.limit})", status=413)
    if isinstance(exc, ApplyTimeout):
        error = ServiceError(f"applying the protocol took longer than the apply_time_limit setting allows "
                             f"({settings.apply_time_limit:g} s)", status=503)
        error.headers = {"Retry-After": str(max(1, math.ceil(settings.apply_time_limit)))}
        return error
    return None


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    """A hook call: check the request, complete the prefetch, apply the plan, answer with cards.

    The parsed request and what was built from it are let go of once the answer has been sent (``call_on_close``):
    freeing a large prefetch's thousands of objects is work the client need not wait for.
    """
    state = _state()
    started = time.monotonic()
    service = _service(service_id)
    body = read_json_body(request)
    check_hook_request(body, service.hook)
    body = normalise_request(body)
    g.hook, g.hook_instance = body["hook"], body["hookInstance"]
    answer = _answer(state, service, body, started)
    g.prefetch = answer.prefetch
    state.store.record_cards_safely(service.id, service.hook, body["hookInstance"], answer.issued,
                                    retention_days=state.settings.retention_days)
    g.timings = {"prefetch_ms": (answer.fetched - started) * 1000, "apply_ms": (answer.applied - answer.fetched) * 1000,
                 "cards_ms": (time.monotonic() - answer.applied) * 1000}
    g.cards = len(answer.cards)
    g.ignored_resources = max((r.ignored_resources for r in answer.results), default=0)
    reply = Response(orjson.dumps(response(answer.cards)), mimetype="application/json")
    reply.call_on_close([body, answer].clear)
    return reply


@dataclass
class _Answer:
    """What one hook request came to: its prefetch report, the results of its $apply calls, its cards and their record,
    and when the prefetch and the $apply calls ended (time.monotonic)."""

    prefetch: Any
    results: list[Any]
    cards: list[dict[str, Any]]
    issued: list[Any]
    fetched: float
    applied: float


def _answer(state: Any, service: Any, body: dict[str, Any], started: float) -> _Answer:
    """A checked hook request through the whole path but HTTP, auth and storage: its drafts, the completed prefetch,
    the $apply calls and the cards (the same for a real call and for the warm-up)."""
    try:  # the drafts are read once, and before any FHIR server is: a draft for another patient is the client's mistake
        context = hook_context(body)
    except ApplyError as exc:
        raise BadRequest(f"the request cannot be applied: {exc}") from None
    acting, refused = _fhir_server(body)
    data, report = gather(service.prefetch, acting, state.settings, started, state.http, context.drafts, server_refused=refused)
    fetched = time.monotonic()
    try:
        calls = calls_for_hook(state.engine, context, plan=service.plan, data=data,
                               max_resources=state.settings.max_resources, deadline=Deadline.after(state.settings.apply_time_limit))
        results = run_calls(state.engine, calls, state.clock())
    except ApplyError as exc:
        raise bounded_work_error(exc, state.settings) or BadRequest(f"the request cannot be applied: {exc}") from None
    applied = time.monotonic()
    builder = CardBuilder(state.engine.content, state.page_url)
    cards, issued = [], []
    for call, result in zip(calls, results):
        more, records = builder.cards(result, about=call.draft_order)
        cards.extend(more)
        issued.extend(records)
    return _Answer(report, results, cards, issued, fetched, applied)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    """Feedback on cards: stored durably (a comment only as its length), answered 200."""
    service = _service(service_id)
    items = parse_feedback(read_json_body(request))
    state = _state()
    issued = state.store.issued(service.id, [item.card for item in items])
    check_against_issued(items, issued, lambda action_id: override_reason_codes(state.engine.content, action_id))
    stored = state.store.record_feedback(service.id, items, retention_days=state.settings.retention_days)
    return jsonify({"received": len(items), "stored": stored})


def warm_up(app: Any) -> None:
    """Run one call of every service through the whole path but HTTP, auth and storage: parse, checks, prefetch,
    $apply and cards, on a made-up patient with one resource for each code filter of the plan's data requirements
    (the first code of its ValueSet, dated now), and the first of its MedicationRequests as a draft order.

    For gunicorn to call in each worker after it forks (and once before, in the master): what a first call would
    otherwise pay (lazy imports and caches, the pages of the compiled protocol the worker shares with the master
    and copies when it first touches them) is paid before the worker takes a request. Nothing is stored or logged.
    """
    records = app.extensions.setdefault("back_spasm_cds_warm_up", {})  # made once (in the master), used in every worker
    with app.test_request_context("/cds-services"):  # card links are written against the request's URL in development
        state = app.extensions["back_spasm_cds"]
        for service in state.services.values():
            if service.id not in records:
                records[service.id] = _made_up_record(state.engine, service.plan, state.clock().isoformat())
            _warm_up_call(state, service, records[service.id])


def prepare_storage(app: Any) -> None:
    """Open the process's database connections and run its first purges (expired token ids, records past their
    retention), for gunicorn to call in each worker after it forks: a first request would otherwise pay for them (a
    PostgreSQL connection takes milliseconds to set up). Not in the master, which makes no database calls and so keeps
    no connection open. A database that cannot be reached now is logged; requests then meet it as they would have."""
    state = app.extensions["back_spasm_cds"]
    state.auth.replay.prepare(state.clock().timestamp())
    state.store.prepare(state.settings.retention_days)


def _warm_up_call(state: Any, service: Any, resources: list[dict[str, Any]]) -> None:
    drafts = [dict(r, id=f"draft-{r['id']}", status="draft", intent="order") for r in resources if r["resourceType"] == "MedicationRequest"][:1]
    context: dict[str, Any] = {"patientId": "warm-up", "userId": "Practitioner/warm-up"}
    if service.hook != "patient-view":
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": d} for d in drafts]}
    if service.hook == "order-select":
        context["selections"] = [f"MedicationRequest/{d['id']}" for d in drafts[:1]]
    prefetch: dict[str, Any] = {}
    for key, template in service.prefetch.items():
        rtype = template.split("?")[0].split("/")[0]
        matches = [{"resource": r} for r in resources if r["resourceType"] == rtype]
        prefetch[key] = {"resourceType": "Patient", "id": "warm-up"} if key == "patient" else \
            {"resourceType": "Bundle", "type": "searchset", "total": len(matches), "entry": matches}
    body = parse_body(orjson.dumps({"hook": service.hook, "hookInstance": "warm-up", "context": context, "prefetch": prefetch}))
    check_hook_request(body, service.hook)
    orjson.dumps(response(_answer(state, service, normalise_request(body), time.monotonic()).cards))


def _made_up_record(engine: Any, plan: Any, now: str) -> list[dict[str, Any]]:
    """One resource of the patient ``warm-up`` per code filter of the plan's data requirements: coded with the first
    code of the filter's ValueSet, at the filter's path (a choice element as its CodeableConcept), dated ``now``."""
    resources = []
    for requirement in data_requirements(engine.content, plan.resource):
        rtype = requirement.get("type")
        for code_filter in requirement.get("codeFilter") or []:
            url, path = code_filter.get("valueSet"), code_filter.get("path") or "code"
            codes = engine.content.terminology.code_index(url) if isinstance(url, str) and url in engine.content.terminology else {}
            code, systems = next(iter(codes.items()), (None, ()))
            if not isinstance(rtype, str) or code is None:
                continue
            info = element_info(rtype, path)
            concept = {"coding": [{"system": sorted(systems)[0], "code": code}]}
            resource: dict[str, Any] = {"resourceType": rtype, "id": f"warm-up-{len(resources)}", "status": "active",
                                        "subject": {"reference": "Patient/warm-up"},
                                        path if info else f"{path}CodeableConcept": [concept] if info and info[1] else concept}
            for date_filter in requirement.get("dateFilter") or []:
                name = date_filter.get("path")
                if isinstance(name, str):
                    resource[name if element_info(rtype, name) else f"{name}DateTime"] = now
            resources.append(resource)
    return resources
