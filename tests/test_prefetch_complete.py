"""Complete data or none: a query the service cannot read whole counts as missing (PROTOCOL.md §4a).

Each case at its boundary, against a FHIR server on loopback (pytest-httpserver): ``max_pages`` pages
with no further ``next`` link are read, one more is a failed read; an OperationOutcome is a failed read
whatever the HTTP status; a searchset holding an error outcome is one even beside data, a warning is not;
a supplied first page (with a ``next`` link) is read whole from ``fhirServer`` or gives 412; searches ask
for large pages, reads do not; the time budget spent between pages gives 412. Every 412 is an
OperationOutcome that names the key and its query template, and holds neither the token nor the patient id.
"""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs

import pytest
from werkzeug.wrappers import Response

from service.cds_hooks.prefetch import PAGE_SIZE, failed, query_label, with_page_size
from tests.patients import CYCLOBENZAPRINE_5, Patient
from tests.service_helpers import (
    PATIENT_VIEW,
    FhirStub,
    call,
    cards_of,
    hook_body,
    make_app,
    outcome_diagnostics,
    resource_type_of,
    searchset,
    templates,
    threaded_httpserver,
    topics,
)

TOKEN = "secret-access-token-9b2e"
AUTHORIZATION = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 30, "scope": "patient/*.read",
                 "subject": "back-spasm-cds"}
PATIENT_ID = "pt-private-5c81d"
MAX_PAGES = 3
ERROR = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception", "diagnostics": "database gone"}]}
FATAL = {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"},
                                                       {"severity": "fatal", "code": "exception"}]}
WARNING = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "informational",
                                                          "diagnostics": "code system version not checked"}]}


@pytest.fixture(scope="module")
def make_httpserver():
    yield from threaded_httpserver()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("complete"), request_budget=3.0, max_pages=MAX_PAGES)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def tight_client(tmp_path_factory):
    """A service allowed half a second to complete its prefetch, and many pages."""
    return make_app(tmp_path_factory.mktemp("complete-tight"), request_budget=0.5, max_pages=20).test_client()


def spasm_patient() -> Patient:
    patient = Patient(45, patient_id=PATIENT_ID)
    patient.spasm(20)
    return patient


def conditions(patient: Patient) -> list[dict]:
    return [r for r in patient.resources if r["resourceType"] == "Condition"]


def condition_key(app) -> str:
    return next(k for k, t in templates(app, PATIENT_VIEW).items() if resource_type_of(t) == "Condition")


def without_conditions(app, patient: Patient, server, authorize: bool = True) -> dict:
    """A patient-view request with every key prefetched but the Condition search, to be read from ``server``."""
    body = hook_body(app, "patient-view", patient, fhir_server=server.url_for("/fhir") if server else None)
    body["prefetch"].pop(condition_key(app))
    if authorize:
        body["fhirAuthorization"] = dict(AUTHORIZATION)
    return body


def serve_pages(httpserver, pages: list[dict], last_next: bool = False) -> None:
    """Searchset pages of the Condition search, each linked to the following one by ``next``."""
    for n, bundle in enumerate(pages, start=1):
        bundle["link"] = [{"relation": "self", "url": httpserver.url_for(f"/fhir/Condition-page-{n}")}]
        if n < len(pages) or last_next:
            bundle["link"].append({"relation": "next", "url": httpserver.url_for(f"/fhir/Condition-page-{n + 1}")})
        httpserver.expect_request("/fhir/Condition" if n == 1 else f"/fhir/Condition-page-{n}").respond_with_json(bundle)


def spread(patient: Patient, count: int) -> list[dict]:
    """The patient's Conditions over ``count`` pages, the spasm on the last one."""
    return [searchset([]) for _ in range(count - 1)] + [searchset(conditions(patient))]


def assert_412(answer, key: str = "condition") -> str:
    """The diagnostics of a 412 answer, which must name the key."""
    assert answer.status_code == 412, (answer.status_code, answer.get_data(as_text=True)[:1000])
    text = outcome_diagnostics(answer)
    assert key in text, text
    return text


# -- 1. searches ask for large pages, reads do not -------------------------------------------------------


def test_searches_ask_for_large_pages_and_reads_do_not(app, client, httpserver):
    patient = spasm_patient()
    patient.medication(CYCLOBENZAPRINE_5, started_days_ago=2, shape="reference")
    FhirStub(patient.resources).mount(httpserver)
    body = hook_body(app, "patient-view", patient, prefetch=False, fhir_server=httpserver.url_for("/fhir"))
    assert cards_of(client, "patient-view", body)
    reads = [r for r, _ in httpserver.log if r.path.count("/") == 3]
    searches = [r for r, _ in httpserver.log if r.path.count("/") == 2]
    assert {r.path.split("/")[2] for r in reads} == {"Patient", "Medication"}
    assert len(searches) == len(templates(app, PATIENT_VIEW)) - 1
    for request in searches:
        query = parse_qs(request.query_string.decode())
        assert query["_count"] == [str(PAGE_SIZE)], request.url
        assert query["patient"] == [PATIENT_ID], "the template's own parameters are kept"
    assert all(not r.query_string for r in reads), [r.url for r in reads]


@pytest.mark.parametrize("relative, expected", [
    ("Condition?patient=p1", f"Condition?patient=p1&_count={PAGE_SIZE}"),
    ("Condition", f"Condition?_count={PAGE_SIZE}"),
    ("Condition?patient=p1&", f"Condition?patient=p1&_count={PAGE_SIZE}"),
    ("Observation?patient=p1&code=http://loinc.org|38208-5,http://loinc.org|72514-3",
     f"Observation?patient=p1&code=http://loinc.org|38208-5,http://loinc.org|72514-3&_count={PAGE_SIZE}"),
    ("Condition?_count=50&patient=p1", "Condition?_count=50&patient=p1"),
    ("Patient/p1", "Patient/p1"),
    ("Medication/m-1", "Medication/m-1"),
    ("Medication/m-1/_history/2", "Medication/m-1/_history/2"),
])
def test_page_size_merges_with_the_query(relative, expected):
    """``_count`` joins the other parameters unencoded; a query that sets it, and a read, are left alone."""
    assert with_page_size(relative) == expected


# -- 2. pages: max_pages is the limit ------------------------------------------------------------------------


def test_exactly_max_pages_pages_are_read(app, client, httpserver):
    patient = spasm_patient()
    serve_pages(httpserver, spread(patient, MAX_PAGES))
    cards = cards_of(client, "patient-view", without_conditions(app, patient, httpserver))
    assert topics(cards) == ["cyclobenzaprine", "phase-plan"], "the spasm on the last page was read"
    assert len(httpserver.log) == MAX_PAGES


def test_a_next_link_left_after_max_pages_gives_412(app, client, httpserver):
    patient = spasm_patient()
    serve_pages(httpserver, spread(patient, MAX_PAGES + 1))
    text = assert_412(call(client, "patient-view", without_conditions(app, patient, httpserver)))
    assert f"more than {MAX_PAGES} pages" in text
    assert len(httpserver.log) == MAX_PAGES, "the page past the limit is not asked for"


def test_a_next_link_on_the_last_page_allowed_gives_412_even_if_the_page_is_empty(app, client, httpserver):
    patient = spasm_patient()
    pages = [searchset(conditions(patient))] + [searchset([]) for _ in range(MAX_PAGES - 1)]
    serve_pages(httpserver, pages, last_next=True)
    assert_412(call(client, "patient-view", without_conditions(app, patient, httpserver)))


# -- 3. a page that fails ---------------------------------------------------------------------------------------


def _page_two(httpserver, kind: str) -> None:
    if kind == "http 500":
        httpserver.expect_request("/fhir/Condition-page-2").respond_with_json(ERROR, status=500)
    elif kind == "not json":
        httpserver.expect_request("/fhir/Condition-page-2").respond_with_data("<html>busy</html>", content_type="text/html")
    elif kind == "not a bundle":
        httpserver.expect_request("/fhir/Condition-page-2").respond_with_json({"resourceType": "Patient", "id": "x"})
    elif kind == "redirect":
        httpserver.expect_request("/fhir/Condition-page-2").respond_with_response(
            Response(status=302, headers={"Location": httpserver.url_for("/fhir/Condition-page-3")}))


@pytest.mark.parametrize("kind", ["http 500", "not json", "not a bundle", "redirect", "other server"])
def test_a_failing_second_page_gives_412(app, client, httpserver, kind):
    patient = spasm_patient()
    first = searchset(conditions(patient))
    following = "http://127.0.0.1:9/fhir/Condition-page-2" if kind == "other server" else httpserver.url_for("/fhir/Condition-page-2")
    first["link"] = [{"relation": "next", "url": following}]
    httpserver.expect_request("/fhir/Condition").respond_with_json(first)
    _page_two(httpserver, kind)
    assert_412(call(client, "patient-view", without_conditions(app, patient, httpserver)))
    assert len(httpserver.log) == (1 if kind == "other server" else 2)


def test_a_connection_error_gives_412(app, client):
    body = without_conditions(app, spasm_patient(), None)
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    assert "no usable answer" in assert_412(call(client, "patient-view", body))


def test_a_closed_port_and_an_open_one_read_the_same(app, client, httpserver):
    """The 412 cannot be used to probe ports: a refused connection and an HTTP error answer give the same text."""
    from tests.live_server import free_port

    httpserver.expect_request("/fhir/Condition").respond_with_data("not here", status=404)
    texts = []
    for server in (f"http://127.0.0.1:{free_port()}/fhir", httpserver.url_for("/fhir")):
        body = without_conditions(app, spasm_patient(), None)
        body["fhirServer"] = server
        texts.append(assert_412(call(client, "patient-view", body)))
    assert texts[0] == texts[1] and "no usable answer" in texts[0]


# -- 4. the time budget ------------------------------------------------------------------------------------------


def test_the_time_budget_spent_while_paging_gives_412(app, tight_client, httpserver):
    patient = spasm_patient()
    pages = spread(patient, 8)
    for n, bundle in enumerate(pages, start=1):
        bundle["link"] = [{"relation": "next", "url": httpserver.url_for(f"/fhir/Condition-page-{n + 1}")}] if n < len(pages) else []
        text = json.dumps(bundle)

        def slow(request, text=text):
            time.sleep(0.15)
            return Response(text, content_type="application/fhir+json")

        httpserver.expect_request("/fhir/Condition" if n == 1 else f"/fhir/Condition-page-{n}").respond_with_handler(slow)
    started = time.monotonic()
    text = assert_412(call(tight_client, "patient-view", without_conditions(app, patient, httpserver)))
    elapsed = time.monotonic() - started
    assert "no usable answer" in text
    assert 2 <= len(httpserver.log) < len(pages), "the budget ran out between pages"
    assert elapsed < 1.2, f"the service waited {elapsed:.2f} s with a 0.5 s budget"


# -- 5. OperationOutcomes in answers -------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["patient", "condition"])
def test_an_operation_outcome_with_http_200_gives_412(app, client, httpserver, key):
    patient = spasm_patient()
    FhirStub(patient.resources).mount(httpserver)
    path = f"/fhir/Patient/{PATIENT_ID}" if key == "patient" else "/fhir/Condition"
    httpserver.clear()
    httpserver.expect_request(path).respond_with_json(ERROR, status=200)
    body = hook_body(app, "patient-view", patient, fhir_server=httpserver.url_for("/fhir"))
    body["prefetch"].pop(key)
    text = assert_412(call(client, "patient-view", body), key)
    assert "OperationOutcome" in text
    assert "database gone" not in text, "the server's diagnostics are not passed on"


@pytest.mark.parametrize("outcome", [ERROR, FATAL], ids=["error", "fatal"])
def test_a_searchset_with_an_error_entry_beside_data_gives_412(app, client, httpserver, outcome):
    patient = spasm_patient()
    page = searchset(conditions(patient))
    page["entry"].append({"resource": outcome, "search": {"mode": "outcome"}})
    httpserver.expect_request("/fhir/Condition").respond_with_json(page)
    assert "error" in assert_412(call(client, "patient-view", without_conditions(app, patient, httpserver)))


def test_an_error_entry_on_a_later_page_gives_412(app, client, httpserver):
    patient = spasm_patient()
    pages = spread(patient, 2)
    pages[1]["entry"].insert(0, {"resource": ERROR, "search": {"mode": "outcome"}})
    serve_pages(httpserver, pages)
    assert "page 2" in assert_412(call(client, "patient-view", without_conditions(app, patient, httpserver)))


def test_a_searchset_with_a_warning_entry_is_used(app, client, httpserver):
    patient = spasm_patient()
    page = searchset(conditions(patient))
    page["entry"].append({"resource": WARNING, "search": {"mode": "outcome"}})
    httpserver.expect_request("/fhir/Condition").respond_with_json(page)
    cards = cards_of(client, "patient-view", without_conditions(app, patient, httpserver))
    assert topics(cards) == ["cyclobenzaprine", "phase-plan"]


# -- 6. what the EHR sent ------------------------------------------------------------------------------------


def first_page_only(app, patient: Patient, server) -> dict:
    """A request whose Condition prefetch is the first page of several: an unrelated Condition and a next link."""
    body = hook_body(app, "patient-view", patient, fhir_server=server.url_for("/fhir") if server else None)
    other = {"resourceType": "Condition", "id": "htn", "subject": patient.ref, "code": {"text": "Hypertension"}}
    page = searchset([other])
    page["link"] = [{"relation": "next", "url": "https://ehr.example/fhir/Condition?page=2"}]
    body["prefetch"][condition_key(app)] = page
    return body


def test_a_supplied_first_page_without_fhir_server_gives_412(app, client):
    text = assert_412(call(client, "patient-view", first_page_only(app, spasm_patient(), None)))
    assert "incomplete" in text and "first page" in text


def test_a_supplied_first_page_is_read_whole_from_the_fhir_server(app, client, httpserver):
    patient = spasm_patient()
    FhirStub(patient.resources).mount(httpserver)
    body = first_page_only(app, patient, httpserver)
    body["fhirAuthorization"] = dict(AUTHORIZATION)
    assert topics(cards_of(client, "patient-view", body)) == ["cyclobenzaprine", "phase-plan"], "the spasm is on the server"
    [(request, _)] = httpserver.log
    assert request.path == "/fhir/Condition", "read with the template, not by following the EHR's next link"
    assert parse_qs(request.query_string.decode())["patient"] == [PATIENT_ID]


def test_a_supplied_searchset_with_an_error_entry_counts_as_missing(app, client, httpserver):
    patient = spasm_patient()
    body = hook_body(app, "patient-view", patient)
    supplied = searchset(conditions(patient))
    supplied["entry"].append({"resource": ERROR, "search": {"mode": "outcome"}})
    body["prefetch"][condition_key(app)] = supplied
    assert "OperationOutcome" in assert_412(call(client, "patient-view", body))

    FhirStub(patient.resources).mount(httpserver)
    body["fhirServer"] = httpserver.url_for("/fhir")
    assert topics(cards_of(client, "patient-view", body)) == ["cyclobenzaprine", "phase-plan"]
    assert [r.path for r, _ in httpserver.log] == ["/fhir/Condition"]


def test_a_supplied_searchset_with_a_warning_entry_is_used_as_sent(app, client, httpserver):
    patient = spasm_patient()
    body = hook_body(app, "patient-view", patient, fhir_server=httpserver.url_for("/fhir"))
    body["prefetch"][condition_key(app)]["entry"].append({"resource": WARNING, "search": {"mode": "outcome"}})
    assert topics(cards_of(client, "patient-view", body)) == ["cyclobenzaprine", "phase-plan"]
    assert httpserver.log == []


def test_null_is_still_no_data(app, client, httpserver):
    body = hook_body(app, "patient-view", spasm_patient(), fhir_server=httpserver.url_for("/fhir"))
    body["prefetch"][condition_key(app)] = None
    assert cards_of(client, "patient-view", body) == []
    assert httpserver.log == []


class Guarded(list):
    """Entries that fail the test if anything past the first ``allowed`` of them is looked at."""

    def __init__(self, items: list, allowed: int):
        super().__init__(items)
        self.allowed = allowed

    def __iter__(self):
        for n, item in enumerate(super().__iter__()):
            assert n < self.allowed, "an entry after the deciding one was read"
            yield item


def test_failed_stops_at_the_next_link_and_at_the_first_error():
    """The check on every supplied value: a next link decides before the entries, an error before the rest of them."""
    data = {"resource": {"resourceType": "Condition", "id": "c1"}}
    assert failed({"resourceType": "Bundle", "entry": Guarded([data, {"resource": ERROR}, data, data], allowed=2)})
    assert failed({"resourceType": "Bundle", "link": [{"relation": "next", "url": "x"}], "entry": Guarded([data], allowed=0)})
    assert not failed({"resourceType": "Bundle", "entry": [data, {"resource": WARNING}, data]})


# -- 7. medications read afterwards ----------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["outcome 200", "searchset with error"])
def test_a_referenced_medication_that_is_not_read_whole_gives_412(app, client, httpserver, answer):
    patient = Patient(45, patient_id=PATIENT_ID)
    patient.spasm(days_ago=26)
    patient.medication(CYCLOBENZAPRINE_5, started_days_ago=25, shape="reference")
    medication = next(r for r in patient.resources if r["resourceType"] == "Medication")
    reply = ERROR if answer == "outcome 200" else {"resourceType": "Bundle", "type": "searchset",
                                                   "entry": [{"resource": medication}, {"resource": ERROR}]}
    httpserver.expect_request(f"/fhir/Medication/{medication['id']}").respond_with_json(reply)
    body = hook_body(app, "patient-view", patient, fhir_server=httpserver.url_for("/fhir"))
    assert_412(call(client, "patient-view", body), f"Medication/{medication['id']}")
    [(request, _)] = httpserver.log
    assert not request.query_string, "a read asks for no page size"


# -- the 412 itself ---------------------------------------------------------------------------------------------


def test_the_412_is_an_operation_outcome_naming_the_key_and_its_query(app, client, httpserver):
    patient = spasm_patient()
    serve_pages(httpserver, spread(patient, MAX_PAGES + 1))
    answer = call(client, "patient-view", without_conditions(app, patient, httpserver))
    assert answer.status_code == 412 and answer.is_json
    outcome = answer.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert {issue["severity"] for issue in outcome["issue"]} == {"error"}
    assert {issue["code"] for issue in outcome["issue"]} == {"incomplete"}
    template = templates(app, PATIENT_VIEW)[condition_key(app)]
    assert any(condition_key(app) in i["diagnostics"] and query_label(template) in i["diagnostics"] for i in outcome["issue"])
    assert "{{context.patientId}}" in outcome_diagnostics(answer), "the template is named, not the rendered URL"


def _more_pages(app, httpserver, patient):
    serve_pages(httpserver, spread(patient, MAX_PAGES + 1))
    return without_conditions(app, patient, httpserver)


def _outcome_200(app, httpserver, patient):
    httpserver.expect_request("/fhir/Condition").respond_with_json(ERROR)
    return without_conditions(app, patient, httpserver)


def _http_error(app, httpserver, patient):
    httpserver.expect_request("/fhir/Condition").respond_with_json(ERROR, status=403)
    return without_conditions(app, patient, httpserver)


def _first_page_sent(app, httpserver, patient):
    return first_page_only(app, patient, None)


@pytest.mark.parametrize("build", [_more_pages, _outcome_200, _http_error, _first_page_sent])
def test_the_412_holds_no_token_and_no_patient_id(app, client, httpserver, build):
    answer = call(client, "patient-view", build(app, httpserver, spasm_patient()))
    assert answer.status_code == 412
    text = answer.get_data(as_text=True)
    assert TOKEN not in text and PATIENT_ID not in text, text
