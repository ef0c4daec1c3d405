"""The CDS Hooks endpoints: discovery, service calls and feedback (a Flask blueprint)."""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, jsonify, request

from service.cds_hooks.calls import calls_for_hook, hook_context, run_calls
from service.cds_hooks.cards import CardBuilder, override_reason_codes, response
from protocol.engine.apply import ApplyError, ApplyTimeout, Deadline, TooMuchData
from service.errors import BadRequest, NotFound, ServiceError
from service.cds_hooks.feedback import check_against_issued, parse_feedback
from service.cds_hooks.hook_request import check_hook_request, normalise_request, read_json_body
from service.cds_hooks.prefetch import gather
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
    g.client = state.auth.authenticate(request.headers.get("Authorization"), audience)
    g.tenant = state.auth.tenant(request.headers.get("Authorization")) if g.client else None


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
    """A hook call: check the request, complete the prefetch, apply the plan, answer with cards."""
    state = _state()
    started = time.monotonic()
    service = _service(service_id)
    body = read_json_body(request)
    check_hook_request(body, service.hook)
    body = normalise_request(body)
    g.hook, g.hook_instance = body["hook"], body["hookInstance"]
    try:  # the drafts are read once, and before any FHIR server is: a draft for another patient is the client's mistake
        context = hook_context(body)
    except ApplyError as exc:
        raise BadRequest(f"the request cannot be applied: {exc}") from None
    acting, refused = _fhir_server(body)
    data, report = gather(service.prefetch, acting, state.settings, started, state.http, context.drafts, server_refused=refused)
    g.prefetch = report
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
    state.store.record_cards_safely(service.id, service.hook, body["hookInstance"], issued, retention_days=state.settings.retention_days)
    g.timings = {"prefetch_ms": (fetched - started) * 1000, "apply_ms": (applied - fetched) * 1000,
                 "cards_ms": (time.monotonic() - applied) * 1000}
    g.cards = len(cards)
    g.ignored_resources = max((r.ignored_resources for r in results), default=0)
    return Response(orjson.dumps(response(cards)), mimetype="application/json")


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
