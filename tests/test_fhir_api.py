"""The FHIR face of the protocol: metadata, read, search, $apply, $expand, the NPM package and push; and the 412 for a
fhirServer the service refuses to read."""

from __future__ import annotations

import json
import tarfile

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from protocol.engine.bundle import artifact_bundle
from protocol.engine.output import bundle_r5, careplan_r4
from protocol.engine.package import build_package
from service import create_app
from service.cli import main
from service.config import Settings
from tests.fhir_check import fhir_check
from tests.patients import CLOCK, CYCLOBENZAPRINE_10, PHENELZINE, Patient
from tests.service_helpers import make_app, shared_engine

PATHWAY = "back-spasm-treatment-pathway"
REVIEW = "back-spasm-order-review"
FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def engine():
    return shared_engine()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("db")).test_client()


def without_ids(value):
    """The value with generated ids and uuids blanked (they differ between two runs)."""
    text = json.dumps(value)
    data = json.loads(text)

    def walk(node):
        if isinstance(node, dict):
            return {k: ("<id>" if k in ("id", "fullUrl") or (k == "reference" and str(v).startswith("urn:uuid:")) else walk(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return walk(data)


def parameters(subject, data=None, **extra):
    params = [{"name": "subject", "valueString": subject}]
    if data is not None:
        params.append({"name": "data", "resource": data})
    for name, value in extra.items():
        params.append({"name": name, **value})
    return {"resourceType": "Parameters", "parameter": params}


# -- metadata, read, search -------------------------------------------------------------------------------------

def test_capability_statement_says_what_is_supported(client):
    answer = client.get("/fhir/metadata")
    assert answer.status_code == 200 and answer.mimetype == FHIR_JSON
    statement = CapabilityStatement.model_validate(answer.json)
    assert statement.fhirVersion == "4.0.1"
    resources = {r["type"]: r for r in answer.json["rest"][0]["resource"]}
    assert {"PlanDefinition", "ActivityDefinition", "ValueSet", "Library"} <= set(resources)
    assert {o["name"] for o in resources["PlanDefinition"]["operation"]} == {"apply", "r5.apply", "data-requirements", "package"}
    assert {o["name"] for o in resources["Library"]["operation"]} == {"data-requirements"}
    assert {o["name"] for o in resources["ValueSet"]["operation"]} == {"expand"}
    assert {p["name"] for p in resources["Library"]["searchParam"]} == {"_id", "url", "version", "name", "status", "title"}


def test_every_artifact_can_be_read(client, engine):
    for resource in engine.content.resources:
        answer = client.get(f"/fhir/{resource['resourceType']}/{resource['id']}")
        assert answer.status_code == 200 and answer.mimetype == FHIR_JSON
        assert answer.json == resource


@pytest.mark.parametrize("path", ["/fhir/PlanDefinition/nope", "/fhir/Patient/1", "/fhir/Observation"])
def test_unknown_artifacts_are_404_operation_outcomes(client, path):
    answer = client.get(path)
    assert answer.status_code == 404 and answer.mimetype == FHIR_JSON
    assert answer.json["resourceType"] == "OperationOutcome" and answer.json["issue"][0]["diagnostics"]


def test_search_by_each_parameter(client, engine):
    valueset = engine.content.get("ValueSet", "maoi")
    for query in (f"url={valueset['url']}", f"url={valueset['url']}|{valueset['version']}", "_id=maoi", f"name={valueset['name']}",
                  "_id=maoi,cyclobenzaprine&status=active"):
        answer = client.get(f"/fhir/ValueSet?{query}")
        assert answer.status_code == 200 and answer.json["type"] == "searchset"
        assert "maoi" in [e["resource"]["id"] for e in answer.json["entry"]], query
        assert answer.json["total"] == len(answer.json["entry"])
    assert client.get("/fhir/ValueSet?_id=maoi,cyclobenzaprine").json["total"] == 2
    assert client.get("/fhir/PlanDefinition?version=0.0.1").json["total"] == 0
    assert client.get("/fhir/PlanDefinition").json["total"] == 2
    everything = client.get("/fhir/ValueSet?status=active")
    assert everything.json["total"] == len(engine.content.of_type("ValueSet"))


def test_an_unknown_search_parameter_is_400(client):
    answer = client.get("/fhir/Library?subject=Patient/1")
    assert answer.status_code == 400 and "subject" in answer.json["issue"][0]["diagnostics"]


# -- $apply -------------------------------------------------------------------------------------------------------

def _spasm_patient():
    patient = Patient(45)
    patient.spasm(20)
    patient.physical_therapy("procedure", 12)
    return patient


def test_apply_over_http_equals_the_engine(client, engine):
    patient = _spasm_patient()
    answer = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json=parameters(f"Patient/{patient.id}", patient.bundle("collection")))
    assert answer.status_code == 200 and answer.mimetype == FHIR_JSON
    expected = careplan_r4(engine.apply(PATHWAY, [patient.bundle("collection")], CLOCK, f"Patient/{patient.id}"))
    assert without_ids(answer.json) == without_ids(expected)
    assert {a["id"] for a in answer.json["contained"][0]["action"]} == {"phase-plan", "cyclobenzaprine-proposal"}


def test_apply_by_url_and_r5_output(client, engine):
    patient = _spasm_patient()
    url = engine.content.get("PlanDefinition", PATHWAY)["url"]
    by_url = client.post(f"/fhir/PlanDefinition/$apply?url={url}&version=1.0.0", json=parameters(f"Patient/{patient.id}", patient.bundle("collection")))
    assert by_url.status_code == 200 and by_url.json["resourceType"] == "CarePlan"
    r5 = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$r5.apply", json=parameters(f"Patient/{patient.id}", patient.bundle("collection")))
    assert r5.status_code == 200 and r5.json["resourceType"] == "Parameters"
    bundle = r5.json["parameter"][0]["resource"]
    assert bundle["entry"][0]["resource"]["resourceType"] == "RequestOrchestration"
    expected = bundle_r5(engine.apply(PATHWAY, [patient.bundle("collection")], CLOCK, f"Patient/{patient.id}"))
    assert without_ids(bundle) == without_ids(expected)


def test_apply_the_order_review_with_draft_orders_as_parameters(client, engine):
    patient = _spasm_patient()
    patient.medication(PHENELZINE)
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, draft_id="rx-9")
    inner = {"resourceType": "Parameters", "parameter": [{"name": "draftOrder", "resource": draft}, {"name": "draftOrders", "resource": draft}]}
    answer = client.post(f"/fhir/PlanDefinition/{REVIEW}/$apply",
                         json=parameters(f"Patient/{patient.id}", patient.bundle("collection"), parameters={"resource": inner}))
    assert answer.status_code == 200
    assert "draft-maoi" in {a["id"] for a in answer.json["contained"][0]["action"]}
    expected = careplan_r4(engine.apply(REVIEW, [patient.bundle("collection")], CLOCK, f"Patient/{patient.id}",
                                        parameters={"draftOrder": draft, "draftOrders": [draft]}))
    assert without_ids(answer.json) == without_ids(expected)


def test_activity_definition_apply_returns_the_request(client, engine):
    patient = _spasm_patient()
    answer = client.post("/fhir/ActivityDefinition/cyclobenzaprine-5mg-tid/$apply", json=parameters(f"Patient/{patient.id}", patient.bundle("collection")))
    assert answer.status_code == 200 and answer.json["resourceType"] == "MedicationRequest"
    assert answer.json["medicationCodeableConcept"]["coding"][0]["code"] == "828320"
    expected, _ = engine.apply_activity("cyclobenzaprine-5mg-tid", [patient.bundle("collection")], CLOCK, f"Patient/{patient.id}")
    assert answer.json == expected


@pytest.mark.parametrize("body, message", [
    ({"resourceType": "Parameters", "parameter": []}, "subject is required"),
    ({"resourceType": "Bundle"}, "must be a Parameters"),
    ({"resourceType": "Parameters", "parameter": [{"name": "subject", "valueString": "Patient/1"}, {"name": "data", "resource": {"resourceType": "Patient"}}]},
     "data must be a Bundle"),
    ({"resourceType": "Parameters", "parameter": [{"valueString": "x"}]}, "must be an object with a name"),
])
def test_bad_apply_calls_are_400(client, body, message):
    answer = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json=body)
    assert answer.status_code == 400 and message in json.dumps(answer.json)


OPERATIONS = [f"/fhir/PlanDefinition/{PATHWAY}/$apply", f"/fhir/PlanDefinition/{PATHWAY}/$r5.apply",
              "/fhir/ActivityDefinition/cyclobenzaprine-5mg-tid/$apply"]
SUBJECT = {"name": "subject", "valueString": "Patient/1"}
#: Parameters of the wrong shape or type, each with the words the 400 must name it by.
WRONG_PARAMETERS = [
    ({"parameter": {"name": "subject"}}, "Parameters.parameter must be an array"),
    ({"parameter": ["subject"]}, "parameter[0] must be an object with a name"),
    ({"parameter": [{"name": 7, "valueString": "Patient/1"}]}, "parameter[0] must be an object with a name"),
    ({"parameter": [{"name": "subject", "valueInteger": 7}]}, "subject must be a reference"),
    ({"parameter": [{"name": "subject", "valueBoolean": True}]}, "subject must be a reference"),
    ({"parameter": [{"name": "subject", "valueReference": {"display": "no reference"}}]}, "subject must be a reference"),
    ({"parameter": [{"name": "subject", "valueReference": "Patient/1"}]}, "subject must be a reference"),
    ({"parameter": [{"name": "subject", "resource": ["Patient/1"]}]}, "subject: resource must be a FHIR resource"),
    ({"parameter": [SUBJECT, SUBJECT]}, "subject is given more than once"),
    ({"parameter": [{"name": "subject", "valueString": "Patient/1", "valueCode": "x"}]}, "more than one value[x]"),
    ({"parameter": [SUBJECT, {"name": "data", "valueString": "{}"}]}, "data must be a Bundle"),
    ({"parameter": [SUBJECT, {"name": "encounter", "valueDecimal": 1.5}]}, "encounter must be a reference"),
    ({"parameter": [SUBJECT, {"name": "practitioner", "part": "x"}]}, "part must be an array"),
    ({"parameter": [SUBJECT, {"name": "parameters", "resource": {"resourceType": "Parameters", "parameter": {"name": "x"}}}]},
     "Parameters.parameter must be an array"),
]


@pytest.mark.parametrize("path", OPERATIONS)
@pytest.mark.parametrize("fields, message", WRONG_PARAMETERS)
def test_operation_parameters_of_the_wrong_type_are_400_naming_them(client, path, fields, message):
    answer = client.post(path, json={"resourceType": "Parameters", **fields})
    assert answer.status_code == 400, answer.json
    assert answer.mimetype == "application/fhir+json" and answer.json["resourceType"] == "OperationOutcome"
    assert message in answer.json["issue"][0]["diagnostics"]


@pytest.mark.parametrize("fields, message", [
    ({"parameter": [{"name": "url", "valueInteger": 1}]}, "url must be a"),
    ({"parameter": [{"name": "url", "valueUri": "http://example.org/x"}, {"name": "version", "valueBoolean": False}]}, "version must be a string"),
])
def test_apply_by_url_with_parameters_of_the_wrong_type_is_400(client, fields, message):
    answer = client.post("/fhir/PlanDefinition/$apply", json={"resourceType": "Parameters", **fields, "parameter": fields["parameter"] + [SUBJECT]})
    assert answer.status_code == 400 and message in answer.json["issue"][0]["diagnostics"]


@pytest.mark.parametrize("parameter, message", [
    ({"name": "count", "valueInteger": 1.5}, "count must be a non-negative integer"),
    ({"name": "count", "valueInteger": True}, "count must be a non-negative integer"),
    ({"name": "count", "valueString": "3"}, "count must be a non-negative integer"),
    ({"name": "offset", "valueInteger": -1}, "offset must be a non-negative integer"),
    ({"name": "offset", "valueInteger": 2 ** 62}, None),
    ({"name": "filter", "valueInteger": 3}, "filter must be a string"),
    ({"name": "filter", "part": [{"name": "x", "valueString": "y"}]}, "filter must be a string"),
])
def test_expand_parameters_of_the_wrong_type_are_400(client, parameter, message):
    answer = client.post("/fhir/ValueSet/back-muscle-spasm/$expand", json={"resourceType": "Parameters", "parameter": [parameter]})
    if message is None:
        assert answer.status_code == 200 and "contains" not in answer.json["expansion"]
    else:
        assert answer.status_code == 400 and message in answer.json["issue"][0]["diagnostics"]


@pytest.mark.parametrize("query", ["count=1.5", "count=-1", "offset=abc", "count=1&count=2", "count=99999999999999999999999"])
def test_expand_query_parameters_of_the_wrong_type_are_400(client, query):
    answer = client.get(f"/fhir/ValueSet/back-muscle-spasm/$expand?{query}")
    diagnostics = answer.json["issue"][0]["diagnostics"]
    assert answer.status_code == 400 and ("non-negative integer" in diagnostics or "more than once" in diagnostics)


def test_apply_of_an_unknown_plan_is_not_found_or_bad(client):
    assert client.post("/fhir/PlanDefinition/nope/$apply", json=parameters("Patient/1")).status_code == 404
    answer = client.post("/fhir/PlanDefinition/$apply?url=http://example.org/nope", json=parameters("Patient/1"))
    assert answer.status_code == 400 and "no PlanDefinition" in answer.json["issue"][0]["diagnostics"]


def test_expand_from_the_stored_expansion(client, engine):
    stored = engine.content.get("ValueSet", "maoi")["expansion"]
    answer = client.get("/fhir/ValueSet/maoi/$expand")
    assert answer.status_code == 200 and answer.json["expansion"]["total"] == stored["total"]
    assert answer.json["expansion"]["contains"] == stored["contains"]
    page = client.post("/fhir/ValueSet/maoi/$expand", json={"resourceType": "Parameters", "parameter": [
        {"name": "filter", "valueString": "phenelzine"}, {"name": "offset", "valueInteger": 1}, {"name": "count", "valueInteger": 2}]})
    phenelzine = [c for c in stored["contains"] if "phenelzine" in c["display"].lower()]
    assert page.json["expansion"]["total"] == len(phenelzine)
    assert page.json["expansion"]["contains"] == phenelzine[1:3]
    assert client.get("/fhir/ValueSet/nope/$expand").status_code == 404


def test_fhir_endpoints_need_a_token_in_production(engine, tmp_path):
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps({"clients": [{"iss": "https://ehr.example.org", "jku": ["https://ehr.example.org/jwks"]}]}))
    settings = Settings.load(environ={}, overrides={"database": str(tmp_path / "c.sqlite"), "mode": "production", "trusted_clients": str(clients),
                                                    "public_base_url": "https://cds.example.org"})
    app = create_app(settings, engine=engine, clock=lambda: CLOCK)
    assert app.test_client().get("/fhir/metadata").status_code == 401
    assert app.test_client().post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json=parameters("Patient/1")).status_code == 401


# -- the NPM package -------------------------------------------------------------------------------------------------

def _package_files(path):
    with tarfile.open(path, "r:gz") as archive:
        return {m.name: json.loads(archive.extractfile(m).read()) for m in archive.getmembers()}


def test_package_has_the_manifest_the_index_and_every_resource(tmp_path, engine):
    assert main(["package", "--out", str(tmp_path)]) == 0
    path = next(tmp_path.glob("*.tgz"))
    files = _package_files(path)
    manifest = files["package/package.json"]
    pub = engine.content.publication
    assert path.name == f"{pub['packageId']}-{pub['version']}.tgz"
    assert manifest["name"] == pub["packageId"] and manifest["version"] == pub["version"] and manifest["canonical"] == pub["canonical"]
    assert manifest["fhirVersions"] == ["4.0.1"] and manifest["dependencies"] == {"hl7.fhir.r4.core": "4.0.1"}
    index = files["package/.index.json"]
    assert index["index-version"] == 2
    guide = f"ImplementationGuide-{pub['packageId']}.json"
    assert {f["filename"] for f in index["files"]} == {f"{r['resourceType']}-{r['id']}.json" for r in engine.content.resources} | {guide}
    for entry in index["files"]:
        resource = files[f"package/{entry['filename']}"]
        if entry["filename"] != guide:
            assert resource == engine.content.get(entry["resourceType"], entry["id"])
        assert entry.get("url") == resource.get("url")
    assert files[f"package/{guide}"]["resourceType"] == "ImplementationGuide" and files[f"package/{guide}"]["packageId"] == pub["packageId"]
    assert build_package(engine.content, tmp_path / "again").read_bytes() == path.read_bytes(), "the package is reproducible"


def test_package_resources_pass_the_independent_checker(tmp_path, engine):
    path = build_package(engine.content, tmp_path)
    # The guide is checked on its own in test_artifact_operations: the checker's schema refuses its fhirVersion 4.0.1,
    # a false positive its README lists.
    resources = [r for name, r in _package_files(path).items()
                 if name.endswith(".json") and "resourceType" in r and r["resourceType"] != "ImplementationGuide"]
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"fullUrl": r["url"], "resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}
    code, report = fhir_check(data=bundle, tmp_path=tmp_path)
    assert code == 0, report
    code, report = fhir_check("--import", data=bundle, tmp_path=tmp_path)
    assert code == 0 and report["accepted"] and report["errors"] == [], report


# -- push --------------------------------------------------------------------------------------------------------------

def _respond_all(request_json, status="200 OK"):
    return {"resourceType": "Bundle", "type": "transaction-response",
            "entry": [{"response": {"status": status, "location": e["request"]["url"] + "/_history/1"}} for e in request_json["entry"]]}


def test_push_sends_the_transaction_and_reports_each_entry(httpserver, capsys, engine):
    seen = {}

    def handler(request):
        from werkzeug.wrappers import Response

        seen["auth"] = request.headers.get("Authorization")
        seen["type"] = request.headers.get("Content-Type")
        seen["body"] = request.get_json(force=True)
        return Response(json.dumps(_respond_all(seen["body"])), content_type="application/fhir+json")

    httpserver.expect_request("/fhir", method="POST").respond_with_handler(handler)
    assert main(["push", "--fhir-server", httpserver.url_for("/fhir"), "--token", "t0k"]) == 0
    out = capsys.readouterr().out
    assert seen["auth"] == "Bearer t0k" and seen["type"].startswith("application/fhir+json")
    assert seen["body"] == artifact_bundle(engine.content, "transaction")
    assert out.count("ok  ") == len(engine.content.resources)
    assert f"{len(engine.content.resources)} of {len(engine.content.resources)} entries accepted" in out


def test_push_exits_1_when_an_entry_is_refused(httpserver, capsys):
    def handler(request):
        from werkzeug.wrappers import Response

        body = _respond_all(request.get_json(force=True))
        body["entry"][3]["response"] = {"status": "422 Unprocessable Entity", "outcome": {
            "resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad ValueSet"}]}}
        return Response(json.dumps(body), content_type="application/fhir+json")

    httpserver.expect_request("/fhir", method="POST").respond_with_handler(handler)
    assert main(["push", "--fhir-server", httpserver.url_for("/fhir")]) == 1
    out = capsys.readouterr()
    assert "FAIL 422 Unprocessable Entity" in out.out and "bad ValueSet" in out.out


@pytest.mark.parametrize("status, body", [(500, {"resourceType": "OperationOutcome", "issue": [{"severity": "fatal", "code": "exception", "diagnostics": "down"}]}),
                                          (200, {"resourceType": "Patient"})])
def test_push_exits_1_when_the_server_refuses_or_answers_nonsense(httpserver, capsys, status, body):
    httpserver.expect_request("/fhir", method="POST").respond_with_json(body, status=status)
    assert main(["push", "--fhir-server", httpserver.url_for("/fhir")]) == 1
    assert "error:" in capsys.readouterr().err


def test_push_to_an_unreachable_server_exits_1(capsys):
    assert main(["push", "--fhir-server", "http://127.0.0.1:9/fhir"]) == 1
    assert "could not be reached" in capsys.readouterr().err


# -- a fhirServer the service refuses to read ----------------------------------------------------------------------

REFUSED = "the request's fhirServer is not on the allow-list for this client, so it was not read"
CDS_BASE = "https://cds.example.org"
EHR = "https://ehr.example.org"
PATIENT_VIEW_SERVICE = f"{PATHWAY}-patient-view"



@pytest.fixture(scope="module")
def ehr_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _production_client(engine, tmp_path, key):
    """A production service trusting one EHR, whose allow-list is its own https FHIR base."""
    import jwt

    public = {**jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "alg": "ES256"}
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps({"clients": [{"iss": EHR, "jwks": {"keys": [public]}, "fhir_servers": [f"{EHR}/fhir"]}]}))
    settings = Settings.load(environ={}, overrides={"database": str(tmp_path / "p.sqlite"), "mode": "production",
                                                    "trusted_clients": str(clients), "public_base_url": CDS_BASE})
    return create_app(settings, engine=engine, clock=lambda: CLOCK).test_client()


def _signed(key):
    import uuid

    import jwt

    now = int(CLOCK.timestamp())
    claims = {"iss": EHR, "aud": f"{CDS_BASE}/cds-services/{PATIENT_VIEW_SERVICE}", "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return {"Authorization": "Bearer " + jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})}


def _patient_view(app_client, patient, server, *, without=("condition",)):
    """A patient-view call naming ``server`` with a token for it, every prefetch key sent but those in ``without``."""
    from tests.service_helpers import prefetch_for

    app = app_client.application
    prefetch = prefetch_for(app, PATIENT_VIEW_SERVICE, patient.resources)
    for key in without:
        prefetch.pop(key)
    return {"hook": "patient-view", "hookInstance": "5d0b7b4c-refused", "context": {"patientId": patient.id, "userId": "Practitioner/1"},
            "fhirServer": server, "fhirAuthorization": {"access_token": "ehr-token", "token_type": "Bearer", "expires_in": 60,
                                                        "scope": "patient/*.read", "subject": "cds"},
            "prefetch": prefetch}


@pytest.mark.parametrize("server", ["https://other.example.org/fhir", f"{EHR}/fhir-admin", "http://ehr.example.org/fhir"])
def test_a_server_off_the_clients_allow_list_gets_a_412_saying_so(engine, tmp_path, ehr_key, access_log, server):
    """Another host, another path, or the listed server over http in production: refused, and the 412 says why."""
    client = _production_client(engine, tmp_path, ehr_key)
    answer = client.post(f"/cds-services/{PATIENT_VIEW_SERVICE}", json=_patient_view(client, _spasm_patient(), server), headers=_signed(ehr_key))
    assert answer.status_code == 412 and answer.json["resourceType"] == "OperationOutcome"
    issues = answer.json["issue"]
    assert issues[0]["diagnostics"] == f"prefetch data missing or incomplete, and {REFUSED}"
    assert any(i["diagnostics"].startswith("condition (Condition?patient={{context.patientId}}") for i in issues[1:])
    assert "ehr-token" not in answer.get_data(as_text=True)
    line = next(r for r in access_log() if r.get("event") == "request")
    assert line["status"] == 412 and line["fhir_server_refused"] is True


def test_without_a_jwt_only_a_loopback_server_may_be_named_in_development(client, access_log):
    patient = _spasm_patient()
    answer = client.post(f"/cds-services/{PATIENT_VIEW_SERVICE}", json=_patient_view(client, patient, f"{EHR}/fhir"))
    assert answer.status_code == 412 and REFUSED in answer.json["issue"][0]["diagnostics"]
    assert next(r for r in access_log() if r.get("event") == "request")["fhir_server_refused"] is True


def test_a_medication_left_unread_for_a_refused_server_is_a_412_saying_so(client):
    patient = _spasm_patient()
    medication = patient.medication(CYCLOBENZAPRINE_10, shape="reference")
    answer = client.post(f"/cds-services/{PATIENT_VIEW_SERVICE}", json=_patient_view(client, patient, f"{EHR}/fhir", without=()))
    assert answer.status_code == 412
    assert answer.json["issue"][0]["diagnostics"] == f"orders reference medications that were not sent, and {REFUSED}"
    assert answer.json["issue"][1]["diagnostics"] == medication["medicationReference"]["reference"]


def test_a_refused_server_costs_nothing_when_the_prefetch_is_complete(client, access_log):
    answer = client.post(f"/cds-services/{PATIENT_VIEW_SERVICE}", json=_patient_view(client, _spasm_patient(), f"{EHR}/fhir", without=()))
    assert answer.status_code == 200 and answer.json["cards"]
    assert next(r for r in access_log() if r.get("event") == "request")["fhir_server_refused"] is True


def test_without_a_fhir_server_the_412_says_there_is_none(client):
    body = _patient_view(client, _spasm_patient(), None)
    del body["fhirServer"], body["fhirAuthorization"]
    answer = client.post(f"/cds-services/{PATIENT_VIEW_SERVICE}", json=body)
    assert answer.status_code == 412
    assert answer.json["issue"][0]["diagnostics"] == "prefetch data missing or incomplete, and no fhirServer to read it from"
