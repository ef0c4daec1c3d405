"""Bad input gets a clear JSON answer: an OperationOutcome whose diagnostics name every problem, never a 5xx.

The statuses follow CDS Hooks and HTTP: 404 for an unknown service, 405 for a wrong method, 413 for a body
over the configured limit, 415 for a body not sent as JSON, 400 for a body that is not valid JSON or not a
usable hook request. Fields the service does not know are ignored.
"""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.patients import CYCLOBENZAPRINE_10, ICD, RXNORM, TENS_DEVICE, Patient
from tests.service_helpers import (
    ORDER_SELECT,
    ORDER_SIGN,
    PATIENT_VIEW,
    SERVICES,
    call,
    cards_of,
    hook_body,
    make_app,
    outcome_diagnostics,
    without_uuids,
)

LIMIT = 64 * 1024

pytestmark = pytest.mark.usefixtures("quiet_service_log")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("errors"), max_body_bytes=LIMIT)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()



def patient() -> Patient:
    p = Patient(45)
    p.spasm(20)
    return p


def valid(app, hook: str) -> dict:
    """A complete, valid request for the hook (a spasm patient, a TENS draft on the order hooks)."""
    p = patient()
    drafts = [] if hook == "patient-view" else [p.draft_service(TENS_DEVICE, resource_type="DeviceRequest", draft_id="tens-1")]
    return hook_body(app, hook, p, drafts)


def bad(answer, status: int = 400) -> str:
    assert answer.status_code == status, (answer.status_code, answer.get_data(as_text=True)[:800])
    return outcome_diagnostics(answer)


def test_the_valid_requests_used_here_succeed(app, client):
    for hook in SERVICES:
        assert cards_of(client, hook, valid(app, hook))


# -- routing and transport ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/cds-services/no-such-service", "/cds-services/no-such-service/feedback",
                                  "/cds-services/back-spasm-treatment-pathway"])
def test_unknown_service_is_404(app, client, path):
    bad(client.post(path, json=valid(app, "patient-view")), 404)


def test_unknown_service_names_the_id(app, client):
    assert "no-such-service" in bad(client.post("/cds-services/no-such-service", json=valid(app, "patient-view")), 404)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("suffix", ["", "/feedback"])
def test_wrong_method_on_a_service_is_405_json(client, method, suffix):
    answer = client.open(f"/cds-services/{PATIENT_VIEW}{suffix}", method=method)
    bad(answer, 405)
    assert "POST" in answer.headers.get("Allow", "")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_wrong_method_on_discovery_is_405_json(client, method):
    answer = client.open("/cds-services", method=method, json={})
    bad(answer, 405)
    assert "GET" in answer.headers.get("Allow", "")


@pytest.mark.parametrize("raw", [b"this is not json", b"{\"hook\": \"patient-view\",", b"", b"\x00\x01\x02", b"{'hook': 'patient-view'}",
                                 b"\xff\xfe{}"])
@pytest.mark.parametrize("suffix", ["", "/feedback"])
def test_a_body_sent_as_json_that_is_not_json_is_400(client, raw, suffix):
    answer = client.post(f"/cds-services/{PATIENT_VIEW}{suffix}", data=raw, content_type="application/json")
    assert "not valid JSON" in bad(answer, 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
@pytest.mark.parametrize("path", [f"/cds-services/{PATIENT_VIEW}", f"/cds-services/{PATIENT_VIEW}/feedback",
                                  "/fhir/PlanDefinition/back-spasm-treatment-pathway/$apply"])
def test_a_body_not_sent_as_json_is_415_even_when_it_is_json(app, client, content_type, path):
    """A web page can POST text/plain (or a form) to any origin without a CORS preflight: such a body is refused."""
    body = json.dumps(valid(app, "patient-view")).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    answer = client.post(path, data=body, headers=headers)
    assert "application/json" in bad(answer, 415)


def test_fhir_json_and_a_charset_are_json(app, client):
    body = json.dumps(valid(app, "patient-view")).encode()
    for content_type in ("application/fhir+json", "application/json; charset=utf-8"):
        assert client.post(f"/cds-services/{PATIENT_VIEW}", data=body, headers={"Content-Type": content_type}).status_code == 200


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


#: Bodies that are JSON (or nearly: NaN) but beyond what is accepted; each with the words of its 400.
UNACCEPTABLE = {
    "nested 5000 deep in the body": ('{"hook": "patient-view", "x": ' + _nested(5000) + "}", "nested too deeply"),
    "nested 500 deep in the body": ('{"hook": "patient-view", "x": ' + _nested(500) + "}", "nested too deeply"),
    "an integer beyond 64 bits": ('{"hook": "patient-view", "x": 123456789012345678901234567890}', "64-bit"),
    "an unsigned 64-bit integer": ('{"hook": "patient-view", "x": [18446744073709551615]}', "64-bit"),
    "a float beyond double": ('{"hook": "patient-view", "x": 1e400}', "64-bit"),
    "NaN": ('{"hook": "patient-view", "x": NaN}', "NaN"),
    "-Infinity": ('{"hook": "patient-view", "x": [-Infinity]}', "NaN and Infinity"),
}


@pytest.mark.parametrize("case", sorted(UNACCEPTABLE))
@pytest.mark.parametrize("suffix", ["", "/feedback"])
def test_json_nested_too_deeply_or_with_numbers_out_of_range_is_400(client, case, suffix):
    raw, words = UNACCEPTABLE[case]
    answer = client.post(f"/cds-services/{PATIENT_VIEW}{suffix}", data=raw, content_type="application/json")
    assert words in bad(answer, 400)


@pytest.mark.parametrize("hook", list(SERVICES))
@pytest.mark.parametrize("where", ["prefetch", "draft"])
def test_a_resource_nested_thousands_deep_is_400_naming_where(app, client, hook, where):
    body = json.dumps(valid(app, hook))
    deep = '{"extension": [' + '{"extension": [' * 3000 + "{}" + "]}" * 3000 + "]}"
    if where == "draft" and hook != "patient-view":
        body = body.replace('"resourceType": "DeviceRequest"', '"resourceType": "DeviceRequest", "modifierExtension": ' + deep[len('{"extension": '):-1], 1)
    else:
        body = body.replace('"resourceType": "Patient"', '"resourceType": "Patient", "extension": ' + deep[len('{"extension": '):-1], 1)
    answer = client.post(f"/cds-services/{SERVICES[hook]}", data=body, content_type="application/json")
    assert "nested too deeply" in bad(answer, 400)


def test_a_resource_nested_as_deep_as_real_ones_is_answered(app, client):
    body = valid(app, "patient-view")
    nested: dict = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(40):
        nested = {"url": "http://example.org/level", "extension": [nested]}
    body["prefetch"]["patient"]["extension"] = [nested]
    assert call(client, "patient-view", body).status_code == 200


@pytest.mark.parametrize("field, value", [("context.patientId", "{{context.patientId}}"), ("context.patientId", "pat-1&_count=1"),
                                          ("context.patientId", "../Practitioner/1"), ("context.patientId", "x" * 65),
                                          ("context.patientId", "Patient/pat-1"), ("context.encounterId", "{{x"),
                                          ("context.encounterId", "enc 1")])
@pytest.mark.parametrize("hook", list(SERVICES))
def test_context_ids_that_are_not_fhir_ids_are_400(app, client, hook, field, value):
    assert f"{field} must be a FHIR id" in bad(call(client, hook, put(valid(app, hook), field, value)))


@pytest.mark.parametrize("value", [[], [{"hook": "patient-view"}], "patient-view", 42, None, True])
@pytest.mark.parametrize("service_id", list(SERVICES.values()))
def test_json_that_is_not_an_object_is_400(client, service_id, value):
    answer = client.post(f"/cds-services/{service_id}", data=json.dumps(value), content_type="application/json")
    assert "object" in bad(answer)


@pytest.mark.parametrize("suffix", ["", "/feedback"])
def test_body_over_the_limit_is_413_json(app, client, suffix):
    body = valid(app, "patient-view")
    body["extension"] = {"org.example.padding": "x" * (LIMIT + 1)}
    answer = client.post(f"/cds-services/{PATIENT_VIEW}{suffix}", json=body)
    text = bad(answer, 413)
    assert str(LIMIT) in text or "too large" in text.lower()


def test_body_just_under_the_limit_is_read(app, client):
    body = valid(app, "patient-view")
    size = len(json.dumps(body))
    body["extension"] = {"org.example.padding": "x" * (LIMIT - size - 200)}
    assert len(json.dumps(body).encode()) < LIMIT
    assert call(client, "patient-view", body).status_code == 200


def test_unknown_paths_answer_json(client):
    bad(client.get("/no/such/page"), 404)


# -- a hook request that is JSON but not usable: 400 naming the problem -----------------------------------------


def drop(body: dict, path: str) -> dict:
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    target = body
    for name in parents:
        target = target[name]
    target.pop(last)
    return body


def put(body: dict, path: str, value) -> dict:
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    target = body
    for name in parents:
        target = target[name]
    target[last] = value
    return body


MISSING = [(hook, field) for hook in SERVICES for field in ("hook", "hookInstance", "context", "context.patientId", "context.userId")]
MISSING += [("order-select", "context.selections"), ("order-select", "context.draftOrders"), ("order-sign", "context.draftOrders")]


@pytest.mark.parametrize("hook, field", MISSING)
def test_a_missing_required_field_is_400_naming_it(app, client, hook, field):
    text = bad(call(client, hook, drop(valid(app, hook), field)))
    assert field.split(".")[-1] in text


@pytest.mark.parametrize("hook", list(SERVICES))
def test_an_empty_hook_instance_is_400(app, client, hook):
    """CDS Hooks JSON never carries empty strings; an empty hook instance cannot identify the call."""
    assert "hookInstance" in bad(call(client, hook, put(valid(app, hook), "hookInstance", "")))


@pytest.mark.parametrize("hook", list(SERVICES))
def test_an_empty_patient_id_is_400(app, client, hook):
    assert "patientId" in bad(call(client, hook, put(valid(app, hook), "context.patientId", "")))


@pytest.mark.parametrize("service_id, hook", [(PATIENT_VIEW, "order-sign"), (ORDER_SELECT, "order-sign"), (ORDER_SIGN, "order-select"),
                                              (ORDER_SIGN, "patient-view"), (PATIENT_VIEW, "encounter-start")])
def test_the_wrong_hook_for_the_service_is_400(app, client, service_id, hook):
    own = next(h for h, s in SERVICES.items() if s == service_id)
    body = put(valid(app, own), "hook", hook)
    text = bad(call(client, own, body, service_id=service_id))
    assert "hook" in text and own in text


@pytest.mark.parametrize("value", [42, {"a": "b"}, None])
def test_hook_instance_not_a_string_is_400(app, client, value):
    assert "hookInstance" in bad(call(client, "patient-view", put(valid(app, "patient-view"), "hookInstance", value)))


@pytest.mark.parametrize("field, value", [("context.patientId", 42), ("context.userId", ["Practitioner/1"]), ("context.encounterId", 7),
                                          ("context", "pat-1"), ("context", ["pat-1"])])
def test_context_fields_of_the_wrong_type_are_400(app, client, field, value):
    assert field.split(".")[-1] in bad(call(client, "patient-view", put(valid(app, "patient-view"), field, value)))


@pytest.mark.parametrize("hook", list(SERVICES))
@pytest.mark.parametrize("field", ["hookInstance", "context.userId"])
def test_an_overlong_hook_instance_or_user_is_400(app, client, hook, field):
    """A megabytes-long hookInstance would be logged and stored with every card: over 256 characters is refused."""
    for length in (257, 40_000):
        assert "at most 256 characters" in bad(call(client, hook, put(valid(app, hook), field, "x" * length)))


@pytest.mark.parametrize("value", [[1, 2], [None], [{"reference": "DeviceRequest/tens-1"}], "DeviceRequest/tens-1", {"a": 1}])
def test_selections_must_be_an_array_of_strings(app, client, value):
    assert "selections" in bad(call(client, "order-select", put(valid(app, "order-select"), "context.selections", value)))


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
@pytest.mark.parametrize("value", [[{"resourceType": "DeviceRequest"}], "Bundle", {"resourceType": "Parameters"}, {"entry": []},
                                   {"resourceType": "Bundle", "entry": {"resource": {}}}])
def test_draft_orders_must_be_a_bundle(app, client, hook, value):
    assert "draftOrders" in bad(call(client, hook, put(valid(app, hook), "context.draftOrders", value)))


@pytest.mark.parametrize("hook", list(SERVICES))
def test_fhir_authorization_without_fhir_server_is_400(app, client, hook):
    body = valid(app, hook)
    body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 30, "scope": "patient/*.read", "subject": "s"}
    text = bad(call(client, hook, body))
    assert "fhirServer" in text and "fhirAuthorization" in text


@pytest.mark.parametrize("authorization", [{"token_type": "Bearer", "expires_in": 30, "scope": "patient/*.read", "subject": "s"},
                                           {"access_token": "", "token_type": "Bearer"}, {"access_token": 42}])
def test_fhir_authorization_without_an_access_token_is_400(app, client, authorization):
    body = valid(app, "patient-view")
    body["fhirServer"] = "https://ehr.example.org/fhir"
    body["fhirAuthorization"] = authorization
    assert "access_token" in bad(call(client, "patient-view", body))


@pytest.mark.parametrize("authorization", ["Bearer abc", ["abc"], 42])
def test_fhir_authorization_not_an_object_is_400(app, client, authorization):
    body = valid(app, "patient-view")
    body["fhirServer"] = "https://ehr.example.org/fhir"
    body["fhirAuthorization"] = authorization
    assert "fhirAuthorization" in bad(call(client, "patient-view", body))


@pytest.mark.parametrize("server", ["not a url", "ftp://ehr.example.org/fhir", "/fhir", "ehr.example.org/fhir", "https://", 42, ["https://x"],
                                    "javascript:alert(1)", "file:///etc/passwd"])
def test_fhir_server_not_an_http_url_is_400(app, client, server):
    assert "fhirServer" in bad(call(client, "patient-view", put(valid(app, "patient-view"), "fhirServer", server)))


@pytest.mark.parametrize("value", ["Patient/pat-1", ["Condition"], 42, True, {"id": "pat-1"}, {"resourceType": 42}])
def test_a_prefetch_value_that_is_not_a_resource_is_400_naming_the_key(app, client, value):
    assert "prefetch.condition" in bad(call(client, "patient-view", put(valid(app, "patient-view"), "prefetch.condition", value)))


@pytest.mark.parametrize("value", [["a"], "patient", 42])
def test_prefetch_not_an_object_is_400(app, client, value):
    assert "prefetch" in bad(call(client, "patient-view", put(valid(app, "patient-view"), "prefetch", value)))


def test_every_problem_is_named_in_one_answer(app, client):
    body = valid(app, "order-select")
    body["hook"] = "order-sign"
    body.pop("hookInstance")
    body["context"].pop("patientId")
    body["context"]["selections"] = [1]
    body["fhirServer"] = "nowhere"
    body["prefetch"]["condition"] = "none"
    text = bad(call(client, "order-select", body))
    for name in ("hook", "hookInstance", "patientId", "selections", "fhirServer", "prefetch.condition"):
        assert name in text, name


# -- feedback that cannot be used ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, named", [
    ({}, "feedback"),
    ({"feedback": []}, "feedback"),
    ({"feedback": {"card": "x"}}, "feedback"),
    ({"feedback": ["x"]}, "feedback[0]"),
    ({"feedback": [{"outcome": "overridden", "outcomeTimestamp": "2026-11-24T19:38:20Z"}]}, "card"),
    ({"feedback": [{"card": "c", "outcome": "ignored", "outcomeTimestamp": "2026-11-24T19:38:20Z"}]}, "outcome"),
    ({"feedback": [{"card": "c", "outcome": "overridden"}]}, "outcomeTimestamp"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]}, "outcomeTimestamp"),
    ({"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-24T19:38:20Z"}]}, "acceptedSuggestions"),
    ({"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-24T19:38:20Z", "acceptedSuggestions": ["s"]}]},
     "acceptedSuggestions"),
    ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-24T19:38:20Z", "overrideReason": "no"}]},
     "overrideReason"),
])
def test_unusable_feedback_is_400_naming_the_problem(client, body, named):
    assert named in bad(client.post(f"/cds-services/{PATIENT_VIEW}/feedback", json=body))


# -- what is not known is ignored ---------------------------------------------------------------------------------------


def test_unknown_fields_are_ignored(app, client):
    body = valid(app, "order-select")
    plain = cards_of(client, "order-select", body)
    body["extension"] = {"org.example.tenant": "north"}
    body["user"] = "Practitioner/legacy"
    body["futureField"] = [{"x": 1}]
    body["context"]["org.example.note"] = {"a": 1}
    body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 30, "scope": "patient/*.read",
                                 "subject": "s", "patient": "pat-1", "org.example.extra": True}
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    body["prefetch"]["someOtherService"] = {"resourceType": "Patient", "id": "other"}
    assert without_uuids(cards_of(client, "order-select", body)) == without_uuids(plain)


def test_unknown_feedback_fields_are_ignored(client):
    body = {"feedback": [{"card": "3b0a9c58-unknown", "outcome": "overridden", "outcomeTimestamp": "2026-11-24T19:38:20Z",
                          "overrideReason": {"reason": {"code": "x", "system": "http://example.org"}, "userComment": "n/a"},
                          "extension": {"org.example": 1}}], "extension": {"org.example": 2}}
    assert client.post(f"/cds-services/{PATIENT_VIEW}/feedback", json=body).status_code == 200


# -- malformed resources inside a request: never a 500 ----------------------------------------------------------------


def not_5xx(answer) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.get_data(as_text=True)[:300])
    assert answer.is_json
    if answer.status_code >= 400:
        outcome_diagnostics(answer)


CONTAINED_NUMBER = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "subject": {"reference": "Patient/pat-1"},
                    "contained": 5}
CODING_NUMBER = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/pat-1"}, "code": {"coding": 5}}
ID_OBJECT = {"resourceType": "ServiceRequest", "id": {"value": "sr-1"}, "status": "draft", "intent": "order",
             "subject": {"reference": "Patient/pat-1"}}

@pytest.mark.parametrize("hook, where, resource", [
    pytest.param("patient-view", "prefetch", CONTAINED_NUMBER, id="contained-number-prefetch"),
    pytest.param("order-sign", "draftOrders", CONTAINED_NUMBER, id="contained-number-draft"),
    pytest.param("patient-view", "prefetch", CODING_NUMBER, id="coding-number-prefetch"),
    pytest.param("order-sign", "draftOrders", CODING_NUMBER, id="coding-number-draft"),
    pytest.param("order-select", "draftOrders", ID_OBJECT, id="id-object-draft"),
    pytest.param("order-sign", "draftOrders", ID_OBJECT, id="id-object-draft-order-sign"),
])
def test_a_malformed_resource_is_not_a_server_error(app, client, hook, where, resource):
    body = valid(app, hook)
    resource = copy.deepcopy(resource)
    if where == "prefetch":
        key = "medicationRequest" if resource["resourceType"] == "MedicationRequest" else "condition"
        body["prefetch"][key]["entry"].append({"resource": resource})
    else:
        body["context"]["draftOrders"]["entry"].append({"resource": resource})
    not_5xx(call(client, hook, body))


def test_a_bundle_whose_entry_is_not_an_array_is_not_a_server_error(app, client):
    body = valid(app, "patient-view")
    body["prefetch"]["medicationRequest"] = {"resourceType": "Bundle", "type": "searchset", "entry": 5}
    not_5xx(call(client, "patient-view", body))


def test_odd_but_well_formed_data_is_not_a_server_error(app, client):
    """Wrong types in fields the engine reads as data (dates, codes, quantities) are data problems, not errors."""
    body = valid(app, "order-sign")
    p = Patient(45)
    draft = p.draft_medication(CYCLOBENZAPRINE_10, draft_id="odd")
    draft["dosageInstruction"][0]["timing"]["repeat"]["frequency"] = "three"
    draft["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = "ten"
    draft["dispenseRequest"] = {"expectedSupplyDuration": {"value": None}}
    body["context"]["draftOrders"]["entry"].append({"resource": draft})
    body["prefetch"]["patient"]["birthDate"] = "sometime"
    body["prefetch"]["condition"]["entry"].append({"resource": {"resourceType": "Condition", "id": "c2", "onsetDateTime": 20,
                                                                "code": {"coding": [{"system": ICD, "code": 5}]}}})
    body["prefetch"]["medicationRequest"]["entry"].append({"resource": {
        "resourceType": "MedicationRequest", "id": "m2", "status": "active", "subject": {"reference": "Patient/pat-1"},
        "medicationReference": {"reference": 5}, "medicationCodeableConcept": {"coding": [{"system": RXNORM}]}}})
    not_5xx(call(client, "order-sign", body))


# -- property: whatever JSON comes in, the answer is JSON and never a 5xx ---------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
FIELDS = st.sampled_from(["hook", "hookInstance", "fhirServer", "fhirAuthorization", "context", "prefetch", "extension", "feedback"])
OBJECTS = st.dictionaries(FIELDS | st.text(max_size=10), JSON, max_size=6)
PROPERTY = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@PROPERTY
@given(value=JSON | OBJECTS, service_id=st.sampled_from(list(SERVICES.values())), feedback=st.booleans())
def test_random_json_never_gives_a_server_error(client, value, service_id, feedback):
    answer = client.post(f"/cds-services/{service_id}" + ("/feedback" if feedback else ""), data=json.dumps(value),
                         content_type="application/json")
    not_5xx(answer)
    if answer.status_code != 200:
        assert answer.status_code in (400, 404, 412, 413, 415)


CONTEXT_PATHS = ["hook", "hookInstance", "fhirServer", "fhirAuthorization", "context", "prefetch", "context.patientId", "context.userId",
                 "context.encounterId", "context.selections", "context.draftOrders", "context.draftOrders.entry", "prefetch.patient",
                 "prefetch.condition", "prefetch.medicationRequest"]


@PROPERTY
@given(hook=st.sampled_from(list(SERVICES)), path=st.sampled_from(CONTEXT_PATHS),
       value=JSON | st.sampled_from(["", "pat-1", "Patient/pat-1", "order-sign", "patient-view", "order-select"]))
def test_a_valid_request_with_one_field_replaced_never_gives_a_server_error(app, client, hook, path, value):
    body = valid(app, hook)
    if path.startswith("context.draftOrders") and hook == "patient-view":
        path = "context.patientId"
    not_5xx(call(client, hook, put(body, path, value)))


RESOURCE_TYPES = st.sampled_from(["Patient", "Condition", "MedicationRequest", "MedicationStatement", "Observation", "Medication",
                                  "AllergyIntolerance", "ServiceRequest", "DeviceRequest", "Bundle", "OperationOutcome"])
ELEMENTS = st.sampled_from(["id", "status", "subject", "code", "coding", "system", "onsetDateTime", "birthDate", "severity", "clinicalStatus",
                            "medicationCodeableConcept", "medicationReference", "reference", "dosageInstruction", "timing", "repeat",
                            "doseAndRate", "doseQuantity", "value", "contained", "entry", "resource", "authoredOn", "effectivePeriod"])
FHIRISH = st.recursive(JSON | RESOURCE_TYPES, lambda children: st.lists(children, max_size=3) | st.dictionaries(ELEMENTS, children, max_size=5),
                       max_leaves=25)
RESOURCES = st.builds(lambda rtype, rest: {**rest, "resourceType": rtype}, RESOURCE_TYPES, st.dictionaries(ELEMENTS, FHIRISH, max_size=6))


@settings(max_examples=200, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          report_multiple_bugs=False, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(hook=st.sampled_from(list(SERVICES)), resources=st.lists(RESOURCES, min_size=1, max_size=3),
       key=st.sampled_from(["condition", "medicationRequest", "medicationStatement", "observation", "allergyIntolerance"]))
def test_random_resources_in_a_valid_request_never_give_a_server_error(app, client, hook, resources, key):
    body = valid(app, hook)
    body["prefetch"][key]["entry"] += [{"resource": r} for r in resources]
    if hook != "patient-view":
        body["context"]["draftOrders"]["entry"] += [{"resource": r} for r in resources]
    not_5xx(call(client, hook, body))
