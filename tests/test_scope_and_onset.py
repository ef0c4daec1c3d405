"""Who the protocol is for, how the onset is read and which phase applies (PROTOCOL.md §1-§3, severity, physical therapy)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.cds_support import (
    cards,
    engine,
    find,
    get,
    mentions_date,
    phase,
    resources,
    rule_codes,
    text_of,
    view,
)
from tests.patients import (
    CLOCK,
    CYCLOBENZAPRINE_5,
    MODERATE,
    SEVERE,
    SPASM_ICD,
    SPASM_SCT,
    Patient,
    birth_date_for,
    day,
    when,
)

__all__ = ["engine"]


def adult(**kwargs) -> Patient:
    return Patient(45, **kwargs)


def at(delta: timedelta) -> str:
    """A dateTime that long before the clock, in UTC with seconds."""
    return (CLOCK - delta).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------- scope


def test_no_back_spasm_is_out_of_scope(engine):
    patient = adult()
    patient.pain(9)
    patient.physical_therapy()
    assert view(engine, patient).actions == []


@pytest.mark.parametrize("age,days_after_birthday,in_scope", [(18, 0, True), (18, -1, False), (17, 100, False), (80, 3, True)],
                         ids=["18-on-the-birthday", "17-birthday-tomorrow", "17", "80"])
def test_age_18_or_over(engine, age, days_after_birthday, in_scope):
    patient = Patient(birth_date=birth_date_for(age, days_after_birthday=days_after_birthday))
    patient.spasm(20)
    result = view(engine, patient)
    assert (result.actions != []) is in_scope
    if in_scope:
        assert "phase-plan" in cards(result)


@pytest.mark.parametrize("code", [SPASM_ICD, SPASM_SCT], ids=["icd-10-cm", "snomed"])
def test_either_code_system_puts_the_patient_in_scope(engine, code):
    patient = adult()
    patient.spasm(20, code=code)
    assert phase(view(engine, patient)) == 1


@pytest.mark.parametrize("status,verification", [("resolved", "confirmed"), ("inactive", "confirmed"), ("remission", "confirmed"),
                                                 ("active", "refuted"), ("active", "entered-in-error")])
def test_inactive_refuted_or_erroneous_spasm_is_out_of_scope(engine, status, verification):
    patient = adult()
    patient.spasm(20, status=status, verification=verification)
    assert view(engine, patient).actions == []


@pytest.mark.parametrize("status,verification", [("active", "confirmed"), ("recurrence", "confirmed"), ("relapse", "confirmed"),
                                                 (None, "confirmed"), ("active", "unconfirmed"), ("active", "provisional"),
                                                 ("active", None)])
def test_active_spasm_statuses_are_in_scope(engine, status, verification):
    patient = adult()
    patient.spasm(20, status=status, verification=verification)
    assert phase(view(engine, patient)) == 1


def test_spasm_abated_in_the_past_is_out_of_scope(engine):
    patient = adult()
    patient.spasm(days_ago=10, abatement=when(hours_ago=2))
    assert view(engine, patient).actions == []


def test_spasm_abated_as_a_past_period_is_out_of_scope(engine):
    patient = adult()
    condition = patient.spasm(days_ago=10)
    condition["abatementPeriod"] = {"start": when(days_ago=3), "end": when(days_ago=2)}
    assert view(engine, patient).actions == []


def test_spasm_with_an_abatement_date_in_the_future_is_still_active(engine):
    patient = adult()
    patient.spasm(days_ago=10, abatement=when(hours_ago=-48))
    assert phase(view(engine, patient)) == 3


# ---------------------------------------------------------------------------------- phases and boundaries


@pytest.mark.parametrize("elapsed,expected", [
    (timedelta(0), 1),
    (timedelta(hours=47, minutes=59), 1),
    (timedelta(hours=48), 2),
    (timedelta(days=7) - timedelta(minutes=1), 2),
    (timedelta(days=7), 3),
    (timedelta(days=28) - timedelta(minutes=1), 3),
    (timedelta(days=28), 4),
    (timedelta(days=400), 4),
], ids=["onset-now", "47h59", "48h", "7d-1min", "7d", "28d-1min", "28d", "400d"])
def test_phase_boundaries(engine, elapsed, expected):
    patient = adult()
    patient.condition(SPASM_ICD, onset_value=at(elapsed), severity=MODERATE)
    result = view(engine, patient)
    assert phase(result) == expected
    assert rule_codes(get(result, f"phase-{expected}")) == {f"phase-{expected}"}


def test_onset_with_a_time_zone_offset(engine):
    """05:00 at UTC-5, two days before the 10:00 UTC clock, is exactly 48 hours: phase 2."""
    patient = adult()
    patient.condition(SPASM_ICD, onset_value=(CLOCK.date() - timedelta(days=2)).isoformat() + "T05:00:00-05:00")
    assert phase(view(engine, patient)) == 2


@pytest.mark.parametrize("phase_number,days_ago,title_word", [(1, 1, "immediate"), (2, 3, "early recovery"),
                                                               (3, 10, "rehabilitation"), (4, 30, "persistent")])
def test_each_phase_has_its_recommendations(engine, phase_number, days_ago, title_word):
    patient = adult()
    patient.spasm(days_ago=days_ago - 0.5, severity=None)
    result = view(engine, patient)
    assert phase(result) == phase_number
    expected = {
        1: {"heat"},
        2: {"heat", "exercise-gentle"},
        3: {"exercise-programme", "massage"},
        4: {"multidisciplinary", "evaluate-causes"},
    }[phase_number]
    chosen = get(result, f"phase-{phase_number}")
    assert set().union(*(rule_codes(c) for c in chosen.children)) == expected
    assert title_word in get(result, "phase-plan").fields["title"]


def test_plan_title_counts_the_day_of_the_spasm(engine):
    patient = adult()
    patient.spasm(days_ago=14)
    assert "day 15" in get(view(engine, patient), "phase-plan").fields["title"]


def test_the_clock_sets_the_phase(engine):
    """The same record read at two times: the phase follows the injected clock, not the wall clock."""
    patient = adult()
    patient.condition(SPASM_ICD, onset_value="2026-11-24T14:00:00Z", severity=SEVERE)
    assert phase(view(engine, patient, now=CLOCK)) == 1
    assert phase(view(engine, patient, now=CLOCK + timedelta(days=3))) == 2
    assert phase(view(engine, patient, now=CLOCK + timedelta(days=10))) == 3
    assert phase(view(engine, patient, now=CLOCK + timedelta(days=40))) == 4


# ---------------------------------------------------------------------------------- where the onset comes from


@pytest.mark.parametrize("onset", ["dateTime", "period", "string", "recorded"])
def test_onset_read_from_each_element(engine, onset):
    patient = adult()
    patient.spasm(days_ago=5, onset=onset)
    assert phase(view(engine, patient)) == 2


def test_onset_date_time_comes_before_the_recorded_date(engine):
    patient = adult()
    patient.condition(SPASM_ICD, onset_value=when(days_ago=40), recorded=when(hours_ago=3))
    assert phase(view(engine, patient)) == 4


def test_onset_period_comes_before_the_recorded_date(engine):
    patient = adult()
    patient.condition(SPASM_ICD, onset="period", onset_value=when(days_ago=10), recorded=when(hours_ago=3))
    assert phase(view(engine, patient)) == 3


def test_unparsable_onset_string_falls_back_to_the_recorded_date(engine):
    patient = adult()
    patient.condition(SPASM_ICD, onset="string", onset_value="after lifting boxes last spring", recorded=when(days_ago=3))
    assert phase(view(engine, patient)) == 2


def test_unparsable_onset_string_alone_is_no_onset(engine):
    patient = adult()
    patient.condition(SPASM_ICD, onset="string", onset_value="a while ago", severity=SEVERE)
    assert cards(view(engine, patient)) == {"onset-missing"}


@pytest.mark.parametrize("days_before,expected", [(0, 1), (1, 1), (2, 2), (7, 3), (28, 4)])
def test_a_date_without_time_counts_from_the_start_of_that_day(engine, days_before, expected):
    """The clock is 10:00 UTC: a date-only onset one day back is 34 hours ago, seven days back is 7 days 10 hours."""
    patient = adult()
    patient.condition(SPASM_ICD, onset_value=day(days_before))
    assert phase(view(engine, patient)) == expected


def test_several_spasm_conditions_use_the_most_recent_onset(engine):
    patient = adult()
    patient.spasm(days_ago=40, severity=None)
    patient.spasm(20, severity=SEVERE)
    patient.spasm(days_ago=10, severity=None)
    result = view(engine, patient)
    assert phase(result) == 1
    assert "cyclobenzaprine-proposal" in cards(result)


def test_severity_is_read_from_the_most_recent_spasm(engine):
    patient = adult()
    patient.spasm(days_ago=1.5, severity=SEVERE)
    patient.spasm(10, severity=MODERATE)
    result = view(engine, patient)
    assert phase(result) == 1
    assert "cyclobenzaprine-proposal" not in cards(result)


def test_an_inactive_recent_spasm_does_not_set_the_phase(engine):
    patient = adult()
    patient.spasm(days_ago=12)
    patient.spasm(20, status="resolved")
    assert phase(view(engine, patient)) == 3


# ---------------------------------------------------------------------------------- onset problems


@pytest.mark.parametrize("hours_ahead", [1, 24 * 30])
def test_onset_in_the_future_gives_one_info_card_and_no_medication(engine, hours_ahead):
    patient = adult()
    patient.spasm(-hours_ahead, severity=SEVERE)
    result = view(engine, patient)
    assert cards(result) == {"onset-in-future"}
    card = get(result, "onset-in-future")
    assert rule_codes(card) == {"onset-in-future"}
    assert {code for child in card.children for code in rule_codes(child)} == {"heat", "exercise-gentle"}
    assert resources(result, "MedicationRequest") == []


@pytest.mark.parametrize("extra", [{}, {"pain": 9}], ids=["severe-condition", "and-severe-pain"])
def test_no_onset_at_all_gives_one_info_card_and_no_medication(engine, extra):
    patient = adult()
    patient.spasm(onset="none", severity=SEVERE)
    if extra:
        patient.pain(extra["pain"])
    result = view(engine, patient)
    assert cards(result) == {"onset-missing"}
    card = get(result, "onset-missing")
    assert rule_codes(card) == {"onset-missing"}
    assert {code for child in card.children for code in rule_codes(child)} == {"heat", "exercise-gentle"}
    assert resources(result, "MedicationRequest") == []
    assert "medication" in card.fields["description"].lower()


def test_a_dated_spasm_wins_over_an_undated_one(engine):
    patient = adult()
    patient.spasm(onset="none", severity=None)
    patient.spasm(days_ago=5, severity=None)
    result = view(engine, patient)
    assert cards(result) == {"phase-plan"}
    assert phase(result) == 2


# ---------------------------------------------------------------------------------- severity


@pytest.mark.parametrize("score,as_integer,expect", [(7, False, True), (6.9, False, False), (6, False, False), (8, True, True),
                                                     (10, False, True)])
def test_pain_score_of_7_or_more_makes_the_spasm_severe(engine, score, as_integer, expect):
    patient = adult()
    patient.spasm(20, severity=MODERATE)
    patient.pain(score, as_integer=as_integer)
    assert ("cyclobenzaprine-proposal" in cards(view(engine, patient))) is expect


def test_only_the_most_recent_pain_score_counts(engine):
    falling = adult()
    falling.spasm(20, severity=None)
    falling.pain(9, hours_ago=10)
    falling.pain(3, hours_ago=1)
    assert "cyclobenzaprine-proposal" not in cards(view(engine, falling))
    rising = adult()
    rising.spasm(20, severity=None)
    rising.pain(3, hours_ago=10)
    rising.pain(8, hours_ago=1)
    assert "cyclobenzaprine-proposal" in cards(view(engine, rising))


@pytest.mark.parametrize("hours_ago,expect", [(71, True), (73, False)])
def test_pain_score_counts_for_72_hours(engine, hours_ago, expect):
    patient = adult()
    patient.spasm(days_ago=4, severity=None)
    patient.pain(9, hours_ago=hours_ago)
    result = view(engine, patient)
    assert phase(result) == 2
    assert ("cyclobenzaprine-proposal" in cards(result)) is expect


def test_severe_spasm_in_phase_2_is_still_proposed(engine):
    patient = adult()
    patient.spasm(days_ago=4, severity=SEVERE)
    result = view(engine, patient)
    assert phase(result) == 2
    assert find(result, "phase-2-cyclobenzaprine") is not None
    assert "cyclobenzaprine-proposal" in cards(result)


@pytest.mark.parametrize("days_ago", [10, 30])
def test_no_proposal_after_the_first_week_even_if_severe(engine, days_ago):
    patient = adult()
    patient.spasm(days_ago=days_ago, severity=SEVERE)
    patient.pain(9)
    result = view(engine, patient)
    assert resources(result, "MedicationRequest") == []
    assert not cards(result) & {"cyclobenzaprine-proposal", "withheld-older-adult"}


def test_moderate_spasm_without_a_pain_score_is_not_proposed(engine):
    patient = adult()
    patient.spasm(20, severity=MODERATE)
    result = view(engine, patient)
    assert cards(result) == {"phase-plan"}
    assert resources(result, "MedicationRequest") == []
    assert find(result, "phase-1-cyclobenzaprine-not-proposed") is None


# ---------------------------------------------------------------------------------- stopping the relaxant


@pytest.mark.parametrize("days_ago,action_id", [(10, "phase-3-stop-relaxant"), (35, "phase-4-stop-relaxant")])
def test_later_phases_stop_an_active_cyclobenzaprine_order(engine, days_ago, action_id):
    patient = adult()
    patient.spasm(days_ago=days_ago)
    order = patient.medication(CYCLOBENZAPRINE_5, started_days_ago=5)
    stop = get(view(engine, patient), action_id)
    assert stop.resource["id"] == order["id"] and stop.resource["status"] in ("stopped", "completed")


def test_later_phase_without_cyclobenzaprine_has_nothing_to_stop(engine):
    patient = adult()
    patient.spasm(days_ago=10)
    result = view(engine, patient)
    assert not any("stop-relaxant" in rule_codes(a) for a in get(result, "phase-3").children)


def test_reported_cyclobenzaprine_use_gets_advice_to_stop(engine):
    patient = adult()
    patient.spasm(days_ago=10)
    patient.medication(CYCLOBENZAPRINE_5, kind="statement", started_days_ago=6)
    chosen = get(view(engine, patient), "phase-3")
    stops = [a for a in chosen.children if "stop-relaxant" in rule_codes(a)]
    assert len(stops) == 1


# ---------------------------------------------------------------------------------- physical therapy


@pytest.mark.parametrize("kind", ["procedure", "service-request", "careplan", "encounter"])
def test_physical_therapy_on_record_is_dated_on_the_plan_card(engine, kind):
    patient = adult()
    patient.spasm(days_ago=3)
    patient.physical_therapy(kind, days_ago=9)
    text = text_of(get(view(engine, patient), "phase-plan"))
    seen = CLOCK.date() - timedelta(days=9)
    assert mentions_date(text, seen), text
    assert "no physical therapy" not in text.lower()


def test_the_most_recent_physical_therapy_is_named(engine):
    patient = adult()
    patient.spasm(days_ago=3)
    patient.physical_therapy("procedure", days_ago=60)
    patient.physical_therapy("encounter", days_ago=8)
    patient.physical_therapy("careplan", days_ago=30)
    text = text_of(get(view(engine, patient), "phase-plan"))
    assert mentions_date(text, CLOCK.date() - timedelta(days=8))


def test_no_physical_therapy_is_said_and_the_protocol_still_applies(engine):
    patient = adult()
    patient.spasm(20)
    result = view(engine, patient)
    assert phase(result) == 1
    assert "no physical therapy" in text_of(get(result, "phase-plan")).lower()


def test_a_physical_therapy_procedure_that_was_not_done_does_not_count(engine):
    patient = adult()
    patient.spasm(20)
    patient.physical_therapy("procedure", days_ago=9)["status"] = "not-done"
    assert "no physical therapy" in text_of(get(view(engine, patient), "phase-plan")).lower()


def test_plan_card_says_the_onset_date(engine):
    patient = adult()
    patient.spasm(days_ago=5)
    assert mentions_date(text_of(get(view(engine, patient), "phase-plan")), CLOCK.date() - timedelta(days=5))
