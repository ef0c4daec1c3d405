"""The requests the public CDS Hooks Sandbox really sends, replayed against the service.

The captured bodies (tests/data/sandbox-requests) were sent to a stub service; here they go to the
matching service of this one. Their ``fhirServer`` is pointed at a loopback FHIR server holding the
Sandbox's test patient (a woman born in 1970 with type 2 diabetes), so whatever the Sandbox did not
prefetch for our templates is fetched the way it would be in real use.
"""

from __future__ import annotations

import copy
import re
import sqlite3

import pytest

from service import state_of
from tests.patients import (
    CLOCK,
    CPT,
    CYCLOBENZAPRINE_10,
    RXNORM,
    SERTRALINE,
    SEVERE,
    SPASM_ICD,
    Patient,
    coding,
    concept,
    when,
)
from tests.service_helpers import (
    ORDER_SELECT,
    ORDER_SIGN,
    PATIENT_VIEW,
    SERVICES,
    TOKEN_PARAMETERS,
    FhirStub,
    browser_headers,
    by_topic,
    capture,
    capture_body,
    cards_of,
    empty_values,
    make_app,
    prefetch_for,
    r4b_problems,
    resource_type_of,
    response_problems,
    searchset,
    templates,
    threaded_httpserver,
    topics,
    without_uuids,
)

STUB_SERVICES = {"stub-patient-view": PATIENT_VIEW, "stub-order-select": ORDER_SELECT, "stub-order-sign": ORDER_SIGN}
ORIGIN = "http://127.0.0.1:8090"
TENS_CPT = (CPT, "97014", "Application of a modality to 1 or more areas; electrical stimulation (unattended)")


@pytest.fixture(scope="module")
def make_httpserver():
    yield from threaded_httpserver()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("sandbox"))


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


def our_path(path: str) -> str:
    """A captured path with the stub's service id replaced by ours."""
    for stub, ours in STUB_SERVICES.items():
        path = path.replace(f"/{stub}", f"/{ours}")
    return path


def sandbox_patient() -> dict:
    return capture_body("patient-view.json")["prefetch"]["patient"]


def sandbox_diabetes() -> dict:
    return capture_body("patient-view.json")["prefetch"]["conditions"]["entry"][0]["resource"]


def spasm_condition() -> dict:
    """An active, severe back muscle spasm of the Sandbox patient, starting 20 hours before the test clock."""
    return {"resourceType": "Condition", "id": "cond-spasm", "subject": {"reference": "Patient/pat-1"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": concept(SPASM_ICD, text="Muscle spasm of back"), "severity": concept(SEVERE), "onsetDateTime": when(hours_ago=20)}


def key_for(app, service_id: str, rtype: str) -> str:
    return next(k for k, t in templates(app, service_id).items() if resource_type_of(t) == rtype)


@pytest.fixture
def fhir(httpserver):
    """The Sandbox patient's FHIR server on loopback; returns its base URL."""
    return FhirStub([sandbox_patient(), sandbox_diabetes()]).mount(httpserver)


def replay(name: str, fhir_base: str) -> tuple[str, dict]:
    """A captured hook request as (our service path, body pointed at the loopback FHIR server)."""
    body = capture_body(name)
    body["fhirServer"] = fhir_base
    return our_path(capture(name)["path"]), body


def post(client, path: str, body: dict, name: str):
    return client.post(path, json=body, headers=browser_headers(name))


# -- discovery and CORS -------------------------------------------------------------------------------


def test_discovery_as_the_sandbox_asks_for_it(client):
    shot = capture("discovery-get.json")
    answer = client.get(shot["path"], headers=browser_headers("discovery-get.json"))
    assert answer.status_code == 200 and answer.is_json
    assert answer.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN)
    payload = answer.get_json()
    assert empty_values(payload) == []
    services = {s["id"]: s for s in payload["services"]}
    assert {sid: s["hook"] for sid, s in services.items()} == {sid: hook for hook, sid in SERVICES.items()}
    assert len(payload["services"]) == len(services), "service ids must be unique (the Sandbox keys services by id)"
    for service in services.values():
        assert isinstance(service["description"], str) and service["description"].strip()
        assert isinstance(service.get("title"), str) and service["title"].strip()
        assert re.fullmatch(r"[A-Za-z0-9\-]+", service["id"])


TEMPLATE = re.compile(r"(?P<type>[A-Z][A-Za-z]+)\?patient=\{\{context\.patientId\}\}(?P<rest>(?:&[^&=]+=[^&]+)*)")
TOKEN_VALUE = re.compile(r"[^|,{}\s&=]+\|[^|,{}\s&=]+|[^|,{}\s&=]+")


@pytest.mark.parametrize("service_id", list(SERVICES.values()))
def test_prefetch_templates_keep_to_the_recommended_query_subset(client, service_id):
    """A Patient read, and type searches restricted to the patient with token parameters only."""
    from fhir.resources.R4B import get_fhir_model_class

    service = next(s for s in client.get("/cds-services").get_json()["services"] if s["id"] == service_id)
    prefetch = service["prefetch"]
    assert prefetch.get("patient") == "Patient/{{context.patientId}}"
    for key, template in prefetch.items():
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key), key
        if key == "patient":
            continue
        match = TEMPLATE.fullmatch(template)
        assert match, f"{key}: {template} is not Type?patient={{{{context.patientId}}}}[&token=...]"
        rtype = match["type"]
        get_fhir_model_class(rtype)  # a real R4 resource type
        for pair in filter(None, match["rest"].split("&")):
            name, value = pair.split("=", 1)
            assert name in TOKEN_PARAMETERS.get(rtype, {}), f"{key}: {name} is not a token search parameter of {rtype}"
            assert all(TOKEN_VALUE.fullmatch(v) for v in value.split(",")), f"{key}: {name}={value[:80]} is not a token list"
        assert template.count("{{") == 1, f"{key}: only the patient token may be used"


@pytest.mark.parametrize("path, method, asked", [
    ("/cds-services", "GET", "authorization"),
    (f"/cds-services/{PATIENT_VIEW}", "POST", "authorization,content-type"),
    (f"/cds-services/{ORDER_SELECT}", "POST", "authorization,content-type"),
    (f"/cds-services/{ORDER_SIGN}", "POST", "authorization,content-type"),
    (f"/cds-services/{PATIENT_VIEW}/feedback", "POST", "authorization,content-type"),
    (f"/cds-services/{ORDER_SIGN}/feedback", "POST", "authorization,content-type"),
])
def test_preflight_is_answered_with_cors_headers(client, path, method, asked):
    headers = browser_headers("preflight-options.json")
    headers.update({"Access-Control-Request-Method": method, "Access-Control-Request-Headers": asked})
    assert capture("preflight-options.json")["method"] == "OPTIONS"
    answer = client.open(path, method="OPTIONS", headers=headers)
    assert answer.status_code in (200, 204)
    assert answer.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN)
    allowed_headers = {h.strip().lower() for h in answer.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert set(asked.split(",")) <= allowed_headers or "*" in allowed_headers
    allowed_methods = {m.strip().upper() for m in answer.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert method in allowed_methods


def test_the_exact_captured_preflight_is_answered(client):
    shot = capture("preflight-options.json")
    answer = client.open(our_path(shot["path"]), method="OPTIONS", headers=browser_headers("preflight-options.json"))
    assert answer.status_code in (200, 204)
    assert answer.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN)
    assert {"authorization", "content-type"} <= {h.strip().lower() for h in answer.headers["Access-Control-Allow-Headers"].split(",")}
    assert "POST" in answer.headers["Access-Control-Allow-Methods"].upper()


def test_error_answers_carry_cors_headers_too(client):
    """A browser client can only read an error (and show why) when the error answer allows its origin."""
    answer = client.post(f"/cds-services/{PATIENT_VIEW}", json={"hook": "patient-view"}, headers={"Origin": ORIGIN})
    assert answer.status_code == 400
    assert answer.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN)


# -- the captured hook calls: the diabetic patient gets no cards ---------------------------------------


@pytest.mark.parametrize("name", ["patient-view.json", "order-select-bare.json", "order-select-with-medication.json", "order-sign.json"])
def test_captured_hook_call_is_answered_without_cards(client, fhir, httpserver, name):
    path, body = replay(name, fhir)
    answer = post(client, path, body, name)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json() == {"cards": []}
    assert answer.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN)
    fetched = {request.path for request, _ in httpserver.log}
    if "patient" in (body.get("prefetch") or {}):
        assert "/fhir/Patient/pat-1" not in fetched, "a prefetched Patient must not be read again"
    else:
        assert "/fhir/Patient/pat-1" in fetched
    assert "/fhir/Condition" in fetched, "the Sandbox's own 'conditions' key is not one of ours: Conditions are fetched"
    for request, _ in httpserver.log:
        assert request.method == "GET"
        assert request.args.get("patient") in (None, "pat-1")


@pytest.mark.parametrize("name", ["patient-view.json", "order-select-bare.json", "order-select-with-medication.json", "order-sign.json"])
def test_captured_hook_call_with_everything_prefetched_needs_no_fhir_server(app, client, httpserver, name):
    """The same calls from a client that filled every template: answered from the prefetch alone."""
    path, body = replay(name, httpserver.url_for("/fhir"))
    body["prefetch"] = prefetch_for(app, STUB_SERVICES[capture(name)["path"].split("/")[2]], [sandbox_patient(), sandbox_diabetes()])
    answer = post(client, path, body, name)
    assert answer.status_code == 200 and answer.get_json() == {"cards": []}
    assert httpserver.log == []


# -- the same calls for a patient with a back spasm ----------------------------------------------------


def with_spasm(app, service_id: str, body: dict) -> dict:
    """The request with the spasm added to the Conditions the client prefetched (under our key)."""
    body.setdefault("prefetch", {})[key_for(app, service_id, "Condition")] = searchset([sandbox_diabetes(), spasm_condition()])
    return body


def sandbox_cyclobenzaprine(order: dict) -> dict:
    """The Sandbox's draft with cyclobenzaprine 10 mg chosen in its medication picker (its shapes kept)."""
    order = copy.deepcopy(order)
    order["medicationCodeableConcept"] = {"text": CYCLOBENZAPRINE_10[2], "coding": [
        {"display": CYCLOBENZAPRINE_10[2], "system": RXNORM, "code": CYCLOBENZAPRINE_10[1]}]}
    if "reasonCode" in order:
        order["reasonCode"] = {"coding": [coding(SPASM_ICD)], "text": SPASM_ICD[2]}
    return order


def test_patient_view_with_a_spasm_gives_the_plan_and_the_proposal(app, client, fhir):
    path, body = replay("patient-view.json", fhir)
    body = with_spasm(app, PATIENT_VIEW, body)
    cards = cards_of(client, "patient-view", body)
    assert topics(cards) == ["cyclobenzaprine", "phase-plan"]
    assert response_problems({"cards": cards}) == []
    plan = by_topic(cards, "phase-plan")
    assert "day 1" in plan["summary"] and "hours since onset" in plan["summary"] and "immediate" in plan["summary"]
    careplan = plan["suggestions"][0]["actions"][0]["resource"]
    assert careplan["resourceType"] == "CarePlan" and careplan["subject"] == {"reference": "Patient/pat-1"}


def course_days(order: dict) -> list[float]:
    """Every course length (in days) an order states: bounds of its dosage timing and its expected supply."""
    found = [d["timing"]["repeat"]["boundsDuration"]["value"] for d in order.get("dosageInstruction") or []
             if "boundsDuration" in ((d.get("timing") or {}).get("repeat") or {})]
    supply = (order.get("dispenseRequest") or {}).get("expectedSupplyDuration")
    return found + ([supply["value"]] if supply else [])


def test_order_select_of_sandbox_cyclobenzaprine_for_30_days_gets_the_course_warning(app, client, fhir):
    path, body = replay("order-select-with-medication.json", fhir)
    entry = body["context"]["draftOrders"]["entry"][0]
    entry["resource"] = sandbox_cyclobenzaprine(entry["resource"])
    body = with_spasm(app, ORDER_SELECT, body)
    cards = cards_of(client, "order-select", body)
    assert topics(cards) == ["S8"]
    card = cards[0]
    assert card["indicator"] == "warning"
    assert response_problems({"cards": cards}) == []
    update = card["suggestions"][0]["actions"][0]
    assert update["type"] == "update" and update["resource"]["id"] == "request-123"
    durations = course_days(update["resource"])
    assert durations and max(durations) == 21
    assert update["resource"]["medicationCodeableConcept"] == entry["resource"]["medicationCodeableConcept"]


def test_order_sign_of_sandbox_cyclobenzaprine_gets_the_course_warning(app, client, fhir):
    path, body = replay("order-sign.json", fhir)
    entry = body["context"]["draftOrders"]["entry"][0]
    entry["resource"] = sandbox_cyclobenzaprine(entry["resource"])
    cards = cards_of(client, "order-sign", with_spasm(app, ORDER_SIGN, body))
    assert topics(cards) == ["S8"]
    assert response_problems({"cards": cards}) == []


def test_order_sign_of_a_tens_draft_gets_the_no_benefit_card(app, client, fhir):
    """The Sandbox's imaging tab sends ServiceRequest drafts the same way; here a TENS session is drafted."""
    path, body = replay("order-sign.json", fhir)
    body["context"]["draftOrders"]["entry"] = [{"resource": {
        "resourceType": "ServiceRequest", "id": "request-123", "status": "draft", "intent": "plan",
        "subject": {"reference": "Patient/pat-1"}, "authoredOn": CLOCK.date().isoformat(), "code": concept(TENS_CPT)}}]
    cards = cards_of(client, "order-sign", with_spasm(app, ORDER_SIGN, body))
    assert topics(cards) == ["tens"]
    card = cards[0]
    assert card["indicator"] == "info"
    assert response_problems({"cards": cards}) == []
    deletes = [a for s in card["suggestions"] for a in s["actions"] if a["type"] == "delete"]
    assert deletes and all(a["resourceId"] == "ServiceRequest/request-123" for a in deletes)


# -- the Sandbox's sloppy draft orders -----------------------------------------------------------------


def tidy(order: dict) -> dict:
    """The same MedicationRequest written as valid R4: category and reasonCode as arrays."""
    order = copy.deepcopy(order)
    for name in ("category", "reasonCode"):
        if isinstance(order.get(name), dict):
            order[name] = [order[name]]
    return order


def test_sloppy_medication_request_is_accepted_and_read_like_the_valid_one(app, client, fhir):
    path, sloppy = replay("order-select-with-medication.json", fhir)
    entry = sloppy["context"]["draftOrders"]["entry"][0]
    entry["resource"] = sandbox_cyclobenzaprine(entry["resource"])
    assert isinstance(entry["resource"]["category"], dict) and isinstance(entry["resource"]["reasonCode"], dict)
    assert "type" not in sloppy["context"]["draftOrders"]
    sloppy = with_spasm(app, ORDER_SELECT, sloppy)
    valid = copy.deepcopy(sloppy)
    valid["context"]["draftOrders"]["type"] = "collection"
    valid["context"]["draftOrders"]["entry"][0]["resource"] = tidy(entry["resource"])

    sloppy_cards = cards_of(client, "order-select", sloppy)
    assert without_uuids(sloppy_cards) == without_uuids(cards_of(client, "order-select", valid))
    update = sloppy_cards[0]["suggestions"][0]["actions"][0]["resource"]
    assert isinstance(update["category"], list), "the suggested update must be valid R4 even when the draft was not"
    assert r4b_problems(update) == []


def test_sloppy_metformin_order_is_accepted(client, fhir):
    path, body = replay("order-select-with-medication.json", fhir)
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    assert isinstance(order["category"], dict) and "type" not in body["context"]["draftOrders"]
    answer = post(client, path, body, "order-select-with-medication.json")
    assert answer.status_code == 200 and answer.get_json() == {"cards": []}


# -- feedback ------------------------------------------------------------------------------------------


def stored(app, card_uuid: str) -> list[dict]:
    return state_of(app).store.feedback(card_uuid)


def rows_in_file(app, card_uuid: str) -> list[tuple]:
    """Feedback rows read straight from the SQLite file (not through the service)."""
    with sqlite3.connect(state_of(app).store.path) as db:
        return db.execute("SELECT outcome, accepted_suggestions, override_code, outcome_timestamp FROM feedback WHERE card_uuid = ?"
                          " ORDER BY id", (card_uuid,)).fetchall()


@pytest.mark.parametrize("name", ["feedback-accepted-patient-view.json", "feedback-overridden-patient-view.json",
                                  "feedback-accepted-order-select.json"])
def test_captured_feedback_is_answered_and_stored(app, client, name):
    shot = capture(name)
    answer = post(client, our_path(shot["path"]), shot["body"], name)
    assert answer.status_code == 200 and answer.is_json
    assert answer.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN)
    item = shot["body"]["feedback"][0]
    rows = rows_in_file(app, item["card"])
    assert (item["outcome"], item["outcomeTimestamp"]) in [(r[0], r[3]) for r in rows]
    row = next(r for r in stored(app, item["card"]) if r["outcome"] == item["outcome"])
    assert row["card_known"] == 0 and row["action_id"] is None, "the captured card uuid was never issued by this service"
    if item["outcome"] == "accepted":
        assert item["acceptedSuggestions"][0]["id"] in row["accepted_suggestions"]


def spasm_view(app, client, extra: list[dict] = ()) -> list[dict]:
    path, body = replay("patient-view.json", "http://127.0.0.1:9/fhir")
    body["prefetch"] = prefetch_for(app, PATIENT_VIEW, [sandbox_patient(), sandbox_diabetes(), spasm_condition(), *extra])
    return cards_of(client, "patient-view", body)


def test_accepted_feedback_on_an_issued_card_is_joined_to_it(app, client):
    plan = by_topic(spasm_view(app, client), "phase-plan")
    body = capture_body("feedback-accepted-patient-view.json")
    body["feedback"][0]["card"] = plan["uuid"]
    body["feedback"][0]["acceptedSuggestions"] = [{"id": plan["suggestions"][0]["uuid"]}]
    answer = post(client, f"/cds-services/{PATIENT_VIEW}/feedback", body, "feedback-accepted-patient-view.json")
    assert answer.status_code == 200
    [row] = stored(app, plan["uuid"])
    assert row["card_known"] == 1
    assert (row["hook"], row["action_id"], row["topic"], row["outcome"]) == ("patient-view", "phase-plan", "phase-plan", "accepted")
    assert plan["suggestions"][0]["uuid"] in row["accepted_suggestions"]


def test_overridden_feedback_with_a_reason_on_an_issued_warning_is_joined_to_it(app, client):
    warning = by_topic(spasm_view(app, client, [Patient(56).medication(SERTRALINE)]), "cyclobenzaprine")
    assert warning["indicator"] == "warning"
    reason = warning["overrideReasons"][0]
    body = capture_body("feedback-overridden-patient-view.json")
    body["feedback"][0]["card"] = warning["uuid"]
    body["feedback"][0]["overrideReason"] = {"reason": {"code": reason["code"], "system": reason["system"]}}
    answer = post(client, f"/cds-services/{PATIENT_VIEW}/feedback", body, "feedback-overridden-patient-view.json")
    assert answer.status_code == 200
    [row] = stored(app, warning["uuid"])
    assert (row["card_known"], row["topic"], row["outcome"]) == (1, "cyclobenzaprine", "overridden")
    assert (row["override_system"], row["override_code"]) == (reason["system"], reason["code"])


def test_repeated_feedback_is_stored_once(app, client):
    plan = by_topic(spasm_view(app, client), "phase-plan")
    body = capture_body("feedback-overridden-patient-view.json")
    body["feedback"][0]["card"] = plan["uuid"]
    for _ in range(3):
        answer = post(client, f"/cds-services/{PATIENT_VIEW}/feedback", body, "feedback-overridden-patient-view.json")
        assert answer.status_code == 200
    assert len(rows_in_file(app, plan["uuid"])) == 1


def test_a_batch_of_feedback_is_stored_item_by_item(app, client):
    cards = spasm_view(app, client)
    plan, proposal = by_topic(cards, "phase-plan"), by_topic(cards, "cyclobenzaprine")
    accepted = capture_body("feedback-accepted-patient-view.json")["feedback"][0]
    overridden = capture_body("feedback-overridden-patient-view.json")["feedback"][0]
    accepted.update(card=proposal["uuid"], acceptedSuggestions=[{"id": proposal["suggestions"][0]["uuid"]}])
    overridden.update(card=plan["uuid"])
    answer = client.post(f"/cds-services/{PATIENT_VIEW}/feedback", json={"feedback": [accepted, overridden]})
    assert answer.status_code == 200
    assert [r[0] for r in rows_in_file(app, proposal["uuid"])] == ["accepted"]
    assert [r[0] for r in rows_in_file(app, plan["uuid"])] == ["overridden"]
