"""Only this patient's data (PROTOCOL.md §1): other patients' resources are left out, counted, and never change a card.

A resource whose ``subject`` or ``patient`` names another patient (``Patient/x``, with ``_history``, an absolute
URL, the ``urn:uuid`` fullUrl of another Patient entry) and any other Patient are left out of the record before a
rule sees them; the result's OperationOutcome and the service's log line say how many (a count, never an id).
A reference that cannot be told (an unknown ``urn:uuid``, an identifier, a Group) keeps the resource. A draft order
for another patient is a request error: 400 naming the draft on the service, exit 2 on the command line.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol.engine.apply
from protocol.engine.apply import ApplyError
from protocol.engine.content import load_content
from protocol.engine.output import careplan_r4
from protocol.engine.record import Record
from service.cds_hooks.calls import DraftForAnotherPatient, calls_for_hook
from service.cds_hooks.cards import CardBuilder
from service.cli import main
from tests.cds_support import PATHWAY, REVIEW, cards, engine, find, view
from tests.patients import (
    CLOCK,
    CYCLOBENZAPRINE_5,
    CYCLOBENZAPRINE_10,
    HEART_FAILURE,
    MODERATE,
    PAIN_NRS,
    PHENELZINE,
    PT_REFERRAL,
    SPASM_ICD,
    SPASM_SCT,
    TRICYCLIC_ALLERGY,
    Patient,
    concept,
    when,
)
from tests.service_helpers import (
    ORDER_SELECT,
    ORDER_SIGN,
    PATIENT_VIEW,
    FhirStub,
    call,
    hook_body,
    make_app,
    outcome_diagnostics,
    without_uuids,
)

__all__ = ["engine"]

OTHER = "other-7"
OTHER_URN = "urn:uuid:7d1c4a8e-2f6b-4c1e-9b1a-3e5d2c4f6a80"
SELF_URN = "urn:uuid:0c6f1e2a-9d3b-4a57-8e21-5b4c3d2e1f09"
#: The ways a reference names the other patient.
FORMS = {
    "relative": f"Patient/{OTHER}",
    "history": f"Patient/{OTHER}/_history/2",
    "absolute": f"https://ehr.example.org/fhir/Patient/{OTHER}",
    "urn-uuid": OTHER_URN,
}
SPASM_VS = "http://example.org/fhir/back-spasm-cds/ValueSet/back-muscle-spasm"
MAOI_VS = "http://example.org/fhir/back-spasm-cds/ValueSet/maoi"


def repoint(resource: dict, reference: str) -> dict:
    """A copy of the resource whose subject (or patient) reference is the given one."""
    out = copy.deepcopy(resource)
    out["patient" if "patient" in out else "subject"] = {"reference": reference}
    return out


def others_bundle(resources: list[dict], *, with_patient: bool = True) -> dict:
    """Another patient's resources as a searchset, with that patient's entry (fullUrl OTHER_URN) first."""
    entries = [{"fullUrl": OTHER_URN, "resource": {"resourceType": "Patient", "id": OTHER, "gender": "female"}}] if with_patient else []
    entries += [{"resource": copy.deepcopy(r)} for r in resources]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def donor() -> Patient:
    """Another patient, whose resources are re-pointed by the tests."""
    return Patient(30, patient_id=OTHER)


def apply_view(engine, patient: Patient, others: list[dict], form: str = "relative", now=CLOCK):
    data = [patient.resources, others_bundle([repoint(r, FORMS[form]) for r in others])]
    return engine.apply(PATHWAY, data, now, patient.id)


def proposed(result) -> bool:
    return "cyclobenzaprine-proposal" in cards(result) and find(result, "phase-1-cyclobenzaprine") is not None


def information(result) -> list[str]:
    return [i.diagnostics for i in result.issues if i.severity == "information"]


# ---------------------------------------------------------------------------------- the record


@pytest.fixture(scope="module")
def terminology():
    return load_content().terminology


def condition(cid: str, reference: str | None, element: str = "subject") -> dict:
    resource = {"resourceType": "Condition", "id": cid, "code": concept(SPASM_ICD), "onsetDateTime": when(days_ago=1)}
    if reference is not None:
        resource[element] = {"reference": reference}
    return resource


KEPT = ["Patient/p", "Patient/p/_history/4", "https://ehr.example.org/fhir/Patient/p", "http://ehr.example.org/fhir/Patient/p/",
        SELF_URN, "urn:uuid:11111111-2222-3333-4444-555555555555", "Group/g", "#p", "p"]
LEFT_OUT = ["Patient/x", "Patient/x/_history/2", "https://ehr.example.org/fhir/Patient/x", "https://ehr.example.org/fhir/Patient/x/",
            OTHER_URN, "Patient/p-2", "Patient/P", "Patient/pp"]


def record_of(terminology, resources: list, subject: str = "Patient/p") -> Record:
    """This patient's entry (SELF_URN) and the other patient's entry (OTHER_URN) come with the resources."""
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": SELF_URN, "resource": {"resourceType": "Patient", "id": "p"}},
                        {"fullUrl": OTHER_URN, "resource": {"resourceType": "Patient", "id": OTHER}}]}
    return Record.from_data([bundle, *resources], terminology, CLOCK, subject)


@pytest.mark.parametrize("reference", KEPT)
def test_a_reference_to_this_patient_or_one_that_cannot_be_told_keeps_the_resource(terminology, reference):
    record = record_of(terminology, [condition("c1", reference)])
    assert [r["id"] for r in record.retrieve({"type": "Condition", "codeFilter": [{"path": "code", "valueSet": SPASM_VS}]})] == ["c1"]
    assert record.get("Condition/c1") is not None
    assert record.ignored == 1  # the other patient's Patient entry only


@pytest.mark.parametrize("element", ["subject", "patient"])
@pytest.mark.parametrize("reference", LEFT_OUT)
def test_a_reference_to_another_patient_leaves_the_resource_out(terminology, reference, element):
    record = record_of(terminology, [condition("c1", reference, element), condition("c2", "Patient/p")])
    assert [r["id"] for r in record.of_type("Condition")] == ["c2"]
    assert record.get("Condition/c1") is None
    assert [r["id"] for r in record.retrieve({"type": "Condition", "codeFilter": [{"path": "code", "valueSet": SPASM_VS}]})] == ["c2"]
    assert record.ignored == 2  # the condition and the other patient's Patient entry


@pytest.mark.parametrize("subject", ["Patient/p", "p", "https://ehr.example.org/fhir/Patient/p"])
def test_the_subject_may_be_named_by_id_reference_or_url(terminology, subject):
    record = record_of(terminology, [condition("mine", "Patient/p"), condition("theirs", "Patient/x")], subject)
    assert [r["id"] for r in record.of_type("Condition")] == ["mine"]
    assert [r["id"] for r in record.of_type("Patient")] == ["p"]
    assert record.patient("Patient/p")["id"] == "p"


def test_other_patients_and_their_contained_resources_are_not_indexed_or_resolvable(terminology):
    theirs = {"resourceType": "MedicationRequest", "id": "mr", "subject": {"reference": "Patient/x"},
              "contained": [{"resourceType": "Medication", "id": "m", "code": concept(PHENELZINE)}],
              "medicationReference": {"reference": "#m"}}
    entry = {"resourceType": "Bundle", "type": "searchset",
             "entry": [{"fullUrl": "https://ehr.example.org/fhir/MedicationRequest/mr", "resource": theirs}]}
    record = record_of(terminology, [entry])
    assert record.of_type("MedicationRequest") == [] and record.of_type("Medication") == []
    assert record.get("MedicationRequest/mr") is None and record.get("https://ehr.example.org/fhir/MedicationRequest/mr") is None
    assert record.get("Patient/" + OTHER) is None and record.get(OTHER_URN) is None
    assert record.resolve(theirs["medicationReference"]) is None
    assert record.retrieve({"type": "MedicationRequest", "codeFilter": [{"path": "medication", "valueSet": MAOI_VS}]}) == []


def test_another_patients_resource_with_the_same_id_does_not_hide_this_patients(terminology):
    theirs, mine = condition("c1", "Patient/x"), condition("c1", "Patient/p")
    theirs["code"] = concept(HEART_FAILURE)
    record = record_of(terminology, [theirs, mine])
    assert record.get("Condition/c1") is mine and record.of_type("Condition") == [mine]


def test_each_left_out_resource_is_counted_once(terminology):
    theirs = [condition("c1", "Patient/x"), condition("c1", "Patient/x"), condition("c2", "Patient/y"), condition(None, "Patient/x")]
    del theirs[3]["id"]
    record = record_of(terminology, theirs)
    assert record.ignored == 4  # c1, c2, the one without id, and the other Patient


def test_without_a_subject_nothing_is_left_out(terminology):
    record = Record.from_data([condition("c1", "Patient/x"), {"resourceType": "Patient", "id": "x"}], terminology, CLOCK)
    assert record.ignored == 0 and len(record.of_type("Condition")) == 1


def test_a_patient_without_id_cannot_be_told_and_is_kept(terminology):
    record = record_of(terminology, [{"resourceType": "Patient", "gender": "male"}])
    assert len(record.of_type("Patient")) == 2 and record.ignored == 1


# ---------------------------------------------------------------------------------- through the protocol


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("kind,shape", [("request", "concept"), ("request", "contained"), ("request", "reference"),
                                        ("statement", "concept"), ("statement", "reference")])
def test_another_patients_maoi_does_not_withhold_cyclobenzaprine(engine, form, kind, shape):
    patient = Patient(45)
    patient.spasm(20)
    other = donor()
    other.medication(PHENELZINE, kind=kind, shape=shape)
    result = apply_view(engine, patient, other.resources[1:], form)
    assert proposed(result) and "withheld-maoi" not in cards(result)
    own = Patient(45)
    own.spasm(20)
    own.resources += [repoint(r, f"Patient/{own.id}") for r in other.resources[1:]]
    assert "withheld-maoi" in cards(view(engine, own))


@pytest.mark.parametrize("form", list(FORMS))
def test_another_patients_long_cyclobenzaprine_course_gives_no_stop_card(engine, form):
    patient = Patient(45)
    patient.spasm(days_ago=30)
    other = donor()
    other.medication(CYCLOBENZAPRINE_10, started_days_ago=40)
    result = apply_view(engine, patient, other.resources[1:], form)
    assert "cyclobenzaprine-beyond-21-days" not in cards(result)
    own = Patient(45)
    own.spasm(days_ago=30)
    own.resources += [repoint(r, f"Patient/{own.id}") for r in other.resources[1:]]
    assert "cyclobenzaprine-beyond-21-days" in cards(view(engine, own))


@pytest.mark.parametrize("code", [SPASM_ICD, SPASM_SCT], ids=["icd", "sct"])
@pytest.mark.parametrize("form", list(FORMS))
def test_another_patients_back_spasm_alone_gives_no_cards(engine, form, code):
    patient = Patient(45)
    other = donor()
    other.spasm(20, code=code)
    other.pain(9)
    result = apply_view(engine, patient, other.resources[1:], form)
    assert result.actions == []
    assert information(result) == ["3 resources of other patients were ignored"]


@pytest.mark.parametrize("form", list(FORMS))
def test_another_patients_conditions_allergies_and_observations_change_nothing(engine, form):
    patient = Patient(45)
    patient.spasm(20, severity=MODERATE)
    other = donor()
    other.condition(HEART_FAILURE, onset_value=when(days_ago=400))
    other.allergy(TRICYCLIC_ALLERGY)
    other.pain(9, hours_ago=1)
    result = apply_view(engine, patient, other.resources[1:], form)
    assert cards(result) == cards(view(engine, patient)) == {"phase-plan"}
    own = copy.deepcopy(patient)
    own.resources += [repoint(r, f"Patient/{patient.id}") for r in other.resources[1:]]
    assert {"withheld-cardiac", "withheld-allergy"} <= cards(view(engine, own))


def test_a_urn_uuid_of_this_patients_own_entry_is_this_patient(engine):
    patient = Patient(45)
    patient.spasm(20)
    patient.medication(PHENELZINE)
    entries = [{"fullUrl": SELF_URN if r["resourceType"] == "Patient" else f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
                "resource": repoint(r, SELF_URN) if r["resourceType"] != "Patient" else r}
               for i, r in enumerate(patient.resources)]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    result = engine.apply(PATHWAY, [bundle, others_bundle([])], CLOCK, patient.id)
    assert "withheld-maoi" in cards(result)
    assert information(result) == ["1 resource of another patient was ignored"]


def test_another_patients_active_cyclobenzaprine_is_no_duplicate_of_a_draft(engine):
    patient = Patient(45)
    patient.spasm(20)
    other = donor()
    other.medication(CYCLOBENZAPRINE_10, started_days_ago=2)
    draft = patient.draft_medication(CYCLOBENZAPRINE_5)
    data = [patient.resources, others_bundle(other.resources[1:]), draft]
    result = engine.apply(REVIEW, data, CLOCK, patient.id, parameters={"draftOrder": draft, "draftOrders": [draft]})
    assert cards(result) == set()


def test_the_outcome_counts_the_ignored_resources_and_names_none(engine):
    patient = Patient(45)
    patient.spasm(20)
    other = donor()
    other.medication(PHENELZINE)
    other.condition(HEART_FAILURE)
    result = apply_view(engine, patient, other.resources[1:], "absolute")
    assert result.ignored_resources == 3
    careplan = careplan_r4(result)
    (outcome,) = [r for r in careplan["contained"] if r["resourceType"] == "OperationOutcome"]
    notes = [i for i in outcome["issue"] if i["severity"] == "information"]
    assert notes == [{"severity": "information", "code": "informational", "diagnostics": "3 resources of other patients were ignored"}]
    assert OTHER not in json.dumps(outcome) and "medicationrequest" not in json.dumps(outcome).lower()


def test_no_note_when_nothing_was_ignored(engine):
    patient = Patient(45)
    patient.spasm(20)
    result = view(engine, patient)
    assert result.ignored_resources == 0 and information(result) == []


# ---------------------------------------------------------------------------------- draft orders for another patient


def order_body(hook: str, patient: Patient, drafts: list[dict], prefetch: dict | None = None) -> dict:
    context = {"patientId": patient.id, "userId": "Practitioner/dr-1", "draftOrders": {"resourceType": "Bundle", "type": "collection",
                                                                                      "entry": [{"resource": d} for d in drafts]}}
    if hook == "order-select":
        context["selections"] = [f"MedicationRequest/{d['id']}" for d in drafts]
    return {"hook": hook, "hookInstance": "5f0c1a2b-3d4e-4f50-8a6b-7c8d9e0f1a2b", "context": context,
            "prefetch": prefetch or {"patient": patient.patient, "conditions": patient.bundle()}}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_a_draft_order_for_another_patient_is_a_request_error_naming_it(engine, hook, form):
    patient = Patient(45)
    patient.spasm(20)
    mine = patient.draft_medication(CYCLOBENZAPRINE_5, draft_id="rx-mine")
    theirs = repoint(patient.draft_medication(CYCLOBENZAPRINE_5, draft_id="rx-theirs"), FORMS[form])
    prefetch = {"patient": patient.patient, "conditions": patient.bundle(), "others": others_bundle([])}
    with pytest.raises(DraftForAnotherPatient) as raised:
        calls_for_hook(engine, order_body(hook, patient, [mine, theirs], prefetch))
    assert isinstance(raised.value, ApplyError)
    assert "MedicationRequest/rx-theirs" in str(raised.value) and OTHER not in str(raised.value)


@pytest.mark.parametrize("reference", ["Patient/pat-1", SELF_URN, "urn:uuid:11111111-2222-3333-4444-555555555555", None])
def test_a_draft_for_this_patient_or_one_that_cannot_be_told_is_reviewed(engine, reference):
    patient = Patient(45)
    patient.spasm(20)
    draft = patient.draft_medication(CYCLOBENZAPRINE_5, draft_id="rx-1")
    if reference is None:
        del draft["subject"]
    else:
        draft["subject"] = {"reference": reference}
    own_entry = {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": SELF_URN, "resource": patient.patient}]}
    prefetch = {"patient": own_entry, "conditions": patient.bundle()}
    assert len(calls_for_hook(engine, order_body("order-sign", patient, [draft], prefetch))) == 1


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("scoping"))


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.mark.parametrize("hook,service", [("order-select", ORDER_SELECT), ("order-sign", ORDER_SIGN)])
def test_the_service_answers_400_naming_the_draft_for_another_patient(app, client, hook, service):
    patient = Patient(45)
    patient.spasm(20)
    theirs = repoint(patient.draft_medication(CYCLOBENZAPRINE_5, draft_id="abc"), "Patient/someone-else")
    body = hook_body(app, hook, patient, [patient.draft_medication(CYCLOBENZAPRINE_5, draft_id="mine"), theirs])
    answer = call(client, hook, body, service)
    assert answer.status_code == 400
    text = outcome_diagnostics(answer)
    assert "MedicationRequest/abc" in text and "someone-else" not in text


def test_a_draft_for_another_patient_is_refused_before_any_fhir_server_is_read(app, client, httpserver):
    patient = Patient(45)
    patient.spasm(20)
    FhirStub(patient.resources).mount(httpserver)
    theirs = repoint(patient.draft_medication(CYCLOBENZAPRINE_5, draft_id="abc"), "Patient/someone-else")
    body = hook_body(app, "order-sign", patient, [theirs], prefetch=False, fhir_server=httpserver.url_for("/fhir"))
    answer = call(client, "order-sign", body, ORDER_SIGN)
    assert answer.status_code == 400 and "MedicationRequest/abc" in outcome_diagnostics(answer)
    assert len(httpserver.log) == 0, "nothing is fetched for a request that is refused"



def test_the_log_line_counts_the_ignored_resources_and_names_none(app, client, access_log):
    patient = Patient(45, patient_id="pat-log-1")
    patient.spasm(20)
    other = donor()
    other.medication(PHENELZINE)
    other.condition(HEART_FAILURE)
    other.pain(9)
    patient.resources += [repoint(r, FORMS["relative"]) for r in other.resources]
    answer = call(client, "patient-view", hook_body(app, "patient-view", patient), PATIENT_VIEW)
    assert answer.status_code == 200
    assert "cyclobenzaprine" in json.dumps(answer.get_json())
    (line,) = [entry for entry in access_log() if entry.get("event") == "request"]
    assert line["ignored_resources"] == 3
    assert OTHER not in json.dumps(line) and "pat-log-1" not in json.dumps(line)


# ---------------------------------------------------------------------------------- the command line


def test_apply_exits_2_naming_a_draft_for_another_patient(tmp_path: Path, capsys, monkeypatch, engine):
    monkeypatch.setattr(protocol.engine.apply, "Engine", lambda content, *args, **kwargs: engine)
    patient = Patient(45)
    patient.spasm(20)
    theirs = repoint(patient.draft_medication(CYCLOBENZAPRINE_5, draft_id="abc"), f"https://ehr.example.org/fhir/Patient/{OTHER}")
    path = tmp_path / "hook.json"
    path.write_text(json.dumps(order_body("order-sign", patient, [theirs])))
    code = main(["apply", "--data", str(path), "--at", "2026-11-25T10:00:00Z"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "MedicationRequest/abc" in captured.err


# ---------------------------------------------------------------------------------- property: other patients never change a card


def _subjects() -> dict[str, Patient]:
    """This patient's records: each case gives different cards, and some would change if another patient's data leaked in."""
    out = {}
    plain = Patient(45)
    plain.spasm(20)
    out["proposed"] = plain
    maoi = Patient(45)
    maoi.spasm(20)
    maoi.medication(PHENELZINE, shape="reference")
    out["maoi"] = maoi
    long_course = Patient(45)
    long_course.spasm(days_ago=30)
    long_course.medication(CYCLOBENZAPRINE_10, started_days_ago=25)
    out["long-course"] = long_course
    moderate = Patient(45)
    moderate.spasm(20, severity=MODERATE)
    moderate.pain(3, hours_ago=5)
    out["moderate"] = moderate
    none = Patient(45)
    none.pain(9)
    out["out-of-scope"] = none
    return out


def _pool() -> list[dict]:
    """Every kind of resource these tests use, of one other patient (Medications they reference ride along)."""
    other = donor()
    other.spasm(20)
    other.spasm(days_ago=30, code=SPASM_SCT)
    other.condition(HEART_FAILURE, onset_value=when(days_ago=400))
    other.allergy(TRICYCLIC_ALLERGY)
    other.pain(9, hours_ago=1)
    other.pain(2, hours_ago=0.5, code=PAIN_NRS)
    for shape in ("concept", "contained", "reference"):
        other.medication(PHENELZINE, shape=shape)
        other.medication(CYCLOBENZAPRINE_10, kind="statement", shape=shape, started_days_ago=40)
    other.medication(CYCLOBENZAPRINE_5, started_days_ago=2)
    for kind in ("procedure", "service-request", "careplan", "encounter"):
        other.physical_therapy(kind)
    other.add({"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": other.ref, "code": concept(PT_REFERRAL)})
    return other.resources


SUBJECTS = _subjects()
POOL = _pool()
BUILDER_PAGE = "http://cds.example.org/protocol"


def _card_view(cards_json: list[dict]) -> list:
    """What a clinician sees of the cards: summary, indicator, detail, suggestions and their actions (no uuids)."""
    return without_uuids([{k: c.get(k) for k in ("summary", "indicator", "detail", "source", "suggestions", "links")} for c in cards_json])


def _cards(engine, builder: CardBuilder, plan: str, data: list, subject: str, parameters: dict | None = None) -> tuple[list, int]:
    result = engine.apply(plan, data, CLOCK, subject, parameters=parameters)
    return _card_view(builder.cards(result)[0]), result.ignored_resources


@st.composite
def _others(draw, subject: Patient) -> tuple[list[dict], bool, set[str]]:
    """Other patients' resources: any number of any type from the pool, each re-pointed by any reference form,
    some reusing the id of one of this patient's resources of the same type; with the keys that must be counted."""
    chosen = draw(st.lists(st.sampled_from([r for r in POOL if r["resourceType"] != "Patient"]), max_size=12))
    out, keys = [], set()
    subject_ids = {}
    for resource in subject.resources:
        subject_ids.setdefault(resource["resourceType"], []).append(resource["id"])
    for resource in chosen:
        if resource["resourceType"] == "Medication":
            out.append(copy.deepcopy(resource))
            continue
        moved = repoint(resource, FORMS[draw(st.sampled_from(sorted(FORMS)))])
        if resource["resourceType"] in subject_ids and draw(st.booleans()):
            moved["id"] = draw(st.sampled_from(subject_ids[resource["resourceType"]]))
        out.append(moved)
        keys.add(f"{moved['resourceType']}/{moved['id']}")
    keys.add(f"Patient/{OTHER}")
    return out, draw(st.booleans()), keys


@pytest.fixture(scope="module")
def builder(engine) -> CardBuilder:
    return CardBuilder(engine.content, lambda anchor: f"{BUILDER_PAGE}#{anchor}")


@pytest.fixture(scope="module")
def baselines(engine, builder) -> dict:
    """The cards of each subject on its own, patient-view and the review of one cyclobenzaprine draft."""
    out = {}
    for name, subject in SUBJECTS.items():
        draft = subject.draft_medication(CYCLOBENZAPRINE_5, draft_id="rx-draft")
        review = {"draftOrder": draft, "draftOrders": [draft]}
        out[name] = (_cards(engine, builder, PATHWAY, subject.resources, subject.id)[0],
                     _cards(engine, builder, REVIEW, [*subject.resources, draft], subject.id, review)[0], draft)
    return out


#: 200 examples (derandomized): each applies both plans and builds their cards, 1-5 ms; about 2 s in all.
@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(sorted(SUBJECTS)))
def test_other_patients_resources_never_change_the_cards(engine, builder, baselines, data, name):
    subject = SUBJECTS[name]
    others, first, keys = data.draw(_others(subject))
    expected_view, expected_review, draft = baselines[name]
    theirs = others_bundle(others)
    data_list = [theirs, subject.resources] if first else [subject.resources, theirs]
    view_cards, ignored = _cards(engine, builder, PATHWAY, data_list, subject.id)
    assert view_cards == expected_view
    assert ignored == len(keys)
    review = {"draftOrder": draft, "draftOrders": [draft]}
    review_cards, _ = _cards(engine, builder, REVIEW, [*data_list, draft], subject.id, review)
    assert review_cards == expected_review
