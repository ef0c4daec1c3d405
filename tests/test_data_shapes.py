"""The shapes real clients send: medication coding paths, MedicationRequest vs MedicationStatement, CDS Hooks
prefetch mappings (searchset Bundles, null values, OperationOutcome entries, one resource under two keys),
hook bodies, and the shared Synthea patients with and without the protocol's resources added."""

from __future__ import annotations

import copy
from datetime import date

import pytest

from service.cds_hooks.calls import calls_for_hook, run_calls
from tests.cds_support import (
    PATHWAY,
    REVIEW,
    cards,
    engine,
    get,
    mentions_date,
    phase,
    resources,
    review,
    text_of,
    view,
)
from tests.patients import (
    CLOCK,
    CYCLOBENZAPRINE_5,
    CYCLOBENZAPRINE_10,
    PHENELZINE,
    SERTRALINE,
    SYNTHEA,
    TENS_DEVICE,
    TRACTION,
    TRAMADOL,
    Patient,
    synthea,
)

__all__ = ["engine"]

SHAPES = ["concept", "contained", "reference"]
KINDS = ["request", "statement"]


def base() -> Patient:
    patient = Patient(45)
    patient.spasm(20)
    return patient


def searchset(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"http://ehr.example/fhir/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                      for r in resources]}


def prefetch_of(patient: Patient) -> dict:
    """The patient's record split the way a CDS Hooks prefetch template asks for it."""
    by_type: dict[str, list[dict]] = {}
    for resource in patient.resources:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    out: dict = {"patient": by_type.pop("Patient")[0]}
    out["conditions"] = searchset(by_type.pop("Condition", []))
    out["medications"] = searchset(by_type.pop("MedicationRequest", []) + by_type.pop("Medication", []))
    out["statements"] = searchset(by_type.pop("MedicationStatement", []))
    out["observations"] = searchset(by_type.pop("Observation", []))
    out["allergies"] = searchset(by_type.pop("AllergyIntolerance", []))
    out["history"] = searchset([r for rest in by_type.values() for r in rest])
    return out


# ---------------------------------------------------------------------------------- how a drug is coded


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_maoi_is_found_whatever_the_coding_path(engine, kind, shape):
    patient = base()
    patient.medication(PHENELZINE, kind=kind, shape=shape)
    result = view(engine, patient)
    assert "withheld-maoi" in cards(result) and "cyclobenzaprine-proposal" not in cards(result)
    assert "Phenelzine" in text_of(get(result, "withheld-maoi"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_serotonergic_drug_is_named_whatever_the_coding_path(engine, kind, shape):
    patient = base()
    patient.medication(SERTRALINE, kind=kind, shape=shape)
    assert "Sertraline" in get(view(engine, patient), "cyclobenzaprine-proposal").fields["title"]


@pytest.mark.parametrize("shape", SHAPES)
def test_cns_depressant_is_found_whatever_the_coding_path(engine, shape):
    patient = base()
    patient.medication(TRAMADOL, shape=shape)
    assert "tramadol" in text_of(get(view(engine, patient), "cns-depressant-note")).lower()


@pytest.mark.parametrize("shape", ["concept", "contained"])
def test_draft_order_is_reviewed_whatever_the_coding_path(engine, shape):
    patient = base()
    patient.medication(PHENELZINE)
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, shape=shape, per_day=4, days=30)
    assert {"draft-maoi", "draft-dose-too-high", "draft-course-too-long"} <= cards(review(engine, patient, draft))


def test_draft_order_referring_to_a_medication_supplied_separately(engine):
    patient = base()
    patient.medication(PHENELZINE)
    medication = {"resourceType": "Medication", "id": "cbz-10", "code": {"coding": [
        {"system": CYCLOBENZAPRINE_10[0], "code": CYCLOBENZAPRINE_10[1]}]}}
    draft = patient.draft_medication(CYCLOBENZAPRINE_10)
    del draft["medicationCodeableConcept"]
    draft["medicationReference"] = {"reference": "Medication/cbz-10"}
    result = engine.apply(REVIEW, patient.resources + [medication, draft], CLOCK, patient.id,
                          parameters={"draftOrder": draft, "draftOrders": [draft]})
    assert "draft-maoi" in cards(result)


def test_medication_in_another_prefetch_key_is_resolved(engine):
    """The MedicationRequest in one searchset and its Medication in another, as separate prefetch queries return them."""
    patient = base()
    patient.medication(PHENELZINE, shape="reference")
    data = prefetch_of(patient)
    medications = [e["resource"] for e in data["medications"]["entry"] if e["resource"]["resourceType"] == "Medication"]
    data["medications"] = searchset([e["resource"] for e in data["medications"]["entry"] if e["resource"]["resourceType"] != "Medication"])
    data["medication-products"] = searchset(medications)
    assert "withheld-maoi" in cards(engine.apply(PATHWAY, data, CLOCK, patient.id))


def test_a_reference_to_a_missing_medication_is_not_a_finding(engine):
    patient = base()
    statement = patient.medication(PHENELZINE, shape="reference")
    patient.resources = [r for r in patient.resources if r["resourceType"] != "Medication"]
    assert statement["medicationReference"]["reference"].startswith("Medication/")
    assert "cyclobenzaprine-proposal" in cards(view(engine, patient))


# ---------------------------------------------------------------------------------- prefetch mappings


def test_prefetch_mapping_of_searchsets_gives_the_same_answer_as_the_plain_record(engine):
    patient = base()
    patient.medication(SERTRALINE)
    patient.physical_therapy("encounter", days_ago=12)
    plain = view(engine, patient)
    mapped = engine.apply(PATHWAY, prefetch_of(patient), CLOCK, patient.id)
    assert cards(mapped) == cards(plain) == {"phase-plan", "cyclobenzaprine-proposal"}
    assert get(mapped, "phase-plan").fields == get(plain, "phase-plan").fields
    assert resources(mapped) == resources(plain)


def test_a_null_prefetch_value_is_no_data(engine):
    patient = base()
    data = prefetch_of(patient)
    data["medications"] = None
    data["allergies"] = None
    result = engine.apply(PATHWAY, data, CLOCK, patient.id)
    assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal"}
    assert result.issues == []


def test_operation_outcome_in_a_searchset_is_reported_not_fatal(engine):
    patient = base()
    data = prefetch_of(patient)
    data["medications"]["entry"].append({"resource": {
        "resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "too-costly",
                                                       "diagnostics": "medication search truncated at 50 results"}]},
        "search": {"mode": "outcome"}})
    result = engine.apply(PATHWAY, data, CLOCK, patient.id)
    assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal"}
    assert any("truncated" in issue.diagnostics for issue in result.issues)


def test_the_same_resource_under_two_prefetch_keys_counts_once(engine):
    patient = Patient(45)
    patient.spasm(days_ago=26)
    patient.medication(CYCLOBENZAPRINE_5, started_days_ago=25)
    patient.medication(SERTRALINE)
    once = view(engine, patient)
    data = prefetch_of(patient)
    data["active-medications"] = copy.deepcopy(data["medications"])
    data["conditions-again"] = copy.deepcopy(data["conditions"])
    twice = engine.apply(PATHWAY, data, CLOCK, patient.id)
    assert cards(twice) == cards(once) == {"phase-plan", "cyclobenzaprine-beyond-21-days"}
    stops = [c for c in get(twice, "cyclobenzaprine-beyond-21-days").children if c.resource is not None]
    assert len(stops) == 1
    assert resources(twice) == resources(once)


# ---------------------------------------------------------------------------------- hook bodies


def hook_body(hook: str, patient: Patient, drafts: list[dict] = (), selections: list[str] | None = None) -> dict:
    context: dict = {"patientId": patient.id, "userId": "Practitioner/dr-1"}
    if hook != "patient-view":
        context["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": d} for d in drafts]}
        if hook == "order-select":
            context["selections"] = selections if selections is not None else [f"{d['resourceType']}/{d['id']}" for d in drafts]
    return {"hook": hook, "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "context": context, "prefetch": prefetch_of(patient)}


def test_patient_view_body_runs_the_pathway(engine):
    patient = base()
    calls = calls_for_hook(engine, hook_body("patient-view", patient))
    assert [c.plan for c in calls] == [PATHWAY]
    (result,) = run_calls(engine, calls, CLOCK)
    assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal"}
    assert result.author == "Practitioner/dr-1"


def test_order_select_reviews_only_the_selected_drafts(engine):
    patient = base()
    long = patient.draft_medication(CYCLOBENZAPRINE_5, days=30, draft_id="rx-long")
    fine = patient.draft_medication(CYCLOBENZAPRINE_5, days=14, draft_id="rx-fine")
    body = hook_body("order-select", patient, [long, fine], selections=["MedicationRequest/rx-fine"])
    calls = calls_for_hook(engine, body)
    assert [c.draft_order["id"] for c in calls] == ["rx-fine"]
    (result,) = run_calls(engine, calls, CLOCK)
    assert "draft-duplicate" in cards(result), "the other draft of the session still counts as a duplicate"
    assert "draft-course-too-long" not in cards(result)


def test_order_sign_reviews_every_draft(engine):
    patient = base()
    long = patient.draft_medication(CYCLOBENZAPRINE_5, days=30, draft_id="rx-long")
    tens = patient.draft_service(TENS_DEVICE, resource_type="DeviceRequest", draft_id="tens-1")
    calls = calls_for_hook(engine, hook_body("order-sign", patient, [long, tens]))
    results = run_calls(engine, calls, CLOCK)
    by_draft = {c.draft_order["id"]: cards(r) for c, r in zip(calls, results)}
    assert by_draft == {"rx-long": {"draft-course-too-long"}, "tens-1": {"draft-tens"}}


# ---------------------------------------------------------------------------------- Synthea patients


SYNTHEA_FILES = sorted(p.name for p in SYNTHEA.glob("*.json"))

#: What the shared records hold that matters here (read from the files and their README): the physical
#: therapy dates (Movement therapy procedures, or CarePlans in the physical-therapy category) and the
#: patients aged 65 or over at the clock (born 1948 and 1953).
PHYSICAL_THERAPY = {
    "chronic-low-back-pain-movement-therapy.json": [date(2014, 3, 15), date(2014, 3, 16)],
    "chronic-pain-ankle-sprain-physical-therapy.json": [date(2015, 9, 15)],
    "whiplash-ankle-sprain-nsaids-physical-therapy.json": [date(2018, 4, 1)],
    "whiplash-ankle-sprain-young-adult.json": [date(2013, 2, 5)],
    "whiplash-opioids-physical-therapy.json": [date(2017, 7, 29)],
}
OLDER_ADULTS = {"whiplash-chronic-pain-older-adult.json", "whiplash-opioids-physical-therapy.json"}


def test_all_ten_synthea_patients_are_here():
    assert len(SYNTHEA_FILES) == 10
    assert {"irrelevant-adult-female.json", "irrelevant-adult-male.json"} <= set(SYNTHEA_FILES)


@pytest.mark.parametrize("name", SYNTHEA_FILES)
def test_synthea_patient_as_recorded_gets_no_cards(engine, name):
    """None of the shared patients has a back muscle spasm: out of scope, however much back pain or PT they have."""
    record = synthea(name)
    assert view(engine, record).actions == []
    born = next(r for r in record if r["resourceType"] == "Patient")["birthDate"]
    patient = Patient(base=record, birth_date=born)
    assert review(engine, patient, patient.draft_service(TRACTION)).actions == []


@pytest.mark.parametrize("name", SYNTHEA_FILES)
def test_synthea_patient_with_a_severe_back_spasm(engine, name):
    record = synthea(name)
    born = next(r for r in record if r["resourceType"] == "Patient")["birthDate"]
    patient = Patient(base=record, birth_date=born)
    patient.spasm(20)
    result = view(engine, patient)
    assert phase(result) == 1
    if name in OLDER_ADULTS:
        assert cards(result) == {"phase-plan", "withheld-older-adult"}
    else:
        assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal"}
    plan = text_of(get(result, "phase-plan"))
    if name in PHYSICAL_THERAPY:
        assert mentions_date(plan, *PHYSICAL_THERAPY[name]), plan
    else:
        assert "no physical therapy" in plan.lower()


@pytest.mark.parametrize("name", ["chronic-pain-opioids.json", "whiplash-opioids-physical-therapy.json"])
def test_synthea_opioids_that_were_stopped_do_not_count_as_cns_depressants(engine, name):
    record = synthea(name)
    born = next(r for r in record if r["resourceType"] == "Patient")["birthDate"]
    patient = Patient(base=record, birth_date=born)
    patient.spasm(20)
    assert "cns-depressant-note" not in cards(view(engine, patient))
    patient.medication(TRAMADOL)
    draft = patient.draft_medication(CYCLOBENZAPRINE_5)
    assert "draft-cns-depressant" in cards(review(engine, patient, draft))
