"""S1, S2 and S7 as PROTOCOL.md §4 now states them, on the shapes EHRs send.

S1: an MAO inhibitor given in the last 14 days (MedicationAdministration in progress or completed) counts,
a stopped MAOI whose stop date is not recorded counts (and the card asks to confirm the washout), and a
stop date without a time counts to the end of that day. S2: a myocardial infarction in the last 90 days
counts whatever its clinicalStatus, unless refuted or entered in error, dated by onset, else recorded date,
else abatement date. S7: the proposal card itself becomes the warning that names the serotonergic drug.
"""

from __future__ import annotations

import pytest

from tests.cds_support import cards, engine, get, review, text_of, view
from tests.patients import (
    ACUTE_MI,
    CYCLOBENZAPRINE_5,
    NSTEMI_ICD,
    PHENELZINE,
    SERTRALINE,
    TRICYCLIC_ALLERGY,
    Patient,
    concept,
    day,
    when,
)

__all__ = ["engine"]


def base() -> Patient:
    patient = Patient(45)
    patient.spasm(20)
    return patient


def proposed(result) -> bool:
    return "cyclobenzaprine-proposal" in cards(result)


def administration(patient: Patient, status: str, *, days_ago: float | None = None, date_only: bool = False,
                   period: bool = False, shape: str = "concept") -> dict:
    """A MedicationAdministration of phenelzine, dated by effectiveDateTime or effectivePeriod (or not at all)."""
    resource: dict = {"resourceType": "MedicationAdministration", "status": status, "subject": patient.ref}
    if shape == "concept":
        resource["medicationCodeableConcept"] = concept(PHENELZINE)
    else:
        resource["contained"] = [{"resourceType": "Medication", "id": "m", "code": concept(PHENELZINE)}]
        resource["medicationReference"] = {"reference": "#m"}
    if days_ago is not None:
        moment = day(int(days_ago)) if date_only else when(days_ago=days_ago)
        if period:
            resource["effectivePeriod"] = {"start": day(int(days_ago) + 5) if date_only else when(days_ago=days_ago + 5), "end": moment}
        else:
            resource["effectiveDateTime"] = moment
    return patient.add(resource)


# ---------------------------------------------------------------------------------- S1


@pytest.mark.parametrize("days_ago,expect", [(1, True), (13.9, True), (14.1, False), (40, False)])
@pytest.mark.parametrize("period", [False, True], ids=["dateTime", "period"])
def test_s1_an_maoi_given_in_the_last_14_days_withholds(engine, days_ago, expect, period):
    patient = base()
    administration(patient, "completed", days_ago=days_ago, period=period)
    result = view(engine, patient)
    assert ("withheld-maoi" in cards(result)) is expect
    assert proposed(result) is not expect


@pytest.mark.parametrize("days_ago,expect", [(13, True), (14, True), (15, False)])
def test_s1_an_administration_dated_by_day_counts_to_the_end_of_that_day(engine, days_ago, expect):
    patient = base()
    administration(patient, "completed", days_ago=days_ago, date_only=True)
    assert ("withheld-maoi" in cards(view(engine, patient))) is expect


@pytest.mark.parametrize("status,expect", [("in-progress", True), ("completed", True), ("not-done", False),
                                           ("entered-in-error", False), ("stopped", False)])
def test_s1_administration_status(engine, status, expect):
    patient = base()
    administration(patient, status, days_ago=200 if status == "in-progress" else 2, shape="contained")
    assert ("withheld-maoi" in cards(view(engine, patient))) is expect


def test_s1_an_administration_without_a_date_counts(engine):
    patient = base()
    administration(patient, "completed")
    assert "withheld-maoi" in cards(view(engine, patient))


def test_s1_an_administration_blocks_a_draft_with_a_critical_card(engine):
    patient = base()
    administration(patient, "completed", days_ago=3)
    result = review(engine, patient, patient.draft_medication(CYCLOBENZAPRINE_5))
    assert get(result, "draft-maoi").fields["priority"] == "stat"


@pytest.mark.parametrize("kind", ["request", "statement"])
@pytest.mark.parametrize("status", ["stopped", "completed"])
def test_s1_a_stopped_maoi_without_a_stop_date_counts_and_the_card_asks_to_confirm(engine, kind, status):
    patient = base()
    resource = patient.medication(PHENELZINE, kind=kind, status=status, started_days_ago=400)
    resource.pop("effectivePeriod", None)
    resource.pop("dispenseRequest", None)
    result = view(engine, patient)
    assert "withheld-maoi" in cards(result) and not proposed(result)
    assert "stop date is not recorded" in text_of(get(result, "withheld-maoi"))
    draft_card = get(review(engine, patient, patient.draft_medication(CYCLOBENZAPRINE_5)), "draft-maoi")
    assert "confirm" in text_of(draft_card)


def test_s1_a_stop_date_on_record_is_not_questioned(engine):
    patient = base()
    patient.medication(PHENELZINE, kind="statement", status="stopped", started_days_ago=90, ended_days_ago=5)
    assert "not recorded" not in text_of(get(view(engine, patient), "withheld-maoi"))


@pytest.mark.parametrize("ended,expect", [(14, True), (15, False)])
def test_s1_a_date_only_stop_counts_to_the_end_of_that_day(engine, ended, expect):
    """Stopped on the date 14 days back: the end of that day is less than 14 days ago (the washout is not over)."""
    patient = base()
    patient.medication(PHENELZINE, kind="statement", status="stopped", started_days_ago=90, ended_days_ago=ended)
    assert ("withheld-maoi" in cards(view(engine, patient))) is expect


# ---------------------------------------------------------------------------------- S2


@pytest.mark.parametrize("status", ["active", "resolved", "inactive", "remission", None])
def test_s2_a_recent_infarction_withholds_whatever_its_clinical_status(engine, status):
    patient = base()
    patient.condition(ACUTE_MI, status=status, onset_value=when(days_ago=30))
    result = view(engine, patient)
    assert "withheld-cardiac" in cards(result) and not proposed(result)


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_s2_a_refuted_infarction_does_not_count(engine, verification):
    patient = base()
    patient.condition(ACUTE_MI, status="resolved", verification=verification, onset_value=when(days_ago=30))
    assert proposed(view(engine, patient))


def test_s2_a_resolved_infarction_stops_a_draft(engine):
    patient = base()
    patient.condition(NSTEMI_ICD, status="resolved", onset_value=day(30))
    assert get(review(engine, patient, patient.draft_medication(CYCLOBENZAPRINE_5)), "draft-cardiac").fields["priority"] == "stat"


@pytest.mark.parametrize("dated_by,days_ago,expect", [
    ("recorded", 30, True), ("recorded", 120, False), ("abatement", 30, True), ("abatement", 120, False), ("period", 30, True),
    ("none", None, True),
])
def test_s2_the_infarction_is_dated_by_onset_else_recorded_else_abatement(engine, dated_by, days_ago, expect):
    patient = base()
    condition = patient.condition(ACUTE_MI, status="resolved")
    moment = when(days_ago=days_ago) if days_ago is not None else None
    if dated_by == "recorded":
        condition["recordedDate"] = moment
    elif dated_by == "abatement":
        condition["abatementDateTime"] = moment
    elif dated_by == "period":
        condition["onsetPeriod"] = {"start": moment}
    assert ("withheld-cardiac" in cards(view(engine, patient))) is expect


def test_s2_the_onset_wins_over_the_recorded_date(engine):
    patient = base()
    condition = patient.condition(ACUTE_MI, status="resolved", onset_value=when(days_ago=200))
    condition["recordedDate"] = when(days_ago=10)
    assert proposed(view(engine, patient))


# ---------------------------------------------------------------------------------- S7


@pytest.mark.parametrize("kind", ["request", "statement"])
@pytest.mark.parametrize("shape", ["concept", "contained", "reference"])
def test_s7_the_proposal_card_is_the_warning_and_keeps_its_order(engine, kind, shape):
    patient = base()
    patient.medication(SERTRALINE, kind=kind, shape=shape)
    result = view(engine, patient)
    card = get(result, "cyclobenzaprine-proposal")
    assert card.fields["priority"] == "urgent" and "Sertraline" in card.fields["title"]
    assert [c.resource["resourceType"] for c in card.children if c.resource] == ["MedicationRequest"]
    assert "serotonin syndrome" in text_of(card).lower()
    assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal"}, "no separate serotonin card"


def test_s7_without_a_serotonergic_drug_the_proposal_is_routine(engine):
    card = get(view(engine, base()), "cyclobenzaprine-proposal")
    assert card.fields["priority"] == "routine" and "serotonin" not in text_of(card).lower()


# ---------------------------------------------------------------------------------- status codings without a system


@pytest.mark.parametrize("code", ["refuted", "entered-in-error"])
def test_a_refuted_spasm_without_its_status_system_is_out_of_scope(engine, code):
    patient = Patient(45)
    spasm = patient.spasm(20)
    spasm["verificationStatus"] = {"coding": [{"code": code}]}
    assert cards(view(engine, patient)) == set()


def test_a_resolved_spasm_without_its_status_system_is_out_of_scope(engine):
    patient = Patient(45)
    patient.spasm(20)["clinicalStatus"] = {"coding": [{"code": "resolved"}]}
    assert cards(view(engine, patient)) == set()


def test_an_active_spasm_without_its_status_system_is_in_scope(engine):
    patient = Patient(45)
    patient.spasm(20)["clinicalStatus"] = {"coding": [{"code": "active"}]}
    assert "phase-plan" in cards(view(engine, patient))


def test_a_refuted_allergy_without_its_status_system_is_ignored(engine):
    patient = base()
    allergy = patient.allergy(TRICYCLIC_ALLERGY)
    allergy["verificationStatus"] = {"coding": [{"code": "refuted"}]}
    assert proposed(view(engine, patient))


def test_a_status_coding_of_another_system_is_not_read_by_its_code(engine):
    patient = Patient(45)
    spasm = patient.spasm(20)
    spasm["verificationStatus"] = {"coding": [{"system": "http://example.org/local-status", "code": "refuted"}]}
    assert "phase-plan" in cards(view(engine, patient))


def test_severity_coded_with_https_snomed_counts_as_severe(engine):
    patient = Patient(45)
    spasm = patient.spasm(20)
    spasm["severity"]["coding"][0]["system"] = "https://snomed.info/sct/"
    assert proposed(view(engine, patient))

