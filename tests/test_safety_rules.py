"""The cyclobenzaprine safety rules S1-S12 (PROTOCOL.md §4), on a proposal (patient-view) and on a draft order.

Every patient here is an adult with severe back spasm 20 hours ago (phase 1), so without a safety finding
cyclobenzaprine is proposed; each test adds one finding and checks the proposal, the card, its rule code,
its urgency and its suggestion, including the exact boundaries the protocol sets.
"""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest

from tests.cds_support import (
    REVIEW,
    VS,
    cards,
    engine,
    find,
    get,
    medication_codes,
    quantity,
    resources,
    review,
    rule_codes,
    text_of,
    view,
)
from tests.patients import (
    ACUTE_MI,
    ALCOHOLIC_CIRRHOSIS_ICD,
    AMITRIPTYLINE,
    ATRIAL_FIBRILLATION,
    AV_BLOCK,
    CHRONIC_HEPATITIS_C,
    CIRRHOSIS,
    CLOCK,
    CPT,
    CYCLOBENZAPRINE_5,
    CYCLOBENZAPRINE_7_5,
    CYCLOBENZAPRINE_10,
    CYCLOBENZAPRINE_ER_15,
    CYCLOBENZAPRINE_ER_30,
    CYCLOBENZAPRINE_INGREDIENT,
    FATTY_LIVER,
    HEART_FAILURE,
    HEAT,
    HYPERTHYROIDISM,
    LINEZOLID,
    LUMBAR_ORTHOSIS,
    LUMBOSACRAL_BELT,
    NSTEMI_ICD,
    PHENELZINE,
    RXNORM,
    SERTRALINE,
    TENS_DEVICE,
    TRACTION,
    TRAMADOL,
    TRICYCLIC_ALLERGY,
    Patient,
    birth_date_for,
    concept,
    day,
    when,
)

#: TENS applied in the clinic (CPT 97014), also in the protocol's TENS ValueSet.
TENS_CLINIC = (CPT, "97014", "Application of a modality to 1 or more areas; electrical stimulation (unattended)")

__all__ = ["engine"]

PROPOSED = "phase-1-cyclobenzaprine"
NOT_PROPOSED = "phase-1-cyclobenzaprine-not-proposed"


def base(age: int = 45, **kwargs) -> Patient:
    patient = Patient(age, **kwargs)
    patient.spasm(20)
    return patient


def proposed(result) -> bool:
    """Cyclobenzaprine proposed: in the phase plan, on its own card, and as a generated order."""
    in_plan = find(result, PROPOSED) is not None
    on_card = "cyclobenzaprine-proposal" in cards(result)
    orders = [r for r in resources(result, "MedicationRequest") if (RXNORM, "828320") in medication_codes(r)]
    assert in_plan == on_card == bool(orders), (in_plan, on_card, orders)
    return in_plan


def withheld(result, card: str) -> bool:
    """Not proposed, the plan says why, and the card of the rule is there."""
    return not proposed(result) and find(result, NOT_PROPOSED) is not None and card in cards(result)


def removes(card, draft: dict) -> bool:
    """The card offers to remove the draft order (a 'remove' action pointing at it, at any depth)."""
    target = f"{draft['resourceType']}/{draft['id']}"
    stack = list(card.children)
    while stack:
        action = stack.pop()
        kinds = {c.get("code") for c in (action.fields.get("type") or {}).get("coding") or []}
        if "remove" in kinds and (action.fields.get("resource") or {}).get("reference") == target:
            return True
        stack.extend(action.children)
    return False


def codes_in(concept: dict) -> set[tuple[str, str]]:
    return {(c.get("system"), c.get("code")) for c in concept.get("coding") or []}


def draft_cards(engine, patient: Patient, draft: dict | None = None, others=()) -> set[str]:
    return cards(review(engine, patient, draft or patient.draft_medication(CYCLOBENZAPRINE_5), others))


def test_baseline_is_proposed_without_safety_cards(engine):
    patient = base()
    result = view(engine, patient)
    assert proposed(result)
    assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal"}
    assert draft_cards(engine, patient) == set()


# ---------------------------------------------------------------------------------- S1 MAO inhibitors


@pytest.mark.parametrize("kind,status", [("request", "active"), ("request", "on-hold"), ("statement", "active"), ("statement", "intended")])
@pytest.mark.parametrize("drug", [PHENELZINE, LINEZOLID], ids=["phenelzine", "linezolid"])
def test_s1_active_maoi_withholds_the_proposal(engine, kind, status, drug):
    patient = base()
    patient.medication(drug, kind=kind, status=status)
    result = view(engine, patient)
    assert withheld(result, "withheld-maoi")
    assert rule_codes(get(result, "withheld-maoi")) == {"S1"}


@pytest.mark.parametrize("ended,expect", [(13, True), (14, True), (15, False), (30, False)])
def test_s1_maoi_statement_ended_less_than_14_days_ago(engine, ended, expect):
    patient = base()
    patient.medication(PHENELZINE, kind="statement", status="stopped", started_days_ago=90, ended_days_ago=ended)
    result = view(engine, patient)
    assert ("withheld-maoi" in cards(result)) is expect
    assert proposed(result) is not expect


@pytest.mark.parametrize("ended,expect", [(13, True), (14, True), (15, False)])
def test_s1_maoi_order_validity_ended_less_than_14_days_ago(engine, ended, expect):
    patient = base()
    patient.medication(PHENELZINE, status="stopped", started_days_ago=90, ended_days_ago=ended)
    result = view(engine, patient)
    assert ("withheld-maoi" in cards(result)) is expect
    assert proposed(result) is not expect


@pytest.mark.parametrize("ended,expect", [(timedelta(days=14) - timedelta(minutes=5), True), (timedelta(days=14), False),
                                          (timedelta(days=14, hours=1), False)], ids=["just-under", "exactly", "over"])
def test_s1_maoi_end_as_date_time_is_exact(engine, ended, expect):
    patient = base()
    statement = patient.medication(PHENELZINE, kind="statement", status="completed", started_days_ago=90)
    statement["effectivePeriod"]["end"] = (CLOCK - ended).isoformat().replace("+00:00", "Z")
    assert ("withheld-maoi" in cards(view(engine, patient))) is expect


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_s1_maoi_order_never_taken_does_not_count(engine, status):
    patient = base()
    patient.medication(PHENELZINE, status=status, started_days_ago=3)
    result = view(engine, patient)
    assert proposed(result) and "withheld-maoi" not in cards(result)


def test_s1_maoi_order_marked_do_not_perform_does_not_count(engine):
    patient = base()
    patient.medication(PHENELZINE)["doNotPerform"] = True
    result = view(engine, patient)
    assert proposed(result) and "withheld-maoi" not in cards(result)


@pytest.mark.parametrize("ended,expect", [(None, True), (13, True), (14, True), (15, False)])
def test_s1_draft_order_with_maoi_gets_a_critical_card_and_removal(engine, ended, expect):
    patient = base()
    if ended is None:
        patient.medication(PHENELZINE)
    else:
        patient.medication(PHENELZINE, kind="statement", status="stopped", started_days_ago=60, ended_days_ago=ended)
    draft = patient.draft_medication(CYCLOBENZAPRINE_5, draft_id="rx-maoi")
    result = review(engine, patient, draft)
    assert ("draft-maoi" in cards(result)) is expect
    if expect:
        card = get(result, "draft-maoi")
        assert rule_codes(card) == {"S1"} and card.fields["priority"] == "stat"
        assert removes(card, draft)
        assert "Phenelzine" in text_of(card)


# ---------------------------------------------------------------------------------- S2 cardiac / thyroid


@pytest.mark.parametrize("code", [HEART_FAILURE, ATRIAL_FIBRILLATION, HYPERTHYROIDISM, AV_BLOCK],
                         ids=["heart-failure", "atrial-fibrillation", "hyperthyroidism", "av-block"])
def test_s2_cardiac_or_thyroid_condition_withholds(engine, code):
    patient = base()
    patient.condition(code, onset_value=day(400))
    result = view(engine, patient)
    assert withheld(result, "withheld-cardiac")
    assert rule_codes(get(result, "withheld-cardiac")) == {"S2"}


@pytest.mark.parametrize("days_ago,expect", [(30, True), (89, True), (91, False), (200, False)])
@pytest.mark.parametrize("code", [ACUTE_MI, NSTEMI_ICD], ids=["sct", "icd"])
def test_s2_myocardial_infarction_counts_for_90_days(engine, code, days_ago, expect):
    patient = base()
    patient.condition(code, onset_value=when(days_ago=days_ago))
    result = view(engine, patient)
    assert ("withheld-cardiac" in cards(result)) is expect
    assert proposed(result) is not expect


def test_s2_myocardial_infarction_without_a_date_is_treated_as_recent(engine):
    """No onset and no recorded date: the infarction cannot be shown to be older than 90 days, so it counts."""
    patient = base()
    patient.condition(ACUTE_MI)
    assert withheld(view(engine, patient), "withheld-cardiac")


def test_s2_resolved_heart_failure_does_not_count(engine):
    patient = base()
    patient.condition(HEART_FAILURE, status="resolved", onset_value=day(800))
    result = view(engine, patient)
    assert proposed(result) and "withheld-cardiac" not in cards(result)


def test_s2_draft_order_gets_a_critical_card_naming_the_condition(engine):
    patient = base()
    patient.condition(HEART_FAILURE, onset_value=day(400))
    draft = patient.draft_medication(CYCLOBENZAPRINE_5)
    result = review(engine, patient, draft)
    card = get(result, "draft-cardiac")
    assert rule_codes(card) == {"S2"} and card.fields["priority"] == "stat"
    assert removes(card, draft)
    assert "Heart failure" in text_of(card)


def test_s2_draft_order_after_an_old_infarction_is_not_flagged(engine):
    patient = base()
    patient.condition(ACUTE_MI, onset_value=when(days_ago=200))
    assert "draft-cardiac" not in draft_cards(engine, patient)


# ---------------------------------------------------------------------------------- S3 allergy


@pytest.mark.parametrize("code", [TRICYCLIC_ALLERGY, CYCLOBENZAPRINE_INGREDIENT], ids=["tricyclic", "cyclobenzaprine"])
@pytest.mark.parametrize("verification,clinical", [("confirmed", "active"), ("unconfirmed", "active"), (None, None)])
def test_s3_allergy_withholds(engine, code, verification, clinical):
    patient = base()
    patient.allergy(code, verification=verification, clinical=clinical)
    result = view(engine, patient)
    assert withheld(result, "withheld-allergy")
    assert rule_codes(get(result, "withheld-allergy")) == {"S3"}


@pytest.mark.parametrize("verification,clinical", [("refuted", "active"), ("entered-in-error", "active"), ("confirmed", "resolved")])
def test_s3_refuted_or_resolved_allergy_is_ignored(engine, verification, clinical):
    patient = base()
    patient.allergy(TRICYCLIC_ALLERGY, verification=verification, clinical=clinical)
    result = view(engine, patient)
    assert proposed(result) and "withheld-allergy" not in cards(result)
    assert "draft-allergy" not in draft_cards(engine, patient)


def test_s3_draft_order_gets_a_critical_card_and_removal(engine):
    patient = base()
    patient.allergy(CYCLOBENZAPRINE_INGREDIENT)
    draft = patient.draft_medication(CYCLOBENZAPRINE_10)
    card = get(review(engine, patient, draft), "draft-allergy")
    assert rule_codes(card) == {"S3"} and card.fields["priority"] == "stat"
    assert removes(card, draft)


# ---------------------------------------------------------------------------------- S4 / S5 hepatic


@pytest.mark.parametrize("code", [CIRRHOSIS, ALCOHOLIC_CIRRHOSIS_ICD], ids=["sct", "icd"])
def test_s4_moderate_or_severe_hepatic_impairment_withholds(engine, code):
    patient = base()
    patient.condition(code, onset_value=day(300))
    result = view(engine, patient)
    assert withheld(result, "withheld-hepatic")
    assert rule_codes(get(result, "withheld-hepatic")) == {"S4"}


def test_s4_draft_order_gets_a_warning_and_removal(engine):
    patient = base()
    patient.condition(ALCOHOLIC_CIRRHOSIS_ICD, onset_value=day(300))
    draft = patient.draft_medication(CYCLOBENZAPRINE_5)
    result = review(engine, patient, draft)
    card = get(result, "draft-severe-hepatic")
    assert rule_codes(card) == {"S4"} and card.fields["priority"] == "urgent"
    assert removes(card, draft)


@pytest.mark.parametrize("code", [FATTY_LIVER, CHRONIC_HEPATITIS_C], ids=["fatty-liver", "hepatitis-c"])
def test_s5_mild_hepatic_impairment_proposes_5_mg_immediate_release_with_slow_titration(engine, code):
    patient = base()
    patient.condition(code, onset_value=day(300))
    result = view(engine, patient)
    assert proposed(result)
    order = get(result, "order-cyclobenzaprine").resource
    assert medication_codes(order) == {(RXNORM, "828320")}
    dosage = order["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 5
    assert dosage["maxDosePerPeriod"]["numerator"]["value"] == 15
    assert "titrate slowly" in dosage["text"] and "15 mg a day" in dosage["text"]
    assert "increase" not in dosage["text"].replace("do not increase", "")
    note = get(result, "mild-hepatic-note")
    assert rule_codes(note) == {"S5"}


def test_s5_the_titration_note_is_only_for_hepatic_impairment(engine):
    result = view(engine, base())
    assert "titrate slowly" not in get(result, "order-cyclobenzaprine").resource["dosageInstruction"][0]["text"]
    assert find(result, "mild-hepatic-note") is None


@pytest.mark.parametrize("drug,dose_mg,tablets,expect", [
    (CYCLOBENZAPRINE_5, None, 1, False),
    (CYCLOBENZAPRINE_5, 5, None, False),
    (CYCLOBENZAPRINE_5, None, 2, True),
    (CYCLOBENZAPRINE_7_5, None, 1, True),
    (CYCLOBENZAPRINE_10, None, 1, True),
    (CYCLOBENZAPRINE_10, 10, None, True),
    (CYCLOBENZAPRINE_ER_15, None, 1, True),
], ids=["ir-5", "ir-5-in-mg", "ir-2x5", "ir-7.5", "ir-10", "ir-10-in-mg", "er-15"])
def test_s5_draft_order_in_mild_hepatic_impairment(engine, drug, dose_mg, tablets, expect):
    patient = base()
    patient.condition(FATTY_LIVER, onset_value=day(300))
    draft = patient.draft_medication(drug, dose_mg=dose_mg, tablets=tablets, per_day=1 if drug == CYCLOBENZAPRINE_ER_15 else 3)
    result = review(engine, patient, draft)
    assert ("draft-mild-hepatic" in cards(result)) is expect
    if expect:
        card = get(result, "draft-mild-hepatic")
        assert rule_codes(card) == {"S5"} and card.fields["priority"] == "urgent"
        assert not removes(card, draft)
        corrected = [c.resource for c in card.children if c.resource is not None]
        assert [r["id"] for r in corrected] == [draft["id"]]
        dosage = corrected[0]["dosageInstruction"]
        assert len(dosage) == 1 and dosage[0]["doseAndRate"][0]["doseQuantity"]["value"] == 5
        assert dosage[0]["timing"]["repeat"]["frequency"] <= 3 and dosage[0]["maxDosePerPeriod"]["numerator"]["value"] <= 15
        strength = {"828320": 5, "828299": 7.5, "828348": 10}.get(next(iter(medication_codes(corrected[0])))[1])
        assert strength is not None and 5 % strength == 0, "immediate release, whole tablets of 5 mg"


# ---------------------------------------------------------------------------------- S6 older adult


@pytest.mark.parametrize("days_after_birthday,age,expect", [(0, 65, True), (-1, 65, False), (400, 70, True)],
                         ids=["65-on-the-birthday", "64-birthday-tomorrow", "70"])
def test_s6_age_65_or_over_withholds(engine, days_after_birthday, age, expect):
    patient = base(birth_date=birth_date_for(age, days_after_birthday=days_after_birthday))
    result = view(engine, patient)
    assert ("withheld-older-adult" in cards(result)) is expect
    assert proposed(result) is not expect
    if expect:
        assert rule_codes(get(result, "withheld-older-adult")) == {"S6"}
        assert "Beers" in text_of(get(result, NOT_PROPOSED))


def test_s6_draft_order_at_65_gets_a_warning_citing_beers_and_a_5_mg_alternative(engine):
    patient = base(birth_date=birth_date_for(65))
    draft = patient.draft_medication(CYCLOBENZAPRINE_10)
    result = review(engine, patient, draft)
    card = get(result, "draft-older-adult")
    assert rule_codes(card) == {"S6"} and card.fields["priority"] == "urgent"
    assert "Beers" in text_of(card)
    corrected = [c.resource for c in card.children if c.resource is not None]
    assert [r["id"] for r in corrected] == [draft["id"]] and medication_codes(corrected[0]) == {(RXNORM, "828320")}
    dosage = corrected[0]["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 5 and "increase" not in dosage["text"].replace("do not increase", "")


def test_s6_draft_order_at_64_is_not_flagged(engine):
    patient = base(birth_date=birth_date_for(65, days_after_birthday=-1))
    assert "draft-older-adult" not in draft_cards(engine, patient)


# ---------------------------------------------------------------------------------- S7 serotonergic drugs


@pytest.mark.parametrize("kind,status", [("request", "active"), ("request", "on-hold"), ("statement", "active"), ("statement", "intended")])
def test_s7_active_serotonergic_drug_keeps_the_proposal_and_warns(engine, kind, status):
    patient = base()
    patient.medication(SERTRALINE, kind=kind, status=status)
    result = view(engine, patient)
    assert proposed(result)
    card = get(result, "cyclobenzaprine-proposal")
    assert card.fields["priority"] == "urgent", "the proposal card itself is the S7 warning"
    assert "Sertraline" in card.fields["title"] and "serotonin syndrome" in text_of(get(result, "serotonergic-note"))
    assert rule_codes(get(result, "serotonergic-note")) == {"S7"}
    assert any(c.resource for c in card.children), "the one-click order stays on the warning card"
    assert "serotonergic-warning" not in cards(result)


@pytest.mark.parametrize("kind,status", [("request", "stopped"), ("request", "cancelled"), ("request", "completed"),
                                         ("request", "entered-in-error"), ("statement", "stopped"), ("statement", "completed"),
                                         ("statement", "not-taken")])
def test_s7_inactive_serotonergic_drug_is_ignored(engine, kind, status):
    patient = base()
    patient.medication(SERTRALINE, kind=kind, status=status, started_days_ago=60, ended_days_ago=30)
    result = view(engine, patient)
    assert proposed(result) and get(result, "cyclobenzaprine-proposal").fields["priority"] == "routine"


def test_s7_serotonergic_order_marked_do_not_perform_is_ignored(engine):
    patient = base()
    patient.medication(SERTRALINE)["doNotPerform"] = True
    assert get(view(engine, patient), "cyclobenzaprine-proposal").fields["priority"] == "routine"


def test_s7_draft_order_gets_a_warning_naming_the_drug(engine):
    patient = base()
    patient.medication(AMITRIPTYLINE)
    result = review(engine, patient, patient.draft_medication(CYCLOBENZAPRINE_5))
    card = get(result, "draft-serotonergic")
    assert rule_codes(card) == {"S7"} and card.fields["priority"] == "urgent"
    assert "Amitriptyline" in card.fields["title"]


# ---------------------------------------------------------------------------------- S8 course length


@pytest.mark.parametrize("how", ["bounds", "supply", "quantity"])
@pytest.mark.parametrize("days,expect", [(21, False), (22, True)])
def test_s8_course_over_21_days(engine, how, days, expect):
    patient = base()
    if how == "bounds":
        draft = patient.draft_medication(CYCLOBENZAPRINE_5, days=days)
    elif how == "supply":
        draft = patient.draft_medication(CYCLOBENZAPRINE_5, days=None, supply_days=days)
    else:
        draft = patient.draft_medication(CYCLOBENZAPRINE_5, days=None, tablets=1, per_day=3, quantity=3 * days)
    result = review(engine, patient, draft)
    assert ("draft-course-too-long" in cards(result)) is expect
    if expect:
        assert rule_codes(get(result, "draft-course-too-long")) == {"S8"}


def test_s8_quantity_is_divided_by_the_daily_dose_in_tablets(engine):
    """Two tablets twice a day: 84 tablets last 21 days, 88 tablets 22."""
    patient = base()
    ok = patient.draft_medication(CYCLOBENZAPRINE_5, days=None, tablets=2, per_day=2, quantity=84)
    long = patient.draft_medication(CYCLOBENZAPRINE_5, days=None, tablets=2, per_day=2, quantity=88)
    assert "draft-course-too-long" not in cards(review(engine, patient, ok))
    assert "draft-course-too-long" in cards(review(engine, patient, long))


@pytest.mark.parametrize("value,unit,expect", [(3, "wk", False), (4, "wk", True)])
def test_s8_bounds_in_weeks(engine, value, unit, expect):
    patient = base()
    draft = patient.draft_medication(CYCLOBENZAPRINE_5)
    draft["dosageInstruction"][0]["timing"]["repeat"]["boundsDuration"] = quantity(value, unit)
    assert ("draft-course-too-long" in cards(review(engine, patient, draft))) is expect


def test_s8_suggestion_sets_every_length_to_21_days(engine):
    patient = base()
    draft = patient.draft_medication(CYCLOBENZAPRINE_5, days=30, supply_days=30, quantity=90, draft_id="rx-long")
    result = review(engine, patient, draft)
    change = get(result, "draft-course-limit")
    assert change.fields["type"]["coding"][0]["code"] == "update"
    order = change.resource
    assert order["id"] == "rx-long"
    assert order["dosageInstruction"][0]["timing"]["repeat"]["boundsDuration"]["value"] == 21
    assert order["dispenseRequest"]["expectedSupplyDuration"]["value"] == 21
    assert order["dispenseRequest"]["quantity"]["value"] == 63
    assert draft["dispenseRequest"]["quantity"]["value"] == 90, "the draft order itself must not be changed"


def test_s8_proposal_always_carries_21_days(engine):
    result = view(engine, base())
    order = get(result, "order-cyclobenzaprine").resource
    assert order["dosageInstruction"][0]["timing"]["repeat"]["boundsDuration"]["value"] == 21
    assert order["dispenseRequest"]["expectedSupplyDuration"]["value"] == 21
    assert get(result, PROPOSED).resource is None, "the plan lists the order; only the proposal card creates it"


# ---------------------------------------------------------------------------------- S9 dose


@pytest.mark.parametrize("drug,tablets,per_day,expect", [
    (CYCLOBENZAPRINE_10, 1, 3, False),        # 10 mg a dose, 30 mg a day: the maximum
    (CYCLOBENZAPRINE_7_5, 1, 4, False),       # 7.5 mg a dose, 30 mg a day
    (CYCLOBENZAPRINE_10, 1, 4, True),         # 40 mg a day
    (CYCLOBENZAPRINE_7_5, 2, 1, True),        # 15 mg in one dose
    (CYCLOBENZAPRINE_5, 3, 1, True),          # 15 mg in one dose, 15 mg a day
    (CYCLOBENZAPRINE_ER_30, 1, 1, False),     # extended release 30 mg a day
    (CYCLOBENZAPRINE_ER_15, 1, 2, False),     # extended release 30 mg a day
    (CYCLOBENZAPRINE_ER_30, 1, 2, True),      # extended release 60 mg a day
    (CYCLOBENZAPRINE_ER_15, 1, 3, True),      # extended release 45 mg a day
], ids=["ir-10x3", "ir-7.5x4", "ir-10x4", "ir-15-once", "ir-3x5-once", "er-30x1", "er-15x2", "er-30x2", "er-15x3"])
def test_s9_labelled_maximum_dose(engine, drug, tablets, per_day, expect):
    patient = base()
    draft = patient.draft_medication(drug, tablets=tablets, per_day=per_day, days=14)
    result = review(engine, patient, draft)
    assert ("draft-dose-too-high" in cards(result)) is expect
    if expect:
        card = get(result, "draft-dose-too-high")
        assert rule_codes(card) == {"S9"} and card.fields["priority"] == "urgent"


@pytest.mark.parametrize("dose_mg,per_day,expect", [(10, 3, False), (15, 2, True), (10, 4, True)])
def test_s9_dose_given_in_mg(engine, dose_mg, per_day, expect):
    patient = base()
    draft = patient.draft_medication(CYCLOBENZAPRINE_5, dose_mg=dose_mg, tablets=None, per_day=per_day, days=14)
    assert ("draft-dose-too-high" in cards(review(engine, patient, draft))) is expect


def test_s9_dose_every_6_hours_is_four_doses_a_day(engine):
    patient = base()
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, days=14)
    draft["dosageInstruction"][0]["timing"]["repeat"] = {"frequency": 1, "period": 6, "periodUnit": "h"}
    assert "draft-dose-too-high" in cards(review(engine, patient, draft))


@pytest.mark.parametrize("drug,per_day,dose,frequency", [(CYCLOBENZAPRINE_10, 4, 10, 3), (CYCLOBENZAPRINE_ER_30, 2, 30, 1)],
                         ids=["immediate", "extended"])
def test_s9_suggestion_sets_the_labelled_maximum(engine, drug, per_day, dose, frequency):
    patient = base()
    draft = patient.draft_medication(drug, per_day=per_day, days=14, draft_id="rx-dose")
    order = get(review(engine, patient, draft), "draft-dose-limit").resource
    assert order["id"] == "rx-dose" and medication_codes(order) == medication_codes(draft)
    dosage = order["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == dose
    assert dosage["doseAndRate"][0]["doseQuantity"]["code"] == "mg"
    repeat = dosage["timing"]["repeat"]
    assert (repeat["frequency"], repeat["period"], repeat["periodUnit"]) == (frequency, 1, "d")


# ---------------------------------------------------------------------------------- S10 duplicate


@pytest.mark.parametrize("kind,status", [("request", "active"), ("request", "on-hold"), ("statement", "active"), ("statement", "intended")])
@pytest.mark.parametrize("shape", ["concept", "contained", "reference"])
def test_s10_active_cyclobenzaprine_is_not_proposed_again(engine, kind, status, shape):
    patient = base()
    patient.medication(CYCLOBENZAPRINE_10, kind=kind, status=status, shape=shape, started_days_ago=2)
    result = view(engine, patient)
    assert withheld(result, "withheld-duplicate")
    assert rule_codes(get(result, "withheld-duplicate")) == {"S10"}


@pytest.mark.parametrize("status", ["stopped", "completed", "cancelled", "entered-in-error"])
def test_s10_ended_cyclobenzaprine_does_not_block_a_new_course(engine, status):
    patient = base()
    patient.medication(CYCLOBENZAPRINE_5, status=status, started_days_ago=200)
    result = view(engine, patient)
    assert proposed(result) and "withheld-duplicate" not in cards(result)


def test_s10_draft_order_duplicating_an_active_order(engine):
    patient = base()
    patient.medication(CYCLOBENZAPRINE_10, started_days_ago=2)
    draft = patient.draft_medication(CYCLOBENZAPRINE_5)
    card = get(review(engine, patient, draft), "draft-duplicate")
    assert rule_codes(card) == {"S10"} and card.fields["priority"] == "urgent"
    assert removes(card, draft)


def test_s10_two_cyclobenzaprine_drafts_in_one_session(engine):
    patient = base()
    first = patient.draft_medication(CYCLOBENZAPRINE_5, draft_id="rx-a")
    second = patient.draft_medication(CYCLOBENZAPRINE_ER_15, per_day=1, draft_id="rx-b")
    drafts = [first, second]
    both = lambda draft: engine.apply("back-spasm-order-review", patient.resources + drafts, CLOCK, patient.id,
                                      parameters={"draftOrder": draft, "draftOrders": drafts})
    assert "draft-duplicate" not in cards(both(first)), "the first draft is the one kept"
    card = get(both(second), "draft-duplicate")
    assert removes(card, second) and not removes(card, first)
    assert "draft-duplicate" not in cards(review(engine, patient, first))


# ---------------------------------------------------------------------------------- S11 beyond three weeks


@pytest.mark.parametrize("started,expect", [(20, False), (21, True), (22, True)])
def test_s11_course_started_more_than_21_days_ago(engine, started, expect):
    patient = Patient(45)
    patient.spasm(days_ago=30)
    order = patient.medication(CYCLOBENZAPRINE_5, started_days_ago=started)
    result = view(engine, patient)
    assert ("cyclobenzaprine-beyond-21-days" in cards(result)) is expect
    if expect:
        card = get(result, "cyclobenzaprine-beyond-21-days")
        assert rule_codes(card) == {"S11"} and card.fields["priority"] == "urgent"
        stops = [c.resource for c in card.children if c.resource is not None]
        assert [s["id"] for s in stops] == [order["id"]] and stops[0]["status"] == "stopped"


def test_s11_course_start_read_from_the_dosage_bounds(engine):
    patient = Patient(45)
    patient.spasm(days_ago=30)
    order = patient.medication(CYCLOBENZAPRINE_5, started_days_ago=2)
    repeat = {"boundsPeriod": {"start": day(25)}, "frequency": 3, "period": 1, "periodUnit": "d"}
    order["dosageInstruction"] = [{"timing": {"repeat": repeat}}]
    assert "cyclobenzaprine-beyond-21-days" in cards(view(engine, patient))


def test_s11_stopped_course_gets_no_warning(engine):
    patient = Patient(45)
    patient.spasm(days_ago=30)
    patient.medication(CYCLOBENZAPRINE_5, status="stopped", started_days_ago=40)
    assert "cyclobenzaprine-beyond-21-days" not in cards(view(engine, patient))


# ---------------------------------------------------------------------------------- S12 CNS depressants


@pytest.mark.parametrize("kind", ["request", "statement"])
def test_s12_cns_depressant_keeps_the_proposal_with_an_info_note(engine, kind):
    patient = base()
    patient.medication(TRAMADOL, kind=kind)
    result = view(engine, patient)
    assert proposed(result)
    note = get(result, "cns-depressant-note")
    card = get(result, "cyclobenzaprine-proposal")
    assert note in card.children, "S12 is a note on the proposal card"
    assert rule_codes(note) == {"S12"}
    assert "tramadol" in text_of(note).lower() and "sedation" in text_of(note) and "sedation" in card.fields["title"]


def test_s12_stopped_cns_depressant_is_ignored(engine):
    patient = base()
    patient.medication(TRAMADOL, status="stopped", started_days_ago=60, ended_days_ago=40)
    assert "cns-depressant-note" not in cards(view(engine, patient))


def test_s12_draft_order_gets_an_info_card(engine):
    patient = base()
    patient.medication(TRAMADOL)
    card = get(review(engine, patient, patient.draft_medication(CYCLOBENZAPRINE_5)), "draft-cns-depressant")
    assert rule_codes(card) == {"S12"} and card.fields["priority"] == "routine"


# ---------------------------------------------------------------------------------- what counts as cyclobenzaprine


def test_a_draft_is_recognised_by_its_code_not_its_text(engine):
    patient = base()
    patient.medication(PHENELZINE)
    impostor = patient.draft_medication(SERTRALINE)
    impostor["medicationCodeableConcept"]["text"] = "Cyclobenzaprine 5 mg tablet"
    impostor["medicationCodeableConcept"]["coding"][0]["display"] = "Cyclobenzaprine 5 MG Oral Tablet"
    assert review(engine, patient, impostor).actions == []
    coded_only = patient.draft_medication(CYCLOBENZAPRINE_5)
    coded_only["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": CYCLOBENZAPRINE_5[1]}]}
    assert "draft-maoi" in cards(review(engine, patient, coded_only))


def test_a_draft_sent_twice_as_separate_copies_still_resolves_its_contained_medication(engine):
    """A client may put the draft both in the data and in the draftOrder parameter, as two copies of the same JSON:
    the parameter's ``#m`` must resolve in its own copy, or the draft is not seen as cyclobenzaprine at all."""
    patient = base()
    patient.medication(PHENELZINE)
    draft = patient.draft_medication(CYCLOBENZAPRINE_5, shape="contained", draft_id="rx-copied")
    in_data, in_parameter = copy.deepcopy(draft), copy.deepcopy(draft)
    result = engine.apply(REVIEW, [*patient.resources, in_data], CLOCK, patient.id,
                          parameters={"draftOrder": in_parameter, "draftOrders": [in_parameter]})
    assert "draft-maoi" in cards(result)


def test_an_unrelated_draft_order_gets_no_cards(engine):
    patient = base()
    patient.medication(PHENELZINE)
    patient.condition(HEART_FAILURE, onset_value=day(300))
    draft = patient.draft_medication(SERTRALINE, per_day=1, days=90)
    assert review(engine, patient, draft).actions == []


def test_a_clean_draft_order_gets_no_cards(engine):
    patient = base()
    draft = patient.draft_medication(CYCLOBENZAPRINE_5, days=21)
    assert review(engine, patient, draft).actions == []


def test_several_findings_give_several_cards(engine):
    patient = base(birth_date=birth_date_for(70))
    patient.medication(PHENELZINE)
    patient.condition(HEART_FAILURE, onset_value=day(300))
    patient.medication(SERTRALINE)
    result = view(engine, patient)
    assert {"withheld-maoi", "withheld-cardiac", "withheld-older-adult"} <= cards(result)
    assert "serotonergic-warning" not in cards(result), "no serotonin warning when nothing is proposed"
    why = text_of(get(result, NOT_PROPOSED))
    assert "MAO" in why and "65" in why and "Heart failure" in why
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, days=30)
    assert {"draft-maoi", "draft-cardiac", "draft-older-adult", "draft-serotonergic", "draft-course-too-long"} <= cards(
        review(engine, patient, draft))


def test_s8_quantity_with_the_dose_given_in_mg(engine):
    """10 mg a dose from 5 mg tablets is two tablets; three doses a day use 6 tablets: 126 last 21 days, 132 last 22."""
    patient = base()
    ok = patient.draft_medication(CYCLOBENZAPRINE_5, dose_mg=10, tablets=None, per_day=3, days=None, quantity=126)
    long = patient.draft_medication(CYCLOBENZAPRINE_5, dose_mg=10, tablets=None, per_day=3, days=None, quantity=132)
    assert "draft-course-too-long" not in cards(review(engine, patient, ok))
    assert "draft-course-too-long" in cards(review(engine, patient, long))


# ---------------------------------------------------------------------------------- §5 orders without evidence


@pytest.mark.parametrize("code,resource_type,card,rule", [
    (TENS_DEVICE, "DeviceRequest", "draft-tens", "tens"),
    (TENS_CLINIC, "ServiceRequest", "draft-tens", "tens"),
    (LUMBAR_ORTHOSIS, "DeviceRequest", "draft-lumbar-support", "lumbar-support"),
    (LUMBOSACRAL_BELT, "DeviceRequest", "draft-lumbar-support", "lumbar-support"),
    (TRACTION, "ServiceRequest", "draft-traction", "traction"),
], ids=["tens-device", "tens-clinic", "lumbar-orthosis", "lumbosacral-belt", "traction"])
def test_not_recommended_order_gets_an_info_card_with_heat_and_exercise(engine, code, resource_type, card, rule):
    patient = base()
    draft = patient.draft_service(code, resource_type=resource_type, draft_id="order-1")
    result = review(engine, patient, draft)
    assert cards(result) == {card}
    found = get(result, card)
    assert rule_codes(found) == {rule} and found.fields["priority"] == "routine"
    assert removes(found, draft)
    created = [r["code"] for r in resources(result, "ServiceRequest")]
    vs = engine.content.terminology
    assert any(codes_in(c) & vs.codes(VS + "heat-therapy") for c in created)
    assert any(codes_in(c) & vs.codes(VS + "therapeutic-exercise") for c in created)


@pytest.mark.parametrize("code,note", [(TENS_CLINIC, True), (TENS_DEVICE, False)], ids=["cpt-97014", "tens-device"])
def test_the_unattended_stimulation_note_appears_only_for_that_code(engine, code, note):
    patient = base()
    draft = patient.draft_service(code, resource_type="ServiceRequest" if note else "DeviceRequest", draft_id="order-1")
    found = get(review(engine, patient, draft), "draft-tens")
    assert ("draft-tens-unattended-stimulation" in {c.fields["id"] for c in found.children}) is note


def test_heat_order_is_not_flagged(engine):
    patient = base()
    assert review(engine, patient, patient.draft_service(HEAT)).actions == []


@pytest.mark.parametrize("age", [45, 17])
def test_not_recommended_order_for_a_patient_out_of_scope_gets_no_card(engine, age):
    patient = Patient(age)
    if age == 17:
        patient.spasm(20)
    draft = patient.draft_service(TRACTION)
    assert review(engine, patient, draft).actions == []


@pytest.mark.parametrize("age,spasm", [(45, False), (17, True)], ids=["no-spasm", "under-18"])
def test_cyclobenzaprine_safety_rules_apply_to_a_draft_whatever_its_indication(engine, age, spasm):
    """PROTOCOL §4 applies wherever cyclobenzaprine is in the draft orders: an MAO inhibitor interaction is as
    dangerous without a back spasm, so the order review checks every cyclobenzaprine draft (§5 stays in scope only)."""
    patient = Patient(age)
    if spasm:
        patient.spasm(20)
    patient.medication(PHENELZINE)
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, days=30)
    assert cards(review(engine, patient, draft)) == {"draft-maoi", "draft-course-too-long"}


# ---------------------------------------------------------------------------------- more shapes and exact times


def test_s3_allergy_coded_as_a_tricyclic_product_withholds(engine):
    patient = base()
    patient.allergy(AMITRIPTYLINE)
    assert withheld(view(engine, patient), "withheld-allergy")


@pytest.mark.parametrize("days_ago,expect", [(10, True), (20, False)])
def test_s1_maoi_statement_with_a_single_effective_date(engine, days_ago, expect):
    patient = base()
    statement = patient.medication(PHENELZINE, kind="statement", status="completed")
    del statement["effectivePeriod"]
    statement["effectiveDateTime"] = when(days_ago=days_ago)
    assert ("withheld-maoi" in cards(view(engine, patient))) is expect


def test_s9_strength_read_from_the_medication_ingredient(engine):
    """A draft naming only the ingredient, with a 10 mg tablet strength on the Medication: two tablets are 20 mg a dose."""
    patient = base()
    medication = {"resourceType": "Medication", "id": "cbz", "code": concept(CYCLOBENZAPRINE_INGREDIENT), "ingredient": [{
        "itemCodeableConcept": concept(CYCLOBENZAPRINE_INGREDIENT),
        "strength": {"numerator": quantity(10, "mg"), "denominator": quantity(1, "{tbl}")}}]}
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, tablets=2, per_day=3)
    del draft["medicationCodeableConcept"]
    draft["medicationReference"] = {"reference": "Medication/cbz"}
    patient.add(medication)
    result = review(engine, patient, draft)
    assert "draft-dose-too-high" in cards(result)
    one_tablet = patient.draft_medication(CYCLOBENZAPRINE_10, tablets=1, per_day=3)
    del one_tablet["medicationCodeableConcept"]
    one_tablet["medicationReference"] = {"reference": "Medication/cbz"}
    assert "draft-dose-too-high" not in cards(review(engine, patient, one_tablet))


def test_s11_start_given_as_a_date_time_is_exact(engine):
    patient = Patient(45)
    patient.spasm(days_ago=30)
    order = patient.medication(CYCLOBENZAPRINE_5)
    order["authoredOn"] = when(hours_ago=21 * 24 + 2)
    assert "cyclobenzaprine-beyond-21-days" in cards(view(engine, patient))


def test_s11_start_given_as_a_date_time_just_under_21_days(engine):
    patient = Patient(45)
    patient.spasm(days_ago=30)
    order = patient.medication(CYCLOBENZAPRINE_5)
    order["authoredOn"] = when(hours_ago=21 * 24 - 2)
    assert "cyclobenzaprine-beyond-21-days" not in cards(view(engine, patient))


def test_s2_infarction_onset_given_as_a_date_time_is_exact(engine):
    patient = base()
    patient.condition(ACUTE_MI, onset_value=when(hours_ago=90 * 24 + 2))
    assert "withheld-cardiac" not in cards(view(engine, patient))


def test_s2_infarction_onset_given_as_a_date_time_just_under_90_days(engine):
    patient = base()
    patient.condition(ACUTE_MI, onset_value=when(hours_ago=90 * 24 - 2))
    assert "withheld-cardiac" in cards(view(engine, patient))


# ---------------------------------------------------------------------------------- what every card carries

OVERRIDE = "http://example.org/fhir/back-spasm-cds/StructureDefinition/cds-override-reasons"


def card_samples(engine) -> list:
    """Results that between them raise every patient-view and order-review card about cyclobenzaprine or §5."""
    out = []
    everything = base(birth_date=birth_date_for(70))
    everything.medication(PHENELZINE)
    everything.condition(HEART_FAILURE, onset_value=day(300))
    everything.condition(CIRRHOSIS, onset_value=day(300))
    everything.allergy(TRICYCLIC_ALLERGY)
    everything.medication(CYCLOBENZAPRINE_5, started_days_ago=25)
    everything.medication(SERTRALINE)
    everything.medication(TRAMADOL)
    out.append(view(engine, everything))
    for draft in (everything.draft_medication(CYCLOBENZAPRINE_ER_30, per_day=2, days=30),
                  everything.draft_service(TRACTION), everything.draft_service(LUMBOSACRAL_BELT, resource_type="DeviceRequest"),
                  everything.draft_service(TENS_DEVICE, resource_type="DeviceRequest")):
        out.append(review(engine, everything, draft))
    mild = base()
    mild.condition(FATTY_LIVER, onset_value=day(300))
    mild.medication(SERTRALINE)
    mild.medication(TRAMADOL)
    out.append(view(engine, mild))
    out.append(review(engine, mild, mild.draft_medication(CYCLOBENZAPRINE_10)))
    return out


def test_warning_critical_and_not_recommended_cards_offer_override_reasons(engine):
    seen = set()
    valuesets = {r["url"] for r in engine.content.of_type("ValueSet")}
    for result in card_samples(engine):
        for action in result.actions:
            needs = action.fields.get("priority") in ("urgent", "stat") or action.fields["id"] in (
                "draft-tens", "draft-lumbar-support", "draft-traction")
            reasons = [e.get("valueCanonical") for e in action.fields.get("extension") or [] if e.get("url") == OVERRIDE]
            if action.fields["id"].startswith("withheld-") or action.fields["id"] == "data-unreadable":
                assert not reasons, f"{action.fields['id']} only informs: nothing to override"
                continue
            if not needs:
                continue
            seen.add(action.fields["id"])
            reasons = [e.get("valueCanonical") for e in action.fields.get("extension") or [] if e.get("url") == OVERRIDE]
            assert reasons and all(r.split("|")[0] in valuesets for r in reasons), action.fields["id"]
    assert {"cyclobenzaprine-beyond-21-days", "cyclobenzaprine-proposal", "draft-maoi", "draft-cardiac", "draft-allergy", "draft-severe-hepatic", "draft-older-adult",
            "draft-serotonergic", "draft-course-too-long", "draft-dose-too-high", "draft-duplicate", "draft-mild-hepatic",
            "draft-tens", "draft-lumbar-support", "draft-traction"} <= seen


def test_card_titles_fit_a_summary_and_cite_evidence(engine):
    for result in card_samples(engine):
        for action in result.actions:
            assert len(action.fields["title"]) < 140, action.fields["title"]
            assert action.fields.get("documentation"), f"{action.fields['id']} has no citation"
