"""Data that cannot be read (PROTOCOL.md §1 "Unknown age", §4a "Incomplete data is missing data").

A patient with an active back spasm whose birth date is missing, malformed or partial, or whose onset
cannot be read as a date, is never left without a card: the plan (or the onset problem) is shown with a
warning that names the element, never its value, and no medication is proposed. A partial birth date
is read conservatively: the latest date it allows for the scope check (18 or over), the earliest for
the older-adult check (65 or over). The command line writes the warning to stderr and still exits 0.
"""

from __future__ import annotations

import json

import pytest

from protocol.engine.fhirpath import EvaluationContext, default_evaluator
from tests.cds_support import cards, engine, find, get, review, text_of, view
from tests.patients import (
    CLOCK,
    CYCLOBENZAPRINE_10,
    SEVERE,
    SPASM_ICD,
    Patient,
    birth_date_for,
)
from tests.test_cli_apply import AT, reuse_engine, run, write

__all__ = ["engine", "reuse_engine"]

MALFORMED = ["not a date", "", "1961-13-45", "1961-02-30", "61-04-12", "1961/04/12", "1961-4-1"]


def patient_born(birth_date: str | None) -> Patient:
    patient = Patient(45)
    if birth_date is None:
        patient.patient.pop("birthDate")
    else:
        patient.patient["birthDate"] = birth_date
    patient.spasm(20)
    return patient


@pytest.mark.parametrize("birth_date", [None, *MALFORMED])
def test_an_unknown_age_gives_the_plan_a_warning_and_no_proposal(engine, birth_date):
    result = view(engine, patient_born(birth_date))
    assert cards(result) == {"phase-plan", "data-unreadable"}
    warning = get(result, "data-unreadable")
    assert warning.fields["priority"] == "urgent" and "Patient.birthDate" in text_of(warning)
    if birth_date:
        assert birth_date not in text_of(warning), "the element is named, never its value"
    assert "age could not be established" in get(result, "phase-plan").fields["description"]
    assert find(result, "order-cyclobenzaprine") is None


@pytest.mark.parametrize("birth_date", [None, "not a date"])
def test_an_unknown_age_on_a_draft_is_said_and_the_stricter_limits_apply(engine, birth_date):
    patient = patient_born(birth_date)
    result = review(engine, patient, patient.draft_medication(CYCLOBENZAPRINE_10, days=10))
    card = get(result, "draft-unreadable")
    assert "age" in text_of(card) and card.fields["priority"] == "urgent"
    [correction] = [c.resource for c in card.children if c.resource is not None]
    assert correction["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 5


@pytest.mark.parametrize("birth_date,in_scope", [
    (str(CLOCK.year - 18), False),              # may still be 17: the latest date it allows is 31 December
    (str(CLOCK.year - 19), True),
    (f"{CLOCK.year - 18}-{CLOCK.month:02d}", False),
    (f"{CLOCK.year - 18}-{CLOCK.month - 1:02d}", True),
])
def test_a_partial_birth_date_is_read_with_its_latest_date_for_the_scope(engine, birth_date, in_scope):
    assert bool(cards(view(engine, patient_born(birth_date)))) is in_scope


@pytest.mark.parametrize("birth_date,older", [
    (str(CLOCK.year - 65), True),               # may already be 65: the earliest date it allows is 1 January
    (str(CLOCK.year - 64), False),
    (f"{CLOCK.year - 65}-{CLOCK.month:02d}", True),
    (f"{CLOCK.year - 65}-{CLOCK.month + 1:02d}", False),
])
def test_a_partial_birth_date_is_read_with_its_earliest_date_for_the_older_adult_check(engine, birth_date, older):
    result = view(engine, patient_born(birth_date))
    assert ("withheld-older-adult" in cards(result)) is older
    assert ("cyclobenzaprine-proposal" in cards(result)) is not older
    assert "data-unreadable" not in cards(result), "a partial date is a readable date"


def test_a_full_birth_date_is_exact(engine):
    assert "cyclobenzaprine-proposal" in cards(view(engine, patient_born(birth_date_for(64))))
    assert "withheld-older-adult" in cards(view(engine, patient_born(birth_date_for(65))))


@pytest.mark.parametrize("onset", ["2026-13-01", "yesterday", "2026-11-24T25:00:00Z", "2026-02-30"])
def test_an_onset_that_cannot_be_read_still_gives_a_card_naming_it(engine, onset):
    patient = Patient(45)
    patient.condition(SPASM_ICD, onset_value=onset, severity=SEVERE)
    result = view(engine, patient)
    assert "onset-missing" in cards(result)
    assert "onset" in get(result, "onset-missing").fields["title"].lower()
    assert find(result, "order-cyclobenzaprine") is None
    assert all(onset not in text_of(a) for a in result.actions)


def test_apply_writes_the_warning_to_stderr_and_exits_0(tmp_path, capsys, reuse_engine):
    patient = patient_born("not a date")
    code, careplan, err = run(["apply", "--data", str(write(tmp_path, "p.json", patient.bundle("collection"))), "--at", AT], capsys)
    assert code == 0 and careplan["resourceType"] == "CarePlan"
    assert "Patient.birthDate" in err and "not a date" not in err
    assert json.dumps(careplan).count("data-unreadable") >= 1


@pytest.fixture(scope="module")
def evaluator():
    return default_evaluator()


@pytest.mark.parametrize("text,valid", [
    ("1961-04-12", True), ("2024-02-29", True), ("1961", True), ("1961-04", True), ("1961-13-45", False), ("1961-02-30", False),
    ("2023-02-29", False), ("1961-00", False), ("2026-11-24T25:00:00Z", False), ("2026-11-24T23:60:00Z", False),
    ("2026-11-24T23:59:59+15:00", False), ("2026-11-24T23:59:59+14:00", True),
])
def test_dates_that_are_not_on_the_calendar_do_not_convert(evaluator, text, valid):
    ctx = EvaluationContext(now=CLOCK, member_of=lambda concept, url: False, resolve=lambda reference: None)
    function = "toDate" if "T" not in text else "toDateTime"
    converted = evaluator.compile(f"'{text}'.{function}()")({}, ctx)
    assert bool(converted) is valid
    assert [evaluator.to_json(v) for v in evaluator.compile(f"'{text}'.convertsTo{function[2:]}()")({}, ctx)] == [valid]
