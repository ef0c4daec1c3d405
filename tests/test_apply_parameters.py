"""Every input of the CPG $apply: each reaches the output or the expressions where the specification says, each of
the wrong type is a 400 naming it, the CDS Hooks request maps to the same inputs, and the OperationDefinitions say so."""

from __future__ import annotations

import copy

import pytest
from fhir.resources.R4B import get_fhir_model_class

from protocol.engine.apply import Engine
from protocol.engine.content import Content
from protocol.engine.output import careplan_r4
from protocol.engine.parameters import ApplyParameters, ParameterError, PrefetchData
from protocol.engine.validation import validate_content
from service import create_app
from service.cds_hooks.calls import from_hook
from service.config import Settings
from service.fhir_api import PLAN_APPLY, _operation_parameters, from_operation, operation_definitions
from tests.patients import CLOCK, CYCLOBENZAPRINE_10, SERTRALINE, Patient
from tests.service_helpers import shared_engine
from tests.test_fhir_api import without_ids

PATHWAY = "back-spasm-treatment-pathway"
ECHO = "apply-inputs-echo"
SNOMED = "http://snomed.info/sct"
CARE_SETTING = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
USER_TYPE = {"coding": [{"system": SNOMED, "code": "309343006", "display": "Physician"}], "text": "physician"}
USER_LANGUAGE = {"coding": [{"system": "urn:ietf:bcp:47", "code": "fr-CA", "display": "French (Canada)"}]}
TASK = {"coding": [{"system": "http://hl7.org/fhir/uv/cpg/CodeSystem/cpg-common-process", "code": "treatment"}], "text": "medication review"}
SETTING = {"coding": [{"system": CARE_SETTING, "code": "AMB", "display": "ambulatory"}]}
SETTING_CONTEXT = {"text": "physiotherapy follow-up clinic"}
CONCEPTS = {"userType": USER_TYPE, "userLanguage": USER_LANGUAGE, "userTaskContext": TASK, "setting": SETTING,
            "settingContext": SETTING_CONTEXT}
CONSULTANT = {"resourceType": "Practitioner", "id": "consultant-1", "name": [{"family": "Okafor", "given": ["Ada"]}]}
#: An entry of each kind in the inner Parameters: an integer, a date, a string, a Quantity, a resource, parts.
INNER = {"resourceType": "Parameters", "parameter": [
    {"name": "threshold", "valueInteger": 5},
    {"name": "since", "valueDate": "2026-11-01"},
    {"name": "note", "valueString": "seen after physiotherapy"},
    {"name": "dose", "valueQuantity": {"value": 5, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}},
    {"name": "consultant", "resource": CONSULTANT},
    {"name": "pair", "part": [{"name": "a", "valueString": "left"}, {"name": "b", "valueBoolean": True}]},
]}


def _echo_plan(library_url: str) -> dict:
    """A test PlanDefinition whose actions write what its expressions see of the $apply inputs."""
    echo = " & '|' & ".join([
        "%userType.text", "%userLanguage.coding.code", "%userTaskContext.text", "%setting.coding.code", "%settingContext.text",
        "(%threshold + 1).toString()", "(%since + 1 day).toString()", "%note", "%dose.unit", "%consultant.name.family",
        "%pair.part.where(name = 'a').value", "%encounter.id", "%practitioner.id", "%organization.name",
    ])
    return {
        "resourceType": "PlanDefinition", "id": ECHO, "url": f"http://example.org/fhir/test/PlanDefinition/{ECHO}", "version": "1",
        "name": "ApplyInputsEcho", "status": "draft", "type": {"coding": [{"code": "eca-rule"}]}, "library": [library_url],
        "action": [
            {"id": "echo", "title": "What the expressions see", "priority": "routine",
             "dynamicValue": [{"path": "action.description", "expression": {"language": "text/fhirpath", "expression": echo}}]},
            {"id": "typed", "title": "The inputs are typed values",
             "condition": [{"kind": "applicability", "expression": {"language": "text/fhirpath",
                                                                    "expression": "%threshold > 3 and %since < @2026-11-25 and %pair.part.where(name = 'b').value"}}]},
        ],
    }


@pytest.fixture(scope="module")
def engine():
    shipped = shared_engine().content
    library = shipped.get("Library", "back-spasm-logic")["url"]
    content = Content(directory=shipped.directory, publication=shipped.publication,
                      resources=[*copy.deepcopy(shipped.resources), _echo_plan(library)])
    return Engine(content)


@pytest.fixture(scope="module")
def app(engine, tmp_path_factory):
    settings = Settings.load(environ={}, overrides={"database": str(tmp_path_factory.mktemp("db") / "cds.sqlite")})
    return create_app(settings, engine=engine, clock=lambda: CLOCK)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


def body(*entries: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "subject", "valueString": "Patient/p1"}, *entries]}


def concepts() -> list[dict]:
    return [{"name": name, "valueCodeableConcept": value} for name, value in CONCEPTS.items()]


def record() -> dict:
    """A Bundle with the patient, the encounter, the practitioner and the organization the call names."""
    resources = [{"resourceType": "Patient", "id": "p1", "birthDate": "1980-04-02"},
                 {"resourceType": "Encounter", "id": "e1", "status": "in-progress", "class": {"code": "AMB"}, "subject": {"reference": "Patient/p1"}},
                 {"resourceType": "Practitioner", "id": "dr-1", "name": [{"family": "Nguyen"}]},
                 {"resourceType": "Organization", "id": "org-1", "name": "Harbour Physiotherapy"}]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def diagnostics(answer) -> str:
    assert answer.mimetype == "application/fhir+json" and answer.json["resourceType"] == "OperationOutcome", answer.json
    return answer.json["issue"][0]["diagnostics"]


def spasm_patient() -> Patient:
    patient = Patient(45)
    patient.spasm(20)
    patient.physical_therapy("procedure", 12)
    return patient


# -- each input reaches the expressions and the output --------------------------------------------------------------

def test_every_input_is_visible_to_the_expressions_as_percent_name(client):
    answer = client.post(f"/fhir/PlanDefinition/{ECHO}/$apply", json=body(
        *concepts(), {"name": "encounter", "valueString": "Encounter/e1"}, {"name": "practitioner", "valueString": "Practitioner/dr-1"},
        {"name": "organization", "valueString": "Organization/org-1"}, {"name": "data", "resource": record()},
        {"name": "parameters", "resource": INNER}))
    assert answer.status_code == 200, answer.json
    actions = {a["id"]: a for a in answer.json["contained"][0]["action"]}
    assert actions["echo"]["description"] == ("physician|fr-CA|medication review|AMB|physiotherapy follow-up clinic|6|2026-11-02|"
                                              "seen after physiotherapy|mg|Okafor|left|e1|dr-1|Harbour Physiotherapy")
    assert "typed" in actions, "an integer, a date and a boolean part compare as typed values, not as text"


def test_inputs_not_given_are_empty_to_the_expressions(client):
    answer = client.post(f"/fhir/PlanDefinition/{ECHO}/$apply", json=body())
    assert answer.status_code == 200
    actions = {a["id"]: a for a in answer.json["contained"][0]["action"]}
    assert "description" not in actions["echo"] and "typed" not in actions


def test_the_user_and_setting_inputs_are_always_defined_so_content_may_read_them(engine):
    """Without the inputs, %userType and the others are empty, not undefined: an action reading them still applies,
    whether the call comes from the operation or from a hook, and validate accepts content that reads them."""
    reads = " and ".join(f"%{name}.empty()" for name in ("userType", "userLanguage", "userTaskContext", "setting", "settingContext"))
    plan = {"resourceType": "PlanDefinition", "id": "reads-the-setting", "url": "http://example.org/fhir/test/PlanDefinition/reads-the-setting",
            "version": "1", "name": "ReadsTheSetting", "status": "draft", "type": {"coding": [{"code": "eca-rule"}]},
            "action": [{"id": "no-setting-given", "title": "No user or setting given",
                        "condition": [{"kind": "applicability", "expression": {"language": "text/fhirpath", "expression": reads}}]}]}
    shipped = engine.content
    content = Content(directory=shipped.directory, publication=shipped.publication, resources=[*copy.deepcopy(shipped.resources), plan])
    patient = Patient(45)
    result = Engine(content).apply("reads-the-setting", patient.resources, CLOCK, patient.id)
    assert [a.fields["id"] for a in result.actions] == ["no-setting-given"], [i.diagnostics for i in result.issues]
    problems = [str(problem) for problem in validate_content(content)]
    assert not [text for text in problems if "reads-the-setting" in text and "expression" in text], problems


def test_user_language_is_the_language_of_the_care_plan_and_its_request_group(client):
    answer = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json=body({"name": "userLanguage", "valueCodeableConcept": USER_LANGUAGE}))
    assert answer.json["language"] == "fr-CA" and answer.json["contained"][0]["language"] == "fr-CA"
    r5 = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$r5.apply", json=body({"name": "userLanguage", "valueCodeableConcept": USER_LANGUAGE}))
    entries = [e["resource"] for e in r5.json["parameter"][0]["resource"]["entry"]]
    assert entries[0]["resourceType"] == "RequestOrchestration" and entries[0]["language"] == "fr-CA"
    assert next(r for r in entries if r["resourceType"] == "CarePlan")["language"] == "fr-CA"
    plain = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json=body())
    assert "language" not in plain.json and "language" not in plain.json["contained"][0]


def test_practitioner_and_encounter_are_on_the_care_plan_the_group_and_every_request(client):
    patient = spasm_patient()
    answer = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json={"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueString": f"Patient/{patient.id}"}, {"name": "data", "resource": patient.bundle("collection")},
        {"name": "encounter", "valueReference": {"reference": "Encounter/e1"}}, {"name": "practitioner", "valueString": "Practitioner/dr-1"},
        {"name": "organization", "valueString": "Organization/org-1"}]})
    careplan = answer.json
    assert careplan["author"] == {"reference": "Practitioner/dr-1"} and careplan["encounter"] == {"reference": "Encounter/e1"}
    group, *requests = careplan["contained"]
    assert group["author"] == {"reference": "Practitioner/dr-1"} and group["encounter"] == {"reference": "Encounter/e1"}
    requests = [r for r in requests if r["resourceType"] != "OperationOutcome"]
    assert {r["resourceType"] for r in requests} >= {"MedicationRequest"}
    for request in requests:
        assert request["requester"] == {"reference": "Practitioner/dr-1"} and request["encounter"] == {"reference": "Encounter/e1"}


def test_an_organization_alone_authors_the_care_plan_but_not_the_request_group(client):
    patient = spasm_patient()
    patient.medication(SERTRALINE)
    answer = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json={"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueString": f"Patient/{patient.id}"}, {"name": "data", "resource": patient.bundle("collection")},
        {"name": "organization", "valueString": "Organization/org-1"}]})
    assert answer.json["author"] == {"reference": "Organization/org-1"}
    assert "author" not in answer.json["contained"][0], "R4 RequestGroup.author takes Device, Practitioner or PractitionerRole only"
    requests = [r for r in answer.json["contained"][1:] if r["resourceType"] != "OperationOutcome"]
    assert {r["resourceType"] for r in requests} >= {"MedicationRequest", "ServiceRequest", "CommunicationRequest"}
    assert all("requester" not in r for r in requests), "a request's requester is the practitioner only"
    r5 = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$r5.apply", json=body({"name": "organization", "valueString": "Organization/org-1"}))
    entries = [e["resource"] for e in r5.json["parameter"][0]["resource"]["entry"]]
    assert "author" not in entries[0]
    assert next(r for r in entries if r["resourceType"] == "CarePlan")["custodian"] == {"reference": "Organization/org-1"}


def test_the_output_with_every_input_is_valid_r4(client):
    patient = spasm_patient()
    answer = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json={"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueString": f"Patient/{patient.id}"}, {"name": "data", "resource": patient.bundle("collection")},
        {"name": "encounter", "valueString": "Encounter/e1"}, {"name": "practitioner", "valueString": "Practitioner/dr-1"},
        {"name": "organization", "valueString": "Organization/org-1"}, *concepts(), {"name": "useServerData", "valueBoolean": False}]})
    assert answer.status_code == 200
    get_fhir_model_class("CarePlan").model_validate(answer.json)


def test_prefetch_data_feeds_the_record_as_data_does(client):
    patient = spasm_patient()
    everything = patient.bundle("collection")
    by_type: dict[str, list] = {}
    for entry in everything["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry)
    prefetch = [{"name": "prefetchData", "part": [{"name": "key", "valueString": rtype.lower()},
                                                   {"name": "data", "resource": {"resourceType": "Bundle", "type": "searchset", "entry": entries}}]}
                for rtype, entries in by_type.items()]
    prefetch.append({"name": "prefetchData", "part": [{"name": "descriptor", "valueDataRequirement": {"type": "AllergyIntolerance"}}]})
    subject = {"name": "subject", "valueString": f"Patient/{patient.id}"}
    with_prefetch = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json={"resourceType": "Parameters", "parameter": [subject, *prefetch]})
    with_data = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json={"resourceType": "Parameters", "parameter": [
        subject, {"name": "data", "resource": everything}]})
    assert with_prefetch.status_code == 200, with_prefetch.json
    assert len(by_type) > 2 and without_ids(with_prefetch.json) == without_ids(with_data.json)
    assert {a["id"] for a in with_prefetch.json["contained"][0]["action"]} == {"phase-plan", "cyclobenzaprine-proposal"}


def test_use_server_data_false_is_accepted_and_true_is_refused(client):
    for call in (lambda: client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json=body({"name": "useServerData", "valueBoolean": False})),
                 lambda: client.get(f"/fhir/PlanDefinition/{PATHWAY}/$apply?subject=Patient/p1&useServerData=false")):
        assert call().status_code == 200
    for call in (lambda: client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json=body({"name": "useServerData", "valueBoolean": True})),
                 lambda: client.get(f"/fhir/PlanDefinition/{PATHWAY}/$apply?subject=Patient/p1&useServerData=true")):
        answer = call()
        assert answer.status_code == 400 and "useServerData" in diagnostics(answer) and "no patient data" in diagnostics(answer)


def test_activity_definition_apply_takes_the_same_inputs(client):
    answer = client.post("/fhir/ActivityDefinition/cyclobenzaprine-5mg-tid/$apply", json=body(
        *concepts(), {"name": "practitioner", "valueString": "Practitioner/dr-1"}, {"name": "encounter", "valueString": "Encounter/e1"},
        {"name": "prefetchData", "part": [{"name": "key", "valueString": "patient"}, {"name": "data", "resource": record()}]}))
    assert answer.status_code == 200 and answer.json["resourceType"] == "MedicationRequest"
    assert answer.json["requester"] == {"reference": "Practitioner/dr-1"} and answer.json["encounter"] == {"reference": "Encounter/e1"}
    refused = client.post("/fhir/ActivityDefinition/cyclobenzaprine-5mg-tid/$apply", json=body({"name": "useServerData", "valueBoolean": True}))
    assert refused.status_code == 400 and "useServerData" in diagnostics(refused)


# -- each input of the wrong type or that cannot be taken is a 400 naming it ----------------------------------------

ILL_TYPED = [
    ({"name": "userType", "valueString": "physician"}, "userType must be a CodeableConcept"),
    ({"name": "userLanguage", "valueCode": "fr"}, "userLanguage must be a CodeableConcept"),
    ({"name": "userLanguage", "valueCodeableConcept": {"coding": [{"code": "French please"}]}}, "userLanguage"),
    ({"name": "userTaskContext", "resource": {"resourceType": "Task"}}, "userTaskContext must be a CodeableConcept"),
    ({"name": "setting", "valueCodeableConcept": {"coding": "AMB"}}, "setting must be a CodeableConcept"),
    ({"name": "settingContext", "valueCodeableConcept": {}}, "settingContext must be a CodeableConcept"),
    ({"name": "settingContext", "valueCodeableConcept": {"text": 7}}, "settingContext must be a CodeableConcept"),
    ({"name": "organization", "valueBoolean": True}, "organization must be a reference"),
    ({"name": "useServerData", "valueString": "false"}, "useServerData must be a boolean"),
    ({"name": "prefetchData", "valueString": "patient"}, "prefetchData[0] must have the parts"),
    ({"name": "prefetchData", "resource": {"resourceType": "Bundle"}}, "prefetchData[0] must have the parts"),
    ({"name": "prefetchData", "part": [{"name": "key", "valueInteger": 1}]}, "prefetchData[0]: key must be a valueString"),
    ({"name": "prefetchData", "part": [{"name": "key", "valueString": "k"}, {"name": "data", "resource": {"resourceType": "Patient"}}]},
     "prefetchData[0]: data must be a Bundle"),
    ({"name": "prefetchData", "part": [{"name": "descriptor", "valueString": "Condition"}]}, "descriptor must be a valueDataRequirement"),
    ({"name": "prefetchData", "part": [{"name": "descriptor", "valueDataRequirement": {"codeFilter": []}}]}, "descriptor must be a DataRequirement"),
    ({"name": "prefetchData", "part": [{"name": "key", "valueString": "k"}, {"name": "result", "valueString": "x"}]}, "unknown part(s) result"),
    ({"name": "prefetchData", "part": [{"name": "data", "resource": {"resourceType": "Bundle"}}]}, "give its key, its descriptor or both"),
    ({"name": "parameters", "resource": {"resourceType": "Parameters", "parameter": [{"name": "x"}]}}, "x must have exactly one of"),
    ({"name": "parameters", "resource": {"resourceType": "Parameters", "parameter": [{"name": "my-input", "valueString": "x"}]}},
     "cannot be read as %my-input"),
]


@pytest.mark.parametrize("entry, message", ILL_TYPED)
@pytest.mark.parametrize("operation", ["PlanDefinition/back-spasm-treatment-pathway/$apply", "PlanDefinition/back-spasm-treatment-pathway/$r5.apply",
                                       "ActivityDefinition/heat-therapy-immediate/$apply"])
def test_an_input_of_the_wrong_type_is_a_400_naming_it(client, operation, entry, message):
    answer = client.post(f"/fhir/{operation}", json=body(entry))
    assert answer.status_code == 400 and message in diagnostics(answer)


def test_data_and_prefetch_data_together_are_refused_as_exclusive(client):
    answer = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json=body(
        {"name": "data", "resource": record()},
        {"name": "prefetchData", "part": [{"name": "key", "valueString": "patient"}, {"name": "data", "resource": record()}]}))
    assert answer.status_code == 400 and "data and prefetchData are exclusive" in diagnostics(answer)


@pytest.mark.parametrize("name, why", [
    ("patient", "standard variable"), ("context", "standard variable"), ("organization", "standard variable"),
    ("setting", "operation input"), ("userLanguage", "operation input"),
    ("activeSpasm", "Library variable"), ("spasmConditions", "Library data requirement"),
])
def test_an_input_named_like_a_variable_of_the_expressions_is_a_400_naming_it(client, name, why):
    inner = {"resourceType": "Parameters", "parameter": [{"name": name, "valueString": "x"}]}
    answer = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json=body({"name": "parameters", "resource": inner}))
    assert answer.status_code == 400, why
    assert "parameters" in diagnostics(answer) and f"'{name}'" in diagnostics(answer)


def test_a_library_parameter_binds_and_is_not_a_clash(client):
    patient = spasm_patient()
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, draft_id="rx-1")
    inner = {"resourceType": "Parameters", "parameter": [{"name": "draftOrder", "resource": draft}, {"name": "draftOrders", "resource": draft}]}
    answer = client.post("/fhir/PlanDefinition/back-spasm-order-review/$apply", json={"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueString": f"Patient/{patient.id}"}, {"name": "data", "resource": patient.bundle("collection")},
        {"name": "parameters", "resource": inner}]})
    assert answer.status_code == 200


@pytest.mark.parametrize("query, message", [
    ("userType=physician", "parameter userType of $apply is a CodeableConcept, which a URL cannot carry"),
    ("setting=AMB", "parameter setting of $apply is a CodeableConcept"),
    ("prefetchData=x", "parameter prefetchData of $apply is a list of parts"),
    ("useServerData=maybe", "useServerData must be a boolean"),
    ("mergeNestedCarePlans=true", "unsupported parameter(s) of $apply: mergeNestedCarePlans"),
])
def test_a_get_with_an_input_it_cannot_carry_is_a_400_naming_it(client, query, message):
    answer = client.get(f"/fhir/PlanDefinition/{PATHWAY}/$apply?subject=Patient/p1&{query}")
    assert answer.status_code == 400 and message in diagnostics(answer)


@pytest.mark.parametrize("name", ["dataEndpoint", "terminologyEndpoint", "contentEndpoint", "planDefinition", "artifactEndpointConfiguration"])
def test_an_input_this_server_does_not_take_is_a_400_naming_it(client, name):
    answer = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json=body({"name": name, "resource": {"resourceType": "Endpoint"}}))
    assert answer.status_code == 400 and f"unsupported parameter(s) of $apply: {name}" in diagnostics(answer)


def test_apply_parameters_checks_itself_whoever_builds_it():
    with pytest.raises(ParameterError) as caught:
        ApplyParameters("Patient/p1", practitioner=7)
    assert caught.value.parameter == "practitioner"
    with pytest.raises(ParameterError) as caught:
        ApplyParameters("")
    assert caught.value.parameter == "subject"
    with pytest.raises(ParameterError) as caught:
        ApplyParameters("Patient/p1", prefetch_data=[PrefetchData(key="k", data={"resourceType": "Patient"})])
    assert caught.value.parameter == "prefetchData"


# -- the CDS Hooks request maps to the same inputs --------------------------------------------------------------------

def test_a_hook_request_maps_to_the_inputs_of_the_equivalent_operation_call(app):
    patient = spasm_patient()
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, draft_id="rx-1")
    patient_resource = next(e["resource"] for e in patient.bundle()["entry"] if e["resource"]["resourceType"] == "Patient")
    conditions = {"resourceType": "Bundle", "type": "searchset",
                  "entry": [e for e in patient.bundle()["entry"] if e["resource"]["resourceType"] == "Condition"]}
    hook = {"hook": "order-sign", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"patientId": patient.id, "userId": "Practitioner/dr-1", "encounterId": "e1",
                        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}},
            "prefetch": {"patient": patient_resource, "conditions": conditions, "missing": None}}
    operation = {"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueString": f"Patient/{patient.id}"},
        {"name": "encounter", "valueString": "Encounter/e1"},
        {"name": "practitioner", "valueString": "Practitioner/dr-1"},
        {"name": "parameters", "resource": {"resourceType": "Parameters", "parameter": [{"name": "draftOrders", "resource": draft}]}},
        {"name": "prefetchData", "part": [{"name": "key", "valueString": "patient"}, {"name": "data", "resource": {
            "resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient_resource}]}}]},
        {"name": "prefetchData", "part": [{"name": "key", "valueString": "conditions"}, {"name": "data", "resource": conditions}]},
    ]}
    with app.test_request_context(f"/fhir/PlanDefinition/{PATHWAY}/$apply", method="POST", json=operation):
        from_the_operation = from_operation(_operation_parameters(PLAN_APPLY))
    from_the_hook = from_hook(hook)
    assert from_the_hook == from_the_operation
    assert [item.key for item in from_the_hook.prefetch_data] == ["patient", "conditions"]


def test_a_hook_and_the_operation_give_the_same_plan(app, client):
    patient = spasm_patient()
    prefetch = {"patient": next(e["resource"] for e in patient.bundle()["entry"] if e["resource"]["resourceType"] == "Patient"),
                "everything": patient.bundle()}
    hook = {"hook": "patient-view", "hookInstance": "f0b9d4b7-8f3a-4a5e-9d6e-0d8a3b1c2e4f",
            "context": {"patientId": patient.id, "userId": "Practitioner/dr-1", "encounterId": "e1"}, "prefetch": prefetch}
    inputs = from_hook(hook)
    via_hook = app.extensions["back_spasm_cds"].engine.apply_parameters(PATHWAY, inputs, CLOCK)
    answer = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json={"resourceType": "Parameters", "parameter": [
        {"name": "subject", "valueString": f"Patient/{patient.id}"}, {"name": "encounter", "valueString": "Encounter/e1"},
        {"name": "practitioner", "valueString": "Practitioner/dr-1"},
        *[{"name": "prefetchData", "part": [{"name": "key", "valueString": item.key}, {"name": "data", "resource": item.data}]}
          for item in inputs.prefetch_data]]})
    assert without_ids(answer.json) == without_ids(careplan_r4(via_hook))
    assert answer.json["author"] == {"reference": "Practitioner/dr-1"} and answer.json["encounter"] == {"reference": "Encounter/e1"}


# -- the OperationDefinitions -----------------------------------------------------------------------------------------

def test_every_operation_of_the_capability_statement_is_defined_here(client):
    statement = client.get("/fhir/metadata").json
    definitions = {o["definition"] for r in statement["rest"][0]["resource"] for o in r.get("operation", [])}
    assert len(definitions) == len(operation_definitions())
    for canonical in definitions:
        path = canonical.split("/fhir/", 1)[1]
        answer = client.get(f"/fhir/{path}")
        assert answer.status_code == 200 and answer.mimetype == "application/fhir+json", canonical
        assert answer.json["url"] == canonical
        get_fhir_model_class("OperationDefinition").model_validate(answer.json)


def test_the_apply_definition_lists_exactly_the_inputs_the_operation_takes(client):
    definition = client.get("/fhir/OperationDefinition/PlanDefinition-apply").json
    inputs = {p["name"] for p in definition["parameter"] if p["use"] == "in"}
    taken = {*PLAN_APPLY.primitive, *PLAN_APPLY.resources, *(name for name, _ in PLAN_APPLY.complex)}
    assert inputs == taken | {"url", "version"}
    types = {p["name"]: p.get("type") for p in definition["parameter"]}
    assert all(types[name] == "CodeableConcept" for name in CONCEPTS)
    assert types["useServerData"] == "boolean" and types["data"] == "Bundle" and types["parameters"] == "Parameters"
    prefetch = next(p for p in definition["parameter"] if p["name"] == "prefetchData")
    assert {part["name"]: part["type"] for part in prefetch["part"]} == {"key": "string", "descriptor": "DataRequirement", "data": "Bundle"}


def test_an_unknown_operation_definition_is_404(client):
    answer = client.get("/fhir/OperationDefinition/Measure-evaluate-measure")
    assert answer.status_code == 404 and "OperationDefinition/Measure-evaluate-measure" in diagnostics(answer)
