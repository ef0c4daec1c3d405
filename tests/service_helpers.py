"""Helpers for the CDS Hooks service tests: build the app, write hook requests, read responses.

A hook request is written the way a CDS client would send it: the prefetch is filled from the service's
own discovery templates (one searchset Bundle per resource type, the Patient read as a resource), and the
draft orders are a Bundle in the context. The captured CDS Hooks Sandbox requests are read from
``tests/data/sandbox-requests``.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from protocol.engine.apply import Engine
from protocol.engine.content import load_content
from service import create_app, state_of
from service.config import Settings
from tests.patients import CLOCK, DATA, Patient
from tests.storage_backends import service_database

CAPTURES = DATA / "sandbox-requests"

PATIENT_VIEW = "back-spasm-treatment-pathway-patient-view"
ORDER_SELECT = "back-spasm-order-review-order-select"
ORDER_SIGN = "back-spasm-order-review-order-sign"
SERVICES = {"patient-view": PATIENT_VIEW, "order-select": ORDER_SELECT, "order-sign": ORDER_SIGN}
HOOK_OF = {service: hook for hook, service in SERVICES.items()}
USER = "Practitioner/COREPRACTITIONER1"

_ENGINE: Engine | None = None


def shared_engine() -> Engine:
    """The shipped protocol, compiled once per test session (it takes about a second)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Engine(load_content())
    return _ENGINE


def make_app(tmp_dir: Path, clock: Any = None, **overrides: Any):
    """An application with a database of its own (an SQLite file under ``tmp_dir``, or a fresh PostgreSQL schema with
    BACK_SPASM_CDS_TEST_DATABASE=postgresql: see tests.storage_backends) and the fixed test clock."""
    if "database" not in overrides:
        overrides["database"] = service_database(tmp_dir)
    settings = Settings.load(environ={}, overrides=overrides)
    moment = clock or CLOCK
    return create_app(settings, engine=shared_engine(), clock=lambda: moment)


def templates(app, service_id: str) -> dict[str, str]:
    """The prefetch templates the service advertises."""
    return dict(state_of(app).services[service_id].prefetch)


def resource_type_of(template: str) -> str:
    """The resource type a prefetch template reads or searches."""
    return re.split(r"[/?]", template, maxsplit=1)[0]


def searchset(resources: Iterable[Mapping[str, Any]], base: str | None = None) -> dict[str, Any]:
    entries = []
    for resource in resources:
        entry: dict[str, Any] = {"resource": copy.deepcopy(dict(resource))}
        if base:
            entry["fullUrl"] = f"{base.rstrip('/')}/{resource['resourceType']}/{resource['id']}"
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


def prefetch_for(app, service_id: str, resources: Iterable[Mapping[str, Any]], empty: str = "bundle") -> dict[str, Any]:
    """Every prefetch key of the service filled from a patient's resources, as a complete client would.

    A search with no match is an empty searchset Bundle (``empty="bundle"``) or ``null`` (``empty="null"``).
    """
    resources = list(resources)
    out: dict[str, Any] = {}
    for key, template in templates(app, service_id).items():
        rtype = resource_type_of(template)
        if "?" not in template:
            found = next((r for r in resources if r["resourceType"] == rtype), None)
            out[key] = copy.deepcopy(found)
            continue
        matches = [r for r in resources if r["resourceType"] == rtype]
        out[key] = searchset(matches) if matches or empty == "bundle" else None
    return out


def draft_bundle(drafts: Iterable[Mapping[str, Any]], bundle_type: str | None = "collection") -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "entry": [{"resource": copy.deepcopy(dict(d))} for d in drafts]}
    if bundle_type:
        bundle["type"] = bundle_type
    return bundle


def hook_body(app, hook: str, patient: Patient, drafts: Iterable[Mapping[str, Any]] = (), *, selections: list[str] | None = None,
              prefetch: bool = True, fhir_server: str | None = None, empty: str = "bundle") -> dict[str, Any]:
    """A complete CDS Hooks request for a patient record (and draft orders on the order hooks)."""
    drafts = list(drafts)
    context: dict[str, Any] = {"userId": USER, "patientId": patient.id}
    if hook != "patient-view":
        context["draftOrders"] = draft_bundle(drafts)
    if hook == "order-select":
        context["selections"] = selections if selections is not None else [f"{d.get('resourceType')}/{d.get('id')}" for d in drafts]
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if fhir_server:
        body["fhirServer"] = fhir_server
    if prefetch:
        body["prefetch"] = prefetch_for(app, SERVICES[hook], patient.resources, empty=empty)
    return body


def call(client, hook: str, body: Mapping[str, Any], service_id: str | None = None, **kwargs: Any):
    """POST a hook request to its service."""
    return client.post(f"/cds-services/{service_id or SERVICES[hook]}", json=body, **kwargs)


def cards_of(client, hook: str, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cards of a call that must succeed."""
    answer = call(client, hook, body)
    assert answer.status_code == 200, (answer.status_code, answer.get_data(as_text=True)[:2000])
    payload = answer.get_json()
    assert isinstance(payload, dict) and isinstance(payload.get("cards"), list), payload
    return payload["cards"]


def topic(card: Mapping[str, Any]) -> str | None:
    """The recommendation or safety-rule code a card is about (its source.topic code)."""
    return ((card.get("source") or {}).get("topic") or {}).get("code")


def topics(cards: Iterable[Mapping[str, Any]]) -> list[str | None]:
    return sorted((topic(c) for c in cards), key=lambda t: t or "")


def by_topic(cards: Iterable[Mapping[str, Any]], code: str) -> dict[str, Any]:
    found = [c for c in cards if topic(c) == code]
    assert len(found) == 1, f"expected one card about {code!r}, got topics {topics(cards)}"
    return found[0]


def without_uuids(value: Any) -> Any:
    """A response with every ``uuid`` (and generated urn:uuid value) taken out, for comparing two calls."""
    if isinstance(value, dict):
        return {k: without_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [without_uuids(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", value)
    return value


def capture(name: str) -> dict[str, Any]:
    """One captured Sandbox request (method, path, headers, body)."""
    return json.loads((CAPTURES / name).read_text())


def capture_body(name: str) -> dict[str, Any]:
    return copy.deepcopy(capture(name)["body"])


def browser_headers(name: str) -> dict[str, str]:
    """The browser headers of a captured request, as a Flask test client can send them again.

    Host, Content-Length, Connection and Accept-Encoding belong to the original connection. The captured
    Authorization header is left out too: its JWT was issued for the stub service's URL and has expired,
    so it can never be valid here (the service accepts unauthenticated calls in its development mode).
    """
    skip = {"host", "content-length", "connection", "accept-encoding", "authorization"}
    return {k: v for k, v in capture(name)["headers"].items() if k.lower() not in skip}


def empty_values(value: Any, path: str = "$") -> list[str]:
    """Paths of every null, empty string, empty array or empty object (the CDS Hooks JSON rule), ``cards`` aside."""
    found: list[str] = []
    if value is None or value == "" or value == [] or value == {}:
        if path != "$.cards":
            found.append(path)
        return found
    if isinstance(value, dict):
        for key, item in value.items():
            found += empty_values(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += empty_values(item, f"{path}[{i}]")
    return found


def outcome_diagnostics(answer) -> str:
    """All diagnostics of an OperationOutcome error answer, joined (asserting that it is one)."""
    assert answer.is_json, (answer.status_code, answer.content_type, answer.get_data(as_text=True)[:500])
    body = answer.get_json()
    assert isinstance(body, dict) and body.get("resourceType") == "OperationOutcome", body
    issues = body.get("issue")
    assert isinstance(issues, list) and issues, body
    for issue in issues:
        assert issue.get("severity") in ("fatal", "error", "warning", "information"), issue
        assert isinstance(issue.get("code"), str) and issue["code"], issue
    text = " | ".join(str(i.get("diagnostics", "")) for i in issues)
    assert text.strip(" |"), body
    assert "Traceback" not in text and 'File "' not in text, text
    return text


# ---------------------------------------------------------------------------------- a FHIR server on loopback

#: R4 token search parameters of the resource types the services search, and the elements they match.
TOKEN_PARAMETERS: dict[str, dict[str, tuple[str, ...]]] = {
    "AllergyIntolerance": {"code": ("code",), "clinical-status": ("clinicalStatus",), "verification-status": ("verificationStatus",),
                           "category": (), "type": ("type",)},
    "CarePlan": {"category": ("category",), "status": ("status",), "intent": ("intent",)},
    "Condition": {"code": ("code",), "category": ("category",), "clinical-status": ("clinicalStatus",),
                  "verification-status": ("verificationStatus",), "severity": ("severity",)},
    "Encounter": {"type": ("type",), "class": ("class",), "status": ("status",)},
    "MedicationRequest": {"code": ("medicationCodeableConcept",), "status": ("status",), "intent": ("intent",), "category": ("category",)},
    "MedicationStatement": {"code": ("medicationCodeableConcept",), "status": ("status",), "category": ("category",)},
    "Observation": {"code": ("code",), "category": ("category",), "status": ("status",)},
    "Procedure": {"code": ("code",), "category": ("category",), "status": ("status",)},
    "ServiceRequest": {"code": ("code",), "category": ("category",), "status": ("status",), "intent": ("intent",)},
    "DeviceRequest": {"code": ("codeCodeableConcept",), "status": ("status",), "intent": ("intent",)},
}


def _tokens_of(value: Any) -> set[str]:
    """``system|code`` and bare ``code`` forms of a CodeableConcept, Coding, list of them, or a code."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return set().union(*(_tokens_of(v) for v in value)) if value else set()
    if not isinstance(value, Mapping):
        return set()
    codings = value.get("coding") if isinstance(value.get("coding"), list) else [value]
    out = set()
    for c in codings:
        if isinstance(c, Mapping) and c.get("code"):
            out |= {str(c["code"]), f"{c.get('system', '')}|{c['code']}"}
    return out


def _subject_id(resource: Mapping[str, Any]) -> str | None:
    for name in ("subject", "patient"):
        ref = resource.get(name)
        if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
            return ref["reference"].split("/")[-1]
    return None


def fhir_search(resources: Iterable[Mapping[str, Any]], rtype: str, args: Mapping[str, str]) -> list[dict[str, Any]]:
    """What a FHIR server would answer to ``rtype?args``: patient and token parameters (any of the listed values)."""
    found = [dict(r) for r in resources if r.get("resourceType") == rtype]
    for name, value in args.items():
        if name == "patient":
            found = [r for r in found if _subject_id(r) == value.split("/")[-1]]
        elif name.startswith("_"):
            continue
        else:
            elements = TOKEN_PARAMETERS.get(rtype, {}).get(name, (name,))
            wanted = set(value.split(","))
            found = [r for r in found if any(_tokens_of(r.get(e)) & wanted for e in elements)]
    return found


class FhirStub:
    """A small FHIR R4 server answering reads and searches over a fixed list of resources.

    Mount it on a pytest-httpserver with :meth:`mount`; requests are in ``server.log``.
    """

    def __init__(self, resources: Iterable[Mapping[str, Any]], base_path: str = "/fhir"):
        self.resources = [copy.deepcopy(dict(r)) for r in resources]
        self.base_path = base_path.rstrip("/")

    def mount(self, server) -> str:
        server.expect_request(re.compile("^" + re.escape(self.base_path) + "/.*")).respond_with_handler(self.handle)
        return server.url_for(self.base_path)

    def handle(self, request):
        from werkzeug.wrappers import Response

        parts = [p for p in request.path[len(self.base_path):].split("/") if p]
        if len(parts) == 2:
            found = next((r for r in self.resources if r.get("resourceType") == parts[0] and r.get("id") == parts[1]), None)
            if found is None:
                return Response(json.dumps({"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "not-found", "diagnostics": f"{parts[0]}/{parts[1]} not found"}]}),
                    status=404, content_type="application/fhir+json")
            return Response(json.dumps(found), content_type="application/fhir+json")
        if len(parts) == 1:
            base = request.host_url.rstrip("/") + self.base_path
            bundle = searchset(fhir_search(self.resources, parts[0], request.args.to_dict()), base)
            return Response(json.dumps(bundle), content_type="application/fhir+json")
        return Response("{}", status=400, content_type="application/json")


def threaded_httpserver():
    """A pytest-httpserver that answers requests in parallel (the service fetches in parallel)."""
    from pytest_httpserver import HTTPServer

    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        if server.is_running():
            server.stop()


# ---------------------------------------------------------------------------------- CDS Hooks response rules

INDICATORS = ("info", "warning", "critical")
EVIDENCE = re.compile(r"(strong|weak|conditional) recommendation\b.*\b(high|moderate|low|very[- ]low)[- ]quality evidence", re.I | re.S)


def is_absolute_url(value: Any) -> bool:
    from urllib.parse import urlsplit

    if not isinstance(value, str) or not value:
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def response_problems(payload: Any) -> list[str]:
    """Every way a CDS service response breaks the CDS Hooks 2.0 rules (and the protocol's card rules, §6)."""
    problems: list[str] = []
    if not isinstance(payload, dict) or not isinstance(payload.get("cards"), list):
        return ["the response must be an object with a cards array"]
    extra = set(payload) - {"cards", "systemActions", "extension"}
    if extra:
        problems.append(f"unexpected response fields {sorted(extra)}")
    problems += [f"empty value at {p}" for p in empty_values(payload)]
    seen: set[str] = set()
    for i, card in enumerate(payload["cards"]):
        problems += [f"cards[{i}]: {p}" for p in card_problems(card, seen)]
    return problems


def card_problems(card: Any, seen_uuids: set[str] | None = None) -> list[str]:
    """The problems of one card; ``seen_uuids`` collects card and suggestion uuids to find duplicates."""
    seen = seen_uuids if seen_uuids is not None else set()
    problems: list[str] = []
    if not isinstance(card, dict):
        return ["a card must be an object"]

    def unique(value: Any, what: str) -> None:
        if not _nonempty_str(value):
            problems.append(f"{what} uuid missing")
        elif value in seen:
            problems.append(f"{what} uuid {value} is not unique")
        else:
            seen.add(value)

    unique(card.get("uuid"), "card")
    summary = card.get("summary")
    if not _nonempty_str(summary):
        problems.append("summary missing")
    elif len(summary) >= 140:
        problems.append(f"summary is {len(summary)} characters (must be under 140)")
    indicator = card.get("indicator")
    if indicator not in INDICATORS:
        problems.append(f"indicator {indicator!r} is not one of {INDICATORS}")
    source = card.get("source")
    if not isinstance(source, dict):
        problems.append("source missing")
    else:
        if not _nonempty_str(source.get("label")):
            problems.append("source.label missing")
        if not is_absolute_url(source.get("url")):
            problems.append(f"source.url {source.get('url')!r} is not an absolute URL")
        if "icon" in source and not is_absolute_url(source["icon"]):
            problems.append("source.icon is not an absolute URL")
        topic = source.get("topic")
        if not (isinstance(topic, dict) and _nonempty_str(topic.get("system")) and _nonempty_str(topic.get("code"))):
            problems.append(f"source.topic {topic!r} is not a Coding with system and code")
        elif "display" in topic and not _nonempty_str(topic["display"]):
            problems.append("source.topic.display is empty")
    detail = card.get("detail")
    if not _nonempty_str(detail):
        problems.append("detail missing")
    elif not EVIDENCE.search(detail):
        problems.append("detail does not state the strength of recommendation and quality of evidence")
    links = card.get("links")
    if not isinstance(links, list) or not links:
        problems.append("links to the citations missing")
    else:
        for j, link in enumerate(links):
            if not (isinstance(link, dict) and _nonempty_str(link.get("label")) and is_absolute_url(link.get("url"))):
                problems.append(f"links[{j}] needs a label and an absolute url")
            elif link.get("type") not in ("absolute", "smart"):
                problems.append(f"links[{j}].type {link.get('type')!r} is not absolute|smart")
            elif "appContext" in link and link["type"] != "smart":
                problems.append(f"links[{j}].appContext on a link that is not smart")
    reasons = card.get("overrideReasons")
    if indicator in ("warning", "critical") and card.get("suggestions") and not reasons:
        problems.append(f"a {indicator} card with suggestions needs overrideReasons")
    if not card.get("suggestions") and reasons and card.get("source", {}).get("topic", {}).get("code", "").startswith("withheld"):
        problems.append("a card that only informs has nothing to override")
    if reasons is not None:
        if not isinstance(reasons, list) or not reasons:
            problems.append("overrideReasons must be a non-empty array")
        else:
            for j, reason in enumerate(reasons):
                if not (isinstance(reason, dict) and all(_nonempty_str(reason.get(k)) for k in ("code", "system", "display"))):
                    problems.append(f"overrideReasons[{j}] needs code, system and display")
    suggestions = card.get("suggestions")
    behaviour = card.get("selectionBehavior")
    if behaviour is not None and behaviour not in ("at-most-one", "any"):
        problems.append(f"selectionBehavior {behaviour!r} is not at-most-one|any")
    if suggestions is not None:
        if not isinstance(suggestions, list) or not suggestions:
            problems.append("suggestions must be a non-empty array when present")
            suggestions = []
        if behaviour is None:
            problems.append("selectionBehavior missing on a card with suggestions")
        if behaviour == "at-most-one" and sum(1 for s in suggestions if isinstance(s, dict) and s.get("isRecommended")) > 1:
            problems.append("more than one recommended suggestion with at-most-one")
        for j, suggestion in enumerate(suggestions):
            problems += [f"suggestions[{j}]: {p}" for p in suggestion_problems(suggestion, unique)]
    return problems


def suggestion_problems(suggestion: Any, unique: Any) -> list[str]:
    problems: list[str] = []
    if not isinstance(suggestion, dict):
        return ["a suggestion must be an object"]
    unique(suggestion.get("uuid"), "suggestion")
    if not _nonempty_str(suggestion.get("label")):
        problems.append("label missing")
    actions = suggestion.get("actions")
    if not isinstance(actions, list) or not actions:
        problems.append("actions missing")
        return problems
    for k, action in enumerate(actions):
        problems += [f"actions[{k}]: {p}" for p in action_problems(action)]
    return problems


def action_problems(action: Any) -> list[str]:
    problems: list[str] = []
    if not isinstance(action, dict):
        return ["an action must be an object"]
    kind = action.get("type")
    if kind not in ("create", "update", "delete"):
        problems.append(f"type {kind!r} is not create|update|delete")
    if not _nonempty_str(action.get("description")):
        problems.append("description missing")
    resource = action.get("resource")
    if kind in ("create", "update"):
        if not (isinstance(resource, dict) and _nonempty_str(resource.get("resourceType"))):
            problems.append(f"{kind} without a resource")
        elif kind == "update" and not _nonempty_str(resource.get("id")):
            problems.append("update of a resource without an id")
    if kind == "delete":
        if "resource" in action:
            problems.append("delete carries a resource (use resourceId)")
        if not (_nonempty_str(action.get("resourceId")) and re.fullmatch(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}", action["resourceId"])):
            problems.append(f"delete needs resourceId as a relative reference, got {action.get('resourceId')!r}")
    return problems


def r4b_problems(resource: Mapping[str, Any]) -> list[str]:
    """Validation errors of a resource (and each contained resource) against the fhir.resources R4B models."""
    from fhir.resources.R4B import get_fhir_model_class

    problems = []
    for item in [resource, *(resource.get("contained") or [])]:
        try:
            get_fhir_model_class(item["resourceType"]).model_validate(item)
        except Exception as exc:  # noqa: BLE001 - the message is the finding
            problems.append(f"{item.get('resourceType')}/{item.get('id')}: {exc}")
    return problems


def in_new_thread(fn):
    """Run ``fn`` in a fresh thread, as a new worker thread of the server would (the store keeps one connection per
    thread); its result."""
    import threading

    out: list = []
    worker = threading.Thread(target=lambda: out.append(fn()))
    worker.start()
    worker.join(30)
    return out[0]
