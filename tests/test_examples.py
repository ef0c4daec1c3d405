"""The worked examples of the protocol (PROTOCOL.md §7), each checked card by card and order by order."""

from __future__ import annotations

from protocol.engine.output import careplan_r4
from tests.cds_support import (
    MEDICATION_CARDS,
    VS,
    cards,
    engine,
    find,
    get,
    medication_codes,
    phase,
    resources,
    review,
    rule_codes,
    text_of,
    view,
)
from tests.patients import (
    CIRRHOSIS,
    CYCLOBENZAPRINE_5,
    CYCLOBENZAPRINE_10,
    PHENELZINE,
    RXNORM,
    SERTRALINE,
    TENS_DEVICE,
    Patient,
)

__all__ = ["engine"]


def member(engine, concept: dict, valueset: str) -> bool:
    """True when a code of the concept is in one of the protocol's ValueSets."""
    codes = {(c.get("system"), c.get("code")) for c in concept.get("coding") or []}
    return bool(codes & engine.content.terminology.codes(VS + valueset))


def severe_adult(age: int = 45, hours_ago: float = 20) -> Patient:
    patient = Patient(age)
    patient.spasm(hours_ago)
    return patient


def assert_cyclobenzaprine_proposal(order: dict, patient: Patient) -> None:
    """The proposed order of §3: RxNorm 828320, 5 mg by mouth three times daily, at most 21 days, as a draft proposal."""
    assert order["resourceType"] == "MedicationRequest"
    assert (RXNORM, "828320") in medication_codes(order)
    assert order["status"] == "draft" and order["intent"] == "proposal"
    assert order["subject"] == {"reference": f"Patient/{patient.id}"}
    dosage = order["dosageInstruction"][0]
    dose = dosage["doseAndRate"][0]["doseQuantity"]
    assert (dose["value"], dose["code"]) == (5, "mg")
    repeat = dosage["timing"]["repeat"]
    assert (repeat["frequency"], repeat["period"], repeat["periodUnit"]) == (3, 1, "d")
    assert (repeat["boundsDuration"]["value"], repeat["boundsDuration"]["code"]) == (21, "d")


# -- example 1 ----------------------------------------------------------------------------------------


def test_example_1_severe_spasm_20_hours_ago_gets_heat_and_cyclobenzaprine(engine):
    patient = severe_adult()
    result = view(engine, patient)
    assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal"}
    assert phase(result) == 1
    heat = get(result, "phase-1-heat").resource
    assert heat["resourceType"] == "ServiceRequest" and member(engine, heat["code"], "heat-therapy")
    assert heat["status"] == "draft" and heat["intent"] == "proposal"
    assert "burn" in heat["patientInstruction"] and "skin" in heat["patientInstruction"]
    assert get(result, "phase-1-cyclobenzaprine").resource is None, "the plan lists the order without creating a second one"
    assert_cyclobenzaprine_proposal(get(result, "order-cyclobenzaprine").resource, patient)
    assert find(result, "phase-1-cyclobenzaprine-not-proposed") is None
    assert rule_codes(get(result, "cyclobenzaprine-proposal")) == {"cyclobenzaprine"}


def test_example_1_careplan_holds_the_heat_and_the_medication(engine):
    patient = severe_adult()
    careplan = careplan_r4(view(engine, patient))
    contained = careplan["contained"]
    heat = [r for r in contained if r["resourceType"] == "ServiceRequest" and member(engine, r["code"], "heat-therapy")]
    meds = [r for r in contained if r["resourceType"] == "MedicationRequest"]
    assert heat and meds
    assert all((RXNORM, "828320") in medication_codes(m) for m in meds)
    assert careplan["intent"] == "proposal" and careplan["status"] == "draft"


# -- example 2 ----------------------------------------------------------------------------------------


def test_example_2_phenelzine_stopped_7_days_ago_withholds_cyclobenzaprine(engine):
    patient = severe_adult()
    patient.medication(PHENELZINE, kind="statement", status="stopped", started_days_ago=60, ended_days_ago=7)
    result = view(engine, patient)
    assert cards(result) == {"phase-plan", "withheld-maoi"}
    assert phase(result) == 1
    assert resources(result, "MedicationRequest") == []
    assert find(result, "phase-1-heat").resource is not None
    why = get(result, "phase-1-cyclobenzaprine-not-proposed")
    assert "MAO" in text_of(why)
    card = get(result, "withheld-maoi")
    assert rule_codes(card) == {"S1"}
    assert "Phenelzine" in text_of(card)


# -- example 3 ----------------------------------------------------------------------------------------


def test_example_3_older_adult_gets_heat_only(engine):
    patient = severe_adult(age=72, hours_ago=30)
    result = view(engine, patient)
    assert cards(result) == {"phase-plan", "withheld-older-adult"}
    assert phase(result) == 1
    assert [r["resourceType"] for r in resources(result)] == ["ServiceRequest"]
    assert member(engine, get(result, "phase-1-heat").resource["code"], "heat-therapy")
    why = text_of(get(result, "phase-1-cyclobenzaprine-not-proposed"))
    assert "65" in why and "Beers" in why
    assert rule_codes(get(result, "withheld-older-adult")) == {"S6"}


# -- example 4 ----------------------------------------------------------------------------------------


def test_example_4_onset_5_days_ago_is_early_recovery(engine):
    patient = Patient(45)
    patient.spasm(days_ago=5, severity=None)
    result = view(engine, patient)
    assert cards(result) == {"phase-plan"}
    assert phase(result) == 2
    heat = get(result, "phase-2-heat")
    exercise = get(result, "phase-2-exercise")
    assert rule_codes(heat) == {"heat"} and rule_codes(exercise) == {"exercise-gentle"}
    assert member(engine, heat.resource["code"], "heat-therapy")
    assert "exercise" in heat.resource["patientInstruction"]
    assert member(engine, exercise.resource["code"], "therapeutic-exercise")
    assert "soreness" in exercise.resource["patientInstruction"]
    assert resources(result, "MedicationRequest") == []
    assert "early recovery" in get(result, "phase-plan").fields["title"]


# -- example 5 ----------------------------------------------------------------------------------------


def test_example_5_day_14_with_cyclobenzaprine_plans_exercise_massage_and_stopping(engine):
    patient = Patient(45)
    patient.spasm(days_ago=14)
    order = patient.medication(CYCLOBENZAPRINE_5, started_days_ago=16)
    result = view(engine, patient)
    assert cards(result) == {"phase-plan"}
    assert phase(result) == 3
    exercise = get(result, "phase-3-exercise").resource
    massage = get(result, "phase-3-massage").resource
    assert member(engine, exercise["code"], "therapeutic-exercise")
    assert member(engine, massage["code"], "massage-therapy")
    stop = get(result, "phase-3-stop-relaxant")
    assert rule_codes(stop) == {"stop-relaxant"}
    assert stop.resource["resourceType"] == "MedicationRequest"
    assert stop.resource["id"] == order["id"]
    assert stop.resource["status"] in ("stopped", "completed")
    assert "rehabilitation" in get(result, "phase-plan").fields["title"]


# -- example 6 ----------------------------------------------------------------------------------------


def test_example_6_day_40_refers_and_looks_for_other_causes(engine):
    patient = Patient(45)
    patient.spasm(days_ago=40)
    result = view(engine, patient)
    assert cards(result) == {"phase-plan"}
    assert phase(result) == 4
    referral = get(result, "phase-4-multidisciplinary")
    assert referral.resource["resourceType"] == "ServiceRequest"
    assert member(engine, referral.resource["code"], "multidisciplinary-rehabilitation")
    causes = get(result, "phase-4-evaluate-causes")
    assert rule_codes(causes) == {"evaluate-causes"} and causes.resource is None
    assert resources(result, "MedicationRequest") == []


# -- example 7 ----------------------------------------------------------------------------------------


def test_example_7_cyclobenzaprine_started_25_days_ago_gets_a_stop_warning(engine):
    patient = Patient(45)
    patient.spasm(days_ago=26)
    order = patient.medication(CYCLOBENZAPRINE_5, started_days_ago=25)
    result = view(engine, patient)
    assert cards(result) == {"phase-plan", "cyclobenzaprine-beyond-21-days"}
    card = get(result, "cyclobenzaprine-beyond-21-days")
    assert rule_codes(card) == {"S11"} and card.fields["priority"] == "urgent"
    updates = [c.resource for c in card.children if c.resource is not None]
    assert len(updates) == 1
    assert updates[0]["id"] == order["id"] and updates[0]["status"] == "stopped"
    assert updates[0]["medicationCodeableConcept"] == order["medicationCodeableConcept"]


# -- example 8 ----------------------------------------------------------------------------------------


def test_example_8_order_sign_of_a_tens_unit_gets_an_info_card_with_heat_and_exercise_instead(engine):
    patient = severe_adult()
    draft = patient.draft_service(TENS_DEVICE, resource_type="DeviceRequest", draft_id="tens-1")
    result = review(engine, patient, draft)
    assert cards(result) == {"draft-tens"}
    card = get(result, "draft-tens")
    assert rule_codes(card) == {"tens"} and card.fields["priority"] == "routine"
    replace = get(result, "draft-tens-replace")
    removed = [c.fields.get("resource", {}).get("reference") for c in replace.children]
    assert "DeviceRequest/tens-1" in removed
    created = [c.resource for c in replace.children if c.resource is not None]
    assert any(member(engine, r["code"], "heat-therapy") for r in created)
    assert any(member(engine, r["code"], "therapeutic-exercise") for r in created)


# -- example 9 ----------------------------------------------------------------------------------------


def test_example_9_thirty_day_course_gets_a_warning_and_a_21_day_version(engine):
    patient = severe_adult()
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, per_day=3, days=30, draft_id="rx-30")
    result = review(engine, patient, draft)
    assert cards(result) == {"draft-course-too-long"}
    card = get(result, "draft-course-too-long")
    assert rule_codes(card) == {"S8"} and card.fields["priority"] == "urgent"
    changed = get(result, "draft-course-limit").resource
    assert changed["id"] == "rx-30"
    bounds = changed["dosageInstruction"][0]["timing"]["repeat"]["boundsDuration"]
    assert (bounds["value"], bounds["code"]) == (21, "d")
    assert changed["medicationCodeableConcept"] == draft["medicationCodeableConcept"]


# -- example 10 ---------------------------------------------------------------------------------------


def test_example_10_no_back_spasm_no_cards(engine):
    patient = Patient(45)
    patient.pain(8)
    assert view(engine, patient).actions == []
    draft = patient.draft_service(TENS_DEVICE, resource_type="DeviceRequest")
    assert review(engine, patient, draft).actions == []


# -- example 11 ---------------------------------------------------------------------------------------


def test_example_11_cirrhosis_withholds_the_proposal(engine):
    patient = severe_adult()
    patient.condition(CIRRHOSIS)
    result = view(engine, patient)
    assert cards(result) == {"phase-plan", "withheld-hepatic"}
    assert resources(result, "MedicationRequest") == []
    assert rule_codes(get(result, "withheld-hepatic")) == {"S4"}
    assert "hepatic" in text_of(get(result, "phase-1-cyclobenzaprine-not-proposed"))


def test_example_11_cirrhosis_order_sign_of_cyclobenzaprine_gets_a_warning(engine):
    patient = severe_adult()
    patient.condition(CIRRHOSIS)
    draft = patient.draft_medication(CYCLOBENZAPRINE_5, draft_id="rx-1")
    result = review(engine, patient, draft)
    assert cards(result) == {"draft-severe-hepatic"}
    card = get(result, "draft-severe-hepatic")
    assert rule_codes(card) == {"S4"} and card.fields["priority"] == "urgent"
    assert "not recommended" in text_of(card)
    removes = [c for c in card.children if c.fields.get("resource", {}).get("reference") == "MedicationRequest/rx-1"]
    assert removes and removes[0].fields["type"]["coding"][0]["code"] == "remove"


# -- example 12 ---------------------------------------------------------------------------------------


def test_example_12_sertraline_keeps_the_proposal_with_a_named_warning(engine):
    patient = severe_adult()
    patient.medication(SERTRALINE)
    result = view(engine, patient)
    assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal"}
    assert phase(result) == 1
    assert_cyclobenzaprine_proposal(get(result, "order-cyclobenzaprine").resource, patient)
    warning = get(result, "cyclobenzaprine-proposal")
    assert rule_codes(get(result, "serotonergic-note")) == {"S7"} and warning.fields["priority"] == "urgent"
    assert "Sertraline" in warning.fields["title"]
    assert "serotonin syndrome" in text_of(warning).lower()


def test_medication_card_ids_are_the_ones_the_examples_use(engine):
    """A guard for the examples above: every medication card id they name exists in the pathway."""
    top = {a["id"] for a in engine.plan("back-spasm-treatment-pathway").resource["action"]}
    assert MEDICATION_CARDS <= top
