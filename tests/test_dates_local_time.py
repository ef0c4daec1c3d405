"""Dates without a time, read in the service's time zone, and the day shown on the cards (PROTOCOL.md §2).

A date-only onset counts from the start of that local day, a stop or end date to the end of that local
day, and a date-only onset equal to today's local date is never in the future. The day on the cards is
floor(elapsed / 24 h) + 1, with the hours since onset in the first 48 hours, the same on the plan card and
in its CarePlan. Checked at +14:00 and -12:00, and across daylight-saving changes, where a local day has
23 or 25 hours.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from protocol.engine.output import careplan_r4
from tests.cds_support import PATHWAY, cards, engine, get, phase
from tests.patients import PHENELZINE, SEVERE, SPASM_ICD, Patient

__all__ = ["engine"]


def apply(engine, patient: Patient, now: datetime, zone: str):
    return engine.apply(PATHWAY, patient.resources, now, patient.id, timezone=zone)


def with_onset(onset: str) -> Patient:
    patient = Patient(45)
    patient.condition(SPASM_ICD, onset_value=onset, severity=SEVERE)
    return patient


def title(result) -> str:
    return get(result, "phase-plan").fields["title"]


@pytest.mark.parametrize("hours,day,label", [
    (0.5, 1, "0 hours"), (16, 1, "16 hours"), (23.9, 1, "23 hours"), (24, 2, "24 hours"), (46, 2, "46 hours"),
    (47.99, 2, "47 hours"), (48, 3, None), (71.9, 3, None), (72, 4, None), (24 * 7, 8, None),
])
def test_the_day_is_counted_in_whole_24_hours_with_the_hours_in_the_first_48(engine, hours, day, label):
    now = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
    patient = with_onset((now - timedelta(hours=hours)).isoformat().replace("+00:00", "Z"))
    result = apply(engine, patient, now, "UTC")
    assert f"day {day}" in title(result) and f"day {day + 1}" not in title(result)
    if label:
        assert f"{label} since onset" in title(result) and phase(result) == 1
    else:
        assert "since onset" not in title(result) and phase(result) >= 2
    careplan = careplan_r4(result)
    group = careplan["contained"][0]
    assert group["action"][0]["title"] == title(result), "the CarePlan says the same day as the card"


@pytest.mark.parametrize("zone,now,onset,expect_phase,expect_day", [
    # 23:00 in Sydney on 25 November is 12:00 UTC; the onset date is that local day: 23 hours, day 1.
    ("Australia/Sydney", datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc), "2026-11-25", 1, 1),
    # in UTC the same instant is already 12 hours into 25 November.
    ("UTC", datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc), "2026-11-25", 1, 1),
    # 01:00 on 26 November in Sydney (14:00 UTC on the 25th): the local date is the 26th, a date-only onset of
    # the 26th is today, never in the future, although it is still the 25th in UTC.
    ("Australia/Sydney", datetime(2026, 11, 25, 14, 0, tzinfo=timezone.utc), "2026-11-26", 1, 1),
    # at +14:00 the local date is a day ahead of UTC.
    ("Pacific/Kiritimati", datetime(2026, 11, 25, 11, 0, tzinfo=timezone.utc), "2026-11-26", 1, 1),
    # at -12:00 the local date is still the day before: an onset dated 25 November is in the future there.
    ("Etc/GMT+12", datetime(2026, 11, 25, 11, 0, tzinfo=timezone.utc), "2026-11-25", 0, None),
    ("Etc/GMT+12", datetime(2026, 11, 25, 11, 0, tzinfo=timezone.utc), "2026-11-24", 1, 1),
])
def test_a_date_only_onset_starts_at_local_midnight(engine, zone, now, onset, expect_phase, expect_day):
    result = apply(engine, with_onset(onset), now, zone)
    if expect_phase == 0:
        assert cards(result) == {"onset-in-future"}
        return
    assert phase(result) == expect_phase and f"day {expect_day}," in title(result)


def test_a_date_only_onset_of_today_is_never_in_the_future(engine):
    for zone in ("UTC", "Pacific/Kiritimati", "Etc/GMT+12", "America/New_York", "Australia/Sydney"):
        now = datetime(2026, 11, 25, 0, 30, tzinfo=ZoneInfo(zone))
        result = apply(engine, with_onset("2026-11-25"), now, zone)
        assert phase(result) == 1 and "0 hours since onset" in title(result), zone


@pytest.mark.parametrize("zone,onset,hours_later,expect_phase,expect_hours", [
    # New York springs forward on 8 March 2026: local midnight of the 7th is 05:00 UTC, and 48 real hours later the
    # local clock shows 01:00 on the 9th. Phase 2 starts at 48 elapsed hours, not at local midnight of the 9th.
    ("America/New_York", "2026-03-07", 47, 1, 47),
    ("America/New_York", "2026-03-07", 48, 2, None),
    # it falls back on 1 November 2026: the 1st has 25 hours.
    ("America/New_York", "2026-10-31", 47.5, 1, 47),
    ("America/New_York", "2026-10-31", 48, 2, None),
    # Sydney moves its clocks forward on 4 October 2026.
    ("Australia/Sydney", "2026-10-03", 47.9, 1, 47),
    ("Australia/Sydney", "2026-10-03", 48, 2, None),
])
def test_phases_across_a_daylight_saving_change_count_real_hours(engine, zone, onset, hours_later, expect_phase, expect_hours):
    start = datetime.fromisoformat(onset).replace(tzinfo=ZoneInfo(zone))
    now = (start.astimezone(timezone.utc) + timedelta(hours=hours_later))
    result = apply(engine, with_onset(onset), now, zone)
    assert phase(result) == expect_phase
    if expect_hours is not None:
        assert f"{expect_hours} hours since onset" in title(result)


@pytest.mark.parametrize("zone,utc_hour,expect", [
    # stopped on 11 November (date only), 14 days before 25 November: the washout ends at the end of the 25th, local.
    ("UTC", 10, True),
    ("Australia/Sydney", 10, True),      # 21:00 on the 25th in Sydney: the end of the 11th is 13 days 21 hours back
    ("Australia/Sydney", 14, False),     # 01:00 on the 26th in Sydney: more than 14 days since the end of the 11th
    ("Etc/GMT+12", 11, True),            # still 24 November at -12:00
])
def test_a_date_only_stop_date_counts_to_the_end_of_that_local_day(engine, zone, utc_hour, expect):
    now = datetime(2026, 11, 25, utc_hour, 0, tzinfo=timezone.utc)
    patient = Patient(45)
    patient.condition(SPASM_ICD, onset_value=(now - timedelta(hours=20)).isoformat().replace("+00:00", "Z"), severity=SEVERE)
    statement = patient.medication(PHENELZINE, kind="statement", status="stopped", started_days_ago=60)
    statement["effectivePeriod"]["end"] = "2026-11-11"
    assert ("withheld-maoi" in cards(apply(engine, patient, now, zone))) is expect


def test_the_service_default_zone_is_utc(engine):
    now = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    default = engine.apply(PATHWAY, with_onset("2026-11-25").resources, now, "pat-1")
    assert title(default) == title(apply(engine, with_onset("2026-11-25"), now, "UTC"))
