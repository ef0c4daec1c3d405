"""Prefetch completion against a real FHIR server on loopback (pytest-httpserver).

A key the client did not send, or sent as an OperationOutcome, is read from ``fhirServer`` with the
bearer token of ``fhirAuthorization``; ``null`` means "no data" and is never re-read; pages of a searchset
are followed up to ``max_pages``, never to another server; a search that cannot be read completely, or a
slow, failing or nonsensical FHIR server, gives 412 with an OperationOutcome (tests/test_prefetch_complete.py
has the boundaries). Data read this way gives the same cards as the same data prefetched.
"""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from werkzeug.wrappers import Response

from service.cds_hooks.prefetch import PAGE_SIZE, failed, render
from tests.patients import (
    CYCLOBENZAPRINE_5,
    CYCLOBENZAPRINE_10,
    PHENELZINE,
    SERTRALINE,
    TENS_DEVICE,
    Patient,
)
from tests.service_helpers import (
    PATIENT_VIEW,
    SERVICES,
    FhirStub,
    call,
    cards_of,
    hook_body,
    make_app,
    outcome_diagnostics,
    prefetch_for,
    resource_type_of,
    searchset,
    templates,
    threaded_httpserver,
    topics,
    without_uuids,
)

TOKEN = "test-access-token-6f1c"
AUTHORIZATION = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 30, "scope": "patient/*.read user/*.read",
                 "subject": "back-spasm-cds"}


@pytest.fixture(scope="module")
def make_httpserver():
    yield from threaded_httpserver()


@pytest.fixture(scope="module")
def other_server():
    """A second FHIR server on another port: nothing may ever be sent to it."""
    yield from threaded_httpserver()


@pytest.fixture
def elsewhere(other_server):
    other_server.clear()
    other_server.expect_request("/fhir/Condition").respond_with_json(searchset([]))
    other_server.expect_request("/fhir/Condition-page-2").respond_with_json(searchset([]))
    return other_server


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("prefetch"), request_budget=3.0, max_pages=3)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def tight_client(tmp_path_factory):
    """A service allowed half a second to complete its prefetch."""
    return make_app(tmp_path_factory.mktemp("prefetch-tight"), request_budget=0.5).test_client()


def spasm_patient(hours_ago: float = 20) -> Patient:
    patient = Patient(45)
    patient.spasm(hours_ago)
    return patient


def key_of(app, rtype: str, service_id: str = PATIENT_VIEW) -> str:
    return next(k for k, t in templates(app, service_id).items() if resource_type_of(t) == rtype)


def body_without(app, patient: Patient, *keys: str, server=None, hook: str = "patient-view", drafts=(), authorize: bool = False) -> dict:
    """A request with every prefetch key filled except ``keys``."""
    body = hook_body(app, hook, patient, drafts, fhir_server=server.url_for("/fhir") if server else None)
    for key in keys:
        body["prefetch"].pop(key)
    if authorize:
        body["fhirAuthorization"] = dict(AUTHORIZATION)
    return body


def assert_412(answer) -> str:
    assert answer.status_code == 412, (answer.status_code, answer.get_data(as_text=True)[:500])
    return outcome_diagnostics(answer)


# -- what is read, and how ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["patient", "allergyIntolerance", "carePlan", "condition", "encounter", "medicationRequest",
                                 "medicationStatement", "observation", "procedure", "serviceRequest"])
def test_a_missing_key_is_read_with_its_template(app, client, httpserver, key):
    patient = spasm_patient()
    FhirStub(patient.resources).mount(httpserver)
    template = templates(app, PATIENT_VIEW)[key]
    body = body_without(app, patient, key, server=httpserver)
    cards = cards_of(client, "patient-view", body)
    assert topics(cards) == ["cyclobenzaprine", "phase-plan"]
    [(request, response)] = httpserver.log
    assert request.method == "GET" and response.status_code == 200
    expected = urlsplit("/fhir/" + template.replace("{{context.patientId}}", patient.id))
    assert request.path == expected.path
    query = parse_qs(expected.query)
    if "?" in template:  # searches ask for large pages
        query["_count"] = [str(PAGE_SIZE)]
    assert parse_qs(request.query_string.decode()) == query
    assert "application/fhir+json" in request.headers.get("Accept", "") or "application/json" in request.headers.get("Accept", "")


def test_everything_is_read_when_nothing_was_prefetched(app, client, httpserver):
    patient = spasm_patient()
    FhirStub(patient.resources).mount(httpserver)
    body = hook_body(app, "patient-view", patient, prefetch=False, fhir_server=httpserver.url_for("/fhir"))
    assert topics(cards_of(client, "patient-view", body)) == ["cyclobenzaprine", "phase-plan"]
    read = sorted(request.path for request, _ in httpserver.log)
    expected = sorted(urlsplit("/fhir/" + t.replace("{{context.patientId}}", patient.id)).path for t in templates(app, PATIENT_VIEW).values())
    assert read == expected


def test_the_bearer_token_goes_to_the_fhir_server(app, client, httpserver):
    patient = spasm_patient()
    patient.medication(SERTRALINE, shape="reference")
    FhirStub(patient.resources).mount(httpserver)
    body = hook_body(app, "patient-view", patient, prefetch=False, fhir_server=httpserver.url_for("/fhir"))
    body["fhirAuthorization"] = dict(AUTHORIZATION)
    cards = cards_of(client, "patient-view", body)
    proposal = [c for c in cards if c["source"]["topic"]["code"] == "cyclobenzaprine"]
    assert proposal and proposal[0]["indicator"] == "warning" and "sertraline" in proposal[0]["summary"].lower(), \
        "the Medication the order references was read and understood"
    assert any(r.path.startswith("/fhir/Medication/") for r, _ in httpserver.log)
    assert {r.headers.get("Authorization") for r, _ in httpserver.log} == {f"Bearer {TOKEN}"}


def test_no_authorization_header_without_fhir_authorization(app, client, httpserver):
    patient = spasm_patient()
    FhirStub(patient.resources).mount(httpserver)
    body = hook_body(app, "patient-view", patient, prefetch=False, fhir_server=httpserver.url_for("/fhir"))
    cards_of(client, "patient-view", body)
    assert httpserver.log and all("Authorization" not in r.headers for r, _ in httpserver.log)


def test_a_next_link_to_another_server_is_not_followed(app, client, httpserver, elsewhere):
    patient = spasm_patient()
    page = searchset([r for r in patient.resources if r["resourceType"] == "Condition"])
    page["link"] = [{"relation": "self", "url": httpserver.url_for("/fhir/Condition")},
                    {"relation": "next", "url": elsewhere.url_for("/fhir/Condition-page-2")}]
    httpserver.expect_request("/fhir/Condition").respond_with_json(page)
    body = body_without(app, patient, key_of(app, "Condition"), server=httpserver, authorize=True)
    assert "condition" in assert_412(call(client, "patient-view", body)), "the second page cannot be read: the search is incomplete"
    assert elsewhere.log == [], "the other server was contacted"
    assert len(httpserver.log) == 1


def test_a_redirect_to_another_server_is_not_followed(app, client, httpserver, elsewhere):
    patient = spasm_patient()
    httpserver.expect_request("/fhir/Condition").respond_with_response(
        Response(status=302, headers={"Location": elsewhere.url_for("/fhir/Condition")}))
    body = body_without(app, patient, key_of(app, "Condition"), server=httpserver, authorize=True)
    assert_412(call(client, "patient-view", body))
    assert elsewhere.log == []


def paged(httpserver, pages: list[list[dict]]) -> None:
    """Condition search results spread over pages linked by ``next``."""
    for n, resources in enumerate(pages, start=1):
        bundle = searchset(resources)
        bundle["link"] = [{"relation": "self", "url": httpserver.url_for(f"/fhir/Condition-page-{n}")}]
        if n < len(pages):
            bundle["link"].append({"relation": "next", "url": httpserver.url_for(f"/fhir/Condition-page-{n + 1}")})
        httpserver.expect_request("/fhir/Condition" if n == 1 else f"/fhir/Condition-page-{n}").respond_with_json(bundle)


def test_searchset_pages_are_followed(app, client, httpserver):
    patient = Patient(45)
    spasm = patient.spasm(20)
    other = {"resourceType": "Condition", "id": "other", "subject": patient.ref, "code": {"text": "Hypertension"}}
    paged(httpserver, [[other], [], [spasm]])
    body = body_without(app, patient, key_of(app, "Condition"), server=httpserver, authorize=True)
    assert topics(cards_of(client, "patient-view", body)) == ["cyclobenzaprine", "phase-plan"], "the spasm is on the last page"
    assert [r.path for r, _ in httpserver.log] == ["/fhir/Condition", "/fhir/Condition-page-2", "/fhir/Condition-page-3"]
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r, _ in httpserver.log)


def test_no_more_pages_than_max_pages_are_read(app, client, httpserver):
    patient = Patient(45)
    spasm = patient.spasm(20)
    paged(httpserver, [[spasm], [], [], [], []])
    body = body_without(app, patient, key_of(app, "Condition"), server=httpserver)
    assert "condition" in assert_412(call(client, "patient-view", body)), "a next link is left: the search is incomplete"
    assert [r.path for r, _ in httpserver.log] == ["/fhir/Condition", "/fhir/Condition-page-2", "/fhir/Condition-page-3"]


# -- a FHIR server that does not answer well: 412 ---------------------------------------------------------


def test_a_slow_fhir_server_gives_412_within_the_budget(app, tight_client, httpserver):
    patient = spasm_patient()

    def slow(request):
        time.sleep(1.5)
        return Response(json.dumps(searchset([])), content_type="application/fhir+json")

    httpserver.expect_request("/fhir/Condition").respond_with_handler(slow)
    body = body_without(app, patient, key_of(app, "Condition"), server=httpserver)
    started = time.monotonic()
    answer = call(tight_client, "patient-view", body)
    elapsed = time.monotonic() - started
    text = assert_412(answer)
    assert "condition" in text.lower()
    assert elapsed < 1.3, f"the service waited {elapsed:.2f} s with a 0.5 s budget"


@pytest.mark.parametrize("status", [500, 503, 401, 404])
def test_a_fhir_server_error_gives_412(app, client, httpserver, status):
    httpserver.expect_request("/fhir/Condition").respond_with_json(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}, status=status)
    body = body_without(app, spasm_patient(), key_of(app, "Condition"), server=httpserver)
    assert "condition" in assert_412(call(client, "patient-view", body)).lower()


@pytest.mark.parametrize("payload, content_type", [
    ("<html><body>Service Unavailable</body></html>", "text/html"),
    ("{not json", "application/fhir+json"),
    ("[1, 2, 3]", "application/json"),
    ('{"hello": "world"}', "application/json"),
    ("", "application/fhir+json"),
])
def test_a_nonsense_answer_gives_412(app, client, httpserver, payload, content_type):
    httpserver.expect_request("/fhir/Condition").respond_with_data(payload, content_type=content_type)
    body = body_without(app, spasm_patient(), key_of(app, "Condition"), server=httpserver)
    assert_412(call(client, "patient-view", body))


def test_an_unreachable_fhir_server_gives_412(app, client):
    body = body_without(app, spasm_patient(), key_of(app, "Condition"))
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    assert_412(call(client, "patient-view", body))


# -- null, OperationOutcome and absent prefetch values --------------------------------------------------------


def test_null_means_no_data_and_is_not_read(app, client, httpserver):
    patient = spasm_patient()
    FhirStub(patient.resources).mount(httpserver)
    body = hook_body(app, "patient-view", patient, fhir_server=httpserver.url_for("/fhir"))
    body["prefetch"][key_of(app, "Condition")] = None
    answer = call(client, "patient-view", body)
    assert answer.status_code == 200 and answer.get_json() == {"cards": []}, "no Condition means no spasm"
    assert httpserver.log == []


def test_all_null_searches_are_not_read(app, client, httpserver):
    patient = Patient(45)
    body = hook_body(app, "patient-view", patient, fhir_server=httpserver.url_for("/fhir"), empty="null")
    assert all(v is None for k, v in body["prefetch"].items() if k != "patient")
    answer = call(client, "patient-view", body)
    assert answer.status_code == 200 and answer.get_json() == {"cards": []}
    assert httpserver.log == []


@pytest.mark.parametrize("shape", ["outcome", "bundle of outcomes"])
def test_an_operation_outcome_is_read_again(app, client, httpserver, shape):
    patient = spasm_patient()
    FhirStub(patient.resources).mount(httpserver)
    failure = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout", "diagnostics": "upstream timed out"}]}
    body = hook_body(app, "patient-view", patient, fhir_server=httpserver.url_for("/fhir"))
    body["prefetch"][key_of(app, "Condition")] = failure if shape == "outcome" else {
        "resourceType": "Bundle", "type": "searchset", "entry": [{"resource": failure}]}
    assert topics(cards_of(client, "patient-view", body)) == ["cyclobenzaprine", "phase-plan"]
    assert [r.path for r, _ in httpserver.log] == ["/fhir/Condition"]


@pytest.mark.parametrize("hook", list(SERVICES))
def test_a_missing_key_without_fhir_server_gives_412(app, client, hook):
    patient = spasm_patient()
    drafts = [] if hook == "patient-view" else [patient.draft_service(TENS_DEVICE, resource_type="DeviceRequest")]
    body = body_without(app, patient, key_of(app, "MedicationRequest", SERVICES[hook]), hook=hook, drafts=drafts)
    assert "fhirServer" not in body
    assert "medicationRequest" in assert_412(call(client, hook, body))


def test_an_operation_outcome_without_fhir_server_gives_412(app, client):
    body = hook_body(app, "patient-view", spasm_patient())
    body["prefetch"][key_of(app, "Condition")] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
    assert_412(call(client, "patient-view", body))


# -- Medications that orders reference ----------------------------------------------------------------------


def test_a_referenced_medication_is_read(app, client, httpserver):
    patient = Patient(45)
    patient.spasm(days_ago=26)
    patient.medication(CYCLOBENZAPRINE_5, started_days_ago=25, shape="reference")
    medication = next(r for r in patient.resources if r["resourceType"] == "Medication")
    FhirStub(patient.resources).mount(httpserver)
    body = hook_body(app, "patient-view", patient, fhir_server=httpserver.url_for("/fhir"))
    body["fhirAuthorization"] = dict(AUTHORIZATION)
    assert "S11" in topics(cards_of(client, "patient-view", body))
    [(request, _)] = httpserver.log
    assert (request.method, request.path) == ("GET", f"/fhir/Medication/{medication['id']}")
    assert request.headers.get("Authorization") == f"Bearer {TOKEN}"


def test_a_medication_referenced_by_a_draft_is_read(app, client, httpserver):
    patient = spasm_patient()
    patient.medication(PHENELZINE)
    httpserver.expect_request("/fhir/Medication/cbz-10").respond_with_json(
        {"resourceType": "Medication", "id": "cbz-10", "code": {"coding": [{"system": CYCLOBENZAPRINE_10[0], "code": CYCLOBENZAPRINE_10[1]}]}})
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, draft_id="rx-1")
    draft.pop("medicationCodeableConcept")
    draft["medicationReference"] = {"reference": "Medication/cbz-10"}
    body = hook_body(app, "order-sign", patient, [draft], fhir_server=httpserver.url_for("/fhir"))
    cards = cards_of(client, "order-sign", body)
    assert "S1" in topics(cards)
    assert next(c for c in cards if c["source"]["topic"]["code"] == "S1")["indicator"] == "critical"
    assert [r.path for r, _ in httpserver.log] == ["/fhir/Medication/cbz-10"]


def test_a_referenced_medication_without_fhir_server_gives_412(app, client):
    patient = Patient(45)
    patient.spasm(days_ago=26)
    patient.medication(CYCLOBENZAPRINE_5, started_days_ago=25, shape="reference")
    body = hook_body(app, "patient-view", patient)
    assert "Medication/" in assert_412(call(client, "patient-view", body))


def test_a_referenced_medication_the_server_does_not_have_gives_412(app, client, httpserver):
    patient = Patient(45)
    patient.spasm(days_ago=26)
    patient.medication(CYCLOBENZAPRINE_5, started_days_ago=25, shape="reference")
    FhirStub([r for r in patient.resources if r["resourceType"] != "Medication"]).mount(httpserver)
    body = hook_body(app, "patient-view", patient, fhir_server=httpserver.url_for("/fhir"))
    assert_412(call(client, "patient-view", body))


# -- read or prefetched: the same cards ------------------------------------------------------------------------


def example_7() -> Patient:
    patient = Patient(45)
    patient.spasm(days_ago=26)
    patient.medication(CYCLOBENZAPRINE_5, started_days_ago=25, shape="reference")
    return patient


def example_12() -> Patient:
    patient = spasm_patient()
    patient.medication(SERTRALINE, kind="statement")
    patient.pain(8)
    patient.physical_therapy("procedure", days_ago=10)
    return patient


def example_3() -> Patient:
    patient = Patient(72)
    patient.spasm(30)
    patient.physical_therapy("encounter", days_ago=5)
    return patient


@pytest.mark.parametrize("build", [spasm_patient, example_3, example_7, example_12])
def test_read_data_gives_the_same_cards_as_prefetched_data(app, client, httpserver, build):
    patient = build()
    medications = [r for r in patient.resources if r["resourceType"] == "Medication"]
    prefetched = hook_body(app, "patient-view", patient)
    if medications:  # a client may send them as _include results of the order search
        prefetched["prefetch"][key_of(app, "MedicationRequest")]["entry"] += [
            {"resource": m, "search": {"mode": "include"}} for m in medications]
    expected = cards_of(client, "patient-view", prefetched)
    assert expected

    FhirStub(patient.resources).mount(httpserver)
    read = hook_body(app, "patient-view", patient, prefetch=False, fhir_server=httpserver.url_for("/fhir"))
    read["fhirAuthorization"] = dict(AUTHORIZATION)
    assert without_uuids(cards_of(client, "patient-view", read)) == without_uuids(expected)
    assert len(httpserver.log) == len(templates(app, PATIENT_VIEW)) + len(medications)


def test_read_data_gives_the_same_cards_on_order_sign(app, client, httpserver):
    patient = spasm_patient()
    patient.medication(SERTRALINE)
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, days=30, draft_id="rx-30")
    expected = cards_of(client, "order-sign", hook_body(app, "order-sign", patient, [draft]))
    assert set(topics(expected)) >= {"S8", "S7"}
    FhirStub(patient.resources).mount(httpserver)
    read = hook_body(app, "order-sign", patient, [draft], prefetch=False, fhir_server=httpserver.url_for("/fhir"))
    assert without_uuids(cards_of(client, "order-sign", read)) == without_uuids(expected)


def test_prefetch_for_helper_matches_the_templates(app):
    """Guard for the tests above: the helper fills exactly the advertised keys."""
    patient = example_12()
    assert set(prefetch_for(app, PATIENT_VIEW, patient.resources)) == set(templates(app, PATIENT_VIEW))


ERROR = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
WARNING = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "incomplete"}]}
CONDITION = {"resourceType": "Condition", "id": "c1"}


@pytest.mark.parametrize("value, is_failure", [
    (ERROR, True),
    ({"resourceType": "Bundle", "entry": [{"resource": ERROR}, {"resource": ERROR}]}, True),
    ({"resourceType": "Bundle", "entry": ["junk", {"resource": ERROR}]}, True),
    ({"resourceType": "Bundle", "entry": [{"resource": CONDITION}, {"resource": ERROR}]}, True),
    ({"resourceType": "Bundle", "entry": [{"resource": ERROR}, {"resource": CONDITION}]}, True),
    ({"resourceType": "Bundle", "entry": [{"resource": WARNING}]}, False),
    ({"resourceType": "Bundle", "entry": [{"resource": CONDITION}, {"resource": WARNING, "search": {"mode": "outcome"}}]}, False),
    ({"resourceType": "Bundle", "entry": [{"resource": ERROR}, {"fullUrl": "urn:x"}]}, True),
    ({"resourceType": "Bundle", "link": [{"relation": "next", "url": "http://x/fhir/p2"}], "entry": [{"resource": CONDITION}]}, True),
    ({"resourceType": "Bundle", "link": [{"relation": "self", "url": "http://x/fhir/p1"}], "entry": [{"resource": CONDITION}]}, False),
    ({"resourceType": "Bundle", "entry": []}, False),
    ({"resourceType": "Bundle"}, False),
    (CONDITION, False),
    (None, False),
])
def test_values_that_are_not_the_whole_answer_count_as_failed(value, is_failure):
    """An error outcome, a Bundle holding one (even beside data) or a first page only is read again; warnings are fine."""
    assert failed(value) is is_failure


# -- how much is read: max_body_bytes for all the answers of a call -------------------------------------------


@pytest.mark.parametrize("framing", ["declared length", "no length"])
def test_an_answer_larger_than_max_body_bytes_gives_412(app, tmp_path_factory, httpserver, framing):
    """What may be read for a call is what a client may send as prefetch: ``max_body_bytes``, with or without a length."""
    patient = spasm_patient()
    padding = {"resourceType": "Condition", "id": "long", "subject": patient.ref, "code": {"text": "x" * 5000}}
    text = json.dumps(searchset([*(r for r in patient.resources if r["resourceType"] == "Condition"), padding]))
    pieces = [text] if framing == "declared length" else (text[i:i + 512] for i in range(0, len(text), 512))
    httpserver.expect_request("/fhir/Condition").respond_with_response(Response(pieces, content_type="application/fhir+json"))
    small = make_app(tmp_path_factory.mktemp("prefetch-small"), max_body_bytes=4096).test_client()
    body = body_without(app, patient, key_of(app, "Condition"), server=httpserver)
    assert "4096 bytes" in assert_412(call(small, "patient-view", body))


def test_the_byte_limit_holds_for_all_the_answers_of_a_call_together(app, tmp_path_factory, httpserver):
    patient = spasm_patient()
    FhirStub(patient.resources).mount(httpserver)
    body = hook_body(app, "patient-view", patient, prefetch=False, fhir_server=httpserver.url_for("/fhir"))
    roomy = make_app(tmp_path_factory.mktemp("prefetch-roomy"), max_body_bytes=8192).test_client()
    assert topics(cards_of(roomy, "patient-view", body)) == ["cyclobenzaprine", "phase-plan"]
    sizes = [len(response.get_data()) for _, response in httpserver.log]
    assert max(sizes) < 1024 < sum(sizes), sizes
    tight = make_app(tmp_path_factory.mktemp("prefetch-tight-bytes"), max_body_bytes=1024).test_client()
    assert "1024 bytes" in assert_412(call(tight, "patient-view", body))


def test_a_medication_reference_that_is_not_a_fhir_id_is_not_read(app, client, httpserver):
    patient = Patient(45)
    patient.spasm(days_ago=26)
    order = patient.medication(CYCLOBENZAPRINE_5, started_days_ago=25, shape="reference")
    order["medicationReference"] = {"reference": "Medication/x?_format=xml"}
    body = hook_body(app, "patient-view", patient, fhir_server=httpserver.url_for("/fhir"))
    assert "not a FHIR id" in assert_412(call(client, "patient-view", body))
    assert not [r.path for r, _ in httpserver.log if r.path.startswith("/fhir/Medication/")], "the reference is not read"


# -- rendering templates -----------------------------------------------------------------------------------


@pytest.mark.parametrize("template, context, expected", [
    ("Patient/{{context.patientId}}", {"patientId": "p-1.2"}, "Patient/p-1.2"),
    ("Condition?patient={{ context.patientId }}", {"patientId": "p1"}, "Condition?patient=p1"),
    ("Encounter/{{context.encounterId}}?patient={{context.patientId}}", {"patientId": "p1", "encounterId": "e1"},
     "Encounter/e1?patient=p1"),
    ("Patient/{{context.patientId}}", {"patientId": "a" * 64}, "Patient/" + "a" * 64),
    ("Patient?name=x}}", {}, "Patient?name=x}}"),
    ("metadata", {}, "metadata"),
])
def test_a_template_is_rendered(template, context, expected):
    assert render(template, context) == expected


@pytest.mark.parametrize("template, context", [
    ("Patient/{{context.patientId}}", {"patientId": "{{context.encounterId}}", "encounterId": "e1"}),
    ("Patient/{{context.patientId}}", {"patientId": "p1{{x"}),
    ("Patient/{{context.patientId}}", {"patientId": "{{context.patientId}}"}),
    ("Patient/{{context.patientId", {"patientId": "p1"}),
    ("Condition?patient={{context.patientId}}&code={{", {"patientId": "p1"}),
    ("Patient/{{userPractitionerId}}", {"patientId": "p1", "userId": "Practitioner/1"}),
    ("Patient/{{context.patientId}}", {}),
    ("Patient/{{context.patientId}}", {"patientId": ""}),
    ("Patient/{{context.patientId}}", {"patientId": 7}),
    ("Patient/{{context.patientId}}", {"patientId": ["p1"]}),
    ("Patient/{{context.patientId}}", {"patientId": "a" * 65}),
    ("Patient/{{context.patientId}}", {"patientId": "p1/../../Practitioner/x"}),
    ("Patient/{{context.patientId}}", {"patientId": "p1?_format=xml"}),
    ("Patient/{{context.patientId}}", {"patientId": "p 1"}),
    ("Patient/{{context.patientId}}", {"patientId": "p1#x"}),
    ("Patient/{{context.patientId}}", {"patientId": "p1\r\nX-Injected: 1"}),
    ("Patient/{{context.patientId}}", {"patientId": "pé"}),
    ("Patient/{{context.patientId}}", None),
])
def test_a_template_that_cannot_be_filled_with_fhir_ids_gives_none(template, context):
    """A context value is data: one that is not a FHIR id never goes into a URL, and is never read as a template."""
    assert render(template, context) is None
