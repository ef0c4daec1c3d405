"""The service's local time zone: the setting, the engine, the record's date windows, and the FHIRPath it changes.

PROTOCOL.md §2: dates without a time are read in the service's local time zone (an IANA name, default UTC).
The FHIRPath cases:
today() and timeOfDay() around midnight UTC at the extreme offsets (+14:00, -12:00), the FHIRPath 3.0 (STU)
functions lowBoundary()/highBoundary() and duration()/difference() on daylight saving change days in
America/New_York and Australia/Sydney, and values written with an offset, which no zone changes.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import protocol.engine.apply
import service.cds_hooks.calls
from protocol.engine.apply import Engine
from protocol.engine.content import load_content
from protocol.engine.fhirpath import EvaluationContext, FhirPathEvaluationError, default_evaluator, time_zone
from protocol.engine.record import Record
from service.cli import TIMEZONE_VARIABLE, main
from service.config import ConfigError, Settings
from tests.patients import Patient

NEW_YORK = "America/New_York"  # 2026: EST -05:00 until 2026-03-08 02:00, EDT -04:00 until 2026-11-01 02:00
SYDNEY = "Australia/Sydney"  # 2026: AEDT +11:00 until 2026-04-05 03:00, AEST +10:00 until 2026-10-04 02:00
CLOCK = datetime(2026, 3, 9, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def evaluator():
    return default_evaluator()


def evaluate(evaluator, expression: str, zone: str | None = "UTC", now: datetime = CLOCK, focus=None, env=None) -> list:
    """The expression's results as JSON, in the given zone (None: the context's default, the clock's own)."""
    ctx = EvaluationContext(now=now, member_of=lambda coding, url: False, resolve=lambda reference: None,
                            timezone=None if zone is None else time_zone(zone))
    return [evaluator.to_json(item) for item in evaluator.compile(expression)(env or {}, ctx, focus)]


# ---------------------------------------------------------------------------------- the zone itself


def test_zone_names_are_iana_names_and_utc_needs_no_database():
    assert time_zone(None) is timezone.utc and time_zone("UTC") is timezone.utc and time_zone("utc") is timezone.utc
    assert time_zone(SYDNEY) == ZoneInfo(SYDNEY)
    assert time_zone(ZoneInfo(NEW_YORK)) == ZoneInfo(NEW_YORK)
    for bad in ("Mars/Olympus", "", "America", "../etc/passwd", "/etc/localtime", "+02:00"):
        with pytest.raises(ValueError, match="unknown time zone"):
            time_zone(bad)


def test_the_context_defaults_to_the_clocks_own_zone_and_takes_only_a_tzinfo():
    clock = datetime(2026, 11, 25, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    ctx = EvaluationContext(now=clock, member_of=lambda c, u: False, resolve=lambda r: None)
    assert ctx.zone is clock.tzinfo
    with pytest.raises(TypeError, match="tzinfo"):
        EvaluationContext(now=clock, member_of=lambda c, u: False, resolve=lambda r: None, timezone="UTC")


# ---------------------------------------------------------------------------------- today(), now(), timeOfDay()


@pytest.mark.parametrize("clock, zone, today, time_of_day", [
    # +14:00 is a day ahead of UTC from 10:00 UTC on
    (datetime(2026, 3, 9, 0, 0, tzinfo=timezone.utc), "Pacific/Kiritimati", "2026-03-09", "14:00:00.000"),
    (datetime(2026, 3, 9, 9, 59, 59, 999000, tzinfo=timezone.utc), "Pacific/Kiritimati", "2026-03-09", "23:59:59.999"),
    (datetime(2026, 3, 9, 10, 0, tzinfo=timezone.utc), "Pacific/Kiritimati", "2026-03-10", "00:00:00.000"),
    (datetime(2026, 3, 8, 23, 59, tzinfo=timezone.utc), "Pacific/Kiritimati", "2026-03-09", "13:59:00.000"),
    # -12:00 (Etc/GMT+12: POSIX signs are inverted) is still the day before until 12:00 UTC
    (datetime(2026, 3, 9, 0, 0, tzinfo=timezone.utc), "Etc/GMT+12", "2026-03-08", "12:00:00.000"),
    (datetime(2026, 3, 9, 11, 59, tzinfo=timezone.utc), "Etc/GMT+12", "2026-03-08", "23:59:00.000"),
    (datetime(2026, 3, 9, 12, 0, tzinfo=timezone.utc), "Etc/GMT+12", "2026-03-09", "00:00:00.000"),
    (datetime(2026, 3, 8, 23, 59, tzinfo=timezone.utc), "UTC", "2026-03-08", "23:59:00.000"),
    # a clock given with another offset: the zone decides, not the clock's offset
    (datetime(2026, 3, 9, 8, 0, tzinfo=timezone(timedelta(hours=9))), "UTC", "2026-03-08", "23:00:00.000"),
])
def test_today_and_time_of_day_are_local_to_the_zone_and_now_is_the_clock(evaluator, clock, zone, today, time_of_day):
    assert evaluate(evaluator, "today()", zone, now=clock) == [today]
    assert evaluate(evaluator, "timeOfDay()", zone, now=clock) == [time_of_day]
    assert evaluate(evaluator, "now()", zone, now=clock) == [clock.isoformat(timespec="milliseconds")]
    assert evaluate(evaluator, f"today() = @{today}", zone, now=clock) == [True]


def test_without_a_zone_today_is_the_date_of_the_clocks_own_offset(evaluator):
    clock = datetime(2026, 11, 25, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert evaluate(evaluator, "today()", None, now=clock) == ["2026-11-25"]
    assert evaluate(evaluator, "today()", "UTC", now=clock) == ["2026-11-26"]


def test_a_date_only_onset_of_todays_local_date_is_not_in_the_future(evaluator):
    # 2026-03-09T12:00Z is already the 10th in Kiritimati: an onset dated the 10th is today there, not tomorrow
    onset = {"resourceType": "Condition", "onsetDateTime": "2026-03-10"}
    assert evaluate(evaluator, "Condition.onset.lowBoundary() <= now()", "Pacific/Kiritimati", focus=onset) == [True]
    assert evaluate(evaluator, "Condition.onset = today()", "Pacific/Kiritimati", focus=onset) == [True]
    assert evaluate(evaluator, "Condition.onset.lowBoundary() <= now()", "UTC", focus=onset) == [False]


# ---------------------------------------------------------------------------------- lowBoundary(), highBoundary()


@pytest.mark.parametrize("expression, zone, expected", [
    # daylight saving starts (a 23-hour day)
    ("@2026-03-08.lowBoundary()", NEW_YORK, "2026-03-08T00:00:00.000-05:00"),
    ("@2026-03-08.highBoundary()", NEW_YORK, "2026-03-08T23:59:59.999-04:00"),
    ("@2026-10-04.lowBoundary()", SYDNEY, "2026-10-04T00:00:00.000+10:00"),
    ("@2026-10-04.highBoundary()", SYDNEY, "2026-10-04T23:59:59.999+11:00"),
    # daylight saving ends (a 25-hour day)
    ("@2026-11-01.lowBoundary()", NEW_YORK, "2026-11-01T00:00:00.000-04:00"),
    ("@2026-11-01.highBoundary()", NEW_YORK, "2026-11-01T23:59:59.999-05:00"),
    ("@2026-04-05.lowBoundary()", SYDNEY, "2026-04-05T00:00:00.000+11:00"),
    ("@2026-04-05.highBoundary()", SYDNEY, "2026-04-05T23:59:59.999+10:00"),
    # a local hour that occurs twice: the low boundary is the first reading, the high boundary the second
    ("@2026-11-01T01:30.lowBoundary()", NEW_YORK, "2026-11-01T01:30:00.000-04:00"),
    ("@2026-11-01T01:30.highBoundary()", NEW_YORK, "2026-11-01T01:30:59.999-05:00"),
    # months and years, and the UTC default
    ("@2026-03.lowBoundary()", SYDNEY, "2026-03-01T00:00:00.000+11:00"),
    ("@2026-02.highBoundary()", "UTC", "2026-02-28T23:59:59.999+00:00"),
    ("@2024-02.highBoundary()", "UTC", "2024-02-29T23:59:59.999+00:00"),
    ("@2026.highBoundary()", SYDNEY, "2026-12-31T23:59:59.999+11:00"),
    ("@2026-03-08.lowBoundary()", "UTC", "2026-03-08T00:00:00.000+00:00"),
    ("@2026-03-08.lowBoundary()", "Pacific/Kiritimati", "2026-03-08T00:00:00.000+14:00"),
    ("@2026-03-08.highBoundary()", "Etc/GMT+12", "2026-03-08T23:59:59.999-12:00"),
    ("'2026-03-08'.toDateTime().lowBoundary()", NEW_YORK, "2026-03-08T00:00:00.000-05:00"),
])
def test_boundaries_of_a_value_without_an_offset_are_in_the_zone(evaluator, expression, zone, expected):
    assert evaluate(evaluator, expression, zone) == [expected]


@pytest.mark.parametrize("zone", ["UTC", NEW_YORK, SYDNEY, "Pacific/Kiritimati"])
@pytest.mark.parametrize("expression, expected", [
    ("@2026-03-08T10:30:00+05:30.lowBoundary()", "2026-03-08T10:30:00.000+05:30"),
    ("@2026-03-08T10:30:00+05:30.highBoundary()", "2026-03-08T10:30:00.999+05:30"),
    ("@2026-03-08T10:30Z.lowBoundary()", "2026-03-08T10:30:00.000Z"),
    ("@2026-03-08T10:30Z.highBoundary()", "2026-03-08T10:30:59.999Z"),
    ("@2026-03-08T10:30:15.5Z.highBoundary()", "2026-03-08T10:30:15.500Z"),
    ("@2026-03-08T10:30:15.123-04:00.lowBoundary()", "2026-03-08T10:30:15.123-04:00"),
    ("@2026-03-08T10:30+02:00.lowBoundary(10)", "2026-03-08T10:00:00+02:00"),
    ("@2026-03-08T10:30+02:00.highBoundary(8)", "2026-03-08"),
    ("@2014.lowBoundary(6)", "2014-01"),
    ("@2014.highBoundary(6)", "2014-12"),
    ("@2014-02.highBoundary(8)", "2014-02-28"),
    ("Condition.onset.lowBoundary()", "2026-03-08T01:30:00.000-05:00"),
    ("Condition.onset.highBoundary()", "2026-03-08T01:30:00.999-05:00"),
])
def test_boundaries_of_a_value_with_an_offset_or_without_a_time_part_ignore_the_zone(evaluator, zone, expression, expected):
    condition = {"resourceType": "Condition", "onsetDateTime": "2026-03-08T01:30:00-05:00"}
    assert evaluate(evaluator, expression, zone, focus=condition) == [expected]


def test_boundaries_of_a_fhir_date_element_with_an_extension(evaluator):
    patient = {"resourceType": "Patient", "birthDate": "2008-03-10",
               "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                             "valueDateTime": "2008-03-10T06:00:00-04:00"}]}}
    assert evaluate(evaluator, "Patient.birthDate.lowBoundary()", NEW_YORK, focus=patient) == ["2008-03-10T00:00:00.000-04:00"]
    assert evaluate(evaluator, "Patient.birthDate.highBoundary()", SYDNEY, focus=patient) == ["2008-03-10T23:59:59.999+11:00"]


@pytest.mark.parametrize("expression", [
    "@2026-03-08.lowBoundary(5)", "@2026-03-08.highBoundary(18)", "{}.lowBoundary()", "Condition.abatement.highBoundary()",
    "@2026-03-08.lowBoundary({})",
])
def test_boundaries_that_are_empty(evaluator, expression):
    assert evaluate(evaluator, expression, NEW_YORK, focus={"resourceType": "Condition"}) == []


@pytest.mark.parametrize("expression, message", [
    ("'2026-03-08'.lowBoundary()", "needs a Date or DateTime"),
    ("(@2026-03-08 | @2026-03-09).highBoundary()", "single Date or DateTime"),
    ("1.5.lowBoundary()", "needs a Date or DateTime"),
])
def test_boundaries_of_other_values_are_errors(evaluator, expression, message):
    with pytest.raises(FhirPathEvaluationError, match=message):
        evaluate(evaluator, expression, NEW_YORK)


def test_boundaries_enclose_the_local_day(evaluator):
    # a day is 23 hours long when daylight saving starts, 25 when it ends
    for day, zone, hours in (("2026-03-08", NEW_YORK, 22), ("2026-11-01", NEW_YORK, 24), ("2026-10-04", SYDNEY, 22),
                             ("2026-04-05", SYDNEY, 24), ("2026-03-08", "UTC", 23)):
        expression = f"@{day}.lowBoundary().duration(@{day}.highBoundary(), 'hour')"
        assert evaluate(evaluator, expression, zone) == [hours], (day, zone)


# ---------------------------------------------------------------------------------- duration(), difference()


@pytest.mark.parametrize("expression, zone, expected", [
    # hours and below: true elapsed time, whatever the offsets and the zone
    ("@2026-03-07T00:00-05:00.duration(@2026-03-09T00:00-04:00, 'hour')", "UTC", 47),
    ("@2026-03-07T00:00-05:00.duration(@2026-03-09T00:00-04:00, 'hours')", SYDNEY, 47),
    ("@2026-03-09T00:00-04:00.duration(@2026-03-07T00:00-05:00, 'hour')", "UTC", -47),
    ("@2026-03-07T00:00-05:00.duration(@2026-03-09T00:00-04:00, 'minute')", "UTC", 47 * 60),
    ("@2026-03-07T00:00-05:00.difference(@2026-03-09T00:00-04:00, 'hour')", NEW_YORK, 47),
    ("@2026-03-07T00:00.duration(@2026-03-09T00:00, 'hour')", NEW_YORK, 47),  # no offset: New York local time
    ("@2026-03-07T00:00.duration(@2026-03-09T00:00, 'hour')", "UTC", 48),
    ("@2026-11-01T01:30:00-04:00.duration(@2026-11-01T01:30:00-05:00, 'minutes')", NEW_YORK, 60),
    ("@2026-11-01T01:30:00-04:00.difference(@2026-11-01T01:30:00-05:00, 'hour')", NEW_YORK, 1),
    ("@2026-10-03T12:00:00+10:00.duration(@2026-10-05T12:00:00+11:00, 'hour')", SYDNEY, 47),
    ("@2026-04-04T12:00:00+11:00.duration(@2026-04-06T12:00:00+10:00, 'hour')", SYDNEY, 49),
    ("@2026-03-08T10:00:00Z.duration(@2026-03-08T11:59:59.999Z, 'hour')", "UTC", 1),
    ("@2026-03-08T10:59:00Z.difference(@2026-03-08T11:01:00Z, 'hour')", "UTC", 1),
    ("@2026-03-08T10:59:00Z.duration(@2026-03-08T11:01:00Z, 'hour')", "UTC", 0),
    ("@2026-03-08T10:00:00Z.duration(@2026-03-08T09:59:59.999Z, 'millisecond')", "UTC", -1),
    ("@2026-03-08T10:00:00Z.duration(@2026-03-08T10:00:02.5Z, 'seconds')", "UTC", 2),
    # days and above: calendar periods of local time in the zone
    ("@2026-03-07T12:00:00-05:00.duration(@2026-03-08T12:00:00-04:00, 'day')", NEW_YORK, 1),
    ("@2026-03-07T12:00:00-05:00.duration(@2026-03-08T12:00:00-04:00, 'hour')", NEW_YORK, 23),
    ("@2026-03-08T23:30:00Z.difference(@2026-03-09T00:30:00Z, 'day')", "UTC", 1),
    ("@2026-03-08T23:30:00Z.difference(@2026-03-09T00:30:00Z, 'day')", NEW_YORK, 0),
    ("@2026-03-08T23:30:00Z.duration(@2026-03-09T00:30:00Z, 'day')", "UTC", 0),
    ("@2026-03-01.duration(@2026-03-08, 'days')", NEW_YORK, 7),
    ("@2026-03-01.duration(@2026-03-08, 'week')", NEW_YORK, 1),
    ("@2026-03-08.duration(@2026-03-01, 'day')", NEW_YORK, -7),
    ("@2026-03-08.duration(@2026-03-09T12:00:00Z, 'day')", "UTC", 1),
    ("@2026-03-09.duration(@2026-03-09T01:00:00Z, 'day')", NEW_YORK, -1),  # 01:00Z is the 8th in New York
    # the specification's examples
    ("@2025-01-02.duration(@2025-01-07, 'week')", "UTC", 0),
    ("@2025-01-02.difference(@2025-01-07, 'week')", "UTC", 1),
    ("@2025-01-01.duration(@2025-09-01, 'year')", "UTC", 0),
    ("@2025-01-01.difference(@2025-09-01, 'year')", "UTC", 0),
    ("@2024-12-01.duration(@2025-09-01, 'year')", "UTC", 0),
    ("@2024-12-01.difference(@2025-09-01, 'year')", "UTC", 1),
    # months and years as + adds them (the end of a shorter month)
    ("@2024-01-31.duration(@2024-02-29, 'month')", "UTC", 1),
    ("@2024-01-31.duration(@2024-02-28, 'month')", "UTC", 0),
    ("@2024-02-29.duration(@2025-02-28, 'years')", "UTC", 1),
    ("@2012-03-10T10:20:00Z.duration(@2013-03-10T09:20:00Z, 'year')", "UTC", 0),
    ("@2012-03-10T10:20:00Z.difference(@2013-03-10T09:20:00Z, 'year')", "UTC", 1),
    ("@2026-01.difference(@2026-03-31, 'month')", "UTC", 2),
])
def test_duration_and_difference(evaluator, expression, zone, expected):
    assert evaluate(evaluator, expression, zone) == [expected]


def test_day_and_hours_since_a_date_only_onset(evaluator):
    """PROTOCOL §2: day = floor(elapsed / 24 h) + 1, hours since onset, the onset counting from the start of its local day."""
    clock = datetime(2026, 3, 9, 12, 0, tzinfo=timezone.utc)  # 08:00 in New York, a 23-hour day after 2026-03-08
    onset = {"resourceType": "Condition", "onsetDateTime": "2026-03-08"}
    hours = "Condition.onset.lowBoundary().duration(now(), 'hour')"
    assert evaluate(evaluator, hours, NEW_YORK, now=clock, focus=onset) == [31]
    assert evaluate(evaluator, f"{hours} div 24 + 1", NEW_YORK, now=clock, focus=onset) == [2]
    assert evaluate(evaluator, hours, SYDNEY, now=clock, focus=onset) == [47]  # the 8th began at 13:00Z on the 7th
    assert evaluate(evaluator, hours, "UTC", now=clock, focus=onset) == [36]
    assert evaluate(evaluator, "Condition.onset.duration(now(), 'hour')", NEW_YORK, now=clock, focus=onset) == []


@pytest.mark.parametrize("expression", [
    "@2026-03-08.duration(@2026-03-09T10:00:00Z, 'hour')",  # a date is not precise enough for hours
    "@2026.duration(@2026-03-09, 'day')",
    "{}.duration(@2026-03-09, 'day')",
    "@2026-03-08.duration({}, 'day')",
    "@2026-03-08.difference(@2026-03-09, {})",
])
def test_duration_and_difference_that_are_empty(evaluator, expression):
    assert evaluate(evaluator, expression, NEW_YORK) == []


@pytest.mark.parametrize("expression, message", [
    ("@2026-03-08.duration(@2026-03-09, 'fortnight')", "precision of duration"),
    ("@2026-03-08.difference(@2026-03-09, 'd')", "precision of duration"),
    ("'2026-03-08'.duration(@2026-03-09, 'day')", "needs a Date or DateTime"),
    ("@2026-03-08.duration('2026-03-09', 'day')", "needs a Date or DateTime"),
    ("@2026-03-08.duration(@2026-03-09 | @2026-03-10, 'day')", "single Date or DateTime"),
])
def test_duration_and_difference_errors(evaluator, expression, message):
    with pytest.raises(FhirPathEvaluationError, match=message):
        evaluate(evaluator, expression, NEW_YORK)


def test_the_new_functions_compile_with_their_arities(evaluator):
    for expression in ("now().lowBoundary()", "now().highBoundary(17)", "now().duration(now(), 'day')",
                       "now().difference(now(), 'hour')"):
        evaluator.compile(expression)
    for expression in ("now().lowBoundary(1, 2)", "now().duration(now())", "now().difference()"):
        with pytest.raises(ValueError, match="argument"):
            evaluator.compile(expression)


# ---------------------------------------------------------------------------------- comparisons


def test_a_time_without_an_offset_is_compared_as_local_time_in_the_zone(evaluator):
    expression = "@2026-03-08T10:00:00 < @2026-03-08T12:00:00Z"
    assert evaluate(evaluator, expression, "UTC") == [True]
    assert evaluate(evaluator, expression, NEW_YORK) == [False]  # 10:00 EDT is 14:00Z
    assert evaluate(evaluator, "@2026-03-08T01:30:00 < @2026-03-08T06:45:00Z", NEW_YORK) == [True]  # 01:30 EST is 06:30Z
    # written with an offset: the zone changes nothing
    assert evaluate(evaluator, "@2026-03-08T10:00:00-05:00 < @2026-03-08T12:00:00Z", NEW_YORK) == [False]
    assert evaluate(evaluator, "@2026-03-08T10:00:00-05:00 < @2026-03-08T12:00:00Z", SYDNEY) == [False]


# ---------------------------------------------------------------------------------- the record's date windows


@pytest.fixture(scope="module")
def content():
    return load_content()


def observation(oid: str, effective: str) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": "Patient/p"},
            "effectiveDateTime": effective}


OBSERVATIONS = [observation("ny-evening", "2026-03-08T23:30:00-04:00"),  # 03:30Z on the 9th
                observation("utc-evening", "2026-03-08T23:30:00Z"),
                observation("date-only", "2026-03-08"),
                observation("no-offset", "2026-03-08T23:30:00")]


@pytest.mark.parametrize("zone, expected", [
    ("UTC", ["date-only", "no-offset", "utc-evening"]),
    (NEW_YORK, ["date-only", "no-offset", "ny-evening", "utc-evening"]),  # the 8th in New York ends at 03:59:59.999Z
    (SYDNEY, ["date-only", "no-offset"]),  # the 8th in Sydney ends at 12:59:59.999Z
])
def test_a_date_filter_reads_dates_as_local_days(content, zone, expected):
    record = Record.from_data([{"resourceType": "Patient", "id": "p"}, *OBSERVATIONS], content.terminology,
                              CLOCK.astimezone(time_zone(zone)))
    found = record.retrieve({"type": "Observation", "dateFilter": [{"path": "effective", "valueDateTime": "2026-03-08"}]})
    assert sorted(r["id"] for r in found) == expected


def test_a_duration_window_is_elapsed_time_across_a_daylight_saving_change(content):
    # 2026-03-09T12:00Z is 08:00 EDT; 72 hours before is 2026-03-06T12:00Z (07:00 EST), not 08:00 EST
    data = [{"resourceType": "Patient", "id": "p"}, observation("inside", "2026-03-06T07:30:00-05:00"),
            observation("outside", "2026-03-06T06:59:00-05:00")]
    record = Record.from_data(data, content.terminology, CLOCK.astimezone(ZoneInfo(NEW_YORK)))
    window = {"path": "effective", "valueDuration": {"value": 72, "unit": "h", "system": "http://unitsofmeasure.org", "code": "h"}}
    assert [r["id"] for r in record.retrieve({"type": "Observation", "dateFilter": [window]})] == ["inside"]


def test_a_period_filter_covers_its_local_days(content):
    record = Record.from_data([{"resourceType": "Patient", "id": "p"}, *OBSERVATIONS], content.terminology,
                              CLOCK.astimezone(ZoneInfo(SYDNEY)))
    period = {"path": "effective", "valuePeriod": {"start": "2026-03-09", "end": "2026-03-09"}}
    assert sorted(r["id"] for r in record.retrieve({"type": "Observation", "dateFilter": [period]})) == ["ny-evening", "utc-evening"]


# ---------------------------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def engine(content) -> Engine:
    return Engine(content)


def test_the_engine_works_in_utc_by_default_and_rejects_an_unknown_zone(engine, content):
    assert engine.timezone is timezone.utc
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        Engine(content, timezone="Mars/Olympus")


def test_the_engine_gives_its_zone_to_the_expressions_and_the_record(engine):
    patient = {"resourceType": "Patient", "id": "p"}
    clock = datetime(2026, 3, 9, 10, 30, tzinfo=timezone.utc)
    today = engine.evaluator.compile("today()")
    for zone, date in ((None, "2026-03-09"), ("Pacific/Kiritimati", "2026-03-10"), ("Etc/GMT+12", "2026-03-08")):
        session, _, _ = engine._session([patient, *OBSERVATIONS], clock, "Patient/p", None, None, None, zone)
        assert session.context.zone == time_zone(zone)
        assert session.record.now == clock and session.record.now.tzinfo == time_zone(zone)
        assert [engine.evaluator.to_json(v) for v in today({}, session.context)] == [date]
    session, _, _ = engine._session([patient, *OBSERVATIONS], clock, "Patient/p", None, None, None, SYDNEY)
    found = session.record.retrieve({"type": "Observation", "dateFilter": [{"path": "effective", "valueDateTime": "2026-03-08"}]})
    assert sorted(r["id"] for r in found) == ["date-only", "no-offset"]


def test_apply_takes_a_zone_per_call(engine, monkeypatch):
    seen = []
    original = protocol.engine.apply.Session.__init__

    def record_zone(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.context.zone)

    monkeypatch.setattr(protocol.engine.apply.Session, "__init__", record_zone)
    patient = Patient(45)
    patient.spasm(20)
    engine.apply("back-spasm-treatment-pathway", patient.resources, CLOCK, patient.id, timezone=SYDNEY)
    engine.apply("back-spasm-treatment-pathway", patient.resources, CLOCK, patient.id)
    assert seen == [ZoneInfo(SYDNEY), timezone.utc]
    with pytest.raises(ValueError, match="unknown time zone"):
        engine.apply("back-spasm-treatment-pathway", patient.resources, CLOCK, patient.id, timezone="Nowhere/Atall")


# ---------------------------------------------------------------------------------- the setting


def test_the_setting_defaults_to_utc_and_comes_from_the_environment_or_the_file(tmp_path):
    assert Settings.load(environ={}).timezone == "UTC"
    assert Settings.load(environ={"BACK_SPASM_CDS_TIMEZONE": SYDNEY}).timezone == SYDNEY
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"timezone": NEW_YORK}))
    assert Settings.load(environ={"BACK_SPASM_CDS_CONFIG": str(config)}).timezone == NEW_YORK
    both = {"BACK_SPASM_CDS_CONFIG": str(config), "BACK_SPASM_CDS_TIMEZONE": SYDNEY}
    assert Settings.load(environ=both).timezone == SYDNEY
    assert Settings.load(environ=both, overrides={"timezone": "UTC"}).timezone == "UTC"


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "+02:00"])
def test_an_unknown_zone_is_a_configuration_error(name):
    with pytest.raises(ConfigError, match="timezone: unknown time zone"):
        Settings.load(environ={"BACK_SPASM_CDS_TIMEZONE": name})


def test_the_service_engine_gets_the_setting(tmp_path):
    from service import create_app, state_of

    settings = Settings.load(environ={"BACK_SPASM_CDS_TIMEZONE": SYDNEY, "BACK_SPASM_CDS_DATABASE": str(tmp_path / "db.sqlite")})
    assert state_of(create_app(settings)).engine.timezone == ZoneInfo(SYDNEY)


# ---------------------------------------------------------------------------------- the command line


@pytest.fixture
def command_engine(engine, monkeypatch):
    """The apply command with the module's compiled engine, noting the time zone and the clock it is given."""
    seen: dict = {}

    def make_engine(content, *args, **kwargs):
        seen["timezone"] = kwargs.get("timezone")
        return engine

    original = service.cds_hooks.calls.run_calls

    def run_calls(engine, calls, now, *args, **kwargs):
        seen["now"] = now
        return original(engine, calls, now, *args, **kwargs)

    monkeypatch.setattr(protocol.engine.apply, "Engine", make_engine)
    monkeypatch.setattr(service.cds_hooks.calls, "run_calls", run_calls)
    monkeypatch.delenv(TIMEZONE_VARIABLE, raising=False)
    return seen


def bundle_file(tmp_path: Path) -> Path:
    patient = Patient(45)
    patient.spasm(20)
    path = tmp_path / "patient.json"
    path.write_text(json.dumps(patient.bundle()))
    return path


def test_apply_timezone_option(tmp_path, capsys, command_engine):
    data = str(bundle_file(tmp_path))
    assert main(["apply", "--data", data, "--at", "2026-12-01", "--timezone", "Pacific/Kiritimati"]) == 0
    careplan = json.loads(capsys.readouterr().out)
    assert command_engine["timezone"] == ZoneInfo("Pacific/Kiritimati")
    assert command_engine["now"] == datetime(2026, 12, 1, tzinfo=ZoneInfo("Pacific/Kiritimati"))  # --at without offset: local
    assert careplan["created"] == "2026-12-01T00:00:00+14:00"
    assert main(["apply", "--data", data, "--at", "2026-12-01T10:00:00Z", "--timezone", "Pacific/Kiritimati"]) == 0
    assert command_engine["now"] == datetime(2026, 12, 1, 10, tzinfo=timezone.utc)


def test_apply_reads_the_setting_from_the_environment_and_defaults_to_utc(tmp_path, capsys, command_engine, monkeypatch):
    data = str(bundle_file(tmp_path))
    assert main(["apply", "--data", data, "--at", "2026-12-01"]) == 0
    assert command_engine["timezone"] is timezone.utc and command_engine["now"] == datetime(2026, 12, 1, tzinfo=timezone.utc)
    monkeypatch.setenv(TIMEZONE_VARIABLE, NEW_YORK)
    assert main(["apply", "--data", data, "--at", "2026-12-01"]) == 0
    assert command_engine["timezone"] == ZoneInfo(NEW_YORK)
    assert main(["apply", "--data", data, "--at", "2026-12-01", "--timezone", "UTC"]) == 0
    assert command_engine["timezone"] is timezone.utc
    capsys.readouterr()


def test_apply_with_an_unknown_zone_exits_2(tmp_path, capsys, command_engine, monkeypatch):
    data = str(bundle_file(tmp_path))
    assert main(["apply", "--data", data, "--timezone", "Mars/Olympus"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--timezone: unknown time zone 'Mars/Olympus'" in captured.err
    monkeypatch.setenv(TIMEZONE_VARIABLE, "Nowhere")
    assert main(["apply", "--data", data]) == 2
    assert f"{TIMEZONE_VARIABLE}: unknown time zone 'Nowhere'" in capsys.readouterr().err
    assert "timezone" not in command_engine


def test_serve_timezone_option(monkeypatch, capsys):
    import service.server

    started = []
    monkeypatch.setattr(service.server, "run", lambda host, port, settings: started.append(settings))
    monkeypatch.delenv(TIMEZONE_VARIABLE, raising=False)
    assert main(["serve", "--timezone", SYDNEY]) == 0
    assert started[-1].timezone == SYDNEY
    assert main(["serve", "--timezone", "Mars/Olympus"]) == 2
    assert "timezone: unknown time zone 'Mars/Olympus'" in capsys.readouterr().err
    assert len(started) == 1
